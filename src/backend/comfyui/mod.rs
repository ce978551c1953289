//! A self-hosted ComfyUI running a Qwen-Image-Edit workflow (docs/SERVICES.md): each input is
//! uploaded (`POST /upload/image`), the operator's API-format workflow is filled in and queued
//! (`POST /prompt`), its progress followed on the websocket (`/ws`), and its images listed by
//! `/history/{prompt_id}`. An answer's parts name those images; [`EditService::redeem`] fetches
//! one with `GET /view`.
//!
//! Limits and retries are the shared ones of [`super::client`]. Only the submission (uploads
//! and `/prompt`) is retried: once ComfyUI has taken the prompt, running it again would cost a
//! second GPU run for one job.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};
use secrecy::SecretString;
use serde_json::Value;

use super::client::{CallPolicy, Client};
use crate::config::BackendConfig;
use crate::core::image::InputRules;
use crate::core::ports::BoxFuture;
use crate::core::ports::model::{
    Answer, BackendError, EditRequest, EditService, ModelCaps, OperatorProblem,
};

pub mod check;
mod run;
mod socket;
mod wire;
mod workflow;

use wire::ImageRef;
pub use workflow::{BUILTIN_WORKFLOW, InputRef, Mapping};

/// Largest JSON answer we read (a `/history` entry repeats the whole workflow).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Most images one run may hand back.
const MAX_IMAGES: usize = 16;
/// Sides smaller than this make no sense to a diffusion model.
pub const MIN_INPUT_SIDE: u32 = 64;
/// Images per run when the workflow has a batch input.
const MAX_N: u8 = 6;

/// How the adapter is set up.
#[derive(Clone)]
pub struct ComfyOptions {
    pub base_url: String,
    /// Header name and secret sent on every request (for a reverse proxy in front of ComfyUI).
    pub auth: Option<(String, SecretString)>,
    /// The API-format workflow every job starts from.
    pub workflow: Value,
    pub mapping: Mapping,
    /// The model's name, as the ledger records it.
    pub model: String,
    pub policy: CallPolicy,
    pub max_input_side: u32,
    pub max_file_bytes: usize,
    /// How often `/history` is asked while the websocket is lost or silent.
    pub history_poll: Duration,
}

impl ComfyOptions {
    /// Options from the `[backend]` section; reads and checks the workflow file. Errors name
    /// the setting (and file) at fault.
    pub fn from_config(b: &BackendConfig, auth: Option<SecretString>) -> Result<Self, String> {
        let (workflow, mapping) = load_workflow(b)?;
        let header = if b.auth_header.trim().is_empty() {
            "Authorization".to_owned()
        } else {
            b.auth_header.trim().to_owned()
        };
        Ok(Self {
            base_url: b.base_url.clone(),
            auth: auth.map(|secret| (header, secret)),
            workflow,
            mapping,
            model: b.model.clone(),
            policy: CallPolicy::from_config(b),
            max_input_side: b.max_input_side,
            max_file_bytes: (b.max_file_mb as usize).max(1) * 1024 * 1024,
            history_poll: Duration::from_secs(1),
        })
    }
}

/// The workflow `backend.workflow` names (or the built-in one) and its mapping, checked
/// against each other.
pub fn load_workflow(b: &BackendConfig) -> Result<(Value, Mapping), String> {
    let builtin = b.workflow.trim().is_empty();
    let workflow = if builtin {
        workflow::parse(BUILTIN_WORKFLOW, "the built-in workflow")?
    } else {
        let path = b.workflow.trim();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("backend.workflow: cannot read {path}: {e}"))?;
        workflow::parse(&text, path)?
    };
    let text = workflow::MappingText {
        image_inputs: &b.image_inputs,
        prompt: &b.prompt_input,
        negative: &b.negative_input,
        seed: &b.seed_input,
        batch: &b.batch_input,
        output_node: &b.output_node,
    };
    let mapping = Mapping::from_text(&text, builtin)?;
    let problems = workflow::mapping_problems(&workflow, &mapping);
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok((workflow, mapping))
}

/// The ComfyUI adapter. Cheap to share behind an `Arc`; one connection pool.
pub struct ComfyUi {
    client: Client,
    opts: ComfyOptions,
    base: reqwest::Url,
    auth: Option<(HeaderName, HeaderValue)>,
}

impl ComfyUi {
    pub fn new(opts: ComfyOptions) -> Result<Self, BackendError> {
        let misconfigured = |message: &str| BackendError::Operator {
            problem: OperatorProblem::Key,
            code: "bad_config".into(),
            message: message.to_owned(),
        };
        let base = reqwest::Url::parse(opts.base_url.trim_end_matches('/'))
            .map_err(|_| misconfigured("backend.base_url is not a URL"))?;
        let auth = match &opts.auth {
            None => None,
            Some((name, secret)) => {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| misconfigured("backend.auth_header is not a header name"))?;
                let mut value = HeaderValue::from_str(crate::config::expose(secret))
                    .map_err(|_| misconfigured("the ComfyUI secret is not a valid header value"))?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        Ok(Self {
            client: Client::new(opts.policy.clone())?,
            opts,
            base,
            auth,
        })
    }

    /// One line about the server (`GET /system_stats`), for `check-config --probe`.
    async fn system_stats(&self) -> Result<String, BackendError> {
        let req = self.authed(self.client.http.get(self.endpoint("system_stats")));
        let (status, retry_after, body) = self.client.exchange(req, MAX_RESPONSE_BYTES).await?;
        if status != 200 {
            return Err(wire::status_error(status, retry_after, "/system_stats"));
        }
        wire::system_summary(&body)
    }

    /// The URL of an API route, under `base_url`'s path (ComfyUI may sit behind a prefix).
    fn endpoint(&self, route: &str) -> reqwest::Url {
        let mut u = self.base.clone();
        let path = format!("{}/{route}", u.path().trim_end_matches('/'));
        u.set_path(&path);
        u
    }

    /// Adds the auth header, when one is configured.
    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some((name, value)) => req.header(name.clone(), value.clone()),
            None => req,
        }
    }

    /// Downloads one result image (`GET /view`) of at most `limit` bytes.
    async fn fetch_result(&self, part: &str, limit: usize) -> Result<Bytes, BackendError> {
        let image = ImageRef::from_part(part)?;
        let mut url = self.endpoint("view");
        url.query_pairs_mut()
            .append_pair("filename", &image.filename)
            .append_pair("subfolder", &image.subfolder)
            .append_pair("type", &image.kind);
        let req = self.authed(self.client.http.get(url));
        self.client.download(req, limit).await
    }
}

impl EditService for ComfyUi {
    fn model(&self) -> &str {
        &self.opts.model
    }

    /// A workflow makes several images per run only through its batch input.
    fn caps(&self) -> ModelCaps {
        ModelCaps {
            max_n: if self.opts.mapping.batch.is_some() {
                MAX_N
            } else {
                1
            },
            prompt_extend: false,
            size_sides: None,
        }
    }

    fn input_rules(&self) -> InputRules {
        InputRules::web(
            MIN_INPUT_SIDE,
            self.opts.max_input_side,
            self.opts.max_file_bytes,
        )
    }

    fn edit<'a>(&'a self, req: &'a EditRequest) -> BoxFuture<'a, Result<Answer, BackendError>> {
        Box::pin(self.run(req))
    }

    /// A part is an [`ImageRef`] as JSON.
    fn redeem<'a>(
        &'a self,
        part: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Bytes, BackendError>> {
        Box::pin(self.fetch_result(part, limit))
    }

    fn probe(&self) -> BoxFuture<'_, Result<String, BackendError>> {
        Box::pin(self.system_stats())
    }
}
