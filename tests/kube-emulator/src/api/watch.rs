//! Watches: newline-delimited JSON events with bookmarks and 410 on expired versions.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::request::selectors;
use super::{App, Q};
use crate::kinds::Kind;
use crate::status::ApiError;
use crate::store::{Change, event_line};

// Long on purpose: the initial list, the resume from a resourceVersion (or 410) and the live stream are one
// response body built in order.
pub(super) fn watch(
    app: &Arc<App>,
    kind: Kind,
    ns: Option<&str>,
    q: &Q,
) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(q)?;
    let bookmarks = matches!(
        q.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let send_initial = matches!(
        q.get("sendInitialEvents").map(String::as_str),
        Some("true" | "1")
    );
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let ns = ns.map(str::to_string);
    let matches = move |c: &Change| -> bool {
        c.kind == kind
            && ns.as_deref().is_none_or(|n| n == c.namespace)
            && ls.matches_object(&c.object)
            && fs.matches(&c.object)
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let mut initial: Vec<Bytes> = Vec::new();
    let (live, start_rv): (broadcast::Receiver<Arc<Change>>, u64);
    if rv_param.is_empty() || rv_param == "0" || send_initial {
        let (items, rv, r) = app.store.snapshot_and_subscribe(kind);
        for o in items {
            let namespace = o
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let c = Change::new(rv, kind, namespace, crate::store::EventType::Added, o);
            if matches(&c) {
                initial.push(c.line());
            }
        }
        if send_initial && bookmarks {
            initial.push(event_line("BOOKMARK", &json!({
                "kind": kind.name(), "apiVersion": kind.api_version(),
                "metadata": {"resourceVersion": rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}},
            })));
        }
        live = r;
        start_rv = rv;
    } else {
        let Ok(rv) = rv_param.parse::<u64>() else {
            return Err(ApiError::bad_request(format!(
                "invalid resource version: {rv_param}"
            )));
        };
        match app.store.watch_from(rv) {
            Ok((backlog, r)) => {
                for c in backlog.iter().filter(|c| matches(c)) {
                    initial.push(c.line());
                }
                live = r;
                start_rv = backlog.last().map_or(rv, |c| c.rv.max(rv));
            }
            Err(oldest) => {
                let err = ApiError::expired(rv, oldest);
                initial.push(event_line("ERROR", &err.body()));
                let body = Body::from_stream(futures::stream::iter(
                    initial.into_iter().map(Ok::<_, std::io::Error>),
                ));
                return Ok(stream_response(body));
            }
        }
    }
    let pump = Pump {
        tx,
        live,
        kind,
        start_rv,
        bookmarks,
        interval: app.bookmark_interval,
        timeout,
    };
    tokio::spawn(pump.run(initial, matches));
    Ok(stream_response(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

pub(super) fn stream_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    resp
}

/// The live half of a watch: sends the initial events, then matching changes and bookmarks
/// until the client leaves, the timeout passes or the history is lost (410 `ERROR`).
struct Pump {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    live: broadcast::Receiver<Arc<Change>>,
    kind: Kind,
    start_rv: u64,
    bookmarks: bool,
    interval: Duration,
    timeout: Duration,
}

impl Pump {
    async fn run(self, initial: Vec<Bytes>, matches: impl Fn(&Change) -> bool) {
        let Pump {
            tx,
            mut live,
            kind,
            start_rv,
            bookmarks,
            interval,
            timeout,
        } = self;
        for line in initial {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let end = tokio::time::Instant::now() + timeout;
        let mut last_seen = start_rv;
        let mut last_bookmark = start_rv;
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(end) => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if last_seen > last_bookmark {
                        last_bookmark = last_seen;
                        let b = event_line("BOOKMARK", &json!({"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": {"resourceVersion": last_seen.to_string()}}));
                        if tx.send(Ok(b)).await.is_err() { return; }
                    }
                }
                r = live.recv() => match r {
                    Ok(c) => {
                        if c.rv <= last_seen { continue; }
                        last_seen = c.rv;
                        if matches(&c) && tx.send(Ok(c.line())).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let e = ApiError::expired(last_seen, last_seen + 1);
                        let _ = tx.send(Ok(event_line("ERROR", &e.body()))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }
}
