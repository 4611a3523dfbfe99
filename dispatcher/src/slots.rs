//! Running caps per queue and globally, shared by every replica through Redis.
//!
//! # Design
//!
//! A run holds a **slot** from the moment a dispatcher decides to launch it until its pod (or sandbox)
//! finishes or disappears. Slots are members of Redis sorted sets, `<prefix>:slots:queue:<queue>` and
//! `<prefix>:slots:all`, keyed by run id and scored by when they were last (re)acquired:
//!
//! - **Acquire** is one Lua script (the store's, `Store::take_slot`; for a new run it runs inside the script
//!   that records it `queued`, `Store::queue_with_slot`, so a new run costs one round trip for both): it first reads the run's record and refuses a run that may no longer be
//!   launched (ended, superseded by a newer attempt, or past `queued` on its first attempt), so a cancel or a
//!   deadline recorded meanwhile always wins over a launch; then a run that already holds its slot keeps it
//!   (a redelivery, a re-dispatch); otherwise it gets one only if both the queue's set and the global set are
//!   below their caps. Being atomic in Redis, the caps hold across any number of replicas. The handler runs
//!   it again before every launch retry.
//! - **Release** happens when a watcher (every replica runs one) sees the run's pod finished or deleted, when
//!   a handler gives up on a run, and when the run is recorded terminal (the store's terminal transition
//!   removes it in the same script, so a finish no watcher saw, or a cancel of a queued run, frees it too).
//!   Removing a member twice is harmless.
//! - **Reconcile**: a slot whose run has nothing live in the backend and that was acquired longer than the
//!   lease ago is reclaimed, so a handler that crashed between acquiring and creating, or a release lost
//!   while every dispatcher was down, cannot leak capacity forever. A redelivered request re-acquires.
//!
//! **Not pulling at the cap**: each queue has its own durable consumer and pull loop. Before every pull the
//! loop computes the free slots (`cap - held - reserved locally`, for the queue and globally) and asks
//! JetStream for at most that many messages (and no more than its free local handler permits). At zero it
//! does not pull at all: it waits for a local release (a [`tokio::sync::Notify`]) or re-checks Redis every
//! second for releases by other replicas. So a full queue leaves its messages in the stream (no hot nak
//! loop), and other queues, with their own loops, keep flowing. Should two replicas pull for the last slot at
//! once, the loser holds its message (sending progress acks, not burning a delivery) until a slot frees.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::Notify;

use crate::config::QueueCap;
use airlock_runtime::Error;
use airlock_runtime::store::{SlotAsk, SlotTake, Store};
use airlock_schemas::record;

/// Removes the given members whose score is still at most ARGV[1] (not re-acquired meanwhile).
const RECLAIM: &str = r#"
local n = 0
for i = 2, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) <= tonumber(ARGV[1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"#;

/// The slot book of this process.
pub struct Slots {
    store: Store,
    conn: ConnectionManager,
    prefix: String,
    queues: Vec<QueueCap>,
    global_cap: u32,
    reclaim: Script,
    /// Woken whenever a slot or a local handler permit may have freed.
    pub wake: Notify,
    reserved: HashMap<String, Arc<AtomicI64>>,
    reserved_total: Arc<AtomicI64>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("queues", &self.queues)
            .field("global_cap", &self.global_cap)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Messages pulled (or asked for) by this process that have not acquired a slot or given it up yet; counted
/// as taken when deciding how many to pull. Dropping it releases what is left.
#[derive(Debug)]
pub struct Reservation {
    queue: Arc<AtomicI64>,
    total: Arc<AtomicI64>,
    n: i64,
}

impl Reservation {
    /// Splits one message's share off.
    pub fn take_one(&mut self) -> Option<Reservation> {
        (self.n > 0).then(|| {
            self.n -= 1;
            Reservation {
                queue: self.queue.clone(),
                total: self.total.clone(),
                n: 1,
            }
        })
    }

    /// Gives the reservation up (the message acquired a slot, or needs none).
    pub fn give_up(&mut self) {
        if self.n > 0 {
            self.queue.fetch_sub(self.n, Ordering::AcqRel);
            self.total.fetch_sub(self.n, Ordering::AcqRel);
            self.n = 0;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.give_up();
    }
}

impl Slots {
    /// A slot book for `queues` in `store`'s Redis (under its prefix), with the global cap `global_cap`.
    pub fn new(store: Store, queues: Vec<QueueCap>, global_cap: u32) -> Self {
        let reserved = queues
            .iter()
            .map(|q| (q.name.clone(), Arc::new(AtomicI64::new(0))))
            .collect();
        Self {
            conn: store.connection(),
            prefix: store.prefix().to_string(),
            store,
            queues,
            global_cap,
            reclaim: Script::new(RECLAIM),
            wake: Notify::new(),
            reserved,
            reserved_total: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Redis key of a queue's slots.
    pub fn queue_key(prefix: &str, queue: &str) -> String {
        record::slots_queue_key(prefix, queue)
    }

    /// Redis key of all slots.
    pub fn global_key(prefix: &str) -> String {
        record::slots_all_key(prefix)
    }

    fn cap(&self, queue: &str) -> u32 {
        self.queues
            .iter()
            .find(|q| q.name == queue)
            .map(|q| q.cap)
            .unwrap_or(0)
    }

    /// Slots free for `queue` right now, minus what this process has reserved.
    pub async fn free(&self, queue: &str) -> Result<i64, Error> {
        let (held_q, held_all): (i64, i64) = redis::pipe()
            .zcard(Self::queue_key(&self.prefix, queue))
            .zcard(Self::global_key(&self.prefix))
            .query_async(&mut self.conn.clone())
            .await?;
        let reserved_q = self
            .reserved
            .get(queue)
            .map(|r| r.load(Ordering::Acquire))
            .unwrap_or(0);
        let reserved_all = self.reserved_total.load(Ordering::Acquire);
        Ok((i64::from(self.cap(queue)) - held_q - reserved_q)
            .min(i64::from(self.global_cap) - held_all - reserved_all))
    }

    /// Reserves `n` slots of `queue` locally while messages are pulled.
    pub fn reserve(&self, queue: &str, n: i64) -> Reservation {
        let q = self
            .reserved
            .get(queue)
            .cloned()
            .unwrap_or_else(|| Arc::new(AtomicI64::new(0)));
        q.fetch_add(n, Ordering::AcqRel);
        self.reserved_total.fetch_add(n, Ordering::AcqRel);
        Reservation {
            queue: q,
            total: self.reserved_total.clone(),
            n,
        }
    }

    /// What to ask for when taking a slot of `queue` for a run's `attempt`: the caps of this book.
    pub fn ask<'a>(&self, queue: &'a str, attempt: u32) -> SlotAsk<'a> {
        SlotAsk {
            queue,
            attempt,
            queue_cap: self.cap(queue),
            global_cap: self.global_cap,
        }
    }

    /// Takes a slot of `queue` for `run_id`'s `attempt` (keeps it if the run holds it already), in the same
    /// atomic step as checking that the run may still be launched; see [`SlotTake`].
    pub async fn acquire(
        &self,
        queue: &str,
        run_id: &str,
        attempt: u32,
    ) -> Result<SlotTake, Error> {
        self.store
            .take_slot(run_id, &self.ask(queue, attempt))
            .await
    }

    /// Gives `run_id`'s slot back (whatever its queue) and wakes the pull loops.
    pub async fn release(&self, run_id: &str) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        for q in &self.queues {
            pipe.zrem(Self::queue_key(&self.prefix, &q.name), run_id)
                .ignore();
        }
        pipe.zrem(Self::global_key(&self.prefix), run_id).ignore();
        let () = pipe.query_async(&mut self.conn.clone()).await?;
        self.wake.notify_waiters();
        Ok(())
    }

    /// Reclaims slots acquired more than `lease` ago by runs not in `live`.
    pub async fn reconcile(&self, live: &HashSet<String>, lease: Duration) -> Result<usize, Error> {
        let cutoff = now_ms() - i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let mut keys: Vec<String> = self
            .queues
            .iter()
            .map(|q| Self::queue_key(&self.prefix, &q.name))
            .collect();
        keys.push(Self::global_key(&self.prefix));
        let mut reclaimed = 0;
        for key in keys {
            let old: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(cutoff)
                .query_async(&mut self.conn.clone())
                .await?;
            let stale: Vec<&String> = old.iter().filter(|id| !live.contains(*id)).collect();
            if stale.is_empty() {
                continue;
            }
            let mut inv = self.reclaim.key(&key);
            inv.arg(cutoff);
            for id in stale {
                inv.arg(id);
            }
            let n: usize = inv.invoke_async(&mut self.conn.clone()).await?;
            reclaimed += n;
        }
        if reclaimed > 0 {
            self.wake.notify_waiters();
        }
        Ok(reclaimed)
    }
}
