//! [`LayerError`]: why a layer was refused, as a reason message.

use std::io;

/// Why a layer was refused (the reason part of a pull error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// A `..` climbs above the rootfs.
    #[error("entry {entry:?} escapes the rootfs")]
    Escapes {
        /// The entry's name as written in the layer.
        entry: String,
    },
    /// An absolute path.
    #[error("entry {entry:?} is an absolute path")]
    Absolute {
        /// The entry's name.
        entry: String,
    },
    /// A parent directory of the entry is a symlink.
    #[error("entry {entry:?} goes through the symlink {symlink:?}")]
    ThroughSymlink {
        /// The entry's name.
        entry: String,
        /// The symlink's path in the rootfs.
        symlink: String,
    },
    /// A parent directory of the entry is a file.
    #[error("entry {entry:?} goes through {component:?}, which is not a directory")]
    NotADirectory {
        /// The entry's name.
        entry: String,
        /// The offending path in the rootfs.
        component: String,
    },
    /// A hard link whose target is absolute, climbs above the rootfs or goes through a symlink.
    #[error("hard link {entry:?} points outside the rootfs (to {target:?})")]
    HardLinkOutside {
        /// The link's name.
        entry: String,
        /// Its target as written in the layer.
        target: String,
    },
    /// A hard link whose target is missing or not a file.
    #[error("hard link {entry:?} points to {target:?}, which is not a file in the image")]
    HardLinkTarget {
        /// The link's name.
        entry: String,
        /// Its target.
        target: String,
    },
    /// A name that cannot be a file name (NUL bytes, an empty whiteout).
    #[error("entry {entry:?} has an invalid name")]
    InvalidName {
        /// The entry's name.
        entry: String,
    },
    /// Nested deeper than the store allows.
    #[error("entry {entry:?} is nested more than {max} directories deep")]
    TooDeep {
        /// The entry's name.
        entry: String,
        /// The limit.
        max: usize,
    },
    /// An entry type the store does not unpack (e.g. GNU sparse files).
    #[error("entry {entry:?} has an unsupported type ({kind})")]
    UnsupportedType {
        /// The entry's name.
        entry: String,
        /// The tar type.
        kind: String,
    },
    /// The blob is not a readable (compressed) tar stream.
    #[error("not a valid {format} tar stream: {source}")]
    Corrupt {
        /// `gzip`, `zstd` or `uncompressed`.
        format: &'static str,
        /// What the decoder said.
        #[source]
        source: io::Error,
    },
    /// The uncompressed content does not match the image config's diff_id.
    #[error("uncompressed content does not match the config's diff_id {expected} (got {actual})")]
    DiffIdMismatch {
        /// From the config.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The image unpacks to more than the store allows.
    #[error("the image unpacks to more than {limit} bytes")]
    TooLarge {
        /// The limit (`StoreConfig::max_image_bytes`).
        limit: u64,
    },
    /// A host filesystem error while writing the rootfs (not the layer's fault).
    #[error("writing {entry:?} into the rootfs: {source}")]
    Io {
        /// The entry being written.
        entry: String,
        /// The host's error.
        #[source]
        source: io::Error,
    },
}

impl LayerError {
    /// Only host I/O failures may go away on a retry; everything else is in the layer's content.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Io { .. })
    }
}
