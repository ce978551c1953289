//! Getting updates: long polling or a webhook listener. Either way an update is confirmed to
//! Telegram only after its handler returned (the job is in the store by then), so a crash or a
//! restart drops nothing: unconfirmed updates are delivered again.
//!
//! Polling hands each update to its chat's worker (one chat's updates in order, chats in
//! parallel) and polls again at once; a poll confirms everything below the oldest update still
//! being handled. Handling is quick: a store write (the job, or an album part), everything slow
//! runs in tasks of its own. The webhook answers 200 only after handling; Telegram retries
//! anything else.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use dashmap::DashMap;
use teloxide::RequestError;
use teloxide::prelude::*;
use teloxide::types::{AllowedUpdate, UpdateKind};
use tokio::sync::{Notify, mpsc};

use super::{Telegram, handler, safe_error};

const ALLOWED: [AllowedUpdate; 2] = [AllowedUpdate::Message, AllowedUpdate::CallbackQuery];

/// Long polling until `shutdown` resolves. Each update goes to its chat's worker (a chat's
/// updates in order, chats at once) and the next poll is made at once: it confirms everything
/// below the oldest update still being handled, and updates fetched again meanwhile are skipped.
/// Polls while this replica is the poller (`leader`; always, on a store of its own): Telegram
/// refuses a second `getUpdates` at once, so replicas on a shared store take turns, and another
/// one takes over within seconds of the poller's end.
pub async fn poll(
    tg: Arc<Telegram>,
    timeout_secs: u32,
    mut leader: tokio::sync::watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    if let Err(e) = tg.bot.delete_webhook().await {
        tracing::warn!(error = %safe_error(&e), "deleteWebhook failed");
    }
    tokio::pin!(shutdown);
    let intake = Arc::new(Intake {
        tg: Arc::clone(&tg),
        pending: std::sync::Mutex::new(BTreeSet::new()),
        handled: Notify::new(),
        chats: DashMap::new(),
    });
    // Past everything fetched; what is confirmed is below the oldest update still pending.
    let mut next: i32 = 0;
    let mut seen: HashSet<u32> = HashSet::new();
    let mut failures: u32 = 0;
    loop {
        if !*leader.borrow() {
            tracing::info!("another replica polls Telegram; this one takes over if it stops");
            tokio::select! {
                _ = &mut shutdown => break,
                elected = leader.wait_for(|l| *l) => if elected.is_err() { break },
            }
            tracing::info!("this replica polls Telegram");
        }
        let offset = intake.confirmable(next);
        seen.retain(|id| i64::from(*id) >= i64::from(offset));
        let request = tg
            .bot
            .get_updates()
            .offset(offset)
            .timeout(timeout_secs)
            .allowed_updates(ALLOWED);
        let result = tokio::select! {
            _ = &mut shutdown => break,
            // Another replica may be elected now: stop asking at once.
            () = deposed(&mut leader) => continue,
            r = request.send() => r,
        };
        match result {
            Ok(updates) => {
                failures = 0;
                tg.metrics.health.set_telegram(true);
                let fresh = take(&intake, updates, &mut next, &mut seen);
                if !fresh && intake.confirmable(next) < next {
                    // Only updates still being handled came back: wait for one to finish.
                    let handled = intake.handled.notified();
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = handled => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
            Err(e) => {
                failures += 1;
                tg.metrics.health.set_telegram(false);
                let wait = wait_after(&e, failures);
                tracing::warn!(error = %safe_error(&e), wait_ms = wait.as_millis() as u64, "getUpdates failed");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    // Confirming is a `getUpdates` too: only the poller may send it.
    let poller = *leader.borrow();
    drain_and_confirm(&intake, next, poller).await;
}

/// Hands the updates not seen yet to their chats' workers; moves `next` past all of them.
/// Returns whether any was new.
fn take(
    intake: &Arc<Intake>,
    updates: Vec<Update>,
    next: &mut i32,
    seen: &mut HashSet<u32>,
) -> bool {
    let mut fresh = false;
    for update in updates {
        let past = i32::try_from(update.id.0)
            .unwrap_or(i32::MAX)
            .saturating_add(1);
        *next = (*next).max(past);
        if seen.insert(update.id.0) {
            fresh = true;
            intake.dispatch(update);
        }
    }
    fresh
}

/// Resolves when this replica stops being the poller (never where nobody elects one).
async fn deposed(leader: &mut tokio::sync::watch::Receiver<bool>) {
    if leader.wait_for(|l| !*l).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How long to wait after the `failures`-th failed `getUpdates` in a row: what a 429 asks, or
/// a doubling pause from 0.5 s up to 16 s.
fn wait_after(e: &RequestError, failures: u32) -> Duration {
    match e {
        RequestError::RetryAfter(s) => s.duration(),
        _ => Duration::from_millis(250 << failures.min(6)),
    }
}

/// Lets the updates being handled finish (their jobs reach the store), then confirms them so a
/// restart does not see them again.
async fn drain_and_confirm(intake: &Arc<Intake>, next: i32, confirm: bool) {
    let drained = async {
        while intake.confirmable(next) < next {
            let handled = intake.handled.notified();
            tokio::select! {
                _ = handled => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), drained).await;
    let offset = intake.confirmable(next);
    if confirm && offset > 0 {
        let _ = intake
            .tg
            .bot
            .get_updates()
            .offset(offset)
            .limit(1)
            .timeout(0)
            .await;
    }
}

/// How long a chat's worker waits for more updates before it ends.
const CHAT_IDLE: Duration = Duration::from_secs(30);

/// The updates being handled, and a worker per chat that handles them in order.
struct Intake {
    tg: Arc<Telegram>,
    /// Ids of updates handed to a worker and not yet handled.
    pending: std::sync::Mutex<BTreeSet<u32>>,
    /// Signalled whenever an update has been handled.
    handled: Notify,
    chats: DashMap<i64, mpsc::UnboundedSender<Update>>,
}

impl Intake {
    /// What the next poll may confirm: below the oldest update still pending, or all before
    /// `next`.
    fn confirmable(&self, next: i32) -> i32 {
        let oldest = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .copied();
        oldest.map_or(next, |id| next.min(i32::try_from(id).unwrap_or(i32::MAX)))
    }

    /// Hands `update` to its chat's worker, starting one if the chat has none.
    fn dispatch(self: &Arc<Self>, update: Update) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(update.id.0);
        let chat = update.chat().map_or(0, |c| c.id.0);
        // Under the entry's lock: a worker that is ending removes itself under the same lock,
        // so an update is never sent to a worker that is gone.
        match self.chats.entry(chat) {
            dashmap::Entry::Occupied(worker) => {
                let _ = worker.get().send(update);
            }
            dashmap::Entry::Vacant(slot) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let _ = tx.send(update);
                slot.insert(tx);
                tokio::spawn(Arc::clone(self).work(chat, rx));
            }
        }
    }

    async fn work(self: Arc<Self>, chat: i64, mut rx: mpsc::UnboundedReceiver<Update>) {
        loop {
            match tokio::time::timeout(CHAT_IDLE, rx.recv()).await {
                Ok(Some(update)) => {
                    let id = update.id.0;
                    handle(&self.tg, update).await;
                    self.pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    self.handled.notify_waiters();
                }
                Ok(None) => return,
                // Idle: end, unless an update arrived meanwhile.
                Err(_) if self.chats.remove_if(&chat, |_, _| rx.is_empty()).is_some() => return,
                Err(_) => {}
            }
        }
    }
}

async fn handle(tg: &Arc<Telegram>, update: Update) {
    let result = match update.kind {
        UpdateKind::Message(msg) => handler::on_message(msg, Arc::clone(tg)).await,
        UpdateKind::CallbackQuery(q) => handler::on_callback(q, Arc::clone(tg)).await,
        UpdateKind::Error(_) => {
            tracing::warn!(
                update_id = update.id.0,
                "an update could not be parsed; skipped"
            );
            Ok(())
        }
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(error = %safe_error(&e), "update handler failed");
    }
}

/// Webhook settings.
pub struct Webhook {
    pub listen: SocketAddr,
    pub url: reqwest::Url,
    pub secret: Option<String>,
    pub limits: crate::listen::Limits,
}

/// Largest update body read (Telegram's updates are a few kB).
const MAX_UPDATE_BYTES: usize = 1024 * 1024;

struct HookState {
    tg: Arc<Telegram>,
    secret: Option<String>,
}

/// Registers the webhook and serves it until `shutdown` resolves.
pub async fn webhook(
    tg: Arc<Telegram>,
    hook: Webhook,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(hook.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", hook.listen))?;
    let mut set = tg
        .bot
        .set_webhook(hook.url.clone())
        .allowed_updates(ALLOWED);
    if let Some(secret) = &hook.secret {
        set = set.secret_token(secret.clone());
    }
    set.await
        .map_err(|e| anyhow::anyhow!("setWebhook failed: {}", safe_error(&e)))?;
    let path = match hook.url.path() {
        "" => "/".to_owned(),
        p => p.to_owned(),
    };
    let state = Arc::new(HookState {
        tg,
        secret: hook.secret,
    });
    let app = axum::Router::new()
        .route(&path, axum::routing::post(on_post))
        .with_state(state);
    tracing::info!(listen = %hook.listen, path = %path, "Telegram webhook listening");
    crate::listen::serve(listener, app, hook.limits, shutdown).await;
    Ok(())
}

/// The secret is checked from the header before a byte of the body is read; the body is then
/// read up to [`MAX_UPDATE_BYTES`] (the listener's request timeout bounds how slowly).
async fn on_post(
    State(s): State<Arc<HookState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> StatusCode {
    if let Some(secret) = &s.secret {
        let given = headers
            .get("X-Telegram-Bot-Api-Secret-Token")
            .and_then(|v| v.to_str().ok());
        if !given.is_some_and(|g| same(g.as_bytes(), secret.as_bytes())) {
            return StatusCode::UNAUTHORIZED;
        }
    }
    let body: Bytes = match axum::body::to_bytes(body, MAX_UPDATE_BYTES).await {
        Ok(body) => body,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE,
    };
    let Ok(update) = serde_json::from_slice::<Update>(&body) else {
        // Telegram would retry a non-200 forever; an unparsable update is dropped.
        tracing::warn!("webhook body is not an update; ignored");
        return StatusCode::OK;
    };
    // Detached: if Telegram hangs up mid-request, the handler still runs to the end (a dropped
    // handler could leave a reserved job half-queued); Telegram then retries and the job id
    // makes that a no-op.
    let tg = Arc::clone(&s.tg);
    let _ = tokio::spawn(async move { handle(&tg, update).await }).await;
    StatusCode::OK
}

/// Compares in time that depends on neither the contents nor the secret's length (both are
/// hashed to 32 bytes first, then compared without an early exit).
fn same(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (digest(a), digest(b));
    a.iter().zip(&b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A keyed-per-process 256-bit digest (four SipHash-1-3 lanes) for the comparison above.
fn digest(bytes: &[u8]) -> [u8; 32] {
    use std::hash::{BuildHasher, Hasher};
    static KEYS: std::sync::OnceLock<[std::collections::hash_map::RandomState; 4]> =
        std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(Default::default);
    let mut out = [0u8; 32];
    for (lane, key) in keys.iter().enumerate() {
        let mut h = key.build_hasher();
        h.write(bytes);
        out[lane * 8..lane * 8 + 8].copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}
