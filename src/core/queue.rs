//! The bounded, fair job queue.
//!
//! Jobs wait per user; workers take one job from each waiting user in turn (round robin), so a
//! user who sends ten edits does not make the next user wait for all ten. The queue holds job
//! descriptions, never image bytes. It also counts each user's unfinished jobs
//! (`max_in_flight_per_user`) and the whole queue's length (`max_queue`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::error::Rejection;
use crate::core::model::UserRef;

/// A place in the queue held for a job while its quota is being reserved.
#[derive(Debug)]
#[must_use = "a hold must be pushed or released"]
pub struct Hold {
    user: UserRef,
}

#[derive(Debug)]
struct State<J> {
    waiting: HashMap<UserRef, VecDeque<J>>,
    /// Users with waiting jobs, in serving order.
    rotation: VecDeque<UserRef>,
    queued: usize,
    held: usize,
    /// Jobs per user that are held, waiting or running.
    unfinished: HashMap<UserRef, u32>,
    closed: bool,
}

/// A fair queue of `J`.
pub struct FairQueue<J> {
    state: Mutex<State<J>>,
    notify: Notify,
    max_queue: usize,
    max_per_user: u32,
}

impl<J: Send> FairQueue<J> {
    pub fn new(max_queue: usize, max_per_user: u32) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                waiting: HashMap::new(),
                rotation: VecDeque::new(),
                queued: 0,
                held: 0,
                unfinished: HashMap::new(),
                closed: false,
            }),
            notify: Notify::new(),
            max_queue,
            max_per_user,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for `user`, or says why there is none.
    pub fn hold(&self, user: &UserRef) -> Result<Hold, Rejection> {
        let mut s = self.lock();
        if s.closed {
            return Err(Rejection::ShuttingDown);
        }
        if s.queued + s.held >= self.max_queue {
            return Err(Rejection::QueueFull);
        }
        let mine = s.unfinished.entry(user.clone()).or_default();
        if *mine >= self.max_per_user {
            return Err(Rejection::TooManyInFlight {
                max: self.max_per_user,
            });
        }
        *mine += 1;
        s.held += 1;
        Ok(Hold { user: user.clone() })
    }

    /// Gives a place back unused (the quota said no).
    pub fn release(&self, hold: Hold) {
        let mut s = self.lock();
        s.held -= 1;
        finish_one(&mut s, &hold.user);
    }

    /// Queues a job in its held place; returns how many jobs will be served before it.
    pub fn push(&self, hold: Hold, job: J) -> usize {
        let mut s = self.lock();
        s.held -= 1;
        s.queued += 1;
        let user = hold.user;
        let mine = s.waiting.entry(user.clone()).or_default();
        mine.push_back(job);
        let ahead_of_me = mine.len() - 1;
        if ahead_of_me == 0 {
            s.rotation.push_back(user.clone());
        }
        let position = position_of(&s, &user, ahead_of_me);
        drop(s);
        self.notify.notify_one();
        position
    }

    /// Puts back a job that was accepted in an earlier run, outside the limits (its place was
    /// granted then).
    pub fn requeue(&self, user: &UserRef, job: J) {
        let hold = {
            let mut s = self.lock();
            *s.unfinished.entry(user.clone()).or_default() += 1;
            s.held += 1;
            Hold { user: user.clone() }
        };
        self.push(hold, job);
    }

    /// Waits for the next job in fair order; `None` once closed.
    pub async fn pop(&self) -> Option<J> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if s.closed {
                    drop(s);
                    self.notify.notify_one();
                    return None;
                }
                if let Some(job) = take_next(&mut s) {
                    let more = s.queued > 0;
                    drop(s);
                    if more {
                        self.notify.notify_one();
                    }
                    return Some(job);
                }
            }
            notified.await;
        }
    }

    /// Marks one of `user`'s jobs as finished (delivered or failed).
    pub fn done(&self, user: &UserRef) {
        finish_one(&mut self.lock(), user);
    }

    /// Stops taking and handing out jobs; drops the waiting ones and returns how many.
    pub fn close(&self) -> usize {
        let mut s = self.lock();
        s.closed = true;
        let dropped = s.queued;
        let waiting = std::mem::take(&mut s.waiting);
        for (user, jobs) in &waiting {
            for _ in jobs {
                finish_one(&mut s, user);
            }
        }
        s.rotation.clear();
        s.queued = 0;
        drop(s);
        self.notify.notify_waiters();
        self.notify.notify_one();
        dropped
    }

    /// The position of every waiting job, by `key`, in one pass under one lock.
    pub fn positions<K: std::hash::Hash + Eq>(
        &self,
        key: impl Fn(&J) -> K,
    ) -> std::collections::HashMap<K, usize> {
        let s = self.lock();
        let mut out = std::collections::HashMap::with_capacity(s.queued);
        for (user, jobs) in &s.waiting {
            for (index, job) in jobs.iter().enumerate() {
                out.insert(key(job), position_of(&s, user, index));
            }
        }
        out
    }

    /// Whether [`FairQueue::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Jobs waiting (not running).
    pub fn len(&self) -> usize {
        self.lock().queued
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the waiting jobs `gone` says are no longer this queue's (another replica took
    /// them), as if each had run and finished.
    pub fn remove(&self, gone: impl Fn(&J) -> bool) -> Vec<J> {
        let mut s = self.lock();
        let mut removed = Vec::new();
        let users: Vec<UserRef> = s.waiting.keys().cloned().collect();
        for user in users {
            let Some(jobs) = s.waiting.get_mut(&user) else {
                continue;
            };
            let (out, kept): (VecDeque<J>, VecDeque<J>) = jobs.drain(..).partition(|j| gone(j));
            *jobs = kept;
            if jobs.is_empty() {
                s.waiting.remove(&user);
                s.rotation.retain(|u| *u != user);
            }
            for job in out {
                s.queued -= 1;
                finish_one(&mut s, &user);
                removed.push(job);
            }
        }
        removed
    }

    /// Unfinished jobs of `user` (held, waiting or running).
    pub fn unfinished(&self, user: &UserRef) -> u32 {
        self.lock().unfinished.get(user).copied().unwrap_or(0)
    }
}

fn finish_one<J>(s: &mut State<J>, user: &UserRef) {
    if let Some(n) = s.unfinished.get_mut(user) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            s.unfinished.remove(user);
        }
    }
}

fn take_next<J>(s: &mut State<J>) -> Option<J> {
    let user = s.rotation.pop_front()?;
    let mine = s.waiting.get_mut(&user)?;
    let job = mine.pop_front()?;
    if mine.is_empty() {
        s.waiting.remove(&user);
    } else {
        s.rotation.push_back(user);
    }
    s.queued -= 1;
    Some(job)
}

/// Jobs served before the `ahead_of_me`-th waiting job of `user`, under round robin.
fn position_of<J>(s: &State<J>, user: &UserRef, ahead_of_me: usize) -> usize {
    let others: usize = s
        .waiting
        .iter()
        .filter(|(u, _)| *u != user)
        .map(|(_, jobs)| jobs.len().min(ahead_of_me + 1))
        .sum();
    others + ahead_of_me
}
