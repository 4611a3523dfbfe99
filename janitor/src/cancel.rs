//! Cancel requests: `airlock.cancel.<run_id>` (core NATS request-reply, queue group `airlock-janitor`)
//! becomes a `cancel` timer event in JetStream, which the reaper handles like any other timer.
//!
//! Replies: `{"ok":true}` once the timer is durably stored; `{"ok":false,"error":"unknown run"}`;
//! `{"ok":false,"error":"run already <status>"}`; or `{"ok":false,"error":"..."}` when the request could not
//! be recorded (the caller may retry). The request body may be empty, `{"reason":"..."}`, or a plain-text
//! reason.

use std::sync::Arc;
use std::time::Duration;

use airlock_runtime::consume::InFlight;
use airlock_schemas::{TimerEvent, TimerKind, is_valid_name};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::reaper::Janitor;
use airlock_runtime::metrics::JanitorAction;

/// Longest reason kept from a cancel request.
const MAX_REASON: usize = 256;

/// Answers cancel requests until `shutdown`, then lets in-flight ones finish within `grace`.
pub(crate) async fn serve(
    janitor: Arc<Janitor>,
    mut sub: async_nats::Subscriber,
    concurrency: usize,
    grace: Duration,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = InFlight::default();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        tasks.reap_finished();
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let janitor = janitor.clone();
        tasks.spawn(async move {
            janitor.answer_cancel(msg).await;
            drop(permit);
        });
    }
    if let Err(e) = sub.unsubscribe().await {
        debug!(error = %e, "Unsubscribing from cancel requests failed");
    }
    tasks.drain(grace).await;
}

/// The reason given in a cancel request body, if any.
fn reason_of(payload: &[u8]) -> Option<String> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    // A JSON body must be exactly one object (`{"reason": "..."}`); anything else is a plain-text reason.
    let text = match airlock_schemas::json::object_from_slice(payload) {
        Ok(v) => v.get("reason")?.as_str()?.to_string(),
        Err(_) => String::from_utf8_lossy(payload).into_owned(),
    };
    let text = text.trim();
    let mut end = text.len().min(MAX_REASON);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (!text.is_empty()).then(|| text[..end].to_string())
}

impl Janitor {
    async fn answer_cancel(&self, msg: async_nats::Message) {
        let run_id = self
            .subjects
            .run_of_cancel(&msg.subject)
            .filter(|id| is_valid_name(id))
            .map(str::to_string);
        let answer = match run_id {
            None => json!({"ok": false, "error": "unknown run"}),
            Some(id) => self.cancel(&id, reason_of(&msg.payload)).await,
        };
        match msg.reply {
            Some(reply) => {
                let body = serde_json::to_vec(&answer).unwrap_or_default();
                if let Err(e) = self.client.publish(reply, body.into()).await {
                    warn!(subject = %msg.subject, error = %e, "Replying to a cancel request failed");
                }
            }
            None => debug!(subject = %msg.subject, "Cancel request without a reply subject"),
        }
    }

    async fn cancel(&self, run_id: &str, reason: Option<String>) -> serde_json::Value {
        let status = match self.store.head(run_id).await {
            Ok(h) => h.and_then(|h| h.status),
            Err(e) => {
                warn!(run_id = %run_id, error = %e, "Reading the run for a cancel request failed");
                return json!({"ok": false, "error": "the run store is unavailable; try again"});
            }
        };
        match status {
            None => json!({"ok": false, "error": "unknown run"}),
            Some(s) if s.is_terminal() => {
                json!({"ok": false, "error": format!("run already {}", s.as_str())})
            }
            Some(_) => {
                // No attempt: a cancel covers the whole run, whatever its attempt.
                let ev = TimerEvent {
                    kind: TimerKind::Cancel,
                    run_id: Some(run_id.to_string()),
                    attempt: None,
                    reason,
                };
                match self.publisher.timer(&ev).await {
                    Ok(_) => {
                        self.metrics.janitor(JanitorAction::Cancel);
                        info!(run_id = %run_id, reason = ev.reason.as_deref().unwrap_or(""), "Cancel requested");
                        json!({"ok": true})
                    }
                    Err(e) => {
                        warn!(run_id = %run_id, error = %e, "Recording a cancel request failed");
                        json!({"ok": false, "error": "could not record the cancel request; try again"})
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reason_comes_from_json_or_text_and_is_bounded() {
        assert_eq!(reason_of(b""), None);
        assert_eq!(reason_of(b"  \n"), None);
        assert_eq!(
            reason_of(br#"{"reason":"by alice"}"#).as_deref(),
            Some("by alice")
        );
        assert_eq!(reason_of(br#"{"other":1}"#), None);
        // Not exactly one object: the body is taken as text, never as the first object's reason.
        assert_eq!(
            reason_of(br#"{"reason":"a"}{"reason":"b"}"#).as_deref(),
            Some(r#"{"reason":"a"}{"reason":"b"}"#)
        );
        assert_eq!(
            reason_of(b"no longer needed").as_deref(),
            Some("no longer needed")
        );
        assert_eq!(reason_of(&[b'x'; 1000]).map(|r| r.len()), Some(MAX_REASON));
    }
}
