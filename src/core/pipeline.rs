//! The edit itself, without queue or quota: fit the inputs, call the backend, download the
//! results. Shared by the engine's workers and the `edit` CLI command.

use std::time::Instant;

use bytes::Bytes;

use super::command::EditCommand;
use super::error::FailureReason;
use super::image::{FitLimits, Fitted, ImageRejection, fit};
use super::jobs::Delivery;
use super::ports::model::{Answer, BackendError, EditRequest, EditService, Progress};
use super::ports::store::Store;

/// Watches what happens (metrics, health); every method defaults to doing nothing, and `()`
/// ignores everything.
pub trait Observer: Send + Sync {
    /// One edit call ended after `seconds`, with the error code if it failed; `reachable` is
    /// false when the service could not be reached (network, timeout, 5xx).
    fn backend_call(&self, _seconds: f64, _error: Option<&str>, _reachable: bool) {}
    /// A job ended for good: delivered, or failed (and refunded).
    fn job_finished(&self, _delivered: bool) {}
    /// A request was refused by the quota.
    fn quota_rejected(&self, _reason: &str) {}
    /// A front-end posted edited images.
    fn images_delivered(&self, _platform: &str, _count: usize) {}
    /// A front-end failed to send something for good.
    fn send_failed(&self, _platform: &str) {}
}

impl Observer for () {}

/// Fits the inputs, runs the edit and downloads every result.
/// The answer is recorded in `store` for `job_id` before its images are fetched (what the
/// service made is spent money, fetched or not; `usage --by service` reads who made it).
pub async fn execute(
    backend: &dyn EditService,
    limits: &FitLimits,
    inputs: Vec<Bytes>,
    command: &EditCommand,
    negative: Option<String>,
    store: &dyn Store,
    job_id: &str,
) -> Result<Delivery, FailureReason> {
    let images = fit_all(inputs, limits).await?;
    let mut resp = call(backend, &(), images, command, negative, None).await?;
    resp.parts.truncate(usize::from(command.count()));
    let (request, service) = (resp.request_id.as_deref(), resp.service.as_deref());
    let now = chrono::Utc::now();
    if let Err(e) = store
        .save_result(job_id, request, &resp.parts, service, now)
        .await
    {
        tracing::warn!(job_id, error = %e, "cannot record the answer");
    }
    let images = redeem_all(backend, &resp.parts, DOWNLOAD_TIMEOUT).await?;
    Ok(Delivery {
        images,
        request_id: resp.request_id,
    })
}

/// Fits every input, in order.
pub async fn fit_all(inputs: Vec<Bytes>, limits: &FitLimits) -> Result<Vec<Fitted>, FailureReason> {
    let mut images = Vec::with_capacity(inputs.len());
    for bytes in inputs {
        images.push(fit_off_thread(bytes, limits.clone()).await?);
    }
    Ok(images)
}

/// One edit call, observed.
pub async fn call(
    backend: &dyn EditService,
    observer: &dyn Observer,
    images: Vec<Fitted>,
    command: &EditCommand,
    negative: Option<String>,
    progress: Option<Progress>,
) -> Result<Answer, FailureReason> {
    let req = EditRequest {
        images,
        prompt: command.prompt.clone(),
        negative,
        seed: command.seed,
        n: command.count(),
        size: command.size,
        progress,
    };
    let started = Instant::now();
    let result = backend.edit(&req).await;
    let code = result.as_ref().err().map(|e| e.code());
    let reachable = !matches!(
        result,
        Err(BackendError::Network(_) | BackendError::Timeout(_) | BackendError::Unavailable { .. })
    );
    observer.backend_call(started.elapsed().as_secs_f64(), code.as_deref(), reachable);
    Ok(result?)
}

/// How long the CLI may take to redeem one edit's answer.
const DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Most bytes all results of one edit may take together; each download gets its share.
pub const MAX_RESULTS_BYTES: usize = 128 * 1024 * 1024;

/// Redeems every part of an answer at once, each within its share of [`MAX_RESULTS_BYTES`], all
/// within `deadline`.
pub async fn redeem_all(
    backend: &dyn EditService,
    parts: &[String],
    deadline: std::time::Duration,
) -> Result<Vec<Bytes>, FailureReason> {
    let share = MAX_RESULTS_BYTES / parts.len().max(1);
    let downloads = parts.iter().map(|part| backend.redeem(part, share));
    let results = tokio::time::timeout(deadline, futures_util::future::join_all(downloads))
        .await
        .map_err(|_| BackendError::Download("timed out".into()))?;
    Ok(results.into_iter().collect::<Result<Vec<_>, _>>()?)
}

/// Runs [`fit`] on the blocking pool, so a large decode never stalls other chats.
pub async fn fit_off_thread(bytes: Bytes, limits: FitLimits) -> Result<Fitted, FailureReason> {
    tokio::task::spawn_blocking(move || fit_guarded(bytes, &limits))
        .await
        .map_err(|_| FailureReason::Internal)?
        .map_err(FailureReason::Image)
}

/// [`fit`], with a decoder panic (a crafted file can trip one) answered as a damaged image and
/// logged, instead of taking the worker down.
pub fn fit_guarded(bytes: Bytes, limits: &FitLimits) -> Result<Fitted, ImageRejection> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fit(bytes, limits))).unwrap_or_else(
        |panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "an image decoder panicked; the image is refused as damaged");
            Err(ImageRejection::Corrupt)
        },
    )
}
