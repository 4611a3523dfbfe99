//! A pod container's captured output, readable while it grows.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// The captured output of one pod's container (stdout and stderr interleaved).
#[derive(Debug)]
pub struct PodLog {
    data: Mutex<Vec<u8>>,
    changed: watch::Sender<usize>,
    closed: AtomicBool,
    /// Container name the log belongs to.
    pub container: String,
}

impl PodLog {
    pub(super) fn new(container: String) -> Self {
        Self {
            data: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
            closed: AtomicBool::new(false),
            container,
        }
    }

    /// A copy of everything logged so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.data.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Whether the writer side has closed (the process and its children are gone).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Subscribe to growth notifications.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.changed.subscribe()
    }

    /// Waits until the writer side has closed, at most `timeout`.
    pub(super) async fn wait_closed(&self, timeout: std::time::Duration) {
        let mut rx = self.subscribe();
        let _ = tokio::time::timeout(timeout, async {
            while !self.is_closed() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    pub(super) fn append(&self, chunk: &[u8]) {
        let len = match self.data.lock() {
            Ok(mut d) => {
                d.extend_from_slice(chunk);
                d.len()
            }
            Err(_) => 0,
        };
        self.changed.send_replace(len);
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.send_modify(|_| {});
    }
}
