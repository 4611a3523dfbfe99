//! Resource requests: the target a path names, dispatch by verb, and shared query options.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::Response;
use bytes::Bytes;

use super::delete::{delete, delete_collection};
use super::logs::logs;
use super::patch::patch;
use super::read::{get, list};
use super::watch::watch;
use super::write::{create, replace};
use super::{App, Q, query_of};
use crate::kinds::Kind;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;

pub(super) struct Target<'a> {
    kind: Kind,
    ns: Option<&'a str>,
    name: Option<&'a str>,
    sub: Option<&'a str>,
}

pub(super) fn parse_target<'a>(group: &str, rest: &[&'a str]) -> Result<Target<'a>, ApiError> {
    let kind_of = |p: &str| Kind::from_plural(group, p).ok_or_else(ApiError::path_not_found);
    let t = match rest {
        [plural] => Target {
            kind: kind_of(plural)?,
            ns: None,
            name: None,
            sub: None,
        },
        ["namespaces", ns, plural]
            if Kind::from_plural(group, plural).is_some_and(Kind::namespaced) =>
        {
            Target {
                kind: kind_of(plural)?,
                ns: Some(ns),
                name: None,
                sub: None,
            }
        }
        ["namespaces", name] if group.is_empty() => Target {
            kind: Kind::Namespace,
            ns: None,
            name: Some(name),
            sub: None,
        },
        ["namespaces", name, sub] if group.is_empty() => Target {
            kind: Kind::Namespace,
            ns: None,
            name: Some(name),
            sub: Some(sub),
        },
        ["namespaces", ns, plural, name] => Target {
            kind: kind_of(plural)?,
            ns: Some(ns),
            name: Some(name),
            sub: None,
        },
        ["namespaces", ns, plural, name, sub] => Target {
            kind: kind_of(plural)?,
            ns: Some(ns),
            name: Some(name),
            sub: Some(sub),
        },
        [plural, name] => Target {
            kind: kind_of(plural)?,
            ns: None,
            name: Some(name),
            sub: None,
        },
        _ => return Err(ApiError::path_not_found()),
    };
    if t.kind.namespaced() && t.name.is_some() && t.ns.is_none() {
        return Err(ApiError::path_not_found());
    }
    match (t.kind, t.sub) {
        (_, None) | (Kind::Pod, Some("status" | "log")) | (Kind::Namespace, Some("status")) => {
            Ok(t)
        }
        _ => Err(ApiError::path_not_found()),
    }
}

pub(super) async fn resource(
    app: &Arc<App>,
    group: &str,
    rest: &[&str],
    req: Request,
) -> Result<Response, ApiError> {
    let t = parse_target(group, rest)?;
    let q = query_of(&req);
    let method = req.method().clone();
    let headers = req.headers().clone();
    let raw = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024)
        .await
        .map_err(|e| ApiError::bad_request(format!("unable to read request body: {e}")))?;
    let raw = if matches!(method, Method::POST | Method::PUT) {
        json_body(&headers, raw)?
    } else {
        raw
    };
    let ns = t.ns.unwrap_or("");
    match (t.name, t.sub, method.clone()) {
        (None, None, Method::GET) => {
            if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
                watch(app, t.kind, t.ns, &q)
            } else {
                list(app, t.kind, t.ns, &q)
            }
        }
        (None, None, Method::POST) => {
            if t.kind.namespaced() && t.ns.is_none() {
                return Err(ApiError::method_not_allowed("POST"));
            }
            create(app, t.kind, ns, &q, &raw)
        }
        (None, None, Method::DELETE) => delete_collection(app, t.kind, t.ns, &q),
        (Some(name), None | Some("status"), Method::GET) => get(app, t.kind, ns, name),
        (Some(name), sub @ (None | Some("status")), Method::PUT) => {
            replace(app, t.kind, ns, name, sub.is_some(), &q, &raw)
        }
        (Some(name), sub @ (None | Some("status")), Method::PATCH) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            patch(app, t.kind, ns, name, sub.is_some(), &ct, &q, &raw)
        }
        (Some(name), None, Method::DELETE) => delete(app, t.kind, ns, name, &q, &raw),
        (Some(name), Some("log"), Method::GET) => logs(app, ns, name, &q).await,
        _ => Err(ApiError::method_not_allowed(method.as_str())),
    }
}

/// Bodies of create and update: JSON only; anything else gets 415.
fn json_body(headers: &HeaderMap, raw: Bytes) -> Result<Bytes, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if media.is_empty() || media.eq_ignore_ascii_case("application/json") {
        Ok(raw)
    } else {
        Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json",
        ))
    }
}

pub(super) fn selectors(q: &Q) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let ls = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fs = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    Ok((ls, fs))
}

pub(super) fn strictness(q: &Q) -> bool {
    !matches!(
        q.get("fieldValidation").map(String::as_str),
        Some("Ignore" | "Warn")
    )
}

pub(super) fn warn_header(resp: &mut Response, warnings: &[String]) {
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "\\\""))) {
            resp.headers_mut().append("Warning", v);
        }
    }
}

pub(super) fn is_dry_run(q: &Q) -> bool {
    q.get("dryRun").is_some_and(|d| d == "All")
}
