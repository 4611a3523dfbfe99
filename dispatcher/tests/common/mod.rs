//! Shared set-up of the dispatcher tests: real NATS, real Redis and the Kubernetes emulator.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use airlock_dispatcher::Config;
use airlock_kube_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use airlock_runtime::store::Store;
use airlock_test_support::{NatsServer, RedisServer, wait_until};
use async_nats::jetstream;
use clap::Parser;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

pub const NS: &str = "airlock-sandbox";
pub const SECRET: &str = "test-secret-0123456789abcdef";

pub struct Env {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub emu: EmulatorHandle,
    pub js: jetstream::Context,
    pub store: Store,
}

impl Env {
    pub async fn start() -> anyhow::Result<Self> {
        let (nats, redis, emu) = tokio::try_join!(
            async { NatsServer::start().await },
            async { RedisServer::start().await },
            async {
                Emulator::start(EmulatorConfig::default().namespace(NS))
                    .await
                    .map_err(anyhow::Error::from)
            },
        )?;
        let js = jetstream::new(nats.client().await?);
        airlock_runtime::nats::ensure_streams(
            &js,
            &airlock_schemas::Subjects::default(),
            &Default::default(),
        )
        .await?;
        let store = Store::connect(&redis.url(), "airlock", Duration::from_secs(3600)).await?;
        Ok(Self {
            nats,
            redis,
            emu,
            js,
            store,
        })
    }

    /// Base command line for a dispatcher against this environment, plus `extra`.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "airlock-dispatcher",
            "--nats-url",
            &self.nats.url(),
            "--redis-url",
            &self.redis.url(),
            "--token-secret",
            SECRET,
            "--nats-egress-cidrs",
            "10.0.0.10/32",
            "--job-nats-url",
            "nats://nats.airlock:4222",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !extra.contains(&"--kubeconfig") {
            a.extend([
                "--kubeconfig".to_string(),
                self.emu.kubeconfig_path().display().to_string(),
                "--namespace".to_string(),
                NS.to_string(),
            ]);
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    pub fn config(&self, extra: &[&str]) -> Config {
        Config::try_parse_from(self.args(extra)).expect("test config parses")
    }

    /// Starts a dispatcher in-process; cancel the token to stop it.
    pub fn spawn(&self, config: Config) -> (tokio::task::JoinHandle<()>, CancellationToken) {
        let token = CancellationToken::new();
        let t = token.clone();
        let h = tokio::spawn(async move {
            if let Err(e) = airlock_dispatcher::run(config, t).await {
                panic!("dispatcher failed: {e}");
            }
        });
        (h, token)
    }

    /// Publishes a request to `airlock.runs.<queue>`, with `Nats-Msg-Id` when given.
    pub async fn publish(
        &self,
        queue: &str,
        body: &serde_json::Value,
        msg_id: Option<&str>,
    ) -> anyhow::Result<()> {
        self.publish_raw(queue, serde_json::to_vec(body)?, msg_id)
            .await
    }

    pub async fn publish_raw(
        &self,
        queue: &str,
        body: Vec<u8>,
        msg_id: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut h = async_nats::HeaderMap::new();
        if let Some(id) = msg_id {
            h.insert(async_nats::header::NATS_MESSAGE_ID, id);
        }
        self.js
            .publish_with_headers(format!("airlock.runs.{queue}"), h, body.into())
            .await?
            .await?;
        Ok(())
    }

    /// The run's record as Redis holds it (the raw hash: tests check the stored layout itself).
    pub async fn record(&self, id: &str) -> HashMap<String, String> {
        redis::AsyncCommands::hgetall(&mut self.store.connection(), format!("airlock:run:{id}"))
            .await
            .unwrap_or_default()
    }

    /// Waits until the run's record has `status`.
    pub async fn wait_status(
        &self,
        id: &str,
        status: &str,
        timeout: Duration,
    ) -> anyhow::Result<HashMap<String, String>> {
        wait_until(timeout, &format!("run {id} to be {status}"), || async {
            let r = self.record(id).await;
            (r.get("status").map(String::as_str) == Some(status)).then_some(r)
        })
        .await
    }

    /// A consumer on the timers/events stream for `subject`, from the start.
    pub async fn messages(
        &self,
        stream: &str,
        subject: &str,
    ) -> anyhow::Result<jetstream::consumer::pull::Stream> {
        let s = self.js.get_stream(stream).await?;
        let c = s
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: subject.to_string(),
                ..Default::default()
            })
            .await?;
        Ok(c.messages().await?)
    }

    /// Waits for the next message of `stream` and decodes it.
    pub async fn next_json<T: serde::de::DeserializeOwned>(
        stream: &mut jetstream::consumer::pull::Stream,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let m = tokio::time::timeout(timeout, stream.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream closed"))??;
        Ok(serde_json::from_slice(&m.payload)?)
    }

    pub fn object_names(&self, kind: airlock_kube_emulator::Kind) -> Vec<String> {
        self.emu
            .objects(kind)
            .iter()
            .filter_map(|o| {
                o.pointer("/metadata/name")
                    .and_then(|n| n.as_str())
                    .map(str::to_string)
            })
            .collect()
    }

    /// Consumer info of a queue's durable consumer.
    pub async fn consumer_info(&self, queue: &str) -> anyhow::Result<jetstream::consumer::Info> {
        let s = self.js.get_stream("AIRLOCK_RUNS").await?;
        let mut c: jetstream::consumer::PullConsumer = s
            .get_consumer(&airlock_dispatcher::durable_name(queue))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(c.info().await?.clone())
    }
}

/// An operator policy file in `dir` naming two egress destinations: `pypi` (a CIDR and a port) and `cache`
/// (pods by label in namespaces by label).
pub fn policy_file(dir: &tempfile::TempDir) -> String {
    let p = dir.path().join("policy.json");
    let policy = serde_json::json!({
        "egress": {
            "pypi": { "cidrs": ["151.101.0.0/16"], "ports": [{ "port": 443 }] },
            "cache": { "pod_labels": { "app": "cache" }, "namespace_labels": { "team": "data" } }
        }
    });
    std::fs::write(&p, policy.to_string()).expect("write policy");
    p.display().to_string()
}

/// A minimal valid request.
pub fn request(id: &str, command: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "image": "docker.io/library/busybox:1.36",
        "command": command,
    })
}
