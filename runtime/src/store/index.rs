//! Indexes of runs for listing: sorted sets `<prefix>:idx:all`, `<prefix>:idx:status:<status>`,
//! `<prefix>:idx:queue:<queue>` and `<prefix>:idx:label:<key>=<value>`, member the run id, score the time
//! (ms) the record was first written, which is when the request was received.
//!
//! The record's scripts keep them current ([`SCRIPT`] runs inside them), so every writer of a status does:
//! a run leaves its old status set and joins the new one (and `all`) on every write.
//!
//! # Only what validated names a key
//!
//! A run joins its queue's set and its labels' sets with the write whose `queue` and `request` fields name
//! them ([`terms`]), and only with what passes the contract's own checks, whoever writes: a queue that is a
//! valid name ([`is_valid_name`], the check a request's queue gets), and the labels when all of them pass
//! [`labels_are_valid`] (keys, values, reserved names, the count and size bounds), else none. An accepted
//! run's always pass (only a validated request is recorded `queued`). A refused request's are what the client
//! sent: its record keeps them verbatim (`queue`, `request`) and it is listed in `all` and by status, but a
//! malformed queue (`a.b`, `Bad`) or labels that fail (`bad key!`, a 300-character key, 65 labels) name no
//! set, so a refusal can never make Redis hold a key of the sender's choosing. A well-formed queue that no
//! dispatcher serves is indexed: `list --queue <it>` shows what was sent there and refused. The keys are
//! computed in Rust and passed to the script as `KEYS`; the script never reads the stored request.
//!
//! They expire with the records: each write drops the members of the sets it joins that are older than
//! twice the record TTL and pushes the set's own expiry to that horizon, and a read skips members whose
//! record is gone (expired sooner). A queue or label set is joined once, with the run's first write that
//! names it: its members' scores are their first writes, so a set joined last at `t` has nothing left to
//! keep after `t` + the horizon, which is its expiry. The index keys live beside the records, so the store
//! needs one Redis node (no cluster), as the record scripts already do.

use std::collections::BTreeMap;

use airlock_schemas::{RunStatus, is_valid_name, labels_are_valid};
use redis::AsyncCommands;

use super::{RecordUpdate, Store, StoredRun};
use crate::Error;

/// The Lua function `index_run(cur, first_set)` the record scripts (transition, and creating a refused
/// request's record) call after the record's fields are written: `cur` is the previous status or false,
/// `KEYS[first_set .. #KEYS - 1]` the queue and label sets to join ([`terms`]), the last of `KEYS` the
/// index prefix, `ARGV[1]` the new status, `ARGV[3]` the run id, `ARGV[4]` the record TTL in seconds.
pub(super) const SCRIPT: &str = r#"
local function index_run(cur, first_set)
  local ix = KEYS[#KEYS]
  local id = ARGV[3]
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local score = redis.call('ZSCORE', ix .. 'all', id) or now_ms
  local keep = tonumber(ARGV[4]) * 2000
  local function put(k)
    redis.call('ZADD', k, score, id)
    if keep > 0 then
      redis.call('ZREMRANGEBYSCORE', k, '-inf', '(' .. (now_ms - keep))
      redis.call('PEXPIRE', k, keep)
    end
  end
  if cur and cur ~= '' then redis.call('ZREM', ix .. 'status:' .. cur, id) end
  put(ix .. 'all')
  put(ix .. 'status:' .. ARGV[1])
  for i = first_set, #KEYS - 1 do put(KEYS[i]) end
end
"#;

/// The queue and label sets a write of `update` joins: its `queue` if that is a valid name, and each label
/// of its `request` if they are all valid (see the module docs). Nothing for a write that names neither.
pub(super) fn terms(store_prefix: &str, update: &RecordUpdate) -> Vec<String> {
    let ix = prefix(store_prefix);
    let queue = update
        .queue
        .as_deref()
        .filter(|q| is_valid_name(q))
        .map(|q| queue_key(&ix, q));
    let labels = update
        .request
        .as_deref()
        .map(valid_labels)
        .unwrap_or_default();
    queue
        .into_iter()
        .chain(labels.iter().map(|(k, v)| label_key(&ix, k, v)))
        .collect()
}

/// A request's labels (from its JSON text, which for a refused request may be anything) when they are all
/// valid; none otherwise.
fn valid_labels(request: &str) -> BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Labelled {
        #[serde(default)]
        labels: BTreeMap<String, String>,
    }
    serde_json::from_str::<Labelled>(request)
        .map(|r| r.labels)
        .ok()
        .filter(labels_are_valid)
        .unwrap_or_default()
}

fn queue_key(ix: &str, queue: &str) -> String {
    format!("{ix}queue:{queue}")
}

fn label_key(ix: &str, key: &str, value: &str) -> String {
    format!("{ix}label:{key}={value}")
}

/// The key prefix of every index (`<prefix>:idx:`).
pub(super) fn prefix(store_prefix: &str) -> String {
    format!("{store_prefix}:idx:")
}

/// What [`Store::list`] keeps: every given filter must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<RunStatus>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only runs whose request has this label (`key`, `value`).
    pub label: Option<(String, String)>,
}

/// Where a page of [`Store::list`] ends: the last run returned (its index score and id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    /// Index score (ms) of the last run returned.
    pub score: i64,
    /// Its id.
    pub id: String,
}

impl ListCursor {
    /// The opaque text form handed to clients.
    pub fn encode(&self) -> String {
        hex_encode(format!("1:{}:{}", self.score, self.id).as_bytes())
    }

    /// Parses [`ListCursor::encode`]'s form; `None` when it is not one.
    pub fn decode(s: &str) -> Option<Self> {
        let text = String::from_utf8(hex_decode(s)?).ok()?;
        let rest = text.strip_prefix("1:")?;
        let (score, id) = rest.split_once(':')?;
        Some(Self {
            score: score.parse().ok()?,
            id: id.to_string(),
        })
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One page of [`Store::list`].
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    /// The runs, newest first.
    pub runs: Vec<StoredRun>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<ListCursor>,
}

impl ListFilter {
    fn matches(&self, run: &StoredRun) -> bool {
        let r = &run.record;
        self.status.is_none_or(|s| r.status == Some(s))
            && self
                .queue
                .as_ref()
                .is_none_or(|q| r.queue.as_deref() == Some(q))
            && self.label.as_ref().is_none_or(|(k, v)| {
                run.request
                    .as_ref()
                    .and_then(|req| req.labels.get(k))
                    .is_some_and(|have| have == v)
            })
    }

    /// The most selective index that covers the filter.
    fn index_key(&self, ix: &str) -> String {
        if let Some((k, v)) = &self.label {
            label_key(ix, k, v)
        } else if let Some(q) = &self.queue {
            queue_key(ix, q)
        } else if let Some(s) = self.status {
            format!("{ix}status:{}", s.as_str())
        } else {
            format!("{ix}all")
        }
    }
}

impl Store {
    /// Up to `limit` runs matching `filter`, newest first, after `cursor`; runs whose record expired are
    /// skipped.
    pub async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, Error> {
        let key = filter.index_key(&prefix(&self.prefix));
        let batch = (limit * 2).clamp(16, 1000);
        let mut conn = self.conn.clone();
        let max = cursor.map_or("+inf".to_string(), |c| c.score.to_string());
        let mut offset = 0;
        let mut runs = Vec::new();
        let mut last: Option<ListCursor> = None;
        loop {
            let members: Vec<(String, f64)> = conn
                .zrevrangebyscore_limit_withscores(&key, &max, "-inf", offset, batch as isize)
                .await?;
            offset += batch as isize;
            let candidates: Vec<(String, i64)> = members
                .iter()
                .map(|(id, s)| (id.clone(), *s as i64))
                .filter(|(id, s)| {
                    cursor.is_none_or(|c| *s < c.score || (*s == c.score && *id < c.id))
                })
                .collect();
            let mut pipe = redis::pipe();
            for (id, _) in &candidates {
                pipe.hgetall(self.key(id));
            }
            let hashes: Vec<std::collections::HashMap<String, String>> =
                pipe.query_async(&mut conn).await?;
            for ((id, score), h) in candidates.into_iter().zip(hashes) {
                if h.is_empty() {
                    continue;
                }
                let run = StoredRun::from_hash(&id, &h);
                if !filter.matches(&run) {
                    continue;
                }
                if runs.len() == limit {
                    return Ok(ListPage { runs, next: last });
                }
                runs.push(run);
                last = Some(ListCursor { score, id });
            }
            if members.len() < batch {
                return Ok(ListPage { runs, next: None });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_its_text_form_and_garbage_is_refused() {
        let c = ListCursor {
            score: 1_700_000_000_123,
            id: "run-1".into(),
        };
        assert_eq!(ListCursor::decode(&c.encode()), Some(c));
        assert_eq!(ListCursor::decode("zz"), None);
        assert_eq!(ListCursor::decode("abc"), None);
        assert_eq!(ListCursor::decode(&hex_encode(b"2:1:x")), None);
    }
}
