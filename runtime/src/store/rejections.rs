//! Writes for refused requests: a refusal creates a record only where there is none, and otherwise is
//! only counted on the existing run, so one client's bad request can never touch another client's run.

use std::sync::LazyLock;

use airlock_schemas::RunStatus;
use airlock_schemas::record::{self as schema, field};
use redis::Script;

use super::{RecordUpdate, Store};
use crate::Error;

/// KEYS: record, active set, then the queue and label sets the run joins (`index::terms`: only what passes
/// the contract's checks, whatever the refused request said), the index prefix last. ARGV: status, now, run
/// id, TTL seconds, terminal (`1`/`0`), then field pairs. The record joins the listing indexes as the
/// transition script's records do.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"
{}
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at', ARGV[2])
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
index_run(false, 3)
if ARGV[5] == '1' then
  if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
else
  redis.call('SADD', KEYS[2], ARGV[3])
end
return 1
"#,
        super::index::SCRIPT
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
    /// Creates `run_id`'s record with `status` and `update`, atomically, only if it has no record at all;
    /// `true` when created. A terminal status starts the TTL, any other joins the active set.
    pub async fn create(
        &self,
        run_id: &str,
        status: RunStatus,
        update: &RecordUpdate,
    ) -> Result<bool, Error> {
        let mut inv = CREATE.key(self.key(run_id));
        inv.key(schema::active_key(&self.prefix));
        for set in super::index::terms(&self.prefix, update) {
            inv.key(set);
        }
        inv.key(super::index::prefix(&self.prefix))
            .arg(status.as_str())
            .arg(schema::now())
            .arg(run_id)
            .arg(self.record_ttl.as_secs())
            .arg(if status.is_terminal() { "1" } else { "0" });
        for (k, v) in update.fields() {
            inv.arg(k).arg(v);
        }
        let created: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(created == 1)
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
