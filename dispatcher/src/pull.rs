//! The per-queue pull loop: pulls only as many requests as there are free slots and local handler permits
//! (see [`crate::slots`]), and hands each to [`crate::handler::handle`] with progress acks while it works.

use std::sync::Arc;
use std::time::Duration;

use airlock_runtime::consume::{InFlight, PullBackoff, settle, with_progress};
use async_nats::jetstream::{AckKind, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::context::Ctx;
use crate::handler;

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
    while !shutdown.is_cancelled() {
        handlers.reap_finished();
        let notified = ctx.slots.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let free = match ctx.slots.free(&queue).await {
            Ok(f) => f,
            Err(e) => {
                warn!(queue = %queue, error = %e, "Reading the queue's slots failed; will retry");
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            }
        };
        let n = free.min(permits.available_permits() as i64);
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
