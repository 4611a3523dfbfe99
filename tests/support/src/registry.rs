//! A real OCI registry (Debian's `docker-registry`, distribution 2.8) on a free 127.0.0.1 port with
//! throwaway storage: plain HTTP, or TLS with a certificate and htpasswd auth the test provides.
//!
//! Its access log (combined log format, on stdout) is kept, so tests can count the requests it served
//! ([`Registry::requests`]). The binary is found through `AIRLOCK_DOCKER_REGISTRY`, then `PATH`
//! (`scripts/setup` installs it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};

/// TLS and authentication for a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Serve HTTPS with this certificate chain and key (PEM).
    pub tls: Option<RegistryTls>,
    /// Require HTTP basic auth against this htpasswd file content (bcrypt hashes).
    pub htpasswd: Option<String>,
}

/// A server certificate (chain) and its key, PEM.
#[derive(Debug, Clone)]
pub struct RegistryTls {
    /// Certificate chain.
    pub cert_pem: String,
    /// Private key.
    pub key_pem: String,
}

/// One request from the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRequest {
    /// `GET`, `HEAD`…
    pub method: String,
    /// `/v2/<name>/manifests/<ref>`…
    pub path: String,
    /// HTTP status.
    pub status: u16,
}

/// A running registry; killed on drop.
#[derive(Debug)]
pub struct Registry {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    tls: bool,
    child: Option<Child>,
    starts: usize,
}

impl Registry {
    /// A plain-HTTP registry without auth.
    pub async fn start_plain() -> Result<Self> {
        Self::start(RegistryOptions::default()).await
    }

    /// A registry with the given TLS and auth settings.
    pub async fn start(opts: RegistryOptions) -> Result<Self> {
        let binary = super::find_binary("AIRLOCK_DOCKER_REGISTRY", "docker-registry")?;
        let dir = tempfile::Builder::new()
            .prefix("airlock-registry-")
            .tempdir()?;
        let port = super::free_port()?;
        let d = dir.path();
        let tls = match &opts.tls {
            Some(tls) => {
                std::fs::write(d.join("cert.pem"), &tls.cert_pem)?;
                std::fs::write(d.join("key.pem"), &tls.key_pem)?;
                Some((d.join("cert.pem"), d.join("key.pem")))
            }
            None => None,
        };
        let htpasswd = match &opts.htpasswd {
            Some(h) => {
                std::fs::write(d.join("htpasswd"), h)?;
                Some(d.join("htpasswd"))
            }
            None => None,
        };
        let config = config_yaml(&d.join("data"), port, tls.as_ref(), htpasswd.as_deref());
        std::fs::write(d.join("config.yml"), config)?;
        let mut r = Self {
            binary,
            dir,
            port,
            tls: opts.tls.is_some(),
            child: None,
            starts: 0,
        };
        r.spawn().await?;
        Ok(r)
    }

    async fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let d = self.dir.path();
        let out = std::fs::File::create(d.join(format!("access-{}.log", self.starts)))?;
        let err = std::fs::File::create(d.join(format!("registry-{}.log", self.starts)))?;
        let mut child = Command::new(&self.binary)
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        super::wait_for_port(
            std::net::Ipv4Addr::LOCALHOST,
            self.port,
            &mut child,
            "docker-registry",
        )
        .await?;
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Polls `/v2/` until it answers (200, or 401 with auth). Over TLS the answer is not read (the
    /// harness has no TLS client): there the "listening" line of the server's log is the event.
    async fn wait_ready(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ready = if self.tls {
                std::fs::read_to_string(
                    self.dir
                        .path()
                        .join(format!("registry-{}.log", self.starts)),
                )
                .map(|l| l.contains("listening on"))
                .unwrap_or(false)
            } else {
                self.probe_v2().await.is_ok_and(|s| s == 200 || s == 401)
            };
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "docker-registry on port {} not ready within 20 s",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn probe_v2(&self) -> Result<u16> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await?;
        let line = String::from_utf8_lossy(&buf[..n]);
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status line")
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Requests served so far (every run of the server), from its access log.
    pub fn requests(&self) -> Result<Vec<RegistryRequest>> {
        let mut out = Vec::new();
        for i in 1..=self.starts {
            let log = std::fs::read_to_string(self.dir.path().join(format!("access-{i}.log")))?;
            out.extend(log.lines().filter_map(parse_access_line));
        }
        Ok(out)
    }

    /// How many `GET`s of manifests of `repository` answered 200.
    pub fn manifest_gets(&self, repository: &str) -> Result<usize> {
        let prefix = format!("/v2/{repository}/manifests/");
        Ok(self
            .requests()?
            .iter()
            .filter(|r| r.method == "GET" && r.status == 200 && r.path.starts_with(&prefix))
            .count())
    }

    /// Kills the server (its storage stays).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    /// Starts it again on the same port with the same storage.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.spawn().await
    }
}

/// The registry's configuration: storage under `data`, `127.0.0.1:port`, the access log on stdout, TLS
/// with `(certificate, key)` files and htpasswd auth when given.
pub(crate) fn config_yaml(
    data: &Path,
    port: u16,
    tls: Option<&(PathBuf, PathBuf)>,
    htpasswd: Option<&Path>,
) -> String {
    let mut config = format!(
        "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: airlock-test-secret\n",
        data.display()
    );
    if let Some((cert, key)) = tls {
        config.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        ));
    }
    if let Some(h) = htpasswd {
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: airlock-test\n    path: {}\n",
            h.display()
        ));
    }
    config
}

/// The requests of an access log's text.
pub(crate) fn parse_access_log(text: &str) -> Vec<RegistryRequest> {
    text.lines().filter_map(parse_access_line).collect()
}

/// `127.0.0.1 - - [date] "GET /v2/x/manifests/1 HTTP/1.1" 200 …`
fn parse_access_line(line: &str) -> Option<RegistryRequest> {
    let (_, rest) = line.split_once('"')?;
    let (request, rest) = rest.split_once('"')?;
    let mut req = request.split_whitespace();
    let method = req.next()?.to_string();
    let path = req.next()?.to_string();
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some(RegistryRequest {
        method,
        path,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_log_lines_are_parsed() {
        let l = r#"127.0.0.1 - - [30/Nov/2025:08:00:00 +0000] "GET /v2/a/b/manifests/1 HTTP/1.1" 200 527 "" "oci-client/0.18""#;
        assert_eq!(
            parse_access_line(l),
            Some(RegistryRequest {
                method: "GET".into(),
                path: "/v2/a/b/manifests/1".into(),
                status: 200
            })
        );
    }
}
