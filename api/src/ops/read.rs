//! `status`, `result` and `list`: reads of the run store.

use airlock_runtime::store::{ListCursor, ListFilter};
use airlock_schemas::api::{
    ApiError, DEFAULT_LIST_LIMIT, ErrorCode, ErrorDetail, ListReply, ListRequest, MAX_LIST_LIMIT,
    ResultReply, RunRef, RunView,
};
use airlock_schemas::is_valid_name;

use super::view::view;
use super::{Ctx, check_id, decode, unavailable};

impl Ctx {
    pub(super) async fn status(&self, body: &[u8]) -> Result<RunView, ApiError> {
        let q: RunRef = decode(body)?;
        check_id(&q.id)?;
        match self.store.run(&q.id).await {
            Ok(Some(run)) => Ok(view(&run)),
            Ok(None) => Err(ApiError::not_found(&q.id)),
            Err(e) => Err(unavailable("reading the run store", Some(&q.id), &e)),
        }
    }

    pub(super) async fn result(&self, body: &[u8]) -> Result<ResultReply, ApiError> {
        let q: RunRef = decode(body)?;
        check_id(&q.id)?;
        let record = match self.store.get(&q.id).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(ApiError::not_found(&q.id)),
            Err(e) => return Err(unavailable("reading the run store", Some(&q.id), &e)),
        };
        match record.result {
            Some(result) => Ok(ResultReply {
                id: q.id,
                result,
                result_at: record.result_at,
            }),
            None => {
                let status = record.status.map_or("unknown", |s| s.as_str());
                let message = if record.is_terminal() {
                    format!("run {:?} ended {status} without a result", q.id)
                } else {
                    format!("run {:?} is {status} and has no result yet", q.id)
                };
                Err(ApiError::new(ErrorCode::NotReady, message))
            }
        }
    }

    pub(super) async fn list(&self, body: &[u8]) -> Result<ListReply, ApiError> {
        let q: ListRequest = decode(body)?;
        let mut details = Vec::new();
        let mut bad = |field: &str, message: &str| {
            details.push(ErrorDetail {
                field: field.into(),
                message: message.into(),
            })
        };
        let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if limit == 0 || limit > MAX_LIST_LIMIT {
            bad("limit", &format!("must be 1-{MAX_LIST_LIMIT}"));
        }
        if q.queue.as_deref().is_some_and(|n| !is_valid_name(n)) {
            bad("queue", "not a queue name");
        }
        let label = match q.label.as_deref().map(|l| l.split_once('=')) {
            None => None,
            Some(Some((k, v))) if !k.is_empty() => Some((k.to_string(), v.to_string())),
            Some(_) => {
                bad("label", "must be key=value");
                None
            }
        };
        let cursor = match q.cursor.as_deref().map(ListCursor::decode) {
            None => None,
            Some(Some(c)) => Some(c),
            Some(None) => {
                bad("cursor", "not a cursor from a previous page");
                None
            }
        };
        if !details.is_empty() {
            return Err(ApiError::invalid("invalid list request", details));
        }
        let filter = ListFilter {
            status: q.status,
            queue: q.queue,
            label,
        };
        let page = self
            .store
            .list(&filter, cursor.as_ref(), limit as usize)
            .await
            .map_err(|e| unavailable("listing runs", None, &e))?;
        Ok(ListReply {
            runs: page.runs.iter().map(view).collect(),
            next_cursor: page.next.map(|c| c.encode()),
        })
    }
}
