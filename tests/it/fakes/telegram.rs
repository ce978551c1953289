//! A fake Telegram Bot API on 127.0.0.1 that the real teloxide client talks to.
//!
//! It matches method names case-insensitively (teloxide sends `SendPhoto`), answers `getUpdates`
//! as a real long poll, parses multipart uploads itself, records every call, serves registered
//! files under `/file/bot<TOKEN>/...`, and can be scripted to fail the next calls to a method.
//! Every answer is shaped so that teloxide's strict serde accepts it; every fixture builder
//! checks its output against teloxide's types so a bad fixture fails loudly instead of being
//! dropped by the dispatcher as "Cannot parse an update".

use std::collections::{HashMap, VecDeque};

use super::multipart;
use std::io::Cursor;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

pub const TOKEN: &str = "123456:TEST-token_abcdefghijklmnop";
pub const BOT_ID: i64 = 123456;
pub const BOT_USERNAME: &str = "QwenEditBot";

/// One Bot API request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// Lower-cased method name, e.g. `sendphoto`.
    pub method: String,
    /// The JSON body, or the text fields of a multipart body (JSON-looking values parsed).
    pub params: Value,
    /// Multipart file parts: (part name, bytes).
    pub files: Vec<(String, Vec<u8>)>,
    /// When the fake had read the whole request (which may be after its sender died).
    pub at: Instant,
    /// The path segment before `/bot<token>` when `api_url` had one (see [`FakeTelegram::url_via`]),
    /// so a test can tell which client sent a call; empty otherwise.
    pub via: String,
}

impl Call {
    /// A parameter as an integer, whether it came as a JSON number or a multipart string.
    pub fn int(&self, key: &str) -> Option<i64> {
        int_param(&self.params, key)
    }

    /// A string parameter.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.params.get(key).and_then(Value::as_str)
    }

    pub fn chat_id(&self) -> Option<i64> {
        self.int("chat_id")
    }

    /// The bytes a field refers to: `attach://name` resolved to the part `name`, else a file
    /// part named like the field itself.
    pub fn file(&self, field: &str) -> Option<&[u8]> {
        let name = self
            .str(field)
            .and_then(|v| v.strip_prefix("attach://"))
            .unwrap_or(field);
        self.attachment(name)
    }

    /// The bytes of the file part called `name`.
    pub fn attachment(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }
}

/// A message of the bot's as the chat shows it now.
#[derive(Debug, Clone)]
pub struct Shown {
    pub chat: i64,
    pub message: i64,
    /// The message it replies to.
    pub reply_to: Option<i64>,
    /// A result was put into it (`editMessageMedia`).
    pub result: bool,
    /// Its text or caption.
    pub text: String,
}

/// At most `max` messages in any `per`: in one chat, in one group chat (negative ids), and
/// in all chats together, as Telegram documents for bots (about 1 a second in a chat, 20 a
/// minute in a group, 30 a second overall), scaled as a test needs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub chat: (usize, Duration),
    pub group: (usize, Duration),
    pub overall: (usize, Duration),
}

/// How a scripted call fails.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// 429 with `parameters.retry_after`; teloxide turns it into `RequestError::RetryAfter`.
    TooManyRequests { retry_after: u32 },
    /// 500. Note: teloxide sleeps 10 s (real time) after any 5xx before reading the body.
    ServerError,
    /// 400 with this description (teloxide maps known ones to `ApiError` variants).
    BadRequest(&'static str),
    /// 403 with this description, e.g. "Forbidden: bot was blocked by the user".
    Forbidden(&'static str),
    /// The call takes effect, then the connection breaks before the answer is whole: the bot
    /// cannot know it arrived.
    LoseResponse,
}

#[derive(Default)]
struct Queue {
    last_id: i64,
    pending: VecDeque<Value>,
}

struct Inner {
    calls: Mutex<Vec<Call>>,
    polls: Mutex<Vec<Call>>,
    queue: Mutex<Queue>,
    arrived: Notify,
    last_offset: AtomicI64,
    next_message_id: AtomicI32,
    messages: Mutex<HashMap<(i64, i64), Value>>,
    files: Mutex<HashMap<String, Vec<u8>>>,
    downloads: Mutex<Vec<String>>,
    faults: Mutex<HashMap<String, VecDeque<Fault>>>,
    members: Mutex<HashMap<(i64, i64), String>>,
    /// The `reply_parameters` each message the bot sent was sent with, by (chat, message).
    replies: Mutex<HashMap<(i64, i64), Value>>,
    /// The `editMessageMedia` calls that succeeded.
    results: Mutex<Vec<Call>>,
    /// Telegram's limits, when enforced ([`FakeTelegram::limit`]), and what they counted.
    limits: Mutex<Option<Limits>>,
    counted: Mutex<HashMap<Option<i64>, VecDeque<Instant>>>,
    /// Calls answered 429 by the limits.
    throttled: AtomicUsize,
    /// Methods whose calls wait (see [`FakeTelegram::hold`]).
    held: tokio::sync::watch::Sender<std::collections::HashSet<String>>,
    /// `getUpdates` calls being answered now, and those refused because one was.
    polling: AtomicUsize,
    conflicts: AtomicUsize,
}

/// A running fake. It lives until the test's runtime ends.
#[derive(Clone)]
pub struct FakeTelegram {
    /// `http://127.0.0.1:PORT`, to pass to `Bot::set_api_url`.
    pub url: String,
    inner: Arc<Inner>,
}

/// Locks, ignoring poison: a failed assertion elsewhere must not take the server down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeTelegram {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner {
            calls: Mutex::default(),
            polls: Mutex::default(),
            queue: Mutex::default(),
            arrived: Notify::new(),
            last_offset: AtomicI64::new(0),
            next_message_id: AtomicI32::new(1000),
            messages: Mutex::default(),
            files: Mutex::default(),
            downloads: Mutex::default(),
            faults: Mutex::default(),
            members: Mutex::default(),
            replies: Mutex::default(),
            results: Mutex::default(),
            limits: Mutex::default(),
            counted: Mutex::default(),
            throttled: AtomicUsize::new(0),
            held: Default::default(),
            polling: AtomicUsize::new(0),
            conflicts: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/file/{bot}/{*path}", get(download))
            .route("/{bot}/{method}", any(api))
            .route("/{via}/file/{bot}/{*path}", get(download_via))
            .route("/{via}/{bot}/{method}", any(api_via))
            .with_state(inner.clone());
        let addr = super::serve(app).await;
        Self {
            url: format!("http://{addr}"),
            inner,
        }
    }

    /// `getUpdates` calls refused with 409 because another was being answered (two pollers).
    pub fn conflicts(&self) -> usize {
        self.inner.conflicts.load(Ordering::SeqCst)
    }

    /// `api_url` for a client whose calls are to carry `via` (see [`Call::via`]).
    pub fn url_via(&self, via: &str) -> String {
        format!("{}/{via}", self.url)
    }

    /// Queues an update (without `update_id`; ids start at 1) and wakes any long poll.
    /// Panics if teloxide could not parse it.
    pub fn push_update(&self, update: Value) -> i64 {
        let mut update = update;
        assert!(
            update.is_object(),
            "an update must be a JSON object: {update}"
        );
        update["update_id"] = json!(0);
        validate_update(&update);
        let id = {
            let mut queue = lock(&self.inner.queue);
            queue.last_id += 1;
            update["update_id"] = json!(queue.last_id);
            queue.pending.push_back(update);
            queue.last_id
        };
        self.inner.arrived.notify_waiters();
        id
    }

    /// Makes `file_id` known to getFile (as `photos/<file_id>.jpg`) and downloadable.
    pub fn add_file(&self, file_id: &str, bytes: Vec<u8>) {
        lock(&self.inner.files).insert(file_id.to_owned(), bytes);
    }

    /// Every call so far except getUpdates (see [`Self::polls`]).
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.inner.calls).clone()
    }

    /// The getUpdates calls so far.
    pub fn polls(&self) -> Vec<Call> {
        lock(&self.inner.polls).clone()
    }

    /// Calls to one method (case-insensitive); `getUpdates` gives the polls.
    pub fn calls_to(&self, method: &str) -> Vec<Call> {
        let method = method.to_ascii_lowercase();
        if method == "getupdates" {
            return self.polls();
        }
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }

    /// Waits (real time) for `count` calls to `method`; panics after `secs` seconds.
    pub async fn wait_for(&self, method: &str, count: usize, secs: u64) -> Vec<Call> {
        let what = format!("{count} x {method}");
        self.wait_until(&what, count, secs, || self.calls_to(method))
            .await
    }

    /// Polls `found` until it holds `count` calls, or panics after `secs` with what it saw.
    async fn wait_until(
        &self,
        what: &str,
        count: usize,
        secs: u64,
        found: impl Fn() -> Vec<Call>,
    ) -> Vec<Call> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let calls = found();
            if calls.len() >= count {
                return calls;
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = self.calls().into_iter().map(|c| c.method).collect();
                panic!(
                    "waited {secs} s for {what}, got {}; calls: {seen:?}; polls: {}",
                    calls.len(),
                    self.polls().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The results the bot put into its placeholders so far, one per `editMessageMedia` that
    /// succeeded, as the user sees the message afterwards: `method` is `sendphoto` or
    /// `senddocument` (what the message now is), `params` hold the chat, the message, the
    /// caption and keyboard the edit set and the `reply_parameters` the placeholder was sent
    /// with, and the image is the file part `photo` or `document`.
    pub fn results(&self) -> Vec<Call> {
        let replies = lock(&self.inner.replies).clone();
        lock(&self.inner.results)
            .iter()
            .map(|edit| {
                let media = &edit.params["media"];
                let kind = media["type"].as_str().unwrap_or("photo").to_owned();
                let chat = edit.chat_id().unwrap_or(0);
                let message = edit.int("message_id").unwrap_or(0);
                let mut params = json!({
                    "chat_id": chat,
                    "message_id": message,
                    kind.clone(): format!("attach://{kind}"),
                });
                if let Some(caption) = media.get("caption") {
                    params["caption"] = caption.clone();
                }
                if let Some(markup) = edit.params.get("reply_markup") {
                    params["reply_markup"] = markup.clone();
                }
                if let Some(reply) = replies.get(&(chat, message)) {
                    params["reply_parameters"] = reply.clone();
                }
                let bytes = media["media"]
                    .as_str()
                    .and_then(|m| m.strip_prefix("attach://"))
                    .and_then(|name| edit.attachment(name))
                    .unwrap_or_default()
                    .to_vec();
                Call {
                    method: format!("send{kind}"),
                    params,
                    files: vec![(kind, bytes)],
                    at: edit.at,
                    via: edit.via.clone(),
                }
            })
            .collect()
    }

    /// Every message of the bot's that the chats show now (deleted ones are gone), in order.
    pub fn shown(&self) -> Vec<Shown> {
        let replies = lock(&self.inner.replies).clone();
        let results: std::collections::HashSet<(i64, i64)> = lock(&self.inner.results)
            .iter()
            .filter_map(|c| Some((c.chat_id()?, c.int("message_id")?)))
            .collect();
        let mut shown: Vec<Shown> = lock(&self.inner.messages)
            .iter()
            .filter(|(_, m)| m["from"]["id"] == BOT_ID)
            .map(|(&(chat, message), m)| Shown {
                chat,
                message,
                reply_to: replies
                    .get(&(chat, message))
                    .and_then(|r| r["message_id"].as_i64()),
                result: results.contains(&(chat, message)),
                text: m["caption"]
                    .as_str()
                    .or(m["text"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
            })
            .collect();
        shown.sort_by_key(|s| (s.chat, s.message));
        shown
    }

    /// Every text the bot showed, in order: messages sent, captions of photos and documents
    /// sent, and captions and texts edited later. Each is its call with the text under `text`
    /// and, for edits, the `reply_parameters` the edited message was sent with.
    pub fn shown_texts(&self) -> Vec<Call> {
        let replies = lock(&self.inner.replies).clone();
        self.calls()
            .into_iter()
            .filter_map(|mut call| {
                let text = match call.method.as_str() {
                    "sendmessage" | "editmessagetext" => call.params.get("text")?.clone(),
                    "sendphoto" | "senddocument" | "editmessagecaption" => {
                        call.params.get("caption")?.clone()
                    }
                    _ => return None,
                };
                call.params["text"] = text;
                if call.method.starts_with("edit") {
                    let key = (call.chat_id()?, call.int("message_id")?);
                    if let Some(reply) = replies.get(&key) {
                        call.params["reply_parameters"] = reply.clone();
                    }
                }
                Some(call)
            })
            .collect()
    }

    /// Waits until `count` results were put into placeholders ([`Self::results`]).
    pub async fn wait_results(&self, count: usize, secs: u64) -> Vec<Call> {
        let what = format!("{count} results");
        self.wait_until(&what, count, secs, || self.results()).await
    }

    /// From now on, messages sent or edited beyond `limits` are answered 429 with the
    /// `retry_after` (whole seconds, as Telegram gives it) after which they would fit.
    pub fn limit(&self, limits: Limits) {
        *lock(&self.inner.limits) = Some(limits);
    }

    /// Someone deleted message `message` of `chat`: edits of it find nothing from now on.
    pub fn delete_message(&self, chat: i64, message: i64) {
        lock(&self.inner.messages).remove(&(chat, message));
    }

    /// Calls the limits answered 429.
    pub fn throttled(&self) -> usize {
        self.inner.throttled.load(Ordering::SeqCst)
    }

    /// The next `times` calls to `method` fail with `fault`.
    pub fn fail_next(&self, method: &str, fault: Fault, times: usize) {
        let mut faults = lock(&self.inner.faults);
        let queue = faults.entry(method.to_ascii_lowercase()).or_default();
        queue.extend(std::iter::repeat_n(fault, times));
    }

    /// Calls to `method` wait from now until [`FakeTelegram::release`].
    pub fn hold(&self, method: &str) {
        let method = method.to_ascii_lowercase();
        self.inner.held.send_modify(|held| {
            held.insert(method);
        });
    }

    pub fn release(&self, method: &str) {
        let method = method.to_ascii_lowercase();
        self.inner.held.send_modify(|held| {
            held.remove(&method);
        });
    }

    /// What getChatMember answers for this chat and user (default `member`).
    pub fn set_member_status(&self, chat_id: i64, user_id: i64, status: &str) {
        lock(&self.inner.members).insert((chat_id, user_id), status.to_owned());
    }

    /// Raw request paths of the file downloads so far.
    pub fn downloads(&self) -> Vec<String> {
        lock(&self.inner.downloads).clone()
    }

    /// The `offset` of the latest getUpdates that carried one (0 before that).
    pub fn last_offset(&self) -> i64 {
        self.inner.last_offset.load(Ordering::SeqCst)
    }

    /// The messages the bot has sent (or edited) in `chat_id`, as the fake stored them, oldest
    /// first.
    pub fn sent_messages(&self, chat_id: i64) -> Vec<Value> {
        let mut found: Vec<Value> = lock(&self.inner.messages)
            .iter()
            .filter(|((chat, _), _)| *chat == chat_id)
            .map(|(_, m)| m.clone())
            .collect();
        found.sort_by_key(|m| m["message_id"].as_i64());
        found
    }

    /// The stored message that carries the inline button with `callback_data`.
    pub fn message_with_button(&self, chat_id: i64, callback_data: &str) -> Option<Value> {
        self.sent_messages(chat_id).into_iter().find(|m| {
            m["reply_markup"]["inline_keyboard"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|row| row.as_array().into_iter().flatten())
                .any(|b| b["callback_data"] == callback_data)
        })
    }

    /// Updates queued and not yet confirmed by a later offset.
    pub fn pending_updates(&self) -> usize {
        lock(&self.inner.queue).pending.len()
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP handlers

async fn api(
    state: State<Arc<Inner>>,
    Path((bot, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, String::new(), bot, method, headers, body).await
}

async fn api_via(
    state: State<Arc<Inner>>,
    Path((via, bot, method)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, via, bot, method, headers, body).await
}

async fn handle(
    State(s): State<Arc<Inner>>,
    via: String,
    bot: String,
    method: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if bot != format!("bot{TOKEN}") {
        return error(401, "Unauthorized", None);
    }
    let method = method.to_ascii_lowercase();
    let (params, files) = parse_body(&headers, &body);
    let call = Call {
        method: method.clone(),
        params,
        files,
        at: Instant::now(),
        via,
    };
    let log = if method == "getupdates" {
        &s.polls
    } else {
        &s.calls
    };
    lock(log).push(call.clone());
    let _ = s.held.subscribe().wait_for(|h| !h.contains(&method)).await;
    if let Some(fault) = s.take_fault(&method) {
        if let Fault::LoseResponse = fault {
            let _ = s.answer(&call);
            return lost();
        }
        return fault_response(fault);
    }
    if let Some(wait) = s.over_limits(&call) {
        s.throttled.fetch_add(1, Ordering::SeqCst);
        let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
        return error(
            429,
            &format!("Too Many Requests: retry after {retry_after}"),
            Some(json!({ "retry_after": retry_after })),
        );
    }
    if method == "getupdates" {
        // Telegram answers a second getUpdates while one is pending with 409 Conflict.
        if s.polling.fetch_add(1, Ordering::SeqCst) > 0 {
            s.polling.fetch_sub(1, Ordering::SeqCst);
            s.conflicts.fetch_add(1, Ordering::SeqCst);
            return error(
                409,
                "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
                None,
            );
        }
        // Counted out however the call ends (a client that dies drops it).
        struct Polling<'a>(&'a AtomicUsize);
        impl Drop for Polling<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _polling = Polling(&s.polling);
        return s.get_updates(&call.params).await;
    }
    s.answer(&call)
}

async fn download_via(
    state: State<Arc<Inner>>,
    Path((_via, bot, path)): Path<(String, String, String)>,
    uri: Uri,
) -> Response {
    download(state, Path((bot, path)), uri).await
}

async fn download(
    State(s): State<Arc<Inner>>,
    Path((bot, path)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    lock(&s.downloads).push(uri.path().to_owned());
    if bot != format!("bot{TOKEN}") {
        return error(401, "Unauthorized", None);
    }
    let path = path.replace("%2F", "/").replace("%2f", "/");
    let id = path
        .trim_start_matches('/')
        .strip_prefix("photos/")
        .and_then(|p| p.strip_suffix(".jpg"));
    match id.and_then(|id| lock(&s.files).get(id).cloned()) {
        Some(bytes) => bytes.into_response(),
        None => error(404, "Not Found", None),
    }
}

fn ok(result: Value) -> Response {
    axum::Json(json!({ "ok": true, "result": result })).into_response()
}

fn error(code: u16, description: &str, parameters: Option<Value>) -> Response {
    let mut body = json!({ "ok": false, "error_code": code, "description": description });
    if let Some(p) = parameters {
        body["parameters"] = p;
    }
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

/// A 200 whose body breaks off: the connection is cut mid-answer.
fn lost() -> Response {
    let broken = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("connection lost"))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from_stream(broken))
        .unwrap()
}

fn fault_response(fault: Fault) -> Response {
    match fault {
        Fault::TooManyRequests { retry_after } => error(
            429,
            &format!("Too Many Requests: retry after {retry_after}"),
            Some(json!({ "retry_after": retry_after })),
        ),
        Fault::ServerError => error(500, "Internal Server Error", None),
        Fault::BadRequest(description) => error(400, description, None),
        Fault::Forbidden(description) => error(403, description, None),
        Fault::LoseResponse => lost(),
    }
}

// ---------------------------------------------------------------------------------------------
// Method behaviour

impl Inner {
    /// With limits on, a message call that does not fit them: how long until it would (it is
    /// counted when it fits). Albums count one message per item.
    fn over_limits(&self, call: &Call) -> Option<Duration> {
        let limits = (*lock(&self.limits))?;
        let messages = match call.method.as_str() {
            "sendmessage" | "sendphoto" | "senddocument" | "editmessagetext"
            | "editmessagecaption" | "editmessagemedia" => 1,
            "sendmediagroup" => call.params["media"].as_array().map_or(1, Vec::len),
            _ => return None,
        };
        let chat = call.chat_id().unwrap_or(0);
        let now = Instant::now();
        let mut counted = lock(&self.counted);
        let mut windows = vec![(Some(chat), limits.chat), (None, limits.overall)];
        if chat < 0 {
            windows.push((Some(chat), limits.group));
        }
        let mut wait = Duration::ZERO;
        for (key, (max, per)) in &windows {
            let times = counted.entry(*key).or_default();
            let live: Vec<Instant> = times.iter().copied().filter(|t| now - *t < *per).collect();
            let over = (live.len() + messages).saturating_sub(*max);
            if over > 0 {
                let free_at = live[(over - 1).min(live.len() - 1)] + *per;
                wait = wait.max(free_at - now);
            }
        }
        if wait > Duration::ZERO {
            return Some(wait);
        }
        for key in [Some(chat), None] {
            let times = counted.entry(key).or_default();
            times.retain(|t| now - *t < Duration::from_secs(120));
            times.extend(std::iter::repeat_n(now, messages));
        }
        None
    }

    fn take_fault(&self, method: &str) -> Option<Fault> {
        lock(&self.faults).get_mut(method)?.pop_front()
    }

    fn answer(&self, call: &Call) -> Response {
        match call.method.as_str() {
            "getme" => ok(me()),
            "getwebhookinfo" => ok(json!({
                "url": "", "has_custom_certificate": false, "pending_update_count": 0
            })),
            "sendmessage" | "sendphoto" | "senddocument" => ok(self.send(call)),
            "editmessagetext" | "editmessagecaption" | "editmessagereplymarkup" => self.edit(call),
            "editmessagemedia" => self.edit_media(call),
            "deletemessage" => self.delete(call),
            "sendmediagroup" => ok(self.send_media_group(call)),
            "getfile" => self.get_file(call),
            "getchatmember" => ok(self.chat_member(call)),
            _ => ok(json!(true)),
        }
    }

    /// Long poll: answers as soon as an update with `update_id >= offset` exists, or with `[]`
    /// once `timeout` seconds have passed.
    async fn get_updates(&self, params: &Value) -> Response {
        let offset = int_param(params, "offset");
        if let Some(offset) = offset {
            self.last_offset.store(offset, Ordering::SeqCst);
        }
        let offset = offset.unwrap_or(0);
        let limit = int_param(params, "limit").unwrap_or(100).clamp(1, 100) as usize;
        let timeout = int_param(params, "timeout").unwrap_or(0).max(0) as u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        loop {
            let arrived = self.arrived.notified();
            let batch = self.batch(offset, limit);
            if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
                return ok(Value::Array(batch));
            }
            let _ = tokio::time::timeout_at(deadline, arrived).await;
        }
    }

    /// Drops the updates confirmed by `offset` and returns up to `limit` of the rest.
    fn batch(&self, offset: i64, limit: usize) -> Vec<Value> {
        let mut queue = lock(&self.queue);
        queue
            .pending
            .retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
        queue.pending.iter().take(limit).cloned().collect()
    }

    fn next_id(&self) -> i64 {
        self.next_message_id.fetch_add(1, Ordering::SeqCst) as i64
    }

    fn new_message(&self, call: &Call) -> Value {
        let chat_id = call.chat_id().unwrap_or(-1);
        let mut message = json!({
            "message_id": self.next_id(),
            "date": now(),
            "chat": chat_for(chat_id),
            "from": bot_user(),
        });
        echo(&mut message, &call.params);
        let reply = &call.params["reply_parameters"];
        if !reply.is_null() {
            let id = message["message_id"].as_i64().unwrap_or(0);
            lock(&self.replies).insert((chat_id, id), reply.clone());
        }
        message
    }

    fn remember(&self, message: &Value) {
        let key = (
            message["chat"]["id"].as_i64().unwrap_or(0),
            message["message_id"].as_i64().unwrap_or(0),
        );
        lock(&self.messages).insert(key, message.clone());
    }

    fn send(&self, call: &Call) -> Value {
        let mut message = self.new_message(call);
        let id = message["message_id"].as_i64().unwrap_or(0);
        match call.method.as_str() {
            "sendphoto" => message["photo"] = json!([sent_photo(id, call.file("photo"))]),
            "senddocument" => message["document"] = sent_document(id, call.file("document")),
            _ => {}
        }
        self.remember(&message);
        message
    }

    /// Edits apply to the message the fake sent earlier (or a blank one) and return it.
    fn edit(&self, call: &Call) -> Response {
        let (Some(chat_id), Some(message_id)) = (call.chat_id(), call.int("message_id")) else {
            return ok(json!(true)); // inline message: Telegram answers `true`
        };
        let known = lock(&self.messages).get(&(chat_id, message_id)).cloned();
        let mut message = known.unwrap_or_else(|| {
            json!({ "message_id": message_id, "date": now(),
                    "chat": chat_for(chat_id), "from": bot_user() })
        });
        if call.method == "editmessagereplymarkup" {
            message.as_object_mut().map(|m| m.remove("reply_markup"));
        }
        echo(&mut message, &call.params);
        message["edit_date"] = json!(now());
        let has_content = ["text", "caption", "photo", "document"]
            .iter()
            .any(|k| message.get(*k).is_some());
        if !has_content {
            message["text"] = json!("");
        }
        self.remember(&message);
        ok(message)
    }

    /// `editMessageMedia`: the message (which must exist and carry media) now shows the new
    /// photo or document (uploaded as `attach://` or named by `file_id`), its caption and the
    /// keyboard sent with it.
    fn edit_media(&self, call: &Call) -> Response {
        let (Some(chat_id), Some(message_id)) = (call.chat_id(), call.int("message_id")) else {
            return error(
                400,
                "Bad Request: inline messages cannot get new uploads",
                None,
            );
        };
        let Some(mut message) = lock(&self.messages).get(&(chat_id, message_id)).cloned() else {
            return error(400, "Bad Request: message to edit not found", None);
        };
        if message.get("photo").is_none() && message.get("document").is_none() {
            return error(
                400,
                "Bad Request: there is no media in the message to edit",
                None,
            );
        }
        let media = &call.params["media"];
        let bytes = media["media"]
            .as_str()
            .and_then(|m| m.strip_prefix("attach://"))
            .and_then(|name| call.attachment(name));
        let fields = message.as_object_mut().expect("a message is an object");
        for key in ["photo", "document", "caption", "reply_markup"] {
            fields.remove(key);
        }
        match media["type"].as_str() {
            Some("photo") => message["photo"] = json!([sent_photo(message_id, bytes)]),
            Some("document") => message["document"] = sent_document(message_id, bytes),
            other => {
                return error(
                    400,
                    &format!("Bad Request: unsupported media type {other:?}"),
                    None,
                );
            }
        }
        echo(&mut message, media);
        let markup = &call.params["reply_markup"];
        if markup.get("inline_keyboard").is_some() {
            message["reply_markup"] = markup.clone();
        }
        message["edit_date"] = json!(now());
        self.remember(&message);
        lock(&self.results).push(call.clone());
        ok(message)
    }

    /// `deleteMessage`: the message is no longer there (edits of it find nothing).
    fn delete(&self, call: &Call) -> Response {
        let key = (
            call.chat_id().unwrap_or(0),
            call.int("message_id").unwrap_or(0),
        );
        match lock(&self.messages).remove(&key) {
            Some(_) => ok(json!(true)),
            None => error(400, "Bad Request: message to delete not found", None),
        }
    }

    fn send_media_group(&self, call: &Call) -> Value {
        let items = call.params["media"].as_array().cloned().unwrap_or_default();
        let group = format!("mg_{}", self.next_message_id.load(Ordering::SeqCst));
        let messages: Vec<Value> = items
            .iter()
            .map(|item| {
                let mut message = self.new_message(call);
                message.as_object_mut().map(|m| m.remove("caption"));
                echo(&mut message, item);
                let id = message["message_id"].as_i64().unwrap_or(0);
                let bytes = item["media"]
                    .as_str()
                    .and_then(|m| m.strip_prefix("attach://"))
                    .and_then(|name| call.attachment(name));
                if item["type"] == "photo" {
                    message["photo"] = json!([sent_photo(id, bytes)]);
                } else {
                    message["document"] = sent_document(id, bytes);
                }
                message["media_group_id"] = json!(group);
                self.remember(&message);
                message
            })
            .collect();
        Value::Array(messages)
    }

    fn get_file(&self, call: &Call) -> Response {
        let id = call.str("file_id").unwrap_or("");
        match lock(&self.files).get(id) {
            Some(bytes) => ok(json!({
                "file_id": id,
                "file_unique_id": format!("u_{id}"),
                "file_size": bytes.len(),
                "file_path": format!("photos/{id}.jpg"),
            })),
            None => error(400, "Bad Request: invalid file_id", None),
        }
    }

    fn chat_member(&self, call: &Call) -> Value {
        let chat_id = call.chat_id().unwrap_or(0);
        let user_id = call.int("user_id").unwrap_or(0);
        let status = lock(&self.members)
            .get(&(chat_id, user_id))
            .cloned()
            .unwrap_or_else(|| "member".to_owned());
        chat_member(&status, user(user_id, "en"))
    }
}

/// Copies what a sent message shows (text, caption, inline keyboard) from the request.
fn echo(message: &mut Value, params: &Value) {
    for key in ["text", "caption"] {
        if let Some(v) = params.get(key).and_then(Value::as_str) {
            message[key] = json!(v);
        }
    }
    let markup = &params["reply_markup"];
    if markup.get("inline_keyboard").is_some() {
        message["reply_markup"] = markup.clone();
    }
}

fn sent_photo(message_id: i64, bytes: Option<&[u8]>) -> Value {
    let (width, height) = bytes.and_then(dimensions).unwrap_or((1, 1));
    json!({
        "file_id": format!("sent_{message_id}"),
        "file_unique_id": format!("u_sent_{message_id}"),
        "file_size": bytes.map_or(0, <[u8]>::len),
        "width": width,
        "height": height,
    })
}

fn sent_document(message_id: i64, bytes: Option<&[u8]>) -> Value {
    json!({
        "file_id": format!("sent_{message_id}"),
        "file_unique_id": format!("u_sent_{message_id}"),
        "file_size": bytes.map_or(0, <[u8]>::len),
    })
}

fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

fn me() -> Value {
    let mut me = bot_user();
    let flags = json!({
        "can_join_groups": true,
        "can_read_all_group_messages": false,
        "supports_inline_queries": false,
        "can_connect_to_business": false,
        "has_main_web_app": false,
    });
    merge(&mut me, flags);
    me
}

pub fn bot_user() -> Value {
    json!({ "id": BOT_ID, "is_bot": true, "first_name": "Qwen", "username": BOT_USERNAME })
}

/// A getChatMember result with the fields teloxide requires for `status`.
fn chat_member(status: &str, user: Value) -> Value {
    let mut member = json!({ "status": status, "user": user });
    let extra = match status {
        "creator" => json!({ "is_anonymous": false }),
        "administrator" => json!({
            "is_anonymous": false, "can_be_edited": false, "can_manage_chat": true,
            "can_change_info": true, "can_delete_messages": true, "can_manage_video_chats": true,
            "can_invite_users": true, "can_restrict_members": true, "can_promote_members": false,
            "can_pin_messages": true,
        }),
        "restricted" => json!({
            "until_date": 0, "is_member": true, "can_send_messages": true,
            "can_send_audios": true, "can_send_documents": true, "can_send_photos": false,
            "can_send_videos": true, "can_send_video_notes": true, "can_send_voice_notes": true,
            "can_send_other_messages": true, "can_add_web_page_previews": true,
            "can_change_info": false, "can_invite_users": false, "can_pin_messages": false,
            "can_manage_topics": false, "can_send_polls": true,
        }),
        "kicked" => json!({ "until_date": 0 }),
        _ => json!({}),
    };
    merge(&mut member, extra);
    member
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

fn chat_for(chat_id: i64) -> Value {
    if chat_id > 0 {
        private_chat(chat_id)
    } else {
        group_chat(chat_id)
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn int_param(params: &Value, key: &str) -> Option<i64> {
    match params.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Request bodies: JSON or multipart/form-data

fn parse_body(headers: &HeaderMap, body: &[u8]) -> (Value, Vec<(String, Vec<u8>)>) {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match multipart::boundary(content_type) {
        Some(boundary) => parse_multipart(body, &boundary),
        None => {
            let params = serde_json::from_slice(body).unwrap_or_else(|_| json!({}));
            (params, Vec::new())
        }
    }
}

fn parse_multipart(body: &[u8], boundary: &str) -> (Value, Vec<(String, Vec<u8>)>) {
    let mut params = Map::new();
    let mut files = Vec::new();
    for part in multipart::parts(body, boundary) {
        if part.filename.is_some() {
            files.push((part.name, part.data.to_vec()));
        } else {
            params.insert(part.name, text_value(part.data));
        }
    }
    (Value::Object(params), files)
}

fn text_value(data: &[u8]) -> Value {
    let text = String::from_utf8_lossy(data).into_owned();
    if (text.starts_with('{') || text.starts_with('['))
        && let Ok(v) = serde_json::from_str(&text)
    {
        return v;
    }
    Value::String(text)
}

// ---------------------------------------------------------------------------------------------
// Fixture builders

pub fn user(id: i64, lang: &str) -> Value {
    json!({ "id": id, "is_bot": false, "first_name": format!("U{id}"), "language_code": lang })
}

pub fn private_chat(id: i64) -> Value {
    json!({ "id": id, "type": "private", "first_name": format!("U{id}") })
}

pub fn group_chat(id: i64) -> Value {
    json!({ "id": id, "type": "supergroup", "title": "Group" })
}

/// A photo message with three sizes; the largest has `file_id`, the others `_s`/`_m` suffixes.
pub fn photo_message(
    message_id: i32,
    chat: Value,
    from: Value,
    file_id: &str,
    caption: Option<&str>,
) -> Value {
    let sizes = [
        ("_s", 90, 60, 1_500),
        ("_m", 320, 213, 15_000),
        ("", 1280, 853, 150_000),
    ];
    let photo: Vec<Value> = sizes
        .iter()
        .map(|(suffix, w, h, size)| {
            json!({ "file_id": format!("{file_id}{suffix}"),
                    "file_unique_id": format!("u_{file_id}{suffix}"),
                    "file_size": size, "width": w, "height": h })
        })
        .collect();
    let mut message = base_message(message_id, chat, from);
    message["photo"] = Value::Array(photo);
    add_caption(&mut message, caption);
    checked_message(message)
}

pub fn document_message(
    message_id: i32,
    chat: Value,
    from: Value,
    file_id: &str,
    mime: &str,
    file_name: &str,
    caption: Option<&str>,
) -> Value {
    let mut message = base_message(message_id, chat, from);
    message["document"] = json!({
        "file_id": file_id, "file_unique_id": format!("u_{file_id}"),
        "file_name": file_name, "mime_type": mime,
    });
    add_caption(&mut message, caption);
    checked_message(message)
}

/// A text message; a leading `/command` gets its `bot_command` entity.
pub fn text_message(
    message_id: i32,
    chat: Value,
    from: Value,
    text: &str,
    reply_to: Option<Value>,
) -> Value {
    let mut message = base_message(message_id, chat, from);
    message["text"] = json!(text);
    if let Some(entities) = command_entities(text) {
        message["entities"] = entities;
    }
    if let Some(reply) = reply_to {
        message["reply_to_message"] = reply;
    }
    checked_message(message)
}

/// The service message Telegram sends when `members` were added to a group by `from`.
pub fn members_joined(message_id: i32, chat: Value, from: Value, members: Vec<Value>) -> Value {
    let mut message = base_message(message_id, chat, from);
    message["new_chat_members"] = json!(members);
    checked_message(message)
}

pub fn with_media_group(message: Value, group_id: &str) -> Value {
    let mut message = message;
    message["media_group_id"] = json!(group_id);
    checked_message(message)
}

pub fn message_update(message: Value) -> Value {
    let update = json!({ "message": message });
    validate_update(&with_id(&update));
    update
}

pub fn callback_update(id: &str, from: Value, message: Value, data: &str) -> Value {
    let update = json!({ "callback_query": {
        "id": id, "from": from, "message": message, "chat_instance": "ci", "data": data,
    }});
    validate_update(&with_id(&update));
    update
}

fn base_message(message_id: i32, chat: Value, from: Value) -> Value {
    json!({ "message_id": message_id, "date": now(), "chat": chat, "from": from })
}

fn add_caption(message: &mut Value, caption: Option<&str>) {
    let Some(caption) = caption else { return };
    message["caption"] = json!(caption);
    if let Some(entities) = command_entities(caption) {
        message["caption_entities"] = entities;
    }
}

/// A `bot_command` entity over the first word when the text starts with '/'.
fn command_entities(text: &str) -> Option<Value> {
    if !text.starts_with('/') {
        return None;
    }
    let command = text.split_whitespace().next().unwrap_or(text);
    let length = command.encode_utf16().count();
    Some(json!([{ "type": "bot_command", "offset": 0, "length": length }]))
}

fn with_id(update: &Value) -> Value {
    let mut update = update.clone();
    update["update_id"] = json!(0);
    update
}

fn checked_message(message: Value) -> Value {
    if let Err(e) = parse::<teloxide::types::Message>(&message) {
        panic!("teloxide cannot parse this Message fixture ({e}): {message:#}");
    }
    message
}

/// Parses like teloxide does: from text. (`from_value` is not equivalent: teloxide's
/// `UpdateKind` deserializer wants borrowed keys, which a `Value` cannot lend.)
fn parse<T: serde::de::DeserializeOwned>(value: &Value) -> serde_json::Result<T> {
    serde_json::from_str(&value.to_string())
}

/// Panics unless teloxide parses `update` into a real (non-`Error`) update kind.
fn validate_update(update: &Value) {
    use teloxide::types::{Update, UpdateKind};
    let parsed: Update = parse(update)
        .unwrap_or_else(|e| panic!("teloxide cannot parse this update ({e}): {update:#}"));
    if let UpdateKind::Error(_) = parsed.kind {
        let why = explain(update);
        panic!("teloxide would drop this update as UpdateKind::Error ({why}): {update:#}");
    }
}

/// The serde error behind an `UpdateKind::Error`, for the panic message.
fn explain(update: &Value) -> String {
    use teloxide::types::{CallbackQuery, Message};
    let result = if let Some(m) = update.get("message") {
        parse::<Message>(m).map(drop)
    } else if let Some(q) = update.get("callback_query") {
        parse::<CallbackQuery>(q).map(drop)
    } else {
        return "unknown update kind".into();
    };
    result
        .err()
        .map_or_else(|| "no detail".into(), |e| e.to_string())
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_fake_telegram_speaks_the_bot_api_to_the_real_teloxide_client() {
    use teloxide::RequestError;
    use teloxide::net::Download;
    use teloxide::prelude::*;
    use teloxide::types::{
        ChatId, FileId, InputFile, InputMedia, InputMediaPhoto, ReplyParameters, UpdateKind, UserId,
    };

    let fake = FakeTelegram::start().await;
    let bot = Bot::new(TOKEN).set_api_url(reqwest::Url::parse(&fake.url).unwrap());

    let me = bot.get_me().await.unwrap();
    assert_eq!(me.username(), BOT_USERNAME);
    assert_eq!(me.id, UserId(BOT_ID as u64));

    let sent = bot.send_message(ChatId(42), "hello").await.unwrap();
    assert_eq!((sent.text(), sent.chat.id), (Some("hello"), ChatId(42)));
    assert_eq!(fake.calls_to("sendMessage")[0].chat_id(), Some(42));

    fake.add_file("file_0", b"jpeg bytes".to_vec());
    let file = bot.get_file(FileId("file_0".into())).await.unwrap();
    let mut got = Vec::new();
    bot.download_file(&file.path, &mut got).await.unwrap();
    assert_eq!(got, b"jpeg bytes");
    assert_eq!(fake.downloads().len(), 1);
    let missing = bot.get_file(FileId("nope".into())).await;
    assert!(matches!(missing, Err(RequestError::Api(_))), "{missing:?}");

    let png = super::images::png(40, 30);
    let photo = InputFile::memory(png.clone()).file_name("edited.png");
    let answer = bot
        .send_photo(ChatId(-100), photo)
        .reply_parameters(ReplyParameters::new(sent.id))
        .await
        .unwrap();
    assert_eq!(answer.photo().unwrap()[0].width, 40);
    let call = fake.wait_for("SendPhoto", 1, 5).await.remove(0);
    assert_eq!(call.chat_id(), Some(-100));
    assert_eq!(call.file("photo"), Some(png.as_slice()));
    assert_eq!(
        call.params["reply_parameters"]["message_id"],
        json!(sent.id.0)
    );

    let media: Vec<InputMedia> = (0..2)
        .map(|_| InputMedia::Photo(InputMediaPhoto::new(InputFile::memory(png.clone()))))
        .collect();
    let album = bot.send_media_group(ChatId(42), media).await.unwrap();
    assert_eq!(album.len(), 2);
    assert_eq!(album[1].photo().unwrap()[0].height, 30);

    fake.fail_next("sendMessage", Fault::TooManyRequests { retry_after: 3 }, 1);
    match bot.send_message(ChatId(42), "again").await {
        Err(RequestError::RetryAfter(s)) => assert_eq!(s.seconds(), 3),
        other => panic!("expected RetryAfter, got {other:?}"),
    }
    bot.send_message(ChatId(42), "again").await.unwrap();
    fake.fail_next("sendPhoto", Fault::BadRequest("Bad Request: wrong file"), 1);
    let refused = bot
        .send_photo(ChatId(42), InputFile::memory(png.clone()))
        .await;
    assert!(matches!(refused, Err(RequestError::Api(_))), "{refused:?}");

    let message = photo_message(
        7,
        private_chat(42),
        user(42, "en"),
        "file_0",
        Some("/edit x"),
    );
    let id = fake.push_update(message_update(message));
    let updates = bot.get_updates().timeout(1).await.unwrap();
    assert_eq!(updates.len(), 1);
    assert!(matches!(updates[0].kind, UpdateKind::Message(_)));
    let started = Instant::now();
    let next = bot
        .get_updates()
        .offset(id as i32 + 1)
        .timeout(1)
        .await
        .unwrap();
    assert!(next.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!((fake.last_offset(), fake.pending_updates()), (id + 1, 0));

    let group = group_chat(-100);
    let doc = document_message(
        8,
        group.clone(),
        user(7, "de"),
        "d1",
        "image/png",
        "a.png",
        None,
    );
    let text = "/edit@QwenEditBot make it night";
    let command = text_message(9, group.clone(), user(7, "de"), text, Some(doc.clone()));
    fake.push_update(message_update(with_media_group(doc, "g1")));
    fake.push_update(message_update(command));
    let shown = photo_message(10, group, user(BOT_ID, "en"), "p1", None);
    fake.push_update(callback_update("cb1", user(7, "de"), shown, "retry"));
    let updates = bot.get_updates().offset(id as i32 + 1).await.unwrap();
    let kinds: Vec<UpdateKind> = updates.into_iter().map(|u| u.kind).collect();
    let [
        UpdateKind::Message(album),
        UpdateKind::Message(command),
        UpdateKind::CallbackQuery(q),
    ] = kinds.as_slice()
    else {
        panic!("unexpected update kinds");
    };
    assert_eq!(album.media_group_id().map(|g| g.0.as_str()), Some("g1"));
    assert_eq!(
        command.entities().unwrap()[0].length,
        "/edit@QwenEditBot".len()
    );
    assert!(command.reply_to_message().unwrap().document().is_some());
    assert_eq!(q.data.as_deref(), Some("retry"));

    let edited = bot
        .edit_message_text(ChatId(42), sent.id, "edited")
        .await
        .unwrap();
    assert_eq!((edited.id, edited.text()), (sent.id, Some("edited")));

    for status in [
        "creator",
        "administrator",
        "member",
        "restricted",
        "left",
        "kicked",
    ] {
        fake.set_member_status(-100, 7, status);
        let member = bot.get_chat_member(ChatId(-100), UserId(7)).await.unwrap();
        assert_eq!(
            member.is_privileged(),
            status == "creator" || status == "administrator"
        );
    }

    let wrong = reqwest::Client::new()
        .post(format!("{}/botWRONG/getMe", fake.url))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // Through teloxide a 500 costs a 10 s sleep, so check the fault with a plain client.
    fake.fail_next("getMe", Fault::ServerError, 1);
    let url = format!("{}/bot{TOKEN}/GetMe", fake.url);
    let failed = reqwest::Client::new().post(url).send().await.unwrap();
    assert_eq!(failed.status(), 500);

    let calls = fake.calls();
    assert!(calls.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(calls.last().unwrap().method, "getme");
}
