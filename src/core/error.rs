//! What a user is told when a request is turned away or a job fails.
//!
//! [`Rejection`] happens before a job exists (nothing is charged). [`Failure`] ends a job that
//! was accepted; whether its reserve was refunded travels with it. Internal detail (store
//! errors, backend messages) is logged, never shown: the user gets a plain sentence.

use super::command::CommandError;
use super::image::ImageRejection;
use super::ports::model::{BackendError, SizeRejection};
use super::quota::QuotaRejection;

/// A request refused at the door. Costs the user nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Command(#[from] CommandError),
    #[error("no image: send a photo with the command, or reply to one")]
    NoImage,
    #[error("at most 3 images per edit, got {0}")]
    TooManyImages(usize),
    #[error("this model makes at most {max} image(s) per edit")]
    CountNotSupported { max: u8 },
    #[error("this model takes no output size")]
    SizeNotSupported,
    #[error("each side of the output size must be from {min} to {max} pixels")]
    SizeOutOfRange { min: u32, max: u32 },
    #[error("{0}")]
    Image(#[from] ImageRejection),
    #[error("{0}")]
    Quota(#[from] QuotaRejection),
    #[error("you already have {max} edits in progress")]
    TooManyInFlight { max: u32 },
    #[error("the bot is busy, try again in a few minutes")]
    QueueFull,
    #[error("the bot is shutting down, try again shortly")]
    ShuttingDown,
    /// The store failed; details are in the log.
    #[error("internal error")]
    Internal,
}

impl From<SizeRejection> for Rejection {
    fn from(r: SizeRejection) -> Self {
        match r {
            SizeRejection::NotSupported => Rejection::SizeNotSupported,
            SizeRejection::OutOfRange { min, max } => Rejection::SizeOutOfRange { min, max },
        }
    }
}

/// Why an accepted job delivered nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailureReason {
    #[error("{0}")]
    Image(#[from] ImageRejection),
    #[error("{0}")]
    Backend(#[from] BackendError),
    /// The input could not be fetched from the chat platform.
    #[error("cannot fetch the input image: {0}")]
    Fetch(String),
    #[error("the result could not be delivered: {0}")]
    Delivery(String),
    /// The images were made, but the user's chat refused them (the bot was blocked, or may not
    /// post there): spent money, charged.
    #[error("the chat refused the result: {0}")]
    ChatRefused(String),
    /// It failed before a restart (for the reason coded here), and the user is told only now.
    #[error("failed before a restart: {0}")]
    Earlier(String),
    /// Restarts interrupted the job while it ran, twice: it is given up.
    #[error("interrupted by restarts")]
    Interrupted,
    #[error("internal error")]
    Internal,
}

impl FailureReason {
    /// Short stable label for the ledger and metrics.
    pub fn code(&self) -> String {
        match self {
            FailureReason::Image(_) => "input_image".into(),
            FailureReason::Backend(e) => e.code(),
            FailureReason::Fetch(_) => "fetch".into(),
            FailureReason::Delivery(_) => "delivery".into(),
            FailureReason::ChatRefused(_) => "chat_refused".into(),
            FailureReason::Earlier(code) => code.clone(),
            FailureReason::Interrupted => "interrupted".into(),
            FailureReason::Internal => "internal".into(),
        }
    }
}

/// A job that ended without a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: FailureReason,
    /// The reserve was given back.
    pub refunded: bool,
}
