//! The cluster's certificates (one CA per cluster, made fresh by `up`) and kubeconfigs.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::Result;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};

/// The CA and the ServiceAccount signing key of one cluster, written under `DIR/pki`.
pub(super) struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub(super) struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A fresh CA in `dir` (`ca.crt`), and the ServiceAccount key pair (`sa.key`, `sa.pub`).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "airlock test cluster CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        std::fs::write(dir.join("ca.crt"), ca.pem())?;
        let sa = KeyPair::generate()?;
        std::fs::write(dir.join("sa.key"), sa.serialize_pem())?;
        std::fs::write(dir.join("sa.pub"), sa.public_key_pem())?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ca,
        })
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }

    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }

    /// The API server's serving certificate: loopback, the first service IP, the address pods reach the
    /// host on, and the `kubernetes` Service's names.
    pub fn apiserver(&self, service_ip: Ipv4Addr, host_addr: Ipv4Addr) -> Result<CertFiles> {
        let names = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ];
        let mut p = CertificateParams::new(names.map(String::from).to_vec())?;
        for ip in [Ipv4Addr::LOCALHOST, service_ip, host_addr] {
            p.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(ip)));
        }
        p.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign("apiserver", p)
    }

    /// A serving certificate for `ip` (and `localhost`).
    pub fn server(&self, file: &str, ip: &str) -> Result<CertFiles> {
        let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
        p.subject_alt_names.push(SanType::IpAddress(ip.parse()?));
        p.distinguished_name.push(DnType::CommonName, ip);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(file, p)
    }

    /// A client certificate for user `cn` in group `org`.
    pub fn client(&self, file: &str, cn: &str, org: Option<&str>) -> Result<CertFiles> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(o) = org {
            p.distinguished_name.push(DnType::OrganizationName, o);
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(file, p)
    }

    fn sign(&self, file: &str, params: CertificateParams) -> Result<CertFiles> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }

    /// Writes a kubeconfig for `server` authenticating with `cert`.
    pub fn kubeconfig(
        &self,
        path: &Path,
        server: &str,
        user: &str,
        cert: &CertFiles,
    ) -> Result<()> {
        let b64 = |p: &Path| -> Result<String> {
            Ok(base64::engine::general_purpose::STANDARD.encode(std::fs::read(p)?))
        };
        let auth = format!(
            "client-certificate-data: {}\n    client-key-data: {}",
            b64(&cert.cert)?,
            b64(&cert.key)?
        );
        write_kubeconfig(path, server, &self.ca_pem(), user, &auth)
    }
}

/// Writes a kubeconfig with one cluster, user and context; `auth` is the user's YAML fields, indented.
pub(super) fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    auth: &str,
) -> Result<()> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: airlock-test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    {auth}\ncontexts:\n- name: {user}@airlock-test\n  context:\n    cluster: airlock-test\n    user: {user}\ncurrent-context: {user}@airlock-test\n"
    );
    std::fs::write(path, text)?;
    Ok(())
}
