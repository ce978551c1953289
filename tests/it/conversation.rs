//! Each job's conversation, owned by the core, against the recording chat double and the real
//! DashScope client on the fake: what the chat was asked to do, in order, and what the store
//! holds after it. The per-platform suites keep only what their wire alone can show.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use qwen_edit_bot::backend::DashScope;
use qwen_edit_bot::backend::dashscope::INPUT_RULES;
use qwen_edit_bot::core::command::{ParseContext, parse};
use qwen_edit_bot::core::conversation::retrying;
use qwen_edit_bot::core::error::{Failure, FailureReason, Rejection};
use qwen_edit_bot::core::image::FitLimits;
use qwen_edit_bot::core::jobs::{Engine, EngineConfig, JobSpec};
use qwen_edit_bot::core::model::{Lang, Platform, Reply};
use qwen_edit_bot::core::ports::chat::{ChatError, Mark, Shown, Side};
use qwen_edit_bot::core::ports::model::EditService;
use qwen_edit_bot::core::ports::store::{JobStatus, ResultAt};
use qwen_edit_bot::core::quota::Quotas;
use qwen_edit_bot::messages;

use super::chat_double::{Call, RecordingChat};
use super::quota::{at, limits, user};
use crate::fakes::dashscope::{FakeDashScope, Reply as Answer};
use crate::fakes::images;

struct Rig {
    _dir: tempfile::TempDir,
    fake: FakeDashScope,
    engine: Arc<Engine>,
    quotas: Arc<Quotas>,
    chat: Arc<RecordingChat>,
}

/// Engine settings for tests: `workers` workers, a queue of 10, 5 jobs per user at once, the
/// input rules of DashScope, no default negative prompt.
pub fn engine_config(workers: usize) -> EngineConfig {
    EngineConfig {
        max_queue: 10,
        max_in_flight_per_user: 5,
        workers,
        fit: FitLimits::new(INPUT_RULES),
        store_prompts: false,
        default_negative: String::new(),
        fetch_timeout: Duration::from_secs(5),
        download_timeout: Duration::from_secs(30),
        default_size: None,
    }
}

/// The engine with `workers` workers on the real DashScope client and the fake.
async fn rig(workers: usize) -> Rig {
    let fake = FakeDashScope::start().await;
    let delays = Arc::new(Mutex::new(Vec::new()));
    let mut opts = super::dashscope::options(&fake, &delays);
    opts.policy.max_concurrent = workers;
    let backend = Arc::new(DashScope::new(opts).unwrap());
    rig_with(workers, backend, fake)
}

/// The engine with `workers` workers on `backend` (the fake DashScope stays idle unless it is
/// the backend's).
fn rig_with(workers: usize, backend: Arc<dyn EditService>, fake: FakeDashScope) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(
        qwen_edit_bot::store::sqlite::SqliteStore::open(&dir.path().join("q.db")).unwrap(),
    );
    let clock = Arc::new(qwen_edit_bot::core::clock::ManualClock::new(at(
        2026, 12, 2, 12, 0,
    )));
    let quotas = Arc::new(Quotas::new(ledger, clock, limits(5)));
    let cfg = EngineConfig {
        max_queue: 50,
        ..engine_config(workers)
    };
    let chat = Arc::new(RecordingChat::new(Platform::Telegram));
    chat.put_file("photo", images::jpeg(640, 480));
    let mut engine = Engine::new(quotas.clone(), backend, cfg);
    engine.register(chat.clone());
    Rig {
        _dir: dir,
        fake,
        engine: Arc::new(engine),
        quotas,
        chat,
    }
}

fn reply(user: &str, message: i64) -> Reply {
    Reply {
        platform: Platform::Telegram,
        chat: -100,
        group: Some("-100".into()),
        to: Some(message),
        user: user.into(),
        lang: Lang::En,
        deferred: None,
        upload_limit: None,
    }
}

fn job(id: &str, to: Reply, inputs: &[&str], text: &str) -> JobSpec {
    let command = parse(text, ParseContext::default()).unwrap().unwrap();
    let inputs = inputs.iter().map(|s| s.to_string()).collect();
    JobSpec::new(id.into(), to, inputs, command)
}

/// One worker, busy with job "first" (user 1, message 10, prompt "a") while the model holds it.
async fn first_holds_the_worker() -> Rig {
    let r = rig(1).await;
    r.fake.hold();
    r.engine.spawn_workers();
    r.engine
        .request(job("first", reply("1", 10), &["photo"], "/edit a"))
        .await;
    r.chat.wait_for(1, |c| matches!(c, Call::Fetch(_))).await;
    r
}

/// What a chat that blocked the bot answers.
fn blocked() -> ChatError {
    ChatError::Final {
        side: Side::User,
        detail: "bot was blocked by the user".into(),
    }
}

/// The chat's answers about job `id` (requested by message `to`): its marks, placeholders and
/// results, and (`others`) every call that names no job.
fn answers_about(chat: &RecordingChat, id: &str, to: i64, others: bool) -> Vec<Call> {
    chat.answers()
        .into_iter()
        .filter(|c| match c {
            Call::Mark(on, _) => *on == Some(to),
            Call::Post { job, .. } | Call::Hold { job, .. } => job == id,
            _ => others,
        })
        .collect()
}

/// Waits (5 s at most) until the store shows `status` for `job`: the conversation writes it
/// right after its last chat call.
pub async fn settled(quotas: &Quotas, job: &str, status: JobStatus) {
    let wait = async {
        while quotas.store().job(job).await.unwrap().map(|j| j.status) != Some(status) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap_or_else(|_| panic!("{job} never became {status:?}"));
}

/// Waits (5 s at most) until the store holds no unfinished job (nor failure left untold).
pub async fn all_told(quotas: &Quotas) {
    let wait = async {
        while !quotas.store().unfinished().await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("every job finished and told");
}

#[tokio::test]
async fn a_result_is_posted_replying_to_the_request_committed_and_marked() {
    let r = rig(2).await;
    r.engine.spawn_workers();
    r.engine
        .request(job("j1", reply("7", 41), &["photo"], "/edit make it night"))
        .await;
    let post = r.chat.posts(1).await.remove(0);
    let Call::Post {
        to,
        images,
        caption,
        again,
        message,
        ..
    } = &post
    else {
        unreachable!()
    };
    assert_eq!((*to, images.len()), (Some(41), 1));
    assert_eq!(
        caption,
        &messages::result_caption(Lang::En, "make it night", 4, false)
    );
    r.chat
        .wait_for(1, |c| *c == Call::Mark(Some(41), Mark::Done))
        .await;
    settled(&r.quotas, "j1", JobStatus::Delivered).await;
    let placeholder = Call::Hold {
        job: "j1".into(),
        to: Some(41),
        input: Some("photo".into()),
        n: 1,
        text: messages::placeholder("make it night", &messages::working(Lang::En)),
        message: *message,
    };
    assert_eq!(
        r.chat.answers(),
        [
            Call::Mark(Some(41), Mark::Working),
            placeholder,
            post.clone(),
            Call::Mark(Some(41), Mark::Done)
        ],
        "a job that does not wait: the mark, the placeholder replying to the request, the \
         result put into it, the final mark, nothing else"
    );
    assert_eq!(r.quotas.show(&user("7")).await.unwrap().used, 1);
    // 🔁 sits on the result message.
    let token = again.clone().expect("a 🔁 token");
    let pressed = ResultAt {
        chat: "-100".into(),
        message: message.to_string(),
    };
    let elsewhere = ResultAt {
        message: (message + 1).to_string(),
        ..pressed.clone()
    };
    let forged = r
        .engine
        .again(&token, &elsewhere, "b0".into(), reply("8", message + 1));
    assert!(forged.await.is_none(), "only under its own result");
    let again = r
        .engine
        .again(&token, &pressed, "b1".into(), reply("8", *message))
        .await
        .expect("🔁 under the result");
    assert_eq!(
        (again.user(), again.inputs),
        (user("8"), vec!["photo".to_string()])
    );
    assert_ne!(again.command.seed, None, "a new seed");
}

#[tokio::test]
async fn a_waiting_jobs_placeholder_shows_its_position_then_working_then_becomes_the_result() {
    // The one worker has the first job (the model holds it) when the second comes.
    let r = first_holds_the_worker().await;
    r.engine
        .request(job("second", reply("2", 20), &["photo"], "/edit b"))
        .await;
    let queued = messages::placeholder("b", &messages::queued(Lang::En, 0));
    r.chat
        .wait_for(
            1,
            |c| matches!(c, Call::Hold { text, .. } if *text == queued),
        )
        .await;
    r.fake.release();
    r.chat.posts(2).await;
    settled(&r.quotas, "second", JobStatus::Delivered).await;
    // The mark turns after the commit: wait for the last call.
    r.chat
        .wait_for(1, |c| *c == Call::Mark(Some(20), Mark::Done))
        .await;
    let second = answers_about(&r.chat, "second", 20, true);
    assert_eq!(second[0], Call::Mark(Some(20), Mark::Working));
    let Call::Hold {
        to,
        input,
        n,
        message,
        ..
    } = &second[1]
    else {
        panic!("the placeholder comes second: {second:#?}");
    };
    assert_eq!((*to, input.as_deref(), *n), (Some(20), Some("photo"), 1));
    let working = messages::placeholder("b", &messages::working(Lang::En));
    assert_eq!(second[2], Call::Show(*message, working));
    assert!(
        matches!(&second[3], Call::Post { job, message: into, .. } if job == "second" && into == message),
        "the result goes into the placeholder: {second:#?}"
    );
    assert_eq!(second[4..], [Call::Mark(Some(20), Mark::Done)]);
    let kept = r.quotas.store().placeholder("second").await.unwrap();
    assert_eq!(kept, Some(format!("{{\"images\":[{message}]}}")));
}

#[tokio::test]
async fn a_result_the_users_chat_refuses_is_charged_and_one_lost_on_the_platform_is_refunded() {
    let r = rig(1).await;
    r.engine.spawn_workers();
    r.chat.fail_next("post", blocked());
    r.engine
        .request(job("blocked", reply("3", 30), &["photo"], "/edit a"))
        .await;
    settled(&r.quotas, "blocked", JobStatus::Undelivered).await;
    let charged = Failure {
        reason: FailureReason::ChatRefused("bot was blocked by the user".into()),
        refunded: false,
    };
    assert_eq!(
        r.chat.failed(1).await,
        [messages::placeholder(
            "a",
            &messages::failure(Lang::En, &charged)
        )],
        "told on the job's placeholder"
    );
    assert_eq!(
        r.quotas.show(&user("3")).await.unwrap().used,
        1,
        "the images were made"
    );

    r.chat
        .fail_next("post", ChatError::platform("file too large"));
    r.engine
        .request(job("lost", reply("4", 40), &["photo"], "/edit b"))
        .await;
    settled(&r.quotas, "lost", JobStatus::Failed).await;
    let refunded = Failure {
        reason: FailureReason::Delivery("file too large".into()),
        refunded: true,
    };
    assert_eq!(
        r.chat.failed(2).await[1],
        messages::placeholder("b", &messages::failure(Lang::En, &refunded))
    );
    assert_eq!(r.quotas.show(&user("4")).await.unwrap().used, 0);
    assert_eq!(
        r.fake.calls(),
        2,
        "one model call each, no retry of a final error"
    );
    r.chat
        .wait_for(2, |c| matches!(c, Call::Mark(_, Mark::Failed)))
        .await;
}

#[tokio::test]
async fn a_waiting_job_whose_chat_refuses_its_placeholder_is_dropped_before_the_model_and_refunded()
{
    let r = first_holds_the_worker().await;
    // The bot was blocked in the chat of the second request, which has to wait.
    r.chat.fail_next("hold", blocked());
    r.engine
        .request(job("second", reply("2", 20), &["photo"], "/edit b"))
        .await;
    settled(&r.quotas, "second", JobStatus::Failed).await;
    r.chat
        .wait_for(1, |c| *c == Call::Mark(Some(20), Mark::Failed))
        .await;
    assert_eq!(r.engine.queue_len(), 0, "out of the queue");
    r.fake.release();
    settled(&r.quotas, "first", JobStatus::Delivered).await;
    all_told(&r.quotas).await;
    assert_eq!(r.fake.calls(), 1, "no model call for the refused chat");
    assert_eq!(r.quotas.show(&user("2")).await.unwrap().used, 0, "refunded");
    let second = answers_about(&r.chat, "second", 20, false);
    assert!(
        matches!(
            &second[..],
            [
                Call::Mark(Some(20), Mark::Working),
                Call::Hold { .. },
                Call::Mark(Some(20), Mark::Failed)
            ]
        ),
        "{second:#?}"
    );
}

#[tokio::test]
async fn a_throttled_or_failing_post_is_retried_with_the_images_in_hand() {
    let r = rig(1).await;
    r.engine.spawn_workers();
    r.chat.fail_next(
        "post",
        ChatError::RetryAfter(Some(Duration::from_millis(20)), "429".into()),
    );
    r.chat.fail_next("post", ChatError::Transient("502".into()));
    r.engine
        .request(job("j", reply("5", 50), &["photo"], "/edit a"))
        .await;
    let posts = r.chat.posts(3).await;
    settled(&r.quotas, "j", JobStatus::Delivered).await;
    assert_eq!(posts.len(), 3);
    assert_eq!(r.fake.calls(), 1, "no new model call");
    assert_eq!(r.quotas.show(&user("5")).await.unwrap().used, 1);
}

#[tokio::test]
async fn each_user_error_is_told_once_and_costs_nothing() {
    let r = rig(1).await;
    r.fake.script([Answer::Error {
        status: 400,
        code: "DataInspectionFailed",
        retry_after: None,
    }]);
    r.engine.spawn_workers();
    // No image: refused at the door, told once however often it is repeated.
    for i in 0..3 {
        r.engine
            .request(job(&format!("n{i}"), reply("6", 60 + i), &[], "/edit a"))
            .await;
    }
    let no_image = messages::rejection(Lang::En, &Rejection::NoImage);
    assert_eq!(r.chat.said(1).await, [no_image]);
    // Not an image, moderated: accepted, failed, refunded, told.
    r.chat.put_file("pdf", &b"%PDF-1.4"[..]);
    r.engine
        .request(job("pdf", reply("6", 70), &["pdf"], "/edit a"))
        .await;
    settled(&r.quotas, "pdf", JobStatus::Failed).await;
    r.engine
        .request(job("moderated", reply("6", 71), &["photo"], "/edit a"))
        .await;
    settled(&r.quotas, "moderated", JobStatus::Failed).await;
    let failed = r.chat.failed(2).await;
    let refunded = |reason| {
        let told = messages::failure(
            Lang::En,
            &Failure {
                reason,
                refunded: true,
            },
        );
        messages::placeholder("a", &told)
    };
    assert_eq!(
        failed,
        [
            refunded(FailureReason::Image(
                qwen_edit_bot::core::image::ImageRejection::NotAnImage
            )),
            refunded(FailureReason::Backend(
                qwen_edit_bot::core::ports::model::BackendError::Moderated {
                    code: "DataInspectionFailed".into()
                }
            )),
        ]
    );
    assert_eq!(r.quotas.show(&user("6")).await.unwrap().used, 0);
    let only_no_image = r
        .chat
        .answers()
        .iter()
        .filter(|c| matches!(c, Call::Say(t) if t.contains("No image")))
        .count();
    assert_eq!(only_no_image, 1);
}

#[tokio::test]
async fn a_request_the_platform_already_answers_is_told_in_that_answer() {
    let r = rig(1).await;
    r.engine.spawn_workers();
    let deferred = Reply {
        to: None,
        deferred: Some("interaction-token".into()),
        ..reply("9", 0)
    };
    r.engine
        .request(job("none", deferred.clone(), &[], "/edit a"))
        .await;
    let no_image = messages::rejection(Lang::En, &Rejection::NoImage);
    r.chat
        .wait_for(1, |c| *c == Call::Edit(Shown::Deferred, no_image.clone()))
        .await;
    r.engine
        .request(job("ok", deferred, &["photo"], "/edit a"))
        .await;
    let post = r.chat.posts(1).await.remove(0);
    let Call::Post { message, .. } = post else {
        unreachable!()
    };
    settled(&r.quotas, "ok", JobStatus::Delivered).await;
    let held: Vec<i64> = r
        .chat
        .answers()
        .iter()
        .filter_map(|c| match c {
            Call::Hold { message, .. } => Some(*message),
            _ => None,
        })
        .collect();
    assert_eq!(
        held,
        [message],
        "the platform's answer is the placeholder the result goes into"
    );
    assert!(
        !r.chat
            .answers()
            .iter()
            .any(|c| matches!(c, Call::Mark(..) | Call::Say(_))),
        "no marks and no replies where the platform shows the answer: {:?}",
        r.chat.answers()
    );
}

#[tokio::test]
async fn results_over_the_chats_upload_limit_are_compressed_to_fit_and_say_so() {
    let r = rig(1).await;
    // Noise: it does not compress well, so 600×600 as PNG is about 1 MB.
    let big = images::noise_png(600, 600);
    assert!(big.len() > 600 * 1024, "{}", big.len());
    r.fake.set_result_bytes(big);
    r.chat.set_upload_limit(Some(400 * 1024));
    r.engine.spawn_workers();
    r.engine
        .request(job("big", reply("1", 11), &["photo"], "/edit a"))
        .await;
    let Call::Post {
        images, caption, ..
    } = r.chat.posts(1).await.remove(0)
    else {
        unreachable!()
    };
    assert!(
        images[0].len() <= 400 * 1024 - 64 * 1024,
        "{}",
        images[0].len()
    );
    assert_eq!(
        images::dims(&images[0]),
        (image::ImageFormat::Jpeg, 600, 600)
    );
    assert!(
        caption.ends_with(&messages::compressed(Lang::En)),
        "{caption}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_30_users_gets_30_results_with_at_most_3_model_calls_at_once() {
    let r = rig(3).await;
    r.fake.set_latency(Duration::from_millis(50));
    r.engine.spawn_workers();
    let requests: Vec<_> = (0..30)
        .map(|i| {
            let engine = r.engine.clone();
            tokio::spawn(async move {
                let to = reply(&format!("{}", 100 + i), i);
                engine
                    .request(job(&format!("j{i}"), to, &["photo"], "/edit x"))
                    .await
            })
        })
        .collect();
    for request in requests {
        request.await.unwrap();
    }
    let posts = r.chat.posts(30).await;
    let mut to: Vec<i64> = posts
        .iter()
        .filter_map(|p| match p {
            Call::Post { to, .. } => *to,
            _ => None,
        })
        .collect();
    to.sort();
    assert_eq!(
        to,
        (0..30).collect::<Vec<_>>(),
        "each request its own result"
    );
    assert_eq!(r.fake.calls(), 30);
    assert_eq!(r.fake.max_in_flight(), 3);
}

#[tokio::test]
async fn any_edit_service_behind_the_port_gets_the_same_conversation() {
    use qwen_edit_bot::core::ports::model::{BackendError, OperatorProblem};
    let service = Arc::new(super::edit_double::MemoryService::default());
    let r = rig_with(1, service.clone(), FakeDashScope::start().await);
    let (engine, quotas, chat) = (&r.engine, &r.quotas, &r.chat);
    engine.spawn_workers();
    // Its own limits: n = 2 at most.
    engine
        .request(job("three", reply("1", 1), &["photo"], "/edit a --n 3"))
        .await;
    let refused = messages::rejection(Lang::En, &Rejection::CountNotSupported { max: 2 });
    assert_eq!(chat.said(1).await, [refused]);
    engine
        .request(job("two", reply("1", 2), &["photo"], "/edit a --n 2"))
        .await;
    let Call::Post { images, .. } = chat.posts(1).await.remove(0) else {
        unreachable!()
    };
    assert_eq!(images.len(), 2);
    assert_eq!(
        images::dims(&images[0]).1,
        640,
        "the fitted input, kept by the service"
    );
    settled(quotas, "two", JobStatus::Delivered).await;
    let job_record = quotas.store().job("two").await.unwrap().unwrap();
    assert_eq!(
        (job_record.model.as_str(), job_record.request_id.as_deref()),
        ("memory-edit", Some("mem-1"))
    );
    // An operator problem is told in the service-neutral words, refunded.
    service.fail_next(BackendError::Operator {
        problem: OperatorProblem::Billing,
        code: "whatever-the-vendor-says".into(),
        message: String::new(),
    });
    engine
        .request(job("broke", reply("1", 3), &["photo"], "/edit a"))
        .await;
    settled(quotas, "broke", JobStatus::Failed).await;
    let failed = chat.failed(1).await;
    assert!(failed[0].contains("out of credit"), "{failed:?}");
    assert!(
        !failed[0].contains("whatever-the-vendor-says"),
        "{failed:?}"
    );
    assert_eq!(quotas.show(&user("1")).await.unwrap().used, 2);
    assert_eq!(
        service.asked(),
        [("a".to_string(), 1, 2), ("a".to_string(), 1, 1)],
        "the refused request never reached the service"
    );
    assert_eq!(r.fake.calls(), 0, "DashScope was not the service");
}

/// The one retry policy, on paused time: what a throttled call asked is waited (capped at a
/// minute), other transient errors back off 1, 2, 4, 8 s, a final error is not retried, and
/// five attempts is all.
#[tokio::test(start_paused = true)]
async fn chat_calls_wait_what_the_platform_asked_back_off_otherwise_and_stop_at_five() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let run = async |errors: Vec<Option<ChatError>>| {
        let calls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let result = retrying(|| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let error = errors.get(n).cloned().flatten();
            async move { error.map_or(Ok(n), Err) }
        })
        .await;
        (result, calls.load(Ordering::SeqCst), started.elapsed())
    };
    let throttled = |secs| {
        Some(ChatError::RetryAfter(
            Some(Duration::from_secs(secs)),
            "429".into(),
        ))
    };
    let transient = || Some(ChatError::Transient("502".into()));
    let (ok, calls, waited) = run(vec![throttled(7), transient(), None]).await;
    assert_eq!((ok, calls, waited), (Ok(2), 3, Duration::from_secs(7 + 2)));
    let (_, calls, waited) = run(vec![throttled(600), None]).await;
    assert_eq!(
        (calls, waited),
        (2, Duration::from_secs(60)),
        "at most a minute"
    );
    let refused = ChatError::Final {
        side: Side::User,
        detail: "blocked".into(),
    };
    let (err, calls, waited) = run(vec![Some(refused.clone())]).await;
    assert_eq!((err, calls, waited), (Err(refused), 1, Duration::ZERO));
    let (err, calls, waited) = run(vec![transient(); 9]).await;
    assert_eq!(
        (err, calls, waited),
        (
            Err(ChatError::Transient("502".into())),
            5,
            Duration::from_secs(1 + 2 + 4 + 8)
        )
    );
}

#[tokio::test]
async fn a_waiting_jobs_placeholder_shows_the_progress_comfyui_reports() {
    let comfy = crate::fakes::comfyui::FakeComfy::start().await;
    let delays = Default::default();
    let service =
        qwen_edit_bot::backend::comfyui::ComfyUi::new(super::comfyui::options(&comfy, &delays))
            .unwrap();
    let r = rig_with(1, Arc::new(service), FakeDashScope::start().await);
    r.engine.spawn_workers();
    r.engine
        .request(job("first", reply("1", 10), &["photo"], "/edit a"))
        .await;
    r.engine
        .request(job("second", reply("2", 20), &["photo"], "/edit b"))
        .await;
    r.chat.posts(2).await;
    settled(&r.quotas, "second", JobStatus::Delivered).await;
    r.chat
        .wait_for(1, |c| *c == Call::Mark(Some(20), Mark::Done))
        .await;
    let queued = messages::placeholder("b", &messages::queued(Lang::En, 0));
    let status = r.chat.answers().iter().find_map(|c| match c {
        Call::Hold { text, message, .. } if *text == queued => Some(*message),
        _ => None,
    });
    let status = status.expect("the second job waited with a placeholder showing its place");
    let edits: Vec<String> = r
        .chat
        .answers()
        .into_iter()
        .filter_map(|c| match c {
            Call::Show(message, text) if message == status => Some(text),
            _ => None,
        })
        .collect();
    // The fake reports 25, 50, 75 and 100 % within milliseconds: one edit shows the latest
    // value pending when the display looks; the rest fall within 3 s of it.
    let progress: Vec<String> = [25, 50, 75, 100]
        .map(|p| messages::placeholder("b", &messages::working_progress(Lang::En, p)))
        .into();
    assert_eq!(edits.len(), 2, "{edits:?}");
    assert_eq!(
        edits[0],
        messages::placeholder("b", &messages::working(Lang::En))
    );
    assert!(progress.contains(&edits[1]), "{edits:?}");
    assert_eq!(comfy.prompts().len(), 2, "one ComfyUI run per job");
    let first = r.chat.answers();
    assert!(
        !first
            .iter()
            .any(|c| matches!(c, Call::Say(t) | Call::Hold { text: t, .. } if t.contains('%'))),
        "progress never becomes a new message: {first:?}"
    );
}
