//! Writes for refused requests: a refusal creates a record only where there is none, and otherwise is
//! only counted on the existing run, so one client's bad request can never touch another client's run.
//!
//! Whether an existing `rejected` record is this request's own (an earlier delivery recorded it, and
//! crashed or lost the race before its acknowledgement) is decided by what was delivered, never by the
//! reason's text, which depends on the replica (its `--queues`, its policy): the record keeps a
//! [`Delivery`], a digest of the request's subject and body, and [`Store::reject`] compares it in the same
//! script that would create the record.

use std::sync::LazyLock;

use airlock_schemas::RunStatus;
use airlock_schemas::record::{self as schema, field};
use redis::Script;
use sha2::{Digest, Sha256};

use super::{RecordUpdate, Store};
use crate::Error;

/// What a refused request was when delivered: the SHA-256 of its subject and body (hex). Every delivery of
/// one message has the same, whichever replica gets it; another request under the same id has another
/// (unless it is byte for byte the same request, sent to the same queue again, which is refused the same
/// way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery(String);

impl Delivery {
    /// The delivery of a request with `payload` on `subject`.
    pub fn of(subject: &str, payload: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update((subject.len() as u64).to_be_bytes());
        h.update(subject.as_bytes());
        h.update(payload);
        Self(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The hex digest stored on the record.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Outcome of [`Store::reject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The run is recorded `rejected` now.
    Recorded,
    /// An earlier delivery of this very request (the same [`Delivery`]) recorded it; nothing written.
    AlreadyRecorded,
    /// The id belongs to another run (or to another request's refusal); nothing written.
    IdInUse,
}

/// KEYS: record, then the queue and label sets the run joins (`index::terms`: only what passes the
/// contract's checks, whatever the refused request said), the index prefix last. ARGV: `rejected`, now, run
/// id, TTL seconds, the delivery, then field pairs. The record joins the listing indexes as the transition
/// script's records do. Returns 1 when created, 2 when the record is this delivery's, 0 otherwise.
static REJECT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"
{index}
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], '{delivery}') == ARGV[5] then return 2 end
  return 0
end
redis.call('HSET', KEYS[1], '{status}', ARGV[1], '{updated_at}', ARGV[2], '{delivery}', ARGV[5])
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
index_run(false, 2)
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return 1
"#,
        index = super::index::SCRIPT,
        delivery = field::REJECTED_DELIVERY,
        status = field::STATUS,
        updated_at = field::UPDATED_AT,
    ))
});

static COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], '{}', 1)
"#,
        field::REQUEST_REJECTIONS
    ))
});

impl Store {
    /// Records `run_id` `rejected` with `update`, atomically, only if it has no record at all, keeping
    /// `delivery` on it; see [`Refusal`]. The record starts its TTL at once (`rejected` is terminal) and
    /// never joins the active set.
    pub async fn reject(
        &self,
        run_id: &str,
        delivery: &Delivery,
        update: &RecordUpdate,
    ) -> Result<Refusal, Error> {
        let mut inv = REJECT.key(self.key(run_id));
        for set in super::index::terms(&self.prefix, update) {
            inv.key(set);
        }
        inv.key(super::index::prefix(&self.prefix))
            .arg(RunStatus::Rejected.as_str())
            .arg(schema::now())
            .arg(run_id)
            .arg(self.record_ttl.as_secs())
            .arg(delivery.as_str());
        for (k, v) in update.fields() {
            inv.arg(k).arg(v);
        }
        let code: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(match code {
            1 => Refusal::Recorded,
            2 => Refusal::AlreadyRecorded,
            _ => Refusal::IdInUse,
        })
    }

    /// Counts a refused request that named `run_id` on its record (`request_rejections`); returns the count,
    /// 0 when there is no record (nothing is created).
    pub async fn count_request_rejection(&self, run_id: &str) -> Result<u64, Error> {
        Ok(COUNT
            .key(self.key(run_id))
            .invoke_async(&mut self.conn.clone())
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_its_subject_and_body_and_nothing_else() {
        let d = Delivery::of("airlock.runs.a", b"{}");
        assert_eq!(d, Delivery::of("airlock.runs.a", b"{}"));
        assert_ne!(d, Delivery::of("airlock.runs.b", b"{}"));
        assert_ne!(d, Delivery::of("airlock.runs.a", b"{ }"));
        // The boundary between subject and body is part of it.
        assert_ne!(
            Delivery::of("airlock.runs.a", b"b{}"),
            Delivery::of("airlock.runs.ab", b"{}")
        );
        assert_eq!(d.as_str().len(), 64);
    }
}
