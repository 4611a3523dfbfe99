//! `logs`: a run's log tail, or with `follow` its output as it is written, relayed to the requester's
//! reply subject until the run ends (protocol in `airlock_schemas::api`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use airlock_runtime::store::StoredRun;
use airlock_schemas::RunStatus;
use airlock_schemas::api::{ApiError, ErrorCode, LogChunk, LogsRequest};
use async_nats::Subject;
use async_nats::service::Request;
use futures::StreamExt;
use tracing::{debug, warn};

use super::{Ctx, check_id, decode, unavailable};
use crate::serve::respond;

/// How long a follow waits before looking again at a run whose output ended but whose record has not.
const RECHECK: Duration = Duration::from_secs(1);

/// How long a probe waits for "no responders" before taking the follower as present.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Turns bytes into text without splitting a UTF-8 sequence across chunks.
#[derive(Debug, Default)]
struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// The text of `bytes` after what was pending, keeping an incomplete trailing sequence back.
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let keep = match std::str::from_utf8(&self.pending) {
            Ok(_) => 0,
            Err(e) if e.error_len().is_none() => self.pending.len() - e.valid_up_to(),
            Err(_) => 0,
        };
        let rest = self.pending.split_off(self.pending.len() - keep);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }

    /// Whatever is still pending.
    fn flush(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Counts one follow while it lives.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a follow writes its chunks.
struct Relay<'a> {
    ctx: &'a Ctx,
    id: String,
    reply: Subject,
    seq: u64,
}

impl Relay<'_> {
    fn chunk(&mut self, data: String, end: bool, status: Option<RunStatus>) -> Option<Vec<u8>> {
        let c = LogChunk {
            id: self.id.clone(),
            seq: self.seq,
            data,
            end,
            status,
        };
        self.seq += 1;
        serde_json::to_vec(&c).ok()
    }

    async fn send(&mut self, data: String, end: bool, status: Option<RunStatus>) {
        let Some(body) = self.chunk(data, end, status) else {
            return;
        };
        if let Err(e) = self
            .ctx
            .client
            .publish(self.reply.clone(), body.into())
            .await
        {
            debug!(run_id = %self.id, error = %e, "Publishing a log chunk failed");
        }
        if end {
            let _ = self.ctx.client.flush().await;
        }
    }

    /// Whether the follower still listens: an empty chunk sent as a request; "no responders" means gone.
    async fn follower_there(&mut self) -> bool {
        let Some(body) = self.chunk(String::new(), false, None) else {
            return true;
        };
        let req = async_nats::Request::new()
            .payload(body.into())
            .timeout(Some(PROBE_TIMEOUT));
        match self.ctx.client.send_request(self.reply.clone(), req).await {
            Err(e) => e.kind() != async_nats::RequestErrorKind::NoResponders,
            Ok(_) => true,
        }
    }
}

impl Ctx {
    pub(super) async fn logs(&self, req: Request) {
        let q: LogsRequest = match decode(&req.message.payload) {
            Ok(q) => q,
            Err(e) => return respond::<LogChunk>(&req, Err(e)).await,
        };
        if let Err(e) = check_id(&q.id) {
            return respond::<LogChunk>(&req, Err(e)).await;
        }
        let run = match self.store.run(&q.id).await {
            Ok(Some(r)) => r,
            Ok(None) => return respond::<LogChunk>(&req, Err(ApiError::not_found(&q.id))).await,
            Err(e) => {
                let e = unavailable("reading the run store", Some(&q.id), &e);
                return respond::<LogChunk>(&req, Err(e)).await;
            }
        };
        if !q.follow {
            let chunk = self.tail(&run).await.map(|data| LogChunk {
                id: q.id.clone(),
                seq: 0,
                data,
                end: true,
                status: run.record.status,
            });
            return respond(&req, chunk).await;
        }
        let Some(reply) = req.message.reply.clone() else {
            let e = ApiError::new(ErrorCode::Invalid, "a follow needs a reply subject");
            return respond::<LogChunk>(&req, Err(e)).await;
        };
        // The first chunk acknowledges the follow; the output follows on the same subject.
        let mut relay = Relay {
            ctx: self,
            id: q.id.clone(),
            reply,
            seq: 1,
        };
        let ack = LogChunk {
            id: q.id.clone(),
            seq: 0,
            data: String::new(),
            end: false,
            status: run.record.status,
        };
        respond(&req, Ok::<_, ApiError>(ack)).await;
        self.follow(&mut relay).await;
    }

    /// The tail of a run's log: the runtime's while it has the run, else what the janitor saved.
    async fn tail(&self, run: &StoredRun) -> Result<String, ApiError> {
        let saved = run.record.logs.clone();
        if run.record.reaped_at.is_some() {
            return Ok(saved.unwrap_or_default());
        }
        match self.backend.logs_tail(run.id(), self.log_tail_bytes).await {
            Ok(live) if !live.is_empty() => Ok(live),
            Ok(_) => Ok(saved.unwrap_or_default()),
            Err(e) => match saved {
                Some(s) => Ok(s),
                None => Err(unavailable("reading the run's logs", Some(run.id()), &e)),
            },
        }
    }

    /// Relays the run's output until the run ended, the follower left, or the service stops.
    async fn follow(&self, relay: &mut Relay<'_>) {
        let _counted = Counted::new(&self.follows);
        let id = relay.id.clone();
        let mut sent: u64 = 0;
        let mut text = Utf8Carry::default();
        let mut probe = tokio::time::interval(self.follow_probe);
        probe.reset();
        loop {
            let mut output = self.backend.logs_follow(&id, sent);
            loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return self.stop(relay, &mut text).await,
                    _ = probe.tick() => {
                        if !relay.follower_there().await {
                            debug!(run_id = %id, "Follower gone; follow stopped");
                            return;
                        }
                    }
                    item = output.next() => match item {
                        None => break,
                        Some(Ok(bytes)) => {
                            sent += bytes.len() as u64;
                            let t = text.push(&bytes);
                            if !t.is_empty() {
                                relay.send(t, false, None).await;
                            }
                        }
                        Some(Err(e)) => {
                            warn!(run_id = %id, error = %e, "Following the run's output failed; will retry");
                            break;
                        }
                    }
                }
            }
            match self.store.run(&id).await {
                Ok(Some(run)) if run.is_terminal() => {
                    let mut rest = text.flush();
                    if sent == 0 {
                        rest.push_str(run.record.logs.as_deref().unwrap_or(""));
                    }
                    if !rest.is_empty() {
                        relay.send(rest, false, None).await;
                    }
                    return relay.send(String::new(), true, run.record.status).await;
                }
                Ok(None) => return relay.send(text.flush(), true, None).await,
                Ok(Some(_)) => {}
                Err(e) => {
                    warn!(run_id = %id, error = %e, "Reading the run during a follow failed; will retry")
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return self.stop(relay, &mut text).await,
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
    }

    /// Ends a follow because the service stops: the end chunk carries the run's current (not terminal)
    /// status, so the follower knows to follow again.
    async fn stop(&self, relay: &mut Relay<'_>, text: &mut Utf8Carry) {
        let status = self
            .store
            .head(&relay.id)
            .await
            .ok()
            .flatten()
            .and_then(|h| h.status);
        relay.send(text.flush(), true, status).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_utf8_sequence_split_across_chunks_is_kept_whole() {
        let bytes = "héllo".as_bytes();
        let mut c = Utf8Carry::default();
        assert_eq!(c.push(&bytes[..2]), "h");
        assert_eq!(c.push(&bytes[2..]), "éllo");
        assert_eq!(c.push(&[0xff, b'a']), "\u{fffd}a");
        assert_eq!(c.push(&[0xc3]), "");
        assert_eq!(c.flush(), "\u{fffd}");
    }
}
