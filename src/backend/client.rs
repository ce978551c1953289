//! What every HTTP model service shares: the process-wide call limits (at most
//! `max_concurrent` attempts in flight, at most `max_requests_per_second` started, a `governor`
//! token bucket), bounded exponential backoff with jitter that honours `Retry-After`, bounded
//! body reads, and a redirect policy that never leaves the host it started on.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::core::ports::model::BackendError;

/// Longest wait we honour from a `Retry-After` header.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Redirects followed, within the same host only.
const MAX_REDIRECTS: usize = 5;
/// Largest result image downloaded from any service.
const MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;

/// A sleep function; tests inject one that records instead of waiting.
pub type Sleeper = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How calls to one service are paced and retried.
#[derive(Clone)]
pub struct CallPolicy {
    pub timeout: Duration,
    pub max_concurrent: usize,
    pub max_requests_per_second: f64,
    /// Attempts per call, first included.
    pub max_attempts: u32,
    /// First backoff step; doubles per attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub sleeper: Sleeper,
}

impl CallPolicy {
    /// The policy the `[backend]` section sets, with real sleeps.
    pub fn from_config(c: &crate::config::BackendConfig) -> Self {
        Self {
            timeout: Duration::from_secs(c.timeout_secs),
            max_concurrent: c.max_concurrent,
            max_requests_per_second: c.max_requests_per_second,
            max_attempts: c.max_attempts,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            sleeper: real_sleep(),
        }
    }
}

/// `tokio::time::sleep`, as a [`Sleeper`].
pub fn real_sleep() -> Sleeper {
    Arc::new(|d| Box::pin(tokio::time::sleep(d)))
}

/// One service's HTTP client and its limits. Cheap to share; one connection pool.
pub struct Client {
    pub http: reqwest::Client,
    policy: CallPolicy,
    slots: Semaphore,
    rate: DefaultDirectRateLimiter,
}

impl Client {
    pub fn new(policy: CallPolicy) -> Result<Self, BackendError> {
        let http = reqwest::Client::builder()
            .redirect(same_host_redirects())
            .timeout(policy.timeout)
            .connect_timeout(Duration::from_secs(10).min(policy.timeout))
            .user_agent(concat!("qwen-edit-bot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BackendError::Network(e.to_string()))?;
        let period = Duration::from_secs_f64(1.0 / policy.max_requests_per_second.max(0.001));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::MIN);
        Ok(Self {
            http,
            slots: Semaphore::new(policy.max_concurrent.max(1)),
            rate: RateLimiter::direct(quota),
            policy,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.policy.timeout
    }

    /// Waits for a free slot and the rate limit; the slot is held while the permit lives.
    pub async fn slot(&self) -> Result<SemaphorePermit<'_>, BackendError> {
        let permit = self.permit().await?;
        self.pace().await;
        Ok(permit)
    }

    /// A free slot alone (a service that holds it for a whole job and paces its calls with
    /// [`Client::pace`]).
    pub async fn permit(&self) -> Result<SemaphorePermit<'_>, BackendError> {
        self.slots
            .acquire()
            .await
            .map_err(|_| BackendError::Network("closed".into()))
    }

    /// Waits until the rate limit lets one more call start.
    pub async fn pace(&self) {
        self.rate.until_ready().await;
    }

    /// Runs `attempt` until it succeeds, fails for good, or the attempts are used up.
    pub async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let mut n = 1;
        loop {
            match attempt().await {
                Err(e) if e.is_retryable() && n < self.policy.max_attempts => {
                    let delay = self.backoff(n, e.retry_after());
                    tracing::warn!(attempt = n, code = %e.code(), delay_ms = delay.as_millis() as u64,
                        "backend call failed, retrying");
                    (self.policy.sleeper)(delay).await;
                    n += 1;
                }
                other => return other,
            }
        }
    }

    /// The wait before attempt `attempt + 1`: exponential with jitter, or the server's
    /// `Retry-After` when it asks for longer.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .policy
            .base_backoff
            .saturating_mul(1 << (attempt - 1).min(16));
        let capped = exp.min(self.policy.max_backoff);
        let jittered = capped.mul_f64(rand::rng().random_range(0.5..=1.0));
        match retry_after {
            Some(ra) => ra.min(MAX_RETRY_AFTER).max(jittered),
            None => jittered,
        }
    }

    /// A transport failure, without the URL (it is ours, and some deployments put tokens in
    /// query strings).
    pub fn transport_error(&self, e: reqwest::Error) -> BackendError {
        if e.is_timeout() {
            BackendError::Timeout(self.policy.timeout)
        } else {
            BackendError::Network(e.without_url().to_string())
        }
    }

    /// Sends `req` (waiting for no slot: callers that make paid calls take [`Client::slot`]
    /// first) and reads the answer's status, `Retry-After` and body (at most `limit` bytes).
    pub async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<(u16, Option<Duration>, Bytes), BackendError> {
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let bytes = read_limited(resp, limit)
            .await
            .map_err(|e| self.transport_error(e))?
            .ok_or_else(|| BackendError::Malformed("response too large".into()))?;
        Ok((status, retry_after, bytes))
    }

    /// Downloads a result URL the API at `base_url` answered with (no credentials are sent):
    /// only `https`, or `http` when the API itself is plain `http` (a local server).
    pub async fn download_url(
        &self,
        base_url: &str,
        url: &str,
        limit: usize,
    ) -> Result<Bytes, BackendError> {
        if !result_url_allowed(base_url, url) {
            return Err(BackendError::Download("the result URL is not https".into()));
        }
        self.download(self.http.get(url), limit).await
    }

    /// GETs one result image of at most `limit` bytes (and at most [`MAX_RESULT_BYTES`]) and
    /// checks that it is an image.
    pub async fn download(
        &self,
        req: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<Bytes, BackendError> {
        let limit = limit.min(MAX_RESULT_BYTES);
        let resp = req.send().await.map_err(|e| {
            BackendError::Download(if e.is_timeout() {
                "timed out".into()
            } else {
                e.without_url().to_string()
            })
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(BackendError::Download(format!("HTTP {}", status.as_u16())));
        }
        let bytes = read_limited(resp, limit)
            .await
            .map_err(|e| BackendError::Download(e.without_url().to_string()))?
            .ok_or_else(|| {
                BackendError::Download(format!("result larger than {} MB", limit >> 20))
            })?;
        crate::core::image::sniff(&bytes)
            .map_err(|_| BackendError::Download("the result is not an image".into()))?;
        Ok(bytes)
    }
}

/// A redirect may move within the host it started on, never to another one (a result URL must
/// not send us to an internal address or an unrelated site).
fn same_host_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let first = attempt
            .previous()
            .first()
            .and_then(|u| u.host_str().map(str::to_owned));
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if first.as_deref() == attempt.url().host_str() {
            attempt.follow()
        } else {
            attempt.error("redirect to another host")
        }
    })
}

/// Reads at most `limit` bytes of a body; `None` when it is longer.
async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Option<Bytes>, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n as usize > limit) {
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(resp.content_length().map_or(8192, |n| n as usize));
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(Bytes::from(buf)))
}

/// `Retry-After` in seconds, at most [`MAX_RETRY_AFTER`].
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// Whether a result URL may be downloaded for an API at `base_url`: `https` always, `http` only
/// when the API itself is plain `http` (a local server).
pub fn result_url_allowed(base_url: &str, url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    match parsed.scheme() {
        "https" => true,
        "http" => base_url.starts_with("http://"),
        _ => false,
    }
}
