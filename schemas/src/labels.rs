//! Labels Airlock puts on the Kubernetes objects it creates; the ownership check on 409 relies on them.

/// Label holding the run id; unique per run, the NetworkPolicy selects the pod by it.
pub const RUN_ID: &str = "airlock.dev/run-id";
/// Label holding the queue name.
pub const QUEUE: &str = "airlock.dev/queue";
/// Label holding the attempt number (1-based).
pub const ATTEMPT: &str = "airlock.dev/attempt";
/// Standard managed-by label.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY`].
pub const MANAGED_BY_VALUE: &str = "airlock";
/// Label prefix reserved for Airlock; request labels may not use it.
pub const RESERVED_PREFIX: &str = "airlock.dev/";

/// Name of the Pod and NetworkPolicy of a run (a run id is at most 40 characters, so this fits 63).
pub fn object_name(run_id: &str) -> String {
    format!("airlock-run-{run_id}")
}

/// Label selector for everything Airlock manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE}")
}
