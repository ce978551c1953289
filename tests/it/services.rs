//! Model services other than DashScope, and several of them with failover: the OpenAI-compatible
//! client against its fake (request shape, both answer forms, error mapping), the 302.AI prefix,
//! failover and its circuit, the ledger's record of which service made an image, `usage --by
//! service`, `check-config --probe` and `edit` through an OpenAI-compatible server.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use qwen_edit_bot::backend::openai::OpenAiOptions;
use qwen_edit_bot::backend::{CallPolicy, DashScope, Member, OpenAi, Services};
use qwen_edit_bot::core::command::Size;
use qwen_edit_bot::core::image::WEB_FORMATS as FORMATS;
use qwen_edit_bot::core::image::{FitLimits, InputRules, fit};
use qwen_edit_bot::core::ports::model::{BackendError, EditRequest, EditService, OperatorProblem};
use secrecy::SecretString;

use crate::dashscope::options as dashscope_options;
use crate::fakes::dashscope::{self as ds, FakeDashScope};
use crate::fakes::images;
use crate::fakes::openai::{API_KEY, FakeOpenAi, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_qwen-edit-bot");

/// Call limits for tests: `attempts` tries, waits recorded in `delays` instead of slept.
pub fn policy(attempts: u32, delays: &Arc<Mutex<Vec<Duration>>>) -> CallPolicy {
    CallPolicy {
        timeout: Duration::from_secs(10),
        max_concurrent: 4,
        max_requests_per_second: 1000.0,
        max_attempts: attempts,
        base_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(30),
        sleeper: crate::dashscope::recording(delays),
    }
}

fn openai(fake: &FakeOpenAi, spool: PathBuf, attempts: u32) -> OpenAi {
    let delays = Arc::new(Mutex::new(Vec::new()));
    OpenAi::new(OpenAiOptions {
        base_url: fake.base_url.clone(),
        model: "Qwen/Qwen-Image-Edit-2509".into(),
        api_key: Some(SecretString::from(API_KEY)),
        max_input_side: 2048,
        max_file_bytes: 20 << 20,
        spool_dir: spool,
        policy: policy(attempts, &delays),
    })
    .unwrap()
}

fn request(images: usize, n: u8, rules: InputRules) -> EditRequest {
    let limits = FitLimits::new(rules);
    let inputs = [
        images::jpeg(800, 600),
        images::png(500, 700),
        images::jpeg(640, 640),
    ];
    EditRequest {
        images: inputs[..images]
            .iter()
            .map(|b| fit(Bytes::from(b.clone()), &limits).unwrap())
            .collect(),
        prompt: "make it night".into(),
        negative: None,
        seed: Some(5),
        n,
        size: None,
        progress: None,
    }
}

#[tokio::test]
async fn openai_gets_one_multipart_edit_and_inline_images_survive_in_the_spool() {
    let fake = FakeOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = openai(&fake, dir.path().join("results"), 1);
    let mut req = request(2, 2, client.input_rules());
    req.size = Some(Size {
        width: 1024,
        height: 1536,
    });
    let answer = client.edit(&req).await.unwrap();

    let seen = fake.seen();
    assert_eq!(seen.len(), 1, "one call");
    let s = &seen[0];
    assert_eq!(
        s.authorization.as_deref(),
        Some(&*format!("Bearer {API_KEY}"))
    );
    assert_eq!(
        s.text("model").as_deref(),
        Some("Qwen/Qwen-Image-Edit-2509")
    );
    assert_eq!(s.text("prompt").as_deref(), Some("make it night"));
    assert_eq!(s.text("n").as_deref(), Some("2"));
    assert_eq!(s.text("size").as_deref(), Some("1024x1536"));
    assert_eq!(s.text("response_format").as_deref(), Some("b64_json"));
    let sent = s.images();
    assert_eq!(sent.len(), 2, "one image[] part per input");
    for (part, fitted) in sent.iter().zip(&req.images) {
        assert_eq!(
            part.data,
            fitted.bytes.as_ref(),
            "the fitted bytes, unchanged"
        );
    }
    assert_eq!(
        sent.iter()
            .map(|p| p.filename.clone().unwrap())
            .collect::<Vec<_>>(),
        ["input-1.jpg", "input-2.png"]
    );

    assert_eq!(answer.parts.len(), 2);
    assert!(
        answer.parts.iter().all(|p| p.starts_with("spool:")),
        "{:?}",
        answer.parts
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("results"))
            .unwrap()
            .count(),
        2
    );
    // A fresh client (a restart) redeems what the first one kept.
    let after_restart = openai(&fake, dir.path().join("results"), 1);
    for part in &answer.parts {
        let bytes = after_restart.redeem(part, 10 << 20).await.unwrap();
        assert_eq!(images::dims(&bytes), (image::ImageFormat::Png, 640, 480));
    }
    assert_eq!(fake.seen().len(), 1, "redeeming makes no new call");
    let refused = after_restart
        .redeem("spool:../../etc/passwd", 10 << 20)
        .await;
    assert!(
        matches!(refused, Err(BackendError::Download(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn openai_url_answers_are_downloaded_and_inputs_are_only_png_jpeg_or_webp() {
    let fake = FakeOpenAi::start().await;
    fake.script(&[Reply::Urls]);
    let dir = tempfile::tempdir().unwrap();
    let client = openai(&fake, dir.path().to_owned(), 1);
    assert_eq!(client.input_rules().formats, FORMATS);
    // A BMP is sendable as it is to DashScope, but not to an images API: it is re-encoded.
    let bmp = images::encode(&images::rgb(600, 400), image::ImageFormat::Bmp);
    let fitted = fit(Bytes::from(bmp), &FitLimits::new(client.input_rules())).unwrap();
    assert!(!fitted.passthrough);
    assert!(FORMATS.contains(&fitted.format), "{:?}", fitted.format);

    let answer = client
        .edit(&request(1, 1, client.input_rules()))
        .await
        .unwrap();
    assert_eq!(answer.parts.len(), 1);
    assert!(answer.parts[0].starts_with("http://"), "{:?}", answer.parts);
    let bytes = client.redeem(&answer.parts[0], 10 << 20).await.unwrap();
    assert_eq!(images::dims(&bytes), (image::ImageFormat::Png, 640, 480));
    assert_eq!(fake.downloads(), 1);
}

/// Whether an error is the expected one.
type Expect = fn(&BackendError) -> bool;

#[tokio::test]
async fn openai_errors_map_to_the_same_user_texts_and_operator_problems() {
    let fake = FakeOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = openai(&fake, dir.path().to_owned(), 2);
    let req = request(1, 1, client.input_rules());
    let cases: [(Reply, Expect, usize); 6] = [
        (
            Reply::Error {
                status: 400,
                kind: "invalid_request_error",
                code: None,
            },
            |e| matches!(e, BackendError::Rejected { .. }),
            1,
        ),
        (
            Reply::Error {
                status: 400,
                kind: "invalid_request_error",
                code: Some("moderation_blocked"),
            },
            |e| matches!(e, BackendError::Moderated { .. }),
            1,
        ),
        (
            Reply::Error {
                status: 401,
                kind: "invalid_request_error",
                code: Some("invalid_api_key"),
            },
            |e| {
                matches!(
                    e,
                    BackendError::Operator {
                        problem: OperatorProblem::Key,
                        ..
                    }
                )
            },
            1,
        ),
        (
            Reply::Error {
                status: 429,
                kind: "insufficient_quota",
                code: Some("insufficient_quota"),
            },
            |e| {
                matches!(
                    e,
                    BackendError::Operator {
                        problem: OperatorProblem::Billing,
                        ..
                    }
                )
            },
            1,
        ),
        (
            Reply::Error {
                status: 429,
                kind: "requests",
                code: Some("rate_limit_exceeded"),
            },
            |e| matches!(e, BackendError::Throttled { .. }),
            2,
        ),
        (
            Reply::Error {
                status: 500,
                kind: "server_error",
                code: None,
            },
            |e| matches!(e, BackendError::Unavailable { status: 500, .. }),
            2,
        ),
    ];
    for (reply, expected, calls) in cases {
        let before = fake.seen().len();
        fake.script(&vec![reply; calls]);
        let err = client.edit(&req).await.unwrap_err();
        assert!(expected(&err), "{reply:?} became {err:?}");
        assert_eq!(fake.seen().len() - before, calls, "{reply:?}: attempts");
        assert!(
            !format!("{err} {err:?}").contains(API_KEY),
            "the key leaked"
        );
    }
}

#[tokio::test]
async fn the_302ai_prefix_posts_to_its_aliyun_path_with_a_bearer_key() {
    let fake = FakeDashScope::start_at("/aliyun/api/v1").await;
    let delays = Arc::new(Mutex::new(Vec::new()));
    let client = DashScope::new(dashscope_options(&fake, &delays)).unwrap();
    assert!(fake.base_url.ends_with("/aliyun/api/v1"));
    let answer = client
        .edit(&request(1, 1, client.input_rules()))
        .await
        .unwrap();
    assert_eq!(answer.parts.len(), 1);
    let seen = fake.seen();
    assert_eq!(
        seen.len(),
        1,
        "the only route the fake has is the 302.AI path"
    );
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(&*format!("Bearer {}", ds::API_KEY))
    );
}

/// A clock the test moves by hand.
fn manual_clock() -> (Arc<AtomicU64>, qwen_edit_bot::backend::failover::Clock) {
    let start = Instant::now();
    let offset = Arc::new(AtomicU64::new(0));
    let o = offset.clone();
    let clock = Arc::new(move || start + Duration::from_millis(o.load(Ordering::SeqCst)));
    (offset, clock)
}

fn refused_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}/api/v1")
}

#[tokio::test]
async fn a_down_service_fails_over_once_its_circuit_opens_and_closes_when_it_recovers() {
    let (primary, second) = (FakeDashScope::start().await, FakeOpenAi::start().await);
    let delays = Arc::new(Mutex::new(Vec::new()));
    let mut opts = dashscope_options(&primary, &delays);
    opts.policy.max_attempts = 1;
    let dir = tempfile::tempdir().unwrap();
    let (offset, clock) = manual_clock();
    let services = Services::new(
        vec![
            Member {
                name: "dashscope".into(),
                service: Arc::new(DashScope::new(opts).unwrap()),
            },
            Member {
                name: "local".into(),
                service: Arc::new(openai(&second, dir.path().to_owned(), 1)),
            },
        ],
        Duration::from_secs(30),
        clock,
    );
    let req = request(1, 1, services.input_rules());
    let unavailable = ds::Reply::Error {
        status: 503,
        code: "ServiceUnavailable",
        retry_after: None,
    };

    primary.script([unavailable; 3]);
    for i in 1..=3 {
        let answer = services.edit(&req).await.unwrap();
        assert_eq!(answer.service.as_deref(), Some("local"));
        assert_eq!(second.seen().len(), i, "served by the second service, once");
        assert_eq!(primary.calls(), i, "the first was tried first");
        let bytes = services.redeem(&answer.parts[0], 10 << 20).await.unwrap();
        assert_eq!(
            images::dims(&bytes).1,
            640,
            "redeemed by the service that made it"
        );
    }
    assert!(
        services.is_open("dashscope"),
        "three failures in a row open the circuit"
    );
    services.edit(&req).await.unwrap();
    assert_eq!(primary.calls(), 3, "an open circuit is skipped");
    assert_eq!(second.seen().len(), 4);

    offset.store(31_000, Ordering::SeqCst);
    let answer = services.edit(&req).await.unwrap();
    assert_eq!(
        answer.service.as_deref(),
        Some("dashscope"),
        "after the cooldown it is tried"
    );
    assert_eq!((primary.calls(), second.seen().len()), (4, 4));
    assert!(
        !services.is_open("dashscope"),
        "a success closes the circuit"
    );
    assert!(
        answer.parts[0].starts_with("@dashscope "),
        "{:?}",
        answer.parts
    );
    assert_eq!(
        images::dims(&services.redeem(&answer.parts[0], 10 << 20).await.unwrap()).1,
        64
    );
    // A part stored by a release with one service (no prefix) is the first service's.
    let bare = answer.parts[0].trim_start_matches("@dashscope ");
    assert_eq!(
        images::dims(&services.redeem(bare, 10 << 20).await.unwrap()).1,
        64
    );

    primary.script([ds::Reply::Error {
        status: 400,
        code: "DataInspectionFailed",
        retry_after: None,
    }]);
    let refused = services.edit(&req).await.unwrap_err();
    assert!(
        matches!(refused, BackendError::Moderated { .. }),
        "{refused:?}"
    );
    assert_eq!(
        second.seen().len(),
        4,
        "a moderation refusal never fails over"
    );
}

#[tokio::test]
async fn a_service_that_refuses_connections_is_passed_over_for_the_next() {
    let second = FakeOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let delays = Arc::new(Mutex::new(Vec::new()));
    let mut first = OpenAiOptions {
        base_url: refused_port(),
        ..options_of(&second, dir.path().to_owned(), &delays)
    };
    first.policy.max_attempts = 2;
    let services = Services::with_defaults(vec![
        Member {
            name: "first".into(),
            service: Arc::new(OpenAi::new(first).unwrap()),
        },
        Member {
            name: "second".into(),
            service: Arc::new(openai(&second, dir.path().to_owned(), 1)),
        },
    ]);
    let answer = services
        .edit(&request(1, 1, services.input_rules()))
        .await
        .unwrap();
    assert_eq!(answer.service.as_deref(), Some("second"));
    assert_eq!(second.seen().len(), 1, "served once");
    assert_eq!(
        delays.lock().unwrap().len(),
        1,
        "the first was retried by its own policy first"
    );
}

fn options_of(
    fake: &FakeOpenAi,
    spool: PathBuf,
    delays: &Arc<Mutex<Vec<Duration>>>,
) -> OpenAiOptions {
    OpenAiOptions {
        base_url: fake.base_url.clone(),
        model: "Qwen/Qwen-Image-Edit-2509".into(),
        api_key: Some(SecretString::from(API_KEY)),
        max_input_side: 2048,
        max_file_bytes: 20 << 20,
        spool_dir: spool,
        policy: policy(1, delays),
    }
}

/// A config with a failing DashScope first and the OpenAI fake second, each with its price.
fn two_services(primary: &FakeDashScope, second: &FakeOpenAi, db: &std::path::Path) -> String {
    format!(
        "[[backend]]\nname = \"cloud\"\nbase_url = {:?}\nmax_attempts = 1\nprice_per_image = 0.2\n\
         max_requests_per_second = 100.0\n\
         [[backend]]\nname = \"home\"\nkind = \"openai\"\nbase_url = {:?}\n\
         model = \"Qwen/Qwen-Image-Edit-2509\"\nprice_per_image = 0.0\npriority = 1\n\
         [telegram]\nenabled = true\n[quota]\ndatabase = {:?}\nprice_per_image = 0.05\n",
        primary.base_url,
        second.base_url,
        db.to_str().unwrap()
    )
}

/// Both fakes, and a folder with [`two_services`]' config for them.
async fn two_services_configured() -> (FakeDashScope, FakeOpenAi, tempfile::TempDir) {
    let (primary, second) = (FakeDashScope::start().await, FakeOpenAi::start().await);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/q.sqlite3");
    let config = two_services(&primary, &second, &db);
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    (primary, second, dir)
}

async fn run(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .current_dir(dir)
        .env_clear()
        .env("DASHSCOPE_API_KEY", ds::API_KEY)
        .env("OPENAI_API_KEY", API_KEY)
        .env("TELEGRAM_BOT_TOKEN", "1:t")
        .output()
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn edit_works_through_an_openai_server_and_usage_prices_each_service() {
    let (primary, second, dir) = two_services_configured().await;
    std::fs::write(dir.path().join("a.png"), images::png(600, 600)).unwrap();
    let edit = |n: &'static str, out: &'static str| {
        let d = dir.path().to_owned();
        async move {
            let input = d.join("a.png");
            run(
                &d,
                &[
                    "edit",
                    input.to_str().unwrap(),
                    "--prompt",
                    "x",
                    "-n",
                    n,
                    "--out",
                    out,
                ],
            )
            .await
        }
    };
    // First by DashScope (up), then by the local server while DashScope answers 503.
    let out = edit("2", "cloud.png").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    primary.script([ds::Reply::Error {
        status: 503,
        code: "ServiceUnavailable",
        retry_after: None,
    }]);
    let out = edit("3", "home.png").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 3);
    assert_eq!((primary.calls(), second.seen().len()), (2, 1));
    for name in ["home-1.png", "home-2.png", "home-3.png"] {
        let bytes = std::fs::read(dir.path().join(name)).unwrap();
        assert_eq!(images::dims(&bytes), (image::ImageFormat::Png, 640, 480));
    }
    assert!(!text(&out.stderr).contains(API_KEY));

    let out = run(
        dir.path(),
        &[
            "usage",
            "--since",
            "2026-01-01",
            "--by",
            "service",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let row = |key: &str| rows.iter().find(|r| r["key"] == key).cloned().unwrap();
    assert_eq!(
        (
            row("cloud")["generated"].as_u64(),
            row("cloud")["cost"].as_f64()
        ),
        (Some(2), Some(0.4))
    );
    assert_eq!(
        (
            row("home")["generated"].as_u64(),
            row("home")["cost"].as_f64()
        ),
        (Some(3), Some(0.0))
    );
    assert_eq!(report["total"]["cost"].as_f64(), Some(0.4));
    // Grouped otherwise, a row that mixes services still prices each at its own price (not 5
    // images at quota.price_per_image = 0.25).
    let out = run(
        dir.path(),
        &[
            "usage",
            "--since",
            "2026-01-01",
            "--by",
            "user",
            "--format",
            "json",
        ],
    )
    .await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cli = &report["rows"][0];
    assert_eq!(cli["key"], "cli:local");
    assert_eq!(
        (cli["generated"].as_u64(), cli["cost"].as_f64()),
        (Some(5), Some(0.4))
    );
    assert_eq!(report["total"]["cost"].as_f64(), Some(0.4));
}

#[tokio::test]
async fn check_config_probes_each_service_without_spending() {
    let (primary, second, dir) = two_services_configured().await;
    let out = run(dir.path(), &["check-config", "--probe"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("probe cloud: reachable, key accepted"),
        "{said}"
    );
    assert!(
        said.contains("probe home: reachable, key accepted, serves Qwen/Qwen-Image-Edit-2509"),
        "{said}"
    );
    assert_eq!(
        (primary.calls(), second.seen().len()),
        (0, 0),
        "no edit was asked"
    );

    let out = tokio::process::Command::new(BIN)
        .args(["check-config", "--probe", "--config"])
        .arg(dir.path().join("config.toml"))
        .env_clear()
        .env("DASHSCOPE_API_KEY", "sk-wrong-key-123")
        .env("TELEGRAM_BOT_TOKEN", "1:t")
        .env("OPENAI_API_KEY", API_KEY)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("error: probe cloud:") && err.contains("InvalidApiKey"),
        "{err}"
    );
    assert!(!err.contains("sk-wrong-key-123") && !text(&out.stdout).contains("sk-wrong-key-123"));
}

#[test]
fn a_service_list_is_tried_by_priority_and_its_names_must_differ() {
    use qwen_edit_bot::config::Config;
    let c = Config::parse(
        "[[backend]]\nname = \"b\"\npriority = 2\n[[backend]]\nname = \"a\"\nkind = \"openai\"\n\
         priority = 1\n[[backend]]\nname = \"c\"\npriority = 2\n",
    )
    .unwrap();
    let names: Vec<&str> = c.backend.all().iter().map(|b| b.label()).collect();
    assert_eq!(names, ["a", "b", "c"], "by priority, then the file's order");
    assert_eq!(c.backend.primary().kind, "openai");
    let one = Config::parse("[backend]\nkind = \"openai\"\n").unwrap();
    assert_eq!(one.backend.all().len(), 1);
    let err = Config::parse("[[backend]]\nkind = \"openai\"\nmodle = \"x\"\n").unwrap_err();
    assert!(
        err.contains("modle"),
        "a wrong key in a list is named: {err}"
    );
    let err = Config::parse("backend = []\n").unwrap_err();
    assert!(err.contains("at least one"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[[backend]]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"m\"\n\
         [[backend]]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:2/v1/images/edits\"\nmodel = \"m\"\n\
         [telegram]\nenabled = true\n",
    )
    .unwrap();
    let s = qwen_edit_bot::config::Settings::load_with_env(&path, |k: &str| {
        (k == "TELEGRAM_BOT_TOKEN").then(|| "1:t".to_owned())
    })
    .unwrap();
    assert_eq!(
        qwen_edit_bot::app::problems(&s),
        [
            "[backend \"openai\"] backend.base_url = \"http://127.0.0.1:2/v1/images/edits\" names the endpoint too: the bot adds /images/edits itself; set backend.base_url = \"http://127.0.0.1:2/v1\"",
            "two services are named \"openai\": give each [[backend]] its own name",
        ]
    );
}
