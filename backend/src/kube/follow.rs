//! Following a pod's log through the API server (`follow=true`), opened only while someone follows.

use airlock_schemas::labels;
use futures::io::AsyncReadExt;
use futures::stream::{self, BoxStream, StreamExt};
use kube::api::LogParams;

use super::{CONTAINER, KubeBackend};
use crate::BackendError;

/// Largest piece read at once.
const CHUNK: usize = 32 * 1024;

impl KubeBackend {
    /// The job container's output from byte `skip` on, as it is written, until the container exits; empty
    /// when the pod is gone or its container has not started (a 400 or 404).
    pub fn logs_follow(
        &self,
        run_id: &str,
        skip: u64,
    ) -> BoxStream<'static, Result<Vec<u8>, BackendError>> {
        let this = self.clone();
        let name = labels::object_name(run_id);
        let opened = async move {
            let lp = LogParams {
                container: Some(CONTAINER.into()),
                follow: true,
                ..Default::default()
            };
            let pods = this.pods();
            // The open is bounded by the API timeout; the stream itself lasts as long as the container.
            let r = this.call("follow logs", pods.log_stream(&name, &lp)).await;
            match super::api::unless_status(r, &[400, 404]) {
                Ok(Some(reader)) => stream::unfold(
                    (Box::pin(reader), skip, false),
                    |(mut reader, mut skip, failed)| async move {
                        if failed {
                            return None;
                        }
                        loop {
                            let mut buf = vec![0u8; CHUNK];
                            match reader.read(&mut buf).await {
                                Ok(0) => return None,
                                Ok(n) => {
                                    buf.truncate(n);
                                    let drop = (skip.min(n as u64)) as usize;
                                    skip -= drop as u64;
                                    if drop < n {
                                        buf.drain(..drop);
                                        return Some((Ok(buf), (reader, skip, false)));
                                    }
                                }
                                Err(e) => {
                                    return Some((
                                        Err(BackendError::Transient(format!(
                                            "reading pod logs: {e}"
                                        ))),
                                        (reader, 0, true),
                                    ));
                                }
                            }
                        }
                    },
                )
                .boxed(),
                Ok(None) => stream::empty().boxed(),
                Err(e) => stream::once(async move { Err(e) }).boxed(),
            }
        };
        stream::once(opened).flatten().boxed()
    }
}
