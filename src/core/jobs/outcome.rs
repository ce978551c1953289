//! How a job's end is written down: committed when delivered, charged or refunded when not,
//! and told, so a restart neither charges twice nor tells twice.

use super::{Engine, JobSpec, SendFailure};
use crate::core::error::{Failure, FailureReason};
use crate::core::ports::store::ResultAt;

impl Engine {
    /// The result (`images` of the backend's request `request_id`) was posted (its 🔁 button on
    /// message `at`): commit the images.
    pub(crate) async fn delivered(
        &self,
        job: &JobSpec,
        images: usize,
        request_id: Option<String>,
        at: Option<ResultAt>,
    ) {
        self.observer().job_finished(true);
        self.observer()
            .images_delivered(job.route.platform.as_str(), images);
        let committed = self
            .quotas
            .commit(&job.id, images as u32, request_id, at)
            .await;
        if let Err(e) = committed {
            tracing::error!(job_id = %job.id, error = %e, "cannot commit a delivered job");
        }
    }

    /// The user was told why `job` failed (or the bot tried to): it is not told again after a
    /// restart.
    pub(crate) async fn told(&self, job: &JobSpec) {
        if let Err(e) = self.quotas.told(&job.id).await {
            tracing::error!(job_id = %job.id, error = %e, "cannot record that the user was told");
        }
    }

    /// The result could not be posted. Refused by the user's chat, the images are charged (the
    /// model was paid); failed on our or the platform's side, they are refunded. Returns what
    /// to tell the user.
    pub(crate) async fn undeliverable(&self, job: &JobSpec, why: SendFailure) -> Failure {
        self.observer().job_finished(false);
        let (reason, written) = match why {
            SendFailure::ChatRefused(detail) => {
                let written = self
                    .quotas
                    .charge_undelivered(&job.id, "chat_refused")
                    .await;
                (FailureReason::ChatRefused(detail), written)
            }
            SendFailure::Platform(detail) => {
                let written = self.quotas.refund(&job.id, "delivery").await;
                (FailureReason::Delivery(detail), written)
            }
        };
        if let Err(e) = &written {
            tracing::error!(job_id = %job.id, error = %e, "cannot record an undelivered job");
        }
        let refunded = matches!(reason, FailureReason::Delivery(_)) && written.is_ok();
        Failure { reason, refunded }
    }

    /// The user's chat refused `job`'s placeholder (`detail`): a job still waiting is taken out
    /// of the queue before it costs anything, refunded and ended (nobody can be told there).
    /// Returns false when a worker has it already (its result is charged if the chat refuses it
    /// too), or when replicas share the store: another one may have taken the job meanwhile.
    pub(crate) async fn withdraw(&self, job: &JobSpec, detail: &str) -> bool {
        if self.quotas.store().shared().is_some() {
            return false;
        }
        let taken = self.queue.remove(|q| q.spec.id == job.id);
        let Some(q) = taken.into_iter().next() else {
            return false;
        };
        tracing::warn!(job_id = %job.id, detail, "the chat refused the placeholder; the waiting job is dropped and refunded");
        let failure = self
            .failed(job, FailureReason::ChatRefused(detail.to_owned()))
            .await;
        self.told(job).await;
        self.tell_observers(job, q.granted, || Err(failure));
        true
    }
}
