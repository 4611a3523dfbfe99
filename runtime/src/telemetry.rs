//! Logs and traces: `RUST_LOG`-style filtering (default `info`), human or JSON logs on stderr, and OTLP
//! trace export when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.
//!
//! One run is one trace ([`airlock_schemas::trace`]). Each service handles a message about a run inside
//! [`run_span`], whose `trace_id` field puts the trace id in every log line about the run; when exporting,
//! the span is also an OpenTelemetry span whose parent is the run's `traceparent`. The export follows the
//! OpenTelemetry environment conventions (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`); the protocol is OTLP/HTTP with protobuf.

use std::sync::OnceLock;

use airlock_schemas::TraceParent;
use airlock_schemas::trace::TRACEPARENT_HEADER;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Whether spans are exported (set once by [`init`]).
static EXPORTING: OnceLock<bool> = OnceLock::new();

/// Keeps the trace exporter alive; dropping it flushes and stops the export.
#[derive(Debug, Default)]
#[must_use = "dropping it stops the trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("trace export shutdown failed: {e}");
        }
    }
}

/// Installs the global subscriber for service `service` (the default `service.name`); a second call only
/// returns an inert guard.
pub fn init(format: LogFormat, service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (human, json) = match format {
        LogFormat::Human => (
            Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    let provider = exporter(service);
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("airlock")));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(human)
        .with(json)
        .with(otel)
        .try_init()
        .is_ok();
    if !installed {
        return Telemetry::default();
    }
    let _ = EXPORTING.set(provider.is_some());
    Telemetry { provider }
}

/// The OTLP trace pipeline, when the environment asks for one.
fn exporter(service: &str) -> Option<SdkTracerProvider> {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return None;
    }
    use opentelemetry_otlp::WithExportConfig as _;
    // Already installed by another part of the process is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("OTLP trace export disabled: {e}");
            return None;
        }
    };
    let mut resource = Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(service.to_string());
    }
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    )
}

/// A new trace (random ids, sampled), for a run whose request carried none.
pub fn new_trace() -> TraceParent {
    let g = RandomIdGenerator::default();
    TraceParent {
        trace_id: g.new_trace_id().to_bytes(),
        span_id: g.new_span_id().to_bytes(),
        flags: 1,
    }
}

/// The valid `traceparent` header of a NATS message, if any.
pub fn from_headers(headers: Option<&async_nats::HeaderMap>) -> Option<TraceParent> {
    TraceParent::parse(headers?.get(TRACEPARENT_HEADER)?.as_str())
}

/// Puts `tp` on `headers` as the `traceparent` header.
pub fn to_headers(headers: &mut async_nats::HeaderMap, tp: &TraceParent) {
    headers.insert(TRACEPARENT_HEADER, tp.to_string().as_str());
}

/// The span for handling one message about run `run_id` of trace `tp`: every log line inside it carries
/// `run_id` and `trace_id`; when exporting, it is an OpenTelemetry span, a child of `tp`.
pub fn run_span(name: &'static str, run_id: &str, tp: &TraceParent) -> Span {
    let span = tracing::info_span!("run", otel.name = name, run_id = %run_id, trace_id = %tp.trace_id_hex());
    if EXPORTING.get().copied().unwrap_or(false) {
        let remote = SpanContext::new(
            TraceId::from_bytes(tp.trace_id),
            SpanId::from_bytes(tp.span_id),
            TraceFlags::new(tp.flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    span
}

/// The span for dispatching run `run_id`, and the `traceparent` to pass on from inside it: a child of the
/// request's (or the recorded) trace `tp`; without one, the root of a new trace, so that an exported trace has
/// its root span (its id is then the exporter's, and the span's `trace_id` field is recorded from it).
pub fn first_span(
    name: &'static str,
    run_id: &str,
    tp: Option<TraceParent>,
) -> (Span, TraceParent) {
    match tp {
        Some(tp) => {
            let span = run_span(name, run_id, &tp);
            let next = passed_on(&span, &tp);
            (span, next)
        }
        None if EXPORTING.get().copied().unwrap_or(false) => {
            let span = tracing::info_span!("run", otel.name = name, run_id = %run_id, trace_id = tracing::field::Empty);
            let next = passed_on(&span, &new_trace());
            span.record("trace_id", tracing::field::display(next.trace_id_hex()));
            (span, next)
        }
        None => {
            let tp = new_trace();
            (run_span(name, run_id, &tp), tp)
        }
    }
}

/// The `traceparent` to pass on from inside `span` (made by [`run_span`] from `tp`): `span` itself when it
/// is exported, otherwise `tp` unchanged.
pub fn passed_on(span: &Span, tp: &TraceParent) -> TraceParent {
    if !EXPORTING.get().copied().unwrap_or(false) {
        return *tp;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return *tp;
    }
    TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_trace_is_a_valid_sampled_traceparent_of_its_own() {
        let (a, b) = (new_trace(), new_trace());
        assert_eq!(TraceParent::parse(&a.to_string()), Some(a));
        assert!(a.sampled());
        assert_ne!(a.trace_id, b.trace_id);
    }

    #[test]
    fn a_traceparent_travels_in_nats_headers_and_a_malformed_one_is_ignored() {
        let tp = new_trace();
        let mut h = async_nats::HeaderMap::new();
        to_headers(&mut h, &tp);
        assert_eq!(from_headers(Some(&h)), Some(tp));
        let mut bad = async_nats::HeaderMap::new();
        bad.insert(TRACEPARENT_HEADER, "00-xyz");
        assert_eq!(from_headers(Some(&bad)), None);
        assert_eq!(from_headers(None), None);
    }

    #[test]
    fn without_export_the_run_span_carries_the_trace_id_and_passes_the_traceparent_on_unchanged() {
        let tp = new_trace();
        let span = run_span("test", "r-1", &tp);
        assert_eq!(passed_on(&span, &tp), tp);
    }
}
