//! Bounds on the size of a [`RunRequest`](crate::RunRequest) that the contract states, whatever the policy.
//!
//! They keep every request launchable: a command line, an environment and labels this size fit a pod spec
//! and a sandbox's argument list with room to spare. The counts also appear in the JSON Schema
//! (`maxItems`, `maxProperties`); the byte totals only in its descriptions.

use std::collections::BTreeMap;

use crate::{FieldError, RunRequest};

/// Most items in `command` and `args` together.
pub const MAX_ARGV_ITEMS: usize = 1_000;
/// Most bytes in `command` and `args` together (the sum of their lengths).
pub const MAX_ARGV_BYTES: usize = 128 * 1024;
/// Most `env` entries.
pub const MAX_ENV_ENTRIES: usize = 1_000;
/// Most bytes of `env` names and values together.
pub const MAX_ENV_BYTES: usize = 128 * 1024;
/// Most `labels`.
pub const MAX_LABELS: usize = 64;
/// Most bytes of label keys and values together.
pub const MAX_LABELS_BYTES: usize = 16 * 1024;
/// Most `egress` names.
pub const MAX_EGRESS: usize = 64;
/// Most bytes of `metadata`, encoded as compact JSON.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// Every size bound `req` exceeds, with the field's path.
pub(crate) fn check(req: &RunRequest) -> Vec<FieldError> {
    let mut p = Vec::new();
    let mut over = |path: &str, what: String| p.push(FieldError::new(path, what));

    let items = req.command.len() + req.args.len();
    let argv_path = if req.command.len() > MAX_ARGV_ITEMS {
        "command"
    } else {
        "args"
    };
    if items > MAX_ARGV_ITEMS {
        over(
            argv_path,
            format!("command and args have {items} items together, the limit is {MAX_ARGV_ITEMS}"),
        );
    }
    let bytes: usize = req.command.iter().chain(&req.args).map(String::len).sum();
    if bytes > MAX_ARGV_BYTES {
        over(
            argv_path,
            format!("command and args are {bytes} bytes together, the limit is {MAX_ARGV_BYTES}"),
        );
    }

    let (n, bytes) = map_size(req.env.iter());
    if n > MAX_ENV_ENTRIES {
        over(
            "env",
            format!("{n} entries, the limit is {MAX_ENV_ENTRIES}"),
        );
    }
    if bytes > MAX_ENV_BYTES {
        over(
            "env",
            format!("names and values are {bytes} bytes, the limit is {MAX_ENV_BYTES}"),
        );
    }

    for e in check_labels(&req.labels) {
        over(&e.path, e.message);
    }

    if req.egress.len() > MAX_EGRESS {
        over(
            "egress",
            format!("{} names, the limit is {MAX_EGRESS}", req.egress.len()),
        );
    }

    if let Some(m) = &req.metadata {
        let bytes = serde_json::to_vec(m).map_or(usize::MAX, |v| v.len());
        if bytes > MAX_METADATA_BYTES {
            over(
                "metadata",
                format!("{bytes} bytes as JSON, the limit is {MAX_METADATA_BYTES}"),
            );
        }
    }
    p
}

/// Every size bound `labels` exceeds.
pub(crate) fn check_labels(labels: &BTreeMap<String, String>) -> Vec<FieldError> {
    let mut p = Vec::new();
    let (n, bytes) = map_size(labels.iter());
    if n > MAX_LABELS {
        p.push(FieldError::new(
            "labels",
            format!("{n} labels, the limit is {MAX_LABELS}"),
        ));
    }
    if bytes > MAX_LABELS_BYTES {
        p.push(FieldError::new(
            "labels",
            format!("keys and values are {bytes} bytes, the limit is {MAX_LABELS_BYTES}"),
        ));
    }
    p
}

/// Entries and bytes (keys plus values) of a map.
fn map_size<'a>(entries: impl Iterator<Item = (&'a String, &'a String)>) -> (usize, usize) {
    entries.fold((0, 0), |(n, b), (k, v)| (n + 1, b + k.len() + v.len()))
}
