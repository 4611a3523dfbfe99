//! End-to-end tests live in `tests/`: our binaries as real processes, real `nats-server` and `redis-server`
//! on 127.0.0.1, and the real test cluster for Kubernetes (see `tests/kube_mode.rs`).
//!
//! - `tests/local_mode.rs`: the three services with the local bubblewrap sandbox runtime.
//! - `tests/kube_mode.rs`: the services on the real test cluster (`AIRLOCK_TEST_CLUSTER`).
//! - `tests/dev_demo.rs`: `airlock dev --demo`, and stopping `airlock dev`.
//! - `tests/common/mod.rs`: the shared set-up (`System`: servers, services, submit and wait).
//!
//! The binaries must be built first (`cargo build --workspace --bins`, or the packages'); they are found next
//! to the test executable, or in `AIRLOCK_BIN_DIR`.
