//! One job on ComfyUI: upload, queue, follow, collect. Each upload and the `/prompt` call are
//! retried on their own (an upload overwrites its own name, so a retry leaves nothing behind,
//! and nothing done is done again); the run is not. Its end is always read from `/history`: the websocket only says when to look, and a
//! socket that drops or falls silent sends us polling `/history` instead, so a finished image
//! is never lost to it.

use futures_util::StreamExt as _;
use rand::Rng as _;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::socket::{self, Event, Socket};
use super::wire::{self, Finished, ImageRef};
use super::workflow::{self, JobInputs};
use super::{ComfyUi, MAX_IMAGES, MAX_RESPONSE_BYTES};
use crate::core::image::Fitted;
use crate::core::ports::model::{
    Answer, BackendError, EditRequest, EditService as _, OperatorProblem, Progress,
};
use bytes::Bytes;

/// Silence on the socket, in history polls, after which `/history` is asked anyway.
const QUIET_POLLS: u32 = 10;
/// Longest wait for the websocket handshake; without it we poll.
const SOCKET_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How following the socket ended.
enum Followed {
    /// The socket says the prompt finished: read `/history`.
    Done,
    /// `/history` already says how it ended (read while the socket was quiet).
    Ended(Finished),
    Failed(BackendError),
    /// The socket closed or broke: poll `/history`.
    Lost,
}

/// The `/prompt` body: the filled workflow and the socket's client id.
#[derive(serde::Serialize)]
struct PromptBody<'a> {
    prompt: &'a serde_json::Value,
    client_id: &'a str,
}

impl ComfyUi {
    /// Runs one edit: at most `max_concurrent` of ours are queued on the server at once (the
    /// slot is held for the whole run, since ComfyUI runs one prompt at a time).
    pub(super) async fn run(&self, req: &EditRequest) -> Result<Answer, BackendError> {
        let slots = self.opts.mapping.image_inputs.len();
        if req.images.len() > slots {
            return Err(workflow::too_many_images(slots));
        }
        if req.images.is_empty() {
            return Err(BackendError::Rejected {
                code: "no_image".into(),
                message: "an edit needs at least one image".into(),
            });
        }
        let n = req.n.clamp(1, self.caps().max_n);
        let seed = req.seed.unwrap_or_else(|| rand::rng().random::<u32>());
        let job = uuid::Uuid::new_v4().simple().to_string();
        let _slot = self.client.permit().await?;
        let mut names = Vec::with_capacity(req.images.len());
        for (i, image) in req.images.iter().enumerate() {
            let name = format!("qeb-{job}-{i}.{}", image.format.extension());
            names.push(self.client.retrying(|| self.upload(image, &name)).await?);
        }
        let inputs = JobInputs {
            images: &names,
            prompt: &req.prompt,
            negative: req.negative.as_deref(),
            seed: u64::from(seed),
            n,
        };
        let prompt = workflow::build(&self.opts.workflow, &self.opts.mapping, &inputs)?;
        let client_id = uuid::Uuid::new_v4().simple().to_string();
        // Opened first: ComfyUI sends a prompt's messages only to sockets already there.
        let socket = self.open_socket(&client_id).await;
        let body = serde_json::to_vec(&PromptBody {
            prompt: &prompt,
            client_id: &client_id,
        })
        .map_err(|e| BackendError::Malformed(e.to_string()))?;
        let body = Bytes::from(body);
        let prompt_id = self.client.retrying(|| self.queue(body.clone())).await?;
        tracing::info!(%prompt_id, images = req.images.len(), n, "ComfyUI prompt queued");
        let limit = self.client.timeout();
        let outcome = self.outcome(&prompt_id, socket, req.progress.as_ref());
        let images = match tokio::time::timeout(limit, outcome).await {
            Ok(result) => result?,
            Err(_) => {
                self.forget(&prompt_id).await;
                return Err(BackendError::Timeout(limit));
            }
        };
        Ok(Answer {
            request_id: Some(prompt_id),
            parts: images.iter().map(ImageRef::to_part).collect(),
            service: None,
        })
    }

    /// `POST /upload/image` into ComfyUI's input folder, under our own unique name.
    async fn upload(&self, image: &Fitted, name: &str) -> Result<String, BackendError> {
        let body = reqwest::Body::from(image.bytes.clone());
        let part = reqwest::multipart::Part::stream_with_length(body, image.bytes.len() as u64)
            .file_name(name.to_owned())
            .mime_str(image.format.mime())
            .map_err(|e| BackendError::Malformed(e.without_url().to_string()))?;
        let form = reqwest::multipart::Form::new()
            .part("image", part)
            .text("type", "input")
            .text("overwrite", "true");
        let req = self
            .authed(self.client.http.post(self.endpoint("upload/image")))
            .multipart(form);
        let (status, retry_after, body) = self.client.exchange(req, MAX_RESPONSE_BYTES).await?;
        if status != 200 {
            return Err(wire::status_error(status, retry_after, "the image upload"));
        }
        wire::uploaded_name(&body)
    }

    /// `POST /prompt`; its id.
    /// Each attempt waits for the rate limit: it is the call that starts GPU work.
    async fn queue(&self, body: Bytes) -> Result<String, BackendError> {
        self.client.pace().await;
        let req = self
            .authed(self.client.http.post(self.endpoint("prompt")))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let (status, retry_after, body) = self.client.exchange(req, MAX_RESPONSE_BYTES).await?;
        match status {
            200 => wire::prompt_id(&body),
            400 => Err(wire::invalid_workflow(&body)),
            _ => Err(wire::status_error(status, retry_after, "/prompt")),
        }
    }

    /// The websocket for `client_id`, or `None` (logged) when it does not open.
    async fn open_socket(&self, client_id: &str) -> Option<Socket> {
        let url = socket::url(&self.base, client_id)?;
        let wait = SOCKET_CONNECT_TIMEOUT.min(self.client.timeout());
        match tokio::time::timeout(wait, socket::connect(&url, self.auth.as_ref())).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(reason)) => {
                tracing::warn!(%reason, "ComfyUI websocket not opened; polling /history instead");
                None
            }
            Err(_) => {
                tracing::warn!("ComfyUI websocket handshake timed out; polling /history instead");
                None
            }
        }
    }

    /// The images of a queued prompt, or why it failed.
    async fn outcome(
        &self,
        prompt_id: &str,
        socket: Option<Socket>,
        told: Option<&Progress>,
    ) -> Result<Vec<ImageRef>, BackendError> {
        if let Some(mut ws) = socket {
            match self.follow(&mut ws, prompt_id, told).await {
                Followed::Failed(e) => return Err(e),
                Followed::Ended(finished) => return self.finished(finished),
                Followed::Done => {}
                Followed::Lost => {
                    tracing::warn!(prompt_id, "ComfyUI websocket lost; polling /history");
                }
            }
        }
        self.poll_history(prompt_id).await
    }

    /// Reads the socket until our prompt ends or the socket does. Other prompts' messages and
    /// binary previews are skipped; a long silence sends us to `/history` to look.
    async fn follow(&self, ws: &mut Socket, prompt_id: &str, told: Option<&Progress>) -> Followed {
        let quiet = self.opts.history_poll.saturating_mul(QUIET_POLLS);
        loop {
            let next = match tokio::time::timeout(quiet, ws.next()).await {
                Ok(next) => next,
                Err(_) => match self.history_once(prompt_id).await {
                    Ok(Some(finished)) => return Followed::Ended(finished),
                    Ok(None) => continue,
                    Err(e) if e.is_retryable() => continue,
                    Err(e) => return Followed::Failed(e),
                },
            };
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_)) | Err(_)) | None => return Followed::Lost,
                Some(Ok(_)) => continue,
            };
            match socket::event(&text, prompt_id) {
                Event::Progress { value, max } => report(prompt_id, value, max, told),
                Event::Done => return Followed::Done,
                Event::Failed(e) => return Followed::Failed(e),
                Event::Other => {}
            }
        }
    }

    /// Asks `/history` every `history_poll` until the prompt has ended (the caller bounds the
    /// wait). The entry appears a moment after the socket says the run finished.
    async fn poll_history(&self, prompt_id: &str) -> Result<Vec<ImageRef>, BackendError> {
        loop {
            match self.history_once(prompt_id).await {
                Ok(Some(finished)) => return self.finished(finished),
                Ok(None) => {}
                Err(e) if e.is_retryable() => {
                    tracing::debug!(code = %e.code(), "ComfyUI /history not reachable; asking again");
                }
                Err(e) => return Err(e),
            }
            tokio::time::sleep(self.opts.history_poll).await;
        }
    }

    /// `GET /history/{prompt_id}`, read.
    async fn history_once(&self, prompt_id: &str) -> Result<Option<Finished>, BackendError> {
        let url = self.endpoint(&format!("history/{prompt_id}"));
        let req = self.authed(self.client.http.get(url));
        let (status, retry_after, body) = self.client.exchange(req, MAX_RESPONSE_BYTES).await?;
        if status != 200 {
            return Err(wire::status_error(status, retry_after, "/history"));
        }
        wire::history(&body, prompt_id, self.opts.mapping.output_node.as_deref())
    }

    /// A finished run's images; none at all means the mapping points at the wrong node.
    fn finished(&self, finished: Finished) -> Result<Vec<ImageRef>, BackendError> {
        let mut images = match finished {
            Finished::Images(images) => images,
            Finished::Failed(e) => return Err(e),
        };
        if images.is_empty() {
            let at = self
                .opts
                .mapping
                .output_node
                .as_deref()
                .unwrap_or("any node");
            return Err(BackendError::Operator {
                problem: OperatorProblem::Model,
                code: "no_output".into(),
                message: format!(
                    "the workflow finished without an image at {at} (backend.output_node)"
                ),
            });
        }
        images.truncate(MAX_IMAGES);
        Ok(images)
    }

    /// Takes a prompt we gave up on off the queue, if it has not started (best effort).
    async fn forget(&self, prompt_id: &str) {
        let sent = self
            .authed(self.client.http.post(self.endpoint("queue")))
            .json(&json!({ "delete": [prompt_id] }))
            .send()
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e.without_url(), "could not delete the prompt from the ComfyUI queue");
        }
    }
}

/// Passes the sampler's progress on to whoever listens (rate-limiting is theirs).
fn report(prompt_id: &str, value: u64, max: u64, told: Option<&Progress>) {
    tracing::debug!(prompt_id, value, max, "ComfyUI progress");
    if let Some(told) = told {
        told.report(socket::percent(value, max));
    }
}
