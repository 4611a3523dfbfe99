//! Shared runtime for Airlock's services: what the dispatcher, ingester and janitor all need, so that no
//! service depends on another.
//!
//! # Layout
//! - [`config`]: the common command-line/environment configuration ([`config::CommonArgs`]).
//! - [`telemetry`]: tracing set-up (human or JSON logs).
//! - [`shutdown`]: a [`tokio_util::sync::CancellationToken`] cancelled on SIGTERM/SIGINT.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`metrics`]: Prometheus metrics, one [`metrics::Metrics`] per service.
//! - [`nats`]: connecting, and idempotent set-up of the streams and durable consumers.
//! - [`consume`]: the per-message [`consume::Outcome`] and the bounded pull loop every service runs.
//! - [`store`]: the Redis run record with forward-only status transitions.
//! - [`publish`]: run requests, lifecycle events, timer events and schedules, with one message-id scheme
//!   ([`publish::MsgId`]).
//! - [`service`]: start-up every service shares (health, NATS, streams, Redis), in one order.
//! - [`error`]: the crate's error type; [`Error::is_retryable`] decides between backoff and giving up.

pub mod config;
pub mod consume;
pub mod error;
pub mod health;
pub mod metrics;
pub mod nats;
pub mod publish;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod telemetry;

pub use error::{Error, NatsError};
