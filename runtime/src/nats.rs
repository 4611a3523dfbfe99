//! Connecting to NATS and setting up Airlock's streams and durable consumers, idempotently.
//!
//! Every service calls [`ensure_streams`] at start. Creation races between services starting together are
//! resolved by retrying: whoever loses the race finds the stream and updates it to the same config.

use std::time::Duration;

use airlock_schemas::Subjects;
use airlock_schemas::subjects::{STREAM_EVENTS, STREAM_RESULTS, STREAM_RUNS, STREAM_TIMERS};
use async_nats::jetstream::{self, consumer, stream};

use crate::Error;

/// Connect options for `url`, with the user and password the URL carries (`nats://user:pass@host:4222`).
///
/// async-nats does not take credentials from the URL by itself, so without this a URL with credentials
/// would connect anonymously.
pub fn options_for(url: &str) -> Result<async_nats::ConnectOptions, Error> {
    let addr: async_nats::ServerAddr = url
        .parse()
        .map_err(|e| Error::Config(format!("invalid NATS URL: {e}")))?;
    Ok(match (addr.username(), addr.password()) {
        (Some(user), Some(pass)) => {
            async_nats::ConnectOptions::with_user_and_password(user.to_string(), pass.to_string())
        }
        (Some(token), None) => async_nats::ConnectOptions::with_token(token.to_string()),
        _ => async_nats::ConnectOptions::new(),
    })
}

/// The URL without its credentials, for logs and for handing on.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Connects with reconnects forever and a client name, so outages are ridden out; credentials in the URL are
/// used (see [`options_for`]).
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, Error> {
    options_for(url)?
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(url)
        .await
        .map_err(Error::from)
}

/// Stream settings that are deployment choices.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Replicas of every stream.
    pub replicas: usize,
    /// How long lifecycle events are kept.
    pub events_max_age: Duration,
    /// How long results are kept in their stream (the durable copy is in Redis).
    pub results_max_age: Duration,
    /// Bounds of `AIRLOCK_RUNS` (no per-subject bound: a subject is a queue).
    pub runs: StreamLimits,
    /// Bounds of `AIRLOCK_RESULTS`; per subject = per run.
    pub results: StreamLimits,
    /// Bounds of `AIRLOCK_TIMERS`; per subject = per run and timer kind (or the sweep).
    pub timers: StreamLimits,
    /// Bounds of `AIRLOCK_EVENTS`; per subject = per run.
    pub events: StreamLimits,
}

/// Size bounds of one stream. What happens at a bound is each stream's own choice (see
/// [`stream_configs`]): the work queues refuse new messages, the others drop their oldest.
///
/// JetStream reserves every stream's `max_bytes` against the server's `max_file_store` (by default 75% of
/// the free disk) when the stream is created, so the defaults stay small (544 MiB in all): a server that
/// cannot reserve them refuses to create the streams ("insufficient storage resources").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Most messages.
    pub max_msgs: i64,
    /// Most bytes.
    pub max_bytes: i64,
    /// Largest message, in bytes.
    pub max_msg_size: i32,
    /// Most messages on one subject (0: no per-subject bound).
    pub max_msgs_per_subject: i64,
}

const MIB: i64 = 1024 * 1024;

impl StreamLimits {
    /// `AIRLOCK_RUNS`: a million requests or 128 MiB waiting, each at most 1 MiB.
    pub const RUNS: Self = Self {
        max_msgs: 1_000_000,
        max_bytes: 128 * MIB,
        max_msg_size: MIB as i32,
        max_msgs_per_subject: 0,
    };
    /// `AIRLOCK_RESULTS`: a million results or 256 MiB waiting, each at most 8 MiB, at most 100 per run.
    pub const RESULTS: Self = Self {
        max_msgs: 1_000_000,
        max_bytes: 256 * MIB,
        max_msg_size: 8 * MIB as i32,
        max_msgs_per_subject: 100,
    };
    /// `AIRLOCK_TIMERS`: a million timers or 32 MiB, each at most 64 KiB, the newest 16 per subject.
    pub const TIMERS: Self = Self {
        max_msgs: 1_000_000,
        max_bytes: 32 * MIB,
        max_msg_size: 64 * 1024,
        max_msgs_per_subject: 16,
    };
    /// `AIRLOCK_EVENTS`: a million events or 128 MiB, each at most 256 KiB, the newest 64 per run.
    pub const EVENTS: Self = Self {
        max_msgs: 1_000_000,
        max_bytes: 128 * MIB,
        max_msg_size: 256 * 1024,
        max_msgs_per_subject: 64,
    };
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            replicas: 1,
            events_max_age: Duration::from_secs(24 * 3600),
            results_max_age: Duration::from_secs(24 * 3600),
            runs: StreamLimits::RUNS,
            results: StreamLimits::RESULTS,
            timers: StreamLimits::TIMERS,
            events: StreamLimits::EVENTS,
        }
    }
}

/// `config` with the bounds `l`; `discard_new`: refuse new messages at a bound (work queues, whose
/// messages must not be lost) rather than drop the oldest.
fn bounded(config: stream::Config, l: &StreamLimits, discard_new: bool) -> stream::Config {
    stream::Config {
        max_messages: l.max_msgs,
        max_bytes: l.max_bytes,
        max_message_size: l.max_msg_size,
        max_messages_per_subject: if l.max_msgs_per_subject > 0 {
            l.max_msgs_per_subject
        } else {
            -1
        },
        discard: if discard_new {
            stream::DiscardPolicy::New
        } else {
            stream::DiscardPolicy::Old
        },
        discard_new_per_subject: discard_new && l.max_msgs_per_subject > 0,
        ..config
    }
}

/// The configuration of each of Airlock's streams, each bounded by its [`StreamLimits`]: the work queues
/// (`AIRLOCK_RUNS`, `AIRLOCK_RESULTS`) refuse new messages at a bound (the publisher gets an error; nothing
/// accepted is lost), `AIRLOCK_RESULTS` also per run; `AIRLOCK_TIMERS` and `AIRLOCK_EVENTS` drop their
/// oldest messages, overall and per subject.
pub fn stream_configs(subjects: &Subjects, opts: &StreamOptions) -> Vec<stream::Config> {
    let prefixed = |name: &str| stream_name(subjects, name);
    vec![
        bounded(
            stream::Config {
                name: prefixed(STREAM_RUNS),
                description: Some(
                    "Airlock run requests; deduplicated by Nats-Msg-Id = run id".into(),
                ),
                subjects: vec![subjects.runs_all()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(300),
                num_replicas: opts.replicas,
                ..Default::default()
            },
            &opts.runs,
            true,
        ),
        bounded(
            stream::Config {
                name: prefixed(STREAM_RESULTS),
                description: Some(
                    "Results published by jobs (untrusted until the ingester verifies them)".into(),
                ),
                subjects: vec![subjects.results_all()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                max_age: opts.results_max_age,
                // `max_message_size` is what a job can publish at most; the ingester enforces its own lower limit.
                num_replicas: opts.replicas,
                ..Default::default()
            },
            &opts.results,
            true,
        ),
        bounded(
            stream::Config {
                name: prefixed(STREAM_TIMERS),
                description: Some(
                    "Timer events for the janitor, and the schedules that produce them".into(),
                ),
                subjects: vec![subjects.timers_all(), subjects.schedules_all()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                allow_message_schedules: true,
                // Sweep ticks carry a TTL (`Nats-Schedule-TTL`), so they do not pile up for the stream's max age.
                allow_message_ttl: true,
                allow_rollup: true,
                duplicate_window: Duration::from_secs(300),
                max_age: Duration::from_secs(14 * 24 * 3600),
                num_replicas: opts.replicas,
                ..Default::default()
            },
            &opts.timers,
            false,
        ),
        bounded(
            stream::Config {
                name: prefixed(STREAM_EVENTS),
                description: Some("Lifecycle events of runs, for clients".into()),
                subjects: vec![subjects.events_all()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_age: opts.events_max_age,
                duplicate_window: Duration::from_secs(120),
                num_replicas: opts.replicas,
                ..Default::default()
            },
            &opts.events,
            false,
        ),
    ]
}

/// Name of a stream under the configured prefix: `AIRLOCK_RUNS` for the default prefix, `AIRLOCK_RUNS_ACME`
/// for prefix `acme`, so several installations can share one NATS account.
pub fn stream_name(subjects: &Subjects, base: &str) -> String {
    if subjects.prefix() == airlock_schemas::subjects::DEFAULT_PREFIX {
        base.to_string()
    } else {
        format!(
            "{}_{}",
            base,
            subjects
                .prefix()
                .to_uppercase()
                .replace(['.', '-', '*', '>'], "_")
        )
    }
}

/// Creates or updates every stream: an existing stream whose settings differ (older bounds, say) is
/// updated in place. Safe to run from many processes at once.
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    opts: &StreamOptions,
) -> Result<(), Error> {
    for config in stream_configs(subjects, opts) {
        ensure_stream(js, config).await?;
    }
    Ok(())
}

async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<(), Error> {
    // Two creators racing: the loser's create fails (name in use), its next update succeeds.
    let mut attempts = 0;
    loop {
        match js.create_or_update_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if attempts < 4 => {
                tracing::debug!(stream = %config.name, error = %e, "Stream set-up raced; retrying");
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Settings of a durable pull consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Stream name.
    pub stream: String,
    /// Durable name shared by all replicas of a service.
    pub durable: String,
    /// Filter subject.
    pub filter: String,
    /// Most messages delivered and not yet acknowledged, across all replicas.
    pub max_ack_pending: i64,
    /// How long a delivered message may stay unacknowledged before redelivery.
    pub ack_wait: Duration,
    /// Most deliveries of one message; then the server sends the max-deliveries advisory.
    pub max_deliver: i64,
}

/// Creates or updates a durable pull consumer (idempotent; concurrent calls are safe).
pub async fn ensure_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<consumer::PullConsumer, Error> {
    let config = consumer::pull::Config {
        durable_name: Some(spec.durable.clone()),
        filter_subject: spec.filter.clone(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_deliver: spec.max_deliver,
        max_ack_pending: spec.max_ack_pending,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    let mut attempts = 0;
    loop {
        let attempt = async {
            let stream = js.get_stream(&spec.stream).await?;
            Ok::<_, Error>(stream.create_consumer(config.clone()).await?)
        };
        match attempt.await {
            Ok(c) => return Ok(c),
            Err(e) if attempts < 4 => {
                tracing::debug!(durable = %spec.durable, error = %e, "Consumer set-up raced; retrying");
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
