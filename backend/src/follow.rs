//! [`Backend::logs_follow`]: a run's output as it is written, for the API's `logs --follow`.

use futures::stream::BoxStream;

use crate::{Backend, BackendError};

impl Backend {
    /// The run's output from byte `skip` on, as it is written, ending when the job's output ends (or at
    /// once when nothing of the run exists or its job has not started). Opened on demand: nothing is
    /// followed while no one asks.
    pub fn logs_follow(
        &self,
        run_id: &str,
        skip: u64,
    ) -> BoxStream<'static, Result<Vec<u8>, BackendError>> {
        match self {
            Backend::Kube(b) => b.logs_follow(run_id, skip),
            Backend::Local(b) => b.logs_follow(run_id, skip),
        }
    }
}
