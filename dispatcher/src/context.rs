//! [`Ctx`]: what every part of the dispatcher shares.

use std::collections::BTreeMap;

use airlock_backend::{Backend, RuntimeKind};
use airlock_runtime::consume::Outcome;
use airlock_runtime::metrics::Metrics;
use airlock_runtime::publish::Publisher;
use airlock_runtime::store::Store;
use airlock_schemas::{Policy, Subjects, env, token};

use crate::config::Config;
use crate::slots::Slots;

/// What every handler, the watcher and the unknown-queue scan share.
#[derive(Debug)]
pub struct Ctx {
    pub(crate) config: Config,
    pub(crate) policy: Policy,
    pub(crate) secret: Vec<u8>,
    pub(crate) subjects: Subjects,
    pub(crate) store: Store,
    pub(crate) publisher: Publisher,
    pub(crate) backend: Backend,
    pub(crate) slots: Slots,
    pub(crate) metrics: Metrics,
}

impl Ctx {
    /// A nak whose delay grows with the delivery count, up to the configured cap.
    pub(crate) fn transient(&self, delivered: i64) -> Outcome {
        Outcome::Transient(self.config.consumer.redelivery_delay(delivered))
    }

    /// The job environment: the request's plus the reserved variables.
    pub fn job_env(
        &self,
        run_id: &str,
        request_env: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut e = request_env.clone();
        e.insert(env::RUN_ID.into(), run_id.to_string());
        e.insert(env::RUN_TOKEN.into(), token::sign(&self.secret, run_id));
        if self.backend.kind() == RuntimeKind::Kube {
            e.insert(env::RESULT_SUBJECT.into(), self.subjects.results(run_id));
            e.insert(env::NATS_URL.into(), self.config.job_nats_url());
        }
        e
    }
}
