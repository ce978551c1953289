//! The edit itself, without queue or quota: fit the inputs, call the backend, download the
//! results. Shared by the engine's workers and the `edit` CLI command.

use std::time::Instant;

use bytes::Bytes;

use super::command::EditCommand;
use super::edit::{BackendError, EditBackend, EditRequest, EditResponse};
use super::error::FailureReason;
use super::image::{FitLimits, Fitted, fit};
use super::jobs::Delivery;

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
pub async fn execute(
    backend: &dyn EditBackend,
    limits: &FitLimits,
    inputs: Vec<Bytes>,
    command: &EditCommand,
    negative: Option<String>,
) -> Result<Delivery, FailureReason> {
    let images = fit_all(inputs, limits).await?;
    let resp = call(backend, &(), images, command, negative).await?;
    let images = download_all(backend, &resp.urls).await?;
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
    backend: &dyn EditBackend,
    observer: &dyn Observer,
    images: Vec<Fitted>,
    command: &EditCommand,
    negative: Option<String>,
) -> Result<EditResponse, FailureReason> {
    let req = EditRequest {
        images,
        prompt: command.prompt.clone(),
        negative,
        seed: command.seed,
        n: command.count(),
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

/// Downloads every result URL.
pub async fn download_all(
    backend: &dyn EditBackend,
    urls: &[String],
) -> Result<Vec<Bytes>, FailureReason> {
    let mut results = Vec::with_capacity(urls.len());
    for url in urls {
        results.push(backend.download(url).await?);
    }
    Ok(results)
}

/// Runs [`fit`] on the blocking pool, so a large decode never stalls other chats.
pub async fn fit_off_thread(bytes: Bytes, limits: FitLimits) -> Result<Fitted, FailureReason> {
    tokio::task::spawn_blocking(move || fit(bytes, &limits))
        .await
        .map_err(|_| FailureReason::Internal)?
        .map_err(FailureReason::Image)
}
