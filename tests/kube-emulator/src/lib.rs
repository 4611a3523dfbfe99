//! A strict Kubernetes API server emulator with a process kubelet.
//!
//! It serves `pods` (with `status` and `log`), `networkpolicies`, `namespaces` and `events`,
//! and stores what `deploy/` applies (Deployments, StatefulSets, RBAC, ConfigMaps, Secrets,
//! ServiceAccounts, Services, LimitRanges, ResourceQuotas, PodDisruptionBudgets, Leases) generically,
//! over plain HTTP on 127.0.0.1, so the real `kube` client (via the kubeconfig the
//! emulator writes) and `kubectl` talk to it unchanged. Its kubelet runs each pod's first
//! container as a local process group: in image mode ([`EmulatorConfig::images`], `--image-store`)
//! inside the pod's image, pulled from a registry through Airlock's image store; in host mode (the
//! default, for API-level tests) its `command` + `args` on the host.
//!
//! # Layout
//!
//! - [`emulator`]: [`Emulator::start`], [`EmulatorConfig`] and the [`EmulatorHandle`]
//!   tests use (kubeconfig, stored objects, faults, holds, waits, counters, validation).
//! - [`api`]: routing, discovery, OpenAPI v3, create/get/list/watch/update/patch/delete,
//!   server-side apply, logs, protobuf request bodies, the admin API under `/__emulator/`.
//! - [`store`]: objects keyed by (kind, namespace, name), one global resourceVersion,
//!   a bounded change history (older resourceVersions get 410 `Expired`), owner cascades.
//! - [`change`]: one change and its watch event line, serialised once for every watcher.
//! - [`kubelet`]: scheduling, Unschedulable holds, image pulls and their failures, processes, logs,
//!   events, phases, exit codes, `activeDeadlineSeconds`, forced final states.
//! - [`validation`]: strict decoding into k8s-openapi types (unknown fields → 400),
//!   quantities (bad → 400, negative or request > limit → 422), RFC 1123 names and other
//!   422 checks, API-server defaults.
//! - [`quantity`]: `ParseQuantity` and `Quantity.UnmarshalJSON`, ported (not shared with the
//!   product) and tested on the table in `schemas/tests/data/quantities.json`.
//! - [`status`]: `metav1.Status` bodies. [`selector`]: label/field selectors.
//! - [`faults`]: fault rules (429, 500, dropped connection, a late answer) and the request log.
//! - [`schema`]: validation against the official 1.33 OpenAPI-derived JSON schemas
//!   shipped by the PyPI package `kubernetes-validate`.
//!
//! # Public API
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use airlock_kube_emulator::{Emulator, EmulatorConfig, FaultAction, Kind};
//! use std::time::Duration;
//! let emu = Emulator::start(EmulatorConfig::default().namespace("airlock-sandbox")).await?;
//! let kubeconfig = emu.kubeconfig_path(); // for kube::Config / kubectl --kubeconfig
//! emu.fail_next(Some("POST"), "/pods", FaultAction::InternalError, 1);
//! emu.hold_pending("app=stuck")?;
//! emu.wait_for_pod_phase("airlock-sandbox", "run-1", "Succeeded", Duration::from_secs(10)).await?;
//! let pods = emu.objects(Kind::Pod);
//! let deleted = emu.delete_count(Kind::NetworkPolicy);
//! let report = emu.validate_stored_objects()?;
//! assert!(report.is_ok(), "{report:?}");
//! # let _ = (kubeconfig, pods, deleted); Ok(()) }
//! ```
//!
//! # Semantics and limits
//!
//! - Field validation is `Strict` by default (unknown fields → 400); `fieldValidation=Warn`
//!   or `Ignore` accept them (Warn adds `Warning` headers).
//! - PATCH supports merge, JSON patch, and strategic merge (applied as a JSON merge patch:
//!   lists are replaced, not merged by key). Server-side apply needs `fieldManager`, creates
//!   missing objects, merges, drops fields its manager stopped applying, keeps
//!   `managedFields`, and answers 409 on a conflict with another manager (lists are atomic).
//! - Request bodies of create/update are JSON, or protobuf for Namespaces, ConfigMaps and Secrets
//!   (what `kubectl create namespace|configmap|secret` sends, without a JSON fallback after a 415):
//!   the `runtime.Unknown` envelope and the object are decoded by hand (name, generateName,
//!   namespace, labels, annotations, finalizers; spec/status/data fields); a field it does not map
//!   must hold its zero value. Other kinds and formats (YAML) get 415. Replies are always JSON.
//! - `/openapi/v3` and its group-version documents list paths whose PATCH takes
//!   `fieldValidation`, so kubectl validates server-side (no `--validate=false` needed);
//!   they carry no component schemas (`kubectl explain` does not work). No `/openapi/v2`.
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
//! - Image mode: the image is pulled per `imagePullPolicy` (the store's cache is shared with other
//!   processes using its directory; plain HTTP for `--insecure-registry`, credentials from
//!   `--registry-auth-file`, TLS roots from the system or `SSL_CERT_FILE`). The container runs under
//!   `bwrap` with the image's top-level entries bind-mounted read-only on a read-only tmpfs root, a fresh
//!   `/proc`, a minimal `/dev`, a private `/tmp`, new user/pid/ipc/uts namespaces and the host's network
//!   (like `hostNetwork`, so pods reach services on 127.0.0.1; NetworkPolicies are stored, not enforced).
//!   `command` replaces the image's Entrypoint (and drops its Cmd), `args` replace Cmd; the image's Env
//!   comes under the container's; `workingDir` over WorkingDir; `PATH`, `HOSTNAME`, `HOME=/` defaults.
//!   The user is `runAsUser`/`runAsGroup` (container over pod), else the image's `User` (names looked up
//!   in the image's `/etc/passwd`); run as root, the emulator gives the process that uid for real
//!   (`setpriv`), otherwise only inside its user namespace. `runAsNonRoot` with an image that would run as
//!   root, or names its user, is `CreateContainerConfigError` with the kubelet's message. A failed pull is
//!   `waiting` `ErrImagePull`, then `ImagePullBackOff` (back-off from `image_pull_backoff`, doubling up to
//!   ten times it, then pulled again); `Never` with an absent image is `ErrImageNeverPull`; an unparsable
//!   reference `InvalidImageName`; the pod stays `Pending` (until `activeDeadlineSeconds`). Events
//!   (`Pulling`, `Pulled`, `Failed`, `BackOff`, `ErrImageNeverPull`, `InspectFailed`, `Created`,
//!   `Started`; repeats counted) are stored as `v1/Event`s, so `kubectl get events` shows them.
//! - Host mode: images are ignored. A container without `command` fails at once: phase Failed,
//!   terminated reason `StartError`, exit code 128. Env gets `PATH`, `HOME` (a per-pod temp dir, also
//!   the cwd) and `HOSTNAME`.
//! - Admin HTTP API (for service binaries run as separate processes):
//!   `GET /__emulator/objects?kind=pods`, `GET /__emulator/accepted`,
//!   `GET|DELETE /__emulator/requests`, `GET /__emulator/counters`,
//!   `POST|DELETE /__emulator/faults` (body: a [`FaultRule`] as JSON, e.g.
//!   `{"method":"POST","pathContains":"/pods","action":"internalError","count":1}`),
//!   `POST|DELETE /__emulator/hold?labelSelector=..`,
//!   `POST /__emulator/force?namespace=..&name=..&state=Evicted|OOMKilled|Exit:N`,
//!   `POST /__emulator/compact`, `GET /__emulator/validate`.

pub mod api;
pub mod change;
pub mod emulator;
pub mod faults;
pub mod kinds;
pub mod kubelet;
pub mod quantity;
pub mod schema;
pub mod selector;
pub mod status;
pub mod store;
pub mod validation;

pub use emulator::{Emulator, EmulatorConfig, EmulatorError, EmulatorHandle};
pub use faults::{FaultAction, FaultRule, RequestRecord};
pub use kinds::Kind;
pub use kubelet::{ForcedState, ImageMode};
pub use schema::{SchemaError, ValidationFailure, ValidationReport};
