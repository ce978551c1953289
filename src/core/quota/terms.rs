//! The quota's vocabulary: windows, limits, reservations and their verdicts, per-user
//! settings. Plain values, shared by the rules (`policy`), the store port and [`super::Quotas`].

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::core::model::UserRef;

/// Calendar windows in UTC. Weeks start on Monday.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    Hour,
    #[default]
    Day,
    Week,
    Month,
}

impl Window {
    /// Start of the window containing `now`.
    pub fn start(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let midnight = now.date_naive().and_time(NaiveTime::MIN).and_utc();
        match self {
            Window::Hour => midnight + Duration::hours(i64::from(now.hour())),
            Window::Day => midnight,
            Window::Week => {
                midnight - Duration::days(i64::from(now.weekday().num_days_from_monday()))
            }
            Window::Month => Utc
                .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
                .single()
                .unwrap_or(midnight),
        }
    }

    /// The name used in the config (`hour`, `day`, `week`, `month`).
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
            Window::Month => "month",
        }
    }

    /// Start of the next window: when the quota resets.
    pub fn end(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let start = self.start(now);
        match self {
            Window::Hour => start + Duration::hours(1),
            Window::Day => start + Duration::days(1),
            Window::Week => start + Duration::weeks(1),
            Window::Month => {
                let (y, m) = if start.month() == 12 {
                    (start.year() + 1, 1)
                } else {
                    (start.year(), start.month() + 1)
                };
                Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
                    .single()
                    .unwrap_or(start)
            }
        }
    }
}

/// Configured limits (docs/PRODUCT.md §3.5 `[quota]`); 0 on `per_chat`/`global_per_day` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_user: u32,
    pub window: Window,
    pub per_chat: u32,
    pub global_per_day: u32,
}

/// A job asking for quota. Written to the ledger as a job record.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub job_id: String,
    pub user: UserRef,
    pub chat: String,
    /// The guild or group the per-chat limit counts against; `None` in private chats.
    pub group: Option<String>,
    pub model: String,
    pub cost: u32,
    /// Stored only when `quota.store_prompts` is on.
    pub prompt: Option<String>,
    /// The job description (JSON) kept for 🔁 and for resuming; pruned after a few days.
    pub spec: Option<String>,
    /// An unguessable token for the result's 🔁 button (it names the job without revealing or
    /// letting anyone guess its id).
    pub token: Option<String>,
    /// The queue's admission limits, checked in the reserve by a store replicas share (each
    /// process's own queue checks them for its jobs alone).
    pub admission: Admission,
}

/// `quota.max_in_flight_per_user` and `quota.max_queue`, for every replica together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Jobs of one user waiting or running at once.
    pub per_user: u32,
    /// Jobs waiting at once.
    pub queued: u32,
}

impl Admission {
    /// No admission limit (CLI edits, tests of the quota rules alone).
    pub const NONE: Admission = Admission {
        per_user: u32::MAX,
        queued: u32::MAX,
    };
}

/// A reserve that went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// Images left in the window after this job.
    pub remaining: u32,
    pub limit: u32,
    pub resets_at: DateTime<Utc>,
}

/// Why a reserve was refused. Shown to the user (except `Duplicate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaRejection {
    /// A job with this id exists already (the same update seen twice): nothing to do.
    #[error("this request was already accepted")]
    Duplicate,
    #[error("you are blocked from using this bot")]
    Blocked,
    #[error("editing is disabled here")]
    Disabled,
    #[error("you have used {used} of {limit} edits; more from {resets_at}")]
    User {
        used: u32,
        limit: u32,
        resets_at: DateTime<Utc>,
    },
    #[error("this chat has used its {limit} edits; more from {resets_at}")]
    Chat {
        limit: u32,
        resets_at: DateTime<Utc>,
    },
    #[error("the bot has reached its daily limit; more from {resets_at}")]
    Global { resets_at: DateTime<Utc> },
    /// [`Admission::per_user`] jobs of this user wait or run already (on any replica).
    #[error("{max} edits are in progress already")]
    TooManyInFlight { max: u32 },
    /// [`Admission::queued`] jobs wait already (on all replicas together).
    #[error("the queue is full")]
    QueueFull,
}

/// Per-user settings kept by admins, in one scope (bot-wide or one chat).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserSettings {
    pub limit_override: Option<u32>,
    pub blocked: bool,
    /// An operator's reset: only jobs after this position in the job sequence count. A position,
    /// not a time, so a clock that was wrong at the reset cannot move it.
    pub reset_after: Option<i64>,
}

/// What `/quota` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserQuota {
    pub used: u32,
    pub limit: u32,
    pub blocked: bool,
    pub overridden: bool,
    pub resets_at: DateTime<Utc>,
}

impl UserQuota {
    pub fn remaining(&self) -> u32 {
        self.limit.saturating_sub(self.used)
    }
}
