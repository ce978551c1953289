//! [`Chat`]: the calls the core makes to a chat platform, one method per call, none deciding.
//! The adapter translates each into its platform's request and classifies what went wrong as a
//! [`ChatError`]; what to retry, when to refund and what to say is the core's
//! (`core::conversation`).
//!
//! A job is shown by a [`Placeholder`] from the moment it is taken: messages the bot posts for
//! it, whose ids the store keeps with the job. Its state is shown on them ([`Chat::show`]) and
//! its result is put into them ([`Chat::fill`]), by edits: an edit repeated after a retry or a
//! restart shows nothing twice, so a result is shown exactly once.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::core::model::{Platform, Reply};
use crate::core::ports::BoxFuture;

/// A mark on the request message (a reaction): the job was taken, it ended well, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Working,
    Done,
    Failed,
}

impl Mark {
    /// This mark among a platform's three: `[working, done, failed]`.
    pub fn of<T>(self, [working, done, failed]: [T; 3]) -> T {
        match self {
            Mark::Working => working,
            Mark::Done => done,
            Mark::Failed => failed,
        }
    }
}

/// Something the bot shows and may change later: a message it posted, or the answer the
/// platform already shows for the request ([`Reply::deferred`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    Message(i64),
    Deferred,
}

/// What stands for a job in its chat from the moment it is taken until its result takes its
/// place: the messages the adapter posted for it (or the platform's own answer to the request,
/// by the message id it has), kept by the store with the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placeholder {
    /// The messages the result's images go into, one per image, in order.
    pub images: Vec<i64>,
    /// The message whose text shows the job's state and becomes the result's caption (with its
    /// 🔁), when that is not the first image's own caption (a Telegram album cannot carry a
    /// button).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<i64>,
    /// The images are files (documents), not photos: an album of them takes only files.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub files: bool,
}

impl Placeholder {
    /// How many messages it is: its images, and its text where that is a message of its own.
    pub fn messages(&self) -> u32 {
        (self.images.len() + usize::from(self.caption.is_some())) as u32
    }
}

/// A placeholder to post for a job.
#[derive(Debug, Clone, Copy)]
pub struct Hold<'a> {
    /// The job, for a platform's de-duplication key (Discord's nonce).
    pub job_id: &'a str,
    /// The request's first input (the adapter's own reference), shown back where the platform
    /// can do so without an upload.
    pub input: Option<&'a str>,
    /// How many images the result will have.
    pub n: u8,
    /// The prompt and the job's state.
    pub text: &'a str,
}

/// A finished job's images and their caption, ready to post.
#[derive(Debug, Clone)]
pub struct ResultPost {
    /// The job, for a platform's de-duplication key (Discord's nonce).
    pub job_id: String,
    pub images: Vec<ResultImage>,
    pub caption: String,
    /// The unguessable 🔁 token the result's button carries; `None`: no button.
    pub again: Option<String>,
}

/// One result image and the file extension it is posted with.
#[derive(Debug, Clone)]
pub struct ResultImage {
    pub bytes: Bytes,
    pub ext: &'static str,
}

/// Where a result was put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// The message with the 🔁 button, if it has one.
    pub button_at: Option<i64>,
}

/// Whose side a final failure is on; the money rules need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The user's chat refused the bot (blocked, kicked, may not post there).
    User,
    /// The platform's or ours (a file it would not take, a bad request).
    Platform,
}

/// A failed chat call, as the adapter classifies the platform's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// Throttled: try again after this long (`None`: the platform did not say; the outbox
    /// waits one window of the chat's limit).
    #[error("rate limited ({0:?}): {1}")]
    RetryAfter(Option<Duration>, String),
    /// A network or server error: worth another try.
    #[error("{0}")]
    Transient(String),
    /// Trying again will not help.
    #[error("{detail}")]
    Final { side: Side, detail: String },
    /// The message to edit is gone (deleted by someone, or never known to the platform): a new
    /// one must take its place.
    #[error("the message is gone: {0}")]
    Gone(String),
    /// Not sent: a newer call showing the same message took its place (a status edit).
    #[error("replaced by a newer call")]
    Superseded,
}

impl ChatError {
    pub fn platform(detail: impl Into<String>) -> Self {
        ChatError::Final {
            side: Side::Platform,
            detail: detail.into(),
        }
    }
}

/// At most `max` calls in any span of `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub max: u32,
    pub per: Duration,
}

impl Window {
    /// A window written `N/Ts`: at most N calls in any T seconds (`20/60s`, `5/0.5s`).
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = || format!("{text:?}: write a limit as calls/seconds, e.g. \"20/60s\"");
        let (max, per) = text.trim().split_once('/').ok_or_else(bad)?;
        let max: u32 = max.trim().parse().map_err(|_| bad())?;
        let secs: f64 = per
            .trim()
            .strip_suffix('s')
            .ok_or_else(bad)?
            .trim()
            .parse()
            .map_err(|_| bad())?;
        if max == 0 || !(0.001..=3600.0).contains(&secs) {
            return Err(format!(
                "{text:?}: at least 1 call, in 0.001 to 3600 seconds"
            ));
        }
        Ok(Window {
            max,
            per: Duration::from_secs_f64(secs),
        })
    }
}

/// What a platform lets a bot send: in one chat, in one group chat (where that is stricter),
/// and in all chats together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub chat: Window,
    pub group: Option<Window>,
    pub overall: Window,
}

impl Pace {
    /// One of `replicas` processes' share: each window's calls divided among them (at least
    /// one each), so that together they keep the platform's limits.
    pub fn share(self, replicas: u32) -> Pace {
        let part = |w: Window| Window {
            max: (w.max / replicas.max(1)).max(1),
            ..w
        };
        Pace {
            chat: part(self.chat),
            group: self.group.map(part),
            overall: part(self.overall),
        }
    }
}

/// How a platform's chats look and behave, for the core's choices; constant per adapter.
#[derive(Debug, Clone, Copy)]
pub struct ChatStyle {
    /// Whether a waiting job's status shows when it is expected to start.
    pub eta: bool,
    /// A point in time as this platform's users read it.
    pub time: fn(DateTime<Utc>) -> String,
    /// A user (by id) as a report names them.
    pub mention: fn(&str) -> String,
}

/// One chat platform, as the core calls it.
pub trait Chat: Send + Sync + 'static {
    fn platform(&self) -> Platform;
    fn style(&self) -> ChatStyle;
    /// What the platform lets the bot send, which the outbox keeps under; `None`: no limits.
    fn pace(&self) -> Option<Pace> {
        None
    }
    /// Messages posting a placeholder for `n` images costs against the limits: one, unless
    /// the platform needs more (Telegram: an album of `n` and its text beside it).
    fn hold_cost(&self, _n: u8) -> u32 {
        1
    }
    /// The bytes behind an input reference the adapter made when it took the request.
    fn fetch<'a>(&'a self, input: &'a str) -> BoxFuture<'a, Result<Bytes, String>>;
    /// Marks the request message.
    fn mark<'a>(&'a self, to: &'a Reply, mark: Mark) -> BoxFuture<'a, Result<(), ChatError>>;
    /// Posts `text` answering the request; returns the message.
    fn say<'a>(&'a self, to: &'a Reply, text: &'a str) -> BoxFuture<'a, Result<i64, ChatError>>;
    fn edit<'a>(
        &'a self,
        to: &'a Reply,
        shown: Shown,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), ChatError>>;
    /// The largest file the chat takes; `None`: results are posted as they are.
    fn upload_limit<'a>(&'a self, to: &'a Reply) -> BoxFuture<'a, Option<u64>>;
    /// Posts a job's placeholder answering the request.
    fn hold<'a>(
        &'a self,
        to: &'a Reply,
        hold: &'a Hold<'a>,
    ) -> BoxFuture<'a, Result<Placeholder, ChatError>>;
    /// Shows `text` (the prompt and the job's state) on its placeholder.
    fn show<'a>(
        &'a self,
        to: &'a Reply,
        placeholder: &'a Placeholder,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), ChatError>>;
    /// Puts the result into the placeholder, in its place. Done again, it shows nothing new.
    fn fill<'a>(
        &'a self,
        to: &'a Reply,
        placeholder: &'a Placeholder,
        result: &'a ResultPost,
    ) -> BoxFuture<'a, Result<Posted, ChatError>>;
    /// Turns the placeholder into the failure text `text` (no image of the request is left).
    fn fail<'a>(
        &'a self,
        to: &'a Reply,
        placeholder: &'a Placeholder,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), ChatError>>;
}
