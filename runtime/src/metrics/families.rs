//! The metric families, grouped by area; a service registers the groups it uses ([`super::Service`]).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::labels::{
    ActionLabels, ApiCall, ConsumerLabels, LagLabels, QueueLabels, ReasonLabels, RejectLabels,
    StatusLabels,
};

/// Latency buckets: 1 ms to about 65 s, doubling.
#[derive(Debug, Clone, Copy)]
pub(super) struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 17))
    }
}

/// Lag buckets, 5 ms to 20 min: fine around the 1 s reap target (a bound at exactly 1 s, so the share of
/// reaps within it is read off a bucket, not interpolated), coarse beyond.
pub(super) const LAG_BUCKETS: [f64; 20] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1200.0,
];

/// [`LAG_BUCKETS`].
#[derive(Debug, Clone, Copy)]
pub(super) struct LagBuckets;

impl MetricConstructor<Histogram> for LagBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(LAG_BUCKETS)
    }
}

/// Runs accepted and rejected, launched, dispatch and start latency, slots (the dispatcher).
#[derive(Debug, Clone)]
pub(super) struct Dispatch {
    pub accepted: Family<QueueLabels, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
    pub launched: Family<QueueLabels, Counter>,
    pub dispatch_latency: Family<QueueLabels, Histogram, LatencyBuckets>,
    pub start_latency: Family<QueueLabels, Histogram, LatencyBuckets>,
    pub slots_in_use: Family<QueueLabels, Gauge>,
}

impl Dispatch {
    pub fn new() -> Self {
        Self {
            accepted: Family::default(),
            rejected: Family::default(),
            launched: Family::default(),
            dispatch_latency: Family::new_with_constructor(LatencyBuckets),
            start_latency: Family::new_with_constructor(LatencyBuckets),
            slots_in_use: Family::default(),
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "runs_accepted",
            "Valid run requests recorded queued",
            self.accepted.clone(),
        );
        r.register(
            "runs_rejected",
            "Run requests recorded rejected, by reason class",
            self.rejected.clone(),
        );
        r.register(
            "runs_launched",
            "Pods or sandboxes created",
            self.launched.clone(),
        );
        r.register_with_unit(
            "dispatch_latency",
            "From the request's publication to its pod or sandbox created",
            Unit::Seconds,
            self.dispatch_latency.clone(),
        );
        r.register_with_unit(
            "start_latency",
            "From launch to the run seen running, by the replica that launched it",
            Unit::Seconds,
            self.start_latency.clone(),
        );
        r.register(
            "slots_in_use",
            "Runs holding a running slot, per queue (across replicas), read at scrape",
            self.slots_in_use.clone(),
        );
    }
}

/// Backend API calls and retries (the dispatcher and the janitor).
#[derive(Debug, Clone, Default)]
pub(super) struct Backend {
    pub calls: Family<ApiCall, Counter>,
    pub retries: Family<ApiCall, Counter>,
}

impl Backend {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "backend_api_calls",
            "Backend API calls, by verb and code",
            self.calls.clone(),
        );
        r.register(
            "backend_api_retries",
            "Backend operations retried after a transient failure, by the failed call's verb and code",
            self.retries.clone(),
        );
    }
}

/// Results stored and rejected, batch sizes, Redis failures (the ingester).
#[derive(Debug, Clone)]
pub(super) struct Ingest {
    pub stored: Counter,
    pub duplicate: Counter,
    pub rejected: Family<ReasonLabels, Counter>,
    pub batch_size: Histogram,
    pub redis_errors: Counter,
}

impl Ingest {
    pub fn new() -> Self {
        Self {
            stored: Counter::default(),
            duplicate: Counter::default(),
            rejected: Family::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            redis_errors: Counter::default(),
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "results_stored",
            "Results stored (the first genuine result of a run)",
            self.stored.clone(),
        );
        r.register(
            "results_duplicate",
            "Genuine results that found a result already stored",
            self.duplicate.clone(),
        );
        r.register(
            "results_rejected",
            "Result submissions rejected, by reason",
            self.rejected.clone(),
        );
        r.register(
            "ingest_batch_size",
            "Results handled together in one batch",
            self.batch_size.clone(),
        );
        r.register(
            "redis_errors",
            "Redis round trips that failed",
            self.redis_errors.clone(),
        );
    }
}

/// Reaps by final status, reap lag, the janitor's other work (the janitor).
#[derive(Debug, Clone)]
pub(super) struct Reap {
    pub reaps: Family<StatusLabels, Counter>,
    pub lag: Family<LagLabels, Histogram, LagBuckets>,
    pub actions: Family<ActionLabels, Counter>,
    pub unreaped: Gauge,
}

impl Reap {
    pub fn new() -> Self {
        Self {
            reaps: Family::default(),
            lag: Family::new_with_constructor(LagBuckets),
            actions: Family::default(),
            unreaped: Gauge::default(),
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "reaps",
            "Runs moved to a terminal status by this process, by status",
            self.reaps.clone(),
        );
        r.register_with_unit(
            "reap_lag",
            "To the run's terminal status recorded: from the job's finish as the backend reports it (whole seconds in Kubernetes), from the watcher seeing it finished (ms), or from its deadline timer firing",
            Unit::Seconds,
            self.lag.clone(),
        );
        r.register(
            "janitor_actions",
            "What the janitor did besides reaping, by action",
            self.actions.clone(),
        );
        r.register(
            "unreaped_runs",
            "Runs the latest sweep found overdue and not reaped",
            self.unreaped.clone(),
        );
    }
}

/// Consumer state and message outcomes (every service).
#[derive(Debug, Clone, Default)]
pub(super) struct Consumers {
    pub pending: Family<ConsumerLabels, Gauge>,
    pub ack_pending: Family<ConsumerLabels, Gauge>,
    pub redelivered: Family<ConsumerLabels, Gauge>,
    pub nacked: Counter,
    pub poison: Counter,
    pub handler_errors: Counter,
}

impl Consumers {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "consumer_pending",
            "Messages not yet delivered to the durable consumer (JetStream consumer info, read at scrape)",
            self.pending.clone(),
        );
        r.register(
            "consumer_ack_pending",
            "Messages delivered and not yet acknowledged (JetStream consumer info)",
            self.ack_pending.clone(),
        );
        r.register(
            "consumer_redelivered",
            "Messages delivered more than once and not yet acknowledged (JetStream consumer info)",
            self.redelivered.clone(),
        );
        r.register(
            "messages_nacked",
            "Messages negatively acknowledged for redelivery",
            self.nacked.clone(),
        );
        r.register(
            "messages_poison",
            "Messages terminated as undecodable or unrecordable",
            self.poison.clone(),
        );
        r.register(
            "handler_errors",
            "Message handling failures (each retried)",
            self.handler_errors.clone(),
        );
    }
}

/// Image pulls, cache hits and bytes: the local runtime's, counted by the dispatcher once per run as the run
/// starts (on Kubernetes the kubelet pulls and keeps its own figures).
#[derive(Debug, Clone, Default)]
pub(super) struct Images {
    pub pulls: Counter,
    pub cache_hits: Counter,
    pub bytes: Counter,
}

impl Images {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "image_pulls",
            "Images pulled from a registry",
            self.pulls.clone(),
        );
        r.register(
            "image_cache_hits",
            "Images found in the local cache, not pulled",
            self.cache_hits.clone(),
        );
        r.register_with_unit(
            "image_pull",
            "Bytes of image layers downloaded",
            Unit::Bytes,
            self.bytes.clone(),
        );
    }
}
