//! The store's configuration, field by field, and the pull policy.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Where the cache lives and how big it may grow.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// State directory of the cache (created if missing). Processes that share it (the services' local
    /// runtime, `airlock image`) share the images, pull each one once, and respect each other's leases. Its
    /// parents must be traversable by the users that will read the rootfs (sandbox uids).
    pub dir: PathBuf,
    /// Bound of the cache in bytes (approximate disk usage of the unpacked images). After each pull or
    /// import, least recently used images that no run leases are evicted until the cache fits. Leased
    /// images are never evicted, so the cache may exceed the bound while they are in use.
    /// Default: 20 GiB.
    pub max_cache_bytes: u64,
    /// Largest image accepted, in bytes: the sum of its uncompressed layers (tar headers included), and the
    /// largest blob downloaded. A larger image fails its pull permanently. Default: 8 GiB.
    pub max_image_bytes: u64,
    /// How to reach registries.
    pub registry: RegistryConfig,
}

impl StoreConfig {
    /// Defaults for a cache at `dir`, with registry settings from the environment
    /// ([`RegistryConfig::from_env`]).
    pub fn from_env(dir: impl Into<PathBuf>) -> Self {
        Self {
            registry: RegistryConfig::from_env(),
            ..Self::new(dir)
        }
    }

    /// Defaults for a cache at `dir`, with [`RegistryConfig::default`] (no environment read).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_cache_bytes: 20 << 30,
            max_image_bytes: 8 << 30,
            registry: RegistryConfig::default(),
        }
    }
}

/// How to reach registries: TLS, plain-HTTP exceptions, credentials, platform.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries (`host:port`, as written in image references) spoken to over plain HTTP. Every other
    /// registry is HTTPS. From `AIRLOCK_INSECURE_REGISTRIES` (comma-separated). Default: none.
    pub insecure_registries: Vec<String>,
    /// A Docker/containers auth file (`{"auths": {"host:port": {"auth": base64("user:pass")}}}`), read at
    /// every pull so that new credentials apply without a restart. `None`: anonymous pulls. A configured
    /// file that does not exist fails pulls (a typo must not silently mean anonymous).
    /// From `AIRLOCK_REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`
    /// (these two only if they exist).
    pub auth_file: Option<PathBuf>,
    /// Whether to trust the system's roots (as `rustls-native-certs` finds them: the platform store, or
    /// only `SSL_CERT_FILE` / `SSL_CERT_DIR` when set). Default: true.
    pub system_roots: bool,
    /// Extra PEM files of CA certificates to trust for registries, besides the system's roots.
    /// Default: none.
    pub extra_ca_files: Vec<PathBuf>,
    /// The platform chosen from multi-platform images (image indexes). Default: linux and the host's
    /// architecture.
    pub platform: Platform,
    /// Timeout to establish a connection. Default: 30 s.
    pub connect_timeout: Duration,
    /// Timeout for each read from a registry (not for a whole download). Default: 60 s.
    pub read_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            auth_file: None,
            system_roots: true,
            extra_ca_files: Vec::new(),
            platform: Platform::host(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

impl RegistryConfig {
    /// Defaults plus `AIRLOCK_INSECURE_REGISTRIES` and the auth file lookup described on
    /// [`RegistryConfig::auth_file`]. (`SSL_CERT_FILE` is honoured when the roots are loaded.)
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Self {
            insecure_registries: var("AIRLOCK_INSECURE_REGISTRIES")
                .map(|v| parse_registry_list(&v.to_string_lossy()))
                .unwrap_or_default(),
            auth_file: default_auth_file(
                var("AIRLOCK_REGISTRY_AUTH_FILE").map(PathBuf::from),
                var("DOCKER_CONFIG").map(PathBuf::from),
                var("HOME").map(PathBuf::from),
            ),
            ..Self::default()
        }
    }
}

/// Splits a comma-separated `host:port` list (spaces and empty items ignored).
pub fn parse_registry_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}

/// The auth file lookup: an explicit file wins; else `$DOCKER_CONFIG/config.json` or
/// `$HOME/.docker/config.json` when it exists.
fn default_auth_file(
    explicit: Option<PathBuf>,
    docker_config: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Option<PathBuf> {
    if explicit.is_some() {
        return explicit;
    }
    let candidate = match docker_config {
        Some(d) => d.join("config.json"),
        None => home?.join(".docker").join("config.json"),
    };
    Path::new(&candidate).exists().then_some(candidate)
}

/// An OS/architecture pair as in image indexes (`linux`, `amd64`, optional variant such as `v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `v7`, `v8`…; `None` takes the first entry of the right OS and architecture.
    pub variant: Option<String>,
}

impl Platform {
    /// linux and the architecture this program was built for, in OCI's names.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// When to contact the registry, as Kubernetes' `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum PullPolicy {
    /// Use the cached image if the reference was pulled (or imported) before; pull otherwise.
    #[default]
    IfNotPresent,
    /// Always resolve the reference at the registry; download only what the cache lacks.
    Always,
    /// Never contact a registry: an absent image fails at once.
    Never,
}

impl PullPolicy {
    /// `IfNotPresent`, `Always`, `Never`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IfNotPresent => "IfNotPresent",
            Self::Always => "Always",
            Self::Never => "Never",
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown pull policy name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown pull policy {0:?} (expected IfNotPresent, Always or Never)")]
pub struct UnknownPullPolicy(pub String);

impl FromStr for PullPolicy {
    type Err = UnknownPullPolicy;

    /// Kubernetes' names, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ifnotpresent" => Ok(Self::IfNotPresent),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => Err(UnknownPullPolicy(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_registry_lists_are_comma_separated_and_trimmed() {
        assert_eq!(
            parse_registry_list(" 127.0.0.1:5000, localhost:5001,,"),
            ["127.0.0.1:5000", "localhost:5001"]
        );
    }

    #[test]
    fn an_explicit_auth_file_wins_and_defaults_apply_only_when_present() {
        let dir = tempfile::tempdir().expect("tempdir");
        let explicit = dir.path().join("auth.json");
        assert_eq!(
            default_auth_file(Some(explicit.clone()), None, Some(dir.path().into())),
            Some(explicit)
        );
        assert_eq!(default_auth_file(None, None, Some(dir.path().into())), None);
        std::fs::create_dir(dir.path().join(".docker")).expect("mkdir");
        std::fs::write(dir.path().join(".docker/config.json"), "{}").expect("write");
        assert_eq!(
            default_auth_file(None, None, Some(dir.path().into())),
            Some(dir.path().join(".docker/config.json"))
        );
        assert_eq!(
            default_auth_file(None, Some(dir.path().join("nope")), Some(dir.path().into())),
            None
        );
    }

    #[test]
    fn pull_policies_parse_case_insensitively() {
        assert_eq!("Never".parse::<PullPolicy>().ok(), Some(PullPolicy::Never));
        assert_eq!(
            "always".parse::<PullPolicy>().ok(),
            Some(PullPolicy::Always)
        );
        assert!("sometimes".parse::<PullPolicy>().is_err());
        assert_eq!(PullPolicy::default(), PullPolicy::IfNotPresent);
    }
}
