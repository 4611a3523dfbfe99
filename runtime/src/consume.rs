//! The pull loop every service runs, and the per-message [`Outcome`].
//!
//! A handler turns one message into an [`Outcome`]; [`settle`] maps it onto JetStream:
//! `Done` → ack, `Transient(d)` → nak with delay `d`, `Poison` → term (the handler has recorded why).
//! Handlers ack only after their durable effect, so a crash between effect and ack means a redelivery,
//! which every handler treats idempotently.
//!
//! Concurrency is bounded twice: by the consumer's `max_ack_pending` (across replicas) and by a local
//! semaphore (per process). On shutdown the loop stops pulling, then waits up to the grace period for the
//! in-flight handlers; what is left unacknowledged is redelivered to another replica.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use airlock_schemas::env;
use airlock_schemas::event::OBSERVED_AT_HEADER;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// What to do with a message once handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The durable effect happened (or had already happened): ack.
    Done,
    /// Could not be handled now: nak, redeliver after the delay.
    Transient(Duration),
    /// Can never be handled; the handler recorded why: term, never redeliver.
    Poison(String),
}

/// Acknowledges `msg` according to `outcome`. A failed ack is logged, not fatal: the message is redelivered
/// and the handler is idempotent.
pub async fn settle(msg: &jetstream::Message, outcome: &Outcome) {
    let kind = match outcome {
        Outcome::Done => AckKind::Ack,
        Outcome::Transient(d) => AckKind::Nak(Some(*d)),
        Outcome::Poison(reason) => {
            tracing::warn!(subject = %msg.subject, reason = %reason, "Poison message terminated");
            AckKind::Term
        }
    };
    if let Err(e) = msg.ack_with(kind).await {
        tracing::warn!(subject = %msg.subject, error = %e, "Ack failed; the message will be redelivered");
    }
}

/// When what a timer reports was observed: its `Airlock-Observed-At` header, when present and valid.
pub fn observed_at(msg: &jetstream::Message) -> Option<DateTime<Utc>> {
    let value = msg.headers.as_ref()?.get(OBSERVED_AT_HEADER)?;
    DateTime::parse_from_rfc3339(value.as_str())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Delivery count of a message (1 on first delivery).
pub fn delivered(msg: &jetstream::Message) -> i64 {
    msg.info().map(|i| i.delivered).unwrap_or(1)
}

/// The attempt a run request message is (its `Airlock-Attempt` header; the first when absent).
pub fn attempt_of(msg: &jetstream::Message) -> u32 {
    env::attempt_from_header(
        msg.headers
            .as_ref()
            .and_then(|h| h.get(env::ATTEMPT_HEADER))
            .map(|v| v.as_str()),
    )
}

/// Runs `work`, telling JetStream every `every` that `msg` is still being worked on, so it is not
/// redelivered to another replica meanwhile. A failed progress ack is logged; the work goes on.
pub async fn with_progress<T>(
    msg: &jetstream::Message,
    every: Duration,
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::warn!(subject = %msg.subject, error = %e, "Progress ack failed");
                }
            }
        }
    }
}

/// Handlers spawned by a pull loop. On shutdown [`InFlight::drain`] gives them the grace period; what is
/// left is aborted, unacknowledged, and JetStream redelivers it to another replica.
#[derive(Debug, Default)]
pub struct InFlight {
    tasks: JoinSet<()>,
}

impl InFlight {
    /// Runs `task` in the background.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Forgets handlers that have finished.
    pub fn reap_finished(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }

    /// Waits up to `grace` for every handler, then aborts the rest.
    pub async fn drain(mut self, grace: Duration) {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                "In-flight handlers did not finish within the grace period; they will be redelivered"
            );
            self.tasks.abort_all();
        }
    }
}

/// Capped exponential backoff between failed pulls (100 ms, doubling up to 5 s), cut short by shutdown.
#[derive(Debug, Clone)]
pub struct PullBackoff {
    delay: Duration,
}

impl PullBackoff {
    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.delay = Self::INITIAL;
    }

    /// Waits the current delay, then doubles it; `false` when `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.delay;
        self.delay = (delay * 2).min(Self::MAX);
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

impl Default for PullBackoff {
    fn default() -> Self {
        Self {
            delay: Self::INITIAL,
        }
    }
}

/// When JetStream stored the message; `None` for a message without JetStream delivery info.
pub fn published_at(msg: &jetstream::Message) -> Option<DateTime<Utc>> {
    let nanos = msg.info().ok()?.published.unix_timestamp_nanos();
    Some(DateTime::from_timestamp_nanos(i64::try_from(nanos).ok()?))
}

/// Loop settings.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// Most handlers running at once in this process.
    pub concurrency: usize,
    /// How long in-flight handlers may run after shutdown.
    pub grace: Duration,
}

/// Pulls from `consumer` until `shutdown`, running `handler` on each message with bounded concurrency and
/// settling its outcome. Returns after in-flight handlers finished or the grace period passed.
pub async fn run_loop<H, Fut>(
    consumer: PullConsumer,
    opts: LoopOptions,
    shutdown: CancellationToken,
    handler: H,
) -> Result<(), Error>
where
    H: Fn(jetstream::Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let handler = Arc::new(handler);
    let batch = BatchOptions {
        concurrency: opts.concurrency,
        pull: opts.concurrency,
        max_batch: 1,
        grace: opts.grace,
    };
    run_batch_loop(consumer, batch, shutdown, move |msgs| {
        let handler = handler.clone();
        async move {
            for msg in msgs {
                let outcome = handler(msg.clone()).await;
                settle(&msg, &outcome).await;
            }
        }
    })
    .await
}

/// Settings of [`run_batch_loop`].
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Most batches being handled at once in this process.
    pub concurrency: usize,
    /// Messages asked for in one pull request.
    pub pull: usize,
    /// Most messages in one batch.
    pub max_batch: usize,
    /// How long in-flight batches may run after shutdown.
    pub grace: Duration,
}

/// Pulls from `consumer` until `shutdown`, handing each group of messages that arrived together (at most
/// `max_batch`, never waiting for a batch to fill) to `handler`, which settles them itself. At most
/// `concurrency` batches are in flight. Returns after in-flight batches finished or the grace period passed,
/// with the last acks flushed.
// Long on purpose: pulling, the permit taken before each pull, and the shutdown drain share state whose
// ordering is the invariant described above; split, it would be spread over several signatures.
pub async fn run_batch_loop<H, Fut>(
    consumer: PullConsumer,
    opts: BatchOptions,
    shutdown: CancellationToken,
    handler: H,
) -> Result<(), Error>
where
    H: Fn(Vec<jetstream::Message>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let semaphore = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let handler = Arc::new(handler);
    let max_batch = opts.max_batch.max(1);
    let mut tasks = InFlight::default();
    // Kept to flush the last acks before returning: acks are buffered writes.
    let mut client: Option<async_nats::Client> = None;
    let mut backoff = PullBackoff::default();

    'outer: while !shutdown.is_cancelled() {
        let stream = consumer
            .stream()
            .max_messages_per_batch(opts.pull.max(1))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let mut chunks = match stream {
            Ok(m) => m.ready_chunks(max_batch),
            Err(e) => {
                tracing::warn!(error = %e, "Pulling failed; will retry");
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            }
        };
        loop {
            // Take a permit before pulling the next messages, so nothing waits in a local buffer while its
            // ack_wait runs down.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                p = semaphore.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break 'outer },
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                n = chunks.next() => n,
            };
            tasks.reap_finished();
            let Some(chunk) = next else { break };
            let mut msgs = Vec::with_capacity(chunk.len());
            let mut failure = None;
            for item in chunk {
                match item {
                    Ok(m) => msgs.push(m),
                    Err(e) => failure = Some(e),
                }
            }
            if let Some(first) = msgs.first() {
                backoff.reset();
                client.get_or_insert_with(|| first.context.client());
                let handler = handler.clone();
                tasks.spawn(async move {
                    handler(msgs).await;
                    drop(permit);
                });
            }
            if let Some(e) = failure {
                tracing::warn!(error = %e, "Consumer stream error; re-subscribing");
                if !backoff.wait(&shutdown).await {
                    break 'outer;
                }
                break;
            }
        }
    }

    // Shutdown: no more pulls; let in-flight handlers finish within the grace period.
    tasks.drain(opts.grace).await;
    if let Some(c) = client
        && let Err(e) = c.flush().await
    {
        tracing::warn!(error = %e, "Flushing the last acks failed; those messages will be redelivered");
    }
    Ok(())
}
