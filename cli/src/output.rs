//! `--output text|json` and printing.

use airlock_schemas::api::RunView;

use crate::exit::CliError;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// One JSON document (per chunk for `logs -f`), the API's reply types.
    Json,
}

/// Prints `v` as JSON on one line.
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<(), CliError> {
    let s = serde_json::to_string(v).map_err(|e| CliError::Other(e.to_string()))?;
    println!("{s}");
    Ok(())
}

/// Prints a run for people.
pub fn print_view(v: &RunView) -> Result<(), CliError> {
    let mut lines = vec![
        ("id", v.id.clone()),
        ("status", v.status.map_or("-".into(), |s| s.to_string())),
    ];
    let mut opt = |k: &'static str, val: Option<String>| {
        if let Some(val) = val {
            lines.push((k, val));
        }
    };
    opt("reason", v.reason.clone());
    opt("exit code", v.exit_code.map(|c| c.to_string()));
    opt("queue", v.queue.clone());
    opt("image", v.image.clone());
    opt("submitted", v.submitted_at.clone());
    opt("started", v.started_at.clone());
    opt("finished", v.finished_at.clone());
    lines.push(("attempt", v.attempt.to_string()));
    lines.push(("result", if v.has_result { "yes" } else { "no" }.into()));
    if !v.labels.is_empty() {
        let l: Vec<String> = v.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.push(("labels", l.join(",")));
    }
    for r in &v.result_rejections {
        lines.push(("rejected result", r.clone()));
    }
    for (k, val) in lines {
        println!("{k:<16}{val}");
    }
    Ok(())
}
