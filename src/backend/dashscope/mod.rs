//! DashScope Qwen-Image-Edit client (docs/DASHSCOPE.md §1): one synchronous POST per edit, then a plain GET
//! per result URL (without the API key: the URLs are pre-signed).
//!
//! Process-wide limits live here: at most `max_concurrent` attempts in flight and at most
//! `max_requests_per_second` attempts started (a `governor` token bucket). Retryable failures
//! are retried with bounded exponential backoff and jitter, honouring `Retry-After`.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use secrecy::SecretString;
use tokio::sync::Semaphore;

use crate::core::image::InputRules;
use crate::core::ports::BoxFuture;
use crate::core::ports::model::{Answer, BackendError, EditRequest, EditService, ModelCaps};

pub mod check;
mod rules;
mod wire;

pub use rules::{EDIT_PATH, INPUT_RULES, caps_of, data_uri};

/// Largest JSON answer we read from the API.
const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;
/// Largest result image we download.
const MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;
/// Redirects followed, within the same host only.
const MAX_REDIRECTS: usize = 5;
/// Longest wait we honour from a `Retry-After` header.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A sleep function; tests inject one that records instead of waiting.
pub type Sleeper = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How the client is set up.
#[derive(Clone)]
pub struct DashScopeOptions {
    pub base_url: String,
    pub model: String,
    pub api_key: SecretString,
    pub timeout: Duration,
    pub max_concurrent: usize,
    pub max_requests_per_second: f64,
    pub watermark: bool,
    pub prompt_extend: bool,
    /// Attempts per call, first included.
    pub max_attempts: u32,
    /// First backoff step; doubles per attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub sleeper: Sleeper,
}

impl DashScopeOptions {
    /// Options from the `[backend]` section.
    pub fn from_config(c: &crate::config::BackendConfig, api_key: SecretString) -> Self {
        Self {
            base_url: c.base_url.clone(),
            model: c.model.clone(),
            api_key,
            timeout: Duration::from_secs(c.timeout_secs),
            max_concurrent: c.max_concurrent,
            max_requests_per_second: c.max_requests_per_second,
            watermark: c.watermark,
            prompt_extend: c.prompt_extend,
            max_attempts: c.max_attempts,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            sleeper: Arc::new(|d| Box::pin(tokio::time::sleep(d))),
        }
    }
}

/// The DashScope client. Cheap to share behind an `Arc`; one connection pool.
pub struct DashScope {
    http: reqwest::Client,
    opts: DashScopeOptions,
    endpoint: String,
    slots: Semaphore,
    rate: DefaultDirectRateLimiter,
}

impl DashScope {
    pub fn new(opts: DashScopeOptions) -> Result<Self, BackendError> {
        // A redirect may move within the host it started on, never to another one (a result URL
        // must not send us to an internal address or an unrelated site).
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
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
        });
        let http = reqwest::Client::builder()
            .redirect(redirects)
            .timeout(opts.timeout)
            .connect_timeout(Duration::from_secs(10).min(opts.timeout))
            .user_agent(concat!("qwen-edit-bot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BackendError::Network(e.to_string()))?;
        let endpoint = format!("{}{EDIT_PATH}", opts.base_url.trim_end_matches('/'));
        let period = Duration::from_secs_f64(1.0 / opts.max_requests_per_second.max(0.001));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::MIN);
        Ok(Self {
            http,
            slots: Semaphore::new(opts.max_concurrent.max(1)),
            rate: RateLimiter::direct(quota),
            endpoint,
            opts,
        })
    }

    /// Runs one edit, retrying what is worth retrying.
    async fn edit_with_retries(&self, req: &EditRequest) -> Result<Answer, BackendError> {
        let body = Bytes::from(wire::body(&self.opts, req)?);
        let mut attempt = 1;
        loop {
            let result = self.attempt(body.clone()).await;
            match result {
                Err(e) if e.is_retryable() && attempt < self.opts.max_attempts => {
                    let delay = self.backoff(attempt, e.retry_after());
                    tracing::warn!(attempt, code = %e.code(), delay_ms = delay.as_millis() as u64,
                        "backend call failed, retrying");
                    (self.opts.sleeper)(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The wait before attempt `attempt + 1`: exponential with jitter, or the server's
    /// `Retry-After` when it asks for longer.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .opts
            .base_backoff
            .saturating_mul(1 << (attempt - 1).min(16));
        let capped = exp.min(self.opts.max_backoff);
        let jittered = capped.mul_f64(rand::rng().random_range(0.5..=1.0));
        match retry_after {
            Some(ra) => ra.min(MAX_RETRY_AFTER).max(jittered),
            None => jittered,
        }
    }

    async fn attempt(&self, body: Bytes) -> Result<Answer, BackendError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| BackendError::Network("closed".into()))?;
        self.rate.until_ready().await;
        let resp = self
            .http
            .post(&self.endpoint)
            .bearer_auth(crate::config::expose(&self.opts.api_key))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let bytes = read_limited(resp, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| self.transport_error(e))?
            .ok_or_else(|| BackendError::Malformed("response too large".into()))?;
        wire::parse_response(status, &bytes, retry_after)
    }

    fn transport_error(&self, e: reqwest::Error) -> BackendError {
        if e.is_timeout() {
            BackendError::Timeout(self.opts.timeout)
        } else {
            // Without the URL: it is ours, and some deployments put tokens in query strings.
            BackendError::Network(e.without_url().to_string())
        }
    }

    /// Downloads one result image of at most `limit` bytes (no API key is sent). Only `https`
    /// URLs are taken, or `http` when the API itself is (a local test server).
    async fn fetch_result(&self, url: &str, limit: usize) -> Result<Bytes, BackendError> {
        if !result_url_allowed(&self.opts.base_url, url) {
            return Err(BackendError::Download("the result URL is not https".into()));
        }
        let limit = limit.min(MAX_RESULT_BYTES);
        let resp = self.http.get(url).send().await.map_err(|e| {
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

impl EditService for DashScope {
    fn model(&self) -> &str {
        &self.opts.model
    }

    fn caps(&self) -> ModelCaps {
        caps_of(&self.opts.model)
    }

    fn input_rules(&self) -> InputRules {
        INPUT_RULES
    }

    fn edit<'a>(&'a self, req: &'a EditRequest) -> BoxFuture<'a, Result<Answer, BackendError>> {
        Box::pin(self.edit_with_retries(req))
    }

    /// DashScope's parts are its result URLs.
    fn redeem<'a>(
        &'a self,
        part: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Bytes, BackendError>> {
        Box::pin(self.fetch_result(part, limit))
    }
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

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_AFTER.as_secs_f64())))
}
