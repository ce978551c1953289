//! A fake Discord (REST API v10 and gateway) on 127.0.0.1 that the real serenity client talks to.
//!
//! * **REST** (`rest_url`, pass it to `HttpBuilder::proxy` together with
//!   `ratelimiter_disabled(true)`): every request is recorded as a [`Call`] with its
//!   percent-decoded path, its JSON body (for multipart: the parsed `payload_json` part) and its
//!   file parts. Messages the bot sends are stored, so later GETs, edits and lists see them, and
//!   their attachments are served under `/attachments/...` like a CDN. Interaction callbacks and
//!   webhook follow-ups follow Discord's rules that bots trip over: a second callback for the same
//!   token is refused (40060), follow-ups or `@original` before any callback are refused as
//!   "Unknown Webhook" (10015), and the first follow-up after a deferral becomes `@original`
//!   (keeping the deferral's visibility) instead of a message of its own. Scripted faults ([`FakeDiscord::fail_next`]) answer with Discord's
//!   error shape; a 429 carries `retry_after` and the rate-limit headers.
//! * **Gateway** (`gateway_url`, plain `ws://`): HELLO, IDENTIFY → READY, heartbeats → ACK,
//!   RESUME → RESUMED (no replay of missed events: events dispatched while no session is live
//!   are queued and sent after the next READY or RESUMED; an unknown session id gets op 9
//!   `false`, so serenity re-identifies). [`FakeDiscord::reconnect_all`] sends op 7 to exercise
//!   the resume path. Several connections (shards) are supported; each session has its own
//!   increasing `s`.
//!
//! Path patterns (for [`FakeDiscord::calls_to`], [`FakeDiscord::wait_for`] and
//! [`FakeDiscord::fail_next`]) are matched segment by segment against the *end* of the decoded
//! path: `"/channels/42/messages"` matches `/api/v10/channels/42/messages`; `*` matches exactly
//! one segment (`"/webhooks/*/*"` is any follow-up POST, `"/reactions/*/@me"` any own reaction).
//! A pattern that starts with `/api/` must match the whole path. The method `"*"` matches any
//! method.
//!
//! Fixture builders return JSON that serenity parses (each one is checked against serenity's
//! own types and panics otherwise), because a gateway event that does not parse is dropped by
//! serenity with a DEBUG log line only. Interaction tokens made by the builders encode the
//! channel, guild and message (`itk-{id}-{channel}-{guild|0}-{message|0}`), so callbacks and
//! follow-ups land in the right channel even when the interaction was handed to the bot
//! directly instead of through [`FakeDiscord::dispatch`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};

use super::multipart;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub const TOKEN: &str = "MTAwMA.fake.discord-token-abcdefghijklmnop";
/// The application id (READY `application.id`, webhook follow-up paths).
pub const APP_ID: u64 = 1000;
pub const BOT_USER_ID: u64 = 1000;
pub const BOT_NAME: &str = "QwenEdit";
/// Owner of the application (`/oauth2/applications/@me`) and of every guild.
pub const OWNER_ID: u64 = 1;
/// `app_permissions` in interaction fixtures: add reactions, view channel, send messages,
/// embed links, attach files, read message history, use external emojis, send in threads.
pub const APP_PERMISSIONS: u64 =
    (1 << 6) | (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 18) | (1 << 38);
/// `attachment_size_limit` in interaction fixtures (an unboosted guild: 10 MiB).
pub const ATTACHMENT_SIZE_LIMIT: u64 = 10 * 1024 * 1024;

/// First snowflake the fake hands out (messages, attachments, command versions, channels).
const FIRST_ID: u64 = 900_000;
/// Message flag LOADING, set on the `@original` of a deferred (type 5) interaction response.
const LOADING: u64 = 1 << 7;

/// One REST request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// `GET`, `POST`, `PATCH`, `PUT` or `DELETE`.
    pub method: String,
    /// Percent-decoded path without the query, e.g. `/api/v10/channels/42/messages` (a reaction
    /// path carries the emoji itself: `.../reactions/👀/@me`).
    pub path: String,
    /// The raw query string without `?` (serenity sends e.g. `&limit=50`), `""` if none.
    pub query: String,
    /// The JSON body, or for multipart the parsed `payload_json` part (`Null` if none).
    pub json: Value,
    /// Multipart file parts: (part name e.g. `files[0]`, filename, bytes).
    pub files: Vec<(String, String, Vec<u8>)>,
    /// The status the fake answered with.
    pub status: u16,
    pub at: Instant,
}

impl Call {
    /// The bytes of the file part called `part` (e.g. `files[0]`).
    pub fn file(&self, part: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(name, _, _)| name == part)
            .map(|(_, _, bytes)| bytes.as_slice())
    }

    /// The path's segments after `/api/v10`.
    pub fn segments(&self) -> Vec<&str> {
        api_segments(&self.path).unwrap_or_default()
    }
}

/// A reaction the bot added or removed, from the recorded REST calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    pub channel_id: u64,
    pub message_id: u64,
    /// The decoded emoji as serenity put it in the path (`👀`, or `name:id` for custom emoji).
    pub emoji: String,
    /// `true` for PUT (added), `false` for DELETE (removed).
    pub added: bool,
}

struct Fault {
    method: String,
    pattern: String,
    status: u16,
    code: u32,
    retry_after: f64,
    left: usize,
}

/// What the fake knows about an interaction token.
#[derive(Debug, Clone, Default)]
struct TokenState {
    channel: u64,
    guild: Option<u64>,
    /// The message a component belongs to.
    message: Option<u64>,
    /// The callback type once the interaction was answered.
    callback: Option<u64>,
    /// The `@original` response message.
    original: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct ChannelInfo {
    guild: Option<u64>,
    /// The other user of a DM channel.
    recipient: Option<Value>,
}

enum Out {
    Frame(String),
    /// READY or RESUMED: marks the connection ready once written.
    Ready(String),
    Close(u16),
}

struct Live {
    session: String,
    tx: mpsc::UnboundedSender<Out>,
    ready: Arc<AtomicBool>,
}

#[derive(Default)]
struct Gateway {
    next_conn: u64,
    next_session: u64,
    /// Connections with a live session (identified or resumed, not told to reconnect).
    live: HashMap<u64, Live>,
    /// Session id → last sequence number sent.
    sessions: HashMap<String, u64>,
    queue: VecDeque<(String, Value)>,
    identifies: Vec<Value>,
    resumes: Vec<Value>,
    heartbeats: usize,
}

impl Gateway {
    /// Sends a dispatch to one connection with the next sequence number of its session.
    fn push(&mut self, conn: u64, kind: &str, data: &Value, ready: bool) {
        let Some(live) = self.live.get(&conn) else {
            return;
        };
        let seq = self.sessions.entry(live.session.clone()).or_insert(0);
        *seq += 1;
        let frame = json!({ "op": 0, "s": *seq, "t": kind, "d": data }).to_string();
        let out = if ready {
            Out::Ready(frame)
        } else {
            Out::Frame(frame)
        };
        let _ = live.tx.send(out);
    }

    fn drain(&mut self, conn: u64) {
        while let Some((kind, data)) = self.queue.pop_front() {
            self.push(conn, &kind, &data, false);
        }
    }
}

struct Inner {
    rest_url: String,
    gateway_url: String,
    /// What `GET /gateway` answers instead of `gateway_url` (see [`FakeDiscord::advertise_gateway`]).
    advertised: Mutex<Option<String>>,
    next_id: AtomicU64,
    heartbeat_interval: AtomicU64,
    calls: Mutex<Vec<Call>>,
    problems: Mutex<Vec<String>>,
    faults: Mutex<Vec<Fault>>,
    messages: Mutex<BTreeMap<u64, Value>>,
    files: Mutex<HashMap<String, Vec<u8>>>,
    downloads: Mutex<Vec<String>>,
    channels: Mutex<HashMap<u64, ChannelInfo>>,
    tiers: Mutex<HashMap<u64, u8>>,
    tokens: Mutex<HashMap<String, TokenState>>,
    commands: Mutex<Vec<Value>>,
    gateway: Mutex<Gateway>,
    /// Messages a channel may get (posted or edited) in any span, when enforced
    /// ([`FakeDiscord::limit_channels`]); what was counted, and how many were refused.
    channel_limit: Mutex<Option<(usize, Duration)>>,
    /// Interaction tokens past their 15 minutes ([`FakeDiscord::expire_token`]).
    expired: Mutex<std::collections::HashSet<String>>,
    counted: Mutex<HashMap<u64, VecDeque<Instant>>>,
    throttled: AtomicUsize,
}

/// A running fake. It lives until the test's runtime ends.
#[derive(Clone)]
pub struct FakeDiscord {
    /// `http://127.0.0.1:PORT`, for `HttpBuilder::proxy`.
    pub rest_url: String,
    /// `ws://127.0.0.1:PORT2`, what `GET /gateway` answers.
    pub gateway_url: String,
    inner: Arc<Inner>,
}

/// Locks, ignoring poison: a failed assertion elsewhere must not take the server down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeDiscord {
    pub async fn start() -> Self {
        let rest = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rest_url = format!("http://{}", rest.local_addr().unwrap());
        let gateway_url = format!("ws://{}", ws.local_addr().unwrap());
        let inner = Arc::new(Inner {
            rest_url: rest_url.clone(),
            gateway_url: gateway_url.clone(),
            advertised: Mutex::default(),
            next_id: AtomicU64::new(FIRST_ID),
            heartbeat_interval: AtomicU64::new(45_000),
            calls: Mutex::default(),
            problems: Mutex::default(),
            faults: Mutex::default(),
            messages: Mutex::default(),
            files: Mutex::default(),
            downloads: Mutex::default(),
            channels: Mutex::default(),
            tiers: Mutex::default(),
            tokens: Mutex::default(),
            commands: Mutex::default(),
            gateway: Mutex::default(),
            channel_limit: Mutex::default(),
            expired: Mutex::default(),
            counted: Mutex::default(),
            throttled: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/attachments/{name}", get(download))
            .fallback(rest_api)
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(inner.clone());
        tokio::spawn(async move { axum::serve(rest, app).await.unwrap() });
        tokio::spawn(accept_gateway(ws, inner.clone()));
        Self {
            rest_url,
            gateway_url,
            inner,
        }
    }

    // -- gateway ---------------------------------------------------------------------------

    /// Dispatches a gateway event `{"op":0,"s":next,"t":kind,"d":data}` to every live session;
    /// with none, queues it until the next READY (or RESUMED). A MESSAGE_CREATE is also stored
    /// (so REST GETs find it) and an INTERACTION_CREATE registers its token. Panics if serenity
    /// could not parse a MESSAGE_CREATE or INTERACTION_CREATE payload.
    pub fn dispatch(&self, kind: &str, data: Value) {
        match kind {
            "MESSAGE_CREATE" => {
                checked::<serenity::all::Message>("MESSAGE_CREATE payload", &data);
                self.inner.learn_message(&data);
                self.inner.store(data.clone());
            }
            "INTERACTION_CREATE" => {
                checked::<serenity::all::Interaction>("INTERACTION_CREATE payload", &data);
                self.register_interaction(&data);
            }
            _ => {}
        }
        let mut gw = lock(&self.inner.gateway);
        let mut conns: Vec<u64> = gw.live.keys().copied().collect();
        if conns.is_empty() {
            gw.queue.push_back((kind.to_owned(), data));
            return;
        }
        conns.sort_unstable();
        for conn in conns {
            gw.push(conn, kind, &data, false);
        }
    }

    /// Waits until a connection has identified (or resumed) and been sent READY (or RESUMED);
    /// panics after `secs` seconds.
    pub async fn wait_ready(&self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let ready = lock(&self.inner.gateway)
                .live
                .values()
                .any(|l| l.ready.load(Ordering::SeqCst));
            if ready {
                return;
            }
            if Instant::now() >= deadline {
                let gw = lock(&self.inner.gateway);
                panic!(
                    "no shard became ready within {secs} s ({} identifies, {} resumes); REST calls: {:?}",
                    gw.identifies.len(),
                    gw.resumes.len(),
                    self.call_list()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The `d` objects of the IDENTIFY payloads received (`intents`, `shard`, `token`, ...).
    pub fn identifies(&self) -> Vec<Value> {
        lock(&self.inner.gateway).identifies.clone()
    }

    /// The `d` objects of the RESUME payloads received (`session_id`, `seq`, `token`).
    pub fn resumes(&self) -> Vec<Value> {
        lock(&self.inner.gateway).resumes.clone()
    }

    /// Heartbeats (op 1) received so far.
    pub fn heartbeats(&self) -> usize {
        lock(&self.inner.gateway).heartbeats
    }

    /// The `heartbeat_interval` sent in HELLO to later connections (default 45000 ms).
    pub fn set_heartbeat_interval(&self, millis: u64) {
        self.inner
            .heartbeat_interval
            .store(millis, Ordering::SeqCst);
    }

    /// Sends op 7 RECONNECT to every live session (serenity reconnects and RESUMEs); events
    /// dispatched until then are queued. Returns how many sessions were told.
    pub fn reconnect_all(&self) -> usize {
        let mut gw = lock(&self.inner.gateway);
        let told = gw.live.len();
        for (_, live) in gw.live.drain() {
            let _ = live
                .tx
                .send(Out::Frame(json!({ "op": 7, "d": null }).to_string()));
        }
        told
    }

    // -- REST ------------------------------------------------------------------------------

    /// Every REST call so far (attachment downloads are in [`Self::downloads`]).
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.inner.calls).clone()
    }

    /// Calls with this method (`"*"` for any) whose path matches `path_pattern` (see the module
    /// docs: tail match by segments, `*` = one segment).
    pub fn calls_to(&self, method: &str, path_pattern: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| method_matches(method, &c.method) && path_matches(path_pattern, &c.path))
            .collect()
    }

    /// Waits (real time, polling every 10 ms) for `count` matching calls; panics after `secs`
    /// seconds listing every recorded `METHOD path -> status`.
    pub async fn wait_for(
        &self,
        method: &str,
        path_pattern: &str,
        count: usize,
        secs: u64,
    ) -> Vec<Call> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let calls = self.calls_to(method, path_pattern);
            if calls.len() >= count {
                return calls;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {secs} s for {count} x {method} {path_pattern}, got {}; calls: {:#?}; problems: {:?}",
                    calls.len(),
                    self.call_list(),
                    self.problems()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Reactions added (PUT) or removed (DELETE) through `/reactions/{emoji}/@me`, in order.
    pub fn reactions(&self) -> Vec<Reaction> {
        self.calls()
            .iter()
            .filter(|c| c.status < 300)
            .filter_map(|c| {
                let segs = c.segments();
                let ["channels", ch, "messages", msg, "reactions", emoji, "@me"] = segs.as_slice()
                else {
                    return None;
                };
                Some(Reaction {
                    channel_id: ch.parse().ok()?,
                    message_id: msg.parse().ok()?,
                    emoji: (*emoji).to_owned(),
                    added: c.method == "PUT",
                })
            })
            .collect()
    }

    /// Serves `bytes` at `GET {rest_url}/attachments/{name}` (no auth, like the CDN) and returns
    /// that URL, for [`attachment`] fixtures.
    pub fn add_attachment(&self, name: &str, bytes: Vec<u8>) -> String {
        lock(&self.inner.files).insert(name.to_owned(), bytes);
        format!("{}/attachments/{name}", self.rest_url)
    }

    /// A `w`×`h` JPEG served by the fake as the attachment `id` (`in-{id}.jpg`) of a message.
    pub fn jpeg_attachment(&self, id: u64, w: u32, h: u32) -> Value {
        let name = format!("in-{id}.jpg");
        let url = self.add_attachment(&name, super::images::jpeg(w, h));
        attachment(id, &name, &url, 1000, Some("image/jpeg"), Some(w), Some(h))
    }

    /// The attachment names downloaded so far (including unknown ones, which got a 404).
    pub fn downloads(&self) -> Vec<String> {
        lock(&self.inner.downloads).clone()
    }

    /// Stores a message (panics unless serenity parses it) so `GET .../messages/{id}` and the
    /// channel's message list return it; also teaches the fake its channel (guild or DM).
    pub fn put_message(&self, message: Value) {
        checked::<serenity::all::Message>("Message", &message);
        self.inner.learn_message(&message);
        self.inner.store(message);
    }

    /// The stored message with this id (sent by the bot, dispatched or put).
    pub fn message(&self, id: u64) -> Option<Value> {
        lock(&self.inner.messages).get(&id).cloned()
    }

    /// The `@original` answer of the interaction with `token`, once it has one.
    pub fn original_of(&self, token: &str) -> Option<u64> {
        self.inner.token(token).original
    }

    /// The stored messages of a channel, newest first.
    pub fn channel_messages(&self, channel_id: u64) -> Vec<Value> {
        self.inner.channel_messages(channel_id)
    }

    /// `GET /gateway` and `/gateway/bot` name `url` from now on instead of this fake's gateway.
    pub fn advertise_gateway(&self, url: &str) {
        *lock(&self.inner.advertised) = Some(url.to_owned());
    }

    /// The next `times` calls matching (`method`, `path_pattern`) answer `status` with a Discord
    /// error body `{"message", "code"}`. A 429 also carries `"retry_after": 1.0,
    /// "global": false`, `Retry-After` and the `X-RateLimit-*` headers.
    pub fn fail_next(
        &self,
        method: &str,
        path_pattern: &str,
        status: u16,
        code: u32,
        times: usize,
    ) {
        self.push_fault(method, path_pattern, status, code, 1.0, times);
    }

    /// Like [`Self::fail_next`] with a 429 and this `retry_after` (seconds).
    /// From now on, a channel takes at most `max` messages (posted or edited) in any `per`;
    /// beyond, Discord's 429 with its rate-limit headers.
    pub fn limit_channels(&self, max: usize, per: Duration) {
        *lock(&self.inner.channel_limit) = Some((max, per));
    }

    /// The interaction token `token` is past its 15 minutes: its webhook refuses it (401,
    /// Invalid Webhook Token); its messages stay as they are in the channel.
    pub fn expire_token(&self, token: &str) {
        lock(&self.inner.expired).insert(token.to_owned());
    }

    /// Calls the channel limit answered 429.
    pub fn throttled(&self) -> usize {
        self.inner.throttled.load(Ordering::SeqCst)
    }

    pub fn fail_next_rate_limited(
        &self,
        method: &str,
        path_pattern: &str,
        retry_after: f64,
        times: usize,
    ) {
        self.push_fault(method, path_pattern, 429, 0, retry_after, times);
    }

    fn push_fault(
        &self,
        method: &str,
        pattern: &str,
        status: u16,
        code: u32,
        retry_after: f64,
        left: usize,
    ) {
        if left == 0 {
            return;
        }
        lock(&self.inner.faults).push(Fault {
            method: method.to_owned(),
            pattern: pattern.to_owned(),
            status,
            code,
            retry_after,
            left,
        });
    }

    /// `premium_tier` of `GET /guilds/{id}` (default 0).
    pub fn set_guild_premium_tier(&self, guild_id: u64, tier: u8) {
        lock(&self.inner.tiers).insert(guild_id, tier);
    }

    /// Makes `GET /channels/{id}` answer a guild text channel (`Some(guild)`) or a DM channel.
    /// Channels also become known from dispatched, put and sent messages and interactions;
    /// unknown ones answer 404 "Unknown Channel" (10003).
    pub fn set_channel(&self, channel_id: u64, guild_id: Option<u64>) {
        let mut channels = lock(&self.inner.channels);
        let info = channels.entry(channel_id).or_default();
        info.guild = guild_id;
    }

    /// Teaches the fake an interaction's token (channel, guild, component message) without
    /// dispatching it; [`Self::dispatch`] does this for INTERACTION_CREATE.
    pub fn register_interaction(&self, interaction: &Value) {
        let Some(token) = interaction["token"].as_str() else {
            return;
        };
        let state = TokenState {
            channel: id_of(&interaction["channel_id"]).unwrap_or(1),
            guild: id_of(&interaction["guild_id"]),
            message: id_of(&interaction["message"]["id"]),
            ..TokenState::default()
        };
        let who = interaction
            .get("member")
            .and_then(|m| m.get("user"))
            .or_else(|| interaction.get("user"))
            .cloned();
        self.inner.learn_channel(state.channel, state.guild, who);
        if let Some(message) = interaction.get("message") {
            self.inner.store(message.clone());
        }
        lock(&self.inner.tokens).insert(token.to_owned(), state);
    }

    /// The application commands registered so far (global ones without `guild_id`).
    pub fn commands(&self) -> Vec<Value> {
        lock(&self.inner.commands).clone()
    }

    /// Things the fake had to fix up or that went wrong inside it (e.g. a sent message that
    /// serenity could not parse back, a handler panic). Empty in a healthy test.
    pub fn problems(&self) -> Vec<String> {
        lock(&self.inner.problems).clone()
    }

    fn call_list(&self) -> Vec<String> {
        self.calls()
            .iter()
            .map(|c| format!("{} {} -> {}", c.method, c.path, c.status))
            .collect()
    }
}

fn method_matches(pattern: &str, method: &str) -> bool {
    pattern == "*" || pattern.eq_ignore_ascii_case(method)
}

/// Tail match by segments; `*` matches one segment; a pattern starting with `/api/` must match
/// the whole path.
fn path_matches(pattern: &str, path: &str) -> bool {
    let whole = pattern.starts_with("/api/");
    let pat: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if pat.len() > segs.len() || (whole && pat.len() != segs.len()) {
        return false;
    }
    let tail = &segs[segs.len() - pat.len()..];
    pat.iter().zip(tail).all(|(p, s)| *p == "*" || p == s)
}

/// The segments after `/api/v10`, or `None` for other paths.
fn api_segments(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix("/api/v10")?;
    Some(rest.split('/').filter(|s| !s.is_empty()).collect())
}

// ---------------------------------------------------------------------------------------------
// REST handlers

async fn download(State(s): State<Arc<Inner>>, Path(name): Path<String>) -> Response {
    lock(&s.downloads).push(name.clone());
    match lock(&s.files).get(&name).cloned() {
        Some(bytes) => {
            let mime = content_type(&name, &bytes).unwrap_or("application/octet-stream");
            ([(header::CONTENT_TYPE, mime)], bytes).into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn rest_api(
    State(s): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let path = multipart::percent_decode(uri.path());
    let query = uri.query().unwrap_or("").to_owned();
    let (json, files) = parse_body(&headers, &body);
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bot {TOKEN}"));
    let mut call = Call {
        method: method.as_str().to_owned(),
        path,
        query,
        json,
        files,
        status: 0,
        at,
    };
    let response = if !authorized {
        discord_error(401, "401: Unauthorized", 0)
    } else if let Some(fault) = s.take_fault(&call.method, &call.path) {
        fault
    } else if let Some(wait) = s.over_channel_limit(&call) {
        s.throttled.fetch_add(1, Ordering::SeqCst);
        fault_response(&Fault {
            method: call.method.clone(),
            pattern: String::new(),
            status: 429,
            code: 0,
            retry_after: wait.as_secs_f64(),
            left: 0,
        })
    } else {
        let routed = std::panic::catch_unwind(AssertUnwindSafe(|| s.route(&call)));
        routed.unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            s.problem(format!(
                "handler panicked on {} {}: {why}",
                call.method, call.path
            ));
            discord_error(500, "500: Internal Server Error", 0)
        })
    };
    call.status = response.status().as_u16();
    lock(&s.calls).push(call);
    response
}

fn reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

fn ok(body: Value) -> Response {
    reply(200, body)
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

fn discord_error(status: u16, message: &str, code: u32) -> Response {
    reply(status, json!({ "message": message, "code": code }))
}

fn not_found() -> Response {
    discord_error(404, "404: Not Found", 0)
}

fn unknown_message() -> Response {
    discord_error(404, "Unknown Message", 10008)
}

fn unknown_webhook() -> Response {
    discord_error(404, "Unknown Webhook", 10015)
}

/// Discord's wording for an error code, else for the status.
fn error_message(status: u16, code: u32) -> &'static str {
    match code {
        10003 => "Unknown Channel",
        10004 => "Unknown Guild",
        10008 => "Unknown Message",
        10015 => "Unknown Webhook",
        10062 => "Unknown interaction",
        20028 => "The write action you are performing on the channel has hit the write rate limit.",
        40005 => "Request entity too large",
        40060 => "Interaction has already been acknowledged.",
        50001 => "Missing Access",
        50013 => "Missing Permissions",
        50035 => "Invalid Form Body",
        _ => match status {
            400 => "400: Bad Request",
            401 => "401: Unauthorized",
            403 => "403: Forbidden",
            404 => "404: Not Found",
            413 => "Request entity too large",
            429 => "You are being rate limited.",
            502 => "502: Bad Gateway",
            503 => "503: Service Unavailable",
            _ => "500: Internal Server Error",
        },
    }
}

fn fault_response(fault: &Fault) -> Response {
    let message = error_message(fault.status, fault.code);
    if fault.status != 429 {
        return discord_error(fault.status, message, fault.code);
    }
    let secs = fault.retry_after;
    let body = json!({
        "message": message, "retry_after": secs, "global": false, "code": fault.code,
    });
    let mut response = reply(429, body);
    let reset = chrono::Utc::now().timestamp() as f64 + secs;
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("retry-after", format!("{}", secs.ceil() as u64));
    set("x-ratelimit-limit", "5".into());
    set("x-ratelimit-remaining", "0".into());
    set("x-ratelimit-reset", format!("{reset:.3}"));
    set("x-ratelimit-reset-after", format!("{secs:.3}"));
    set("x-ratelimit-bucket", "fake-bucket".into());
    set("x-ratelimit-scope", "user".into());
    response
}

// ---------------------------------------------------------------------------------------------
// REST behaviour

impl Inner {
    /// With the channel limit on, a message posted or edited in a channel beyond it: how long
    /// until it would fit (it is counted when it fits).
    fn over_channel_limit(&self, call: &Call) -> Option<Duration> {
        let (max, per) = (*lock(&self.channel_limit))?;
        let segments = call.segments();
        let channel: u64 = match (call.method.as_str(), segments.as_slice()) {
            ("POST", ["channels", id, "messages"]) | ("PATCH", ["channels", id, "messages", _]) => {
                id.parse().ok()?
            }
            _ => return None,
        };
        let now = Instant::now();
        let mut counted = lock(&self.counted);
        let times = counted.entry(channel).or_default();
        times.retain(|t| now - *t < per);
        if times.len() >= max {
            return Some(times[times.len() - max] + per - now);
        }
        times.push_back(now);
        None
    }

    fn advertised_gateway(&self) -> String {
        lock(&self.advertised)
            .clone()
            .unwrap_or_else(|| self.gateway_url.clone())
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    fn problem(&self, what: String) {
        lock(&self.problems).push(what);
    }

    fn take_fault(&self, method: &str, path: &str) -> Option<Response> {
        let mut faults = lock(&self.faults);
        let index = faults
            .iter()
            .position(|f| method_matches(&f.method, method) && path_matches(&f.pattern, path))?;
        let response = fault_response(&faults[index]);
        faults[index].left -= 1;
        if faults[index].left == 0 {
            faults.remove(index);
        }
        Some(response)
    }

    fn route(&self, call: &Call) -> Response {
        let Some(segs) = api_segments(&call.path) else {
            return not_found();
        };
        let json = &call.json;
        let files = &call.files;
        let query = parse_query(&call.query);
        match (call.method.as_str(), segs.as_slice()) {
            ("GET", ["gateway"]) => ok(json!({ "url": self.advertised_gateway() })),
            ("GET", ["gateway", "bot"]) => ok(json!({
                "url": self.advertised_gateway(),
                "shards": 1,
                "session_start_limit": {
                    "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1
                },
            })),
            ("GET", ["users", "@me"]) => ok(current_user()),
            ("GET", ["users", user_id]) => match user_id.parse::<u64>() {
                Ok(BOT_USER_ID) => ok(bot_user()),
                Ok(id) => ok(user(id, &format!("user{id}"))),
                Err(_) => discord_error(404, "Unknown User", 10013),
            },
            ("POST", ["users", "@me", "channels"]) => self.open_dm(json),
            ("DELETE", ["users", "@me", "guilds", _]) => no_content(),
            ("GET", ["oauth2", "applications", "@me"]) => ok(application_info()),

            (_, ["applications", app, rest @ ..]) => {
                if app.parse::<u64>().ok() != Some(APP_ID) {
                    return discord_error(404, "Unknown Application", 10002);
                }
                match rest {
                    ["commands", rest @ ..] => self.commands(&call.method, None, rest, json),
                    ["guilds", guild, "commands", rest @ ..] => match guild.parse::<u64>() {
                        Ok(guild) => self.commands(&call.method, Some(guild), rest, json),
                        Err(_) => not_found(),
                    },
                    _ => not_found(),
                }
            }

            (_, ["channels", channel, rest @ ..]) => {
                let Ok(channel) = channel.parse::<u64>() else {
                    return not_found();
                };
                self.channel_route(&call.method, channel, rest, &query, json, files)
            }

            ("GET", ["guilds", guild]) => match guild.parse::<u64>() {
                Ok(id) => {
                    let tier = lock(&self.tiers).get(&id).copied().unwrap_or(0);
                    ok(guild_json(id, tier))
                }
                Err(_) => discord_error(404, "Unknown Guild", 10004),
            },
            ("GET", ["guilds", _, "members", user_id]) => match user_id.parse::<u64>() {
                Ok(id) => {
                    let mut m = member(user(id, &format!("user{id}")), "0");
                    if let Some(m) = m.as_object_mut() {
                        m.remove("permissions");
                    }
                    ok(m)
                }
                Err(_) => discord_error(404, "Unknown Member", 10007),
            },
            ("GET", ["guilds", _, "roles"]) => ok(json!([])),

            ("POST", ["interactions", _, token, "callback"]) => self.callback(token, json, files),
            (_, ["webhooks", app, token, rest @ ..]) => {
                if app.parse::<u64>().ok() != Some(APP_ID) {
                    return unknown_webhook();
                }
                self.webhook(&call.method, token, rest, json, files)
            }
            _ => not_found(),
        }
    }

    fn channel_route(
        &self,
        method: &str,
        channel: u64,
        rest: &[&str],
        query: &HashMap<String, String>,
        json: &Value,
        files: &[(String, String, Vec<u8>)],
    ) -> Response {
        match (method, rest) {
            ("GET", []) => match lock(&self.channels).get(&channel) {
                Some(info) => ok(channel_json(channel, info)),
                None => discord_error(404, "Unknown Channel", 10003),
            },
            ("POST", ["typing"]) => no_content(),
            ("POST", ["messages"]) => {
                // `enforce_nonce`: a message of ours with the same nonce is returned, not made again.
                if json["enforce_nonce"] == true && !json["nonce"].is_null() {
                    let earlier = lock(&self.messages)
                        .values()
                        .find(|m| {
                            m["channel_id"] == json!(channel.to_string())
                                && m["author"]["id"] == bot_user()["id"]
                                && m["nonce"] == json["nonce"]
                        })
                        .cloned();
                    if let Some(earlier) = earlier {
                        return ok(earlier);
                    }
                }
                let message = self.create_message(channel, json, files, None);
                ok(message)
            }
            ("GET", ["messages"]) => ok(Value::Array(self.list_messages(channel, query))),
            (_, ["messages", id, rest @ ..]) => {
                let Ok(id) = id.parse::<u64>() else {
                    return unknown_message();
                };
                match (method, rest) {
                    ("GET", []) => match self.stored_in(channel, id) {
                        Some(m) => ok(m),
                        None => unknown_message(),
                    },
                    ("PATCH", []) => {
                        if self.stored_in(channel, id).is_none() {
                            return unknown_message();
                        }
                        match self.edit_message(id, json, files) {
                            Some(m) => ok(m),
                            None => unknown_message(),
                        }
                    }
                    ("DELETE", []) => match self.stored_in(channel, id) {
                        Some(_) => {
                            lock(&self.messages).remove(&id);
                            no_content()
                        }
                        None => unknown_message(),
                    },
                    ("PUT", ["reactions", _, "@me"]) => no_content(),
                    ("DELETE", ["reactions", ..]) => no_content(),
                    _ => not_found(),
                }
            }
            _ => not_found(),
        }
    }

    fn open_dm(&self, json: &Value) -> Response {
        let Some(recipient) = id_of(&json["recipient_id"]) else {
            return discord_error(400, "Invalid Form Body", 50035);
        };
        let mut channels = lock(&self.channels);
        let existing = channels.iter().find_map(|(id, info)| {
            let theirs = info.recipient.as_ref().and_then(|u| id_of(&u["id"]));
            (info.guild.is_none() && theirs == Some(recipient)).then_some(*id)
        });
        let id = existing.unwrap_or_else(|| self.next_id());
        let info = channels.entry(id).or_insert_with(|| ChannelInfo {
            guild: None,
            recipient: Some(user(recipient, &format!("user{recipient}"))),
        });
        ok(channel_json(id, info))
    }

    // -- messages --------------------------------------------------------------------------

    fn store(&self, message: Value) {
        if let Some(id) = id_of(&message["id"]) {
            lock(&self.messages).insert(id, message);
        }
    }

    fn stored_in(&self, channel: u64, id: u64) -> Option<Value> {
        lock(&self.messages)
            .get(&id)
            .filter(|m| id_of(&m["channel_id"]) == Some(channel))
            .cloned()
    }

    fn channel_messages(&self, channel: u64) -> Vec<Value> {
        lock(&self.messages)
            .values()
            .rev()
            .filter(|m| id_of(&m["channel_id"]) == Some(channel))
            .cloned()
            .collect()
    }

    /// Newest first, honouring `limit` (default 50, at most 100), `before` and `after`.
    fn list_messages(&self, channel: u64, query: &HashMap<String, String>) -> Vec<Value> {
        let number = |key: &str| query.get(key).and_then(|v| v.parse::<u64>().ok());
        let limit = number("limit").unwrap_or(50).clamp(1, 100) as usize;
        let before = number("before").unwrap_or(u64::MAX);
        let after = number("after").unwrap_or(0);
        self.channel_messages(channel)
            .into_iter()
            .filter(|m| id_of(&m["id"]).is_some_and(|id| id < before && id > after))
            .take(limit)
            .collect()
    }

    fn learn_channel(&self, channel: u64, guild: Option<u64>, who: Option<Value>) {
        let mut channels = lock(&self.channels);
        let info = channels.entry(channel).or_default();
        if guild.is_some() {
            info.guild = guild;
        } else if info.guild.is_none() && info.recipient.is_none() {
            info.recipient = who.filter(|u| id_of(&u["id"]) != Some(BOT_USER_ID));
        }
    }

    fn learn_message(&self, message: &Value) {
        if let Some(channel) = id_of(&message["channel_id"]) {
            let guild = id_of(&message["guild_id"]);
            self.learn_channel(channel, guild, message.get("author").cloned());
        }
    }

    /// A message from the bot (or from the application's webhook when `webhook` is given:
    /// `(type, flags to add)`), built from a create-message body and its uploaded files.
    fn create_message(
        &self,
        channel: u64,
        body: &Value,
        files: &[(String, String, Vec<u8>)],
        webhook: Option<(u64, u64)>,
    ) -> Value {
        let id = self.next_id();
        let attachments = self.uploaded(body, files, |n| format!("sent-{id}-{n}"));
        let mut message = message_json(id, channel, None, bot_user(), "", attachments);
        apply_edit(&mut message, body);
        if !body["nonce"].is_null() {
            message["nonce"] = body["nonce"].clone();
        }
        if let Some(reference) = body.get("message_reference").filter(|r| r.is_object()) {
            let mut reference = reference.clone();
            if reference.get("channel_id").is_none_or(Value::is_null) {
                reference["channel_id"] = json!(channel.to_string());
            }
            let referenced = id_of(&reference["message_id"])
                .and_then(|target| lock(&self.messages).get(&target).cloned());
            message["message_reference"] = reference;
            if let Some(referenced) = referenced {
                message["referenced_message"] = without_reference(referenced);
            }
            message["type"] = json!(19);
        }
        if let Some((kind, flags)) = webhook {
            message["type"] = json!(kind);
            message["webhook_id"] = json!(APP_ID.to_string());
            message["application_id"] = json!(APP_ID.to_string());
            let old = message["flags"].as_u64().unwrap_or(0);
            message["flags"] = json!(old | flags);
        }
        let message = self.parseable(message);
        self.store(message.clone());
        message
    }

    /// Applies an edit body to a stored message; `None` if it is unknown.
    fn edit_message(
        &self,
        id: u64,
        body: &Value,
        files: &[(String, String, Vec<u8>)],
    ) -> Option<Value> {
        let mut message = lock(&self.messages).get(&id).cloned()?;
        apply_edit(&mut message, body);
        let mut attachments = message["attachments"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(keep) = body.get("attachments").and_then(Value::as_array) {
            let kept: Vec<u64> = keep.iter().filter_map(|a| id_of(&a["id"])).collect();
            attachments.retain(|a| id_of(&a["id"]).is_some_and(|id| kept.contains(&id)));
        }
        let edit = self.next_id();
        attachments.extend(self.uploaded(body, files, |n| format!("sent-{id}-{edit}-{n}")));
        message["attachments"] = Value::Array(attachments);
        message["edited_timestamp"] = json!(now());
        let message = self.parseable(message);
        self.store(message.clone());
        Some(message)
    }

    /// Attachment objects for the uploaded `files[n]` parts, served under `key(n)`.
    fn uploaded(
        &self,
        body: &Value,
        files: &[(String, String, Vec<u8>)],
        key: impl Fn(&str) -> String,
    ) -> Vec<Value> {
        let described = body["attachments"].as_array().cloned().unwrap_or_default();
        files
            .iter()
            .filter_map(|(part, filename, bytes)| {
                let n = part.strip_prefix("files[")?.strip_suffix(']')?;
                let name = key(n);
                lock(&self.files).insert(name.clone(), bytes.clone());
                let url = format!("{}/attachments/{name}", self.rest_url);
                let mut a = json!({
                    "id": self.next_id().to_string(),
                    "filename": filename,
                    "size": bytes.len(),
                    "url": url,
                    "proxy_url": url,
                });
                if let Some(mime) = content_type(filename, bytes) {
                    a["content_type"] = json!(mime);
                }
                if let Some((w, h)) = dimensions(bytes) {
                    a["width"] = json!(w);
                    a["height"] = json!(h);
                }
                let description = described
                    .iter()
                    .find(|d| id_of(&d["id"]).map(|i| i.to_string()).as_deref() == Some(n))
                    .and_then(|d| d.get("description"))
                    .filter(|d| d.is_string());
                if let Some(description) = description {
                    a["description"] = description.clone();
                }
                Some(a)
            })
            .collect()
    }

    /// The message itself if serenity parses it; else without the echoed embeds/components
    /// (noted in `problems`).
    fn parseable(&self, mut message: Value) -> Value {
        if let Err(e) = parse::<serenity::all::Message>(&message) {
            self.problem(format!(
                "serenity could not parse a message the fake built ({e}); dropped its embeds and components: {message}"
            ));
            message["embeds"] = json!([]);
            message["components"] = json!([]);
        }
        message
    }

    // -- interactions and webhooks ---------------------------------------------------------

    fn token(&self, token: &str) -> TokenState {
        if let Some(state) = lock(&self.tokens).get(token) {
            return state.clone();
        }
        let parts: Vec<u64> = token
            .strip_prefix("itk-")
            .map(|rest| rest.split('-').filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default();
        let nonzero = |i: usize| parts.get(i).copied().filter(|v| *v != 0);
        TokenState {
            channel: nonzero(1).unwrap_or(1),
            guild: nonzero(2),
            message: nonzero(3),
            ..TokenState::default()
        }
    }

    fn save_token(&self, token: &str, state: TokenState) {
        lock(&self.tokens).insert(token.to_owned(), state);
    }

    fn callback(&self, token: &str, json: &Value, files: &[(String, String, Vec<u8>)]) -> Response {
        let mut state = self.token(token);
        if state.callback.is_some() {
            return discord_error(400, error_message(400, 40060), 40060);
        }
        let kind = json["type"].as_u64();
        let empty = json!({});
        let data = json.get("data").filter(|d| d.is_object()).unwrap_or(&empty);
        match kind {
            Some(1 | 8 | 9) => {}
            Some(4) => {
                let m = self.create_message(state.channel, data, files, Some((20, 0)));
                state.original = id_of(&m["id"]);
            }
            Some(5) => {
                let mut body = json!({ "content": "" });
                if let Some(flags) = data.get("flags") {
                    body["flags"] = flags.clone();
                }
                let m = self.create_message(state.channel, &body, &[], Some((20, LOADING)));
                state.original = id_of(&m["id"]);
            }
            Some(6) => state.original = state.message,
            Some(7) => {
                if let Some(id) = state.message {
                    self.edit_message(id, data, files);
                }
                state.original = state.message;
            }
            _ => return discord_error(400, "Invalid Form Body", 50035),
        }
        state.callback = kind;
        self.save_token(token, state);
        no_content()
    }

    fn webhook(
        &self,
        method: &str,
        token: &str,
        rest: &[&str],
        json: &Value,
        files: &[(String, String, Vec<u8>)],
    ) -> Response {
        if lock(&self.expired).contains(token) {
            return discord_error(401, "Invalid Webhook Token", 50027);
        }
        let mut state = self.token(token);
        if state.callback.is_none() {
            return unknown_webhook();
        }
        match (method, rest) {
            ("POST", []) => {
                // The first follow-up after a deferral resolves the loading message: it edits
                // `@original`, whose visibility stays that of the deferral (`flags` ignored).
                let loading = state.original.filter(|id| {
                    lock(&self.messages)
                        .get(id)
                        .is_some_and(|m| m["flags"].as_u64().unwrap_or(0) & LOADING != 0)
                });
                let Some(id) = loading else {
                    return ok(self.create_message(state.channel, json, files, Some((0, 0))));
                };
                if let Some(m) = lock(&self.messages).get_mut(&id) {
                    let flags = m["flags"].as_u64().unwrap_or(0);
                    m["flags"] = json!(flags & !LOADING);
                }
                let mut body = json.clone();
                if let Some(fields) = body.as_object_mut() {
                    fields.remove("flags");
                }
                match self.edit_message(id, &body, files) {
                    Some(m) => ok(m),
                    None => unknown_message(),
                }
            }
            (_, ["messages", which]) => {
                let id = if *which == "@original" {
                    state.original
                } else {
                    which.parse::<u64>().ok()
                };
                let Some(id) = id.filter(|id| lock(&self.messages).contains_key(id)) else {
                    return unknown_message();
                };
                match method {
                    "GET" => self.message_or_404(id),
                    "PATCH" => {
                        if let Some(m) = lock(&self.messages).get_mut(&id) {
                            let flags = m["flags"].as_u64().unwrap_or(0);
                            m["flags"] = json!(flags & !LOADING);
                        }
                        match self.edit_message(id, json, files) {
                            Some(m) => ok(m),
                            None => unknown_message(),
                        }
                    }
                    "DELETE" => {
                        lock(&self.messages).remove(&id);
                        if state.original == Some(id) {
                            state.original = None;
                            self.save_token(token, state);
                        }
                        no_content()
                    }
                    _ => not_found(),
                }
            }
            _ => not_found(),
        }
    }

    fn message_or_404(&self, id: u64) -> Response {
        match lock(&self.messages).get(&id) {
            Some(m) => ok(m.clone()),
            None => unknown_message(),
        }
    }

    // -- application commands --------------------------------------------------------------

    fn commands(&self, method: &str, guild: Option<u64>, rest: &[&str], json: &Value) -> Response {
        let in_scope = |c: &Value| id_of(&c["guild_id"]) == guild;
        match (method, rest) {
            ("GET", []) => {
                let list: Vec<Value> = lock(&self.commands)
                    .iter()
                    .filter(|c| in_scope(c))
                    .cloned()
                    .collect();
                ok(Value::Array(list))
            }
            ("PUT", []) => {
                let Some(items) = json.as_array() else {
                    return discord_error(400, "Invalid Form Body", 50035);
                };
                let echoed: Vec<Value> =
                    items.iter().map(|c| self.echo_command(c, guild)).collect();
                let mut commands = lock(&self.commands);
                commands.retain(|c| !in_scope(c));
                commands.extend(echoed.iter().cloned());
                ok(Value::Array(echoed))
            }
            ("POST", []) => {
                let command = self.echo_command(json, guild);
                let mut commands = lock(&self.commands);
                let before = commands.len();
                commands.retain(|c| !(in_scope(c) && c["name"] == command["name"]));
                let status = if commands.len() == before { 201 } else { 200 };
                commands.push(command.clone());
                reply(status, command)
            }
            (_, [id]) => {
                let id = id.parse::<u64>().ok();
                let mut commands = lock(&self.commands);
                let Some(index) = commands
                    .iter()
                    .position(|c| in_scope(c) && id_of(&c["id"]) == id)
                else {
                    return discord_error(404, "Unknown application command", 10063);
                };
                match method {
                    "GET" => ok(commands[index].clone()),
                    "PATCH" => {
                        if let (Some(c), Some(edit)) =
                            (commands[index].as_object_mut(), json.as_object())
                        {
                            c.extend(edit.clone());
                            c.insert("version".into(), json!(self.next_id().to_string()));
                        }
                        ok(commands[index].clone())
                    }
                    "DELETE" => {
                        commands.remove(index);
                        no_content()
                    }
                    _ => not_found(),
                }
            }
            _ => not_found(),
        }
    }

    /// A command object echoing a create-command body: a stable id ([`command_id`] of its name)
    /// plus the fields serenity's `Command` requires.
    fn echo_command(&self, body: &Value, guild: Option<u64>) -> Value {
        let mut c = body.as_object().cloned().unwrap_or_default();
        let name = c
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        c.insert("id".into(), json!(command_id(&name).to_string()));
        c.insert("application_id".into(), json!(APP_ID.to_string()));
        c.insert("version".into(), json!(self.next_id().to_string()));
        let defaults = [
            ("type", json!(1)),
            ("description", json!("")),
            ("options", json!([])),
            ("default_member_permissions", Value::Null),
            ("nsfw", json!(false)),
        ];
        for (key, value) in defaults {
            if c.get(key).is_none_or(Value::is_null) {
                c.insert(key.into(), value);
            }
        }
        if let Some(guild) = guild {
            c.insert("guild_id".into(), json!(guild.to_string()));
        }
        Value::Object(c)
    }
}

/// Copies what a create/edit body sets onto a message.
fn apply_edit(message: &mut Value, body: &Value) {
    if let Some(content) = body.get("content") {
        let content = content.as_str().unwrap_or("");
        message["content"] = json!(content);
        message["mentions"] = Value::Array(user_mentions(content));
        message["mention_roles"] = json!(role_mentions(content));
        message["mention_everyone"] = json!(content.contains("@everyone"));
    }
    for key in ["embeds", "components"] {
        if let Some(v) = body.get(key).filter(|v| v.is_array()) {
            message[key] = v.clone();
        }
    }
    if let Some(flags) = body.get("flags").and_then(Value::as_u64) {
        message["flags"] = json!(flags);
    }
    if let Some(tts) = body.get("tts").and_then(Value::as_bool) {
        message["tts"] = json!(tts);
    }
}

/// A referenced message as Discord nests it: without its own `referenced_message`.
fn without_reference(mut message: Value) -> Value {
    if let Some(m) = message.as_object_mut() {
        m.remove("referenced_message");
    }
    message
}

fn content_type(filename: &str, bytes: &[u8]) -> Option<&'static str> {
    if let Ok(format) = image::guess_format(bytes) {
        return Some(format.to_mime_type());
    }
    let ext = filename.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "txt" => "text/plain; charset=utf-8",
        "json" => "application/json",
        _ => return None,
    })
}

fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A snowflake given as a JSON string or number.
fn id_of(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (multipart::percent_decode(k), multipart::percent_decode(v)))
        .collect()
}

fn current_user() -> Value {
    let mut me = bot_user();
    me["verified"] = json!(true);
    me["mfa_enabled"] = json!(false);
    me["flags"] = json!(0);
    me
}

fn application_info() -> Value {
    json!({
        "id": APP_ID.to_string(),
        "name": BOT_NAME,
        "icon": null,
        "description": "",
        "rpc_origins": [],
        "bot_public": true,
        "bot_require_code_grant": false,
        "owner": user(OWNER_ID, "owner"),
        "verify_key": "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "team": null,
        "flags": 0,
        "bot": bot_user(),
    })
}

/// A GUILD_CREATE payload: the bot joined (or, at start, has) server `id`.
pub fn guild_create(id: u64) -> Value {
    let mut g = guild_json(id, 0);
    let extra = json!({
        "joined_at": now(), "large": false, "member_count": 2, "members": [], "channels": [],
        "threads": [], "presences": [], "voice_states": [], "stage_instances": [],
        "guild_scheduled_events": [], "unavailable": false,
    });
    for (k, v) in extra.as_object().unwrap() {
        g[k] = v.clone();
    }
    checked::<serenity::all::Guild>("GUILD_CREATE payload", &g);
    g
}

fn guild_json(id: u64, tier: u8) -> Value {
    let boosts = [0, 2, 7, 14][usize::from(tier.min(3))];
    json!({
        "id": id.to_string(), "name": format!("Guild {id}"), "icon": null, "icon_hash": null,
        "splash": null, "discovery_splash": null, "owner_id": OWNER_ID.to_string(),
        "afk_channel_id": null, "afk_timeout": 300, "widget_enabled": false,
        "widget_channel_id": null, "verification_level": 0, "default_message_notifications": 0,
        "explicit_content_filter": 0, "roles": [], "emojis": [], "features": [], "mfa_level": 0,
        "application_id": null, "system_channel_id": null, "system_channel_flags": 0,
        "rules_channel_id": null, "max_presences": null, "max_members": 500000,
        "vanity_url_code": null, "description": null, "banner": null, "premium_tier": tier,
        "premium_subscription_count": boosts, "preferred_locale": "en-US",
        "public_updates_channel_id": null, "max_video_channel_users": 25,
        "max_stage_video_channel_users": 50, "nsfw_level": 0, "stickers": [],
        "premium_progress_bar_enabled": false, "safety_alerts_channel_id": null,
    })
}

fn channel_json(id: u64, info: &ChannelInfo) -> Value {
    match info.guild {
        Some(guild) => json!({
            "id": id.to_string(), "type": 0, "guild_id": guild.to_string(),
            "name": format!("channel-{id}"), "position": 0, "permission_overwrites": [],
            "nsfw": false, "parent_id": null, "topic": null, "last_message_id": null,
            "rate_limit_per_user": 0, "flags": 0,
        }),
        None => {
            let recipient = info
                .recipient
                .clone()
                .unwrap_or_else(|| user(OWNER_ID, "owner"));
            json!({
                "id": id.to_string(), "type": 1, "last_message_id": null,
                "recipients": [recipient], "flags": 0,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway

async fn accept_gateway(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(gateway_connection(stream, inner.clone()));
    }
}

async fn gateway_connection(stream: TcpStream, inner: Arc<Inner>) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let conn = {
        let mut gw = lock(&inner.gateway);
        gw.next_conn += 1;
        gw.next_conn
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let ready = Arc::new(AtomicBool::new(false));
    let interval = inner.heartbeat_interval.load(Ordering::SeqCst);
    let hello = json!({ "op": 10, "d": { "heartbeat_interval": interval } });
    if sink.send(WsMessage::Text(hello.to_string())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            incoming = source.next() => match incoming {
                Some(Ok(WsMessage::Text(text))) => inner.on_gateway_payload(conn, &text, &tx, &ready),
                Some(Ok(WsMessage::Binary(bytes))) => {
                    inner.on_gateway_payload(conn, &String::from_utf8_lossy(&bytes), &tx, &ready);
                }
                // A Close is answered by tungstenite on the next read; keep reading until the
                // handshake completes and the stream ends.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            out = rx.recv() => {
                let Some(out) = out else { break };
                let sent = match out {
                    Out::Frame(text) => sink.send(WsMessage::Text(text)).await,
                    Out::Ready(text) => {
                        let sent = sink.send(WsMessage::Text(text)).await;
                        ready.store(sent.is_ok(), Ordering::SeqCst);
                        sent
                    }
                    Out::Close(code) => {
                        let frame = CloseFrame { code: code.into(), reason: "".into() };
                        sink.send(WsMessage::Close(Some(frame))).await
                    }
                };
                if sent.is_err() {
                    break;
                }
            }
        }
    }
    lock(&inner.gateway).live.remove(&conn);
}

impl Inner {
    fn on_gateway_payload(
        &self,
        conn: u64,
        text: &str,
        tx: &mpsc::UnboundedSender<Out>,
        ready: &Arc<AtomicBool>,
    ) {
        let Ok(payload) = serde_json::from_str::<Value>(text) else {
            let _ = tx.send(Out::Close(4002)); // decode error
            return;
        };
        let d = &payload["d"];
        let mut gw = lock(&self.gateway);
        match payload["op"].as_u64() {
            Some(1) => {
                gw.heartbeats += 1;
                let _ = tx.send(Out::Frame(json!({ "op": 11 }).to_string()));
            }
            Some(2) => {
                gw.identifies.push(d.clone());
                if !token_ok(d) {
                    let _ = tx.send(Out::Close(4004)); // authentication failed
                    return;
                }
                if gw.live.contains_key(&conn) {
                    let _ = tx.send(Out::Close(4005)); // already authenticated
                    return;
                }
                gw.next_session += 1;
                let session = format!("s{}", gw.next_session);
                gw.sessions.insert(session.clone(), 0);
                let live = Live {
                    session: session.clone(),
                    tx: tx.clone(),
                    ready: ready.clone(),
                };
                gw.live.insert(conn, live);
                let shard = if d["shard"].is_array() {
                    d["shard"].clone()
                } else {
                    json!([0, 1])
                };
                let data = json!({
                    "v": 10,
                    "user": current_user(),
                    "guilds": [],
                    "session_id": session,
                    "resume_gateway_url": self.gateway_url,
                    "shard": shard,
                    "application": { "id": APP_ID.to_string(), "flags": 0 },
                });
                gw.push(conn, "READY", &data, true);
                gw.drain(conn);
            }
            Some(6) => {
                gw.resumes.push(d.clone());
                let session = d["session_id"].as_str().unwrap_or("").to_owned();
                if !token_ok(d) || !gw.sessions.contains_key(&session) {
                    let _ = tx.send(Out::Frame(json!({ "op": 9, "d": false }).to_string()));
                    return;
                }
                gw.live.retain(|_, l| l.session != session);
                let live = Live {
                    session,
                    tx: tx.clone(),
                    ready: ready.clone(),
                };
                gw.live.insert(conn, live);
                gw.push(conn, "RESUMED", &json!({}), true);
                gw.drain(conn);
            }
            _ => {} // presence updates, voice state, member requests: ignored
        }
    }
}

fn token_ok(d: &Value) -> bool {
    let token = d["token"].as_str().unwrap_or("");
    token == TOKEN || token.strip_prefix("Bot ") == Some(TOKEN)
}

// ---------------------------------------------------------------------------------------------
// Request bodies: JSON or multipart/form-data

type Files = Vec<(String, String, Vec<u8>)>;

fn parse_body(headers: &HeaderMap, body: &[u8]) -> (Value, Files) {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match multipart::boundary(content_type) {
        Some(boundary) => parse_multipart(body, &boundary),
        None if body.is_empty() => (Value::Null, Vec::new()),
        None => (
            serde_json::from_slice(body).unwrap_or(Value::Null),
            Vec::new(),
        ),
    }
}

/// The parsed `payload_json` part (Null if none) and the file parts.
fn parse_multipart(body: &[u8], boundary: &str) -> (Value, Files) {
    let mut json = Value::Null;
    let mut files = Vec::new();
    for part in multipart::parts(body, boundary) {
        match part.filename {
            Some(filename) => files.push((part.name, filename, part.data.to_vec())),
            None if part.name == "payload_json" => {
                json = serde_json::from_slice(part.data).unwrap_or(Value::Null);
            }
            None => {}
        }
    }
    (json, files)
}

// ---------------------------------------------------------------------------------------------
// Fixture builders

/// Parses like serenity does with gateway text: from the serialized JSON.
fn parse<T: serde::de::DeserializeOwned>(value: &Value) -> serde_json::Result<T> {
    serde_json::from_str(&value.to_string())
}

fn checked<T: serde::de::DeserializeOwned>(what: &str, value: &Value) {
    if let Err(e) = parse::<T>(value) {
        panic!("serenity cannot parse this {what} ({e}): {value:#}");
    }
}

fn checked_interaction(value: Value, kind: &str) -> Value {
    use serenity::all::Interaction;
    let parsed: Interaction = parse(&value)
        .unwrap_or_else(|e| panic!("serenity cannot parse this interaction ({e}): {value:#}"));
    let got = match parsed {
        Interaction::Command(_) => "command",
        Interaction::Component(_) => "component",
        Interaction::Modal(_) => "modal",
        Interaction::Autocomplete(_) => "autocomplete",
        Interaction::Ping(_) => "ping",
        _ => "unknown",
    };
    assert_eq!(
        got, kind,
        "serenity parsed the fixture as the wrong kind: {value:#}"
    );
    value
}

/// A stable command id for a command name (the fake answers registrations with the same ids).
pub fn command_id(name: &str) -> u64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    1_100_000 + hash % 1_000_000
}

/// The token the interaction builders use (see the module docs).
pub fn interaction_token(
    id: u64,
    channel_id: u64,
    guild_id: Option<u64>,
    message_id: Option<u64>,
) -> String {
    format!(
        "itk-{id}-{channel_id}-{}-{}",
        guild_id.unwrap_or(0),
        message_id.unwrap_or(0)
    )
}

/// The bot user (`bot: true`).
pub fn bot_user() -> Value {
    json!({
        "id": BOT_USER_ID.to_string(), "username": BOT_NAME, "discriminator": "0",
        "global_name": null, "avatar": null, "bot": true,
    })
}

pub fn user(id: u64, name: &str) -> Value {
    let user = json!({
        "id": id.to_string(), "username": name, "discriminator": "0",
        "global_name": name, "avatar": null,
    });
    checked::<serenity::all::User>("User", &user);
    user
}

pub fn attachment(
    id: u64,
    filename: &str,
    url: &str,
    size: u64,
    content_type: Option<&str>,
    width: Option<u32>,
    height: Option<u32>,
) -> Value {
    let mut a = json!({
        "id": id.to_string(), "filename": filename, "size": size, "url": url, "proxy_url": url,
    });
    if let Some(ct) = content_type {
        a["content_type"] = json!(ct);
    }
    if let (Some(w), Some(h)) = (width, height) {
        a["width"] = json!(w);
        a["height"] = json!(h);
    }
    checked::<serenity::all::Attachment>("Attachment", &a);
    a
}

/// Users mentioned as `<@id>` or `<@!id>` (the bot as [`bot_user`]).
fn user_mentions(content: &str) -> Vec<Value> {
    let mut ids: Vec<u64> = Vec::new();
    for piece in content.split("<@").skip(1) {
        let Some((inner, _)) = piece.split_once('>') else {
            continue;
        };
        if let Ok(id) = inner.trim_start_matches('!').parse::<u64>()
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids.into_iter()
        .map(|id| {
            if id == BOT_USER_ID {
                bot_user()
            } else {
                user(id, &format!("user{id}"))
            }
        })
        .collect()
}

/// Roles mentioned as `<@&id>`.
fn role_mentions(content: &str) -> Vec<String> {
    content
        .split("<@&")
        .skip(1)
        .filter_map(|piece| piece.split_once('>'))
        .filter(|(id, _)| id.parse::<u64>().is_ok())
        .map(|(id, _)| id.to_owned())
        .collect()
}

fn message_json(
    id: u64,
    channel_id: u64,
    guild_id: Option<u64>,
    author: Value,
    content: &str,
    attachments: Vec<Value>,
) -> Value {
    let mut m = json!({
        "id": id.to_string(), "channel_id": channel_id.to_string(), "author": author,
        "content": content, "timestamp": now(), "edited_timestamp": null, "tts": false,
        "mention_everyone": content.contains("@everyone"), "mentions": user_mentions(content),
        "mention_roles": role_mentions(content), "attachments": attachments, "embeds": [],
        "pinned": false, "type": 0, "flags": 0, "components": [],
    });
    if let Some(guild) = guild_id {
        m["guild_id"] = json!(guild.to_string());
    }
    m
}

/// A message as the gateway sends it. In a guild it carries `guild_id` and a partial `member`;
/// with `referenced` it is a reply (type 19) with `message_reference` and `referenced_message`;
/// `mentions` lists every `<@id>` in `content` (the bot for `<@1000>`).
pub fn message(
    id: u64,
    channel_id: u64,
    guild_id: Option<u64>,
    author: Value,
    content: &str,
    attachments: Vec<Value>,
    referenced: Option<Value>,
) -> Value {
    let mut m = message_json(id, channel_id, guild_id, author, content, attachments);
    if guild_id.is_some() {
        m["member"] = json!({
            "roles": [], "joined_at": now(), "deaf": false, "mute": false, "flags": 0,
        });
    }
    if let Some(referenced) = referenced {
        let mut reference = json!({
            "type": 0,
            "message_id": referenced["id"].clone(),
            "channel_id": referenced["channel_id"].clone(),
        });
        if let Some(guild) = referenced.get("guild_id") {
            reference["guild_id"] = guild.clone();
        }
        m["type"] = json!(19);
        m["message_reference"] = reference;
        m["referenced_message"] = without_reference(referenced);
    }
    checked::<serenity::all::Message>("Message", &m);
    m
}

/// A guild member as interactions carry it, with the `permissions` bitfield string.
pub fn member(user: Value, permissions: &str) -> Value {
    let m = json!({
        "user": user, "nick": null, "avatar": null, "roles": [], "joined_at": now(),
        "premium_since": null, "deaf": false, "mute": false, "flags": 0, "pending": false,
        "permissions": permissions, "communication_disabled_until": null,
    });
    checked::<serenity::all::Member>("Member", &m);
    m
}

/// A command option `{"name","type","value"}` (3 string, 4 integer, 5 boolean, 11 attachment
/// with the attachment id as value).
pub fn option(name: &str, kind: u8, value: Value) -> Value {
    json!({ "name": name, "type": kind, "value": value })
}

/// A subcommand option (type 1) with nested options.
pub fn subcommand(name: &str, options: Vec<Value>) -> Value {
    json!({ "name": name, "type": 1, "options": options })
}

/// Who invoked an interaction, where.
struct Origin<'a> {
    id: u64,
    channel_id: u64,
    guild_id: Option<u64>,
    who: Value,
    permissions: &'a str,
    locale: &'a str,
}

/// The common part of an interaction. In a guild: `guild_id`, `member` (with `permissions`),
/// `guild_locale`; in a DM: `user` (and `permissions` is ignored).
fn interaction(origin: Origin<'_>, kind: u8, data: Value, message: Option<&Value>) -> Value {
    let Origin {
        id,
        channel_id,
        guild_id,
        who,
        permissions,
        locale,
    } = origin;
    let message_id = message.and_then(|m| id_of(&m["id"]));
    let mut v = json!({
        "id": id.to_string(),
        "application_id": APP_ID.to_string(),
        "type": kind,
        "data": data,
        "channel_id": channel_id.to_string(),
        "token": interaction_token(id, channel_id, guild_id, message_id),
        "version": 1,
        "app_permissions": APP_PERMISSIONS.to_string(),
        "locale": locale,
        "entitlements": [],
        "authorizing_integration_owners": { "0": guild_id.unwrap_or(0).to_string() },
        "context": if guild_id.is_some() { 0 } else { 1 },
        "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
    });
    match guild_id {
        Some(guild) => {
            v["guild_id"] = json!(guild.to_string());
            v["member"] = member(who, permissions);
            v["guild_locale"] = json!("en-US");
        }
        None => v["user"] = who,
    }
    if let Some(message) = message {
        v["message"] = message.clone();
    }
    v
}

/// `/edit` (type 2, data type 1): `options` as given (see [`option`]), and every attachment in
/// `resolved.attachments` keyed by its id.
#[allow(clippy::too_many_arguments)]
pub fn slash_edit(
    id: u64,
    channel_id: u64,
    guild_id: Option<u64>,
    who: Value,
    permissions: &str,
    options: Vec<Value>,
    attachments: Vec<Value>,
    locale: &str,
) -> Value {
    let resolved: Map<String, Value> = attachments
        .into_iter()
        .map(|a| (a["id"].as_str().unwrap_or("0").to_owned(), a))
        .collect();
    let data = json!({
        "id": command_id("edit").to_string(), "name": "edit", "type": 1, "options": options,
        "resolved": { "attachments": resolved },
    });
    let origin = Origin {
        id,
        channel_id,
        guild_id,
        who,
        permissions,
        locale,
    };
    let v = interaction(origin, 2, data, None);
    checked_interaction(v, "command")
}

/// Any slash command (type 2, data type 1), e.g. `quota`, or `quota-admin` with a
/// [`subcommand`] option.
#[allow(clippy::too_many_arguments)]
pub fn slash_command(
    id: u64,
    name: &str,
    channel_id: u64,
    guild_id: Option<u64>,
    who: Value,
    permissions: &str,
    options: Vec<Value>,
    locale: &str,
) -> Value {
    let data = json!({
        "id": command_id(name).to_string(), "name": name, "type": 1, "options": options,
    });
    let origin = Origin {
        id,
        channel_id,
        guild_id,
        who,
        permissions,
        locale,
    };
    let v = interaction(origin, 2, data, None);
    checked_interaction(v, "command")
}

/// The "Edit image" message context-menu command (type 2, data type 3) on `target`.
pub fn context_menu(
    id: u64,
    channel_id: u64,
    guild_id: Option<u64>,
    who: Value,
    permissions: &str,
    target: Value,
    locale: &str,
) -> Value {
    let target_id = target["id"].as_str().unwrap_or("0").to_owned();
    let mut messages = Map::new();
    messages.insert(target_id.clone(), target);
    let data = json!({
        "id": command_id("Edit image").to_string(), "name": "Edit image", "type": 3,
        "target_id": target_id, "resolved": { "messages": messages },
    });
    let origin = Origin {
        id,
        channel_id,
        guild_id,
        who,
        permissions,
        locale,
    };
    let v = interaction(origin, 2, data, None);
    checked_interaction(v, "command")
}

/// A modal submit (type 5): one action row with a text input per `(custom_id, value)`.
#[allow(clippy::too_many_arguments)]
pub fn modal_submit(
    id: u64,
    channel_id: u64,
    guild_id: Option<u64>,
    who: Value,
    permissions: &str,
    custom_id: &str,
    fields: &[(&str, &str)],
    locale: &str,
) -> Value {
    let rows: Vec<Value> = fields
        .iter()
        .map(|(field, value)| {
            json!({ "type": 1, "components": [
                { "type": 4, "custom_id": field, "value": value }
            ]})
        })
        .collect();
    let data = json!({ "custom_id": custom_id, "components": rows });
    let origin = Origin {
        id,
        channel_id,
        guild_id,
        who,
        permissions,
        locale,
    };
    let v = interaction(origin, 5, data, None);
    checked_interaction(v, "modal")
}

/// A button press (type 3, component_type 2) on `message`.
#[allow(clippy::too_many_arguments)]
pub fn button_press(
    id: u64,
    channel_id: u64,
    guild_id: Option<u64>,
    who: Value,
    permissions: &str,
    custom_id: &str,
    message: Value,
    locale: &str,
) -> Value {
    let data = json!({ "custom_id": custom_id, "component_type": 2 });
    let origin = Origin {
        id,
        channel_id,
        guild_id,
        who,
        permissions,
        locale,
    };
    let v = interaction(origin, 3, data, Some(&message));
    checked_interaction(v, "component")
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_fake_discord_speaks_rest_and_gateway_to_the_real_serenity_client() {
    use serenity::all::{
        Channel, ChannelId, ClientBuilder, Command, CommandOptionType, CommandType, Context,
        CreateAttachment, CreateCommand, CreateCommandOption, CreateInteractionResponseFollowup,
        CreateMessage, EditMessage, EventHandler, GatewayIntents, GetMessages, GuildId,
        HttpBuilder, Interaction, Message, MessageId, Permissions, PremiumTier, Ready,
        ResolvedValue,
    };
    use serenity::http::HttpError;

    struct Handler {
        report: mpsc::UnboundedSender<String>,
    }

    #[serenity::async_trait]
    impl EventHandler for Handler {
        async fn ready(&self, _ctx: Context, ready: Ready) {
            let _ = self.report.send(format!("ready {}", ready.user.name));
        }

        async fn message(&self, ctx: Context, msg: Message) {
            if msg.author.bot {
                return;
            }
            let mut input = Vec::new();
            if let Some(a) = msg.attachments.first() {
                let got = reqwest::get(&a.url)
                    .await
                    .and_then(|r| r.error_for_status());
                match got {
                    Ok(r) => input = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
                    Err(e) => {
                        let _ = self.report.send(format!("download failed: {e}"));
                        return;
                    }
                }
            }
            let mut reply = CreateMessage::new()
                .content(format!("edited {} bytes", input.len()))
                .reference_message(&msg);
            if !input.is_empty() {
                reply = reply.add_file(CreateAttachment::bytes(input, "edited.png"));
            }
            let sent = msg.channel_id.send_message(&ctx, reply).await;
            let reacted = msg.react(&ctx, '👀').await;
            let _ = self.report.send(format!(
                "replied to {}: {:?} {:?}",
                msg.id,
                sent.map(|m| (m.id.get(), m.attachments.len())),
                reacted.map(|r| r.message_id.get())
            ));
        }

        async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
            let Interaction::Command(cmd) = interaction else {
                return;
            };
            let image = cmd.data.options().into_iter().find_map(|o| match o.value {
                ResolvedValue::Attachment(a) => Some(a.filename.clone()),
                _ => None,
            });
            let deferred = cmd.defer(&ctx).await;
            let followup = CreateInteractionResponseFollowup::new()
                .content("done")
                .add_file(CreateAttachment::bytes(b"result bytes".to_vec(), "out.png"));
            let sent = cmd.create_followup(&ctx, followup).await;
            let _ = self.report.send(format!(
                "command {} image={image:?} deferred={:?} followup={:?}",
                cmd.data.name,
                deferred.is_ok(),
                sent.map(|m| m.attachments.first().map(|a| a.filename.clone()))
            ));
        }
    }

    async fn next_report(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the handler reported nothing within 10 s")
            .expect("report channel closed")
    }

    let fake = FakeDiscord::start().await;
    let http = HttpBuilder::new(TOKEN)
        .proxy(&fake.rest_url)
        .ratelimiter_disabled(true)
        .build();
    let intents = GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::DIRECT_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
        | GatewayIntents::GUILDS;
    let (report, mut reports) = mpsc::unbounded_channel();
    let mut client = ClientBuilder::new_with_http(http, intents)
        .event_handler(Handler { report })
        .await
        .unwrap();
    let http = client.http.clone();
    let shard_manager = client.shard_manager.clone();
    let task = tokio::spawn(async move { client.start().await });

    // Handshake: GET /gateway, IDENTIFY with our intents, READY sets the application id.
    fake.wait_ready(10).await;
    assert_eq!(next_report(&mut reports).await, format!("ready {BOT_NAME}"));
    assert_eq!(fake.calls_to("GET", "/api/v10/gateway").len(), 1);
    let identify = fake.identifies().remove(0);
    assert_eq!(identify["intents"], json!(intents.bits()));
    assert_eq!(identify["shard"], json!([0, 1]));
    assert_eq!(http.application_id().map(|a| a.get()), Some(APP_ID));

    // MESSAGE_CREATE with an attachment -> download, multipart reply, reaction.
    let input = super::images::png(64, 48);
    let url = fake.add_attachment("in.png", input.clone());
    let alice = user(77, "alice");
    let photo = attachment(
        5000,
        "in.png",
        &url,
        input.len() as u64,
        Some("image/png"),
        Some(64),
        Some(48),
    );
    let incoming = message(
        6000,
        42,
        Some(7),
        alice.clone(),
        "<@1000> make it night",
        vec![photo],
        None,
    );
    assert_eq!(incoming["mentions"][0]["id"], json!("1000"));
    fake.dispatch("MESSAGE_CREATE", incoming);
    let post = fake
        .wait_for("POST", "/channels/42/messages", 1, 10)
        .await
        .remove(0);
    assert_eq!(post.status, 200);
    assert_eq!(post.files.len(), 1);
    assert_eq!(
        (post.files[0].0.as_str(), post.files[0].1.as_str()),
        ("files[0]", "edited.png")
    );
    assert_eq!(post.file("files[0]"), Some(input.as_slice()));
    assert_eq!(post.json["message_reference"]["message_id"], json!("6000"));
    assert_eq!(
        post.json["content"],
        json!(format!("edited {} bytes", input.len()))
    );
    fake.wait_for("PUT", "/channels/42/messages/6000/reactions/*/@me", 1, 10)
        .await;
    let report = next_report(&mut reports).await;
    assert_eq!(report, "replied to 6000: Ok((900000, 1)) Ok(6000)");
    assert_eq!(
        fake.reactions(),
        vec![Reaction {
            channel_id: 42,
            message_id: 6000,
            emoji: "👀".into(),
            added: true
        }]
    );
    assert_eq!(fake.downloads(), vec!["in.png".to_owned()]);
    let sent = fake.message(900_000).unwrap();
    assert_eq!(
        (
            sent["type"].clone(),
            sent["referenced_message"]["id"].clone()
        ),
        (json!(19), json!("6000"))
    );
    assert_eq!(
        (
            sent["attachments"][0]["width"].clone(),
            sent["attachments"][0]["height"].clone()
        ),
        (json!(64), json!(48))
    );
    let served = reqwest::get(sent["attachments"][0]["url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(served.bytes().await.unwrap().as_ref(), input.as_slice());

    // INTERACTION_CREATE /edit -> deferred callback (type 5) -> follow-up with a file.
    let picture = attachment(
        5001,
        "cat.png",
        &url,
        input.len() as u64,
        Some("image/png"),
        Some(64),
        Some(48),
    );
    let options = vec![
        option("prompt", 3, json!("make it night")),
        option("image", 11, json!("5001")),
    ];
    let slash = slash_edit(
        7000,
        42,
        Some(7),
        alice.clone(),
        "8",
        options,
        vec![picture],
        "de",
    );
    let token = slash["token"].as_str().unwrap().to_owned();
    fake.dispatch("INTERACTION_CREATE", slash);
    let callback = fake
        .wait_for("POST", "/interactions/7000/*/callback", 1, 10)
        .await
        .remove(0);
    assert_eq!(
        callback.path,
        format!("/api/v10/interactions/7000/{token}/callback")
    );
    assert_eq!(callback.json["type"], json!(5));
    let followup = fake
        .wait_for("POST", "/webhooks/1000/*", 1, 10)
        .await
        .remove(0);
    assert_eq!(followup.status, 200);
    assert_eq!(followup.file("files[0]"), Some(b"result bytes".as_slice()));
    assert_eq!(followup.files[0].1, "out.png");
    assert_eq!(followup.json["content"], json!("done"));
    assert!(callback.at <= followup.at);
    assert_eq!(
        next_report(&mut reports).await,
        "command edit image=Some(\"cat.png\") deferred=true followup=Ok(Some(\"out.png\"))"
    );

    // op 7 RECONNECT -> serenity RESUMEs; the next event still reaches the handler.
    assert_eq!(fake.reconnect_all(), 1);
    let text_only = message(6001, 42, Some(7), alice.clone(), "again", vec![], None);
    fake.dispatch("MESSAGE_CREATE", text_only);
    fake.wait_ready(10).await;
    let replies = fake.wait_for("POST", "/channels/42/messages", 2, 10).await;
    assert!(replies[1].files.is_empty());
    assert_eq!(
        replies[1].json["message_reference"]["message_id"],
        json!("6001")
    );
    assert!(
        next_report(&mut reports)
            .await
            .starts_with("replied to 6001: Ok(")
    );
    let resume = fake.resumes().remove(0);
    assert_eq!(resume["session_id"], json!("s1"));
    assert_eq!(resume["seq"], json!(3));
    assert_eq!(fake.identifies().len(), 1);

    // Plain REST through serenity's Http.
    let me = http.get_current_user().await.unwrap();
    assert!(me.bot);
    assert_eq!((me.id.get(), me.name.as_str()), (BOT_USER_ID, BOT_NAME));
    let app = http.get_current_application_info().await.unwrap();
    assert_eq!(app.id.get(), APP_ID);
    assert_eq!(app.owner.unwrap().id.get(), OWNER_ID);

    let image_option =
        CreateCommandOption::new(CommandOptionType::Attachment, "image", "The image")
            .required(true);
    let prompt_option = CreateCommandOption::new(CommandOptionType::String, "prompt", "What to do")
        .required(true)
        .max_length(500);
    let global = vec![
        CreateCommand::new("edit")
            .description("Edit an image")
            .add_option(image_option)
            .add_option(prompt_option),
        CreateCommand::new("Edit image").kind(CommandType::Message),
    ];
    let registered = Command::set_global_commands(&http, global).await.unwrap();
    assert_eq!(registered.len(), 2);
    assert_eq!(registered[0].id.get(), command_id("edit"));
    assert_eq!(registered[0].options.len(), 2);
    assert_eq!(registered[1].kind, CommandType::Message);
    let admin = CreateCommand::new("quota-admin")
        .description("Quotas")
        .default_member_permissions(Permissions::MANAGE_GUILD)
        .add_option(
            CreateCommandOption::new(CommandOptionType::SubCommand, "show", "Show").add_sub_option(
                CreateCommandOption::new(CommandOptionType::User, "user", "Who"),
            ),
        );
    let in_guild = GuildId::new(7)
        .set_commands(&http, vec![admin])
        .await
        .unwrap();
    assert_eq!(in_guild[0].guild_id, Some(GuildId::new(7)));
    assert_eq!(
        in_guild[0].default_member_permissions,
        Some(Permissions::MANAGE_GUILD)
    );
    assert_eq!(fake.commands().len(), 3);

    fake.set_guild_premium_tier(7, 2);
    let guild = http.get_guild(GuildId::new(7)).await.unwrap();
    assert_eq!(guild.premium_tier, PremiumTier::Tier2);
    let Channel::Guild(channel) = http.get_channel(ChannelId::new(42)).await.unwrap() else {
        panic!("channel 42 should be a guild channel");
    };
    assert_eq!(channel.guild_id, GuildId::new(7));
    fake.put_message(message(5999, 43, None, alice.clone(), "dm", vec![], None));
    let Channel::Private(dm) = http.get_channel(ChannelId::new(43)).await.unwrap() else {
        panic!("channel 43 should be a DM");
    };
    assert_eq!(dm.recipient.id.get(), 77);
    assert!(http.get_channel(ChannelId::new(44)).await.is_err());

    fake.set_channel(45, Some(8));
    let Channel::Guild(channel) = http.get_channel(ChannelId::new(45)).await.unwrap() else {
        panic!("channel 45 should be a guild channel");
    };
    assert_eq!(channel.guild_id, GuildId::new(8));

    let original = http
        .get_message(ChannelId::new(42), MessageId::new(6000))
        .await
        .unwrap();
    assert_eq!(original.content, "<@1000> make it night");
    let listed = ChannelId::new(42)
        .messages(&http, GetMessages::new().limit(50))
        .await
        .unwrap();
    let ids: Vec<u64> = listed.iter().map(|m| m.id.get()).collect();
    // The deferred response and its first follow-up are one message.
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(fake.channel_messages(42).len(), 5);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    assert_eq!(
        fake.calls_to("GET", "/channels/42/messages")
            .last()
            .unwrap()
            .query,
        "&limit=50"
    );

    let edited = ChannelId::new(42)
        .edit_message(
            &http,
            MessageId::new(900_000),
            EditMessage::new().content("changed"),
        )
        .await
        .unwrap();
    assert_eq!(edited.content, "changed");
    assert!(edited.edited_timestamp.is_some());
    assert_eq!(edited.attachments.len(), 1);
    ChannelId::new(42).broadcast_typing(&http).await.unwrap();
    ChannelId::new(42)
        .delete_message(&http, MessageId::new(900_000))
        .await
        .unwrap();
    let gone = http
        .get_message(ChannelId::new(42), MessageId::new(900_000))
        .await;
    match gone {
        Err(serenity::Error::Http(HttpError::UnsuccessfulRequest(e))) => {
            assert_eq!((e.status_code.as_u16(), e.error.code), (404, 10008));
        }
        other => panic!("expected Unknown Message, got {other:?}"),
    }

    // Scripted faults reach the client as errors; the next call succeeds again.
    fake.fail_next("GET", "/channels/*/messages/*", 429, 0, 1);
    let limited = http
        .get_message(ChannelId::new(42), MessageId::new(6000))
        .await;
    match limited {
        Err(serenity::Error::Http(HttpError::UnsuccessfulRequest(e))) => {
            assert_eq!(e.status_code.as_u16(), 429);
            assert_eq!(e.error.message, "You are being rate limited.");
        }
        other => panic!("expected a 429, got {other:?}"),
    }
    let limited_call = fake.calls().pop().unwrap();
    assert_eq!(limited_call.status, 429);
    http.get_message(ChannelId::new(42), MessageId::new(6000))
        .await
        .unwrap();
    fake.fail_next("POST", "/channels/42/messages", 403, 50013, 1);
    let refused = ChannelId::new(42).say(&http, "hi").await;
    match refused {
        Err(serenity::Error::Http(HttpError::UnsuccessfulRequest(e))) => {
            assert_eq!((e.status_code.as_u16(), e.error.code), (403, 50013));
        }
        other => panic!("expected Missing Permissions, got {other:?}"),
    }
    fake.fail_next_rate_limited("*", "/users/@me", 2.5, 1);
    let raw = reqwest::Client::new()
        .get(format!("{}/api/v10/users/@me", fake.rest_url))
        .header("Authorization", format!("Bot {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 429);
    assert_eq!(raw.headers()["retry-after"], "3");
    assert_eq!(raw.headers()["x-ratelimit-remaining"], "0");
    let body: Value = raw.json().await.unwrap();
    assert_eq!(
        (&body["retry_after"], &body["global"]),
        (&json!(2.5), &json!(false))
    );
    let raw = reqwest::Client::new()
        .get(format!(
            "{}/api/v10/channels/42/messages/6000",
            fake.rest_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
    let raw = reqwest::Client::new()
        .get(format!("{}/api/v10/nothing/here", fake.rest_url))
        .header("Authorization", format!("Bot {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 404);
    assert_eq!(fake.calls_to("GET", "/nothing/here")[0].status, 404);

    // Interaction rules: a second callback is refused; follow-ups before any callback too.
    let second = reqwest::Client::new()
        .post(format!(
            "{}/api/v10/interactions/7000/{token}/callback",
            fake.rest_url
        ))
        .header("Authorization", format!("Bot {TOKEN}"))
        .json(&json!({ "type": 4, "data": { "content": "x" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 400);
    let early = http
        .create_followup_message("itk-1-42-7-0", &json!({ "content": "x" }), vec![])
        .await;
    assert!(early.is_err(), "{early:?}");
    let original_response = http
        .get_original_interaction_response(&token)
        .await
        .unwrap();
    assert_eq!(original_response.channel_id, ChannelId::new(42));

    // The other fixture builders parse as the interaction kinds they claim.
    let quota = slash_command(
        7001,
        "quota-admin",
        42,
        Some(7),
        alice.clone(),
        "32",
        vec![subcommand("show", vec![option("user", 6, json!("77"))])],
        "en-US",
    );
    let Interaction::Command(quota) = parse::<Interaction>(&quota).unwrap() else {
        unreachable!()
    };
    assert_eq!(
        quota.member.unwrap().permissions,
        Some(Permissions::MANAGE_GUILD)
    );
    let target = message(6002, 42, Some(7), alice.clone(), "", vec![], None);
    let menu = context_menu(7002, 42, Some(7), alice.clone(), "0", target, "fr");
    let Interaction::Command(menu) = parse::<Interaction>(&menu).unwrap() else {
        unreachable!()
    };
    assert_eq!(menu.data.target_id.map(|t| t.get()), Some(6002));
    let modal = modal_submit(
        7003,
        43,
        None,
        alice.clone(),
        "0",
        "edit:6002",
        &[("prompt", "night")],
        "en-US",
    );
    let Interaction::Modal(modal) = parse::<Interaction>(&modal).unwrap() else {
        unreachable!()
    };
    assert_eq!((modal.user.id.get(), modal.guild_id), (77, None));
    let shown = fake.message(6000).unwrap();
    let press = button_press(7004, 42, Some(7), alice, "0", "retry", shown, "en-US");
    assert!(matches!(
        parse::<Interaction>(&press).unwrap(),
        Interaction::Component(_)
    ));

    // The gateway directly: HELLO with the configured interval, heartbeat ACK, bad token → 4004.
    fake.set_heartbeat_interval(1234);
    let url = format!("{}/?v=10", fake.gateway_url);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = ws.next().await.unwrap().unwrap();
    let hello: Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
    assert_eq!(hello["d"]["heartbeat_interval"], json!(1234));
    let before = fake.heartbeats();
    let beat = json!({ "op": 1, "d": null }).to_string();
    ws.send(WsMessage::Text(beat)).await.unwrap();
    let ack = ws.next().await.unwrap().unwrap();
    let ack: Value = serde_json::from_str(ack.to_text().unwrap()).unwrap();
    assert_eq!(ack, json!({ "op": 11 }));
    assert_eq!(fake.heartbeats(), before + 1);
    let wrong = json!({ "op": 2, "d": { "token": "Bot wrong", "intents": 0, "properties": {} } });
    ws.send(WsMessage::Text(wrong.to_string())).await.unwrap();
    match ws.next().await {
        Some(Ok(WsMessage::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4004),
        other => panic!("expected close 4004, got {other:?}"),
    }

    shard_manager.shutdown_all().await;
    let finished = tokio::time::timeout(Duration::from_secs(10), task).await;
    assert!(matches!(finished, Ok(Ok(Ok(())))), "{finished:?}");
    assert!(fake.problems().is_empty(), "{:?}", fake.problems());
}
