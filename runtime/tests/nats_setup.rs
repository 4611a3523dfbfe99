//! Stream set-up, deduplication and message schedules against a real nats-server.

use std::time::Duration;

use airlock_runtime::nats::{StreamOptions, ensure_streams};
use airlock_runtime::publish::Publisher;
use airlock_schemas::{Subjects, TimerKind};
use airlock_test_support::NatsServer;
use futures::StreamExt;

#[tokio::test]
async fn the_harness_runs_a_real_nats_server_of_at_least_2_14() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let client = nats.client().await?;
    let version = client.server_info().version;
    let parts: Vec<u32> = version
        .split('.')
        .take(2)
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(
        parts >= vec![2, 14],
        "nats-server {version} is older than 2.14"
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_stream_setup_from_many_services_succeeds() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let subjects = Subjects::default();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let js = async_nats::jetstream::new(nats.client().await?);
        let s = subjects.clone();
        tasks.push(tokio::spawn(async move {
            ensure_streams(&js, &s, &StreamOptions::default()).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    // And again, sequentially: idempotent.
    let js = async_nats::jetstream::new(nats.client().await?);
    ensure_streams(&js, &subjects, &StreamOptions::default()).await?;
    let mut names: Vec<String> = js
        .stream_names()
        .map(|n| n.unwrap_or_default())
        .collect()
        .await;
    names.sort();
    assert_eq!(
        names,
        [
            "AIRLOCK_EVENTS",
            "AIRLOCK_RESULTS",
            "AIRLOCK_RUNS",
            "AIRLOCK_TIMERS"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_duplicate_publish_with_the_same_msg_id_is_stored_once() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let subjects = Subjects::default();
    let js = async_nats::jetstream::new(nats.client().await?);
    ensure_streams(&js, &subjects, &StreamOptions::default()).await?;
    for _ in 0..3 {
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, "run-1");
        let ack = js
            .publish_with_headers(subjects.runs("default"), h, "{}".into())
            .await?
            .await?;
        assert_eq!(
            ack.sequence, 1,
            "every publish of run-1 maps to the first stored message"
        );
    }
    let mut stream = js.get_stream("AIRLOCK_RUNS").await?;
    assert_eq!(stream.info().await?.state.messages, 1);
    Ok(())
}

/// Scheduled messages are written into the stream by the server (not published on core NATS), so tests read
/// them through a consumer, as the janitor does.
async fn timer_messages(
    js: &async_nats::jetstream::Context,
    subject: &str,
) -> anyhow::Result<async_nats::jetstream::consumer::pull::Stream> {
    let stream = js.get_stream("AIRLOCK_TIMERS").await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: subject.to_string(),
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

#[tokio::test]
async fn a_deadline_schedule_fires_into_the_timer_subject_at_its_time() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let subjects = Subjects::default();
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    ensure_streams(&js, &subjects, &StreamOptions::default()).await?;
    let mut sub = timer_messages(&js, &subjects.timer(TimerKind::Deadline, Some("r-1"))).await?;
    let publisher = Publisher::new(js, subjects.clone());
    let at = chrono::Utc::now() + chrono::Duration::seconds(1);
    publisher.schedule_deadline("r-1", 1, at, None).await?;
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await?
        .expect("consumer open")?;
    assert!(chrono::Utc::now() >= at, "the timer fired early");
    let ev: airlock_schemas::TimerEvent = serde_json::from_slice(&msg.payload)?;
    assert_eq!(ev.kind, TimerKind::Deadline);
    assert_eq!(ev.run_id.as_deref(), Some("r-1"));
    Ok(())
}

#[tokio::test]
async fn a_sweep_schedule_fires_repeatedly_and_setting_it_up_twice_keeps_one() -> anyhow::Result<()>
{
    let nats = NatsServer::start().await?;
    let subjects = Subjects::default();
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    ensure_streams(&js, &subjects, &StreamOptions::default()).await?;
    let mut sub = timer_messages(&js, &subjects.timer(TimerKind::Sweep, None)).await?;
    let publisher = Publisher::new(js.clone(), subjects.clone());
    publisher.schedule_sweep(Duration::from_secs(1)).await?;
    publisher.schedule_sweep(Duration::from_secs(1)).await?;
    for _ in 0..2 {
        let tick = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await?
            .expect("consumer open")?;
        let ttl = tick
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-TTL"))
            .map(|v| v.to_string());
        assert_eq!(
            ttl.as_deref(),
            Some("2s"),
            "a sweep tick expires instead of piling up"
        );
    }
    let mut stream = js.get_stream("AIRLOCK_TIMERS").await?;
    let info = stream.info().await?;
    let schedules = js
        .get_stream("AIRLOCK_TIMERS")
        .await?
        .get_last_raw_message_by_subject(&subjects.schedule("sweep"))
        .await?;
    assert_eq!(schedules.subject.as_str(), subjects.schedule("sweep"));
    assert!(info.state.messages >= 1);
    Ok(())
}

#[tokio::test]
async fn credentials_in_the_nats_url_are_used_and_redacted_for_jobs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("auth.conf");
    std::fs::write(&conf, "authorization { user: svc, password: s3cret }\n")?;
    let nats = NatsServer::start_with_args(&["-c", conf.to_str().unwrap_or_default()]).await?;
    let with_creds = format!("nats://svc:s3cret@127.0.0.1:{}", nats.port());

    // Without honouring the URL's credentials the server would refuse the (anonymous) connection.
    let client = airlock_runtime::nats::options_for(&with_creds)?
        .connect(&with_creds)
        .await?;
    client.flush().await?;
    let anonymous = async_nats::ConnectOptions::new().connect(nats.url()).await;
    assert!(
        anonymous.is_err(),
        "the server must refuse anonymous clients for this test to mean anything"
    );

    assert_eq!(airlock_runtime::nats::redact(&with_creds), nats.url());
    assert_eq!(airlock_runtime::nats::redact(&nats.url()), nats.url());
    Ok(())
}
