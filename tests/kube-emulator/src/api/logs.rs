//! Pod logs, plain and followed.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{App, Q};
use crate::kinds::Kind;
use crate::kubelet::PodLog;
use crate::status::ApiError;

pub(super) async fn logs(
    app: &Arc<App>,
    ns: &str,
    name: &str,
    q: &Q,
) -> Result<Response, ApiError> {
    let pod = app
        .store
        .get(Kind::Pod, ns, name)
        .ok_or_else(|| ApiError::not_found(Kind::Pod, name))?;
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) if containers.contains(c) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    if matches!(q.get("previous").map(String::as_str), Some("true" | "1")) {
        return Err(ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found"
        )));
    }
    let log = app
        .kubelet
        .log(ns, name)
        .filter(|l| l.container == container);
    let Some(log) = log else {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )));
    };
    let tail = q.get("tailLines").and_then(|t| t.parse::<usize>().ok());
    let limit = q
        .get("limitBytes")
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let follow = matches!(q.get("follow").map(String::as_str), Some("true" | "1"));
    let mut data = log.bytes();
    if let Some(n) = tail {
        data = tail_lines(&data, n);
    }
    let text_plain = |resp: &mut Response| {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    };
    if !follow {
        if let Some(l) = limit {
            data.truncate(l);
        }
        let mut resp = Response::new(Body::from(data));
        text_plain(&mut resp);
        return Ok(resp);
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let sent_total = log.bytes().len();
    let budget = limit.unwrap_or(usize::MAX);
    tokio::spawn(follow_log(tx, log, data, sent_total, budget));
    let mut resp = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    text_plain(&mut resp);
    Ok(resp)
}

pub(super) fn tail_lines(data: &[u8], n: usize) -> Vec<u8> {
    if n == 0 {
        return Vec::new();
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut count = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == n {
                return data[i + 1..].to_vec();
            }
        }
    }
    data.to_vec()
}

/// Stream `data` (what the log held), then whatever the log gains, within `budget` bytes, until
/// the container's output closes or the client leaves.
async fn follow_log(
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    log: Arc<PodLog>,
    data: Vec<u8>,
    mut sent_total: usize,
    mut budget: usize,
) {
    let mut sub = log.subscribe();
    let first: Vec<u8> = data.into_iter().take(budget).collect();
    budget -= first.len();
    if !first.is_empty() && tx.send(Ok(Bytes::from(first))).await.is_err() {
        return;
    }
    loop {
        if budget == 0 {
            return;
        }
        let all = log.bytes();
        if all.len() > sent_total {
            let chunk: Vec<u8> = all[sent_total..].iter().copied().take(budget).collect();
            sent_total = all.len();
            budget -= chunk.len();
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            continue;
        }
        if log.is_closed() {
            return;
        }
        tokio::select! {
            r = sub.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}
