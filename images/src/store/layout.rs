//! The store's directory layout and its small metadata files.
//!
//! ```text
//! <dir>/images/<hex>/rootfs/       the unpacked image (one per manifest digest), renamed into place whole
//! <dir>/images/<hex>/meta.json     digest, size, typed config, origin
//! <dir>/images/<hex>/config.json   the config blob as pulled;  manifest.json likewise
//! <dir>/images/<hex>/last-used     its mtime is the LRU clock
//! <dir>/refs.json                  reference -> manifest digest
//! <dir>/leases/<hex>/<id>          one file per lease, flock-ed by its holder
//! <dir>/locks/                     flock files: <hex>.lock (an image), ref-<sha of ref>.lock, store.lock
//! <dir>/tmp/<hex>/                 an image being built (under its lock)
//! <dir>/trash/                     images being deleted
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::ImageError;
use crate::image_config::ImageConfig;

/// Paths of a store directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
}

/// What the store records about an image (`meta.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) digest: String,
    pub(crate) config_digest: String,
    pub(crate) size_bytes: u64,
    pub(crate) config: ImageConfig,
    /// `pulled from <ref>` or `imported from <path>`.
    pub(crate) origin: String,
    pub(crate) created_unix: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RefsFile {
    refs: BTreeMap<String, String>,
}

impl Layout {
    /// Creates the directories under `root`.
    pub(crate) fn create(root: &Path) -> Result<Self, ImageError> {
        let l = Self {
            root: root.to_path_buf(),
        };
        for d in ["images", "leases", "locks", "tmp", "trash"] {
            let p = root.join(d);
            fs::create_dir_all(&p)
                .map_err(|e| ImageError::io(format!("creating {}", p.display()), e))?;
        }
        Ok(l)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    pub(crate) fn image(&self, d: &Digest) -> PathBuf {
        self.images().join(d.hex())
    }

    pub(crate) fn rootfs(&self, d: &Digest) -> PathBuf {
        self.image(d).join("rootfs")
    }

    pub(crate) fn leases(&self, d: &Digest) -> PathBuf {
        self.root.join("leases").join(d.hex())
    }

    pub(crate) fn tmp(&self, d: &Digest) -> PathBuf {
        self.root.join("tmp").join(d.hex())
    }

    pub(crate) fn trash(&self) -> PathBuf {
        self.root.join("trash")
    }

    pub(crate) fn image_lock(&self, d: &Digest) -> PathBuf {
        self.root.join("locks").join(format!("{}.lock", d.hex()))
    }

    pub(crate) fn ref_lock(&self, key: &str) -> PathBuf {
        let h = Digest::of(key.as_bytes());
        self.root
            .join("locks")
            .join(format!("ref-{}.lock", h.hex()))
    }

    pub(crate) fn store_lock(&self) -> PathBuf {
        self.root.join("locks").join("store.lock")
    }

    fn refs_file(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    /// The image's metadata, `None` if the image is not (completely) in the store.
    pub(crate) fn meta(&self, d: &Digest) -> Result<Option<Meta>, ImageError> {
        let p = self.image(d).join("meta.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                ImageError::io(format!("reading {}", p.display()), io::Error::other(e))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io(format!("reading {}", p.display()), e)),
        }
    }

    /// Digests of the images in the store.
    pub(crate) fn image_digests(&self) -> Result<Vec<Digest>, ImageError> {
        let dir = self.images();
        let rd = fs::read_dir(&dir)
            .map_err(|e| ImageError::io(format!("listing {}", dir.display()), e))?;
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| ImageError::io(format!("listing {}", dir.display()), e))?;
            if let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|n| Digest::parse(&format!("sha256:{n}")))
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Marks the image used now (the LRU clock).
    pub(crate) fn touch(&self, d: &Digest) -> Result<(), ImageError> {
        let p = self.image(d).join("last-used");
        File::create(&p)
            .and_then(|f| f.set_modified(SystemTime::now()))
            .map_err(|e| ImageError::io(format!("touching {}", p.display()), e))
    }

    /// When the image was last used (its creation if never).
    pub(crate) fn last_used(&self, d: &Digest) -> SystemTime {
        fs::metadata(self.image(d).join("last-used"))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// All references and their digests.
    pub(crate) fn refs(&self) -> Result<BTreeMap<String, Digest>, ImageError> {
        let p = self.refs_file();
        let file: RefsFile = match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                ImageError::io(format!("reading {}", p.display()), io::Error::other(e))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => RefsFile::default(),
            Err(e) => return Err(ImageError::io(format!("reading {}", p.display()), e)),
        };
        Ok(file
            .refs
            .into_iter()
            .filter_map(|(k, v)| Digest::parse(&v).map(|d| (k, d)))
            .collect())
    }

    /// Rewrites the references with `f`, under the store lock (blocking: call from a blocking thread).
    pub(crate) fn update_refs(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, Digest>),
    ) -> Result<(), ImageError> {
        let _lock = super::lock::FileLock::acquire_blocking(&self.store_lock())
            .map_err(|e| ImageError::io("locking refs.json", e))?;
        let mut refs = self.refs()?;
        f(&mut refs);
        let file = RefsFile {
            refs: refs.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| ImageError::io("encoding refs", io::Error::other(e)))?;
        write_atomic(&self.refs_file(), &bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let r = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    r.map_err(|e| ImageError::io(format!("writing {}", path.display()), e))
}

/// Seconds since the epoch.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
