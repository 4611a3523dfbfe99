//! A strict Kubernetes API server emulator with a process kubelet, kept for what a real API server does
//! not do on demand (see `docs/ARCHITECTURE.md`, "Testing: a real cluster and the emulator"): 500s, 429s
//! with `Retry-After`, dropped connections, late answers, expired watch history (410), stale
//! resourceVersions (409), and pods held `Pending` or forced into a final state at the moment a test
//! needs. Everything a real cluster can show is tested on the real test cluster instead.
//!
//! It serves `pods` (with `status` and `log`), `networkpolicies`, `namespaces` and `leases` (what
//! Airlock's services use) over plain HTTP on 127.0.0.1, so the real `kube` client (via the kubeconfig
//! the emulator writes) talks to it unchanged. Its kubelet runs each pod's first container's `command` +
//! `args` on the host as a local process group; images are not pulled or run.
//!
//! # Layout
//!
//! - [`emulator`]: [`Emulator::start`], [`EmulatorConfig`] and the [`EmulatorHandle`]
//!   tests use (kubeconfig, stored objects, faults, holds, forced states, waits, counters).
//! - [`api`]: routing, create/get/list/watch/update/patch/delete, logs, the admin API under
//!   `/__emulator/`.
//! - [`store`]: objects keyed by (kind, namespace, name), one global resourceVersion,
//!   a bounded change history (older resourceVersions get 410 `Expired`), owner cascades.
//! - [`change`]: one change and its watch event line, serialised once for every watcher.
//! - [`kubelet`]: scheduling, Unschedulable holds, processes, logs, phases, exit codes,
//!   `activeDeadlineSeconds`, forced final states.
//! - [`validation`]: strict decoding into k8s-openapi types (unknown fields → 400),
//!   quantities (bad → 400, negative or request > limit → 422), RFC 1123 names and other
//!   422 checks, API-server defaults.
//! - [`quantity`]: `ParseQuantity` and `Quantity.UnmarshalJSON`, ported (not shared with the
//!   product) and tested on the table in `schemas/tests/data/quantities.json`.
//! - [`status`]: `metav1.Status` bodies. [`selector`]: label/field selectors.
//! - [`faults`]: fault rules (429, 500, dropped connection, a late answer) and the request log.
//!
//! # Public API
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use airlock_kube_emulator::{Emulator, EmulatorConfig, FaultAction, ForcedState, Kind};
//! use std::time::Duration;
//! let emu = Emulator::start(EmulatorConfig::default().namespace("airlock-sandbox")).await?;
//! let kubeconfig = emu.kubeconfig_path(); // for kube::Config
//! emu.fail_next(Some("POST"), "/pods", FaultAction::InternalError, 1);
//! emu.hold_pending("app=stuck")?;
//! emu.wait_for_pod_phase("airlock-sandbox", "run-1", "Running", Duration::from_secs(10)).await?;
//! emu.force_pod_state("airlock-sandbox", "run-1", ForcedState::OomKilled);
//! let pods = emu.objects(Kind::Pod);
//! let deleted = emu.delete_count(Kind::NetworkPolicy);
//! # let _ = (kubeconfig, pods, deleted); Ok(()) }
//! ```
//!
//! # Semantics and limits
//!
//! - Field validation is `Strict` by default (unknown fields → 400); `fieldValidation=Warn`
//!   or `Ignore` accept them (Warn adds `Warning` headers).
//! - PATCH supports merge, JSON patch, and strategic merge (applied as a JSON merge patch:
//!   lists are replaced, not merged by key). No server-side apply (415).
//! - Request bodies are JSON (other media types get 415); replies are always JSON (no Tables).
//! - No discovery (`/api`, `/apis`, `/version`) and no OpenAPI documents: typed clients need neither,
//!   `kubectl` does not work against the emulator.
//! - Quantities are stored as sent (trimmed), not in the API server's canonical form.
//! - Watches: newline-delimited JSON events; no `resourceVersion` (or `0`) starts with
//!   synthetic ADDED events; `sendInitialEvents=true` ends them with the
//!   `k8s.io/initial-events-end` bookmark; too-old resourceVersions yield an `ERROR`
//!   event with a 410 `Expired` Status (see [`EmulatorHandle::compact_history`]).
//! - Deleting a scheduled running pod is graceful: `deletionTimestamp` is set, the
//!   process group gets SIGTERM then SIGKILL after min(grace, `max_grace_period`), and
//!   then the pod (and everything it owns, unless `propagationPolicy=Orphan`) is removed.
//!   Deleting a pod that is unscheduled, finished or with grace 0 removes it at once.
//! - The kubelet runs only the first container; it never restarts (`restartPolicy` is
//!   treated as `Never`). Env comes from `env[].value` only (`valueFrom` is ignored).
//! - Images are ignored. A container without `command` fails at once: phase Failed, terminated
//!   reason `StartError`, exit code 128. Env gets `PATH`, `HOME` (a per-pod temp dir, also the cwd)
//!   and `HOSTNAME`. No events are recorded.
//! - Admin HTTP API (for the standalone binary, `airlock-kube-emulator`):
//!   `GET /__emulator/objects?kind=pods`,
//!   `GET|DELETE /__emulator/requests`, `GET /__emulator/counters`,
//!   `POST|DELETE /__emulator/faults` (body: a [`FaultRule`] as JSON, e.g.
//!   `{"method":"POST","pathContains":"/pods","action":"internalError","count":1}`),
//!   `POST|DELETE /__emulator/hold?labelSelector=..`,
//!   `POST /__emulator/force?namespace=..&name=..&state=Evicted|OOMKilled|Exit:N`,
//!   `POST /__emulator/compact`.

pub mod api;
pub mod change;
pub mod emulator;
pub mod faults;
pub mod kinds;
pub mod kubelet;
pub mod quantity;
pub mod selector;
pub mod status;
pub mod store;
pub mod validation;

pub use emulator::{Emulator, EmulatorConfig, EmulatorError, EmulatorHandle};
pub use faults::{FaultAction, FaultRule, RequestRecord};
pub use kinds::Kind;
pub use kubelet::ForcedState;
