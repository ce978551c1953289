//! How a job's end is written down: committed when delivered, charged or refunded when not,
//! and told, so a restart neither charges twice nor tells twice.

use super::{Delivery, Engine, JobSpec, SendFailure};
use crate::core::error::{Failure, FailureReason};
use crate::core::ports::store::ResultAt;

impl Engine {
    /// The result was posted (its 🔁 button on message `at`): commit the images.
    pub(crate) async fn delivered(&self, job: &JobSpec, delivery: &Delivery, at: Option<ResultAt>) {
        self.observer().job_finished(true);
        let images = delivery.images.len();
        self.observer()
            .images_delivered(job.route.platform.as_str(), images);
        let request_id = delivery.request_id.clone();
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
}
