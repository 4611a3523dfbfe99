//! OCI images built by tests: tar layers written by hand (hostile ones included), images with any config,
//! pushed to a test registry with `oci-client` or written as OCI layouts; a TLS registry with htpasswd auth.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::json;
use sha2::Digest as _;
pub use tar::EntryType;

use crate::registry::{Registry, RegistryOptions, RegistryTls};

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

pub const USER: &str = "airlock";
pub const PASSWORD: &str = "correct horse battery staple";

/// A tar stream with raw names (the `tar` crate's builder refuses hostile ones).
#[derive(Debug, Default, Clone)]
pub struct Tar(Vec<u8>);

impl Tar {
    pub fn entry(
        mut self,
        name: &str,
        kind: EntryType,
        link: &str,
        mode: u32,
        data: &[u8],
    ) -> Self {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().expect("gnu header");
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
        self
    }
    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, EntryType::Regular, "", 0o644, data)
    }
    /// An executable (0755).
    pub fn executable(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, EntryType::Regular, "", 0o755, data)
    }
    pub fn dir(self, name: &str) -> Self {
        self.entry(name, EntryType::Directory, "", 0o755, b"")
    }
    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Symlink, target, 0o777, b"")
    }
    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Link, target, 0o644, b"")
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = self.0.clone();
        b.extend_from_slice(&[0u8; 1024]);
        b
    }
}

/// How a layer travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

/// Manifest format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

/// An image to push.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub layers: Vec<(Tar, Compression)>,
    /// The config's `config` object (Entrypoint, Cmd…).
    pub run: serde_json::Value,
    pub format: Format,
    pub architecture: String,
}

impl ImageSpec {
    pub fn new(layers: Vec<Tar>) -> Self {
        Self {
            layers: layers.into_iter().map(|t| (t, Compression::Gzip)).collect(),
            run: json!({}),
            format: Format::Oci,
            architecture: "amd64".into(),
        }
    }
}

/// A busybox-static image layer: the binary with a link for each of its applets in `bin/`, and
/// `etc/airlock-marker` holding `marker`.
pub fn busybox_image_layer(marker: &str) -> Result<Tar> {
    let busybox = std::fs::read("/bin/busybox").context("/bin/busybox (Debian busybox-static)")?;
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .context("busybox --list")?;
    let mut tar =
        Tar::default()
            .dir("bin/")
            .entry("bin/busybox", EntryType::Regular, "", 0o755, &busybox);
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" && applet.len() < 90 {
            tar = tar.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    Ok(tar
        .symlink("sbin", "bin")
        .dir("etc/")
        .file("etc/airlock-marker", marker.as_bytes()))
}

/// Writes `built` as an OCI layout directory at `dir`, its index naming it `name` (the
/// `org.opencontainers.image.ref.name` annotation).
pub fn write_layout(dir: &Path, built: &Built, name: &str) -> Result<PathBuf> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for (d, b) in built
        .blobs
        .iter()
        .chain([&(built.digest.clone(), built.manifest.clone())])
    {
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), b)?;
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": built.manifest_type,
        "digest": built.digest, "size": built.manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": name}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(dir.to_path_buf())
}

/// The busybox-static binary with `sh` and `echo` links, and a marker file.
pub fn busybox_layer(marker: &str) -> Result<Tar> {
    let busybox = std::fs::read("/bin/busybox").context("/bin/busybox (Debian busybox-static)")?;
    Ok(Tar::default()
        .dir("bin/")
        .entry("bin/busybox", EntryType::Regular, "", 0o755, &busybox)
        .symlink("bin/sh", "busybox")
        .hardlink("bin/echo", "bin/busybox")
        .dir("etc/")
        .file("etc/airlock-marker", marker.as_bytes()))
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
                t = t.dir(&d);
                dirs.push(d);
            }
        }
    }
    for (at, from) in &files {
        let data = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        t = t.executable(at.trim_start_matches('/'), &data);
    }
    Ok(t)
}

fn compress(tar: &[u8], c: Compression) -> Result<Vec<u8>> {
    Ok(match c {
        Compression::Gzip => {
            use std::io::Write as _;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar)?;
            gz.finish()?
        }
        Compression::Zstd => {
            ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest)
        }
        Compression::None => tar.to_vec(),
    })
}

fn layer_type(f: Format, c: Compression) -> &'static str {
    match (f, c) {
        (Format::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
        (Format::Oci, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
        (Format::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
        (Format::Docker, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
        (Format::Docker, _) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
}

/// The blobs and manifest of an image, as bytes.
#[derive(Debug, Clone)]
pub struct Built {
    pub blobs: Vec<(String, Vec<u8>)>,
    pub manifest: Vec<u8>,
    pub manifest_type: &'static str,
    pub digest: String,
}

pub fn build(spec: &ImageSpec) -> Result<Built> {
    let mut blobs = Vec::new();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, c) in &spec.layers {
        let raw = tar.bytes();
        diff_ids.push(digest_of(&raw));
        let blob = compress(&raw, *c)?;
        let d = digest_of(&blob);
        layers.push(
            json!({"mediaType": layer_type(spec.format, *c), "digest": d, "size": blob.len()}),
        );
        blobs.push((d, blob));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": spec.architecture, "os": "linux", "config": spec.run,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))?;
    let config_digest = digest_of(&config);
    let (manifest_type, config_type) = match spec.format {
        Format::Oci => (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
        ),
        Format::Docker => (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
        ),
    };
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
        "layers": layers,
    }))?;
    blobs.push((config_digest, config));
    let digest = digest_of(&manifest);
    Ok(Built {
        blobs,
        manifest,
        manifest_type,
        digest,
    })
}

/// Pushes images to one registry.
#[allow(missing_debug_implementations)] // oci_client::Client has no Debug
pub struct Pusher {
    pub client: Client,
    pub auth: RegistryAuth,
    pub host: String,
}

impl Pusher {
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

    pub fn tls(r: &Registry, ca_pem: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Https,
            extra_root_certificates: vec![oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
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

    /// Pushes `spec` as `HOST/name`; returns the manifest digest.
    pub async fn push(&self, name: &str, spec: &ImageSpec) -> Result<String> {
        let built = build(spec)?;
        self.push_built(name, &built).await?;
        Ok(built.digest)
    }

    pub async fn push_built(&self, name: &str, built: &Built) -> Result<()> {
        let r: Reference = self.reference(name).parse()?;
        self.client
            .auth(&r, &self.auth, RegistryOperation::Push)
            .await?;
        for (d, blob) in &built.blobs {
            self.client.push_blob(&r, blob.clone(), d).await?;
        }
        self.client
            .push_manifest_raw(&r, built.manifest.clone(), built.manifest_type.parse()?)
            .await?;
        Ok(())
    }

    /// Pushes an image index over `images` (one per architecture) as `HOST/name`.
    pub async fn push_index(&self, name: &str, images: &[(&str, Built)]) -> Result<String> {
        let r: Reference = self.reference(name).parse()?;
        let mut entries = Vec::new();
        for (arch, b) in images {
            self.push_built(&format!("{name}@{}", b.digest), b).await?;
            entries.push(json!({"mediaType": b.manifest_type, "digest": b.digest,
                "size": b.manifest.len(), "platform": {"architecture": arch, "os": "linux"}}));
        }
        let index = serde_json::to_vec(&json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}))?;
        self.client
            .push_manifest_raw(
                &r,
                index.clone(),
                "application/vnd.oci.image.index.v1+json".parse()?,
            )
            .await?;
        Ok(digest_of(&index))
    }
}

/// A TLS registry with htpasswd auth, its CA (PEM) written into `dir`.
#[derive(Debug)]
pub struct TlsRegistry {
    pub registry: Registry,
    pub ca_pem: String,
    pub ca_file: PathBuf,
}

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

/// An auth file with credentials for `host`.
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
