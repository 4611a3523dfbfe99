//! The parts of an image's config blob the runtimes need, typed.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// What the image says about how to run it (the `config` object of the OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`: the executable and its first arguments. Empty when the image sets none.
    pub entrypoint: Vec<String>,
    /// `Cmd`: default arguments (after the entrypoint), or the command if there is no entrypoint.
    pub cmd: Vec<String>,
    /// `Env`: `NAME=value` pairs, in order.
    pub env: Vec<(String, String)>,
    /// `WorkingDir`; `None` when unset or empty (runtimes then use `/`).
    pub working_dir: Option<String>,
    /// `User` as written (`name`, `uid`, `uid:gid`…); `None` when unset or empty.
    pub user: Option<String>,
    /// The image's OS (`linux`).
    pub os: String,
    /// The image's architecture (`amd64`…).
    pub architecture: String,
}

impl ImageConfig {
    /// The command a run executes when it sets none of its own: entrypoint followed by cmd.
    pub fn default_command(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }

    /// The value of `name` in [`ImageConfig::env`] (the last one if repeated).
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The config blob as far as the store reads it.
#[derive(Debug, Deserialize)]
pub(crate) struct RawConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RawRunConfig>,
    #[serde(default)]
    rootfs: Option<RawRootfs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// A parsed config: the typed part and the layers' uncompressed digests.
#[derive(Debug)]
pub(crate) struct ParsedConfig {
    pub(crate) config: ImageConfig,
    pub(crate) diff_ids: Vec<Digest>,
}

/// Parses a config blob; `Err` says what is wrong with it.
pub(crate) fn parse(bytes: &[u8]) -> Result<ParsedConfig, String> {
    let raw: RawConfig =
        serde_json::from_slice(bytes).map_err(|e| format!("image config is not valid: {e}"))?;
    let run = raw.config.unwrap_or_default();
    let env = run
        .env
        .unwrap_or_default()
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv, String::new()),
        })
        .collect();
    let diff_ids = raw
        .rootfs
        .map(|r| r.diff_ids)
        .unwrap_or_default()
        .iter()
        .map(|d| {
            Digest::parse(d).ok_or_else(|| format!("image config has an invalid diff_id {d:?}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(ParsedConfig {
        config: ImageConfig {
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            env,
            working_dir: run.working_dir.filter(|w| !w.is_empty()),
            user: run.user.filter(|u| !u.is_empty()),
            os: raw.os,
            architecture: raw.architecture,
        },
        diff_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoint_cmd_env_workdir_and_user_are_read() {
        let blob = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh","-c"],
            "Cmd":["echo hi"],"Env":["PATH=/bin","A=b=c","EMPTY"],"WorkingDir":"/work","User":"1000:1000"},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let p = parse(blob).expect("parse");
        assert_eq!(p.config.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(p.config.default_command(), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(p.config.env_var("A"), Some("b=c"));
        assert_eq!(p.config.env_var("EMPTY"), Some(""));
        assert_eq!(p.config.working_dir.as_deref(), Some("/work"));
        assert_eq!(p.config.user.as_deref(), Some("1000:1000"));
    }

    #[test]
    fn a_config_without_run_settings_is_empty_not_an_error() {
        let p = parse(br#"{"architecture":"amd64","os":"linux","config":{"Cmd":null}}"#)
            .expect("parse");
        assert_eq!(p.config.default_command(), Vec::<String>::new());
        assert_eq!(p.config.working_dir, None);
    }

    #[test]
    fn malformed_diff_ids_are_refused() {
        let err = parse(br#"{"rootfs":{"diff_ids":["sha256:../../x"]}}"#).expect_err("bad");
        assert!(err.contains("diff_id"), "{err}");
    }
}
