//! The job engine with the real DashScope client against the fake, and the fair queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use qwen_edit_bot::backend::{DashScope, DashScopeOptions};
use qwen_edit_bot::core::command::{EditCommand, ParseContext, parse};
use qwen_edit_bot::core::error::{FailureReason, Rejection};
use qwen_edit_bot::core::image::ImageRejection;
use qwen_edit_bot::core::jobs::{Engine, EngineConfig, JobEvent, JobSpec, Outcome};
use qwen_edit_bot::core::model::{Lang, Reply as Answer};
use qwen_edit_bot::core::model::{Platform, UserRef};
use qwen_edit_bot::core::ports::model::BackendError;
use qwen_edit_bot::core::ports::store::{
    AgainSource, JobRecord, JobStatus, ReportBy, ReportRow, ResultAt, Store, StoreError, Unfinished,
};
use qwen_edit_bot::core::queue::FairQueue;
use qwen_edit_bot::core::quota::policy::Standing;
use qwen_edit_bot::core::quota::{
    Granted, Limits, QuotaRejection, Quotas, Reservation, UserSettings,
};
use tokio::sync::mpsc;

use super::chat_double::{Call, RecordingChat};
use super::conversation::{all_told, engine_config, settled};
use super::quota::{at, limits, user};
use crate::fakes::dashscope::{FakeDashScope, Reply};
use crate::fakes::images;

struct Rig {
    _dir: tempfile::TempDir,
    fake: FakeDashScope,
    engine: Arc<Engine>,
    quotas: Arc<Quotas>,
    outcomes: mpsc::Receiver<JobEvent>,
    chat: Arc<RecordingChat>,
}

struct RigOptions {
    limits: Limits,
    workers: usize,
    max_queue: usize,
    max_in_flight: u32,
    model: &'static str,
    latency: Duration,
}

impl Default for RigOptions {
    fn default() -> Self {
        Self {
            limits: limits(20),
            workers: 2,
            max_queue: 50,
            max_in_flight: 2,
            model: "qwen-image-edit-plus",
            latency: Duration::ZERO,
        }
    }
}

async fn rig(o: RigOptions) -> Rig {
    let fake = FakeDashScope::start().await;
    fake.set_model(o.model);
    fake.set_latency(o.latency);
    let delays = Arc::new(Mutex::new(Vec::new()));
    let mut opts = DashScopeOptions {
        model: o.model.into(),
        ..super::dashscope::options(&fake, &delays)
    };
    opts.policy.max_concurrent = o.workers;
    let backend = Arc::new(DashScope::new(opts).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(
        qwen_edit_bot::store::sqlite::SqliteStore::open(&dir.path().join("q.db")).unwrap(),
    );
    let clock = Arc::new(qwen_edit_bot::core::clock::ManualClock::new(at(
        2026, 11, 26, 12, 0,
    )));
    let quotas = Arc::new(Quotas::new(ledger, clock, o.limits));
    let cfg = EngineConfig {
        max_queue: o.max_queue,
        max_in_flight_per_user: o.max_in_flight,
        default_negative: "blurry".into(),
        ..engine_config(o.workers)
    };
    let chat = Arc::new(RecordingChat::new(Platform::Telegram));
    chat.put_file("photo", images::jpeg(800, 600));
    chat.put_file("small", images::jpeg(200, 150));
    chat.put_file("pdf", Bytes::from_static(b"%PDF-1.4"));
    let mut engine = Engine::new(quotas.clone(), backend, cfg);
    engine.register(chat.clone());
    let rx = engine.tap();
    Rig {
        _dir: dir,
        fake,
        engine: Arc::new(engine),
        quotas,
        outcomes: rx,
        chat,
    }
}

fn command(text: &str) -> EditCommand {
    parse(text, ParseContext::default()).unwrap().unwrap()
}

fn spec(id: &str, user_id: &str, inputs: &[&str], text: &str) -> JobSpec {
    let route = Answer {
        platform: Platform::Telegram,
        chat: 1,
        group: None,
        to: Some(99),
        user: user_id.into(),
        lang: Lang::En,
        deferred: None,
        upload_limit: None,
    };
    let spec = JobSpec::new(
        id.into(),
        route,
        inputs.iter().map(|s| s.to_string()).collect(),
        command(text),
    );
    assert_eq!(spec.user(), user(user_id));
    spec
}

/// The next finished job (start events are skipped).
async fn next(rx: &mut mpsc::Receiver<JobEvent>) -> Outcome {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("an event");
        if let JobEvent::Finished(o) = event.unwrap() {
            return o;
        }
    }
}

#[tokio::test]
async fn an_accepted_job_comes_back_as_images_and_commits_on_delivery() {
    let mut r = rig(RigOptions::default()).await;
    r.chat.hold();
    r.engine.spawn_workers();
    let accepted = r
        .engine
        .submit(spec(
            "j1",
            "1",
            &["photo", "small"],
            "/edit make it night --n 2",
        ))
        .await
        .unwrap();
    assert_eq!((accepted.position, accepted.granted.remaining), (0, 18));
    assert_eq!(
        r.quotas.store().job("j1").await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    let first = tokio::time::timeout(Duration::from_secs(20), r.outcomes.recv())
        .await
        .unwrap();
    assert!(
        matches!(first, Some(JobEvent::Started(ref s)) if s.id == "j1"),
        "{first:?}"
    );
    let out = next(&mut r.outcomes).await;
    let delivery = out.result.unwrap();
    assert_eq!(delivery.images.len(), 2);
    assert_eq!(images::dims(&delivery.images[0]).1, 64);
    assert_eq!(out.job.route.to, Some(99));
    // What the backend got: both images fitted, the default negative prompt.
    let seen = r.fake.seen();
    assert!(seen[0].violations.is_empty(), "{:?}", seen[0].violations);
    assert_eq!(
        seen[0].images,
        vec![
            ("image/jpeg".into(), 800, 600),
            ("image/jpeg".into(), 512, 384)
        ]
    );
    assert_eq!(seen[0].body["parameters"]["negative_prompt"], "blurry");
    // The backend's answer is stored before delivery: a restart now would not call it again.
    assert_eq!(
        r.quotas.store().job("j1").await.unwrap().unwrap().status,
        JobStatus::Ready
    );
    let open = r.quotas.store().unfinished().await.unwrap();
    assert_eq!((open.len(), open[0].parts.len()), (1, 2));
    r.chat.release();
    let posted = r.chat.posts(1).await.remove(0);
    assert!(
        matches!(&posted, Call::Post { to: Some(99), images, again: Some(_), .. } if *images == delivery.images),
        "{posted:?}"
    );
    settled(&r.quotas, "j1", JobStatus::Delivered).await;
    let job = r.quotas.store().job("j1").await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.request_id.as_deref()),
        (JobStatus::Delivered, Some("req-ok-1"))
    );
    assert_eq!(r.quotas.show(&user("1")).await.unwrap().used, 2);
}

#[tokio::test]
async fn a_backend_failure_refunds_the_quota_and_says_so() {
    let mut r = rig(RigOptions::default()).await;
    r.engine.spawn_workers();
    r.fake.script((0..4).map(|_| Reply::Error {
        status: 500,
        code: "InternalError",
        retry_after: None,
    }));
    r.engine
        .submit(spec("j1", "1", &["photo"], "/edit x"))
        .await
        .unwrap();
    let out = next(&mut r.outcomes).await;
    let failure = out.result.unwrap_err();
    assert!(failure.refunded);
    assert_eq!(
        failure.reason,
        FailureReason::Backend(BackendError::Unavailable {
            status: 500,
            code: "InternalError".into()
        })
    );
    assert_eq!(r.fake.calls(), 4);
    assert_eq!(r.quotas.show(&user("1")).await.unwrap().used, 0);
    let job = r.quotas.store().job("j1").await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.error.as_deref()),
        (JobStatus::Failed, Some("InternalError"))
    );
}

#[tokio::test]
async fn moderation_is_refunded_without_a_retry() {
    let mut r = rig(RigOptions::default()).await;
    r.engine.spawn_workers();
    r.fake.script([Reply::Error {
        status: 400,
        code: "DataInspectionFailed",
        retry_after: None,
    }]);
    r.engine
        .submit(spec("j1", "1", &["photo"], "/edit x"))
        .await
        .unwrap();
    let failure = next(&mut r.outcomes).await.result.unwrap_err();
    assert!(matches!(
        failure.reason,
        FailureReason::Backend(BackendError::Moderated { .. })
    ));
    assert!(failure.refunded);
    assert_eq!(r.fake.calls(), 1);
    assert_eq!(r.quotas.show(&user("1")).await.unwrap().used, 0);
}

#[tokio::test]
async fn an_input_that_is_not_an_image_fails_the_job_before_the_backend_and_costs_nothing() {
    let mut r = rig(RigOptions::default()).await;
    r.engine.spawn_workers();
    r.engine
        .submit(spec("j1", "1", &["pdf"], "/edit x"))
        .await
        .unwrap();
    let failure = next(&mut r.outcomes).await.result.unwrap_err();
    assert_eq!(
        failure.reason,
        FailureReason::Image(ImageRejection::NotAnImage)
    );
    assert!(failure.refunded);
    r.engine
        .submit(spec("j2", "1", &["gone"], "/edit x"))
        .await
        .unwrap();
    let failure = next(&mut r.outcomes).await.result.unwrap_err();
    assert!(matches!(failure.reason, FailureReason::Fetch(_)));
    assert_eq!(r.fake.calls(), 0);
    assert_eq!(r.quotas.show(&user("1")).await.unwrap().used, 0);
}

#[tokio::test]
async fn requests_are_validated_before_anything_is_charged() {
    let r = rig(RigOptions {
        model: "qwen-image-edit",
        ..RigOptions::default()
    })
    .await;
    let no_image = r
        .engine
        .submit(spec("a", "1", &[], "/edit x"))
        .await
        .unwrap_err();
    assert_eq!(no_image, Rejection::NoImage);
    let four = r
        .engine
        .submit(spec("b", "1", &["photo"; 4], "/edit x"))
        .await
        .unwrap_err();
    assert_eq!(four, Rejection::TooManyImages(4));
    let n2 = r
        .engine
        .submit(spec("c", "1", &["photo"], "/edit x --n 2"))
        .await
        .unwrap_err();
    assert_eq!(n2, Rejection::CountNotSupported { max: 1 });
    assert_eq!(r.quotas.store().job("a").await.unwrap(), None);
    assert_eq!(r.quotas.show(&user("1")).await.unwrap().used, 0);
}

#[tokio::test]
async fn a_full_queue_and_a_busy_user_are_turned_away_without_charge() {
    let r = rig(RigOptions {
        max_queue: 3,
        max_in_flight: 2,
        ..RigOptions::default()
    })
    .await;
    // No workers: jobs wait.
    r.engine
        .submit(spec("a", "1", &["photo"], "/edit x"))
        .await
        .unwrap();
    r.engine
        .submit(spec("b", "1", &["photo"], "/edit x"))
        .await
        .unwrap();
    let busy = r
        .engine
        .submit(spec("c", "1", &["photo"], "/edit x"))
        .await
        .unwrap_err();
    assert_eq!(busy, Rejection::TooManyInFlight { max: 2 });
    let third = r
        .engine
        .submit(spec("d", "2", &["photo"], "/edit x"))
        .await
        .unwrap();
    assert_eq!(
        third.position, 1,
        "user 2 goes right after user 1's first job"
    );
    let full = r
        .engine
        .submit(spec("e", "3", &["photo"], "/edit x"))
        .await
        .unwrap_err();
    assert_eq!(full, Rejection::QueueFull);
    assert_eq!(r.engine.queue_len(), 3);
    assert_eq!(r.quotas.show(&user("1")).await.unwrap().used, 2);
    assert_eq!(r.quotas.show(&user("3")).await.unwrap().used, 0);
}

#[tokio::test]
async fn a_quota_refusal_frees_the_queue_place() {
    let r = rig(RigOptions {
        limits: limits(1),
        max_in_flight: 1,
        ..RigOptions::default()
    })
    .await;
    let over = r
        .engine
        .submit(spec("a", "1", &["photo"], "/edit x --n 2"))
        .await
        .unwrap_err();
    assert!(matches!(
        over,
        Rejection::Quota(QuotaRejection::User {
            used: 0,
            limit: 1,
            ..
        })
    ));
    r.engine
        .submit(spec("b", "1", &["photo"], "/edit x"))
        .await
        .unwrap();
    assert_eq!(r.engine.queue_len(), 1);
}

#[tokio::test]
async fn one_users_burst_does_not_starve_another_user() {
    let mut r = rig(RigOptions {
        workers: 1,
        max_in_flight: 10,
        ..RigOptions::default()
    })
    .await;
    for i in 0..5 {
        r.engine
            .submit(spec(&format!("a{i}"), "1", &["photo"], "/edit x"))
            .await
            .unwrap();
    }
    let b = r
        .engine
        .submit(spec("b0", "2", &["photo"], "/edit x"))
        .await
        .unwrap();
    assert_eq!(b.position, 1);
    r.engine.spawn_workers();
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(next(&mut r.outcomes).await.job.id);
    }
    assert_eq!(order, ["a0", "b0", "a1", "a2", "a3", "a4"]);
}

#[test]
fn the_fair_queue_serves_users_in_turn() {
    let q = FairQueue::<&str>::new(100, 100);
    let (a, b, c) = (user("a"), user("b"), user("c"));
    for (u, job) in [
        (&a, "a1"),
        (&a, "a2"),
        (&a, "a3"),
        (&b, "b1"),
        (&c, "c1"),
        (&b, "b2"),
    ] {
        let hold = q.hold(u).unwrap();
        q.push(hold, job);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let order: Vec<_> = rt.block_on(async { futures_take(&q, 6).await });
    assert_eq!(order, ["a1", "b1", "c1", "a2", "b2", "a3"]);
    assert_eq!(q.unfinished(&a), 3, "running jobs still count until done");
    q.done(&a);
    assert_eq!(q.unfinished(&a), 2);
}

#[test]
fn jobs_taken_elsewhere_leave_the_queue_and_their_places() {
    let q = FairQueue::<&str>::new(4, 100);
    let (a, b) = (user("a"), user("b"));
    for (u, job) in [(&a, "a1"), (&a, "a2"), (&b, "b1"), (&b, "b2")] {
        let hold = q.hold(u).unwrap();
        q.push(hold, job);
    }
    assert!(q.hold(&a).is_err(), "full");
    let mut gone = q.remove(|j| *j == "a2" || j.starts_with('b'));
    gone.sort();
    assert_eq!(gone, ["a2", "b1", "b2"]);
    assert_eq!((q.len(), q.unfinished(&a), q.unfinished(&b)), (1, 1, 0));
    // b is out of the rotation and the places are free again.
    let hold = q.hold(&b).unwrap();
    q.push(hold, "b3");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(futures_take(&q, 2)), ["a1", "b3"]);
}

async fn futures_take(q: &FairQueue<&'static str>, n: usize) -> Vec<&'static str> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(q.pop().await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_closed_queue_refuses_new_jobs_and_hands_back_the_waiting_ones() {
    let q = FairQueue::<u32>::new(10, 10);
    let hold = q.hold(&user("a")).unwrap();
    q.push(hold, 1);
    assert_eq!(q.close(), 1);
    assert_eq!(q.hold(&user("b")).unwrap_err(), Rejection::ShuttingDown);
    assert_eq!(q.pop().await, None);
    assert_eq!((q.len(), q.unfinished(&user("a"))), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_30_users_is_served_with_at_most_3_backend_calls_at_once() {
    let mut r = rig(RigOptions {
        workers: 3,
        latency: Duration::from_millis(50),
        ..RigOptions::default()
    })
    .await;
    r.engine.spawn_workers();
    let submits: Vec<_> = (0..30)
        .map(|i| {
            let engine = r.engine.clone();
            tokio::spawn(async move {
                engine
                    .submit(spec(
                        &format!("j{i}"),
                        &format!("u{i}"),
                        &["photo"],
                        "/edit x",
                    ))
                    .await
            })
        })
        .collect();
    for s in submits {
        s.await.unwrap().unwrap();
    }
    let mut served = std::collections::HashSet::new();
    for _ in 0..30 {
        let out = next(&mut r.outcomes).await;
        assert!(out.result.is_ok());
        served.insert(out.job.user().id);
    }
    assert_eq!(served.len(), 30);
    assert_eq!(r.fake.calls(), 30);
    assert_eq!(r.fake.max_in_flight(), 3);
}

/// An engine on the database at `db`, with the memory source and a fresh event channel.
fn engine_on(
    db: &std::path::Path,
    fake: &FakeDashScope,
) -> (
    Arc<Engine>,
    Arc<Quotas>,
    mpsc::Receiver<JobEvent>,
    Arc<RecordingChat>,
) {
    let delays = Arc::new(Mutex::new(Vec::new()));
    let backend = Arc::new(DashScope::new(super::dashscope::options(fake, &delays)).unwrap());
    let ledger = Arc::new(qwen_edit_bot::store::sqlite::SqliteStore::open(db).unwrap());
    let clock = Arc::new(qwen_edit_bot::core::clock::ManualClock::new(at(
        2026, 11, 26, 12, 0,
    )));
    let quotas = Arc::new(Quotas::new(ledger, clock, limits(20)));
    let cfg = engine_config(2);
    let chat = Arc::new(RecordingChat::new(Platform::Telegram));
    chat.put_file("photo", images::jpeg(800, 600));
    let mut engine = Engine::new(quotas.clone(), backend, cfg);
    engine.register(chat.clone());
    let rx = engine.tap();
    (Arc::new(engine), quotas, rx, chat)
}

#[tokio::test]
async fn after_a_restart_waiting_jobs_run_and_answered_jobs_are_delivered_without_a_new_call() {
    let fake = FakeDashScope::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    {
        let (engine, quotas, _rx, _chat) = engine_on(&db, &fake);
        engine
            .submit(spec("waiting", "1", &["photo"], "/edit a"))
            .await
            .unwrap();
        engine
            .submit(spec("answered", "2", &["photo"], "/edit b --n 2"))
            .await
            .unwrap();
        // The previous run got the backend's answer for "answered", then died.
        let parts: Vec<String> = (0..2)
            .map(|i| {
                format!(
                    "{}/results/{i}.png",
                    fake.base_url.trim_end_matches("/api/v1")
                )
            })
            .collect();
        let answer = qwen_edit_bot::core::ports::model::Answer {
            request_id: Some("req-before".into()),
            parts,
            service: None,
        };
        quotas.save_result("answered", &answer).await.unwrap();
        assert_eq!(engine.close(), 2, "both handed back to the store");
    }
    let (engine, quotas, mut rx, chat) = engine_on(&db, &fake);
    assert_eq!(engine.resume().await, 2);
    engine.spawn_workers();
    let mut done = HashMap::new();
    for _ in 0..2 {
        let out = next(&mut rx).await;
        done.insert(out.job.id.clone(), out);
    }
    let answered = done["answered"].result.as_ref().unwrap();
    assert_eq!(
        (answered.images.len(), answered.request_id.as_deref()),
        (2, Some("req-before"))
    );
    assert!(done["waiting"].result.is_ok());
    assert_eq!(fake.calls(), 1, "only the waiting job called the backend");
    let posts = chat.posts(2).await;
    let answered_post = posts.iter().find_map(|p| match p {
        Call::Post { job, images, .. } if job == "answered" => Some(images.len()),
        _ => None,
    });
    assert_eq!(answered_post, Some(2), "{posts:?}");
    all_told(&quotas).await;
    assert_eq!(quotas.show(&user("2")).await.unwrap().used, 2);
}

#[tokio::test]
async fn a_job_cut_off_by_a_restart_runs_once_more_and_a_second_time_it_is_given_up_and_refunded() {
    let fake = FakeDashScope::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    {
        let (engine, quotas, _rx, _chat) = engine_on(&db, &fake);
        for (id, user_id) in [("once", "1"), ("twice", "2")] {
            engine
                .submit(spec(id, user_id, &["photo"], "/edit a"))
                .await
                .unwrap();
        }
        // Earlier runs started these and died: "once" one time, "twice" two times.
        for id in ["once", "twice", "twice"] {
            quotas.mark_running(id).await.unwrap();
        }
        engine.close();
    }
    let (engine, quotas, mut rx, chat) = engine_on(&db, &fake);
    assert_eq!(engine.resume().await, 2);
    engine.spawn_workers();
    let mut done = HashMap::new();
    for _ in 0..2 {
        let out = next(&mut rx).await;
        done.insert(out.job.id.clone(), out);
    }
    assert!(done["once"].result.is_ok(), "run once more");
    let given_up = done["twice"].result.as_ref().unwrap_err();
    assert_eq!(
        (&given_up.reason, given_up.refunded),
        (&FailureReason::Interrupted, true)
    );
    assert_eq!(fake.calls(), 1, "the given-up job did not call the backend");
    chat.posts(1).await;
    let told = chat.failed(1).await;
    let failure = qwen_edit_bot::messages::failure(Lang::En, given_up);
    assert_eq!(
        told,
        [qwen_edit_bot::messages::placeholder("a", &failure)],
        "the given-up job's user is told, on its placeholder"
    );
    all_told(&quotas).await;
    assert_eq!(quotas.show(&user("2")).await.unwrap().used, 0);
    assert_eq!(
        quotas.store().job("twice").await.unwrap().unwrap().status,
        JobStatus::Failed
    );
}

#[tokio::test]
async fn a_failure_whose_user_was_not_told_before_a_restart_is_told_after_it() {
    let fake = FakeDashScope::start().await;
    fake.script([Reply::Error {
        status: 400,
        code: "DataInspectionFailed",
        retry_after: None,
    }]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    {
        let (engine, quotas, mut rx, chat) = engine_on(&db, &fake);
        // The process dies before the user is told: the failure text never leaves.
        chat.hold();
        engine
            .submit(spec("refused", "1", &["photo"], "/edit a"))
            .await
            .unwrap();
        let workers = engine.spawn_workers();
        let out = next(&mut rx).await;
        assert!(out.result.is_err());
        // The process dies before the front-end has told the user.
        engine.close();
        for w in workers {
            w.await.unwrap();
        }
        assert_eq!(quotas.store().unfinished().await.unwrap().len(), 1);
    }
    let (engine, quotas, mut rx, chat) = engine_on(&db, &fake);
    assert_eq!(engine.resume().await, 1);
    engine.spawn_workers();
    let out = next(&mut rx).await;
    let failure = out.result.as_ref().unwrap_err();
    assert_eq!(
        (&failure.reason, failure.refunded),
        (&FailureReason::Earlier("DataInspectionFailed".into()), true)
    );
    assert_eq!(fake.calls(), 1, "no new backend call");
    // On the placeholder the first run posted (and kept), not on a new one.
    let told = qwen_edit_bot::messages::failure(Lang::En, failure);
    chat.wait_for(2, |_| true).await;
    assert_eq!(
        chat.answers(),
        [
            Call::Fail(1000, qwen_edit_bot::messages::placeholder("a", &told)),
            Call::Mark(Some(99), qwen_edit_bot::core::ports::chat::Mark::Failed)
        ]
    );
    all_told(&quotas).await;
    assert_eq!(quotas.show(&user("1")).await.unwrap().used, 0);
    drop(engine);
    let (engine, _, _rx, _chat) = engine_on(&db, &fake);
    assert_eq!(engine.resume().await, 0, "told once, not again");
}

#[tokio::test]
async fn the_same_job_id_is_accepted_once() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let r = rig(RigOptions::default()).await;
    r.engine
        .submit(spec("dup", "1", &["photo"], "/edit x"))
        .await
        .unwrap();
    let again = r
        .engine
        .submit(spec("dup", "1", &["photo"], "/edit x"))
        .await
        .unwrap_err();
    assert_eq!(again, Rejection::Quota(QuotaRejection::Duplicate));
    assert_eq!(r.engine.queue_len(), 1);
    assert_eq!(r.quotas.show(&user("1")).await.unwrap().used, 1);
}

#[tokio::test]
async fn the_backends_answer_is_bounded_and_charged_for_what_is_delivered() {
    let mut r = rig(RigOptions::default()).await;
    r.chat.hold();
    r.engine.spawn_workers();
    let mut run = async |id: &str, text: &str, reply: Reply| {
        r.fake.script([reply]);
        r.engine
            .submit(spec(id, "1", &["photo"], text))
            .await
            .unwrap();
        next(&mut r.outcomes).await
    };
    // Asked for 6, given 1: one delivered, one charged.
    let fewer = run("fewer", "/edit a --n 6", Reply::Ok(1)).await;
    let fewer_delivery = fewer.result.clone().unwrap();
    assert_eq!(fewer_delivery.images.len(), 1);
    // Asked for 1, given 6 (or 400): only what was asked for is fetched and delivered.
    let fetched = r.fake.fetched().len();
    let more = run("more", "/edit b", Reply::Ok(6)).await;
    assert_eq!(more.result.clone().unwrap().images.len(), 1);
    let flood = run("flood", "/edit c --n 2", Reply::Ok(400)).await;
    assert_eq!(flood.result.clone().unwrap().images.len(), 2);
    assert_eq!(
        r.fake.fetched().len(),
        fetched + 3,
        "1 + 2 downloads, not 406"
    );
    // A redirect within the result host is followed; one to another host is not.
    let same = run("same", "/edit d", Reply::Redirect { other_host: false }).await;
    assert!(same.result.is_ok(), "{:?}", same.result.err());
    let other = run("other", "/edit e", Reply::Redirect { other_host: true }).await;
    let failure = other.result.unwrap_err();
    assert!(
        matches!(
            failure.reason,
            FailureReason::Backend(BackendError::Download(_))
        ),
        "{failure:?}"
    );
    assert!(failure.refunded);
    assert!(
        r.fake.fetched().iter().all(|f| !f.starts_with("localhost")),
        "{:?}",
        r.fake.fetched()
    );
    // Results larger than their share of the per-job budget are refused, not read.
    let mut huge = b"\x89PNG\r\n\x1a\n".to_vec();
    huge.resize(30 << 20, 0);
    r.fake.set_result_bytes(huge);
    let big = run("big", "/edit f --n 6", Reply::Ok(6)).await;
    assert!(
        matches!(&big.result, Err(f) if f.reason.to_string().contains("larger than")),
        "{:?}",
        big.result.err()
    );
    r.chat.release();
    settled(&r.quotas, "fewer", JobStatus::Delivered).await;
    let job = r.quotas.store().job("fewer").await.unwrap().unwrap();
    assert_eq!((job.status, job.cost), (JobStatus::Delivered, 1));
}

#[test]
fn result_urls_must_be_https_unless_the_api_itself_is_plain_http() {
    use qwen_edit_bot::backend::dashscope::result_url_allowed;
    let real = "https://dashscope.aliyuncs.com/api/v1";
    assert!(result_url_allowed(
        real,
        "https://dashscope-result.oss.aliyuncs.com/a.png?x=1"
    ));
    assert!(!result_url_allowed(
        real,
        "http://dashscope-result.oss.aliyuncs.com/a.png"
    ));
    assert!(!result_url_allowed(real, "file:///etc/passwd"));
    assert!(!result_url_allowed(real, "not a url"));
    assert!(result_url_allowed(
        "http://127.0.0.1:9/api/v1",
        "http://127.0.0.1:9/r/0.png"
    ));
}

/// A SQLite ledger whose next writes of the backend's answer and of the delivery fail.
struct Flaky {
    inner: qwen_edit_bot::store::sqlite::SqliteStore,
    saves_to_fail: std::sync::atomic::AtomicUsize,
    delivers_to_fail: std::sync::atomic::AtomicUsize,
}

fn fails(left: &std::sync::atomic::AtomicUsize) -> Result<(), StoreError> {
    use std::sync::atomic::Ordering::SeqCst;
    match left.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)) {
        Ok(_) => Err(StoreError("disk I/O error".into())),
        Err(_) => Ok(()),
    }
}

#[async_trait::async_trait]
impl Store for Flaky {
    async fn reserve(
        &self,
        r: &Reservation,
        l: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Result<Granted, QuotaRejection>, StoreError> {
        self.inner.reserve(r, l, now).await
    }
    async fn mark_running(&self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.inner.mark_running(id, now).await
    }
    async fn save_result(
        &self,
        id: &str,
        req: Option<&str>,
        urls: &[String],
        service: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        fails(&self.saves_to_fail)?;
        self.inner.save_result(id, req, urls, service, now).await
    }
    async fn unfinished(&self) -> Result<Vec<Unfinished>, StoreError> {
        self.inner.unfinished().await
    }
    async fn mark_told(&self, id: &str) -> Result<(), StoreError> {
        self.inner.mark_told(id).await
    }
    async fn set_placeholder(&self, id: &str, placeholder: &str) -> Result<(), StoreError> {
        self.inner.set_placeholder(id, placeholder).await
    }
    async fn placeholder(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.inner.placeholder(id).await
    }
    async fn check_writable(&self) -> Result<(), StoreError> {
        self.inner.check_writable().await
    }
    async fn deliver(
        &self,
        id: &str,
        images: u32,
        req: Option<&str>,
        at: Option<&ResultAt>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        fails(&self.delivers_to_fail)?;
        self.inner.deliver(id, images, req, at, now).await
    }
    async fn finish(
        &self,
        id: &str,
        status: JobStatus,
        req: Option<&str>,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.finish(id, status, req, error, now).await
    }
    async fn settings(&self, u: &UserRef, g: Option<&str>) -> Result<UserSettings, StoreError> {
        self.inner.settings(u, g).await
    }
    async fn standing(
        &self,
        u: &UserRef,
        g: Option<&str>,
        l: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Standing, StoreError> {
        self.inner.standing(u, g, l, now).await
    }
    async fn set_limit(
        &self,
        u: &UserRef,
        s: Option<&str>,
        l: Option<u32>,
    ) -> Result<(), StoreError> {
        self.inner.set_limit(u, s, l).await
    }
    async fn set_blocked(&self, u: &UserRef, s: Option<&str>, b: bool) -> Result<(), StoreError> {
        self.inner.set_blocked(u, s, b).await
    }
    async fn reset_usage(&self, u: &UserRef) -> Result<(), StoreError> {
        self.inner.reset_usage(u).await
    }
    async fn used(&self, u: &UserRef, since: DateTime<Utc>) -> Result<u32, StoreError> {
        self.inner.used(u, since).await
    }
    async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.inner.job(id).await
    }
    async fn by_token(&self, t: &str) -> Result<Option<AgainSource>, StoreError> {
        self.inner.by_token(t).await
    }
    async fn prune_specs(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        self.inner.prune_specs(before).await
    }
    async fn save_album_part(&self, g: &str, id: &str, part: &str) -> Result<(), StoreError> {
        self.inner.save_album_part(g, id, part).await
    }
    async fn album_parts(&self, g: &str) -> Result<Vec<String>, StoreError> {
        self.inner.album_parts(g).await
    }
    async fn album_groups(&self) -> Result<Vec<String>, StoreError> {
        self.inner.album_groups().await
    }
    async fn drop_album(&self, g: &str) -> Result<(), StoreError> {
        self.inner.drop_album(g).await
    }
    async fn set_allowed(
        &self,
        p: Platform,
        place: &str,
        allowed: bool,
    ) -> Result<bool, StoreError> {
        self.inner.set_allowed(p, place, allowed).await
    }
    async fn allowed_places(&self) -> Result<Vec<(Platform, String)>, StoreError> {
        self.inner.allowed_places().await
    }
    async fn report(
        &self,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
        by: ReportBy,
        within: Option<(Platform, &str)>,
    ) -> Result<Vec<ReportRow>, StoreError> {
        self.inner.report(since, until, by, within).await
    }
}

#[tokio::test]
async fn a_store_write_that_fails_after_the_backend_answered_is_retried_so_the_job_never_runs_twice()
 {
    let fake = FakeDashScope::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    {
        let _ = engine_on(&db, &fake); // creates the database
    }
    let flaky = Arc::new(Flaky {
        inner: qwen_edit_bot::store::sqlite::SqliteStore::open(&db).unwrap(),
        saves_to_fail: 2.into(),
        delivers_to_fail: 1.into(),
    });
    let clock = Arc::new(qwen_edit_bot::core::clock::ManualClock::new(at(
        2026, 11, 26, 12, 0,
    )));
    let mut quotas = Quotas::new(flaky.clone(), clock, limits(20));
    quotas.set_write_backoff(vec![Duration::from_millis(1); 8]);
    let quotas = Arc::new(quotas);
    let delays = Arc::new(Mutex::new(Vec::new()));
    let backend = Arc::new(DashScope::new(super::dashscope::options(&fake, &delays)).unwrap());
    let chat = Arc::new(RecordingChat::new(Platform::Telegram));
    chat.put_file("photo", images::jpeg(800, 600));
    chat.hold();
    let cfg = engine_config(1);
    let mut engine = Engine::new(quotas.clone(), backend, cfg);
    engine.register(chat.clone());
    let mut rx = engine.tap();
    let engine = Arc::new(engine);
    engine.spawn_workers();
    engine
        .submit(spec("flaky", "1", &["photo"], "/edit a"))
        .await
        .unwrap();
    next(&mut rx).await;
    assert_eq!(
        quotas.store().job("flaky").await.unwrap().unwrap().status,
        JobStatus::Ready,
        "the answer was stored despite two failed writes"
    );
    chat.release();
    chat.posts(1).await;
    settled(&quotas, "flaky", JobStatus::Delivered).await;
    assert_eq!(
        quotas.store().job("flaky").await.unwrap().unwrap().status,
        JobStatus::Delivered
    );
    // A restart finds nothing to run again.
    let (again, ..) = engine_on(&db, &fake);
    assert_eq!(again.resume().await, 0);
    assert_eq!(fake.calls(), 1);
}
