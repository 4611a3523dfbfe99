//! The per-queue pull loop: pulls only as many requests as there are free slots and local handler permits
//! (see [`crate::slots`]), and hands each to [`crate::handler::handle`] with progress acks while it works.
//!
//! Reading the free slots is a Redis round trip; far from the caps it is skipped: a fresh read (younger than
//! [`ESTIMATE_FRESH`]), less what was pulled since, that still leaves room for twice the pull is trusted. The
//! slot script stays the gate (a message pulled for a slot another replica just took waits for one, as when
//! two replicas race for the last slot); near a cap every pull reads Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_runtime::consume::{InFlight, PullBackoff, settle, with_progress};
use async_nats::jetstream::{AckKind, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::context::Ctx;
use crate::handler;

/// How long a read of the free slots may stand in for the next ones (see the module docs).
pub const ESTIMATE_FRESH: Duration = Duration::from_millis(250);

/// The free slots of a queue as last read, less what was pulled since.
#[derive(Debug, Default)]
struct FreeEstimate {
    read: Option<(Instant, i64)>,
}

impl FreeEstimate {
    /// The estimate, when it is fresh and leaves room for twice `want` (so the read can be skipped).
    fn roomy(&self, want: i64) -> Option<i64> {
        let (at, free) = self.read?;
        (at.elapsed() < ESTIMATE_FRESH && free >= 2 * want).then_some(free)
    }

    fn set(&mut self, free: i64) {
        self.read = Some((Instant::now(), free));
    }

    fn pulled(&mut self, n: i64) {
        if let Some((_, free)) = &mut self.read {
            *free -= n;
        }
    }
}

/// Pulls one queue until `shutdown`; then gives in-flight handlers the grace period.
pub async fn queue_loop(
    ctx: Arc<Ctx>,
    queue: String,
    consumer: PullConsumer,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(ctx.config.consumer.concurrency.max(1)));
    let mut handlers = InFlight::default();
    let mut backoff = PullBackoff::default();
    let mut estimate = FreeEstimate::default();
    while !shutdown.is_cancelled() {
        handlers.reap_finished();
        let notified = ctx.slots.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let want = permits.available_permits() as i64;
        let read = match estimate.roomy(want) {
            Some(f) => Ok(f),
            None => ctx.slots.free(&queue).await.inspect(|f| estimate.set(*f)),
        };
        let free = match read {
            Ok(f) => f,
            Err(e) => {
                warn!(queue = %queue, error = %e, "Reading the queue's slots failed; will retry");
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            }
        };
        let n = free.min(want);
        if n <= 0 {
            // At the cap (or every handler busy): do not pull; wait for a release here, or re-check Redis
            // for releases by other replicas.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut notified => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        if pull_batch(
            &ctx,
            &queue,
            &consumer,
            n,
            &permits,
            &mut handlers,
            &shutdown,
        )
        .await
        {
            estimate.pulled(n);
            backoff.reset();
        } else if !backoff.wait(&shutdown).await {
            break;
        }
    }
    handlers.drain(ctx.config.common.shutdown_grace).await;
}

/// Pulls at most `n` requests and spawns a handler for each; `false` when the pull itself failed.
async fn pull_batch(
    ctx: &Arc<Ctx>,
    queue: &str,
    consumer: &PullConsumer,
    n: i64,
    permits: &Arc<Semaphore>,
    handlers: &mut InFlight,
    shutdown: &CancellationToken,
) -> bool {
    let mut reservation = ctx.slots.reserve(queue, n);
    let batch = consumer
        .batch()
        .max_messages(n as usize)
        .expires(Duration::from_secs(5))
        .messages()
        .await;
    let mut batch = match batch {
        Ok(b) => b,
        Err(e) => {
            warn!(queue = %queue, error = %e, "Pulling failed; will retry");
            return false;
        }
    };
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return true,
            n = batch.next() => n,
        };
        let msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                warn!(queue = %queue, error = %e, "Pull batch failed; pulling again");
                return true;
            }
            None => return true,
        };
        let (Some(share), Ok(permit)) =
            (reservation.take_one(), permits.clone().try_acquire_owned())
        else {
            // Cannot happen (we asked for at most what we hold); hand it back at once.
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            continue;
        };
        let ctx = ctx.clone();
        handlers.spawn(async move {
            let every = ctx.config.consumer.progress_every();
            let outcome =
                with_progress(&msg, every, handler::handle(ctx.clone(), &msg, share)).await;
            settle(&msg, &outcome).await;
            drop(permit);
            ctx.slots.wake.notify_waiters();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_trusted_only_while_it_leaves_room_for_twice_the_pull() {
        let mut e = FreeEstimate::default();
        assert_eq!(e.roomy(1), None, "nothing read yet");
        e.set(40);
        assert_eq!(e.roomy(16), Some(40));
        e.pulled(16);
        assert_eq!(
            e.roomy(16),
            None,
            "24 left is less than twice 16: read again"
        );
        assert_eq!(e.roomy(12), Some(24));
        e.set(0);
        assert_eq!(e.roomy(1), None, "at the cap every pull reads");
    }
}
