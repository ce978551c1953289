//! The model-service port: what the core asks of a Qwen-Image-Edit service — its capabilities,
//! one edit, and handing over the images of an [`Answer`] — with typed errors. The DashScope
//! client (`crate::backend::dashscope`) and the test double implement it. No HTTP types and no
//! vendor codes here: the adapter maps its service's errors to [`BackendError`] and
//! [`OperatorProblem`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::BoxFuture;
use crate::core::command::Size;
use crate::core::image::{Fitted, InputRules};

/// One edit: 1–3 fitted images and the instruction.
#[derive(Debug, Clone)]
pub struct EditRequest {
    pub images: Vec<Fitted>,
    pub prompt: String,
    pub negative: Option<String>,
    pub seed: Option<u32>,
    pub n: u8,
    /// Output size (checked against [`ModelCaps::check_size`]); `None`: the model's default.
    pub size: Option<Size>,
    /// Where a service that reports progress (ComfyUI) tells it; `None`: nobody listens.
    pub progress: Option<Progress>,
}

/// Told how far a running edit is, in percent. Cheap to call often: the listener keeps only
/// the latest value and decides when to show it.
#[derive(Clone)]
pub struct Progress(Arc<dyn Fn(u8) + Send + Sync>);

impl Progress {
    pub fn new(tell: impl Fn(u8) + Send + Sync + 'static) -> Self {
        Self(Arc::new(tell))
    }

    /// Reports `percent` (at most 100).
    pub fn report(&self, percent: u8) {
        (self.0)(percent.min(100));
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// A service's answer to one edit, in a form the store keeps: one opaque part per image, which
/// only the service that made it reads back ([`EditService::redeem`]). DashScope's parts are its
/// result URLs (valid 24 h); a service that answers with the bytes themselves would keep them
/// and hand out a reference. The core counts parts and passes them back; it never reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub request_id: Option<String>,
    pub parts: Vec<String>,
    /// The configured service that made it (`backend.name`), when several are configured; the
    /// ledger records it so `usage --by service` prices each service's images.
    pub service: Option<String>,
}

/// What a model accepts (docs/DASHSCOPE.md §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelCaps {
    pub max_n: u8,
    pub prompt_extend: bool,
    /// Smallest and largest side an output `size` may have; `None`: the model takes no size.
    pub size_sides: Option<(u32, u32)>,
}

/// Why an output size cannot be asked of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRejection {
    /// The model makes its images at the input's size only.
    NotSupported,
    /// Each side must be from `min` to `max` pixels.
    OutOfRange { min: u32, max: u32 },
}

impl ModelCaps {
    /// Whether the model can make images of `size`.
    pub fn check_size(&self, size: Size) -> Result<(), SizeRejection> {
        let (min, max) = self.size_sides.ok_or(SizeRejection::NotSupported)?;
        let fits = |side: u32| (min..=max).contains(&side);
        if fits(size.width) && fits(size.height) {
            Ok(())
        } else {
            Err(SizeRejection::OutOfRange { min, max })
        }
    }
}

/// An image-edit service.
pub trait EditService: Send + Sync + 'static {
    /// The model's name, as the ledger records it.
    fn model(&self) -> &str;
    /// What the model accepts (its adapter knows).
    fn caps(&self) -> ModelCaps;
    /// What its input images must be: `image::fit` makes them so before [`EditService::edit`].
    fn input_rules(&self) -> InputRules;
    /// Runs one edit (retries included) and returns its answer, to be stored before
    /// [`EditService::redeem`] turns it into images.
    fn edit<'a>(&'a self, req: &'a EditRequest) -> BoxFuture<'a, Result<Answer, BackendError>>;
    /// The image of one part of an [`Answer`] (this run's or a stored one), at most `limit`
    /// bytes.
    fn redeem<'a>(
        &'a self,
        part: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Bytes, BackendError>>;
    /// One call that costs nothing and makes no image (`check-config --probe`): whether the
    /// service is reachable and takes the key, and what it said, in a line.
    fn probe(&self) -> BoxFuture<'_, Result<String, BackendError>> {
        Box::pin(async { Ok("this service has no probe".to_owned()) })
    }
}

/// What the operator must fix when the service refuses the bot itself; the service's adapter
/// says which, so nothing outside it reads vendor codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorProblem {
    /// The API key was refused.
    Key,
    /// The account is out of credit or the product is not bought.
    Billing,
    /// The account's allowance is used up.
    Allowance,
    /// The configured model (or workspace) does not exist.
    Model,
    /// The key may not use this service or model.
    Permission,
}

/// A failed edit call. `retryable` ones are retried inside the client; what reaches callers is
/// final.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Content moderation (`DataInspectionFailed`): never retried.
    #[error("content refused by moderation ({code})")]
    Moderated { code: String },
    /// The request was refused as invalid (`InvalidParameter`, `BadRequest.*`, …).
    #[error("request rejected: {code}: {message}")]
    Rejected { code: String, message: String },
    /// The operator must act: key, permission, model, billing or account quota.
    #[error("backend configuration problem: {code}: {message}")]
    Operator {
        problem: OperatorProblem,
        /// The service's own code, for the log and the ledger only.
        code: String,
        message: String,
    },
    /// Throttled (429) and still throttled after the last attempt.
    #[error("backend throttled ({code})")]
    Throttled {
        code: String,
        retry_after: Option<Duration>,
    },
    /// 408, 5xx or a status we did not expect.
    #[error("backend unavailable: HTTP {status} {code}")]
    Unavailable { status: u16, code: String },
    #[error("backend did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the backend: {0}")]
    Network(String),
    /// A 200 that is not the documented shape.
    #[error("malformed backend response: {0}")]
    Malformed(String),
    /// The result image could not be fetched.
    #[error("cannot download the result: {0}")]
    Download(String),
}

impl BackendError {
    /// Worth another attempt with backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BackendError::Throttled { .. }
                | BackendError::Unavailable { .. }
                | BackendError::Timeout(_)
                | BackendError::Network(_)
        )
    }

    /// Short stable label for metrics and the job ledger.
    pub fn code(&self) -> String {
        match self {
            BackendError::Moderated { code }
            | BackendError::Rejected { code, .. }
            | BackendError::Operator { code, .. }
            | BackendError::Throttled { code, .. } => code.clone(),
            BackendError::Unavailable { status, code } if code.is_empty() => {
                format!("http_{status}")
            }
            BackendError::Unavailable { code, .. } => code.clone(),
            BackendError::Timeout(_) => "timeout".into(),
            BackendError::Network(_) => "network".into(),
            BackendError::Malformed(_) => "malformed".into(),
            BackendError::Download(_) => "download".into(),
        }
    }

    /// The server's suggested wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BackendError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
