//! OCI images built by tests: tar layers written by hand (hostile ones included), images with any config,
//! pushed to a test registry with `oci-client` or written as OCI layouts (for `airlock image import`).
//!
//! # Layout
//! - this file: [`Tar`], [`ImageSpec`], [`build`] into a [`Built`] image, [`write_layout`], [`digest_of`].
//! - [`layers`]: busybox-static ([`busybox_layer`]), an `/etc/passwd` ([`users_layer`]), a host binary with its libraries ([`binary_layer`]),
//!   the job image with our `airlock` and `airlock-emit` ([`job_image`]).
//! - [`push`]: [`Pusher`] to a registry (and reading back what it serves), a TLS registry with htpasswd auth
//!   ([`tls_registry`]), [`auth_file`].
//! - [`read`]: images read back from an OCI layout or archive ([`Layout`]), a layer's entries
//!   ([`read_layer`]), unpacked or not.

pub mod layers;
pub mod push;
pub mod read;

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;
use sha2::Digest as _;
pub use tar::EntryType;

pub use layers::{binary_layer, busybox_layer, job_image, ldd, users_layer};
pub use push::{PASSWORD, Pusher, TlsRegistry, USER, auth_file, tls_registry};
pub use read::{LayerEntry, Layout, read_layer};

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A tar stream with raw names, entry by entry (the `tar` crate's builder refuses hostile ones).
#[derive(Debug, Default, Clone)]
pub struct Tar(Vec<u8>);

impl Tar {
    /// Appends one entry (`name` as written: relative, absolute or hostile). Panics on a name or link
    /// longer than a GNU header holds (100 bytes): a mistake of the test, not input.
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
            assert!(
                name.len() <= g.name.len() && link.len() <= g.linkname.len(),
                "tar entry name or link too long: {name} -> {link}"
            );
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

    /// A regular file (0644).
    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, EntryType::Regular, "", 0o644, data)
    }

    /// An executable (0755).
    pub fn executable(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, EntryType::Regular, "", 0o755, data)
    }

    /// A directory (0755; `name` ends with `/`).
    pub fn dir(self, name: &str) -> Self {
        self.entry(name, EntryType::Directory, "", 0o755, b"")
    }

    /// A symlink.
    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Symlink, target, 0o777, b"")
    }

    /// A hard link to an earlier entry `target`.
    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Link, target, 0o644, b"")
    }

    /// The finished stream (with its end-of-archive blocks).
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

/// An image to build: layers, bottom first, each with how it travels, and its config.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Layers, bottom first.
    pub layers: Vec<(Tar, Compression)>,
    /// The config's `config` object (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`).
    pub run: serde_json::Value,
    /// Manifest format.
    pub format: Format,
    /// The config's `architecture`.
    pub architecture: String,
}

impl ImageSpec {
    /// An OCI image of gzipped `layers` for the host's architecture, with an empty run config.
    pub fn new(layers: Vec<Tar>) -> Self {
        Self {
            layers: layers.into_iter().map(|t| (t, Compression::Gzip)).collect(),
            run: json!({}),
            format: Format::Oci,
            architecture: host_architecture().into(),
        }
    }

    /// `self` with run config `run`.
    pub fn with_run(mut self, run: serde_json::Value) -> Self {
        self.run = run;
        self
    }
}

/// The host's architecture as OCI names it.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
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

/// A directory other users can traverse (image stores must be readable by sandbox uids).
pub fn shared_tempdir(prefix: &str) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt as _;
    let d = tempfile::Builder::new().prefix(prefix).tempdir()?;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(d)
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
    /// `(digest, bytes)`, layers then config.
    pub blobs: Vec<(String, Vec<u8>)>,
    /// The manifest.
    pub manifest: Vec<u8>,
    /// Its media type.
    pub manifest_type: &'static str,
    /// Its digest.
    pub digest: String,
}

/// Builds `spec` into its blobs and manifest.
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
