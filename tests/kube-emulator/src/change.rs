//! One change of a stored object, as the history keeps it and every watch sends it.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::Value;

use crate::kinds::Kind;

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object changed.
    Modified,
    /// Object removed.
    Deleted,
}

impl EventType {
    /// The wire name (`ADDED`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change recorded in the history.
#[derive(Debug, Clone)]
pub struct Change {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Kind changed.
    pub kind: Kind,
    /// Namespace (`""` for cluster-scoped).
    pub namespace: String,
    /// Event type.
    pub etype: EventType,
    /// The object after the change (before removal for deletes).
    pub object: Arc<Value>,
    /// The watch event line (`{"type":...,"object":...}` and a newline), serialised on first use.
    line: OnceLock<Bytes>,
}

impl Change {
    /// A change of `object`.
    pub fn new(
        rv: u64,
        kind: Kind,
        namespace: String,
        etype: EventType,
        object: Arc<Value>,
    ) -> Self {
        Self {
            rv,
            kind,
            namespace,
            etype,
            object,
            line: OnceLock::new(),
        }
    }

    /// The watch event line of this change, serialised once and shared by every watcher.
    pub fn line(&self) -> Bytes {
        self.line
            .get_or_init(|| event_line(self.etype.as_str(), &self.object))
            .clone()
    }
}

/// One watch event line: `{"type":"<etype>","object":<object>}` and a newline. `type` comes first, as the
/// API server writes it, so a client decodes the object in one pass (the other order makes serde buffer it).
pub fn event_line(etype: &str, object: &Value) -> Bytes {
    let mut v = Vec::with_capacity(1024);
    v.extend_from_slice(b"{\"type\":");
    let _ = serde_json::to_writer(&mut v, etype);
    v.extend_from_slice(b",\"object\":");
    let _ = serde_json::to_writer(&mut v, object);
    v.extend_from_slice(b"}\n");
    Bytes::from(v)
}
