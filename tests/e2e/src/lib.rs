//! End-to-end tests live in `tests/`: our binaries as real processes, real `nats-server` and `redis-server`
//! on 127.0.0.1, and the Kubernetes emulator (or a real cluster, see `tests/kube_mode.rs`).
//!
//! - `tests/local_mode.rs`: the three services with the local bubblewrap sandbox runtime.
//! - `tests/kube_mode.rs`: the three services against the emulator (or `AIRLOCK_TEST_KUBECONFIG`).
//! - `tests/dev_demo.rs`: `airlock dev --demo`, and stopping `airlock dev`.
//! - `tests/common/mod.rs`: the shared set-up (`System`: servers, services, submit and wait).
//!
//! The binaries must be built first (`cargo build --workspace --bins`, or the packages'); they are found next
//! to the test executable, or in `AIRLOCK_BIN_DIR`.
