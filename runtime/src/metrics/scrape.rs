//! Scraping: refreshing the gauges that mirror state kept elsewhere, encoding the registry as OpenMetrics
//! text, and reading samples back from such text ([`Samples`], for tests and the benchmark).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures::future::{BoxFuture, join_all};
use tracing::debug;

use super::{Metrics, lock};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Longest a scrape waits for the refreshers; a slow source keeps its previous value.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// Re-reads some state into gauges.
pub(super) type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

impl Metrics {
    /// Runs `refresh` before every scrape (bounded by a timeout), to update gauges from their source.
    pub fn on_scrape<F, Fut>(&self, refresh: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let r: Refresh = Arc::new(move || Box::pin(refresh()));
        lock(&self.0.refreshers).push(r);
    }

    /// Reports durable `consumer`'s pending, ack-pending and redelivered counts, read from JetStream
    /// consumer info at every scrape.
    pub fn watch_consumer(&self, consumer: &PullConsumer) {
        let (metrics, consumer) = (self.clone(), consumer.clone());
        self.on_scrape(move || {
            let (metrics, consumer) = (metrics.clone(), consumer.clone());
            async move {
                match consumer.get_info().await {
                    Ok(i) => metrics.set_consumer(
                        &i.name,
                        i.num_pending,
                        i.num_ack_pending,
                        i.num_redelivered,
                    ),
                    Err(e) => debug!(error = %e, "Reading consumer info for metrics failed"),
                }
            }
        });
    }

    /// Runs every refresher, concurrently, for at most two seconds.
    pub async fn refresh(&self) {
        let refreshers: Vec<_> = lock(&self.0.refreshers).clone();
        let all = join_all(refreshers.iter().map(|r| r()));
        if tokio::time::timeout(REFRESH_TIMEOUT, all).await.is_err() {
            debug!("Metric refresh timed out; serving the previous values");
        }
    }

    /// The registry as OpenMetrics text (without refreshing).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }

    /// The current samples (without refreshing).
    pub fn samples(&self) -> Samples {
        Samples::parse(&self.encode())
    }
}

/// Samples parsed from Prometheus or OpenMetrics text: series (`name{labels}`) and their values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples(BTreeMap<String, Vec<(Labels, f64)>>);

/// A series' labels, as `(name, value)` pairs.
type Labels = Vec<(String, String)>;

impl Samples {
    /// Parses exposition text; comment lines and lines that are not `name[{labels}] value` are skipped.
    pub fn parse(text: &str) -> Self {
        let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = match line.rsplit_once(' ') {
                Some((s, v)) => (s.trim(), v),
                None => continue,
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            out.entry(name.to_string())
                .or_default()
                .push((labels, value));
        }
        Self(out)
    }

    /// The sum of `name`'s series whose labels include every pair of `labels` (0 when none).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .get(name)
            .into_iter()
            .flatten()
            .filter(|(have, _)| {
                labels
                    .iter()
                    .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Every series named `name`: its labels and its value.
    pub fn series(&self, name: &str) -> impl Iterator<Item = (&[(String, String)], f64)> {
        self.0
            .get(name)
            .into_iter()
            .flatten()
            .map(|(l, v)| (l.as_slice(), *v))
    }

    /// Whether a series named `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Every series name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// `a="x",b="y"` → pairs (values never contain `",` in Airlock's label sets).
fn parse_labels(s: &str) -> Vec<(String, String)> {
    s.split("\",")
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{ApiCode, LagFrom, RejectClass, Service};
    use super::*;

    #[test]
    fn recorded_values_are_encoded_with_conventional_names_and_read_back() {
        let m = Metrics::new(Service::All);
        m.run_accepted("default");
        m.run_accepted("default");
        m.run_rejected("", RejectClass::UnknownQueue);
        m.backend_call("create Pod", ApiCode::Ok);
        m.backend_call("create Pod", ApiCode::Status(409));
        m.result_rejected("invalid_token");
        m.ingest_batch(3);
        let now = chrono::Utc::now();
        m.run_reaped(
            "succeeded",
            &[
                (LagFrom::Finish, now - chrono::Duration::milliseconds(1900)),
                (LagFrom::Observed, now - chrono::Duration::milliseconds(900)),
            ],
        );
        let text = m.encode();
        assert!(
            text.contains("airlock_runs_accepted_total{queue=\"default\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE airlock_reap_lag_seconds histogram"),
            "{text}"
        );
        let s = Samples::parse(&text);
        assert_eq!(
            s.get("airlock_runs_accepted_total", &[("queue", "default")]),
            2.0
        );
        assert_eq!(
            s.get(
                "airlock_runs_rejected_total",
                &[("reason", "unknown_queue")]
            ),
            1.0
        );
        assert_eq!(
            s.get("airlock_backend_api_calls_total", &[("verb", "create")]),
            2.0
        );
        assert_eq!(
            s.get("airlock_backend_api_calls_total", &[("code", "409")]),
            1.0
        );
        assert_eq!(
            s.get(
                "airlock_results_rejected_total",
                &[("reason", "invalid_token")]
            ),
            1.0
        );
        assert_eq!(s.get("airlock_ingest_batch_size_count", &[]), 1.0);
        assert_eq!(s.get("airlock_ingest_batch_size_sum", &[]), 3.0);
        assert_eq!(
            s.get("airlock_reaps_total", &[("status", "succeeded")]),
            1.0
        );
        assert_eq!(
            s.get("airlock_reap_lag_seconds_count", &[("from", "finish")]),
            1.0
        );
        // Each start its own series; 1 s is a bucket bound, so "within the target" is exact.
        let within = |from| {
            s.get(
                "airlock_reap_lag_seconds_bucket",
                &[("from", from), ("le", "1.0")],
            )
        };
        assert_eq!((within("observed"), within("finish")), (1.0, 0.0));
    }

    #[test]
    fn a_service_exposes_only_the_families_it_produces() {
        let text = Metrics::new(Service::Ingester).encode();
        assert!(text.contains("airlock_results_stored_total"), "{text}");
        assert!(text.contains("airlock_messages_nacked_total 0"), "{text}");
        assert!(!text.contains("airlock_runs_accepted"), "{text}");
        assert!(!text.contains("airlock_reaps"), "{text}");
        let text = Metrics::new(Service::Janitor).encode();
        assert!(text.contains("airlock_unreaped_runs"), "{text}");
        assert!(!text.contains("airlock_results_stored"), "{text}");
    }

    #[test]
    fn start_latency_is_observed_once_for_a_run_this_process_launched() {
        let m = Metrics::new(Service::Dispatcher);
        m.run_launched("q", "r-1", chrono::Utc::now());
        m.run_running("r-1");
        m.run_running("r-1");
        m.run_running("r-unknown");
        let s = m.samples();
        assert_eq!(
            s.get("airlock_start_latency_seconds_count", &[("queue", "q")]),
            1.0
        );
        assert_eq!(
            s.get("airlock_dispatch_latency_seconds_count", &[("queue", "q")]),
            1.0
        );
        assert_eq!(s.get("airlock_runs_launched_total", &[("queue", "q")]), 1.0);
    }
}
