//! The shared pull loop and health endpoints against a real nats-server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use airlock_runtime::consume::{LoopOptions, Outcome, run_loop};
use airlock_runtime::health::{Readiness, serve};
use airlock_runtime::metrics::{Metrics, Samples, Service};
use airlock_runtime::nats::{ConsumerSpec, ensure_consumer};
use airlock_test_support::NatsServer;
use async_nats::jetstream::{self, stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

async fn work_stream(
    nats: &NatsServer,
) -> anyhow::Result<(jetstream::Context, jetstream::consumer::PullConsumer)> {
    let js = jetstream::new(nats.client().await?);
    js.create_stream(stream::Config {
        name: "WORK".into(),
        subjects: vec!["work.>".into()],
        ..Default::default()
    })
    .await?;
    let consumer = ensure_consumer(
        &js,
        &ConsumerSpec {
            stream: "WORK".into(),
            durable: "workers".into(),
            filter: "work.>".into(),
            max_ack_pending: 100,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
        },
    )
    .await?;
    Ok((js, consumer))
}

#[tokio::test]
async fn shutdown_stops_pulling_and_lets_in_flight_work_finish_and_be_acked() -> anyhow::Result<()>
{
    let nats = NatsServer::start().await?;
    let (js, consumer) = work_stream(&nats).await?;
    for i in 0..3 {
        js.publish(format!("work.{i}"), "x".into()).await?.await?;
    }
    let shutdown = CancellationToken::new();
    let release = Arc::new(Notify::new());
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let r = release.clone();
    let looper = tokio::spawn(run_loop(
        consumer.clone(),
        LoopOptions {
            concurrency: 1,
            grace: Duration::from_secs(10),
        },
        shutdown.clone(),
        move |msg| {
            let r = r.clone();
            let tx = started_tx.clone();
            async move {
                let _ = tx.send(msg.subject.to_string());
                r.notified().await;
                Outcome::Done
            }
        },
    ));
    let first = tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await?
        .expect("a handler started");
    assert_eq!(first, "work.0");
    shutdown.cancel();
    release.notify_one();
    tokio::time::timeout(Duration::from_secs(10), looper).await???;
    let c = consumer;
    let info = airlock_test_support::wait_until(
        Duration::from_secs(5),
        "the in-flight message to be acked",
        || {
            let mut c = c.clone();
            async move {
                c.info()
                    .await
                    .ok()
                    .filter(|i| i.ack_floor.stream_sequence == 1)
                    .cloned()
            }
        },
    )
    .await?;
    assert_eq!(
        info.num_ack_pending, 0,
        "nothing was pulled after the shutdown"
    );
    assert_eq!(info.num_pending, 2, "the rest waits for another replica");
    Ok(())
}

#[tokio::test]
async fn a_transient_outcome_is_redelivered_and_a_poison_one_is_not() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let (js, consumer) = work_stream(&nats).await?;
    js.publish("work.transient", "x".into()).await?.await?;
    js.publish("work.poison", "x".into()).await?.await?;
    let shutdown = CancellationToken::new();
    let seen = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let s = seen.clone();
    let looper = tokio::spawn(run_loop(
        consumer.clone(),
        LoopOptions {
            concurrency: 4,
            grace: Duration::from_secs(5),
        },
        shutdown.clone(),
        move |msg| {
            let s = s.clone();
            let tx = done_tx.clone();
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
                let outcome = match (msg.subject.as_str(), delivered) {
                    ("work.transient", 1) => Outcome::Transient(Duration::from_millis(50)),
                    ("work.transient", _) => Outcome::Done,
                    _ => Outcome::Poison("never valid".into()),
                };
                let _ = tx.send((msg.subject.to_string(), delivered, outcome.clone()));
                outcome
            }
        },
    ));
    let mut outcomes = Vec::new();
    while outcomes.len() < 3 {
        outcomes.push(
            tokio::time::timeout(Duration::from_secs(10), done.recv())
                .await?
                .expect("handled"),
        );
    }
    outcomes.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
    assert_eq!(outcomes[0].0, "work.poison");
    assert_eq!(
        (outcomes[1].0.as_str(), outcomes[1].1),
        ("work.transient", 1)
    );
    assert_eq!(
        (outcomes[2].0.as_str(), outcomes[2].1, &outcomes[2].2),
        ("work.transient", 2, &Outcome::Done)
    );
    // Settled: nothing pending, the poison message was never redelivered.
    let c = consumer;
    airlock_test_support::wait_until(Duration::from_secs(5), "both messages settled", || {
        let mut c = c.clone();
        async move {
            c.info()
                .await
                .ok()
                .filter(|i| i.num_ack_pending == 0 && i.ack_floor.stream_sequence == 2)
                .cloned()
        }
    })
    .await?;
    assert_eq!(c.clone().info().await?.num_redelivered, 0);
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    shutdown.cancel();
    looper.await??;
    Ok(())
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn health_reports_liveness_always_and_readiness_once_set() -> anyhow::Result<()> {
    let readiness = Readiness::default();
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new(Service::Dispatcher);
    let addr = serve(
        "127.0.0.1:0".parse()?,
        readiness.clone(),
        metrics.clone(),
        shutdown.clone(),
    )
    .await?;
    assert!(
        http_get(addr, "/healthz")
            .await?
            .starts_with("HTTP/1.1 200")
    );
    assert!(http_get(addr, "/readyz").await?.starts_with("HTTP/1.1 503"));
    readiness.set(true);
    assert!(http_get(addr, "/readyz").await?.starts_with("HTTP/1.1 200"));
    shutdown.cancel();
    Ok(())
}

#[tokio::test]
async fn metrics_are_served_as_openmetrics_text_refreshed_at_each_scrape() -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new(Service::Dispatcher);
    let scrapes = Arc::new(AtomicU64::new(0));
    let (m, n) = (metrics.clone(), scrapes.clone());
    metrics.on_scrape(move || {
        let (m, n) = (m.clone(), n.clone());
        async move {
            let seen = n.fetch_add(1, Ordering::SeqCst) + 1;
            m.set_slots_in_use("default", seen);
        }
    });
    metrics.run_accepted("default");
    let addr = serve(
        "127.0.0.1:0".parse()?,
        Readiness::default(),
        metrics,
        shutdown.clone(),
    )
    .await?;
    for expected in 1..=2 {
        let page = http_get(addr, "/metrics").await?;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("application/openmetrics-text"), "{page}");
        let body = page.split("\r\n\r\n").nth(1).unwrap_or_default();
        let s = Samples::parse(body);
        assert_eq!(
            s.get("airlock_runs_accepted_total", &[("queue", "default")]),
            1.0
        );
        assert_eq!(
            s.get("airlock_slots_in_use", &[("queue", "default")]),
            expected as f64
        );
    }
    shutdown.cancel();
    Ok(())
}
