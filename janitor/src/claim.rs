//! A short-lived per-run claim in Redis, so one replica at a time reaps a run.
//!
//! The terminal status write is already atomic (forward-only), so correctness does not depend on the claim;
//! it makes the side effects happen once too: two replicas handling duplicated timers for one run would
//! otherwise both delete its objects. The claim expires on its own, so a replica that crashes mid-reap
//! only delays the redelivery that finishes its work.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use airlock_runtime::Error;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Hands out claims.
#[derive(Clone)]
pub(crate) struct Claims {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    release: Script,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A held claim; give it back with [`Claims::release`].
#[derive(Debug)]
pub(crate) struct Claim {
    key: String,
    token: String,
}

impl Claims {
    pub(crate) fn new(conn: ConnectionManager, prefix: &str, ttl: Duration) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
            ttl,
            release: Script::new(RELEASE),
        }
    }

    fn key(&self, run_id: &str) -> String {
        format!("{}:janitor:claim:{run_id}", self.prefix)
    }

    /// Takes the claim on `run_id` with the unique `token`, or `None` when another holder has it.
    pub(crate) async fn acquire(
        &self,
        run_id: &str,
        token: String,
    ) -> Result<Option<Claim>, Error> {
        let key = self.key(run_id);
        let ok: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(ok.map(|_| Claim { key, token }))
    }

    /// Gives the claim back (only if still ours).
    pub(crate) async fn release(&self, claim: Claim) -> Result<(), Error> {
        let _: i64 = self
            .release
            .key(&claim.key)
            .arg(&claim.token)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
