//! The one retry policy for chat calls: a throttled call waits what the platform asked (at most
//! a minute), a network or server error backs off 1, 2, 4, 8 s, a final error (or a message
//! that is gone) is final, and five attempts is all. The outbox retries by it
//! (`core::outbox`); [`retrying`] is the policy alone, for calls outside any lane.

use std::future::Future;
use std::time::Duration;

use crate::core::ports::chat::ChatError;

/// Attempts per call before it is given up.
pub const ATTEMPTS: u32 = 5;
/// Longest `retry_after` waited for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// What a throttled call waits when the platform did not say (outside the outbox, which waits
/// one window of the chat's limit instead).
const UNSAID: Duration = Duration::from_secs(1);
/// Longest back-off after a network or server error.
const MAX_BACKOFF: Duration = Duration::from_secs(16);

/// How long to wait before trying again a call whose attempt number `attempt` (from 1) ended
/// with `error`; `None`: not again (the error is final, or the attempts are used up).
pub fn wait_before_retry(attempt: u32, error: &ChatError) -> Option<Duration> {
    if attempt >= ATTEMPTS {
        return None;
    }
    match error {
        ChatError::RetryAfter(asked, _) => Some(asked.unwrap_or(UNSAID).min(MAX_RETRY_AFTER)),
        ChatError::Transient(_) => {
            Some((Duration::from_secs(1) * 2u32.pow(attempt - 1)).min(MAX_BACKOFF))
        }
        _ => None,
    }
}

/// Runs `call` until it succeeds or [`wait_before_retry`] says to stop.
pub async fn retrying<T, F, Fut>(mut call: F) -> Result<T, ChatError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ChatError>>,
{
    let mut attempt = 1;
    loop {
        let error = match call().await {
            Err(error) => error,
            done => return done,
        };
        let Some(wait) = wait_before_retry(attempt, &error) else {
            return Err(error);
        };
        tracing::warn!(wait_ms = wait.as_millis() as u64, error = %error, "chat call failed, retrying");
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}
