//! The Redis run record `<prefix>:run:<id>` with forward-only status transitions.
//!
//! Every write that must be atomic is a Lua script, so replicas racing on one run never interleave:
//! a status moves only forward ([`RunStatus::rank`]); the first genuine result wins; rejections are bounded.
//! Non-terminal runs are kept in the set `<prefix>:runs:active` for sweeps; a terminal record expires after
//! the configured TTL.
//!
//! The store is the record's one owner: every read and write of `<prefix>:run:<id>` goes through its typed
//! methods ([`RecordUpdate`], [`RunHead`], [`StoredRun`], [`RunRecord`]); nothing else names a hash field.
//!
//! # Layout
//! - this module: the connection, the Lua scripts and the methods.
//! - `record`: the typed views of the record and the update of its fields.
//! - `index`: the listing indexes the record scripts keep, and [`Store::list`] over them.
//! - `rejections`: writes for refused requests, which never overwrite an existing record (a redelivery is
//!   told from another request under the same id by what was delivered, [`Delivery`]).
//! - `slots`: taking a dispatcher slot, alone or with a new run's `queued` record in one script.

mod index;
mod record;
mod rejections;
mod slots;

use std::collections::HashMap;
use std::time::Duration;

use airlock_schemas::RunStatus;
use airlock_schemas::record::{self as schema, RunRecord, field};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

pub use self::index::{ListCursor, ListFilter, ListPage};
pub use self::record::{RecordUpdate, RunHead, StoredRun};
pub use self::rejections::{Delivery, Refusal};
pub use self::slots::{SlotAsk, SlotTake};
use crate::Error;

/// Outcome of [`Store::transition`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The status moved.
    Applied {
        /// Status before (None for a new record).
        previous: Option<RunStatus>,
    },
    /// The record already had this status or a later one; nothing changed.
    Refused {
        /// The current status.
        current: RunStatus,
    },
}

impl Transition {
    /// Whether the status moved.
    pub fn applied(&self) -> bool {
        matches!(self, Transition::Applied { .. })
    }

    /// Decodes the transition script's `{applied, previous status}`.
    fn from_reply(applied: i64, prev: &str) -> Self {
        match (applied, RunStatus::parse(prev)) {
            (1, previous) => Transition::Applied { previous },
            (_, Some(current)) => Transition::Refused { current },
            (_, None) => Transition::Applied { previous: None },
        }
    }
}

/// Outcome of [`Store::waiting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The run is `queued` or `pending` on this attempt: its reason says why it waits now.
    Shown,
    /// The run has moved on (`running`, e.g. a re-dispatched run whose record kept its status, or ended):
    /// nothing written.
    Past(RunStatus),
    /// No record, or the record is on a newer attempt: nothing written.
    NotCurrent,
}

/// Outcome of [`Store::store_result`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultWrite {
    /// Stored now.
    Stored,
    /// A result was already stored; nothing changed.
    Duplicate,
    /// No record for this run.
    UnknownRun,
}

/// KEYS: record, active set, all slots, the per-queue slot key prefix, then the queue and label sets the run
/// joins (`index::terms`), the index prefix last. ARGV: status, now, run id, TTL seconds, then (from
/// `__FIRST_FIELD__`) field pairs. `__SLOT_FN__`, `__REFUSED__` and `__APPLIED__` are filled in for the plain
/// transition and for `queued` with a slot (`slots`).
const TRANSITION: &str = r#"
local rank = { __RANKS__ }
__SLOT_FN__
__INDEX_FN__
local new_rank = rank[ARGV[1]]
local cur = redis.call('HGET', KEYS[1], 'status')
if cur and rank[cur] ~= nil and rank[cur] >= new_rank then
  __REFUSED__
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at', ARGV[2])
-- A run that starts or ends no longer waits: the reason it waited with goes (the new status's own reason,
-- if any, is among the fields written next).
if new_rank >= 2 then redis.call('HDEL', KEYS[1], 'reason') end
for i = __FIRST_FIELD__, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
index_run(cur, 5)
if new_rank >= 3 then
  redis.call('SREM', KEYS[2], ARGV[3])
  -- An ended run gives back its dispatcher slot, whoever ends it: one still queued (its launch being
  -- retried) and one whose finish no watcher saw (its dispatcher was down) alike. KEYS[4] is the prefix of
  -- the per-queue slot keys; the queue is only known from the record.
  redis.call('ZREM', KEYS[3], ARGV[3])
  local q = redis.call('HGET', KEYS[1], 'queue')
  if q then redis.call('ZREM', KEYS[4] .. q, ARGV[3]) end
  if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
else
  redis.call('SADD', KEYS[2], ARGV[3])
end
__APPLIED__
"#;

/// KEYS: record. ARGV: attempt, reason. Returns `{status or '', code}`: code 1 when the run is `queued` or
/// `pending` on this attempt (its reason is `ARGV[2]` now), 0 when it is past that, -1 when the record is on
/// a newer attempt (status '' when there is no record).
const WAITING: &str = r#"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'', 0} end
local current = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '1') or 1
if current > tonumber(ARGV[1]) then return {status, -1} end
if status ~= 'queued' and status ~= 'pending' then return {status, 0} end
if redis.call('HGET', KEYS[1], 'reason') ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'reason', ARGV[2])
end
return {status, 1}
"#;

const STORE_RESULT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 'unknown' end
if redis.call('HEXISTS', KEYS[1], 'result') == 1 then return 'duplicate' end
redis.call('HSET', KEYS[1], 'result', ARGV[1], 'result_at', ARGV[2])
return 'stored'
"#;

const ADD_REJECTION: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local raw = redis.call('HGET', KEYS[1], 'result_rejections')
local list = {}
if raw then
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' then list = decoded end
end
table.insert(list, ARGV[1])
local max = tonumber(ARGV[2])
while #list > max do table.remove(list, 1) end
redis.call('HSET', KEYS[1], 'result_rejections', cjson.encode(list))
return redis.call('HINCRBY', KEYS[1], 'result_rejections_total', 1)
"#;

/// The run store.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    prefix: String,
    record_ttl: Duration,
    transition: Script,
    queue_with_slot: Script,
    take_slot: Script,
    store_result: Script,
    add_rejection: Script,
    waiting: Script,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects (retrying for up to `connect_timeout`) to Redis at `url`; keys go under `prefix`.
    pub async fn connect(url: &str, prefix: &str, record_ttl: Duration) -> Result<Self, Error> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(6)
            .set_max_delay(Duration::from_secs(2));
        let mut last = None;
        for _ in 0..30 {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(conn) => return Ok(Self::with_connection(conn, prefix, record_ttl)),
                Err(e) => {
                    tracing::warn!(error = %e, "Redis not reachable yet; retrying");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Err(last
            .map(Error::Redis)
            .unwrap_or_else(|| Error::Config("redis connect".into())))
    }

    /// Wraps an existing connection.
    pub fn with_connection(conn: ConnectionManager, prefix: &str, record_ttl: Duration) -> Self {
        let ranks = RunStatus::ALL
            .iter()
            .map(|s| format!("{} = {}", s.as_str(), s.rank()))
            .collect::<Vec<_>>()
            .join(", ");
        let transition = TRANSITION
            .replace("__RANKS__", &ranks)
            .replace("__INDEX_FN__", index::SCRIPT);
        Self {
            conn,
            prefix: prefix.to_string(),
            record_ttl,
            queue_with_slot: Script::new(
                &transition
                    .replace("__SLOT_FN__", slots::SLOT_FN)
                    .replace("__FIRST_FIELD__", slots::QUEUED_FIRST_FIELD)
                    .replace("__REFUSED__", slots::QUEUED_REFUSED)
                    .replace("__APPLIED__", slots::QUEUED_APPLIED),
            ),
            transition: Script::new(
                &transition
                    .replace("__SLOT_FN__", "")
                    .replace("__FIRST_FIELD__", "5")
                    .replace("__REFUSED__", "return {0, cur}")
                    .replace("__APPLIED__", "return {1, cur or ''}"),
            ),
            take_slot: Script::new(
                &slots::TAKE
                    .replace("__RANKS__", &ranks)
                    .replace("__SLOT_FN__", slots::SLOT_FN),
            ),
            store_result: Script::new(STORE_RESULT),
            add_rejection: Script::new(ADD_REJECTION),
            waiting: Script::new(WAITING),
        }
    }

    /// The underlying connection, for pipelines.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The key prefix (`<prefix>:...`), for the coordination keys services keep beside the records.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, run_id: &str) -> String {
        schema::key(&self.prefix, run_id)
    }

    /// Moves `run_id` to `status` (creating the record if needed) and applies `update`, unless the record
    /// already has that status or a later one. Terminal statuses leave the active set, start the TTL and give
    /// back the run's dispatcher slot (`<prefix>:slots:*`), if it holds one. A move to `running` or a terminal
    /// status removes the reason the run waited with ([`Store::waiting`]) before `update`'s fields are
    /// written.
    pub async fn transition(
        &self,
        run_id: &str,
        status: RunStatus,
        update: &RecordUpdate,
    ) -> Result<Transition, Error> {
        let mut inv = self.transition.key(self.key(run_id));
        inv.key(schema::active_key(&self.prefix))
            .key(schema::slots_all_key(&self.prefix))
            .key(schema::slots_queue_key(&self.prefix, ""));
        for set in index::terms(&self.prefix, update) {
            inv.key(set);
        }
        // The index prefix is always the last key (see `index::SCRIPT`).
        inv.key(index::prefix(&self.prefix))
            .arg(status.as_str())
            .arg(schema::now())
            .arg(run_id)
            .arg(self.record_ttl.as_secs());
        for (k, v) in update.fields() {
            inv.arg(k).arg(v);
        }
        let (applied, prev): (i64, String) = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(Transition::from_reply(applied, &prev))
    }

    /// Records why the run waits on `attempt` (`Unschedulable: 0/1 nodes are available...`,
    /// `ContainerCreating`, `ErrImagePull: ...`) as its `reason`, only while it is `queued` or `pending` on
    /// that attempt, in one atomic step (a change seen late never overwrites the reason of a later status;
    /// the move to `running` or a terminal status removes it). Writes nothing when the reason is already
    /// that. See [`Waiting`].
    pub async fn waiting(
        &self,
        run_id: &str,
        attempt: u32,
        reason: &str,
    ) -> Result<Waiting, Error> {
        let (status, code): (String, i64) = self
            .waiting
            .key(self.key(run_id))
            .arg(attempt)
            .arg(reason)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match (code, RunStatus::parse(&status)) {
            (1, _) => Waiting::Shown,
            (0, Some(current)) => Waiting::Past(current),
            _ => Waiting::NotCurrent,
        })
    }

    /// Applies `update` without touching the status (e.g. `logs`, `reaped_at`, `attempt`).
    pub async fn update(&self, run_id: &str, update: &RecordUpdate) -> Result<(), Error> {
        let items = update.fields();
        if items.is_empty() {
            return Ok(());
        }
        let _: () = self
            .conn
            .clone()
            .hset_multiple(self.key(run_id), &items)
            .await?;
        Ok(())
    }

    /// Stores a genuine result unless one is already stored (first result wins).
    pub async fn store_result(
        &self,
        run_id: &str,
        result_json: &str,
    ) -> Result<ResultWrite, Error> {
        let r: String = self
            .store_result
            .key(self.key(run_id))
            .arg(result_json)
            .arg(schema::now())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match r.as_str() {
            "stored" => ResultWrite::Stored,
            "duplicate" => ResultWrite::Duplicate,
            _ => ResultWrite::UnknownRun,
        })
    }

    /// Stores many genuine results in one round trip, each as [`Store::store_result`] would (first result
    /// wins), returning one outcome per item in order.
    ///
    /// The pipeline loads the script itself first, so a Redis restarted with an empty script cache is
    /// fine. On `Err` any prefix of the writes may have been applied; a retry is safe (duplicates).
    pub async fn store_results(&self, items: &[(&str, &str)]) -> Result<Vec<ResultWrite>, Error> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let now = schema::now();
        let mut pipe = redis::pipe();
        pipe.load_script(&self.store_result).ignore();
        for (run_id, result_json) in items {
            let mut inv = self.store_result.prepare_invoke();
            inv.key(self.key(run_id)).arg(*result_json).arg(&now);
            pipe.invoke_script(&inv);
        }
        let replies: Vec<String> = pipe.query_async(&mut self.conn.clone()).await?;
        if replies.len() != items.len() {
            return Err(Error::Corrupt(format!(
                "store_results: {} replies for {} writes",
                replies.len(),
                items.len()
            )));
        }
        Ok(replies
            .iter()
            .map(|r| match r.as_str() {
                "stored" => ResultWrite::Stored,
                "duplicate" => ResultWrite::Duplicate,
                _ => ResultWrite::UnknownRun,
            })
            .collect())
    }

    /// Records a rejected result submission on the run (keeps the last `max` reasons) and counts it; returns
    /// how many were rejected in all, including this one (0 for an unknown run: nothing recorded).
    pub async fn add_result_rejection(
        &self,
        run_id: &str,
        reason: &str,
        max: usize,
    ) -> Result<u64, Error> {
        let total: u64 = self
            .add_rejection
            .key(self.key(run_id))
            .arg(reason)
            .arg(max)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(total)
    }

    async fn hash(&self, run_id: &str) -> Result<HashMap<String, String>, Error> {
        Ok(self.conn.clone().hgetall(self.key(run_id)).await?)
    }

    /// A run's record, or `None`.
    pub async fn get(&self, run_id: &str) -> Result<Option<RunRecord>, Error> {
        let h = self.hash(run_id).await?;
        Ok((!h.is_empty()).then(|| RunRecord::from_hash(run_id, &h)))
    }

    /// A run's record with its accepted request, or `None`.
    pub async fn run(&self, run_id: &str) -> Result<Option<StoredRun>, Error> {
        let h = self.hash(run_id).await?;
        Ok((!h.is_empty()).then(|| StoredRun::from_hash(run_id, &h)))
    }

    /// A run's accepted request, or `None` (no record, none stored, or not a valid request).
    pub async fn request(
        &self,
        run_id: &str,
    ) -> Result<Option<airlock_schemas::RunRequest>, Error> {
        let raw: Option<String> = self
            .conn
            .clone()
            .hget(self.key(run_id), field::REQUEST)
            .await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// A run's [`RunHead`] (one small read), or `None` when there is no record.
    pub async fn head(&self, run_id: &str) -> Result<Option<RunHead>, Error> {
        Ok(self.heads(&[run_id]).await?.pop().flatten())
    }

    /// The [`RunHead`] of each run in `run_ids`, in order, in one pipelined round trip.
    pub async fn heads(&self, run_ids: &[&str]) -> Result<Vec<Option<RunHead>>, Error> {
        let mut pipe = redis::pipe();
        for id in run_ids {
            pipe.cmd("HMGET")
                .arg(self.key(id))
                .arg(&RunHead::FIELDS[..]);
        }
        let replies: Vec<Vec<Option<String>>> = pipe.query_async(&mut self.conn.clone()).await?;
        if replies.len() != run_ids.len() {
            return Err(Error::Corrupt(format!(
                "heads: {} replies for {} runs",
                replies.len(),
                run_ids.len()
            )));
        }
        Ok(replies.into_iter().map(RunHead::from_values).collect())
    }

    /// Ids of runs that are not terminal.
    pub async fn active_runs(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .conn
            .clone()
            .smembers(schema::active_key(&self.prefix))
            .await?)
    }
}
