//! Shared set-up for the ingester tests: real NATS and Redis, run records, publishing results.
#![allow(dead_code)]

use std::time::Duration;

use airlock_ingester::{Config, Metrics, RejectKind};
use airlock_runtime::metrics::Service;
use airlock_runtime::nats::{StreamOptions, ensure_streams};
use airlock_schemas::record::{self, field};
use airlock_schemas::{Subjects, env, token};
use airlock_test_support::{NatsServer, RedisServer};
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

/// The token secret every test shares with its ingester.
pub const SECRET: &str = "test-secret-0123456789abcdef";

/// Real servers plus clients.
pub struct Env {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    pub redis_conn: redis::aio::MultiplexedConnection,
    pub subjects: Subjects,
}

impl Env {
    /// Starts NATS and Redis (with `redis_args`) and sets up the streams.
    pub async fn start(redis_args: &[&str]) -> anyhow::Result<Self> {
        let nats = NatsServer::start().await?;
        let redis = RedisServer::start_with_args(redis_args).await?;
        let client = nats.client().await?;
        let js = jetstream::new(client.clone());
        let subjects = Subjects::default();
        ensure_streams(&js, &subjects, &StreamOptions::default()).await?;
        let redis_conn = redis.connection().await?;
        Ok(Self {
            nats,
            redis,
            js,
            client,
            redis_conn,
            subjects,
        })
    }

    /// An ingester configuration for these servers.
    pub fn config(&self) -> Config {
        Config::for_servers(self.nats.url(), self.redis.url(), SECRET)
    }

    /// Environment variables configuring the `airlock-ingester` binary for these servers.
    pub fn service_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AIRLOCK_NATS_URL", self.nats.url()),
            ("AIRLOCK_REDIS_URL", self.redis.url()),
            ("AIRLOCK_TOKEN_SECRET", SECRET.to_string()),
        ]
    }

    /// Creates run records as the dispatcher would (`status` plus extra fields), in one round trip.
    pub async fn create_runs(
        &self,
        ids: &[String],
        status: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        for id in ids {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(record::key("airlock", id))
                .arg(field::STATUS)
                .arg(status);
            for (k, v) in extra {
                cmd.arg(*k).arg(*v);
            }
            pipe.add_command(cmd).ignore();
        }
        let _: () = pipe.query_async(&mut self.redis_conn.clone()).await?;
        Ok(())
    }

    /// One field of a run's record.
    pub async fn field(&self, id: &str, f: &str) -> anyhow::Result<Option<String>> {
        let v: Option<String> = redis::cmd("HGET")
            .arg(record::key("airlock", id))
            .arg(f)
            .query_async(&mut self.redis_conn.clone())
            .await?;
        Ok(v)
    }

    /// `field` of every run in `ids`, in one round trip.
    pub async fn fields(&self, ids: &[String], f: &str) -> anyhow::Result<Vec<Option<String>>> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGET").arg(record::key("airlock", id)).arg(f);
        }
        Ok(pipe.query_async(&mut self.redis_conn.clone()).await?)
    }

    /// How many of `ids` have a stored result.
    pub async fn stored_count(&self, ids: &[String]) -> anyhow::Result<usize> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HEXISTS")
                .arg(record::key("airlock", id))
                .arg(field::RESULT);
        }
        let v: Vec<bool> = pipe.query_async(&mut self.redis_conn.clone()).await?;
        Ok(v.into_iter().filter(|b| *b).count())
    }

    /// Messages still in the results stream (work queue: acked messages are removed).
    pub async fn results_in_stream(&self) -> anyhow::Result<u64> {
        let mut s = self.js.get_stream("AIRLOCK_RESULTS").await?;
        Ok(s.info().await?.state.messages)
    }

    /// Publishes a result for `run_id` with the right token, and waits for the stream's ack.
    pub async fn publish_genuine(&self, run_id: &str, body: &[u8]) -> anyhow::Result<()> {
        let t = token::sign(SECRET.as_bytes(), run_id);
        self.publish(&self.subjects.results(run_id), Some(&t), body)
            .await
    }

    /// Publishes `body` on `subject` with `token` (if any), and waits for the stream's ack.
    pub async fn publish(
        &self,
        subject: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let mut h = async_nats::HeaderMap::new();
        if let Some(t) = token {
            h.insert(env::RUN_TOKEN_HEADER, t);
        }
        self.js
            .publish_with_headers(subject.to_string(), h, body.to_vec().into())
            .await?
            .await?;
        Ok(())
    }

    /// Publishes many genuine results, awaiting the stream's acks in bulk.
    pub async fn publish_many(&self, items: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        for chunk in items.chunks(1000) {
            let mut acks = Vec::with_capacity(chunk.len());
            for (id, body) in chunk {
                let mut h = async_nats::HeaderMap::new();
                h.insert(
                    env::RUN_TOKEN_HEADER,
                    token::sign(SECRET.as_bytes(), id).as_str(),
                );
                acks.push(
                    self.js
                        .publish_with_headers(self.subjects.results(id), h, body.clone().into())
                        .await?,
                );
            }
            for ack in acks {
                ack.await?;
            }
        }
        Ok(())
    }
}

/// An ingester running in this process.
pub struct InProcess {
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), airlock_ingester::Error>>,
}

impl InProcess {
    /// Starts `airlock_ingester::run_with_metrics` on a task.
    pub fn start(config: Config) -> Self {
        let metrics = Metrics::new(Service::Ingester);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(airlock_ingester::run_with_metrics(
            config,
            shutdown.clone(),
            metrics.clone(),
        ));
        Self {
            metrics,
            shutdown,
            task,
        }
    }

    /// Cancels it and waits for it to return.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task).await???;
        Ok(())
    }
}

/// The ingester's counters, read from its metrics as a scrape would.
pub trait Counts {
    /// `airlock_results_stored_total`.
    fn stored(&self) -> u64;
    /// `airlock_results_duplicate_total`.
    fn duplicate(&self) -> u64;
    /// `airlock_results_rejected_total{reason}`.
    fn rejected(&self, kind: RejectKind) -> u64;
    /// `airlock_results_rejected_total`, every reason.
    fn rejected_total(&self) -> u64;
    /// `airlock_redis_errors_total`.
    fn redis_errors(&self) -> u64;
}

impl Counts for Metrics {
    fn stored(&self) -> u64 {
        self.samples().get("airlock_results_stored_total", &[]) as u64
    }
    fn duplicate(&self) -> u64 {
        self.samples().get("airlock_results_duplicate_total", &[]) as u64
    }
    fn rejected(&self, kind: RejectKind) -> u64 {
        let reason = [("reason", kind.label())];
        self.samples()
            .get("airlock_results_rejected_total", &reason) as u64
    }
    fn rejected_total(&self) -> u64 {
        self.samples().get("airlock_results_rejected_total", &[]) as u64
    }
    fn redis_errors(&self) -> u64 {
        self.samples().get("airlock_redis_errors_total", &[]) as u64
    }
}

/// Run ids `prefix-0` .. `prefix-(n-1)`.
pub fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}
