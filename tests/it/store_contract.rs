//! The contract every store keeps, written once against `dyn Store` and run against each store
//! there is (SQLite today). A new store passes this before anything else uses it.

use chrono::Duration;
use qwen_edit_bot::core::model::{Platform, UserRef};
use qwen_edit_bot::core::ports::store::{JobStatus, ReportBy, ResultAt, Store};
use qwen_edit_bot::core::quota::QuotaRejection;
use qwen_edit_bot::store::sqlite::SqliteStore;

use super::quota::{at, limits, reservation, user};

/// Every clause, in order, on one fresh store.
async fn contract(store: &dyn Store) {
    reserves_are_atomic_and_counted(store).await;
    a_job_goes_queued_running_ready_delivered_and_stays_finished(store).await;
    failures_refund_and_stay_listed_until_told(store).await;
    results_the_chat_refused_are_charged(store).await;
    settings_apply_per_scope_and_resets_are_bot_wide(store).await;
    again_tokens_lead_to_the_job_and_where_its_result_is(store).await;
    album_parts_are_kept_once_each_until_dropped(store).await;
    allowed_places_are_set_listed_and_report_changes(store).await;
    claims_list_the_unfinished_and_reports_group_usage(store).await;
    store
        .check_writable()
        .await
        .expect("a fresh store takes writes");
}

#[tokio::test]
async fn sqlite_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("contract.db")).unwrap();
    contract(&store).await;
}

/// Whether the store lists job `id` as unfinished.
async fn is_listed(store: &dyn Store, id: &str) -> bool {
    store.unfinished().await.unwrap().iter().any(|u| u.id == id)
}

fn now() -> chrono::DateTime<chrono::Utc> {
    at(2026, 12, 2, 12, 0)
}

async fn reserves_are_atomic_and_counted(store: &dyn Store) {
    let l = limits(3);
    let granted = store
        .reserve(&reservation("r1", "10", None, 2), &l, now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((granted.remaining, granted.limit), (1, 3));
    let again = store
        .reserve(&reservation("r1", "10", None, 2), &l, now())
        .await;
    assert_eq!(again.unwrap(), Err(QuotaRejection::Duplicate));
    let over = store
        .reserve(&reservation("r2", "10", None, 2), &l, now())
        .await;
    assert!(matches!(
        over.unwrap(),
        Err(QuotaRejection::User {
            used: 2,
            limit: 3,
            ..
        })
    ));
    assert_eq!(
        store
            .used(&user("10"), now() - Duration::hours(1))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store.job("r1").await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    assert_eq!(
        store.job("r2").await.unwrap(),
        None,
        "a refused reserve writes nothing"
    );
}

async fn a_job_goes_queued_running_ready_delivered_and_stays_finished(store: &dyn Store) {
    assert_eq!(store.placeholder("r1").await.unwrap(), None);
    store
        .set_placeholder("r1", r#"{"images":[77]}"#)
        .await
        .unwrap();
    store.mark_running("r1", now()).await.unwrap();
    let open = store.unfinished().await.unwrap();
    let r1 = open.iter().find(|u| u.id == "r1").unwrap();
    assert_eq!(
        (r1.status, r1.attempts, r1.placeholder.as_deref()),
        (JobStatus::Running, 1, Some(r#"{"images":[77]}"#)),
        "the placeholder is kept with the job"
    );
    assert_eq!(
        store.placeholder("r1").await.unwrap().as_deref(),
        Some(r#"{"images":[77]}"#)
    );
    assert_eq!(store.placeholder("no-such-job").await.unwrap(), None);
    let urls = vec![
        "https://results/1.png".to_string(),
        "https://results/2.png".into(),
    ];
    store
        .save_result("r1", Some("req-1"), &urls, None, now())
        .await
        .unwrap();
    let r1 = store
        .unfinished()
        .await
        .unwrap()
        .into_iter()
        .find(|u| u.id == "r1")
        .unwrap();
    assert_eq!(
        (r1.status, r1.parts, r1.request_id.as_deref()),
        (JobStatus::Ready, urls, Some("req-1"))
    );
    let at = ResultAt {
        chat: "10".into(),
        message: "555".into(),
    };
    store
        .deliver("r1", 1, Some("req-1"), Some(&at), now())
        .await
        .unwrap();
    let job = store.job("r1").await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.cost),
        (JobStatus::Delivered, 1),
        "charged what was posted"
    );
    store
        .finish("r1", JobStatus::Failed, None, Some("late"), now())
        .await
        .unwrap();
    assert_eq!(
        store.job("r1").await.unwrap().unwrap().status,
        JobStatus::Delivered,
        "stays finished"
    );
    assert!(!is_listed(store, "r1").await);
}

async fn failures_refund_and_stay_listed_until_told(store: &dyn Store) {
    let l = limits(10);
    store
        .reserve(&reservation("f1", "11", None, 3), &l, now())
        .await
        .unwrap()
        .unwrap();
    store
        .finish("f1", JobStatus::Failed, None, Some("InternalError"), now())
        .await
        .unwrap();
    assert_eq!(
        store
            .used(&user("11"), now() - Duration::hours(1))
            .await
            .unwrap(),
        0,
        "refunded"
    );
    let listed = store.unfinished().await.unwrap();
    let f1 = listed
        .iter()
        .find(|u| u.id == "f1")
        .expect("listed until told");
    assert_eq!(
        (f1.status, f1.error.as_deref()),
        (JobStatus::Failed, Some("InternalError"))
    );
    store.mark_told("f1").await.unwrap();
    assert!(!is_listed(store, "f1").await);
}

async fn results_the_chat_refused_are_charged(store: &dyn Store) {
    let l = limits(10);
    store
        .reserve(&reservation("u1", "12", None, 2), &l, now())
        .await
        .unwrap()
        .unwrap();
    store
        .save_result(
            "u1",
            None,
            &[
                "https://results/x.png".into(),
                "https://results/y.png".into(),
            ],
            None,
            now(),
        )
        .await
        .unwrap();
    store
        .finish(
            "u1",
            JobStatus::Undelivered,
            None,
            Some("chat_refused"),
            now(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.job("u1").await.unwrap().unwrap().status,
        JobStatus::Undelivered
    );
    assert_eq!(
        store
            .used(&user("12"), now() - Duration::hours(1))
            .await
            .unwrap(),
        2,
        "spent money"
    );
}

async fn settings_apply_per_scope_and_resets_are_bot_wide(store: &dyn Store) {
    let u = user("13");
    store.set_limit(&u, Some("-500"), Some(1)).await.unwrap();
    store.set_blocked(&u, Some("-600"), true).await.unwrap();
    let bot_wide = store.settings(&u, None).await.unwrap();
    assert_eq!((bot_wide.limit_override, bot_wide.blocked), (None, false));
    assert_eq!(
        store
            .settings(&u, Some("-500"))
            .await
            .unwrap()
            .limit_override,
        Some(1)
    );
    assert!(store.settings(&u, Some("-600")).await.unwrap().blocked);
    let l = limits(10);
    let blocked = store
        .reserve(&reservation("s1", "13", Some("-600"), 1), &l, now())
        .await;
    assert_eq!(blocked.unwrap(), Err(QuotaRejection::Blocked));
    store
        .reserve(&reservation("s2", "13", Some("-500"), 1), &l, now())
        .await
        .unwrap()
        .unwrap();
    let over = store
        .reserve(&reservation("s3", "13", Some("-500"), 1), &l, now())
        .await;
    assert!(matches!(
        over.unwrap(),
        Err(QuotaRejection::User { limit: 1, .. })
    ));
    store.reset_usage(&u).await.unwrap();
    let standing = store.standing(&u, Some("-500"), &l, now()).await.unwrap();
    assert_eq!((standing.used_total, standing.used_in_chat), (0, 0));
}

async fn again_tokens_lead_to_the_job_and_where_its_result_is(store: &dyn Store) {
    let mut r = reservation("t1", "14", None, 1);
    (r.spec, r.token) = (Some("{\"id\":\"t1\"}".into()), Some("tok-14".into()));
    store
        .reserve(&r, &limits(10), now())
        .await
        .unwrap()
        .unwrap();
    let before = store.by_token("tok-14").await.unwrap().unwrap();
    assert_eq!(
        (before.spec.as_str(), before.result_at),
        ("{\"id\":\"t1\"}", None)
    );
    let at = ResultAt {
        chat: "14".into(),
        message: "77".into(),
    };
    store
        .deliver("t1", 1, None, Some(&at), now())
        .await
        .unwrap();
    assert_eq!(
        store.by_token("tok-14").await.unwrap().unwrap().result_at,
        Some(at)
    );
    assert_eq!(store.by_token("nobody's").await.unwrap(), None);
    assert!(store.prune_specs(now() + Duration::days(1)).await.unwrap() >= 1);
    assert_eq!(
        store.by_token("tok-14").await.unwrap(),
        None,
        "pruned descriptions lead nowhere"
    );
}

async fn album_parts_are_kept_once_each_until_dropped(store: &dyn Store) {
    store.save_album_part("-1:g", "2", "second").await.unwrap();
    store.save_album_part("-1:g", "1", "first").await.unwrap();
    store
        .save_album_part("-1:g", "2", "second again")
        .await
        .unwrap();
    assert_eq!(
        store.album_parts("-1:g").await.unwrap(),
        ["second", "first"],
        "arrival order, once"
    );
    assert_eq!(store.album_groups().await.unwrap(), ["-1:g"]);
    store.drop_album("-1:g").await.unwrap();
    assert!(store.album_parts("-1:g").await.unwrap().is_empty());
    assert!(store.album_groups().await.unwrap().is_empty());
}

async fn allowed_places_are_set_listed_and_report_changes(store: &dyn Store) {
    assert!(
        store
            .set_allowed(Platform::Telegram, "-100", true)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_allowed(Platform::Telegram, "-100", true)
            .await
            .unwrap(),
        "no change"
    );
    assert!(
        store
            .set_allowed(Platform::Discord, "77", true)
            .await
            .unwrap()
    );
    let mut places = store.allowed_places().await.unwrap();
    places.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        places,
        [
            (Platform::Telegram, "-100".into()),
            (Platform::Discord, "77".into())
        ]
    );
    assert!(
        store
            .set_allowed(Platform::Discord, "77", false)
            .await
            .unwrap()
    );
    assert_eq!(
        store.allowed_places().await.unwrap(),
        [(Platform::Telegram, "-100".into())]
    );
}

async fn claims_list_the_unfinished_and_reports_group_usage(store: &dyn Store) {
    let l = limits(10);
    store
        .reserve(&reservation("c1", "15", Some("-900"), 1), &l, now())
        .await
        .unwrap()
        .unwrap();
    let claimed = store
        .claim_unfinished("replica-a", now() + Duration::minutes(10))
        .await
        .unwrap();
    let ids: Vec<&str> = claimed.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(
        ids,
        store
            .unfinished()
            .await
            .unwrap()
            .iter()
            .map(|u| u.id.as_str())
            .collect::<Vec<_>>()
    );
    assert!(ids.contains(&"c1"));
    store
        .renew("replica-a", now() + Duration::minutes(20))
        .await
        .unwrap();
    store.deliver("c1", 1, None, None, now()).await.unwrap();
    let rows = store
        .report(
            now() - Duration::hours(1),
            None,
            ReportBy::User,
            Some((Platform::Telegram, "-900")),
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let who = UserRef::new(Platform::Telegram, "15").to_string();
    assert_eq!((&rows[0].key, rows[0].jobs, rows[0].images), (&who, 1, 1));
    // Delivered with no service recorded (one service, or an older release): its model's.
    assert_eq!(
        rows[0].by_service,
        [qwen_edit_bot::core::ports::store::ServiceUse {
            service: "qwen-image-edit-plus".into(),
            generated: 1,
            undelivered: 0,
        }]
    );
}

#[tokio::test]
async fn postgres_keeps_the_store_contract() {
    let Some(url) = super::pg::database("postgres_keeps_the_store_contract").await else {
        return;
    };
    let store = qwen_edit_bot::store::postgres::open(&url).unwrap();
    contract(&store).await;
    // Opening again finds the schema made and migrated: the same jobs, nothing created twice.
    let again = qwen_edit_bot::store::postgres::open_existing(&url).unwrap();
    assert_eq!(
        again.unfinished().await.unwrap(),
        store.unfinished().await.unwrap()
    );
    qwen_edit_bot::store::postgres::open(&url).unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        versions,
        [1, 2],
        "each migration recorded once, however often opened"
    );
    let Some(empty) = super::pg::database("postgres_open_existing_refuses_an_empty_db").await
    else {
        return;
    };
    let Err(refused) = qwen_edit_bot::store::postgres::open_existing(&empty) else {
        panic!("an empty database is not a store");
    };
    assert!(refused.0.contains("no qwen-edit-bot schema"), "{refused}");
}

#[tokio::test]
async fn postgres_jobs_are_claimed_by_one_owner_until_its_lease_ends() {
    let Some(url) = super::pg::database("postgres_jobs_are_claimed_by_one_owner").await else {
        return;
    };
    let (a, b) = (
        qwen_edit_bot::store::postgres::open(&url).unwrap(),
        qwen_edit_bot::store::postgres::open(&url).unwrap(),
    );
    let l = limits(10);
    for id in ["j1", "j2"] {
        a.reserve(&reservation(id, "30", None, 1), &l, now())
            .await
            .unwrap()
            .unwrap();
    }
    let real_now = chrono::Utc::now();
    let ids = |v: Vec<qwen_edit_bot::core::ports::store::Unfinished>| {
        v.into_iter().map(|u| u.id).collect::<Vec<_>>()
    };
    let by_a = a
        .claim_unfinished("a", real_now + Duration::minutes(10))
        .await
        .unwrap();
    assert_eq!(ids(by_a), ["j1", "j2"], "oldest first");
    let by_b = b
        .claim_unfinished("b", real_now + Duration::minutes(10))
        .await
        .unwrap();
    assert!(by_b.is_empty(), "held by a: {:?}", ids(by_b));
    assert_eq!(
        a.renew("a", real_now + Duration::minutes(20))
            .await
            .unwrap(),
        2
    );
    a.deliver("j1", 1, None, None, now()).await.unwrap();
    assert_eq!(
        a.renew("a", real_now + Duration::minutes(20))
            .await
            .unwrap(),
        1
    );
    // a dies: its lease runs out (here: renewed into the past), and b takes what is left.
    a.renew("a", real_now - Duration::seconds(1)).await.unwrap();
    let by_b = b
        .claim_unfinished("b", real_now + Duration::minutes(10))
        .await
        .unwrap();
    assert_eq!(ids(by_b), ["j2"]);
    assert!(
        a.claim_unfinished("a", real_now + Duration::minutes(10))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn postgres_quotas_hold_across_replicas_racing_for_them() {
    let Some(url) = super::pg::database("postgres_quotas_hold_across_replicas").await else {
        return;
    };
    // Three "replicas": each its own pool on the same database.
    let replicas: Vec<std::sync::Arc<dyn Store>> = (0..3)
        .map(|_| {
            std::sync::Arc::new(qwen_edit_bot::store::postgres::open(&url).unwrap())
                as std::sync::Arc<dyn Store>
        })
        .collect();
    let race = |limits: qwen_edit_bot::core::quota::Limits, prefix: &'static str, group: bool| {
        let replicas = replicas.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (r, store) in replicas.iter().enumerate() {
                for i in 0..50 {
                    let store = store.clone();
                    // One user per round for per_user; a user each for per_chat and global.
                    let who = if prefix == "u" {
                        "77".to_owned()
                    } else {
                        format!("{prefix}{r}-{i}")
                    };
                    let chat = group.then_some("-500");
                    let res = reservation(&format!("{prefix}{r}-{i}"), &who, chat, 1);
                    tasks.spawn(async move { store.reserve(&res, &limits, now()).await.unwrap() });
                }
            }
            let mut granted = 0;
            while let Some(v) = tasks.join_next().await {
                granted += usize::from(v.unwrap().is_ok());
            }
            granted
        }
    };
    let per_user = limits(10);
    assert_eq!(
        race(per_user, "u", false).await,
        10,
        "per_user = 10 across 150 requests"
    );
    let per_chat = qwen_edit_bot::core::quota::Limits {
        per_chat: 7,
        ..limits(100)
    };
    assert_eq!(race(per_chat, "c", true).await, 7, "per_chat = 7");
    // The global budget counts what is already spent today (10 + 7).
    let global = qwen_edit_bot::core::quota::Limits {
        global_per_day: 25,
        ..limits(100)
    };
    assert_eq!(
        race(global, "g", false).await,
        8,
        "global_per_day = 25, 17 spent"
    );
    let used = replicas[1]
        .used(
            &UserRef::new(Platform::Telegram, "77"),
            now() - Duration::days(1),
        )
        .await
        .unwrap();
    assert_eq!(
        used, 10,
        "no drift: the ledger holds exactly what was granted"
    );
}

/// The platform the contract's reservations are of.
const TG: &[qwen_edit_bot::core::model::Platform] =
    &[qwen_edit_bot::core::model::Platform::Telegram];

#[tokio::test]
async fn postgres_idle_replicas_take_waiting_jobs_in_fair_order() {
    let Some(url) = super::pg::database("postgres_idle_replicas_take_waiting_jobs").await else {
        return;
    };
    let (a, b) = (
        qwen_edit_bot::store::postgres::open(&url).unwrap(),
        qwen_edit_bot::store::postgres::open(&url).unwrap(),
    );
    let (owner_a, owner_b) = (a.shared().unwrap().owner, b.shared().unwrap().owner);
    assert_ne!(owner_a, owner_b, "each store is a replica of its own");
    let l = limits(10);
    // Waiting at a: three jobs of user 1, one of user 2, two of user 3.
    for (id, user) in [
        ("j1", "1"),
        ("j2", "1"),
        ("j3", "1"),
        ("j4", "2"),
        ("j5", "3"),
        ("j6", "3"),
    ] {
        a.reserve(&reservation(id, user, None, 1), &l, now())
            .await
            .unwrap()
            .unwrap();
    }
    let real_now = chrono::Utc::now();
    let lease = real_now + Duration::minutes(10);
    let ids = |v: Vec<qwen_edit_bot::core::ports::store::Unfinished>| {
        v.into_iter().map(|u| u.id).collect::<Vec<_>>()
    };
    // Nothing of a platform b does not run, nor what has waited only since now.
    let other = b
        .take_waiting(
            &owner_b,
            lease,
            real_now,
            4,
            &[qwen_edit_bot::core::model::Platform::Discord],
        )
        .await
        .unwrap();
    assert!(other.is_empty(), "{:?}", ids(other));
    let fresh = b
        .take_waiting(&owner_b, lease, now() - Duration::hours(1), 4, TG)
        .await
        .unwrap();
    assert!(fresh.is_empty(), "{:?}", ids(fresh));
    // b takes four: every user's first, then user 1's second (not user 1's first three).
    let taken = b
        .take_waiting(&owner_b, lease, real_now, 4, TG)
        .await
        .unwrap();
    assert_eq!(ids(taken), ["j1", "j2", "j4", "j5"]);
    assert!(
        !a.start("j1", &owner_a, now()).await.unwrap(),
        "a let it go"
    );
    assert!(b.start("j1", &owner_b, now()).await.unwrap());
    // A job whose answer is stored starts again (for delivery) without going back to running.
    b.save_result("j1", Some("r1"), &["part".into()], None, now())
        .await
        .unwrap();
    assert!(b.start("j1", &owner_b, now()).await.unwrap());
    let j1 = b.job("j1").await.unwrap().unwrap();
    assert_eq!(
        j1.status,
        qwen_edit_bot::core::ports::store::JobStatus::Ready
    );
    assert_eq!(
        a.lost(&owner_a, &["j1".into(), "j3".into(), "j6".into()])
            .await
            .unwrap(),
        ["j1"]
    );
    // b never takes its own; what a still holds is all that is left.
    let rest = b
        .take_waiting(&owner_b, lease, real_now, 10, TG)
        .await
        .unwrap();
    assert_eq!(ids(rest), ["j3", "j6"]);
    assert!(
        b.take_waiting(&owner_b, lease, real_now, 10, TG)
            .await
            .unwrap()
            .is_empty()
    );
    // A job b cannot run, let go, is a's to claim at once (its lease has ended).
    b.let_go(&owner_b, "j2").await.unwrap();
    let claimed = a.claim_unfinished(&owner_a, lease).await.unwrap();
    assert_eq!(ids(claimed), ["j2"]);
}
