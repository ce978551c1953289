//! A fake ComfyUI on 127.0.0.1 serving its HTTP API and its websocket on one port, as the real
//! server does: `/upload/image`, `/prompt` (validated like `execution.validate_prompt`: links
//! must name nodes, `LoadImage` must name uploaded files, one output node at least),
//! `/history/{id}`, `/view`, `/system_stats`, `/queue` and `/ws`. A queued prompt "runs" in a
//! task that pushes the real message sequence to the client's socket and then writes history.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request, Response as WsResponse,
};

use super::multipart;

/// What the run of the next accepted prompt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Every node runs; the output node saves `amount` images.
    Ok,
    /// The sampler raises this exception (`execution_error`).
    ExecutionError(&'static str),
    /// The socket is cut (no close frame) right after `execution_start`; the run finishes.
    DropSocket,
    /// The socket stays open but says nothing about the run; the run finishes.
    Silent,
    /// Someone presses "cancel" on the server (`execution_interrupted`).
    Interrupted,
}

/// One `/upload/image` as the fake saw it.
#[derive(Debug, Clone)]
pub struct Upload {
    pub filename: String,
    pub kind: Option<String>,
    pub overwrite: Option<String>,
    pub bytes: Vec<u8>,
}

/// One `/prompt` body and what was wrong with it.
#[derive(Debug, Clone)]
pub struct SeenPrompt {
    pub body: Value,
    pub violations: Vec<String>,
}

/// One websocket handshake.
#[derive(Debug, Clone)]
pub struct SeenSocket {
    pub client_id: String,
    pub auth: Option<String>,
}

type Outbox = mpsc::UnboundedSender<Option<Message>>;

#[derive(Default)]
struct Inner {
    script: Mutex<VecDeque<Run>>,
    fail_prompts: AtomicUsize,
    reject_workflow: AtomicBool,
    refuse_sockets: AtomicBool,
    auth: Mutex<Option<(String, String)>>,
    uploads: Mutex<Vec<Upload>>,
    files: Mutex<HashSet<String>>,
    prompts: Mutex<Vec<SeenPrompt>>,
    prompt_calls: AtomicUsize,
    http_auth: Mutex<Vec<(String, Option<String>)>>,
    sockets_seen: Mutex<Vec<SeenSocket>>,
    sockets: Mutex<HashMap<String, Outbox>>,
    history: Mutex<HashMap<String, Value>>,
    outputs: Mutex<HashMap<String, u8>>,
    views: Mutex<Vec<HashMap<String, String>>>,
    counter: AtomicUsize,
}

/// A running fake; it lives until the test's runtime ends.
#[derive(Clone)]
pub struct FakeComfy {
    pub base_url: String,
    inner: Arc<Inner>,
}

impl FakeComfy {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let router = Router::new()
            .route("/upload/image", post(upload))
            .route("/prompt", post(prompt))
            .route("/history/{id}", get(history))
            .route("/view", get(view))
            .route("/system_stats", get(system_stats))
            .route("/queue", post(queue))
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(inner.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(accept(listener, inner.clone(), router));
        Self {
            base_url: format!("http://{addr}"),
            inner,
        }
    }

    /// Runs of the next accepted prompts; then every run is [`Run::Ok`].
    pub fn script(&self, runs: impl IntoIterator<Item = Run>) {
        self.inner.script.lock().unwrap().extend(runs);
    }

    /// The next `k` calls of `/prompt` answer 503.
    pub fn fail_prompts(&self, k: usize) {
        self.inner.fail_prompts.store(k, Ordering::SeqCst);
    }

    /// Every `/prompt` answers 400 with `node_errors` (a model file the server lacks).
    pub fn reject_workflow(&self) {
        self.inner.reject_workflow.store(true, Ordering::SeqCst);
    }

    /// Websocket handshakes answer 503 (a proxy that does not pass websockets).
    pub fn refuse_sockets(&self) {
        self.inner.refuse_sockets.store(true, Ordering::SeqCst);
    }

    /// Every request (HTTP and websocket) must carry `header: value`, or gets 401.
    pub fn require_auth(&self, header: &str, value: &str) {
        *self.inner.auth.lock().unwrap() = Some((header.to_ascii_lowercase(), value.to_owned()));
    }

    pub fn uploads(&self) -> Vec<Upload> {
        self.inner.uploads.lock().unwrap().clone()
    }

    pub fn prompts(&self) -> Vec<SeenPrompt> {
        self.inner.prompts.lock().unwrap().clone()
    }

    pub fn prompt_calls(&self) -> usize {
        self.inner.prompt_calls.load(Ordering::SeqCst)
    }

    /// (path, value of the auth header) of every HTTP request.
    pub fn http_auth(&self) -> Vec<(String, Option<String>)> {
        self.inner.http_auth.lock().unwrap().clone()
    }

    pub fn sockets(&self) -> Vec<SeenSocket> {
        self.inner.sockets_seen.lock().unwrap().clone()
    }

    /// Query parameters of every `/view`.
    pub fn views(&self) -> Vec<HashMap<String, String>> {
        self.inner.views.lock().unwrap().clone()
    }
}

impl Inner {
    /// Records the request's auth header; false when one is required and it is not right.
    fn authorized(&self, path: &str, headers: &HeaderMap) -> bool {
        let required = self.auth.lock().unwrap().clone();
        let name = required
            .as_ref()
            .map_or("authorization".to_owned(), |(h, _)| h.clone());
        let got = headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.http_auth
            .lock()
            .unwrap()
            .push((path.to_owned(), got.clone()));
        required.is_none_or(|(_, want)| got.as_deref() == Some(want.as_str()))
    }

    fn send(&self, client: &str, msg: Message) {
        if let Some(out) = self.sockets.lock().unwrap().get(client) {
            let _ = out.send(Some(msg));
        }
    }

    fn send_json(&self, client: &str, kind: &str, data: Value) {
        self.send(
            client,
            Message::Text(json!({ "type": kind, "data": data }).to_string()),
        );
    }

    /// Cuts the client's socket without a close frame.
    fn cut(&self, client: &str) {
        if let Some(out) = self.sockets.lock().unwrap().remove(client) {
            let _ = out.send(None);
        }
    }
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, "401: Unauthorized").into_response()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// One port: a websocket upgrade or plain HTTP, told apart by the request line.

async fn accept(listener: TcpListener, inner: Arc<Inner>, router: Router) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (inner, router) = (inner.clone(), router.clone());
        tokio::spawn(async move {
            if asks_for_socket(&stream).await {
                socket(stream, inner).await;
            } else {
                let service = hyper_util::service::TowerToHyperService::new(router);
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            }
        });
    }
}

/// Whether the connection's first bytes are `GET /ws` (peeked, so nothing is consumed).
async fn asks_for_socket(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 16];
    for _ in 0..500 {
        match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if n >= 8 => return buf.starts_with(b"GET /ws?") || buf.starts_with(b"GET /ws "),
            Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    false
}

// tungstenite's handshake callback returns its own (large) error response type; we cannot box it.
#[allow(clippy::result_large_err)]
async fn socket(stream: TcpStream, s: Arc<Inner>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<Message>>();
    let sid_cell: Mutex<Option<String>> = Mutex::new(None);
    let sid_ref = &sid_cell;
    let state = s.clone();
    let outbox = tx.clone();
    let callback = move |req: &Request, resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
        let query = req.uri().query().unwrap_or("");
        let client_id = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("clientId="))
            .unwrap_or("")
            .to_owned();
        let required = state.auth.lock().unwrap().clone();
        let name = required
            .as_ref()
            .map_or("authorization".to_owned(), |(h, _)| h.clone());
        let auth = req
            .headers()
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        state.sockets_seen.lock().unwrap().push(SeenSocket {
            client_id: client_id.clone(),
            auth: auth.clone(),
        });
        let refuse = |status: u16| -> Result<WsResponse, ErrorResponse> {
            let mut r = ErrorResponse::new(Some("refused".to_owned()));
            *r.status_mut() =
                tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status).unwrap();
            Err(r)
        };
        if required.is_some_and(|(_, want)| auth.as_deref() != Some(want.as_str())) {
            return refuse(401);
        }
        if state.refuse_sockets.load(Ordering::SeqCst) {
            return refuse(503);
        }
        let sid = if client_id.is_empty() {
            uuid::Uuid::new_v4().simple().to_string()
        } else {
            client_id
        };
        state.sockets.lock().unwrap().insert(sid.clone(), outbox);
        *sid_ref.lock().unwrap() = Some(sid);
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let sid = sid_cell.lock().unwrap().clone().unwrap_or_default();
    let (mut sink, mut source) = ws.split();
    let status = json!({ "type": "status", "data": {
        "status": { "exec_info": { "queue_remaining": 0 } }, "sid": sid } });
    if sink.send(Message::Text(status.to_string())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Some(msg)) => if sink.send(msg).await.is_err() { break },
                // Cut: drop both halves without a close frame.
                Some(None) | None => break,
            },
            incoming = source.next() => match incoming {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    let mut sockets = s.sockets.lock().unwrap();
    if sockets.get(&sid).is_some_and(|out| out.same_channel(&tx)) {
        sockets.remove(&sid);
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP routes

async fn upload(State(s): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    if !s.authorized("/upload/image", &headers) {
        return unauthorized();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(boundary) = multipart::boundary(content_type) else {
        return (StatusCode::BAD_REQUEST, "not multipart").into_response();
    };
    let parts = multipart::parts(&body, &boundary);
    let field = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name)
            .map(|p| String::from_utf8_lossy(p.data).into_owned())
    };
    let Some(image) = parts.iter().find(|p| p.name == "image") else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Some(filename) = image.filename.clone().filter(|f| !f.is_empty()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    s.uploads.lock().unwrap().push(Upload {
        filename: filename.clone(),
        kind: field("type"),
        overwrite: field("overwrite"),
        bytes: image.data.to_vec(),
    });
    s.files.lock().unwrap().insert(filename.clone());
    let kind = field("type").unwrap_or_else(|| "input".into());
    axum::Json(json!({ "name": filename, "subfolder": "", "type": kind })).into_response()
}

async fn prompt(State(s): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    s.prompt_calls.fetch_add(1, Ordering::SeqCst);
    if !s.authorized("/prompt", &headers) {
        return unauthorized();
    }
    let failing = s
        .fail_prompts
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1));
    if failing.is_ok() {
        return (StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable").into_response();
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let files = s.files.lock().unwrap().clone();
    let checked = if s.reject_workflow.load(Ordering::SeqCst) {
        Err(missing_model())
    } else {
        validate(&body["prompt"], &files)
    };
    let violations = match &checked {
        Ok(()) => Vec::new(),
        Err((error, _)) => vec![error["details"].as_str().unwrap_or("invalid").to_owned()],
    };
    s.prompts.lock().unwrap().push(SeenPrompt {
        body: body.clone(),
        violations,
    });
    if let Err((error, node_errors)) = checked {
        let answer = json!({ "error": error, "node_errors": node_errors });
        return (StatusCode::BAD_REQUEST, axum::Json(answer)).into_response();
    }
    let id = uuid::Uuid::new_v4().to_string();
    let number = s.prompt_calls.load(Ordering::SeqCst);
    let run = s.script.lock().unwrap().pop_front().unwrap_or(Run::Ok);
    let client = body["client_id"].as_str().unwrap_or("").to_owned();
    tokio::spawn(execute(
        s.clone(),
        id.clone(),
        client,
        body["prompt"].clone(),
        run,
    ));
    axum::Json(json!({ "prompt_id": id, "number": number, "node_errors": {} })).into_response()
}

async fn history(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !s.authorized("/history", &headers) {
        return unauthorized();
    }
    let entry = s.history.lock().unwrap().get(&id).cloned();
    match entry {
        Some(entry) => {
            let mut answer = serde_json::Map::new();
            answer.insert(id, entry);
            axum::Json(Value::Object(answer)).into_response()
        }
        None => axum::Json(json!({})).into_response(),
    }
}

async fn view(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !s.authorized("/view", &headers) {
        return unauthorized();
    }
    s.views.lock().unwrap().push(q.clone());
    let index = q
        .get("filename")
        .and_then(|f| s.outputs.lock().unwrap().get(f).copied());
    match (index, q.get("type").map(String::as_str)) {
        (Some(i), Some("output")) => {
            let png = super::images::png_solid(64, 48, [i.wrapping_mul(40), 120, 200]);
            ([(header::CONTENT_TYPE, "image/png")], png).into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn system_stats(State(s): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    if !s.authorized("/system_stats", &headers) {
        return unauthorized();
    }
    axum::Json(json!({
        "system": { "os": "posix", "ram_total": 67_108_864_000u64, "ram_free": 50_000_000_000u64,
            "comfyui_version": "0.3.60", "python_version": "3.12.3", "pytorch_version": "2.8.0+cu128",
            "embedded_python": false, "argv": ["main.py", "--listen"] },
        "devices": [ { "name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", "type": "cuda",
            "index": 0, "vram_total": 25_757_220_864u64, "vram_free": 24_000_000_000u64,
            "torch_vram_total": 0, "torch_vram_free": 0 } ]
    }))
    .into_response()
}

async fn queue(State(s): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    if !s.authorized("/queue", &headers) {
        return unauthorized();
    }
    StatusCode::OK.into_response()
}

// ---------------------------------------------------------------------------------------------
// Validation, as `execution.validate_prompt` reports it

type Refusal = (Value, Value);

fn refusal(kind: &str, message: &str, details: &str, node_errors: Value) -> Refusal {
    (
        json!({ "type": kind, "message": message, "details": details, "extra_info": {} }),
        node_errors,
    )
}

fn validate(prompt: &Value, files: &HashSet<String>) -> Result<(), Refusal> {
    let Some(nodes) = prompt.as_object() else {
        return Err(refusal(
            "invalid_prompt",
            "no prompt",
            "the prompt is not an object",
            json!({}),
        ));
    };
    let mut node_errors = serde_json::Map::new();
    for (id, node) in nodes {
        let Some(class) = node["class_type"].as_str() else {
            let details = format!("Node ID '#{id}'");
            return Err(refusal(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                &details,
                json!({}),
            ));
        };
        let mut errors = Vec::new();
        for (name, input) in node["inputs"].as_object().into_iter().flatten() {
            if let Some([Value::String(to), _]) = input.as_array().map(Vec::as_slice)
                && !nodes.contains_key(to)
            {
                errors.push(json!({ "type": "exception_during_validation",
                    "message": "Exception when validating node", "details": format!("'{to}' (input {name})"), "extra_info": {} }));
            }
        }
        if class == "LoadImage" {
            let image = node["inputs"]["image"].as_str().unwrap_or("");
            if !files.contains(image) {
                errors.push(json!({ "type": "custom_validation_failed", "message": "Custom validation failed for node",
                    "details": format!("image - Invalid image file: {image}"), "extra_info": { "input_name": "image" } }));
            }
        }
        if !errors.is_empty() {
            node_errors.insert(
                id.clone(),
                json!({ "errors": errors, "dependent_outputs": ["60"], "class_type": class }),
            );
        }
    }
    if !nodes
        .values()
        .any(|n| n["class_type"] == "SaveImage" || n["class_type"] == "PreviewImage")
    {
        return Err(refusal(
            "prompt_no_outputs",
            "Prompt has no outputs",
            "",
            json!({}),
        ));
    }
    if node_errors.is_empty() {
        return Ok(());
    }
    let details: Vec<String> = node_errors
        .values()
        .flat_map(|n| n["errors"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            format!(
                "{}: {}",
                e["message"].as_str().unwrap_or(""),
                e["details"].as_str().unwrap_or("")
            )
        })
        .collect();
    Err(refusal(
        "prompt_outputs_failed_validation",
        "Prompt outputs failed validation",
        &details.join("\n"),
        Value::Object(node_errors),
    ))
}

/// The refusal of a workflow whose diffusion model the server does not have.
fn missing_model() -> Refusal {
    let details = "unet_name: 'qwen_image_edit_2509_fp8_e4m3fn.safetensors' not in []";
    let node_errors = json!({ "37": { "errors": [ { "type": "value_not_in_list", "message": "Value not in list",
        "details": details, "extra_info": { "input_name": "unet_name", "input_config": null,
        "received_value": "qwen_image_edit_2509_fp8_e4m3fn.safetensors" } } ],
        "dependent_outputs": ["60"], "class_type": "UNETLoader" } });
    refusal(
        "prompt_outputs_failed_validation",
        "Prompt outputs failed validation",
        &format!("Value not in list: {details}"),
        node_errors,
    )
}

// ---------------------------------------------------------------------------------------------
// A run

/// The nodes in an order where each comes after those it links to.
fn topological(prompt: &Value) -> Vec<String> {
    fn visit(id: &str, prompt: &Value, done: &mut Vec<String>, seen: &mut HashSet<String>) {
        if !seen.insert(id.to_owned()) {
            return;
        }
        for input in prompt[id]["inputs"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            if let Some([Value::String(to), _]) = input.as_array().map(Vec::as_slice) {
                visit(to, prompt, done, seen);
            }
        }
        done.push(id.to_owned());
    }
    let (mut done, mut seen) = (Vec::new(), HashSet::new());
    for id in prompt.as_object().into_iter().flat_map(|m| m.keys()) {
        visit(id, prompt, &mut done, &mut seen);
    }
    done
}

async fn execute(s: Arc<Inner>, id: String, client: String, prompt: Value, run: Run) {
    let step = || tokio::time::sleep(Duration::from_millis(2));
    // Another client's prompt ending: ours must not take it for its own.
    s.send_json(
        &client,
        "executing",
        json!({ "node": null, "display_node": null, "prompt_id": "someone-else" }),
    );
    s.send_json(
        &client,
        "progress",
        json!({ "value": 3, "max": 4, "prompt_id": "someone-else", "node": "3" }),
    );
    let start = json!({ "prompt_id": id, "timestamp": now_ms() });
    let cached = json!({ "nodes": [], "prompt_id": id, "timestamp": now_ms() });
    s.send_json(&client, "execution_start", start.clone());
    s.send_json(&client, "execution_cached", cached.clone());
    let mut messages = vec![
        json!(["execution_start", start]),
        json!(["execution_cached", cached]),
    ];
    let quiet = match run {
        Run::DropSocket => {
            step().await;
            s.cut(&client);
            true
        }
        Run::Silent => true,
        _ => false,
    };
    let say = |kind: &str, data: Value| {
        if !quiet {
            s.send_json(&client, kind, data);
        }
    };
    let amount = prompt
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .find(|n| n["class_type"] == "RepeatLatentBatch")
        .and_then(|n| n["inputs"]["amount"].as_u64())
        .unwrap_or(1);
    let mut outputs = serde_json::Map::new();
    let mut executed = Vec::new();
    for node in topological(&prompt) {
        step().await;
        let class = prompt[&node]["class_type"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        say(
            "executing",
            json!({ "node": node, "display_node": node, "prompt_id": id }),
        );
        if class == "KSampler" {
            match run {
                Run::ExecutionError(text) => {
                    let data = json!({ "prompt_id": id, "node_id": node, "node_type": class, "executed": executed,
                        "exception_message": text, "exception_type": "RuntimeError",
                        "traceback": ["  File \"execution.py\", line 1, in execute\n"],
                        "current_inputs": {}, "current_outputs": [], "timestamp": now_ms() });
                    return finish_failed(
                        &s,
                        &id,
                        &client,
                        &prompt,
                        messages,
                        "execution_error",
                        data,
                    )
                    .await;
                }
                Run::Interrupted => {
                    let data = json!({ "prompt_id": id, "node_id": node, "node_type": class,
                        "executed": executed, "timestamp": now_ms() });
                    return finish_failed(
                        &s,
                        &id,
                        &client,
                        &prompt,
                        messages,
                        "execution_interrupted",
                        data,
                    )
                    .await;
                }
                _ => {}
            }
            for value in 1..=4 {
                say(
                    "progress",
                    json!({ "value": value, "max": 4, "prompt_id": id, "node": node }),
                );
                if !quiet {
                    // A preview frame: event 1 (PREVIEW_IMAGE), format 1 (JPEG), then bytes.
                    s.send(
                        &client,
                        Message::Binary(vec![0, 0, 0, 1, 0, 0, 0, 1, 0xFF, 0xD8, 0xFF, 0xD9]),
                    );
                }
            }
        }
        if class == "SaveImage" {
            let images: Vec<Value> = (0..amount)
                .map(|_| {
                    let k = s.counter.fetch_add(1, Ordering::SeqCst) + 1;
                    let filename = format!("qwen-edit-bot_{k:05}_.png");
                    s.outputs.lock().unwrap().insert(filename.clone(), k as u8);
                    json!({ "filename": filename, "subfolder": "", "type": "output" })
                })
                .collect();
            let output = json!({ "images": images });
            say(
                "executed",
                json!({ "node": node, "display_node": node, "output": output, "prompt_id": id }),
            );
            outputs.insert(node.clone(), output);
        }
        executed.push(node);
    }
    let success = json!({ "prompt_id": id, "timestamp": now_ms() });
    say("execution_success", success.clone());
    messages.push(json!(["execution_success", success]));
    if quiet {
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let entry = json!({
        "prompt": [0, id, prompt, { "client_id": client }, ["60"]],
        "outputs": outputs,
        "status": { "status_str": "success", "completed": true, "messages": messages },
        "meta": {}
    });
    s.history.lock().unwrap().insert(id.clone(), entry);
    say("executing", json!({ "node": null, "prompt_id": id }));
}

async fn finish_failed(
    s: &Inner,
    id: &str,
    client: &str,
    prompt: &Value,
    mut messages: Vec<Value>,
    kind: &str,
    data: Value,
) {
    s.send_json(client, kind, data.clone());
    messages.push(json!([kind, data]));
    let entry = json!({
        "prompt": [0, id, prompt, { "client_id": client }, ["60"]],
        "outputs": {},
        "status": { "status_str": "error", "completed": false, "messages": messages },
        "meta": {}
    });
    s.history.lock().unwrap().insert(id.to_owned(), entry);
    s.send_json(
        client,
        "executing",
        json!({ "node": null, "prompt_id": id }),
    );
}
