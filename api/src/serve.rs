//! The NATS micro service: endpoints in a queue group, one task per endpoint, bounded concurrency.

use std::sync::Arc;
use std::time::Duration;

use airlock_runtime::consume::InFlight;
use airlock_schemas::Subjects;
use airlock_schemas::api::{self, ApiError, ErrorReply, Op};
use async_nats::service::{Service, ServiceExt};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::Error;
use crate::ops::Ctx;

/// The started service and its endpoints.
pub(crate) struct Server {
    service: Service,
    endpoints: Vec<(Op, async_nats::service::endpoint::Endpoint)>,
    ctx: Arc<Ctx>,
    permits: Arc<Semaphore>,
    log_permits: Arc<Semaphore>,
}

impl Server {
    /// Registers the service and every endpoint of [`Op::ALL`] under `airlock.api`. `logs` requests (whose
    /// follows last as long as their runs) have a pool of `max_logs` of their own, so follows never starve
    /// the other operations, which share `concurrency`.
    pub(crate) async fn start(
        ctx: Arc<Ctx>,
        subjects: &Subjects,
        concurrency: usize,
        max_logs: usize,
    ) -> Result<Self, Error> {
        let follows = ctx.follows.clone();
        let service = ctx
            .client
            .service_builder()
            .description("Airlock: submit, inspect, follow and cancel runs")
            .stats_handler(move |_, stats| {
                if stats.name == Op::Logs.as_str() {
                    serde_json::json!({ "follows": follows.load(std::sync::atomic::Ordering::Relaxed) })
                } else {
                    serde_json::Value::Null
                }
            })
            .queue_group(api::QUEUE_GROUP)
            .start(api::SERVICE_NAME, api::SERVICE_VERSION)
            .await
            .map_err(Error::Service)?;
        let group = service.group(subjects.api_group());
        let mut endpoints = Vec::new();
        for op in Op::ALL {
            let ep = group
                .endpoint_builder()
                .name(op.as_str())
                .add(op.as_str())
                .await
                .map_err(Error::Service)?;
            endpoints.push((op, ep));
        }
        ctx.client
            .flush()
            .await
            .map_err(|e| Error::Runtime(e.into()))?;
        Ok(Self {
            service,
            endpoints,
            ctx,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            log_permits: Arc::new(Semaphore::new(max_logs.max(1))),
        })
    }

    /// Serves until `shutdown`, then lets in-flight requests finish within `grace`.
    pub(crate) async fn run(self, grace: Duration, shutdown: CancellationToken) {
        let mut loops = Vec::new();
        for (op, ep) in self.endpoints {
            let ctx = self.ctx.clone();
            let permits = if op == Op::Logs {
                self.log_permits.clone()
            } else {
                self.permits.clone()
            };
            let shutdown = shutdown.clone();
            loops.push(tokio::spawn(serve_endpoint(
                op, ep, ctx, permits, grace, shutdown,
            )));
        }
        for l in loops {
            let _ = l.await;
        }
        if let Err(e) = self.service.stop().await {
            debug!(error = %e, "Stopping the NATS service failed");
        }
    }
}

async fn serve_endpoint(
    op: Op,
    mut ep: async_nats::service::endpoint::Endpoint,
    ctx: Arc<Ctx>,
    permits: Arc<Semaphore>,
    grace: Duration,
    shutdown: CancellationToken,
) {
    let mut tasks = InFlight::default();
    loop {
        let req = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = ep.next() => match r { Some(r) => r, None => break },
        };
        tasks.reap_finished();
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let ctx = ctx.clone();
        tasks.spawn(async move {
            ctx.handle(op, req).await;
            drop(permit);
        });
    }
    if let Err(e) = ep.stop().await {
        debug!(op = op.as_str(), error = %e, "Stopping an endpoint failed");
    }
    tasks.drain(grace).await;
}

/// Sends the reply of `req`: the JSON of `body`, or the error as `{"error": ...}` with the micro service's
/// error headers.
pub(crate) async fn respond<T: serde::Serialize>(
    req: &async_nats::service::Request,
    body: Result<T, ApiError>,
) {
    let (bytes, headers) = match body {
        Ok(v) => (serde_json::to_vec(&v), async_nats::HeaderMap::new()),
        Err(error) => {
            let mut h = async_nats::HeaderMap::new();
            let one_line: String = error
                .message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            h.insert("Nats-Service-Error", one_line.as_str());
            h.insert(
                "Nats-Service-Error-Code",
                error.code.status().to_string().as_str(),
            );
            (serde_json::to_vec(&ErrorReply { error }), h)
        }
    };
    let bytes = match bytes {
        Ok(b) => b,
        Err(e) => {
            warn!(subject = %req.message.subject, error = %e, "Encoding a reply failed");
            return;
        }
    };
    if let Err(e) = req.respond_with_headers(Ok(bytes.into()), headers).await {
        debug!(subject = %req.message.subject, error = %e, "Replying failed (no reply subject?)");
    }
}
