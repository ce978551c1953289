//! [`Chat`]: the calls the core makes to a chat platform, one method per call, none deciding.
//! The adapter translates each into its platform's request and classifies what went wrong as a
//! [`ChatError`]; what to retry, when to refund and what to say is the core's
//! (`core::conversation`).

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

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

/// Something the bot shows for a job and may change later: a message it posted, or the answer
/// the platform already shows for the request ([`Reply::deferred`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    Message(i64),
    Deferred,
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

/// Where a result was posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// The message with the 🔁 button, if it was sent.
    pub button_at: Option<i64>,
    /// A link to the result, for an answer that points at it.
    pub link: Option<String>,
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
    /// Throttled: try again after this long.
    #[error("rate limited for {0:?}: {1}")]
    RetryAfter(Duration, String),
    /// A network or server error: worth another try.
    #[error("{0}")]
    Transient(String),
    /// Trying again will not help.
    #[error("{detail}")]
    Final { side: Side, detail: String },
}

impl ChatError {
    pub fn platform(detail: impl Into<String>) -> Self {
        ChatError::Final {
            side: Side::Platform,
            detail: detail.into(),
        }
    }
}

/// How a platform's chats look and behave, for the core's choices; constant per adapter.
#[derive(Debug, Clone, Copy)]
pub struct ChatStyle {
    /// How often the typing (or uploading) indicator must be renewed while a job runs.
    pub typing_every: Duration,
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
    fn delete<'a>(&'a self, to: &'a Reply, message: i64) -> BoxFuture<'a, Result<(), ChatError>>;
    /// Shows that the bot is working on something for this chat.
    fn typing<'a>(&'a self, to: &'a Reply) -> BoxFuture<'a, Result<(), ChatError>>;
    /// The largest file the chat takes; `None`: results are posted as they are.
    fn upload_limit<'a>(&'a self, to: &'a Reply) -> BoxFuture<'a, Option<u64>>;
    /// Posts a result answering the request.
    fn post<'a>(
        &'a self,
        to: &'a Reply,
        result: &'a ResultPost,
    ) -> BoxFuture<'a, Result<Posted, ChatError>>;
}
