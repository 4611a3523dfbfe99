//! Service start-up, in one order for every service: health and metrics endpoints, NATS, streams, Redis.
//!
//! `/healthz` comes up first so an orchestrator sees the process alive while it waits for NATS or Redis;
//! `/readyz` stays false until the service itself says it is consuming ([`Started::readiness`]).

use std::net::SocketAddr;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::Error;
use crate::config::CommonArgs;
use crate::health::{self, Readiness};
use crate::metrics::Metrics;
use crate::nats;
use crate::publish::Publisher;
use crate::store::Store;

/// What a started service holds.
#[derive(Debug)]
pub struct Started {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: jetstream::Context,
    /// Publishes to Airlock's streams.
    pub publisher: Publisher,
    /// The run store.
    pub store: Store,
    /// Readiness flag behind `/readyz`; the service sets it once consuming.
    pub readiness: Readiness,
    /// Where the health endpoints listen, when served.
    pub health_addr: Option<SocketAddr>,
    /// The service's metrics, served as `/metrics`.
    pub metrics: Metrics,
}

/// Starts the common parts of service `name`, connecting to NATS itself; `metrics` are served.
pub async fn start(
    common: &CommonArgs,
    name: &str,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<Started, Error> {
    let readiness = Readiness::default();
    let health_addr = serve_health(common, &readiness, metrics, shutdown).await?;
    let client = nats::connect(&common.endpoints.nats_url, name).await?;
    finish(common, client, readiness, health_addr, metrics).await
}

/// Starts the common parts of a service on an existing NATS `client`; `metrics` are served.
pub async fn start_with_client(
    common: &CommonArgs,
    client: async_nats::Client,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<Started, Error> {
    let readiness = Readiness::default();
    let health_addr = serve_health(common, &readiness, metrics, shutdown).await?;
    finish(common, client, readiness, health_addr, metrics).await
}

async fn serve_health(
    common: &CommonArgs,
    readiness: &Readiness,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<Option<SocketAddr>, Error> {
    let Some(addr) = common.http_addr else {
        return Ok(None);
    };
    let bound = health::serve(addr, readiness.clone(), metrics.clone(), shutdown.clone())
        .await
        .map_err(|e| Error::Config(format!("serving health on {addr}: {e}")))?;
    info!(addr = %bound, "Health endpoints up");
    Ok(Some(bound))
}

async fn finish(
    common: &CommonArgs,
    client: async_nats::Client,
    readiness: Readiness,
    health_addr: Option<SocketAddr>,
    metrics: &Metrics,
) -> Result<Started, Error> {
    let subjects = common.subjects();
    let js = jetstream::new(client.clone());
    let opts = common.streams.options(common.stream_replicas);
    nats::ensure_streams(&js, &subjects, &opts).await?;
    let store = common.connect_store().await?;
    Ok(Started {
        publisher: Publisher::new(js.clone(), subjects),
        client,
        js,
        store,
        readiness,
        health_addr,
        metrics: metrics.clone(),
    })
}
