//! The environment Airlock gives every job. Names under the `AIRLOCK_` prefix are reserved.

/// Reserved prefix; requests may not set variables starting with it.
pub const RESERVED_PREFIX: &str = "AIRLOCK_";
/// The run's id.
pub const RUN_ID: &str = "AIRLOCK_RUN_ID";
/// Subject the job publishes its result to (Kubernetes runtime).
pub const RESULT_SUBJECT: &str = "AIRLOCK_RESULT_SUBJECT";
/// The run token; sent as the `Airlock-Run-Token` header with the result.
pub const RUN_TOKEN: &str = "AIRLOCK_RUN_TOKEN";
/// NATS URL the job publishes its result to (Kubernetes runtime).
pub const NATS_URL: &str = "AIRLOCK_NATS_URL";
/// File the job writes its result to; the runtime publishes it (local sandbox runtime).
pub const RESULT_FILE: &str = "AIRLOCK_RESULT_FILE";

/// NATS header carrying the run token on a result message.
pub const RUN_TOKEN_HEADER: &str = "Airlock-Run-Token";

/// NATS header on a run request naming its attempt; absent on a client's request, which is attempt
/// [`crate::record::FIRST_ATTEMPT`]. The janitor sets it when it dispatches a lost run again.
pub const ATTEMPT_HEADER: &str = "Airlock-Attempt";

/// The attempt a request's [`ATTEMPT_HEADER`] value names: [`crate::record::FIRST_ATTEMPT`] when absent or
/// not a positive number.
pub fn attempt_from_header(value: Option<&str>) -> u32 {
    crate::record::attempt_or_first(value.and_then(|v| v.trim().parse::<u32>().ok()))
}
