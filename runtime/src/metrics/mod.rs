//! Prometheus metrics: one [`Metrics`] per service, served as `/metrics` by the health server.
//!
//! Names follow Prometheus conventions: an `airlock_` prefix, `_total` counters, `_seconds` histograms, and
//! bounded label sets built from the typed labels in [`labels`]. Every service uses the same type and the same
//! one-line calls (`metrics.run_accepted(queue)`); a service registers only the families it produces
//! ([`Service`]). Gauges that mirror state kept elsewhere (JetStream consumer info, slots in Redis) are read
//! when scraped ([`Metrics::on_scrape`]), so they are never staler than the scrape interval.
//!
//! # Layout
//! - this module: [`Metrics`] and its recording calls.
//! - [`labels`]: the typed label sets.
//! - `families`: the families, by area.
//! - `scrape`: refreshing at scrape time, encoding, and reading samples back ([`Samples`]).

mod families;
pub mod labels;
mod scrape;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use prometheus_client::registry::Registry;

pub use labels::{ApiCall, ApiCode, JanitorAction, LagFrom, RejectClass, Verb};
pub use scrape::{CONTENT_TYPE, Samples};

use families::{Backend, Consumers, Dispatch, Images, Ingest, Reap};
use labels::{
    ActionLabels, ConsumerLabels, LagLabels, QueueLabels, ReasonLabels, RejectLabels, StatusLabels,
};

/// Most launches remembered for the start latency; past it the memory is cleared (a watcher that missed
/// many `running` changes must not grow it forever).
const MAX_REMEMBERED_LAUNCHES: usize = 100_000;

/// Which service a registry belongs to: decides which families it exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Dispatch, backend, consumers, images.
    Dispatcher,
    /// Ingest, consumers.
    Ingester,
    /// Reap, backend, consumers.
    Janitor,
    /// Backend (pod logs); the request-reply API.
    Api,
    /// Every family (tools and tests that embed several services).
    All,
}

/// A service's metrics; cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    dispatch: Dispatch,
    backend: Backend,
    ingest: Ingest,
    reap: Reap,
    consumers: Consumers,
    images: Images,
    /// When this process launched each run not yet seen running.
    launches: Mutex<HashMap<String, (String, Instant)>>,
    refreshers: Mutex<Vec<scrape::Refresh>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Service::All)
    }
}

impl Metrics {
    /// A fresh registry with the families `service` produces.
    pub fn new(service: Service) -> Self {
        let mut registry = Registry::with_prefix("airlock");
        let (dispatch, backend, ingest, reap) = (
            Dispatch::new(),
            Backend::default(),
            Ingest::new(),
            Reap::new(),
        );
        let (consumers, images) = (Consumers::default(), Images::default());
        let all = service == Service::All;
        if all || service == Service::Dispatcher {
            dispatch.register(&mut registry);
            images.register(&mut registry);
        }
        if all || service != Service::Ingester {
            backend.register(&mut registry);
        }
        if all || service == Service::Ingester {
            ingest.register(&mut registry);
        }
        if all || service == Service::Janitor {
            reap.register(&mut registry);
        }
        consumers.register(&mut registry);
        Self(Arc::new(Inner {
            registry,
            dispatch,
            backend,
            ingest,
            reap,
            consumers,
            images,
            launches: Mutex::default(),
            refreshers: Mutex::default(),
        }))
    }

    // --- Dispatcher ---

    /// A valid request was recorded `queued` on `queue`.
    pub fn run_accepted(&self, queue: &str) {
        self.0
            .dispatch
            .accepted
            .get_or_create(&queue_labels(queue))
            .inc();
    }

    /// A request to `queue` was rejected (`""` for a queue not configured).
    pub fn run_rejected(&self, queue: &str, reason: RejectClass) {
        let l = RejectLabels {
            queue: queue.to_string(),
            reason,
        };
        self.0.dispatch.rejected.get_or_create(&l).inc();
    }

    /// Run `run_id` of `queue`, published at `published_at`, got its pod or sandbox.
    pub fn run_launched(&self, queue: &str, run_id: &str, published_at: DateTime<Utc>) {
        let l = queue_labels(queue);
        self.0.dispatch.launched.get_or_create(&l).inc();
        let latency = (Utc::now() - published_at).to_std().unwrap_or_default();
        self.0
            .dispatch
            .dispatch_latency
            .get_or_create(&l)
            .observe(latency.as_secs_f64());
        let mut launches = lock(&self.0.launches);
        if launches.len() >= MAX_REMEMBERED_LAUNCHES {
            launches.clear();
        }
        launches.insert(run_id.to_string(), (queue.to_string(), Instant::now()));
    }

    /// Run `run_id` was seen running: observes its start latency if this process launched it.
    pub fn run_running(&self, run_id: &str) {
        let Some((queue, at)) = lock(&self.0.launches).remove(run_id) else {
            return;
        };
        self.0
            .dispatch
            .start_latency
            .get_or_create(&queue_labels(&queue))
            .observe(at.elapsed().as_secs_f64());
    }

    /// Run `run_id` finished: forgets its launch (a run may finish before it is ever seen running).
    pub fn run_finished(&self, run_id: &str) {
        lock(&self.0.launches).remove(run_id);
    }

    /// Sets the runs holding a slot of `queue`.
    pub fn set_slots_in_use(&self, queue: &str, n: u64) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.0
            .dispatch
            .slots_in_use
            .get_or_create(&queue_labels(queue))
            .set(n);
    }

    // --- Backend ---

    /// A backend API call (`what` starts with its verb: `"create Pod"`) ended with `code`.
    pub fn backend_call(&self, what: &str, code: ApiCode) {
        let l = ApiCall {
            verb: Verb::of(what),
            code,
        };
        self.0.backend.calls.get_or_create(&l).inc();
    }

    /// A backend operation is retried after `failed`.
    pub fn backend_retry(&self, failed: ApiCall) {
        self.0.backend.retries.get_or_create(&failed).inc();
    }

    // --- Ingester ---

    /// A result was stored.
    pub fn result_stored(&self) {
        self.0.ingest.stored.inc();
    }

    /// A genuine result found one already stored.
    pub fn result_duplicate(&self) {
        self.0.ingest.duplicate.inc();
    }

    /// A result submission was rejected for `reason`.
    pub fn result_rejected(&self, reason: &'static str) {
        self.0
            .ingest
            .rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A batch of `n` results was handled.
    pub fn ingest_batch(&self, n: usize) {
        self.0.ingest.batch_size.observe(n as f64);
    }

    /// A Redis round trip failed.
    pub fn redis_error(&self) {
        self.0.ingest.redis_errors.inc();
    }

    // --- Janitor ---

    /// This process moved a run to terminal `status`; `since` says when it finished, was seen finished, or
    /// its deadline passed (`from`), as far as known: one reap lag observation each.
    pub fn run_reaped(&self, status: &'static str, since: &[(LagFrom, DateTime<Utc>)]) {
        self.0
            .reap
            .reaps
            .get_or_create(&StatusLabels { status })
            .inc();
        let now = Utc::now();
        for &(from, at) in since {
            let lag = (now - at).to_std().unwrap_or_default();
            self.0
                .reap
                .lag
                .get_or_create(&LagLabels { from })
                .observe(lag.as_secs_f64());
        }
    }

    /// The janitor did `action`.
    pub fn janitor(&self, action: JanitorAction) {
        self.0
            .reap
            .actions
            .get_or_create(&ActionLabels { action })
            .inc();
    }

    /// Sets the runs the latest sweep found overdue and not reaped.
    pub fn set_unreaped(&self, n: u64) {
        self.0
            .reap
            .unreaped
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    // --- Every service ---

    /// `n` messages were nak'd for redelivery.
    pub fn nacked(&self, n: u64) {
        self.0.consumers.nacked.inc_by(n);
    }

    /// A message was terminated as poison.
    pub fn poison(&self) {
        self.0.consumers.poison.inc();
    }

    /// Handling a message failed (it will be retried).
    pub fn handler_error(&self) {
        self.0.consumers.handler_errors.inc();
    }

    /// Sets durable `consumer`'s pending, ack-pending and redelivered counts.
    pub fn set_consumer(
        &self,
        consumer: &str,
        pending: u64,
        ack_pending: usize,
        redelivered: usize,
    ) {
        let l = ConsumerLabels {
            consumer: consumer.to_string(),
        };
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.0.consumers.pending.get_or_create(&l).set(g(pending));
        self.0
            .consumers
            .ack_pending
            .get_or_create(&l)
            .set(g(ack_pending as u64));
        self.0
            .consumers
            .redelivered
            .get_or_create(&l)
            .set(g(redelivered as u64));
    }

    // --- Images ---

    /// An image was pulled, downloading `bytes`.
    pub fn image_pulled(&self, bytes: u64) {
        self.0.images.pulls.inc();
        self.0.images.bytes.inc_by(bytes);
    }

    /// An image was found in the cache.
    pub fn image_cache_hit(&self) {
        self.0.images.cache_hits.inc();
    }
}

fn queue_labels(queue: &str) -> QueueLabels {
    QueueLabels {
        queue: queue.to_string(),
    }
}

/// Locks `m`, whatever a panicking holder left (the data are counters and a memo, always usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
