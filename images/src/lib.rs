//! The image store: makes container images real for the local sandbox.
//!
//! [`ImageStore::ensure`] makes an image present under a [`PullPolicy`] and returns a [`LeasedImage`]:
//! the unpacked rootfs path, the parsed [`ImageConfig`] (Entrypoint, Cmd, Env, WorkingDir, User), and a
//! lease that keeps the image from being evicted while a run uses it. Images are pulled with `oci-client`
//! (OCI and Docker v2 manifests, image indexes, tags and digests; rustls, plain HTTP only for listed
//! registries; credentials from a Docker auth file), every blob is verified against its digest, and the
//! layers — untrusted input — are unpacked without ever letting an entry write outside the rootfs. The
//! cache is content-addressed by manifest digest, shared safely between processes, and bounded with LRU
//! eviction of unleased images. Images can also be imported from OCI layouts for air-gapped machines.
//!
//! ```no_run
//! # async fn f() -> Result<(), airlock_images::ImageError> {
//! use airlock_images::{ImageStore, PullPolicy, StoreConfig};
//! let store = ImageStore::open(StoreConfig::from_env("/var/lib/airlock-images"))?;
//! let image = store.ensure("127.0.0.1:5000/tools:1", PullPolicy::IfNotPresent).await?;
//! println!("{} {:?}", image.rootfs().display(), image.config().default_command());
//! drop(image); // the run is over: the image may be evicted again
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: [`StoreConfig`], [`RegistryConfig`] (with `from_env`), [`PullPolicy`], [`Platform`].
//! - [`error`]: [`ImageError`], classified retryable or permanent by kind.
//! - `store/`: [`ImageStore`] (ensure, list, remove, gc), leases, locks, the directory layout, eviction.
//! - `registry/`: the `oci-client` side: TLS, credentials, manifests and indexes, verified downloads.
//! - `unpack/`: the safe layer unpacker (paths, symlinks, hard links, whiteouts, special files).
//! - `import/`: OCI layout directories and archives.
//! - [`digest`], [`image_config`]: validated digests, the typed image config.
//! - `reference`: [`ImageRef`], a reference parsed once and passed on in its parts.

pub mod config;
pub mod digest;
pub mod error;
pub mod image_config;
mod import;
mod reference;
mod registry;
mod store;
mod unpack;

pub use config::{
    Platform, PullPolicy, RegistryConfig, StoreConfig, UnknownPullPolicy, parse_registry_list,
};
pub use digest::Digest;
pub use error::ImageError;
pub use image_config::ImageConfig;
pub use import::ImportedImage;
pub use reference::ImageRef;
pub use store::{ImageInfo, ImageStore, LeasedImage, normalize_reference};
pub use unpack::LayerError;
