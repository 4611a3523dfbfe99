//! The crate's one error type, classified by kind (never by message text).
//!
//! Display texts are reason messages: a caller can record `ErrImagePull: {err}` as a run's reason.

use std::io;
use std::path::PathBuf;

use oci_client::errors::{OciDistributionError, OciErrorCode};

use crate::unpack::LayerError;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// Not a valid image reference.
    #[error("invalid image reference {reference:?}: {source}")]
    InvalidReference {
        /// As given.
        reference: String,
        /// The parser's complaint.
        #[source]
        source: oci_client::ParseError,
    },
    /// Pull policy `Never` and the image is not in the store.
    #[error("image {reference:?} is not present and the pull policy is Never")]
    NotPresent {
        /// The reference.
        reference: String,
    },
    /// The registry does not have this repository, tag or digest.
    #[error("failed to pull image {reference:?}: not found (manifest unknown)")]
    NotFound {
        /// The reference.
        reference: String,
        /// The registry's answer.
        #[source]
        source: Box<OciDistributionError>,
    },
    /// The registry wants credentials, or refused the ones configured.
    #[error(
        "failed to pull image {reference:?}: unauthorized: registry {registry} refused access (credentials missing or rejected)"
    )]
    Unauthorized {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
        /// The registry's answer.
        #[source]
        source: Box<OciDistributionError>,
    },
    /// 429 Too Many Requests.
    #[error("failed to pull image {reference:?}: registry {registry} is rate-limiting pulls")]
    RateLimited {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
        /// The registry's answer.
        #[source]
        source: Box<OciDistributionError>,
    },
    /// The registry could not be reached, or answered with a server error (5xx).
    #[error("failed to pull image {reference:?}: registry {registry} unavailable: {detail}")]
    Unavailable {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
        /// What happened (the error chain, flattened).
        detail: String,
        /// The client's error.
        #[source]
        source: Box<OciDistributionError>,
    },
    /// The registry's TLS certificate is not trusted or not valid for its name.
    #[error(
        "failed to pull image {reference:?}: TLS certificate of registry {registry} refused: {detail}"
    )]
    Certificate {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
        /// What rustls said.
        detail: String,
        /// The client's error.
        #[source]
        source: Box<OciDistributionError>,
    },
    /// Any other refusal or protocol violation by the registry (other 4xx, malformed manifest…).
    #[error("failed to pull image {reference:?}: registry {registry}: {detail}")]
    Registry {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
        /// What happened.
        detail: String,
        /// The client's error.
        #[source]
        source: Box<OciDistributionError>,
    },
    /// An image index without an entry for the configured platform.
    #[error("failed to pull image {reference:?}: no image for platform {platform} in its index")]
    NoMatchingPlatform {
        /// The reference.
        reference: String,
        /// The platform wanted.
        platform: String,
    },
    /// Something the store does not handle (a non-sha256 digest, a non-image artifact…).
    #[error("failed to pull image {reference:?}: unsupported: {what}")]
    Unsupported {
        /// The reference.
        reference: String,
        /// What.
        what: String,
    },
    /// The image's manifest or config is malformed.
    #[error("failed to pull image {reference:?}: invalid image: {what}")]
    InvalidImage {
        /// The reference.
        reference: String,
        /// What is wrong.
        what: String,
    },
    /// A blob's content does not match its digest (or declared size).
    #[error("failed to pull image {reference:?}: blob {digest}: {what}")]
    BlobMismatch {
        /// The reference.
        reference: String,
        /// The blob's digest.
        digest: String,
        /// `digest mismatch (got …)` or a size problem.
        what: String,
    },
    /// A layer was refused (malicious or broken) or could not be written.
    #[error("failed to pull image {reference:?}: layer {digest}: {source}")]
    Layer {
        /// The reference.
        reference: String,
        /// The layer's digest.
        digest: String,
        /// Why.
        #[source]
        source: LayerError,
    },
    /// The auth file could not be read or parsed.
    #[error("registry auth file {}: {what}", path.display())]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// An import source is not a usable OCI layout.
    #[error("cannot import {}: {what}", path.display())]
    Import {
        /// The directory or archive.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// `remove` of a reference the store does not have.
    #[error("image {reference:?} is not in the store")]
    NotInStore {
        /// The reference.
        reference: String,
    },
    /// `remove` of an image a run holds a lease on.
    #[error("image {reference:?} is in use ({leases} lease(s)); not removed")]
    InUse {
        /// The reference.
        reference: String,
        /// Live leases.
        leases: usize,
    },
    /// A host I/O error in the store itself.
    #[error("image store: {context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The host's error.
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    /// Worth retrying later: the registry or the host may recover (connection, 5xx, 429, disk, a blob
    /// corrupted in transit, an image in use).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::RateLimited { .. }
            | Self::Unavailable { .. }
            | Self::BlobMismatch { .. }
            | Self::InUse { .. }
            | Self::Io { .. } => true,
            Self::Layer { source, .. } => source.is_retryable(),
            Self::InvalidReference { .. }
            | Self::NotPresent { .. }
            | Self::NotFound { .. }
            | Self::Unauthorized { .. }
            | Self::Certificate { .. }
            | Self::Registry { .. }
            | Self::NoMatchingPlatform { .. }
            | Self::Unsupported { .. }
            | Self::InvalidImage { .. }
            | Self::AuthFile { .. }
            | Self::Import { .. }
            | Self::NotInStore { .. } => false,
        }
    }

    /// The opposite of [`ImageError::is_retryable`]: retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        !self.is_retryable()
    }

    /// A layer refused for its content (paths escaping the rootfs, links through symlinks…).
    pub fn is_malicious_layer(&self) -> bool {
        matches!(self, Self::Layer { source, .. } if !source.is_retryable())
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Classifies an `oci-client` error by its variant, status code and OCI error codes.
    pub(crate) fn from_registry(reference: &str, registry: &str, e: OciDistributionError) -> Self {
        let reference = reference.to_string();
        let registry = registry.to_string();
        let detail = chain(&e);
        let class = RegistryClass::of(&e);
        let source = Box::new(e);
        match class {
            RegistryClass::Unauthorized => Self::Unauthorized {
                reference,
                registry,
                source,
            },
            RegistryClass::RateLimited => Self::RateLimited {
                reference,
                registry,
                source,
            },
            RegistryClass::NotFound => Self::NotFound { reference, source },
            RegistryClass::Unavailable => Self::Unavailable {
                reference,
                registry,
                detail,
                source,
            },
            RegistryClass::Certificate(detail) => Self::Certificate {
                reference,
                registry,
                detail,
                source,
            },
            RegistryClass::Other => Self::Registry {
                reference,
                registry,
                detail,
                source,
            },
        }
    }
}

/// What a registry failure was, which picks its [`ImageError`] variant.
enum RegistryClass {
    Unauthorized,
    RateLimited,
    NotFound,
    Unavailable,
    /// With what rustls said.
    Certificate(String),
    Other,
}

impl RegistryClass {
    fn of(e: &OciDistributionError) -> Self {
        match e {
            OciDistributionError::RegistryError { envelope, .. } => {
                let has = |c: &[OciErrorCode]| envelope.errors.iter().any(|e| c.contains(&e.code));
                if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                    Self::Unauthorized
                } else if has(&[OciErrorCode::Toomanyrequests]) {
                    Self::RateLimited
                } else if has(&[
                    OciErrorCode::ManifestUnknown,
                    OciErrorCode::NameUnknown,
                    OciErrorCode::NotFound,
                    OciErrorCode::BlobUnknown,
                ]) {
                    Self::NotFound
                } else {
                    Self::Other
                }
            }
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => Self::Unauthorized,
            OciDistributionError::ServerError { code, .. } => match *code {
                401 | 403 => Self::Unauthorized,
                404 => Self::NotFound,
                429 => Self::RateLimited,
                408 | 500..=599 => Self::Unavailable,
                _ => Self::Other,
            },
            OciDistributionError::RequestError(re) => match (find_tls_error(re), re.status()) {
                (Some(tls), _) => Self::Certificate(tls),
                (None, Some(s)) if s.as_u16() == 429 => Self::RateLimited,
                (None, Some(s)) if s.is_client_error() => Self::Other,
                (None, _) if re.is_builder() => Self::Other,
                // Connection refused/reset, timeouts, bodies cut short, 5xx.
                _ => Self::Unavailable,
            },
            OciDistributionError::IoError(_) => Self::Unavailable,
            OciDistributionError::ImageManifestNotFoundError(_) => Self::NotFound,
            _ => Self::Other,
        }
    }
}

/// `e: cause: cause…`, for messages.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// A rustls certificate error somewhere in the chain (rustls errors travel inside `io::Error`s, possibly
/// nested, whose payload `source()` skips, so those are opened with `get_ref`).
fn find_tls_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut todo: Vec<&(dyn std::error::Error + 'static)> = vec![e];
    let mut seen = 0;
    while let Some(c) = todo.pop() {
        seen += 1;
        if seen > 64 {
            break;
        }
        if let Some(
            t @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
        ) = c.downcast_ref::<rustls::Error>()
        {
            return Some(t.to_string());
        }
        if let Some(inner) = c.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            todo.push(inner);
        }
        if let Some(s) = c.source() {
            todo.push(s);
        }
    }
    None
}
