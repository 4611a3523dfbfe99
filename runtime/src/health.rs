//! `/healthz` (the process is alive), `/readyz` (connected and consuming) and `/metrics` (Prometheus) over HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Metrics};

/// Readiness flag a service sets once it is consuming.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the service ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the service is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Serves the health endpoints and `metrics` on `addr` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(readiness)
        .route("/metrics", get(scrape).with_state(metrics));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "Health endpoint stopped");
        }
    });
    Ok(bound)
}

async fn ready(State(r): State<Readiness>) -> (StatusCode, &'static str) {
    if r.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Refreshes the gauges read at scrape time, then encodes every family.
async fn scrape(State(m): State<Metrics>) -> impl IntoResponse {
    m.refresh().await;
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], m.encode())
}
