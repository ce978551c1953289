//! Taking a job: validate it against the model's capabilities, hold a queue place, reserve its
//! quota (persisted) and queue it; and 🔁, which makes a new job of a delivered one.

use std::sync::atomic::Ordering;

use super::{Accepted, Engine, JobSpec, MAX_INPUTS, Queued};
use crate::core::command::EditCommand;
use crate::core::error::Rejection;
use crate::core::model::Reply;
use crate::core::ports::model::ModelCaps;
use crate::core::ports::store::ResultAt;
use crate::core::quota::{Admission, QuotaRejection, Reservation};

impl Engine {
    /// Validates, holds a queue place, reserves quota (persisted) and queues the job.
    /// Returns quickly: nothing here waits for the model.
    pub async fn submit(&self, mut spec: JobSpec) -> Result<Accepted, Rejection> {
        spec.command.size = spec.command.size.or(self.cfg.default_size);
        validate(&spec, self.backend.caps())?;
        spec.token = Some(uuid::Uuid::new_v4().simple().to_string());
        let user = spec.user();
        let hold = self.queue.hold(&user)?;
        let reservation = Reservation {
            job_id: spec.id.clone(),
            user,
            chat: spec.chat(),
            group: spec.group().map(str::to_owned),
            model: self.backend.model().to_owned(),
            cost: u32::from(spec.command.count()),
            prompt: self.cfg.store_prompts.then(|| spec.command.prompt.clone()),
            spec: serde_json::to_string(&spec).ok(),
            token: spec.token.clone(),
            admission: Admission {
                per_user: self.cfg.max_in_flight_per_user,
                queued: u32::try_from(self.cfg.max_queue).unwrap_or(u32::MAX),
            },
        };
        let granted = match self.quotas.reserve(reservation).await {
            Ok(Ok(granted)) => granted,
            Ok(Err(no)) => {
                self.queue.release(hold);
                return Err(match no {
                    // The queue's limits, reached on the replicas together.
                    QuotaRejection::TooManyInFlight { max } => Rejection::TooManyInFlight { max },
                    QuotaRejection::QueueFull => Rejection::QueueFull,
                    QuotaRejection::Duplicate => Rejection::Quota(no),
                    _ => {
                        self.observer().quota_rejected(quota_reason(&no));
                        Rejection::Quota(no)
                    }
                });
            }
            Err(e) => {
                self.queue.release(hold);
                tracing::error!(error = %e, "quota reserve failed");
                return Err(Rejection::Internal);
            }
        };
        let position = self.queue.push(
            hold,
            Queued {
                spec,
                granted,
                answered: None,
                given_up: false,
                failed_before: None,
            },
        );
        let waits = position > 0 || self.busy.load(Ordering::SeqCst) >= self.workers();
        Ok(Accepted {
            position,
            waits,
            granted,
        })
    }

    /// For 🔁 pressed on message `pressed` of a chat: the job whose button `token` is — if its
    /// result is that very message — again: same inputs, chat and prompt, a new random seed, as
    /// job `new_id` of `user` (who pays), answered through `route`. `None` when the job is not
    /// known (any more), or the button was not pressed on its result (a forged or copied token).
    pub async fn again(
        &self,
        token: &str,
        pressed: &ResultAt,
        new_id: String,
        route: Reply,
    ) -> Option<JobSpec> {
        let stored = self
            .quotas
            .again_source(token, &pressed.chat, &pressed.message)
            .await?;
        let old = JobSpec::from_stored(&stored)?;
        let seed = rand::random_range(0..=crate::core::command::MAX_SEED);
        let command = EditCommand {
            seed: Some(seed),
            ..old.command
        };
        // The route is the pressed button's: the same chat (checked above), whoever pressed.
        Some(JobSpec::new(new_id, route, old.inputs, command))
    }
}

/// Metric label of a quota refusal.
fn quota_reason(q: &QuotaRejection) -> &'static str {
    match q {
        QuotaRejection::Duplicate => "duplicate",
        QuotaRejection::Blocked => "blocked",
        QuotaRejection::Disabled => "disabled",
        QuotaRejection::User { .. } => "user",
        QuotaRejection::Chat { .. } => "chat",
        QuotaRejection::Global { .. } => "global",
        QuotaRejection::TooManyInFlight { .. } => "in_flight",
        QuotaRejection::QueueFull => "queue_full",
    }
}

fn validate(spec: &JobSpec, caps: ModelCaps) -> Result<(), Rejection> {
    match spec.inputs.len() {
        0 => return Err(Rejection::NoImage),
        n if n > MAX_INPUTS => return Err(Rejection::TooManyImages(n)),
        _ => {}
    }
    if spec.command.count() > caps.max_n {
        return Err(Rejection::CountNotSupported { max: caps.max_n });
    }
    if let Some(size) = spec.command.size {
        caps.check_size(size)?;
    }
    Ok(())
}
