//! The one retry policy for chat calls: a throttled call waits what the platform asked (at most
//! a minute), a network or server error backs off exponentially, a final error (or a message that is gone)
//! is final.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};

use crate::core::ports::chat::ChatError;

/// Attempts per call before it is given up.
pub const ATTEMPTS: usize = 5;
/// Longest `retry_after` waited for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Runs `call` until it succeeds, an error is final, or [`ATTEMPTS`] are used up.
pub async fn retrying<T, F, Fut>(call: F) -> Result<T, ChatError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ChatError>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(16))
        .with_max_times(ATTEMPTS - 1);
    call.retry(backoff)
        .when(|e| !matches!(e, ChatError::Final { .. } | ChatError::Gone(_)))
        .adjust(|e, wait| match (e, wait) {
            (ChatError::RetryAfter(asked, _), Some(_)) => Some((*asked).min(MAX_RETRY_AFTER)),
            (_, wait) => wait,
        })
        .notify(|e, wait| {
            tracing::warn!(wait_ms = wait.as_millis() as u64, error = %e, "chat call failed, retrying");
        })
        .await
}
