//! A fake DashScope on 127.0.0.1 that checks requests like the real API and answers from a
//! per-call script. It also serves the result images it hands out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

pub const API_KEY: &str = "sk-test-0123456789abcdef";

/// What the fake does on one call.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// 200 with this many result URLs (served by the fake).
    Ok(usize),
    /// An error status with a DashScope error body; optional `Retry-After`.
    Error {
        status: u16,
        code: &'static str,
        retry_after: Option<&'static str>,
    },
    /// Never answers (well past any client timeout).
    Hang,
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 whose result URL answers 404.
    MissingResult,
    /// 200 carrying `code` and no `output`.
    CodeWith200(&'static str),
    /// 200 whose one result URL redirects (302) to a result on the same host, or on another
    /// host (`localhost` instead of `127.0.0.1`, same port).
    Redirect { other_host: bool },
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub authorization: Option<String>,
    pub body: Value,
    /// (mime, width, height) of each image part.
    pub images: Vec<(String, u32, u32)>,
    /// Contract violations found in the request (empty when it is well-formed).
    pub violations: Vec<String>,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    script: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
    downloads: Mutex<Vec<Option<String>>>,
    /// `host/path` of every result request.
    fetched: Mutex<Vec<String>>,
    /// When each result request came.
    fetched_at: Mutex<Vec<std::time::Instant>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    latency: Mutex<Duration>,
    /// While true, successful calls wait (see [`FakeDashScope::hold`]).
    held: tokio::sync::watch::Sender<bool>,
    model: Mutex<String>,
    result_size: Mutex<(u32, u32)>,
    result_bytes: Mutex<Option<Vec<u8>>>,
}

/// A running fake. Dropping it stops nothing: it lives until the test's runtime ends.
#[derive(Clone)]
pub struct FakeDashScope {
    pub base_url: String,
    inner: Arc<Inner>,
}

impl FakeDashScope {
    pub async fn start() -> Self {
        Self::start_at("/api/v1").await
    }

    /// A fake whose API is under `prefix` (DashScope's `/api/v1`, 302.AI's `/aliyun/api/v1`).
    pub async fn start_at(prefix: &str) -> Self {
        let inner = Arc::new(Inner::default());
        *inner.model.lock().unwrap() = "qwen-image-edit-plus".into();
        *inner.result_size.lock().unwrap() = (64, 48);
        let app = Router::new()
            .route(
                &format!("{prefix}/services/aigc/multimodal-generation/generation"),
                post(generate),
            )
            .route(&format!("{prefix}/tasks/{{id}}"), get(task))
            .route("/results/{name}", get(result))
            .with_state(inner.clone());
        let addr = super::serve(app).await;
        Self {
            base_url: format!("http://{addr}{prefix}"),
            inner,
        }
    }

    /// Queues replies for the next calls; after the script runs out every call gets `Ok(1)`.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.script.lock().unwrap().extend(replies);
    }

    /// How long each successful call takes.
    pub fn set_latency(&self, d: Duration) {
        *self.inner.latency.lock().unwrap() = d;
    }

    /// The model the fake accepts (and whose `n` rules it enforces).
    pub fn set_model(&self, model: &str) {
        *self.inner.model.lock().unwrap() = model.into();
    }

    /// Size of the result PNGs it serves.
    pub fn set_result_size(&self, w: u32, h: u32) {
        *self.inner.result_size.lock().unwrap() = (w, h);
    }

    /// Serve exactly these bytes as every result image.
    pub fn set_result_bytes(&self, bytes: Vec<u8>) {
        *self.inner.result_bytes.lock().unwrap() = Some(bytes);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
    }

    /// `host/path` of every result request so far (redirects included).
    pub fn fetched(&self) -> Vec<String> {
        self.inner.fetched.lock().unwrap().clone()
    }

    /// When each result was downloaded, in order.
    pub fn fetched_at(&self) -> Vec<std::time::Instant> {
        self.inner.fetched_at.lock().unwrap().clone()
    }

    pub fn calls(&self) -> usize {
        self.inner.seen.lock().unwrap().len()
    }

    /// `Authorization` headers of result downloads.
    pub fn download_auth(&self) -> Vec<Option<String>> {
        self.inner.downloads.lock().unwrap().clone()
    }

    /// Successful calls wait from now until [`FakeDashScope::release`].
    pub fn hold(&self) {
        self.inner.held.send_replace(true);
    }

    pub fn release(&self) {
        self.inner.held.send_replace(false);
    }

    /// Calls being answered right now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }
}

async fn generate(State(s): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let response = answer(&s, &headers, &body).await;
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

async fn answer(s: &Inner, headers: &HeaderMap, body: &[u8]) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = s.model.lock().unwrap().clone();
    let (images, mut violations) = check_contract(&parsed, &model);
    if authorization.as_deref() != Some(&format!("Bearer {API_KEY}")) {
        violations.push("missing or wrong Authorization".into());
    }
    let n = parsed["parameters"]["n"].as_u64().unwrap_or(1) as usize;
    s.seen.lock().unwrap().push(Seen {
        authorization: authorization.clone(),
        body: parsed,
        images,
        violations: violations.clone(),
        at: Instant::now(),
    });
    if authorization.as_deref() != Some(&format!("Bearer {API_KEY}")) {
        return error(401, "InvalidApiKey", None);
    }
    if !violations.is_empty() {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({
            "request_id": "req-bad", "code": "InvalidParameter", "message": violations.join("; ")
        })))
            .into_response();
    }
    let reply = s.script.lock().unwrap().pop_front().unwrap_or(Reply::Ok(n));
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    match reply {
        Reply::Ok(count) => {
            let _ = s.held.subscribe().wait_for(|held| !*held).await;
            let latency = *s.latency.lock().unwrap();
            tokio::time::sleep(latency).await;
            let urls: Vec<String> = (0..count)
                .map(|i| format!("http://{host}/results/{i}.png?Expires=1&Signature=x"))
                .collect();
            success(&urls)
        }
        Reply::MissingResult => success(&[format!("http://{host}/results/missing.png")]),
        Reply::Redirect { other_host } => {
            let name = if other_host {
                "redirect-other"
            } else {
                "redirect-same"
            };
            success(&[format!("http://{host}/results/{name}.png")])
        }
        Reply::Error {
            status,
            code,
            retry_after,
        } => error(status, code, retry_after),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            error(500, "InternalError", None)
        }
        Reply::Malformed => (StatusCode::OK, "<html>gateway</html>").into_response(),
        Reply::CodeWith200(code) => (
            StatusCode::OK,
            axum::Json(json!({
                "request_id": "req-200", "code": code, "message": "something failed"
            })),
        )
            .into_response(),
    }
}

fn success(urls: &[String]) -> Response {
    let content: Vec<Value> = urls.iter().map(|u| json!({ "image": u })).collect();
    axum::Json(json!({
        "output": { "choices": [ { "finish_reason": "stop",
            "message": { "role": "assistant", "content": content } } ] },
        "usage": { "width": 64, "height": 48, "image_count": urls.len() },
        "request_id": "req-ok-1"
    }))
    .into_response()
}

fn error(status: u16, code: &str, retry_after: Option<&str>) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(
            json!({ "request_id": "req-err", "code": code, "message": format!("{code} happened") }),
        ),
    )
        .into_response();
    if let Some(ra) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, ra.parse().unwrap());
    }
    resp
}

/// Checks a request body against docs/DASHSCOPE.md §1.4; returns the images seen and what is wrong.
fn check_contract(body: &Value, model: &str) -> (Vec<(String, u32, u32)>, Vec<String>) {
    let mut bad = Vec::new();
    let mut images = Vec::new();
    if body["model"].as_str() != Some(model) {
        bad.push(format!("model is {:?}, expected {model:?}", body["model"]));
    }
    let messages = body["input"]["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if messages.len() != 1 {
        bad.push(format!(
            "messages length only support 1 (got {})",
            messages.len()
        ));
    }
    let Some(message) = messages.first() else {
        return (images, bad);
    };
    if message["role"] != "user" {
        bad.push("role must be user".into());
    }
    let content = message["content"].as_array().cloned().unwrap_or_default();
    let texts: Vec<&Value> = content.iter().filter(|p| p.get("text").is_some()).collect();
    if texts.len() != 1 {
        bad.push(format!("exactly one text expected, got {}", texts.len()));
    }
    if let Some(text) = texts.first().and_then(|t| t["text"].as_str())
        && (text.chars().count() > 800 || text.trim().is_empty())
    {
        bad.push(format!("text has {} characters", text.chars().count()));
    }
    for part in content.iter().filter_map(|p| p.get("image")) {
        let uri = part.as_str().unwrap_or("");
        match decode_data_uri(uri) {
            Ok(img) => images.push(img),
            Err(e) => bad.push(e),
        }
    }
    if images.is_empty() || images.len() > 3 {
        bad.push(format!("1-3 images expected, got {}", images.len()));
    }
    let n = body["parameters"]["n"].as_u64().unwrap_or(1);
    let max_n = if model == "qwen-image-edit" { 1 } else { 6 };
    if n < 1 || n > max_n {
        bad.push("num_images_per_prompt out of range".into());
    }
    if model == "qwen-image-edit" && body["parameters"].get("prompt_extend").is_some() {
        bad.push("prompt_extend is not supported by qwen-image-edit".into());
    }
    (images, bad)
}

fn decode_data_uri(uri: &str) -> Result<(String, u32, u32), String> {
    if uri.len() > 10 * 1024 * 1024 {
        return Err("Exceeded limit on max bytes per data-uri item : 10485760".into());
    }
    let rest = uri
        .strip_prefix("data:")
        .ok_or("image format error: not a data URI")?;
    let (mime, b64) = rest
        .split_once(";base64,")
        .ok_or("image format error: no ;base64,")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "image format error: bad base64".to_string())?;
    let format = image::guess_format(&bytes).map_err(|_| "read image error.".to_string())?;
    if format.to_mime_type() != mime {
        return Err(format!(
            "declared {mime} but the bytes are {}",
            format.to_mime_type()
        ));
    }
    let (w, h) = image::ImageReader::with_format(std::io::Cursor::new(&bytes), format)
        .into_dimensions()
        .map_err(|_| "Invalid image format or corrupted file".to_string())?;
    if !(384..=3072).contains(&w) || !(384..=3072).contains(&h) {
        return Err(format!(
            "the size of input image is too small or too large ({w}x{h})"
        ));
    }
    Ok((mime.to_owned(), w, h))
}

async fn result(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    s.downloads.lock().unwrap().push(auth);
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    s.fetched
        .lock()
        .unwrap()
        .push(format!("{host}/results/{name}"));
    s.fetched_at.lock().unwrap().push(std::time::Instant::now());
    let port = host.rsplit(':').next().unwrap_or("");
    let to = match name.as_str() {
        "redirect-same.png" => Some(format!("http://{host}/results/0.png")),
        "redirect-other.png" => Some(format!("http://localhost:{port}/results/0.png")),
        _ => None,
    };
    if let Some(to) = to {
        return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
    }
    let Some(index) = name.strip_suffix(".png").and_then(|i| i.parse::<u8>().ok()) else {
        return (StatusCode::NOT_FOUND, "NoSuchKey").into_response();
    };
    if let Some(bytes) = s.result_bytes.lock().unwrap().clone() {
        return ([(header::CONTENT_TYPE, "image/png")], bytes).into_response();
    }
    let (w, h) = *s.result_size.lock().unwrap();
    let png = super::images::png_solid(w, h, [index.wrapping_mul(40), 120, 200]);
    ([(header::CONTENT_TYPE, "image/png")], png).into_response()
}

/// `GET /tasks/{id}`: DashScope answers an unknown task with `UNKNOWN` (key checked first).
async fn task(Path(id): Path<String>, headers: HeaderMap) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {API_KEY}")) {
        let body = json!({"code": "InvalidApiKey", "message": "Invalid API-key provided.",
            "request_id": "probe-req"});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    axum::Json(json!({"request_id": "probe-req",
        "output": {"task_id": id, "task_status": "UNKNOWN"}}))
    .into_response()
}
