//! An OpenAI-compatible images API (`POST {base_url}/images/edits`, multipart, Bearer key):
//! vLLM-Omni, LocalAI, DeepInfra and OpenAI itself (docs/SERVICES.md §2).
//!
//! Images answered inline (`b64_json`) are written to the spool folder before the answer is
//! stored, and the stored part names the file, so a restart delivers them without a second
//! (paid) call; files older than [`SPOOL_KEEP`] are removed. Images answered as URLs are kept
//! as their URL and downloaded like DashScope's.

pub mod check;
mod wire;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use secrecy::SecretString;

use super::client::{CallPolicy, Client};
use crate::core::image::InputRules;
use crate::core::ports::BoxFuture;
use crate::core::ports::model::{Answer, BackendError, EditRequest, EditService, ModelCaps};

/// Largest answer read (several inline images, base64).
const MAX_RESPONSE_BYTES: usize = 128 * 1024 * 1024;
/// How long an inline image waits in the spool for its delivery.
pub const SPOOL_KEEP: Duration = Duration::from_secs(48 * 3600);
/// The prefix of a part that names a spooled file.
const SPOOLED: &str = "spool:";

/// How the client is set up.
#[derive(Clone)]
pub struct OpenAiOptions {
    pub base_url: String,
    pub model: String,
    pub api_key: Option<SecretString>,
    pub max_input_side: u32,
    pub max_file_bytes: usize,
    pub spool_dir: PathBuf,
    pub policy: CallPolicy,
}

impl OpenAiOptions {
    /// Options from one `[backend]` of kind `openai`.
    pub fn from_config(c: &crate::config::BackendConfig, api_key: Option<SecretString>) -> Self {
        Self {
            base_url: c.base_url.trim_end_matches('/').to_owned(),
            model: c.model.clone(),
            api_key,
            max_input_side: c.max_input_side,
            max_file_bytes: c.max_file_mb as usize * 1024 * 1024,
            spool_dir: PathBuf::from(&c.spool_dir),
            policy: CallPolicy::from_config(c),
        }
    }
}

/// The client. Cheap to share behind an `Arc`.
pub struct OpenAi {
    client: Client,
    opts: OpenAiOptions,
    /// When the spool was last pruned (seconds since the epoch).
    pruned_at: AtomicU64,
}

impl OpenAi {
    pub fn new(opts: OpenAiOptions) -> Result<Self, BackendError> {
        Ok(Self {
            client: Client::new(opts.policy.clone())?,
            opts,
            pruned_at: AtomicU64::new(0),
        })
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.opts.api_key {
            Some(key) => req.bearer_auth(crate::config::expose(key)),
            None => req,
        }
    }

    async fn attempt(&self, req: &EditRequest) -> Result<Vec<wire::Image>, BackendError> {
        let _slot = self.client.slot().await?;
        let url = format!("{}/images/edits", self.opts.base_url);
        let req = self
            .authorized(self.client.http.post(url))
            .multipart(wire::form(&self.opts.model, req));
        let (status, retry_after, bytes) = self.client.exchange(req, MAX_RESPONSE_BYTES).await?;
        wire::parse(status, &bytes, retry_after)
    }

    async fn edit_once(&self, req: &EditRequest) -> Result<Answer, BackendError> {
        let images = self.client.retrying(|| self.attempt(req)).await?;
        self.prune_spool();
        let mut parts = Vec::with_capacity(images.len());
        for image in images {
            parts.push(match image {
                wire::Image::Url(url) => url,
                wire::Image::Inline(b64) => self.spool(&b64).await?,
            });
        }
        Ok(Answer {
            request_id: None,
            parts,
            service: None,
        })
    }

    /// Writes an inline image to the spool; returns its part.
    async fn spool(&self, b64: &str) -> Result<String, BackendError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| BackendError::Malformed("b64_json is not base64".into()))?;
        let format = crate::core::image::sniff(&bytes)
            .map_err(|_| BackendError::Malformed("b64_json is not an image".into()))?;
        let name = format!("{}.{}", uuid::Uuid::new_v4(), format.extension());
        let dir = &self.opts.spool_dir;
        let write = async {
            tokio::fs::create_dir_all(dir).await?;
            tokio::fs::write(dir.join(&name), &bytes).await
        };
        write.await.map_err(|e| {
            tracing::error!(dir = %dir.display(), error = %e, "cannot keep a result image");
            BackendError::Malformed(format!("cannot keep the result: {}", e.kind()))
        })?;
        Ok(format!("{SPOOLED}{name}"))
    }

    /// Removes spooled images older than [`SPOOL_KEEP`], at most once an hour, off the runtime.
    fn prune_spool(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let last = self.pruned_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 3600
            || self
                .pruned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let dir = self.opts.spool_dir.clone();
        tokio::task::spawn_blocking(move || prune(&dir, SPOOL_KEEP));
    }

    async fn fetch(&self, part: &str, limit: usize) -> Result<Bytes, BackendError> {
        match part.strip_prefix(SPOOLED) {
            Some(name) => read_spooled(&self.opts.spool_dir, name, limit).await,
            None => {
                self.client
                    .download_url(&self.opts.base_url, part, limit)
                    .await
            }
        }
    }

    /// `GET {base_url}/models`: whether the key is taken and the model is served.
    async fn list_models(&self) -> Result<String, BackendError> {
        let url = format!("{}/models", self.opts.base_url);
        let req = self.authorized(self.client.http.get(url));
        let (status, _, body) = self.client.exchange(req, MAX_RESPONSE_BYTES).await?;
        if status != 200 {
            return Err(wire::error(status, &body, None));
        }
        let ids: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("data")?.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m.get("id")?.as_str().map(str::to_owned))
            .collect();
        let model = &self.opts.model;
        Ok(if ids.iter().any(|id| id == model) {
            format!(
                "reachable, key accepted, serves {model} ({} models)",
                ids.len()
            )
        } else {
            format!(
                "reachable, key accepted, but {model} is not among its {} models",
                ids.len()
            )
        })
    }
}

/// Reads one spooled image of at most `limit` bytes.
async fn read_spooled(dir: &Path, name: &str, limit: usize) -> Result<Bytes, BackendError> {
    // The name is ours (a UUID and an extension): anything else is not a spooled file.
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(BackendError::Download("not a kept result".into()));
    }
    let path = dir.join(name);
    let len = tokio::fs::metadata(&path)
        .await
        .map_err(|e| BackendError::Download(format!("the kept result is gone ({})", e.kind())))?
        .len();
    if len as usize > limit {
        return Err(BackendError::Download(format!(
            "result larger than {} MB",
            limit >> 20
        )));
    }
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| BackendError::Download(e.kind().to_string()))?;
    Ok(Bytes::from(bytes))
}

/// Removes files in `dir` older than `keep`.
fn prune(dir: &Path, keep: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let old = |e: &std::fs::DirEntry| {
        e.metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > keep)
    };
    for entry in entries.flatten().filter(old) {
        let _ = std::fs::remove_file(entry.path());
    }
}

impl EditService for OpenAi {
    fn model(&self) -> &str {
        &self.opts.model
    }

    fn caps(&self) -> ModelCaps {
        ModelCaps {
            max_n: 6,
            prompt_extend: false,
            size_sides: Some((256, 4096)),
        }
    }

    fn input_rules(&self) -> InputRules {
        InputRules::web(64, self.opts.max_input_side, self.opts.max_file_bytes)
    }

    fn edit<'a>(&'a self, req: &'a EditRequest) -> BoxFuture<'a, Result<Answer, BackendError>> {
        Box::pin(self.edit_once(req))
    }

    fn redeem<'a>(
        &'a self,
        part: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Bytes, BackendError>> {
        Box::pin(self.fetch(part, limit))
    }

    fn probe(&self) -> BoxFuture<'_, Result<String, BackendError>> {
        Box::pin(self.list_models())
    }
}
