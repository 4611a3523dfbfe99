//! Images read back: an OCI layout directory or archive holding one image ([`Layout`], every blob checked
//! against its digest), and the entries of a gzipped layer as their tar headers say ([`read_layer`]),
//! unpacked into a directory or not.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use sha2::Digest as _;
use tar::EntryType;

use super::digest_of;

/// One image of an OCI layout, read and checked: the `oci-layout` file, an index of one manifest, every
/// blob's bytes matching the digest it is named by, the manifest's and config's sizes as the index and
/// manifest say.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `index.json`.
    pub index: Value,
    /// The index entry's `org.opencontainers.image.ref.name`, if any.
    pub ref_name: Option<String>,
    /// The manifest's digest.
    pub digest: String,
    /// The manifest's bytes.
    pub manifest_bytes: Vec<u8>,
    /// The manifest.
    pub manifest: Value,
    /// The config.
    pub config: Value,
    /// Every blob, by digest.
    pub blobs: BTreeMap<String, Vec<u8>>,
}

impl Layout {
    /// The layout directory `dir`.
    pub fn read_dir(dir: &Path) -> Result<Self> {
        let mut files = BTreeMap::new();
        for name in ["oci-layout", "index.json"] {
            let p = dir.join(name);
            files.insert(
                name.to_string(),
                std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
            );
        }
        let blobs = dir.join("blobs/sha256");
        for e in
            std::fs::read_dir(&blobs).with_context(|| format!("reading {}", blobs.display()))?
        {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            files.insert(format!("blobs/sha256/{name}"), std::fs::read(e.path())?);
        }
        Self::from_files(files)
    }

    /// The OCI archive (a tar of a layout) `file`.
    pub fn read_archive(file: &Path) -> Result<Self> {
        let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let mut archive = tar::Archive::new(f);
        let mut files = BTreeMap::new();
        for e in archive.entries()? {
            let mut e = e?;
            let name = e
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            match e.header().entry_type() {
                EntryType::Regular => {
                    let mut data = Vec::new();
                    e.read_to_end(&mut data)?;
                    files.insert(name, data);
                }
                EntryType::Directory => {}
                other => bail!("{}: {name} is a {other:?}", file.display()),
            }
        }
        Self::from_files(files)
    }

    fn from_files(mut files: BTreeMap<String, Vec<u8>>) -> Result<Self> {
        let layout: Value =
            serde_json::from_slice(files.get("oci-layout").context("no oci-layout")?)?;
        ensure!(
            layout["imageLayoutVersion"] == "1.0.0",
            "oci-layout: {layout}"
        );
        let index: Value =
            serde_json::from_slice(files.get("index.json").context("no index.json")?)?;
        let mut blobs = BTreeMap::new();
        for (name, data) in std::mem::take(&mut files) {
            let Some(hex) = name.strip_prefix("blobs/sha256/") else {
                continue;
            };
            let digest = format!("sha256:{hex}");
            ensure!(
                digest_of(&data) == digest,
                "blob {name} holds {}",
                digest_of(&data)
            );
            blobs.insert(digest, data);
        }
        let entries = index["manifests"]
            .as_array()
            .context("index without manifests")?;
        ensure!(
            entries.len() == 1,
            "the index lists {} manifests",
            entries.len()
        );
        let entry = &entries[0];
        let digest = entry["digest"]
            .as_str()
            .context("index entry without digest")?
            .to_string();
        let manifest_bytes = blobs
            .get(&digest)
            .context("the manifest's blob is missing")?
            .clone();
        ensure!(
            entry["size"].as_u64() == Some(manifest_bytes.len() as u64),
            "the index gives the manifest's size as {}, it is {}",
            entry["size"],
            manifest_bytes.len()
        );
        let manifest: Value = serde_json::from_slice(&manifest_bytes)?;
        for d in std::iter::once(&manifest["config"]).chain(
            manifest["layers"]
                .as_array()
                .context("manifest without layers")?,
        ) {
            let digest = d["digest"].as_str().context("descriptor without digest")?;
            let blob = blobs
                .get(digest)
                .with_context(|| format!("blob {digest} is missing"))?;
            ensure!(
                d["size"].as_u64() == Some(blob.len() as u64),
                "{digest}: size {} in the manifest, {} in the layout",
                d["size"],
                blob.len()
            );
        }
        let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default();
        let config: Value = serde_json::from_slice(&blobs[config_digest])?;
        Ok(Self {
            ref_name: entry["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .map(str::to_string),
            index,
            digest,
            manifest_bytes,
            manifest,
            config,
            blobs,
        })
    }

    /// The layers' blobs, bottom first.
    pub fn layers(&self) -> Vec<&[u8]> {
        self.manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["digest"].as_str())
            .filter_map(|d| self.blobs.get(d).map(Vec::as_slice))
            .collect()
    }
}

/// One entry of a layer, as its tar header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// The path as written (`usr/local/bin/x`; a directory's without its trailing `/`).
    pub path: String,
    /// Regular, directory, symlink…
    pub kind: EntryType,
    /// Permission bits (with setuid, setgid and sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time.
    pub mtime: u64,
    /// A link's target.
    pub link: Option<String>,
    /// A regular file's size.
    pub size: u64,
    /// A regular file's `sha256:` digest, when the layer is read without unpacking it (unpacked, read the
    /// file).
    pub digest: Option<String>,
}

/// A gzipped layer: its entries in order, its uncompressed digest (the config's diff_id) and size. With
/// `unpack_to`, it is also unpacked there (permissions kept).
pub fn read_layer(gz: &[u8], unpack_to: Option<&Path>) -> Result<(Vec<LayerEntry>, String, u64)> {
    let mut reader = Hashing {
        inner: flate2::read::GzDecoder::new(gz),
        hash: sha2::Sha256::new(),
        size: 0,
    };
    let mut entries = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut reader);
        archive.set_preserve_permissions(true);
        for e in archive.entries()? {
            let mut e = e?;
            let h = e.header().clone();
            let path = e
                .path()?
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            let kind = h.entry_type();
            let link = e.link_name()?.map(|l| l.to_string_lossy().into_owned());
            let digest = match (kind, unpack_to) {
                (_, Some(root)) => {
                    ensure!(e.unpack_in(root)?, "{path} would land outside the rootfs");
                    None
                }
                (EntryType::Regular, None) => {
                    let mut data = Vec::new();
                    e.read_to_end(&mut data)?;
                    Some(digest_of(&data))
                }
                (_, None) => None,
            };
            entries.push(LayerEntry {
                path,
                kind,
                mode: h.mode()?,
                uid: h.uid()?,
                gid: h.gid()?,
                mtime: h.mtime()?,
                link,
                size: h.size()?,
                digest,
            });
        }
    }
    // The end-of-archive blocks and any padding count in the diff_id too.
    std::io::copy(&mut reader, &mut std::io::sink())?;
    Ok((
        entries,
        format!("sha256:{}", hex::encode(reader.hash.finalize())),
        reader.size,
    ))
}

struct Hashing<R> {
    inner: R,
    hash: sha2::Sha256,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}
