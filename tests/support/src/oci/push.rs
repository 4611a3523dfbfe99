//! Getting built images to a registry and reading them back: [`Pusher`] (plain HTTP, or TLS with basic auth), a TLS
//! [`Registry`] with htpasswd auth and a CA of its own, and a Docker auth file.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::Result;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::json;

use super::{Built, ImageSpec, build, digest_of};
use crate::registry::{Registry, RegistryOptions, RegistryTls};

/// The user of [`tls_registry`]'s htpasswd.
pub const USER: &str = "airlock";
/// Its password.
pub const PASSWORD: &str = "correct horse battery staple";

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
        Self::plain_host(&r.host())
    }

    /// To the plain-HTTP registry without auth at `host` (`127.0.0.1:PORT`).
    pub fn plain_host(host: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        });
        Self {
            client,
            auth: RegistryAuth::Anonymous,
            host: host.to_string(),
        }
    }

    /// To a [`tls_registry`], trusting `ca_pem`, as [`USER`].
    pub fn tls(r: &Registry, ca_pem: &str) -> Self {
        Self::tls_host(&r.host(), ca_pem)
    }

    /// To the TLS registry at `host`, trusting `ca_pem`, as [`USER`].
    pub fn tls_host(host: &str, ca_pem: &str) -> Self {
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
            host: host.to_string(),
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

    /// Pushes `spec` as `HOST/name` unless the registry already has its manifest (blobs are content
    /// addressed: the same build is the same digest); returns `HOST/repository@digest`.
    pub async fn push_once(&self, name: &str, spec: &ImageSpec) -> Result<String> {
        let built = build(spec)?;
        let repository = name.split_once(':').map_or(name, |(r, _)| r);
        let pinned = self.reference(&format!("{repository}@{}", built.digest));
        let r: Reference = pinned.parse()?;
        if self
            .client
            .fetch_manifest_digest(&r, &self.auth)
            .await
            .is_err()
        {
            self.push_built(name, &built).await?;
        }
        Ok(pinned)
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
            .push_manifest_raw(&r, built.manifest.clone(), built.manifest_type.parse()?)
            .await?;
        Ok(())
    }

    /// What the registry serves for `HOST/name` (`repository:tag` or `repository@digest`): the manifest's
    /// bytes and the digest the registry gives them.
    pub async fn pull_manifest(&self, name: &str) -> Result<(Vec<u8>, String)> {
        let r: Reference = self.reference(name).parse()?;
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(
                &r,
                &self.auth,
                &[
                    oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
                    oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
                ],
            )
            .await?;
        Ok((bytes.to_vec(), digest))
    }

    /// The blob `digest` of `HOST/repository`, checked against its digest.
    pub async fn pull_blob(&self, repository: &str, digest: &str) -> Result<Vec<u8>> {
        let r: Reference = self.reference(repository).parse()?;
        self.client
            .auth(&r, &self.auth, RegistryOperation::Pull)
            .await?;
        let mut out = Vec::new();
        self.client.pull_blob(&r, digest, &mut out).await?;
        anyhow::ensure!(
            digest_of(&out) == digest,
            "{repository}: blob {digest} came back as {}",
            digest_of(&out)
        );
        Ok(out)
    }

    /// Pushes an image index over `images` (one per architecture) as `HOST/name`; returns its digest.
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
