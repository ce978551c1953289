//! Quotas and the SQLite ledger (docs/PRODUCT.md §5).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use qwen_edit_bot::core::clock::ManualClock;
use qwen_edit_bot::core::model::{Platform, UserRef};
use qwen_edit_bot::core::ports::store::{JobStatus, Store};
use qwen_edit_bot::core::quota::{Limits, QuotaRejection, Quotas, Reservation, Window};
use qwen_edit_bot::store::sqlite::SqliteStore;

pub fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

pub fn limits(per_user: u32) -> Limits {
    Limits {
        per_user,
        window: Window::Day,
        per_chat: 0,
        global_per_day: 0,
    }
}

pub fn user(id: &str) -> UserRef {
    UserRef::new(Platform::Telegram, id)
}

pub fn reservation(job: &str, user_id: &str, group: Option<&str>, cost: u32) -> Reservation {
    Reservation {
        job_id: job.into(),
        user: user(user_id),
        chat: group.unwrap_or(user_id).into(),
        group: group.map(Into::into),
        model: "qwen-image-edit-plus".into(),
        cost,
        prompt: None,
        spec: None,
        token: None,
        admission: qwen_edit_bot::core::quota::Admission::NONE,
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: Arc<ManualClock>,
}

impl Setup {
    fn new(now: DateTime<Utc>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/folder/q.sqlite3");
        Self {
            _dir: dir,
            path,
            clock: Arc::new(ManualClock::new(now)),
        }
    }

    fn quotas(&self, limits: Limits) -> Arc<Quotas> {
        let ledger = Arc::new(SqliteStore::open(&self.path).unwrap());
        Arc::new(Quotas::new(ledger, self.clock.clone(), limits))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_1000_concurrent_reserves_against_a_limit_of_10_exactly_10_win() {
    let s = Setup::new(at(2026, 11, 26, 12, 0));
    let q = s.quotas(limits(10));
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move {
                q.reserve(reservation(&format!("job{i}"), "7", None, 1))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Ok(_) => won += 1,
            Err(QuotaRejection::User {
                used: 10,
                limit: 10,
                ..
            }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 10);
    assert_eq!(q.show(&user("7")).await.unwrap().used, 10);
}

#[tokio::test]
async fn a_reserve_tells_what_is_left_and_refuses_past_the_limit_with_the_reset_time() {
    let s = Setup::new(at(2026, 11, 26, 23, 59));
    let q = s.quotas(limits(3));
    let g = q
        .reserve(reservation("a", "1", None, 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (g.remaining, g.limit, g.resets_at),
        (1, 3, at(2026, 11, 27, 0, 0))
    );
    let no = q
        .reserve(reservation("b", "1", None, 2))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        no,
        QuotaRejection::User {
            used: 2,
            limit: 3,
            resets_at: at(2026, 11, 27, 0, 0)
        }
    );
    // The window rolls over at midnight UTC.
    s.clock.advance(Duration::minutes(2));
    let g = q
        .reserve(reservation("c", "1", None, 3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.remaining, 0);
}

#[tokio::test]
async fn refunds_give_the_quota_back_and_commits_keep_it() {
    let s = Setup::new(at(2026, 11, 26, 10, 0));
    let q = s.quotas(limits(2));
    q.reserve(reservation("a", "1", None, 1))
        .await
        .unwrap()
        .unwrap();
    q.reserve(reservation("b", "1", None, 1))
        .await
        .unwrap()
        .unwrap();
    q.commit("a", 1, Some("req-1".into()), None).await.unwrap();
    q.refund("b", "InternalError").await.unwrap();
    assert_eq!(q.show(&user("1")).await.unwrap().used, 1);
    // A finished job stays finished: a late refund of a delivered job changes nothing.
    q.refund("a", "late").await.unwrap();
    assert_eq!(q.show(&user("1")).await.unwrap().used, 1);
    let a = q.store().job("a").await.unwrap().unwrap();
    assert_eq!(
        (a.status, a.request_id.as_deref()),
        (JobStatus::Delivered, Some("req-1"))
    );
    let b = q.store().job("b").await.unwrap().unwrap();
    assert_eq!(
        (b.status, b.error.as_deref()),
        (JobStatus::Failed, Some("InternalError"))
    );
    assert_eq!(b.finished_at, Some(at(2026, 11, 26, 10, 0)));
}

#[tokio::test]
async fn per_chat_and_global_limits_apply_across_users() {
    let s = Setup::new(at(2026, 11, 26, 10, 0));
    let q = s.quotas(Limits {
        per_user: 10,
        window: Window::Day,
        per_chat: 2,
        global_per_day: 3,
    });
    q.reserve(reservation("a", "1", Some("-100"), 1))
        .await
        .unwrap()
        .unwrap();
    q.reserve(reservation("b", "2", Some("-100"), 1))
        .await
        .unwrap()
        .unwrap();
    let no = q
        .reserve(reservation("c", "3", Some("-100"), 1))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(no, QuotaRejection::Chat { limit: 2, .. }));
    // Private chats do not count against a group.
    q.reserve(reservation("d", "3", None, 1))
        .await
        .unwrap()
        .unwrap();
    let no = q
        .reserve(reservation("e", "4", None, 1))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        no,
        QuotaRejection::Global {
            resets_at: at(2026, 11, 27, 0, 0)
        }
    );
}

#[tokio::test]
async fn overrides_blocks_and_resets_are_persisted_across_a_reopen() {
    let s = Setup::new(at(2026, 11, 26, 10, 0));
    {
        let q = s.quotas(limits(2));
        q.reserve(reservation("a", "1", None, 2))
            .await
            .unwrap()
            .unwrap();
        q.set_limit(&user("1"), Some(5)).await.unwrap();
        q.set_blocked(&user("2"), true).await.unwrap();
        q.reserve(reservation("b", "3", None, 2))
            .await
            .unwrap()
            .unwrap();
        q.reset(&user("3")).await.unwrap();
    }
    let q = s.quotas(limits(2));
    let one = q.show(&user("1")).await.unwrap();
    assert_eq!((one.used, one.limit, one.overridden), (2, 5, true));
    let no = q
        .reserve(reservation("c", "2", None, 1))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(no, QuotaRejection::Blocked);
    assert_eq!(q.show(&user("3")).await.unwrap().used, 0, "reset survives");
    q.reserve(reservation("d", "3", None, 2))
        .await
        .unwrap()
        .unwrap();
    q.set_blocked(&user("2"), false).await.unwrap();
    q.reserve(reservation("e", "2", None, 1))
        .await
        .unwrap()
        .unwrap();
    q.set_limit(&user("1"), None).await.unwrap();
    assert_eq!(q.show(&user("1")).await.unwrap().limit, 2);
    assert_eq!(
        q.store().job("a").await.unwrap().unwrap().status,
        JobStatus::Queued
    );
}

#[tokio::test]
async fn a_per_user_limit_of_zero_means_nobody_may_edit_unless_given_their_own() {
    let s = Setup::new(at(2026, 11, 26, 10, 0));
    let q = s.quotas(limits(0));
    let no = q
        .reserve(reservation("a", "1", None, 1))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(no, QuotaRejection::Disabled);
    q.set_limit(&user("1"), Some(1)).await.unwrap();
    q.reserve(reservation("b", "1", None, 1))
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn windows_follow_calendar_boundaries_in_utc() {
    let t = at(2026, 12, 31, 17, 45); // a Thursday
    assert_eq!(Window::Hour.start(t), at(2026, 12, 31, 17, 0));
    assert_eq!(Window::Hour.end(t), at(2026, 12, 31, 18, 0));
    assert_eq!(Window::Day.end(t), at(2027, 1, 1, 0, 0));
    assert_eq!(Window::Week.start(t), at(2026, 12, 28, 0, 0));
    assert_eq!(Window::Week.end(t), at(2027, 1, 4, 0, 0));
    assert_eq!(Window::Month.start(t), at(2026, 12, 1, 0, 0));
    assert_eq!(Window::Month.end(t), at(2027, 1, 1, 0, 0));
    assert_eq!(
        Window::Month.end(at(2028, 2, 29, 23, 0)),
        at(2028, 3, 1, 0, 0)
    );
}

#[tokio::test]
async fn a_monthly_window_rolls_over_on_the_first() {
    let s = Setup::new(at(2026, 11, 30, 23, 0));
    let q = s.quotas(Limits {
        window: Window::Month,
        ..limits(1)
    });
    q.reserve(reservation("a", "1", None, 1))
        .await
        .unwrap()
        .unwrap();
    assert!(
        q.reserve(reservation("b", "1", None, 1))
            .await
            .unwrap()
            .is_err()
    );
    s.clock.set(at(2026, 12, 1, 0, 0));
    q.reserve(reservation("c", "1", None, 1))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn prompts_are_stored_only_when_given() {
    let s = Setup::new(at(2026, 11, 26, 10, 0));
    let q = s.quotas(limits(5));
    let mut r = reservation("a", "1", None, 1);
    r.prompt = Some("make it night".into());
    q.reserve(r).await.unwrap().unwrap();
    q.reserve(reservation("b", "1", None, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        q.store().job("a").await.unwrap().unwrap().prompt.as_deref(),
        Some("make it night")
    );
    let b = q.store().job("b").await.unwrap().unwrap();
    assert_eq!(
        (b.prompt, b.model.as_str(), b.cost),
        (None, "qwen-image-edit-plus", 1)
    );
}

#[tokio::test]
async fn a_chat_admins_settings_only_restrict_in_that_chat_and_bot_wide_ones_apply_everywhere() {
    let s = Setup::new(at(2026, 11, 26, 10, 0));
    let q = s.quotas(limits(1));
    let u = user("7");
    // The admins of group -100 block the user there, and only there.
    q.set_blocked_in(&u, Some("-100"), true).await.unwrap();
    let no = q
        .reserve(reservation("a", "7", Some("-100"), 1))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(no, QuotaRejection::Blocked);
    q.reserve(reservation("b", "7", Some("-200"), 1))
        .await
        .unwrap()
        .unwrap();
    // A chat's limit above the bot-wide one gives nothing: usage in every chat counts.
    q.set_blocked_in(&u, Some("-100"), false).await.unwrap();
    q.set_limit_in(&u, Some("-100"), Some(5)).await.unwrap();
    let no = q
        .reserve(reservation("c", "7", Some("-100"), 1))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            no,
            QuotaRejection::User {
                used: 1,
                limit: 1,
                ..
            }
        ),
        "{no:?}"
    );
    assert_eq!(q.show_in(&u, Some("-100")).await.unwrap().limit, 1);
    assert_eq!(q.show(&u).await.unwrap().limit, 1);
    // The operator raises the bot-wide limit; the chat's admins lower it in their chat.
    q.set_limit(&u, Some(3)).await.unwrap();
    q.set_limit_in(&u, Some("-100"), Some(1)).await.unwrap();
    q.reserve(reservation("d", "7", Some("-100"), 1))
        .await
        .unwrap()
        .unwrap();
    let no = q
        .reserve(reservation("e", "7", Some("-100"), 1))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            no,
            QuotaRejection::User {
                used: 1,
                limit: 1,
                ..
            }
        ),
        "the chat's own limit counts its own usage: {no:?}"
    );
    let shown = q.show_in(&u, Some("-100")).await.unwrap();
    assert_eq!((shown.used, shown.limit, shown.remaining()), (1, 1, 0));
    let elsewhere = q
        .reserve(reservation("f", "7", Some("-200"), 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(elsewhere.remaining, 0, "3 of the operator's 3 used");
    // An operator's (bot-wide) block applies in every chat.
    q.set_blocked(&u, true).await.unwrap();
    for group in ["-100", "-200"] {
        let no = q
            .reserve(reservation(&format!("g{group}"), "7", Some(group), 1))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(no, QuotaRejection::Blocked);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_5000_concurrent_reserves_in_three_chats_exactly_the_bot_wide_limit_wins() {
    let s = Setup::new(at(2026, 11, 26, 12, 0));
    let q = s.quotas(limits(10));
    let u = user("7");
    // Chat admins in play: one "grants" a million, one restricts to 4.
    q.set_limit_in(&u, Some("-1"), Some(1_000_000))
        .await
        .unwrap();
    q.set_limit_in(&u, Some("-2"), Some(4)).await.unwrap();
    let tasks: Vec<_> = (0..5000)
        .map(|i| {
            let q = q.clone();
            let group = ["-1", "-2", "-3"][i % 3];
            tokio::spawn(async move {
                let r = reservation(&format!("job{i}"), "7", Some(group), 1);
                (group, q.reserve(r).await.unwrap())
            })
        })
        .collect();
    let mut won: HashMap<&str, u32> = HashMap::new();
    for t in tasks {
        match t.await.unwrap() {
            (group, Ok(_)) => *won.entry(group).or_default() += 1,
            (_, Err(QuotaRejection::User { .. })) => {}
            (_, Err(other)) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won.values().sum::<u32>(), 10, "{won:?}");
    assert!(won.get("-2").copied().unwrap_or(0) <= 4, "{won:?}");
    assert_eq!(q.show(&u).await.unwrap().used, 10);
}

#[tokio::test]
async fn a_reset_made_while_the_clock_was_ahead_does_not_disable_the_quota() {
    let s = Setup::new(at(2026, 11, 26, 12, 0));
    let q = s.quotas(limits(2));
    q.reserve(reservation("a", "1", None, 2))
        .await
        .unwrap()
        .unwrap();
    // The operator resets while the clock is a day ahead; then the clock is put right.
    s.clock.set(at(2026, 11, 27, 12, 0));
    q.reset(&user("1")).await.unwrap();
    s.clock.set(at(2026, 11, 26, 12, 5));
    assert_eq!(
        q.show(&user("1")).await.unwrap().used,
        0,
        "the reset counts"
    );
    q.reserve(reservation("b", "1", None, 2))
        .await
        .unwrap()
        .unwrap();
    let no = q
        .reserve(reservation("c", "1", None, 1))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            no,
            QuotaRejection::User {
                used: 2,
                limit: 2,
                ..
            }
        ),
        "usage after the reset counts: {no:?}"
    );
}

#[tokio::test]
async fn undelivered_images_are_charged_and_every_generated_one_counts_for_the_day() {
    use qwen_edit_bot::core::ports::store::ReportBy;
    let s = Setup::new(at(2026, 11, 26, 10, 0));
    let q = s.quotas(Limits {
        per_user: 10,
        window: Window::Day,
        per_chat: 0,
        global_per_day: 10,
    });
    let answer = |n: usize| qwen_edit_bot::core::ports::model::Answer {
        request_id: None,
        parts: (0..n).map(|i| format!("https://r/{i}.png")).collect(),
        service: None,
    };
    // Made and refused by the user's chat: charged what the backend made.
    q.reserve(reservation("a", "1", None, 4))
        .await
        .unwrap()
        .unwrap();
    q.save_result("a", &answer(4)).await.unwrap();
    q.charge_undelivered("a", "chat_refused").await.unwrap();
    // Made, then lost on our side: refunded to the user, still spent for the day.
    q.reserve(reservation("b", "2", None, 3))
        .await
        .unwrap()
        .unwrap();
    q.save_result("b", &answer(3)).await.unwrap();
    q.refund("b", "delivery").await.unwrap();
    // Asked for 3, given 2: charged 2.
    q.reserve(reservation("c", "3", None, 3))
        .await
        .unwrap()
        .unwrap();
    q.save_result("c", &answer(2)).await.unwrap();
    q.commit("c", 2, None, None).await.unwrap();
    assert_eq!(
        (
            q.show(&user("1")).await.unwrap().used,
            q.show(&user("2")).await.unwrap().used,
            q.show(&user("3")).await.unwrap().used
        ),
        (4, 0, 2)
    );
    assert_eq!(
        q.store().job("a").await.unwrap().unwrap().status,
        JobStatus::Undelivered
    );
    // 4 + 3 + 2 generated: one more image fits the day's 10, two do not.
    let no = q
        .reserve(reservation("d", "4", None, 2))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(no, QuotaRejection::Global { .. }), "{no:?}");
    q.reserve(reservation("e", "4", None, 1))
        .await
        .unwrap()
        .unwrap();
    let rows = q
        .store()
        .report(at(2026, 11, 26, 0, 0), None, ReportBy::User, None)
        .await
        .unwrap();
    let row = |key: &str| rows.iter().find(|r| r.key == key).unwrap().clone();
    let (a, b, c) = (row("telegram:1"), row("telegram:2"), row("telegram:3"));
    assert_eq!(
        (a.jobs, a.images, a.failed, a.generated, a.undelivered),
        (0, 0, 1, 4, 4)
    );
    assert_eq!(
        (b.jobs, b.images, b.failed, b.generated, b.undelivered),
        (0, 0, 1, 3, 3)
    );
    assert_eq!(
        (c.jobs, c.images, c.failed, c.generated, c.undelivered),
        (1, 2, 0, 2, 0)
    );
    let later = q
        .store()
        .report(
            at(2026, 11, 26, 0, 0),
            Some(at(2026, 11, 26, 9, 0)),
            ReportBy::User,
            None,
        )
        .await
        .unwrap();
    assert!(later.is_empty(), "--until cuts: {later:?}");
}

#[tokio::test]
async fn a_second_daemon_on_the_same_store_is_refused_until_the_first_one_stops() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.sqlite3");
    let db = db.to_str().unwrap();
    let first = qwen_edit_bot::store::lock(db).await.unwrap();
    let second = qwen_edit_bot::store::lock(db)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        second.contains("another qwen-edit-bot is already running") && second.contains("q.sqlite3"),
        "{second}"
    );
    drop(first);
    qwen_edit_bot::store::lock(db)
        .await
        .expect("free again once the first one stopped");
}

#[tokio::test]
async fn a_database_made_by_the_first_release_is_migrated_and_keeps_its_jobs_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite3");
    let old = rusqlite::Connection::open(&path).unwrap();
    // The schema of the first release (commit 662afa0), with a job and a user's settings.
    old.execute_batch(
        "CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            platform TEXT NOT NULL, user_id TEXT NOT NULL, chat_id TEXT NOT NULL, group_id TEXT,
            model TEXT NOT NULL, cost INTEGER NOT NULL, status TEXT NOT NULL,
            created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER,
            request_id TEXT, error TEXT, prompt TEXT, spec TEXT);
         CREATE INDEX jobs_user ON jobs (platform, user_id, created_at);
         CREATE INDEX jobs_group ON jobs (platform, group_id, created_at);
         CREATE INDEX jobs_time ON jobs (created_at);
         CREATE TABLE users (
            platform TEXT NOT NULL, user_id TEXT NOT NULL, limit_override INTEGER,
            blocked INTEGER NOT NULL DEFAULT 0, reset_at INTEGER,
            PRIMARY KEY (platform, user_id));
         INSERT INTO jobs (id, platform, user_id, chat_id, model, cost, status, created_at)
         VALUES ('old', 'telegram', '1', '1', 'm', 1, 'running', 0);
         INSERT INTO users (platform, user_id, limit_override, blocked) VALUES ('telegram', '2', 7, 1);",
    )
    .unwrap();
    drop(old);
    let ledger = SqliteStore::open(&path).unwrap();
    let open = ledger.unfinished().await.unwrap();
    assert_eq!(
        open.iter()
            .map(|u| (u.id.as_str(), u.attempts, u.parts.len()))
            .collect::<Vec<_>>(),
        [("old", 0, 0)]
    );
    ledger.mark_running("old", Utc::now()).await.unwrap();
    assert_eq!(ledger.unfinished().await.unwrap()[0].attempts, 1);
    // Old settings are bot-wide now, and scoped ones can be added next to them.
    let settings = ledger.settings(&user("2"), None).await.unwrap();
    assert_eq!((settings.limit_override, settings.blocked), (Some(7), true));
    ledger
        .set_blocked(&user("2"), Some("-5"), false)
        .await
        .unwrap();
    assert!(ledger.settings(&user("2"), None).await.unwrap().blocked);
    let now = at(2026, 11, 26, 12, 0);
    let granted = ledger
        .reserve(&reservation("new", "3", None, 1), &limits(5), now)
        .await
        .unwrap();
    assert!(granted.is_ok(), "{granted:?}");
    drop(ledger);
    let again = SqliteStore::open(&path).expect("opens again once migrated");
    assert!(again.settings(&user("2"), None).await.unwrap().blocked);
}
