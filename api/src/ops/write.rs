//! `cancel` and `submit`: the same effects as a cancel request and a direct publish.

use airlock_schemas::api::{
    ApiError, CancelReply, CancelRequest, ErrorCode, ErrorDetail, SubmitReply, SubmitRequest,
};
use airlock_schemas::{RunRequest, TimerEvent, TimerKind, decode_request};
use tracing::info;

use super::{Ctx, check_id, decode, unavailable};

/// Longest cancel reason kept (as `airlock.cancel.<id>` keeps it).
const MAX_REASON: usize = 256;

/// Where a request-validation problem is, seen from the submit request (`queue`, `request.<path>`).
fn submit_field(path: &str) -> String {
    match path {
        "queue" => "queue".into(),
        "." | "" => "request".into(),
        p => format!("request.{p}"),
    }
}

fn bounded(reason: Option<String>) -> Option<String> {
    let text = reason?.trim().to_string();
    let mut end = text.len().min(MAX_REASON);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (!text.is_empty()).then(|| text[..end].to_string())
}

impl Ctx {
    pub(super) async fn cancel(&self, body: &[u8]) -> Result<CancelReply, ApiError> {
        let q: CancelRequest = decode(body)?;
        check_id(&q.id)?;
        let head = match self.store.head(&q.id).await {
            Ok(Some(h)) => h,
            Ok(None) => return Err(ApiError::not_found(&q.id)),
            Err(e) => return Err(unavailable("reading the run store", Some(&q.id), &e)),
        };
        let Some(status) = head.status else {
            return Err(ApiError::not_found(&q.id));
        };
        if status.is_terminal() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("run {:?} already ended {status}", q.id),
            ));
        }
        // No attempt: a cancel covers the whole run, whatever its attempt (as the janitor's).
        let ev = TimerEvent {
            kind: TimerKind::Cancel,
            run_id: Some(q.id.clone()),
            attempt: None,
            reason: bounded(q.reason),
        };
        self.publisher
            .timer(&ev)
            .await
            .map_err(|e| unavailable("recording the cancel request", Some(&q.id), &e))?;
        info!(run_id = %q.id, "Cancel requested through the API");
        Ok(CancelReply { id: q.id, status })
    }

    pub(super) async fn submit(&self, body: &[u8]) -> Result<SubmitReply, ApiError> {
        let q: SubmitRequest = decode(body)?;
        let mut details = Vec::new();
        if !self.queues.is_empty() && !self.queues.contains(&q.queue) {
            details.push(ErrorDetail {
                field: "queue".into(),
                message: format!(
                    "unknown queue {:?} (configured: {})",
                    q.queue,
                    self.queues.join(", ")
                ),
            });
        }
        let bytes = serde_json::to_vec(&q.request).map_err(|e| {
            ApiError::invalid(
                "the request does not encode",
                vec![ErrorDetail {
                    field: "request".into(),
                    message: e.to_string(),
                }],
            )
        })?;
        let validated = decode_request(&bytes, &q.queue, &self.policy);
        if let Err(errors) = &validated {
            details.extend(errors.iter().map(|e| ErrorDetail {
                field: submit_field(&e.path),
                message: e.message.clone(),
            }));
        }
        if !details.is_empty() || validated.is_err() {
            let n = details.len();
            return Err(ApiError::invalid(
                format!(
                    "the run request is invalid ({n} problem{})",
                    if n == 1 { "" } else { "s" }
                ),
                details,
            ));
        }
        // Publish the request as given (policy defaults are applied by the dispatcher, as for a direct
        // publish); it parses, since it validated.
        let request: RunRequest = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid(
                "invalid run request",
                vec![ErrorDetail {
                    field: "request".into(),
                    message: e.to_string(),
                }],
            )
        })?;
        self.publisher
            .request(&q.queue, &request, 1)
            .await
            .map_err(|e| unavailable("publishing the run request", Some(&request.id), &e))?;
        info!(run_id = %request.id, queue = %q.queue, "Run submitted through the API");
        Ok(SubmitReply { id: request.id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_paths_are_seen_from_the_submit_request() {
        assert_eq!(submit_field("queue"), "queue");
        assert_eq!(submit_field("."), "request");
        assert_eq!(submit_field("env.AIRLOCK_X"), "request.env.AIRLOCK_X");
    }

    #[test]
    fn a_cancel_reason_is_trimmed_and_bounded() {
        assert_eq!(bounded(Some("  ".into())), None);
        assert_eq!(bounded(Some(" why ".into())).as_deref(), Some("why"));
        assert_eq!(bounded(Some("é".repeat(300))).map(|r| r.len()), Some(256));
    }
}
