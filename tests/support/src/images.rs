//! Test images built by hand and pushed with `oci-client` to a [`Registry`]: a busybox-static image with a
//! marker file, the job image (busybox plus our `airlock` binary and the shared libraries `ldd` lists, at
//! the same paths), and a TLS registry with htpasswd auth and its CA.
//!
//! Layers are uncompressed tars (`application/vnd.oci.image.layer.v1.tar`), so no compression crate is
//! needed and the big job layer is not recompressed for every test.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::registry::{Registry, RegistryOptions, RegistryTls};

/// The user of [`tls_registry`]'s htpasswd.
pub const USER: &str = "airlock";
/// Its password.
pub const PASSWORD: &str = "correct horse battery staple";

/// Busybox applets linked in [`busybox_layer`].
const APPLETS: [&str; 17] = [
    "sh", "echo", "cat", "ls", "id", "pwd", "env", "sleep", "test", "[", "true", "false", "printf",
    "hostname", "grep", "wc", "nc",
];

/// A tar stream, entry by entry.
#[derive(Debug, Default, Clone)]
pub struct Tar(Vec<u8>);

impl Tar {
    /// Appends one entry (`name` relative, no leading `/`).
    pub fn entry(
        mut self,
        name: &str,
        kind: tar::EntryType,
        link: &str,
        mode: u32,
        data: &[u8],
    ) -> Result<Self> {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().context("gnu header")?;
            if name.len() > g.name.len() || link.len() > g.linkname.len() {
                bail!("tar entry name too long: {name}");
            }
            g.name[..name.len()].copy_from_slice(name.as_bytes());
            g.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        Ok(self)
    }

    /// A regular file (0644).
    pub fn file(self, name: &str, data: &[u8]) -> Result<Self> {
        self.entry(name, tar::EntryType::Regular, "", 0o644, data)
    }

    /// An executable (0755).
    pub fn executable(self, name: &str, data: &[u8]) -> Result<Self> {
        self.entry(name, tar::EntryType::Regular, "", 0o755, data)
    }

    /// A directory (0755; `name` ends with `/`).
    pub fn dir(self, name: &str) -> Result<Self> {
        self.entry(name, tar::EntryType::Directory, "", 0o755, b"")
    }

    /// A symlink.
    pub fn symlink(self, name: &str, target: &str) -> Result<Self> {
        self.entry(name, tar::EntryType::Symlink, target, 0o777, b"")
    }

    /// The finished stream (with its end-of-archive blocks).
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = self.0.clone();
        b.extend_from_slice(&[0u8; 1024]);
        b
    }
}

/// An image to push: layers, bottom first, and the config's `config` object (`Entrypoint`, `Cmd`, `Env`,
/// `WorkingDir`, `User`).
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Layers, bottom first.
    pub layers: Vec<Tar>,
    /// The run config.
    pub config: Value,
}

/// `sha256:<hex>` of `b`.
pub fn digest_of(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Debian's busybox-static as `/bin/busybox` with common applets linked in `/bin`, and `/etc/airlock-marker`
/// holding `marker`.
pub fn busybox_layer(marker: &str) -> Result<Tar> {
    let busybox = std::fs::read("/bin/busybox").context("/bin/busybox (Debian busybox-static)")?;
    let mut t = Tar::default()
        .dir("bin/")?
        .executable("bin/busybox", &busybox)?;
    for a in APPLETS {
        t = t.symlink(&format!("bin/{a}"), "busybox")?;
    }
    t.dir("etc/")?
        .file("etc/airlock-marker", marker.as_bytes())?
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        )
}

/// `binary` at `dest` (absolute) plus the shared libraries `ldd` lists for it, each at the path `ldd`
/// names (their contents read through the host's symlinks), with the directories they need.
pub fn binary_layer(binary: &Path, dest: &str) -> Result<Tar> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut files: Vec<(String, PathBuf)> = vec![(dest.to_string(), binary.to_path_buf())];
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`.
        let path = match line.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push((p.to_string(), PathBuf::from(p)));
        }
    }
    let mut dirs: Vec<String> = Vec::new();
    let mut t = Tar::default();
    for (at, _) in &files {
        let parts: Vec<&str> = at.trim_start_matches('/').split('/').collect();
        for i in 1..parts.len() {
            let d = format!("{}/", parts[..i].join("/"));
            if !dirs.contains(&d) {
                t = t.dir(&d)?;
                dirs.push(d);
            }
        }
    }
    for (at, from) in &files {
        let data = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        t = t.executable(at.trim_start_matches('/'), &data)?;
    }
    Ok(t)
}

/// The job image: busybox (marker `marker`) and our `airlock` binary as `/bin/airlock`, `PATH=/bin`.
pub fn job_image(marker: &str) -> Result<ImageSpec> {
    let airlock = crate::our_binary("airlock")?;
    let emit = crate::our_binary("airlock-emit")?;
    Ok(ImageSpec {
        layers: vec![
            busybox_layer(marker)?,
            binary_layer(&airlock, "/bin/airlock")?,
            binary_layer(&emit, "/bin/airlock-emit")?,
        ],
        config: json!({"Env": ["PATH=/bin"]}),
    })
}

/// An image's blobs and manifest.
#[derive(Debug)]
pub struct Built {
    /// `(digest, bytes)`, layers then config.
    pub blobs: Vec<(String, Vec<u8>)>,
    /// The manifest.
    pub manifest: Vec<u8>,
    /// Its digest.
    pub digest: String,
}

/// Builds an OCI image (linux/amd64 or the host's architecture) from `spec`.
pub fn build(spec: &ImageSpec) -> Result<Built> {
    let mut blobs = Vec::new();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in &spec.layers {
        let raw = tar.bytes();
        let d = digest_of(&raw);
        diff_ids.push(d.clone());
        layers.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": raw.len()}));
        blobs.push((d, raw));
    }
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux", "config": spec.config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))?;
    let config_digest = digest_of(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers,
    }))?;
    blobs.push((config_digest, config));
    let digest = digest_of(&manifest);
    Ok(Built {
        blobs,
        manifest,
        digest,
    })
}

/// Pushes images to one registry.
pub struct Pusher {
    client: Client,
    auth: RegistryAuth,
    host: String,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Pusher {
    /// To a plain-HTTP registry without auth.
    pub fn plain(r: &Registry) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        });
        Self {
            client,
            auth: RegistryAuth::Anonymous,
            host: r.host(),
        }
    }

    /// To a [`tls_registry`], trusting `ca_pem`, as [`USER`].
    pub fn tls(r: &Registry, ca_pem: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Https,
            extra_root_certificates: vec![Certificate {
                encoding: CertificateEncoding::Pem,
                data: ca_pem.as_bytes().to_vec(),
            }],
            ..ClientConfig::default()
        });
        Self {
            client,
            auth: RegistryAuth::Basic(USER.into(), PASSWORD.into()),
            host: r.host(),
        }
    }

    /// `HOST/name`.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }

    /// Pushes `spec` as `HOST/name` (`name` with a tag); returns the manifest digest.
    pub async fn push(&self, name: &str, spec: &ImageSpec) -> Result<String> {
        let built = build(spec)?;
        self.push_built(name, &built).await?;
        Ok(built.digest)
    }

    /// Pushes a built image as `HOST/name`.
    pub async fn push_built(&self, name: &str, built: &Built) -> Result<()> {
        let r: Reference = self.reference(name).parse()?;
        self.client
            .auth(&r, &self.auth, RegistryOperation::Push)
            .await?;
        for (d, blob) in &built.blobs {
            self.client.push_blob(&r, blob.clone(), d).await?;
        }
        self.client
            .push_manifest_raw(
                &r,
                built.manifest.clone(),
                "application/vnd.oci.image.manifest.v1+json".parse()?,
            )
            .await?;
        Ok(())
    }
}

/// A TLS registry with htpasswd auth ([`USER`], [`PASSWORD`]) and the CA that signed its certificate.
#[derive(Debug)]
pub struct TlsRegistry {
    /// The registry.
    pub registry: Registry,
    /// The CA, PEM.
    pub ca_pem: String,
    /// The CA written to `dir/ca.pem` (for `SSL_CERT_FILE`).
    pub ca_file: PathBuf,
}

/// Starts a TLS registry for 127.0.0.1 and `localhost` with a fresh CA, writing the CA into `dir`.
pub async fn tls_registry(dir: &Path) -> Result<TlsRegistry> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "airlock test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let leaf_key = KeyPair::generate()?;
    let cert = leaf.signed_by(&leaf_key, &ca)?;
    let hash = bcrypt::hash(PASSWORD, 4)?;
    let registry = Registry::start(RegistryOptions {
        tls: Some(RegistryTls {
            cert_pem: cert.pem(),
            key_pem: leaf_key.serialize_pem(),
        }),
        htpasswd: Some(format!("{USER}:{hash}\n")),
    })
    .await?;
    let ca_pem = ca.pem();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca_pem)?;
    Ok(TlsRegistry {
        registry,
        ca_pem,
        ca_file,
    })
}

/// Writes `dir/auth.json`, a Docker auth file with `user:password` for `host`.
pub fn auth_file(dir: &Path, host: &str, user: &str, password: &str) -> Result<PathBuf> {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let p = dir.join("auth.json");
    std::fs::write(
        &p,
        serde_json::to_vec(&json!({"auths": {host: {"auth": auth}}}))?,
    )?;
    Ok(p)
}

/// A directory other users can traverse (image stores must be readable by sandbox uids).
pub fn shared_tempdir(prefix: &str) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt as _;
    let d = tempfile::Builder::new().prefix(prefix).tempdir()?;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(d)
}
