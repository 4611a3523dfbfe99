//! Connecting to NATS the way the `nats` CLI does: `--nats-url`, `--creds`, `--context` (a context file
//! `~/.config/nats/context/<name>.json`, or the one named in `~/.config/nats/context.txt`), and calling the
//! API on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_schemas::Subjects;
use airlock_schemas::api::{self, Op};
use clap::Args;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::exit::CliError;

/// How to reach Airlock (global flags).
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// NATS server URL (default: the context's, else nats://127.0.0.1:4222).
    #[arg(long, global = true, env = "AIRLOCK_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS credentials file (`.creds`), as `nats --creds`.
    #[arg(long, global = true, env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// A `nats` CLI context: its name (`~/.config/nats/context/<name>.json`) or a path to its JSON file.
    #[arg(long, global = true, env = "NATS_CONTEXT")]
    pub context: Option<String>,
    /// Subject prefix of the Airlock installation.
    #[arg(long, global = true, env = "AIRLOCK_SUBJECT_PREFIX", default_value = airlock_schemas::subjects::DEFAULT_PREFIX)]
    pub subject_prefix: String,
    /// How long to wait for an answer from the API.
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
}

/// The fields of a `nats` CLI context file this CLI uses.
#[derive(Debug, Default, Deserialize)]
struct Context {
    #[serde(default)]
    url: String,
    #[serde(default)]
    creds: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
}

fn nats_config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
        .map(|d| d.join("nats"))
}

fn load_context(name: Option<&str>) -> Result<Option<Context>, CliError> {
    let dir = nats_config_dir();
    let name = match name {
        Some(n) => n.to_string(),
        None => match dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("context.txt")).ok())
        {
            Some(n) if !n.trim().is_empty() => n.trim().to_string(),
            _ => return Ok(None),
        },
    };
    let path = if name.ends_with(".json") || name.contains('/') {
        PathBuf::from(&name)
    } else {
        dir.unwrap_or_default()
            .join("context")
            .join(format!("{name}.json"))
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CliError::Other(format!(
            "cannot read NATS context {name:?} at {}: {e}; create it with `nats context save {name}` or pass --nats-url",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map(Some).map_err(|e| {
        CliError::Other(format!(
            "NATS context {} is not valid JSON: {e}; fix or recreate it",
            path.display()
        ))
    })
}

/// A connection to the API.
#[derive(Debug, Clone)]
pub struct Api {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// Airlock's subjects.
    pub subjects: Subjects,
    /// How long to wait for an answer.
    pub timeout: Duration,
}

impl ConnArgs {
    /// Connects (once, without retrying: an unreachable server is an answer).
    pub async fn connect(&self) -> Result<Api, CliError> {
        let ctx = load_context(self.context.as_deref())?.unwrap_or_default();
        let url = self
            .nats_url
            .clone()
            .or_else(|| (!ctx.url.is_empty()).then(|| ctx.url.clone()))
            .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
        let mut opts = airlock_runtime::nats::options_for(&url)
            .map_err(|e| CliError::Other(format!("{e}; pass --nats-url nats://host:4222")))?;
        if !ctx.user.is_empty() {
            opts = async_nats::ConnectOptions::with_user_and_password(ctx.user, ctx.password);
        } else if !ctx.token.is_empty() {
            opts = async_nats::ConnectOptions::with_token(ctx.token);
        }
        let creds = self
            .creds
            .clone()
            .or_else(|| (!ctx.creds.is_empty()).then(|| PathBuf::from(&ctx.creds)));
        if let Some(c) = creds {
            opts = opts.credentials_file(&c).await.map_err(|e| {
                CliError::Other(format!(
                    "cannot use credentials {}: {e}; check the --creds path",
                    c.display()
                ))
            })?;
        }
        let client = opts
            .name("airlock-cli")
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(self.timeout))
            .connect(&url)
            .await
            .map_err(|e| {
                CliError::Unreachable(format!(
                    "cannot reach NATS at {} ({e}); is Airlock running? set --nats-url, --context or AIRLOCK_NATS_URL",
                    airlock_runtime::nats::redact(&url)
                ))
            })?;
        Ok(Api {
            client,
            subjects: Subjects::new(&self.subject_prefix),
            timeout: self.timeout,
        })
    }
}

impl Api {
    /// Calls `op` with `req` and decodes its reply (or its error).
    pub async fn call<Q: serde::Serialize, R: DeserializeOwned>(
        &self,
        op: Op,
        req: &Q,
    ) -> Result<R, CliError> {
        let subject = self.subjects.api(op);
        let body = serde_json::to_vec(req).map_err(|e| CliError::Other(e.to_string()))?;
        let msg = self
            .client
            .request(subject.clone(), body.into())
            .await
            .map_err(|e| self.request_error(&subject, e))?;
        decode(&msg.payload)
    }

    /// The error for a request that got no reply.
    pub fn request_error(&self, subject: &str, e: async_nats::RequestError) -> CliError {
        match e.kind() {
            async_nats::RequestErrorKind::NoResponders => CliError::Unreachable(format!(
                "no Airlock API answers on {subject}; start airlock-api (or `airlock dev`)"
            )),
            async_nats::RequestErrorKind::TimedOut => CliError::Unreachable(format!(
                "the Airlock API did not answer on {subject} within {:?}; try again or raise --timeout",
                self.timeout
            )),
            _ => CliError::Unreachable(format!(
                "request on {subject} failed ({e}); check the NATS connection"
            )),
        }
    }
}

/// Decodes a reply: `R`, or the API's error.
pub fn decode<R: DeserializeOwned>(payload: &[u8]) -> Result<R, CliError> {
    match api::decode_reply::<R>(payload) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(CliError::Api(e)),
        Err(e) => Err(CliError::Other(format!(
            "the API answered something this CLI does not understand ({e}); is the CLI older than the service?"
        ))),
    }
}
