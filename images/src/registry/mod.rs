//! Talking to registries with `oci-client`: TLS roots, plain-HTTP exceptions, credentials, manifest
//! resolution (indexes included) and verified blob downloads.
//!
//! # Layout
//! - [`auth`]: credentials from a Docker/containers auth file.
//! - this file: the client, [`Registry::resolve`] and [`Registry::download_blob`].

pub(crate) mod auth;

use std::path::Path;

use futures::StreamExt as _;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, ImageIndexEntry,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest, OciManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::AsyncWriteExt as _;

use crate::config::{Platform, RegistryConfig};
use crate::digest::{Digest, Hasher};
use crate::error::ImageError;

const MANIFEST_TYPES: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// Manifests larger than this are refused (real ones are a few KiB).
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// A client for every registry, with the store's TLS, protocol and credential settings.
pub(crate) struct Registry {
    client: Client,
    config: RegistryConfig,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A resolved image manifest.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) manifest: OciImageManifest,
    pub(crate) raw: Vec<u8>,
    pub(crate) digest: Digest,
}

impl Registry {
    /// Builds the client: rustls with ring, the system's roots (`SSL_CERT_FILE` honoured) plus the extra
    /// CA files, plain HTTP only for the insecure registries.
    pub(crate) fn new(config: &RegistryConfig) -> Result<Self, ImageError> {
        // reqwest is built without a default crypto provider; install ring unless the process has one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = Vec::new();
        if config.system_roots {
            let native = rustls_native_certs::load_native_certs();
            if !native.errors.is_empty() {
                tracing::warn!(errors = ?native.errors, "some system CA certificates could not be loaded");
            }
            roots.extend(native.certs);
        }
        for file in &config.extra_ca_files {
            let certs = CertificateDer::pem_file_iter(file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    ImageError::io(
                        format!("reading CA certificates from {}", file.display()),
                        std::io::Error::other(e.to_string()),
                    )
                })?;
            roots.extend(certs);
        }
        let client_config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(config.insecure_registries.clone()),
            tls_certs_only: roots
                .into_iter()
                .map(|c| Certificate {
                    encoding: CertificateEncoding::Der,
                    data: c.as_ref().to_vec(),
                })
                .collect(),
            connect_timeout: Some(config.connect_timeout),
            read_timeout: Some(config.read_timeout),
            platform_resolver: None,
            ..ClientConfig::default()
        };
        let client = Client::try_from(client_config).map_err(|e| {
            ImageError::io("building the registry client", std::io::Error::other(e))
        })?;
        Ok(Self {
            client,
            config: config.clone(),
        })
    }

    /// Credentials for the reference's registry (anonymous without an auth file).
    fn credentials(&self, r: &Reference) -> Result<RegistryAuth, ImageError> {
        match &self.config.auth_file {
            Some(path) => auth::credentials_for(path, r.registry()),
            None => Ok(RegistryAuth::Anonymous),
        }
    }

    /// Fetches the image manifest for `r` (through an index to the configured platform), verifying every
    /// manifest against its digest.
    pub(crate) async fn resolve(&self, r: &Reference) -> Result<Resolved, ImageError> {
        let key = r.whole();
        let auth = self.credentials(r)?;
        let (manifest, raw, digest) = self.fetch_manifest(r, &key, &auth).await?;
        if let Some(want) = r.digest()
            && want != digest.as_str()
        {
            return Err(mismatch(&key, want, &digest));
        }
        let index = match manifest {
            OciManifest::Image(manifest) => {
                return Ok(Resolved {
                    manifest,
                    raw,
                    digest,
                });
            }
            OciManifest::ImageIndex(index) => index,
        };
        let entry = select_platform(&index.manifests, &self.config.platform).ok_or_else(|| {
            ImageError::NoMatchingPlatform {
                reference: key.clone(),
                platform: self.config.platform.to_string(),
            }
        })?;
        let want = Digest::parse(&entry.digest).ok_or_else(|| ImageError::Unsupported {
            reference: key.clone(),
            what: format!("index entry digest {:?}", entry.digest),
        })?;
        let (manifest, raw, digest) = self
            .fetch_manifest(&r.clone_with_digest(want.to_string()), &key, &auth)
            .await?;
        if digest != want {
            return Err(mismatch(&key, want.as_str(), &digest));
        }
        match manifest {
            OciManifest::Image(manifest) => Ok(Resolved {
                manifest,
                raw,
                digest,
            }),
            OciManifest::ImageIndex(_) => Err(ImageError::Unsupported {
                reference: key,
                what: "an image index nested in an image index".into(),
            }),
        }
    }

    async fn fetch_manifest(
        &self,
        r: &Reference,
        key: &str,
        auth: &RegistryAuth,
    ) -> Result<(OciManifest, Vec<u8>, Digest), ImageError> {
        let (body, _) = self
            .client
            .pull_manifest_raw(r, auth, MANIFEST_TYPES)
            .await
            .map_err(|e| ImageError::from_registry(key, r.registry(), e))?;
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(ImageError::InvalidImage {
                reference: key.into(),
                what: format!("manifest of {} bytes", body.len()),
            });
        }
        let digest = Digest::of(&body);
        let manifest = parse_manifest(&body).map_err(|what| ImageError::InvalidImage {
            reference: key.into(),
            what,
        })?;
        Ok((manifest, body.to_vec(), digest))
    }

    /// Downloads a blob to `dest`, hashing it as it streams and refusing more bytes than its descriptor
    /// declares (or than `max_bytes`). On success `dest` holds exactly the content named by the digest.
    pub(crate) async fn download_blob(
        &self,
        r: &Reference,
        desc: &OciDescriptor,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<(), ImageError> {
        let key = r.whole();
        let digest = checked_digest(&key, &desc.digest)?;
        let size = u64::try_from(desc.size).unwrap_or(0);
        if size > max_bytes {
            return Err(ImageError::InvalidImage {
                reference: key,
                what: format!("blob {digest} of {size} bytes is larger than the limit {max_bytes}"),
            });
        }
        // Blob requests reuse the token or credentials stored by the manifest request.
        let auth = self.credentials(r)?;
        self.client
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        let mut stream = self
            .client
            .pull_blob_stream(r, desc)
            .await
            .map_err(|e| ImageError::from_registry(&key, r.registry(), e))?;
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| ImageError::io(format!("creating {}", dest.display()), e))?;
        let mut hasher = Hasher::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| stream_error(&key, r.registry(), &digest, e))?;
            hasher.update(&chunk);
            if hasher.len() > size {
                return Err(ImageError::BlobMismatch {
                    reference: key,
                    digest: digest.to_string(),
                    what: format!("more bytes than the {size} its descriptor declares"),
                });
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| ImageError::io(format!("writing {}", dest.display()), e))?;
        }
        file.sync_all()
            .await
            .map_err(|e| ImageError::io(format!("writing {}", dest.display()), e))?;
        let (len, actual) = (hasher.len(), hasher.finish());
        if actual != digest || len != size {
            return Err(ImageError::BlobMismatch {
                reference: key,
                digest: digest.to_string(),
                what: format!("content does not match (got {actual}, {len} of {size} bytes)"),
            });
        }
        Ok(())
    }
}

fn mismatch(key: &str, want: &str, got: &Digest) -> ImageError {
    ImageError::BlobMismatch {
        reference: key.into(),
        digest: want.into(),
        what: format!("manifest content does not match its digest (got {got})"),
    }
}

fn stream_error(key: &str, registry: &str, digest: &Digest, e: std::io::Error) -> ImageError {
    if e.get_ref().is_some_and(|i| i.is::<DigestError>()) {
        return ImageError::BlobMismatch {
            reference: key.into(),
            digest: digest.to_string(),
            what: format!("content does not match ({e})"),
        };
    }
    ImageError::from_registry(key, registry, OciDistributionError::IoError(e))
}

/// A descriptor's digest, refused unless it is a well-formed sha256 (it becomes a file name).
pub(crate) fn checked_digest(key: &str, digest: &str) -> Result<Digest, ImageError> {
    Digest::parse(digest).ok_or_else(|| ImageError::Unsupported {
        reference: key.into(),
        what: format!("digest {digest:?} (only sha256 is supported)"),
    })
}

/// Parses a manifest or index body (schema 2; Docker v2 or OCI).
pub(crate) fn parse_manifest(body: &[u8]) -> Result<OciManifest, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Versioned {
        schema_version: i64,
    }
    let v: Versioned =
        serde_json::from_slice(body).map_err(|e| format!("manifest is not valid: {e}"))?;
    if v.schema_version != 2 {
        return Err(format!(
            "manifest schema version {} (only 2 is supported)",
            v.schema_version
        ));
    }
    serde_json::from_slice(body).map_err(|e| format!("manifest is not valid: {e}"))
}

/// The first index entry for `platform` (an exact variant match first when a variant is configured).
pub(crate) fn select_platform<'a>(
    entries: &'a [ImageIndexEntry],
    platform: &Platform,
) -> Option<&'a ImageIndexEntry> {
    let matching = |e: &&ImageIndexEntry| {
        e.platform.as_ref().is_some_and(|p| {
            p.os.to_string() == platform.os && p.architecture.to_string() == platform.architecture
        })
    };
    if let Some(v) = &platform.variant {
        let exact = entries
            .iter()
            .filter(matching)
            .find(|e| e.platform.as_ref().and_then(|p| p.variant.as_ref()) == Some(v));
        if exact.is_some() {
            return exact;
        }
    }
    entries.iter().find(matching)
}
