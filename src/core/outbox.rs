//! The outbox: every call the core makes to a chat waits its turn in the lane of its
//! destination (one chat or channel), which keeps under the platform's limits and serves the
//! most important call first. Results and failures go before placeholders, and placeholders
//! before status edits; a status edit of a message is replaced by a newer one of the same
//! message while it waits (only the latest is sent), and one for a message whose result is on
//! its way is dropped. A platform's "too many requests" pauses that lane only. A lane runs one
//! call at a time, so what it holds is what waits; a result's bytes are made (downloaded,
//! fitted) only when its call is next ([`Outbox::run_prepared`]), for that one delivery
//! (docs/PLATFORMS.md, "Limits and the outbox").

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::conversation::{retrying, wait_before_retry};
use super::model::{Platform, Reply};
use super::ports::chat::ChatError;
pub use super::ports::chat::{Pace, Window};

/// Least room kept between a window's calls for the time they take to arrive.
const MARGIN: Duration = Duration::from_millis(25);
/// How often (in calls) lanes that are no longer needed are dropped.
const SWEEP_EVERY: u64 = 64;
/// One attempt of a call (an upload on a slow link included) that takes longer is given up.
const CALL_TIMEOUT: Duration = Duration::from_secs(180);

/// How urgent a call is: lower goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// A result or a failure: what the user waits for.
    Result,
    /// A placeholder, a reply, a reaction: the user sees the request was taken.
    Placeholder,
    /// A queue position, "working", progress: dropped for a newer one or a result.
    Status,
}

/// One call in the outbox.
#[derive(Debug, Clone, Copy)]
pub struct Send {
    pub priority: Priority,
    /// Messages it posts or edits, as the platform counts them against its limits.
    pub cost: u32,
    /// The message it shows something on: a waiting status edit of the same message is
    /// replaced by this call.
    pub on: Option<i64>,
}

/// The start times of the latest calls a window counts, oldest first.
#[derive(Default)]
struct Spent(VecDeque<Instant>);

impl Spent {
    /// When `cost` more calls fit in `window` (`now` if they do), with a margin for the calls'
    /// times on their way (the platform counts them when they arrive).
    fn ready_at(&self, window: Window, cost: u32, now: Instant) -> Instant {
        let per = window.per + (window.per / 20).max(MARGIN);
        let cost = cost.min(window.max) as usize;
        if cost == 0 {
            return now;
        }
        // The times are in order: those still in the window are the last ones.
        let live = self
            .0
            .iter()
            .rev()
            .take_while(|t| now.duration_since(**t) < per)
            .count();
        match (live + cost).saturating_sub(window.max as usize) {
            0 => now,
            over => self.0[self.0.len() - live + over - 1] + per,
        }
    }

    fn record(&mut self, cost: u32, now: Instant, keep: Duration, most: usize) {
        for _ in 0..cost {
            self.0.push_back(now);
        }
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) >= keep)
            || self.0.len() > most
        {
            self.0.pop_front();
        }
    }

    fn idle(&self, now: Instant, keep: Duration) -> bool {
        self.0.back().is_none_or(|t| now.duration_since(*t) >= keep)
    }
}

/// A call waiting in a lane.
struct Waiting {
    seq: u64,
    send: Send,
    /// Backing off after a network error: not before then.
    not_before: Instant,
}

impl Waiting {
    fn new(seq: u64, send: Send, not_before: Instant) -> Self {
        Waiting {
            seq,
            send,
            not_before,
        }
    }
}

#[derive(Default)]
struct LaneState {
    waiting: Vec<Waiting>,
    /// Calls replaced by a newer one while they waited.
    dropped: Vec<u64>,
    busy: bool,
    paused_until: Option<Instant>,
    spent: Spent,
}

impl LaneState {
    /// The call to go next among those that may go `now`.
    fn next(&self, now: Instant) -> Option<u64> {
        self.waiting
            .iter()
            .filter(|w| w.not_before <= now)
            .min_by_key(|w| (w.send.priority, w.seq))
            .map(|w| w.seq)
    }
}

/// One destination's queue.
#[derive(Default)]
struct Lane {
    state: Mutex<LaneState>,
    changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The lanes of every destination, and each platform's limits.
#[derive(Default)]
pub struct Outbox {
    paces: DashMap<Platform, Pace>,
    overall: DashMap<Platform, Mutex<Spent>>,
    lanes: DashMap<(Platform, i64), Arc<Lane>>,
    seq: std::sync::atomic::AtomicU64,
}

/// A call's turn: the lane runs nothing else until it is dropped.
struct Turn<'a>(&'a Lane);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).busy = false;
        self.0.changed.notify_waiters();
    }
}

/// A call's place in its lane, given up if the caller stops waiting.
struct Place<'a> {
    lane: &'a Lane,
    seq: u64,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.lane.state);
        state.waiting.retain(|w| w.seq != self.seq);
        state.dropped.retain(|s| *s != self.seq);
        drop(state);
        self.lane.changed.notify_waiters();
    }
}

impl Outbox {
    /// Keeps `platform`'s calls under `pace` from now on (a platform never limited is not).
    pub fn limit(&self, platform: Platform, pace: Pace) {
        self.paces.insert(platform, pace);
    }

    /// Runs `call` to the chat of `to` in its turn, within the platform's limits, retrying it
    /// by the one retry policy (`conversation::wait_before_retry`): what a throttled call
    /// asked is waited with this lane paused (no other lane), a call backing off after another
    /// transient error lets the lane's other calls go meanwhile. A status edit replaced by a
    /// newer one ends with [`ChatError::Superseded`].
    pub async fn run<T, F, Fut>(&self, to: &Reply, send: Send, mut call: F) -> Result<T, ChatError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ChatError>>,
    {
        let nothing = || std::future::ready(Ok::<(), Infallible>(()));
        match self.run_prepared(to, send, nothing, |_| call()).await {
            Ok((done, _)) => done,
            Err(never) => match never {},
        }
    }

    /// [`Outbox::run`] for a call that needs something made first (a result's images,
    /// downloaded and fitted): `prepare` runs once the call is the next of its lane (the most
    /// urgent, nothing else of the lane running), and the lane waits for it and then for the
    /// windows (which count the time the download took), so what it makes is held for this one
    /// delivery only, never while the call waits behind others. What `prepare` made comes back
    /// with the call's result; its failure ends the call unsent. Only a result claims its lane
    /// this way (nothing would overtake it anyway); any other call prepares at once and is
    /// ordered when it may go, so a result overtakes it while it waits for the windows.
    pub async fn run_prepared<P, E, T, Prep, PFut, F, Fut>(
        &self,
        to: &Reply,
        send: Send,
        prepare: Prep,
        mut call: F,
    ) -> Result<(Result<T, ChatError>, Option<Arc<P>>), E>
    where
        Prep: FnOnce() -> PFut,
        PFut: Future<Output = Result<P, E>>,
        F: FnMut(Arc<P>) -> Fut,
        Fut: Future<Output = Result<T, ChatError>>,
    {
        let Some(pace) = self.paces.get(&to.platform).map(|p| *p) else {
            let made = Arc::new(prepare().await?);
            return Ok((retrying(|| call(Arc::clone(&made))).await, Some(made)));
        };
        let (mut made, mut prepare) = match send.priority {
            Priority::Result => (None, Some(prepare)),
            _ => (Some(Arc::new(prepare().await?)), None),
        };
        let key = (to.platform, to.chat);
        let lane = Arc::clone(&self.lanes.entry(key).or_default());
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let place = self.enter(&lane, seq, send);
        let group = to.group.as_ref().and(pace.group);
        let mut attempt = 1;
        let mut unprepared = None;
        let result = loop {
            let mut claimed = None;
            if let Some(prepare) = prepare.take() {
                let Some(claim) = self
                    .turn(&place, to.platform, pace, group, None, None)
                    .await
                else {
                    break Err(ChatError::Superseded);
                };
                match prepare().await {
                    Ok(ready) => made = Some(Arc::new(ready)),
                    Err(e) => {
                        unprepared = Some(e);
                        break Err(ChatError::Superseded);
                    }
                }
                claimed = Some(claim);
            }
            let turn = self.turn(&place, to.platform, pace, group, Some(send.cost), claimed);
            let Some(turn) = turn.await else {
                break Err(ChatError::Superseded);
            };
            let Some(made) = made.as_ref() else {
                unreachable!("prepared in its first turn");
            };
            let error = match tokio::time::timeout(CALL_TIMEOUT, call(Arc::clone(made))).await {
                Ok(Err(error)) => error,
                Ok(done) => break done,
                Err(_) => ChatError::Transient("the call timed out".into()),
            };
            let error = match error {
                // Throttled for an unsaid time: the chat's window has room again after one.
                ChatError::RetryAfter(None, detail) => {
                    ChatError::RetryAfter(Some(pace.chat.per), detail)
                }
                other => other,
            };
            let Some(wait) = wait_before_retry(attempt, &error) else {
                break Err(error);
            };
            tracing::warn!(wait_ms = wait.as_millis() as u64, error = %error, "chat call failed, retrying");
            let now = Instant::now();
            let mut state = lock(&lane.state);
            // Throttled: the lane waits, and this call goes first when it may. Otherwise only
            // this call waits.
            let not_before = match error {
                ChatError::RetryAfter(..) => {
                    state.paused_until = Some(now + wait);
                    now
                }
                _ => now + wait,
            };
            state.waiting.push(Waiting::new(seq, send, not_before));
            drop(state);
            drop(turn);
            attempt += 1;
        };
        drop(place);
        drop(lane);
        self.forget_idle(seq);
        match unprepared {
            Some(e) => Err(e),
            None => Ok((result, made)),
        }
    }

    /// Every [`SWEEP_EVERY`] calls: drops the lanes nothing uses whose history no longer
    /// matters (one per chat ever answered would pile up otherwise).
    fn forget_idle(&self, seq: u64) {
        if !seq.is_multiple_of(SWEEP_EVERY) {
            return;
        }
        self.lanes.retain(|(platform, _), lane| {
            let Some(pace) = self.paces.get(platform).map(|p| *p) else {
                return false;
            };
            Arc::strong_count(lane) > 1 || !self.idle(lane, pace)
        });
    }

    /// Lanes kept (the chats with calls waiting or recent).
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Puts a call in its lane; a status edit waiting there for the same message gives way.
    fn enter<'a>(&self, lane: &'a Lane, seq: u64, send: Send) -> Place<'a> {
        let mut state = lock(&lane.state);
        if let Some(on) = send.on {
            let replaced: Vec<u64> = state
                .waiting
                .iter()
                .filter(|w| w.send.on == Some(on) && w.send.priority == Priority::Status)
                .map(|w| w.seq)
                .collect();
            state.waiting.retain(|w| !replaced.contains(&w.seq));
            state.dropped.extend(replaced);
        }
        state.waiting.push(Waiting::new(seq, send, Instant::now()));
        drop(state);
        lane.changed.notify_waiters();
        Place { lane, seq }
    }

    /// Waits until the call in `place` may go: it is the most urgent that may go now, nothing
    /// else of its lane runs, the lane is not paused, and the call's `cost` fits the chat's, the
    /// group's and the platform's windows. Without a cost, only until the lane is its own
    /// (to prepare the call); with the lane already `claimed`, only for the rest. `None`: it
    /// was replaced while it waited.
    async fn turn<'a>(
        &self,
        place: &Place<'a>,
        platform: Platform,
        pace: Pace,
        group: Option<Window>,
        cost: Option<u32>,
        claimed: Option<Turn<'a>>,
    ) -> Option<Turn<'a>> {
        let lane = place.lane;
        loop {
            let changed = lane.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake = {
                let mut state = lock(&lane.state);
                if let Some(i) = state.dropped.iter().position(|s| *s == place.seq) {
                    state.dropped.swap_remove(i);
                    return None;
                }
                let now = Instant::now();
                let mine = state.waiting.iter().find(|w| w.seq == place.seq);
                let not_before = mine.map_or(now, |w| w.not_before);
                let first = !state.busy && not_before <= now && state.next(now) == Some(place.seq);
                if claimed.is_none() && !first {
                    Some(not_before).filter(|t| *t > now)
                } else if let Some(cost) = cost {
                    let mut ready = state.paused_until.unwrap_or(now).max(now);
                    ready = ready.max(state.spent.ready_at(pace.chat, cost, now));
                    if let Some(group) = group {
                        ready = ready.max(state.spent.ready_at(group, cost, now));
                    }
                    let overall = self.overall.entry(platform).or_default();
                    let mut overall = lock(&overall);
                    ready = ready.max(overall.ready_at(pace.overall, cost, now));
                    if ready <= now {
                        overall.record(cost, now, pace.overall.per, pace.overall.max as usize);
                        state.spent.record(cost, now, longest(pace), most(pace));
                        state.busy = true;
                        state.waiting.retain(|w| w.seq != place.seq);
                        return Some(claimed.unwrap_or_else(|| Turn(lane)));
                    }
                    Some(ready)
                } else {
                    // The lane is this call's while it prepares; it stays first in line.
                    state.busy = true;
                    return Some(Turn(lane));
                }
            };
            match wake {
                Some(at) => {
                    tokio::select! {
                        () = &mut changed => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    fn idle(&self, lane: &Lane, pace: Pace) -> bool {
        let state = lock(&lane.state);
        !state.busy && state.waiting.is_empty() && state.spent.idle(Instant::now(), longest(pace))
    }
}

/// How long a lane's history matters: its longest window.
fn longest(pace: Pace) -> Duration {
    pace.group
        .map_or(pace.chat.per, |g| g.per.max(pace.chat.per))
}

/// How many calls a lane's history needs at most: its largest window.
fn most(pace: Pace) -> usize {
    pace.group
        .map_or(pace.chat.max, |g| g.max.max(pace.chat.max)) as usize
}
