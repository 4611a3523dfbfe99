//! The object store: objects by (kind, namespace, name), one global resourceVersion,
//! a bounded event history for watches, and counters.
//!
//! Objects are kept as `Arc<Value>`: a change, the history and every watcher share one copy of each
//! version, and each change is serialised as a watch event line once, for all watchers ([`Change::line`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

pub use crate::change::{Change, EventType, event_line};
use crate::kinds::Kind;
use crate::status::ApiError;

/// Store key: kind, namespace (`""` when cluster-scoped), name.
pub type Key = (Kind, String, String);

#[derive(Debug)]
struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Changes with rv <= this are no longer in the history.
    compacted: u64,
    deletes: HashMap<Kind, u64>,
    creates: HashMap<Kind, u64>,
    seq: u64,
}

/// A watch backlog plus the live receiver that continues it.
pub type WatchStart = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

/// The shared store.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Change>>,
    changed: watch::Sender<u64>,
}

/// Current time in the API's RFC 3339 form.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Store {
    /// A new empty store with a bounded history.
    pub fn new(history_limit: usize) -> Self {
        let (events, _) = broadcast::channel(4096);
        let (changed, _) = watch::channel(0);
        Self {
            inner: Mutex::new(Inner {
                rv: 1000,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_limit: history_limit.max(1),
                compacted: 1000,
                deletes: HashMap::new(),
                creates: HashMap::new(),
                seq: 0,
            }),
            events,
            changed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribe to "something changed" notifications (the value is the latest RV).
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The current global resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    fn record(&self, inner: &mut Inner, kind: Kind, ns: &str, etype: EventType, obj: Arc<Value>) {
        let change = Arc::new(Change::new(inner.rv, kind, ns.to_string(), etype, obj));
        inner.history.push_back(change.clone());
        while inner.history.len() > inner.history_limit {
            if let Some(old) = inner.history.pop_front() {
                inner.compacted = old.rv;
            }
        }
        let _ = self.events.send(change);
        self.changed.send_replace(inner.rv);
    }

    /// A fresh uid (UUID-shaped).
    pub fn new_uid(&self) -> String {
        let mut g = self.lock();
        g.seq += 1;
        let seq = g.seq;
        drop(g);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let a = mix(nanos as u64 ^ seq.rotate_left(17));
        let b = mix(a ^ seq ^ (std::process::id() as u64) << 32);
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a as u16) & 0x0fff,
            ((b >> 48) as u16 & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    /// A 5-character suffix for `generateName`.
    pub fn random_suffix(&self) -> String {
        const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let uid = self.new_uid();
        let mut h = mix(uid
            .bytes()
            .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64)));
        (0..5)
            .map(|_| {
                let c = ALPHA[(h % ALPHA.len() as u64) as usize] as char;
                h /= ALPHA.len() as u64;
                c
            })
            .collect()
    }

    /// Get one object.
    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        self.get_shared(kind, ns, name).map(Arc::unwrap_or_clone)
    }

    /// Get one object, shared (no copy).
    pub fn get_shared(&self, kind: Kind, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.lock()
            .objects
            .get(&(kind, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Whether an object exists.
    pub fn contains(&self, kind: Kind, ns: &str, name: &str) -> bool {
        self.lock()
            .objects
            .contains_key(&(kind, ns.to_string(), name.to_string()))
    }

    /// List objects of a kind (optionally in one namespace) with the list resourceVersion.
    pub fn list(&self, kind: Kind, ns: Option<&str>) -> (Vec<Value>, u64) {
        let g = self.lock();
        let items = g
            .objects
            .iter()
            .filter(|((k, n, _), _)| *k == kind && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| Value::clone(v))
            .collect();
        (items, g.rv)
    }

    /// Create a new object; fills uid, resourceVersion, creationTimestamp, generation.
    pub fn create(&self, kind: Kind, ns: &str, mut obj: Value) -> Result<Arc<Value>, ApiError> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let uid = self.new_uid();
        let mut g = self.lock();
        if kind.namespaced() {
            match g
                .objects
                .get(&(Kind::Namespace, String::new(), ns.to_string()))
            {
                None => return Err(ApiError::not_found(Kind::Namespace, ns)),
                Some(n)
                    if n.pointer("/status/phase").and_then(Value::as_str)
                        == Some("Terminating") =>
                {
                    let mut e = ApiError::new(
                        403,
                        "Forbidden",
                        format!(
                            "{} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                            kind.plural(),
                            name,
                            ns
                        ),
                    );
                    e.details = Some(json!({"name": name, "kind": kind.plural()}));
                    return Err(e);
                }
                _ => {}
            }
        }
        let key = (kind, ns.to_string(), name.clone());
        if g.objects.contains_key(&key) {
            return Err(ApiError::already_exists(kind, &name));
        }
        g.rv += 1;
        let rv = g.rv;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("uid".into(), json!(uid));
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            if kind != Kind::Namespace {
                meta.insert("generation".into(), json!(1));
            }
            if kind.namespaced() {
                meta.insert("namespace".into(), json!(ns));
            } else {
                meta.remove("namespace");
            }
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
        }
        let obj = Arc::new(obj);
        g.objects.insert(key, obj.clone());
        *g.creates.entry(kind).or_default() += 1;
        self.record(&mut g, kind, ns, EventType::Added, obj.clone());
        Ok(obj)
    }

    /// Read-modify-write one object under the lock.
    ///
    /// `f` gets the current object and mutates it; uid/creationTimestamp/namespace/name are
    /// preserved, the resourceVersion is bumped only when something changed, and generation
    /// is bumped when `spec` changed. `expected_rv` gives optimistic concurrency (409 Conflict).
    pub fn modify(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        expected_rv: Option<&str>,
        f: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Arc<Value>, ApiError> {
        let mut g = self.lock();
        let key = (kind, ns.to_string(), name.to_string());
        let Some(current) = g.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(kind, name));
        };
        if let Some(rv) = expected_rv
            && !rv.is_empty()
            && current
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                != Some(rv)
        {
            return Err(ApiError::conflict(kind, name));
        }
        let mut next = Value::clone(&current);
        f(&mut next)?;
        // Preserve system metadata.
        let current_meta = current.get("metadata");
        for field in [
            "uid",
            "creationTimestamp",
            "resourceVersion",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            let cur = current_meta.and_then(|m| m.get(field)).cloned();
            if let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut) {
                match cur {
                    Some(v) => {
                        meta.insert(field.into(), v);
                    }
                    None => {
                        meta.remove(field);
                    }
                }
            }
        }
        if let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("name".into(), json!(name));
            if kind.namespaced() {
                meta.insert("namespace".into(), json!(ns));
            }
        }
        if next == *current {
            return Ok(current);
        }
        if next.get("spec") != current.get("spec")
            && let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut)
            && let Some(generation) = meta.get("generation").and_then(Value::as_i64)
        {
            meta.insert("generation".into(), json!(generation + 1));
        }
        g.rv += 1;
        let rv = g.rv;
        if let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        let next = Arc::new(next);
        g.objects.insert(key, next.clone());
        self.record(&mut g, kind, ns, EventType::Modified, next.clone());
        Ok(next)
    }

    /// Set `metadata.deletionTimestamp` (graceful deletion), emitting MODIFIED.
    pub fn mark_deleting(&self, kind: Kind, ns: &str, name: &str, grace: i64) -> Option<Value> {
        let mut g = self.lock();
        let key = (kind, ns.to_string(), name.to_string());
        let current = g.objects.get(&key)?;
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            return Some(Value::clone(current));
        }
        let mut obj = Value::clone(current);
        g.rv += 1;
        let rv = g.rv;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        let shared = Arc::new(obj.clone());
        g.objects.insert(key, shared.clone());
        self.record(&mut g, kind, ns, EventType::Modified, shared);
        Some(obj)
    }

    /// Remove an object; with `cascade`, also remove (recursively) objects it owns.
    ///
    /// Returns the removed objects, the requested one first.
    pub fn remove(&self, kind: Kind, ns: &str, name: &str, cascade: bool) -> Vec<Value> {
        let mut g = self.lock();
        let mut removed = Vec::new();
        let mut queue = vec![(kind, ns.to_string(), name.to_string())];
        while let Some(key) = queue.pop() {
            let Some(obj) = g.objects.remove(&key) else {
                continue;
            };
            let mut obj = Arc::unwrap_or_clone(obj);
            g.rv += 1;
            let rv = g.rv;
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".into(), json!(rv.to_string()));
            }
            *g.deletes.entry(key.0).or_default() += 1;
            self.record(
                &mut g,
                key.0,
                &key.1,
                EventType::Deleted,
                Arc::new(obj.clone()),
            );
            if cascade {
                let uid = obj
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let owned: Vec<Key> = g
                    .objects
                    .iter()
                    .filter(|(_, v)| {
                        v.pointer("/metadata/ownerReferences")
                            .and_then(Value::as_array)
                            .is_some_and(|refs| {
                                refs.iter()
                                    .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
                            })
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                queue.extend(owned);
                if key.0 == Kind::Namespace {
                    let contents: Vec<Key> = g
                        .objects
                        .keys()
                        .filter(|(k, n, _)| k.namespaced() && *n == key.2)
                        .cloned()
                        .collect();
                    queue.extend(contents);
                }
            }
            removed.push(obj);
        }
        removed
    }

    /// Changes after `rv` for `kind` (optionally in one namespace), plus a live receiver.
    ///
    /// Errors with the resourceVersion the history starts at when `rv` is too old.
    pub fn watch_from(&self, rv: u64) -> Result<WatchStart, u64> {
        let g = self.lock();
        if rv < g.compacted {
            return Err(g.compacted + 1);
        }
        let backlog = g.history.iter().filter(|c| c.rv > rv).cloned().collect();
        Ok((backlog, self.events.subscribe()))
    }

    /// Current objects of a kind plus a live receiver, atomically.
    pub fn snapshot_and_subscribe(
        &self,
        kind: Kind,
    ) -> (Vec<Arc<Value>>, u64, broadcast::Receiver<Arc<Change>>) {
        let g = self.lock();
        let items = g
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, v)| v.clone())
            .collect();
        (items, g.rv, self.events.subscribe())
    }

    /// Drop the whole history so any older resourceVersion becomes "too old" (410).
    pub fn compact(&self) {
        let mut g = self.lock();
        g.history.clear();
        g.compacted = g.rv;
    }

    /// How many objects of a kind were deleted.
    pub fn delete_count(&self, kind: Kind) -> u64 {
        self.lock().deletes.get(&kind).copied().unwrap_or(0)
    }

    /// How many objects of a kind were created.
    pub fn create_count(&self, kind: Kind) -> u64 {
        self.lock().creates.get(&kind).copied().unwrap_or(0)
    }
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}
