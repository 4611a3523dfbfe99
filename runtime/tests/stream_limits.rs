//! Every stream is bounded, existing streams are updated to their bounds, and a per-run subject past its
//! bound keeps the newest messages (events) or refuses new ones (results).

use std::time::Duration;

use airlock_runtime::nats::{StreamLimits, StreamOptions, ensure_streams, stream_configs};
use airlock_schemas::Subjects;
use airlock_test_support::NatsServer;
use async_nats::jetstream::{self, stream};
use async_nats::{HeaderMap, header::NATS_MESSAGE_ID};

async fn config_of(js: &jetstream::Context, name: &str) -> anyhow::Result<stream::Config> {
    let mut s = js.get_stream(name).await?;
    Ok(s.info().await?.config.clone())
}

async fn publish(js: &jetstream::Context, subject: &str, id: &str) -> anyhow::Result<()> {
    let mut h = HeaderMap::new();
    h.insert(NATS_MESSAGE_ID, id);
    js.publish_with_headers(subject.to_string(), h, id.as_bytes().to_vec().into())
        .await?
        .await?;
    Ok(())
}

#[tokio::test]
async fn every_stream_is_created_with_message_byte_and_size_bounds() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(nats.client().await?);
    ensure_streams(&js, &Subjects::default(), &StreamOptions::default()).await?;
    for (name, l, discard, per_subject_new) in [
        (
            "AIRLOCK_RUNS",
            StreamLimits::RUNS,
            stream::DiscardPolicy::New,
            false,
        ),
        (
            "AIRLOCK_RESULTS",
            StreamLimits::RESULTS,
            stream::DiscardPolicy::New,
            true,
        ),
        (
            "AIRLOCK_TIMERS",
            StreamLimits::TIMERS,
            stream::DiscardPolicy::Old,
            false,
        ),
        (
            "AIRLOCK_EVENTS",
            StreamLimits::EVENTS,
            stream::DiscardPolicy::Old,
            false,
        ),
    ] {
        let c = config_of(&js, name).await?;
        assert_eq!(c.max_messages, l.max_msgs, "{name}");
        assert_eq!(c.max_bytes, l.max_bytes, "{name}");
        assert_eq!(c.max_message_size, l.max_msg_size, "{name}");
        let per_subject = if l.max_msgs_per_subject > 0 {
            l.max_msgs_per_subject
        } else {
            -1
        };
        assert_eq!(c.max_messages_per_subject, per_subject, "{name}");
        assert_eq!(c.discard, discard, "{name}");
        assert_eq!(c.discard_new_per_subject, per_subject_new, "{name}");
        assert!(c.max_messages > 0 && c.max_bytes > 0 && c.max_message_size > 0);
    }
    for per_run in ["AIRLOCK_RESULTS", "AIRLOCK_TIMERS", "AIRLOCK_EVENTS"] {
        assert!(config_of(&js, per_run).await?.max_messages_per_subject > 0);
    }
    Ok(())
}

#[tokio::test]
async fn streams_created_without_bounds_are_updated_to_them() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(nats.client().await?);
    let subjects = Subjects::default();
    // The streams as an earlier version created them: unbounded.
    for c in stream_configs(&subjects, &StreamOptions::default()) {
        let unbounded = stream::Config {
            max_messages: -1,
            max_bytes: -1,
            max_message_size: -1,
            max_messages_per_subject: -1,
            discard: stream::DiscardPolicy::Old,
            discard_new_per_subject: false,
            ..c
        };
        js.create_stream(unbounded).await?;
    }
    publish(&js, "airlock.events.r-1", "kept").await?;
    assert_eq!(config_of(&js, "AIRLOCK_EVENTS").await?.max_messages, -1);

    let opts = StreamOptions {
        events: StreamLimits {
            max_msgs_per_subject: 7,
            ..StreamLimits::EVENTS
        },
        ..StreamOptions::default()
    };
    ensure_streams(&js, &subjects, &opts).await?;
    let c = config_of(&js, "AIRLOCK_EVENTS").await?;
    assert_eq!(c.max_messages, StreamLimits::EVENTS.max_msgs);
    assert_eq!(c.max_messages_per_subject, 7);
    assert_eq!(
        config_of(&js, "AIRLOCK_RESULTS").await?.discard,
        stream::DiscardPolicy::New
    );
    let mut events = js.get_stream("AIRLOCK_EVENTS").await?;
    assert_eq!(
        events.info().await?.state.messages,
        1,
        "what the stream held is kept"
    );
    Ok(())
}

#[tokio::test]
async fn a_runs_events_past_the_per_run_bound_keep_only_the_newest() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(nats.client().await?);
    let opts = StreamOptions {
        events: StreamLimits {
            max_msgs_per_subject: 5,
            ..StreamLimits::EVENTS
        },
        ..StreamOptions::default()
    };
    ensure_streams(&js, &Subjects::default(), &opts).await?;
    for i in 0..8 {
        publish(&js, "airlock.events.busy", &format!("event-{i}")).await?;
    }
    publish(&js, "airlock.events.quiet", "event-q").await?;
    let s = js.get_stream("AIRLOCK_EVENTS").await?;
    let first = s
        .get_first_raw_message_by_subject("airlock.events.busy", 1)
        .await?;
    assert_eq!(
        &first.payload[..],
        b"event-3",
        "the three oldest were dropped"
    );
    let last = s
        .get_last_raw_message_by_subject("airlock.events.busy")
        .await?;
    assert_eq!(&last.payload[..], b"event-7");
    let mut s = s;
    assert_eq!(s.info().await?.state.messages, 6, "5 of busy, 1 of quiet");
    Ok(())
}

#[tokio::test]
async fn a_runs_results_past_the_per_run_bound_are_refused_and_other_runs_still_publish()
-> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(nats.client().await?);
    let opts = StreamOptions {
        results: StreamLimits {
            max_msgs_per_subject: 3,
            ..StreamLimits::RESULTS
        },
        ..StreamOptions::default()
    };
    ensure_streams(&js, &Subjects::default(), &opts).await?;
    for i in 0..3 {
        publish(&js, "airlock.results.flooded", &format!("r-{i}")).await?;
    }
    let refused = publish(&js, "airlock.results.flooded", "r-3").await;
    assert!(refused.is_err(), "a fourth waiting result is refused");
    publish(&js, "airlock.results.other", "other-0").await?;
    let mut s = js.get_stream("AIRLOCK_RESULTS").await?;
    assert_eq!(s.info().await?.state.messages, 4);
    // The oversize bound holds too.
    let big = vec![b'x'; StreamLimits::RESULTS.max_msg_size as usize + 1];
    let oversize = async {
        js.publish("airlock.results.big", big.into()).await?.await?;
        anyhow::Ok(())
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), oversize)
            .await?
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn the_default_bounds_fit_a_server_with_one_gib_of_file_store() -> anyhow::Result<()> {
    // JetStream reserves every stream's byte bound against `max_file_store` when it creates the stream.
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("js.conf");
    std::fs::write(&conf, "jetstream { max_file_store: 1GB }\n")?;
    let nats = NatsServer::start_with_args(&["-c", &conf.display().to_string()]).await?;
    let js = jetstream::new(nats.client().await?);
    ensure_streams(&js, &Subjects::default(), &StreamOptions::default()).await?;
    // And more than the server has is refused with the server's error, not ignored.
    let greedy = StreamOptions {
        events: StreamLimits {
            max_bytes: 2 * 1024 * 1024 * 1024,
            ..StreamLimits::EVENTS
        },
        ..StreamOptions::default()
    };
    assert!(
        ensure_streams(&js, &Subjects::default(), &greedy)
            .await
            .is_err()
    );
    Ok(())
}
