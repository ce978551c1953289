//! DashScope Qwen-Image-Edit client (docs/DASHSCOPE.md §1): one synchronous POST per edit, then a plain GET
//! per result URL (without the API key: the URLs are pre-signed).
//!
//! Limits and retries are the shared ones of [`super::client`].

use std::time::Duration;

use bytes::Bytes;
use secrecy::SecretString;

use super::client::{CallPolicy, Client};
use crate::core::image::InputRules;
use crate::core::ports::BoxFuture;
use crate::core::ports::model::{Answer, BackendError, EditRequest, EditService, ModelCaps};

pub mod check;
mod rules;
mod wire;

pub use super::client::result_url_allowed;
pub use rules::{EDIT_PATH, INPUT_RULES, caps_of, data_uri};

/// Largest JSON answer we read from the API.
const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;

/// How the client is set up.
#[derive(Clone)]
pub struct DashScopeOptions {
    pub base_url: String,
    pub model: String,
    pub api_key: SecretString,
    pub watermark: bool,
    pub prompt_extend: bool,
    /// Timeout, limits and retries of every call.
    pub policy: CallPolicy,
}

impl DashScopeOptions {
    /// Options from the `[backend]` section.
    pub fn from_config(c: &crate::config::BackendConfig, api_key: SecretString) -> Self {
        Self {
            base_url: c.base_url.clone(),
            model: c.model.clone(),
            api_key,
            watermark: c.watermark,
            prompt_extend: c.prompt_extend,
            policy: CallPolicy::from_config(c),
        }
    }
}

/// The DashScope client. Cheap to share behind an `Arc`; one connection pool.
pub struct DashScope {
    client: Client,
    opts: DashScopeOptions,
    endpoint: String,
    rules: InputRules,
}

impl DashScope {
    pub fn new(opts: DashScopeOptions) -> Result<Self, BackendError> {
        Ok(Self {
            client: Client::new(opts.policy.clone())?,
            endpoint: format!("{}{EDIT_PATH}", opts.base_url.trim_end_matches('/')),
            opts,
            rules: INPUT_RULES,
        })
    }

    /// With `side` (`backend.max_input_side`) as the largest side worth sending.
    pub fn with_useful_side(mut self, side: u32) -> Self {
        self.rules.useful_side = side;
        self
    }

    /// A call that costs nothing: `GET {base_url}/tasks/{random id}` is authenticated (a
    /// refused key answers 401) and makes no image. Says what it found.
    async fn task_lookup(&self) -> Result<String, BackendError> {
        let base = self.opts.base_url.trim_end_matches('/');
        let url = format!("{base}/tasks/{}", uuid::Uuid::new_v4());
        let req = self.client.http.get(url);
        let req = req.bearer_auth(crate::config::expose(&self.opts.api_key));
        let (status, retry_after, bytes) = self.client.exchange(req, MAX_RESPONSE_BYTES).await?;
        match status {
            200 | 400 | 404 => Ok(format!(
                "reachable, key accepted (a task lookup answered HTTP {status}); model {}",
                self.opts.model
            )),
            _ => Err(wire::parse_response(status, &bytes, retry_after)
                .err()
                .unwrap_or(BackendError::Unavailable {
                    status,
                    code: String::new(),
                })),
        }
    }

    /// Runs one edit, retrying what is worth retrying.
    async fn edit_with_retries(&self, req: &EditRequest) -> Result<Answer, BackendError> {
        let body = Bytes::from(wire::body(&self.opts, req)?);
        self.client.retrying(|| self.attempt(body.clone())).await
    }

    /// The wait before attempt `attempt + 1` (see [`Client::backoff`]).
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        self.client.backoff(attempt, retry_after)
    }

    async fn attempt(&self, body: Bytes) -> Result<Answer, BackendError> {
        let _slot = self.client.slot().await?;
        let req = self
            .client
            .http
            .post(&self.endpoint)
            .bearer_auth(crate::config::expose(&self.opts.api_key))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let (status, retry_after, bytes) = self.client.exchange(req, MAX_RESPONSE_BYTES).await?;
        wire::parse_response(status, &bytes, retry_after)
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
        self.rules
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
        Box::pin(self.client.download_url(&self.opts.base_url, part, limit))
    }

    fn probe(&self) -> BoxFuture<'_, Result<String, BackendError>> {
        Box::pin(self.task_lookup())
    }
}
