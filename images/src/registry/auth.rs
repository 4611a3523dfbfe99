//! Credentials from a Docker/containers auth file.
//!
//! Only inline credentials are read (`auth`: base64 of `user:password`, or `username` + `password`);
//! credential helpers (`credsStore`, `credHelpers`) are not run.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::error::ImageError;

#[derive(Debug, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Debug, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The credentials for `registry` (`host:port` as in the reference) in the auth file at `path`, or
/// anonymous if the file has none for it.
pub(crate) fn credentials_for(path: &Path, registry: &str) -> Result<RegistryAuth, ImageError> {
    let bad = |what: String| ImageError::AuthFile {
        path: path.to_path_buf(),
        what,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let file: AuthFile =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("is not valid JSON: {e}")))?;
    let wanted = aliases(registry);
    let Some(entry) = file
        .auths
        .iter()
        .find(|(k, _)| wanted.contains(&normalize_key(k)))
        .map(|(_, v)| v)
    else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad(format!("the auth of {registry} is not base64")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| bad(format!("the auth of {registry} is not UTF-8")))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| bad(format!("the auth of {registry} is not user:password")))?;
        return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(RegistryAuth::Basic(u.clone(), p.clone())),
        _ => Ok(RegistryAuth::Anonymous),
    }
}

/// Keys may be URLs (`https://index.docker.io/v1/`): keep the host part.
fn normalize_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k).to_ascii_lowercase()
}

/// Names under which credentials for `registry` may be filed (Docker Hub has several).
fn aliases(registry: &str) -> Vec<String> {
    let r = registry.to_ascii_lowercase();
    match r.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => vec![
            "docker.io".into(),
            "index.docker.io".into(),
            "registry-1.docker.io".into(),
        ],
        _ => vec![r],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(f.path(), json).expect("write");
        f
    }

    fn basic(a: RegistryAuth) -> Option<(String, String)> {
        match a {
            RegistryAuth::Basic(u, p) => Some((u, p)),
            _ => None,
        }
    }

    #[test]
    fn base64_auth_is_decoded_for_the_matching_host_and_port() {
        let f = file(r#"{"auths":{"127.0.0.1:5000":{"auth":"YWxpY2U6czNjcjN0OnBhcnQ="}}}"#);
        let a = credentials_for(f.path(), "127.0.0.1:5000").expect("auth");
        assert_eq!(basic(a), Some(("alice".into(), "s3cr3t:part".into())));
        let other = credentials_for(f.path(), "127.0.0.1:5001").expect("auth");
        assert_eq!(basic(other), None);
    }

    #[test]
    fn docker_hub_url_keys_and_username_password_fields_are_understood() {
        let f =
            file(r#"{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p"}}}"#);
        let a = credentials_for(f.path(), "docker.io").expect("auth");
        assert_eq!(basic(a), Some(("u".into(), "p".into())));
    }

    #[test]
    fn a_missing_or_malformed_auth_file_is_an_error() {
        let err = credentials_for(Path::new("/nonexistent/auth.json"), "x").expect_err("missing");
        assert!(err.is_permanent());
        let f = file("{not json");
        assert!(credentials_for(f.path(), "x").is_err());
    }
}
