//! Gauges read when `/metrics` is scraped: slots in use per queue (from Redis, so across replicas) and the
//! queues' durable consumers (JetStream consumer info).

use airlock_runtime::metrics::Metrics;
use airlock_runtime::store::Store;
use async_nats::jetstream::consumer::PullConsumer;
use tracing::debug;

use crate::slots::Slots;

/// Registers the dispatcher's scrape-time gauges on `metrics`.
pub(crate) fn register(metrics: &Metrics, store: &Store, consumers: &[(String, PullConsumer)]) {
    for (_, consumer) in consumers {
        metrics.watch_consumer(consumer);
    }
    let keys: Vec<(String, String)> = consumers
        .iter()
        .map(|(q, _)| (q.clone(), Slots::queue_key(store.prefix(), q)))
        .collect();
    let (m, conn) = (metrics.clone(), store.connection());
    metrics.on_scrape(move || {
        let (m, keys, mut conn) = (m.clone(), keys.clone(), conn.clone());
        async move {
            let mut pipe = redis::pipe();
            for (_, key) in &keys {
                pipe.zcard(key);
            }
            match pipe.query_async::<Vec<u64>>(&mut conn).await {
                Ok(counts) => {
                    for ((queue, _), n) in keys.iter().zip(counts) {
                        m.set_slots_in_use(queue, n);
                    }
                }
                Err(e) => debug!(error = %e, "Reading slots for metrics failed"),
            }
        }
    });
}
