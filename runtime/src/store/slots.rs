//! Taking a dispatcher slot (`<prefix>:slots:queue:<queue>`, `<prefix>:slots:all`), alone or in the same
//! script as recording a new run `queued`.
//!
//! The slot sets are the dispatcher's, but taking one must read the record (only a run that may still be
//! launched gets one) and a terminal transition gives one back, so the Lua lives here beside the record's.

use airlock_schemas::RunStatus;
use airlock_schemas::record as schema;

use super::{RecordUpdate, Store, Transition};
use crate::Error;

/// `take_slot(queue key, all key, record key, run id, now ms, queue cap, global cap, attempt)`: -1 when the
/// run may not be launched (no record, ended, a newer attempt, or past `queued` on its first attempt), 0
/// when a cap is reached, 1 when the run holds its slot (taken now, or kept with a fresh score). Needs the
/// `rank` table.
pub(super) const SLOT_FN: &str = r#"
local function take_slot(qkey, allkey, rec, id, now, qcap, gcap, attempt)
  local status = redis.call('HGET', rec, 'status')
  local current = tonumber(redis.call('HGET', rec, 'attempt') or '1') or 1
  if (not status) or (rank[status] ~= nil and rank[status] >= 3) or current > attempt
    or (attempt <= 1 and status ~= 'queued') then
    return -1
  end
  if redis.call('ZSCORE', qkey, id) then
    redis.call('ZADD', qkey, now, id)
    redis.call('ZADD', allkey, now, id)
    return 1
  end
  if redis.call('ZCARD', qkey) >= tonumber(qcap) then return 0 end
  if redis.call('ZSCORE', allkey, id) == false and redis.call('ZCARD', allkey) >= tonumber(gcap) then
    return 0
  end
  redis.call('ZADD', qkey, now, id)
  redis.call('ZADD', allkey, now, id)
  return 1
end
"#;

/// KEYS: queue slots, all slots, the run's record. ARGV: run id, now (ms), queue cap, global cap, attempt.
pub(super) const TAKE: &str = r#"
local rank = { __RANKS__ }
__SLOT_FN__
return take_slot(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]))
"#;

/// The transition script's ends when it also takes the slot ([`Store::queue_with_slot`]): the slot
/// arguments are `ARGV[5..9]` (queue, now ms, queue cap, global cap, attempt), the fields follow.
pub(super) const QUEUED_FIRST_FIELD: &str = "10";
/// Returned when the transition is refused: no slot was asked for.
pub(super) const QUEUED_REFUSED: &str = "return {0, cur, -2}";
/// Returned when the transition applied: the slot taken in the same step.
pub(super) const QUEUED_APPLIED: &str = "return {1, cur or '', take_slot(KEYS[4] .. ARGV[5], KEYS[3], \
     KEYS[1], ARGV[3], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9]))}";

/// What taking a slot found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotTake {
    /// The run holds its slot now (or already did) and may be launched.
    Taken,
    /// The queue or the global cap is reached.
    Full,
    /// The run may not be launched: no record, ended, a newer attempt, or already past `queued` on its first
    /// attempt. Nothing was taken.
    NotLaunchable,
}

impl SlotTake {
    fn from_code(code: i64) -> Self {
        match code {
            1 => SlotTake::Taken,
            0 => SlotTake::Full,
            _ => SlotTake::NotLaunchable,
        }
    }
}

/// A slot asked for: the run's queue and attempt, and the caps to hold.
#[derive(Debug, Clone, Copy)]
pub struct SlotAsk<'a> {
    /// The run's queue.
    pub queue: &'a str,
    /// The attempt to launch.
    pub attempt: u32,
    /// Most runs of `queue` holding a slot.
    pub queue_cap: u32,
    /// Most runs holding a slot in all.
    pub global_cap: u32,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Takes a slot for `run_id` as `ask` says (keeps it, with a fresh score, if the run holds it already),
    /// in the same atomic step as checking that the run may still be launched; see [`SlotTake`].
    pub async fn take_slot(&self, run_id: &str, ask: &SlotAsk<'_>) -> Result<SlotTake, Error> {
        let code: i64 = self
            .take_slot
            .key(schema::slots_queue_key(&self.prefix, ask.queue))
            .key(schema::slots_all_key(&self.prefix))
            .key(self.key(run_id))
            .arg(run_id)
            .arg(now_ms())
            .arg(ask.queue_cap)
            .arg(ask.global_cap)
            .arg(ask.attempt)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(SlotTake::from_code(code))
    }

    /// Records `run_id` `queued` with `update` as [`Store::transition`] does and, only when that applied (a
    /// new run), takes its slot as [`Store::take_slot`] does, in one script (one round trip). The slot
    /// outcome is `None` when the transition was refused (nothing was taken).
    pub async fn queue_with_slot(
        &self,
        run_id: &str,
        update: &RecordUpdate,
        ask: &SlotAsk<'_>,
    ) -> Result<(Transition, Option<SlotTake>), Error> {
        let mut inv = self.queue_with_slot.key(self.key(run_id));
        inv.key(schema::active_key(&self.prefix))
            .key(schema::slots_all_key(&self.prefix))
            .key(schema::slots_queue_key(&self.prefix, ""));
        for set in super::index::terms(&self.prefix, update) {
            inv.key(set);
        }
        // The index prefix is always the last key (see `index::SCRIPT`).
        inv.key(super::index::prefix(&self.prefix))
            .arg(RunStatus::Queued.as_str())
            .arg(schema::now())
            .arg(run_id)
            .arg(self.record_ttl.as_secs())
            .arg(ask.queue)
            .arg(now_ms())
            .arg(ask.queue_cap)
            .arg(ask.global_cap)
            .arg(ask.attempt);
        for (k, v) in update.fields() {
            inv.arg(k).arg(v);
        }
        let (applied, prev, slot): (i64, String, i64) =
            inv.invoke_async(&mut self.conn.clone()).await?;
        let t = Transition::from_reply(applied, &prev);
        let slot = t.applied().then(|| SlotTake::from_code(slot));
        Ok((t, slot))
    }
}
