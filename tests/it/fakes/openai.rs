//! A fake OpenAI-compatible images API on 127.0.0.1: `POST /v1/images/edits` (multipart, as
//! OpenAI documents it), `GET /v1/models`, and the result files it hands out as URLs. Answers
//! follow a per-call script; every request is recorded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::json;

use super::images;
use super::multipart;

pub const API_KEY: &str = "sk-openai-test-0123456789";

/// What the fake does on one edit call.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// 200 with `n` images inline (`b64_json`).
    Inline,
    /// 200 with `n` URLs served by the fake.
    Urls,
    /// An error status with an OpenAI error body (`error.type`, `error.code`).
    Error {
        status: u16,
        kind: &'static str,
        code: Option<&'static str>,
    },
}

/// One multipart field as received.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub filename: Option<String>,
    pub data: Vec<u8>,
}

/// One edit request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub authorization: Option<String>,
    pub fields: Vec<Field>,
}

impl Seen {
    /// The text of the first field called `name`.
    pub fn text(&self, name: &str) -> Option<String> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| String::from_utf8_lossy(&f.data).into_owned())
    }

    /// Every field called `image[]`.
    pub fn images(&self) -> Vec<&Field> {
        self.fields.iter().filter(|f| f.name == "image[]").collect()
    }
}

#[derive(Default)]
struct Inner {
    script: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
    downloads: AtomicUsize,
}

/// A running fake; its API is at `base_url` (ending in `/v1`).
#[derive(Clone)]
pub struct FakeOpenAi {
    pub base_url: String,
    inner: Arc<Inner>,
}

impl FakeOpenAi {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/v1/images/edits", post(edit))
            .route("/v1/models", get(models))
            .route("/files/{name}", get(file))
            .with_state(inner.clone());
        let addr = super::serve(app).await;
        Self {
            base_url: format!("http://{addr}/v1"),
            inner,
        }
    }

    /// Queues what the next calls answer (after the script: `Inline`).
    pub fn script(&self, replies: &[Reply]) {
        self.inner.script.lock().unwrap().extend(replies);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
    }

    pub fn downloads(&self) -> usize {
        self.inner.downloads.load(Ordering::SeqCst)
    }
}

async fn edit(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(boundary) = multipart::boundary(content_type) else {
        return error(400, "invalid_request_error", Some("not_multipart"));
    };
    let fields: Vec<Field> = multipart::parts(&body, &boundary)
        .into_iter()
        .map(|p| Field {
            name: p.name,
            filename: p.filename,
            data: p.data.to_vec(),
        })
        .collect();
    let seen = Seen {
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        fields,
    };
    let n: usize = seen.text("n").and_then(|n| n.parse().ok()).unwrap_or(1);
    let authorized = seen.authorization.as_deref() == Some(&format!("Bearer {API_KEY}"));
    inner.seen.lock().unwrap().push(seen);
    if !authorized {
        return error(401, "invalid_request_error", Some("invalid_api_key"));
    }
    let reply = inner
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Inline);
    let png = images::png(640, 480);
    match reply {
        Reply::Inline => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
            let data: Vec<_> = (0..n).map(|_| json!({ "b64_json": b64 })).collect();
            axum::Json(json!({ "created": 1_700_000_000, "data": data })).into_response()
        }
        Reply::Urls => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("127.0.0.1");
            let data: Vec<_> = (0..n)
                .map(|i| json!({ "url": format!("http://{host}/files/out-{i}.png") }))
                .collect();
            axum::Json(json!({ "created": 1_700_000_000, "data": data })).into_response()
        }
        Reply::Error { status, kind, code } => error(status, kind, code),
    }
}

fn error(status: u16, kind: &str, code: Option<&str>) -> Response {
    let body = json!({ "error": {
        "message": format!("fake {kind}"),
        "type": kind,
        "param": null,
        "code": code,
    }});
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn models(headers: HeaderMap) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {API_KEY}"));
    if !authorized {
        return error(401, "invalid_request_error", Some("invalid_api_key"));
    }
    axum::Json(json!({ "object": "list", "data": [
        { "id": "Qwen/Qwen-Image-Edit-2509", "object": "model", "owned_by": "local" },
        { "id": "other", "object": "model", "owned_by": "local" },
    ]}))
    .into_response()
}

async fn file(State(inner): State<Arc<Inner>>) -> Response {
    inner.downloads.fetch_add(1, Ordering::SeqCst);
    ([(header::CONTENT_TYPE, "image/png")], images::png(640, 480)).into_response()
}
