//! Publishing a finished job's result file to `<prefix>.results.<run_id>` with its run token, as a job on
//! Kubernetes would, so the ingester's path is the same.
//!
//! Absent or empty file: nothing to publish. Larger than `max_result_bytes`: not published. Otherwise its
//! bytes as they are (the ingester validates them), flushed; transport failures are retried a few times.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use airlock_schemas::env;
use airlock_schemas::trace::{self, TraceParent};
use async_nats::PublishErrorKind;
use tracing::{debug, warn};

use super::LocalBackend;

/// Attempts at publishing (and flushing) one result.
const ATTEMPTS: u32 = 5;
/// Timeout of each attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a result was not published; its text becomes part of the run's status message.
#[derive(Debug, thiserror::Error)]
pub(super) enum NotPublished {
    /// The file exists but cannot be read.
    #[error("result file unreadable: {0}")]
    Unreadable(#[source] std::io::Error),
    /// The file exceeds the cap.
    #[error("result file exceeds {max} bytes; not published")]
    TooLarge {
        /// The cap.
        max: usize,
    },
    /// The job environment had no run token to sign it with.
    #[error("no run token; result not published")]
    NoToken,
    /// Publishing failed.
    #[error("result not published: {0}")]
    Publish(#[source] async_nats::PublishError),
    /// Flushing failed.
    #[error("result not published: {0}")]
    Flush(#[source] async_nats::client::FlushError),
    /// An attempt got no answer in time.
    #[error("result not published: timed out")]
    TimedOut,
    /// This process has no NATS connection (a supervisor process).
    #[error("result not published: no NATS connection")]
    NoConnection,
}

impl NotPublished {
    /// Whether another attempt may succeed: not for a message the server or client refuses as such.
    fn is_retryable(&self) -> bool {
        match self {
            NotPublished::Publish(e) => matches!(e.kind(), PublishErrorKind::Send),
            NotPublished::Flush(_) | NotPublished::TimedOut => true,
            NotPublished::Unreadable(_)
            | NotPublished::TooLarge { .. }
            | NotPublished::NoToken
            | NotPublished::NoConnection => false,
        }
    }
}

impl LocalBackend {
    /// Publishes the result file at `path`; `Ok` also when there was nothing to publish.
    pub(super) async fn publish_result(
        &self,
        run_id: &str,
        path: &Path,
        token: Option<&str>,
        traceparent: Option<&str>,
    ) -> Result<(), NotPublished> {
        let max = self.config().max_result_bytes;
        let mut buf = Vec::new();
        let read =
            std::fs::File::open(path).and_then(|f| f.take(max as u64 + 1).read_to_end(&mut buf));
        match read {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(NotPublished::Unreadable(e)),
            Ok(_) if buf.is_empty() => return Ok(()),
            Ok(_) if buf.len() > max => {
                warn!(run_id, max, "Result file too large; not published");
                return Err(NotPublished::TooLarge { max });
            }
            Ok(_) => {}
        }
        let Some(token) = token else {
            warn!(
                run_id,
                "No run token in the job environment; result not published"
            );
            return Err(NotPublished::NoToken);
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(env::RUN_TOKEN_HEADER, token);
        if let Some(tp) = traceparent.and_then(TraceParent::parse) {
            headers.insert(trace::TRACEPARENT_HEADER, tp.to_string().as_str());
        }
        let subject = self.inner.subjects.results(run_id);
        let Some(nats) = &self.inner.nats else {
            return Err(NotPublished::NoConnection);
        };
        let mut attempt = 0u32;
        loop {
            let sent = async {
                nats.publish_with_headers(subject.clone(), headers.clone(), buf.clone().into())
                    .await
                    .map_err(NotPublished::Publish)?;
                nats.flush().await.map_err(NotPublished::Flush)
            };
            let err = match tokio::time::timeout(ATTEMPT_TIMEOUT, sent).await {
                Ok(Ok(())) => {
                    debug!(run_id, bytes = buf.len(), "Result published");
                    return Ok(());
                }
                Ok(Err(e)) => e,
                Err(_) => NotPublished::TimedOut,
            };
            warn!(run_id, error = %err, attempt, "Publishing the result failed");
            attempt += 1;
            if attempt == ATTEMPTS || !err.is_retryable() {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
    }
}
