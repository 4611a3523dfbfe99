//! A stored run as the API shows it.

use airlock_runtime::store::StoredRun;
use airlock_schemas::api::RunView;

/// The [`RunView`] of `run`.
pub(super) fn view(run: &StoredRun) -> RunView {
    let r = &run.record;
    RunView {
        id: r.id.clone(),
        status: r.status,
        reason: r.reason.clone(),
        exit_code: r.exit_code,
        queue: r.queue.clone(),
        image: r.image.clone(),
        labels: run
            .request
            .as_ref()
            .map(|q| q.labels.clone())
            .unwrap_or_default(),
        attempt: run.attempt(),
        submitted_at: r.submitted_at.clone(),
        started_at: r.started_at.clone(),
        finished_at: r.finished_at.clone(),
        has_result: r.result.is_some(),
        result_rejections: r.result_rejections.clone(),
    }
}
