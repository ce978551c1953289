//! The ComfyUI adapter against the fake: uploads, the workflow it fills in, following the run
//! on the websocket (and without it), error mapping, auth.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use qwen_edit_bot::backend::CallPolicy;
use qwen_edit_bot::backend::comfyui::{BUILTIN_WORKFLOW, ComfyOptions, ComfyUi, Mapping};
use qwen_edit_bot::config::BackendConfig;
use qwen_edit_bot::core::image::{Fitted, Format};
use qwen_edit_bot::core::ports::model::{
    BackendError, EditRequest, EditService, OperatorProblem, Progress,
};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::fakes::comfyui::{FakeComfy, Run};
use crate::fakes::images;

const HEADER: &str = "X-Comfy-Token";
const SECRET: &str = "comfy-secret-0123456789abcdef";

type Delays = Arc<Mutex<Vec<Duration>>>;

pub fn options(fake: &FakeComfy, delays: &Delays) -> ComfyOptions {
    ComfyOptions {
        base_url: fake.base_url.clone(),
        auth: None,
        workflow: serde_json::from_str(BUILTIN_WORKFLOW).unwrap(),
        mapping: Mapping::builtin(),
        model: "qwen-image-edit-2509".into(),
        policy: crate::services::policy(4, delays),
        max_input_side: 2048,
        max_file_bytes: 20 << 20,
        history_poll: Duration::from_millis(20),
    }
}

fn image(w: u32, h: u32) -> Fitted {
    Fitted {
        bytes: Bytes::from(images::png(w, h)),
        format: Format::Png,
        width: w,
        height: h,
        passthrough: true,
    }
}

fn request(count: usize, n: u8) -> EditRequest {
    EditRequest {
        images: (0..count)
            .map(|i| image(320 + 10 * i as u32, 240))
            .collect(),
        prompt: "make it night".into(),
        negative: Some("blurry".into()),
        seed: Some(42),
        n,
        size: None,
        progress: None,
    }
}

async fn setup() -> (FakeComfy, ComfyUi, Delays) {
    let fake = FakeComfy::start().await;
    let delays = Delays::default();
    let client = ComfyUi::new(options(&fake, &delays)).unwrap();
    (fake, client, delays)
}

/// Every part redeems to the fake's 64×48 PNG.
async fn assert_redeems(client: &ComfyUi, parts: &[String]) {
    for part in parts {
        let png = client.redeem(part, 64 << 20).await.unwrap();
        let (_, w, h) = images::dims(&png);
        assert_eq!((w, h), (64, 48));
    }
}

#[tokio::test]
async fn a_one_image_job_uploads_fills_the_workflow_and_drops_the_unused_image_nodes() {
    let fake = FakeComfy::start().await;
    let delays = Delays::default();
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let hook_seen = seen.clone();
    let client = ComfyUi::new(options(&fake, &delays)).unwrap();
    let mut req = request(1, 2);
    req.progress = Some(Progress::new(move |p| hook_seen.lock().unwrap().push(p)));
    let answer = client.edit(&req).await.unwrap();
    assert_eq!(answer.parts.len(), 2);
    assert!(answer.request_id.is_some());
    assert_eq!(answer.service, None);

    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 1);
    let name = &uploads[0].filename;
    assert!(
        name.starts_with("qeb-") && name.ends_with("-0.png"),
        "{name}"
    );
    assert_eq!(uploads[0].kind.as_deref(), Some("input"));
    assert_eq!(uploads[0].overwrite.as_deref(), Some("true"));
    assert_eq!(uploads[0].bytes, images::png(320, 240));

    let prompts = fake.prompts();
    assert_eq!(prompts.len(), 1);
    assert!(
        prompts[0].violations.is_empty(),
        "{:?}",
        prompts[0].violations
    );
    let wf = &prompts[0].body["prompt"];
    assert_eq!(wf["78"]["inputs"]["image"], name.as_str());
    assert!(wf.get("106").is_none() && wf.get("108").is_none());
    for encoder in ["111", "110"] {
        let inputs = wf[encoder]["inputs"].as_object().unwrap();
        assert_eq!(inputs["image1"], json!(["93", 0]));
        assert!(!inputs.contains_key("image2") && !inputs.contains_key("image3"));
    }
    assert_eq!(wf["111"]["inputs"]["prompt"], "make it night");
    assert_eq!(wf["110"]["inputs"]["prompt"], "blurry");
    assert_eq!(wf["3"]["inputs"]["seed"], 42);
    assert_eq!(wf["120"]["inputs"]["amount"], 2);

    // The socket was opened for this prompt's client id, before it was queued.
    let client_id = prompts[0].body["client_id"].as_str().unwrap();
    assert!(fake.sockets().iter().any(|s| s.client_id == client_id));
    // Only our prompt's progress is reported (not the other client's 3/4).
    assert_eq!(*seen.lock().unwrap(), vec![25, 50, 75, 100]);
    assert_redeems(&client, &answer.parts).await;
    let views = fake.views();
    assert_eq!(views.len(), 2);
    assert_eq!(views[0].get("type").map(String::as_str), Some("output"));
    assert_eq!(views[0].get("subfolder").map(String::as_str), Some(""));
}

#[tokio::test]
async fn a_two_image_job_keeps_the_second_image_node_and_drops_the_third() {
    let (fake, client, _) = setup().await;
    let answer = client.edit(&request(2, 1)).await.unwrap();
    assert_eq!(answer.parts.len(), 1);
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 2);
    let job = uploads[0].filename.trim_end_matches("-0.png");
    assert_eq!(uploads[1].filename, format!("{job}-1.png"));
    assert_eq!(uploads[1].bytes, images::png(330, 240));
    let prompts = fake.prompts();
    assert!(
        prompts[0].violations.is_empty(),
        "{:?}",
        prompts[0].violations
    );
    let wf = &prompts[0].body["prompt"];
    assert_eq!(wf["78"]["inputs"]["image"], uploads[0].filename.as_str());
    assert_eq!(wf["106"]["inputs"]["image"], uploads[1].filename.as_str());
    assert!(wf.get("108").is_none());
    for encoder in ["111", "110"] {
        let inputs = wf[encoder]["inputs"].as_object().unwrap();
        assert_eq!(inputs["image2"], json!(["106", 0]));
        assert!(!inputs.contains_key("image3"));
    }
    assert_eq!(wf["120"]["inputs"]["amount"], 1);
    assert_redeems(&client, &answer.parts).await;
}

#[tokio::test]
async fn a_socket_cut_mid_run_still_delivers_through_history() {
    let (fake, client, _) = setup().await;
    fake.script([Run::DropSocket]);
    let answer = client.edit(&request(1, 1)).await.unwrap();
    assert_eq!(answer.parts.len(), 1);
    assert_eq!(
        fake.prompt_calls(),
        1,
        "a lost socket does not run the job again"
    );
    assert_redeems(&client, &answer.parts).await;
}

#[tokio::test]
async fn a_silent_socket_does_not_hide_a_finished_run() {
    let (fake, client, _) = setup().await;
    fake.script([Run::Silent]);
    let answer = tokio::time::timeout(Duration::from_secs(5), client.edit(&request(1, 1)))
        .await
        .expect("history is asked while the socket says nothing")
        .unwrap();
    assert_eq!(answer.parts.len(), 1);
}

#[tokio::test]
async fn without_a_socket_the_run_is_polled_on_history() {
    let (fake, client, _) = setup().await;
    fake.refuse_sockets();
    let answer = client.edit(&request(1, 1)).await.unwrap();
    assert_eq!(answer.parts.len(), 1);
    assert_eq!(fake.sockets().len(), 1);
    assert_redeems(&client, &answer.parts).await;
}

#[tokio::test]
async fn an_execution_error_is_a_final_rejection_with_the_exception_text() {
    let (fake, client, delays) = setup().await;
    fake.script([Run::ExecutionError(
        "mat1 and mat2 shapes cannot be multiplied (1x3584 and 768x3072)",
    )]);
    let err = client.edit(&request(1, 1)).await.unwrap_err();
    match err {
        BackendError::Rejected { code, message } => {
            assert_eq!(code, "execution_error");
            assert!(
                message.contains("mat1 and mat2 shapes cannot be multiplied"),
                "{message}"
            );
            assert!(message.contains("KSampler"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.prompt_calls(), 1);
    assert!(delays.lock().unwrap().is_empty());
}

#[tokio::test]
async fn running_out_of_gpu_memory_or_being_interrupted_means_unavailable() {
    let (fake, client, _) = setup().await;
    fake.script([
        Run::ExecutionError("Allocation on device 0 would exceed allowed memory. (out of memory)"),
        Run::Interrupted,
    ]);
    let oom = client.edit(&request(1, 1)).await.unwrap_err();
    assert_eq!(
        oom,
        BackendError::Unavailable {
            status: 503,
            code: "out_of_memory".into()
        }
    );
    let stopped = client.edit(&request(1, 1)).await.unwrap_err();
    assert_eq!(stopped.code(), "execution_interrupted");
    assert_eq!(fake.prompt_calls(), 2, "a run is never submitted twice");
}

#[tokio::test]
async fn a_workflow_comfyui_refuses_is_the_operators_to_fix() {
    let (fake, client, delays) = setup().await;
    fake.reject_workflow();
    let err = client.edit(&request(1, 1)).await.unwrap_err();
    match err {
        BackendError::Operator {
            problem,
            code,
            message,
        } => {
            assert_eq!(problem, OperatorProblem::Model);
            assert_eq!(code, "invalid_workflow");
            assert!(message.contains("node 37 (UNETLoader)"), "{message}");
            assert!(message.contains("Value not in list"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.prompt_calls(), 1);
    assert!(delays.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_busy_server_is_retried_without_uploading_or_connecting_again() {
    let (fake, client, delays) = setup().await;
    fake.fail_prompts(2);
    let answer = client.edit(&request(1, 1)).await.unwrap();
    assert_eq!(answer.parts.len(), 1);
    assert_eq!(fake.prompt_calls(), 3);
    let waits = delays.lock().unwrap().clone();
    assert_eq!(waits.len(), 2);
    // Jittered exponential backoff: the second wait's range (1–2 s) starts where the first's
    // (0.5–1 s) ends.
    assert!(waits[0] <= waits[1], "{waits:?}");
    assert_eq!(fake.uploads().len(), 1, "the image was uploaded once");
    let sockets = fake.sockets();
    assert_eq!(sockets.len(), 1, "one socket for the job");
    let prompts = fake.prompts();
    assert_eq!(
        prompts.len(),
        1,
        "only the accepted attempt reached validation"
    );
    assert_eq!(prompts[0].body["client_id"], sockets[0].client_id.as_str());
}

#[tokio::test]
async fn the_auth_header_goes_on_every_request_and_the_socket_and_never_into_errors() {
    let fake = FakeComfy::start().await;
    fake.require_auth(HEADER, SECRET);
    let delays = Delays::default();
    let opts = ComfyOptions {
        auth: Some((HEADER.into(), SecretString::from(SECRET))),
        ..options(&fake, &delays)
    };
    let client = ComfyUi::new(opts).unwrap();
    let answer = client.edit(&request(1, 1)).await.unwrap();
    assert_redeems(&client, &answer.parts).await;
    let found = client.probe().await.unwrap();
    assert!(found.starts_with("ComfyUI "), "{found}");
    let http = fake.http_auth();
    assert!(http.len() >= 5, "{http:?}");
    assert!(
        http.iter().all(|(_, v)| v.as_deref() == Some(SECRET)),
        "{http:?}"
    );
    let sockets = fake.sockets();
    assert!(!sockets.is_empty());
    assert!(sockets.iter().all(|s| s.auth.as_deref() == Some(SECRET)));

    let wrong = "wrong-secret-fedcba9876543210";
    let refused = ComfyUi::new(ComfyOptions {
        auth: Some((HEADER.into(), SecretString::from(wrong))),
        ..options(&fake, &delays)
    })
    .unwrap();
    let err = refused.edit(&request(1, 1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Operator {
                problem: OperatorProblem::Key,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains(wrong));

    let unreachable = ComfyUi::new(ComfyOptions {
        base_url: "http://127.0.0.1:9".into(),
        auth: Some((HEADER.into(), SecretString::from(SECRET))),
        policy: CallPolicy {
            max_attempts: 1,
            ..options(&fake, &delays).policy
        },
        ..options(&fake, &delays)
    })
    .unwrap();
    let err = unreachable.edit(&request(1, 1)).await.unwrap_err();
    assert!(matches!(err, BackendError::Network(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(SECRET));
}

#[tokio::test]
async fn without_a_batch_input_a_run_makes_one_image() {
    let (fake, client, _) = setup().await;
    assert_eq!(client.caps().max_n, 6);
    assert!(!client.caps().prompt_extend);
    assert_eq!(client.caps().size_sides, None);
    let delays = Delays::default();
    let single = ComfyUi::new(ComfyOptions {
        mapping: Mapping {
            batch: None,
            ..Mapping::builtin()
        },
        ..options(&fake, &delays)
    })
    .unwrap();
    assert_eq!(single.caps().max_n, 1);
    let answer = single.edit(&request(1, 3)).await.unwrap();
    assert_eq!(answer.parts.len(), 1);
    let wf = &fake.prompts()[0].body["prompt"];
    assert_eq!(
        wf["120"]["inputs"]["amount"], 1,
        "the workflow's own count is kept"
    );
    // An unmapped count the workflow sets itself is left alone, whatever n was asked.
    let mut workflow: Value = serde_json::from_str(BUILTIN_WORKFLOW).unwrap();
    workflow["120"]["inputs"]["amount"] = json!(2);
    let two = ComfyUi::new(ComfyOptions {
        workflow,
        mapping: Mapping {
            batch: None,
            ..Mapping::builtin()
        },
        ..options(&fake, &delays)
    })
    .unwrap();
    two.edit(&request(1, 3)).await.unwrap();
    assert_eq!(
        fake.prompts()[1].body["prompt"]["120"]["inputs"]["amount"],
        2
    );
}

#[tokio::test]
async fn more_images_than_the_workflow_takes_are_refused_before_any_upload() {
    let (fake, client, _) = setup().await;
    let err = client.edit(&request(4, 1)).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Rejected { code, .. } if code == "too_many_images"),
        "{err:?}"
    );
    assert!(fake.uploads().is_empty());
    assert_eq!(fake.prompt_calls(), 0);
}

#[tokio::test]
async fn the_input_rules_follow_the_settings() {
    let (_fake, client, _) = setup().await;
    let rules = client.input_rules();
    assert_eq!(
        (rules.min_side, rules.max_side, rules.useful_side),
        (64, 2048, 2048)
    );
    assert_eq!(rules.max_file_bytes, 20 << 20);
    assert!(rules.formats.contains(&Format::Png) && rules.formats.contains(&Format::WebP));
    assert!(!rules.formats.contains(&Format::Tiff));
}

#[tokio::test]
async fn the_probe_names_the_version_and_the_gpu() {
    let (_fake, client, _) = setup().await;
    let line = client.probe().await.unwrap();
    assert!(line.contains("ComfyUI 0.3.60"), "{line}");
    assert!(line.contains("RTX 4090"), "{line}");
}

#[tokio::test]
async fn a_part_from_another_service_is_not_redeemed() {
    let (_fake, client, _) = setup().await;
    let err = client
        .redeem("https://example.com/a.png", 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Download(_)), "{err:?}");
}

#[test]
fn the_configuration_check_names_what_the_workflow_lacks() {
    use qwen_edit_bot::backend::comfyui::check::problems;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wf.json");
    let workflow: Value = json!({
        "5": { "class_type": "LoadImage", "inputs": { "image": "x.png" } },
        "6": { "class_type": "SaveImage", "inputs": { "images": ["5", 0] } }
    });
    std::fs::write(&path, workflow.to_string()).unwrap();
    let b = BackendConfig {
        kind: "comfyui".into(),
        base_url: "http://127.0.0.1:8188".into(),
        model: "qwen-image-edit-2509".into(),
        workflow: path.display().to_string(),
        image_inputs: vec!["5.image".into(), "7.image".into()],
        prompt_input: "9.prompt".into(),
        ..BackendConfig::default()
    };
    let mut out = Vec::new();
    problems(&b, true, &mut out);
    let all = out.join("\n");
    assert!(all.contains("backend.image_inputs = \"7.image\""), "{all}");
    assert!(all.contains("backend.prompt_input = \"9.prompt\""), "{all}");

    let builtin = BackendConfig {
        kind: "comfyui".into(),
        base_url: "http://127.0.0.1:8188".into(),
        model: "qwen-image-edit-2509".into(),
        ..BackendConfig::default()
    };
    let mut out = Vec::new();
    problems(&builtin, true, &mut out);
    let about_the_workflow =
        |p: &String| p.contains("workflow") || p.contains("_inputs") || p.contains("prompt_input");
    assert!(!out.iter().any(about_the_workflow), "{out:?}");
    let opts = ComfyOptions::from_config(&builtin, None).unwrap();
    assert_eq!(opts.mapping, Mapping::builtin());
}

/// A config for the real daemon and CLI: Telegram on its fake, ComfyUI on its fake.
fn daemon_config(
    tg: &crate::fakes::telegram::FakeTelegram,
    comfy: &FakeComfy,
    dir: &std::path::Path,
) -> String {
    format!(
        "[backend]\nkind = \"comfyui\"\nbase_url = {:?}\nmodel = \"qwen-image-edit-2509\"\n\
         max_concurrent = 2\nmax_attempts = 1\n\
         [telegram]\nenabled = true\napi_url = {:?}\npoll_timeout_secs = 1\n\
         [quota]\ndatabase = {:?}\nper_user = 5\n[http]\nlisten = \"\"\n",
        comfy.base_url,
        tg.url,
        dir.join("q.sqlite3").to_str().unwrap()
    )
}

#[tokio::test]
async fn a_telegram_edit_runs_on_comfyui_end_to_end_and_a_failed_run_is_refunded() {
    use crate::fakes::telegram::{self as tg, FakeTelegram, TOKEN};
    use qwen_edit_bot::core::model::{Platform, UserRef};
    use qwen_edit_bot::core::ports::store::{ReportBy, Store};
    let (telegram, comfy) = (FakeTelegram::start().await, FakeComfy::start().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, daemon_config(&telegram, &comfy, dir.path())).unwrap();
    let settings = qwen_edit_bot::config::Settings::load_with_env(&path, |k: &str| {
        (k == "TELEGRAM_BOT_TOKEN").then(|| TOKEN.to_owned())
    })
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(qwen_edit_bot::app::serve(settings, async {
        let _ = stopped.await;
    }));
    let photo = |id: i32, caption: &str| {
        let file = format!("photo-{id}");
        telegram.add_file(&file, images::jpeg(800, 600));
        tg::message_update(tg::photo_message(
            id,
            tg::private_chat(42),
            tg::user(42, "en"),
            &file,
            Some(caption),
        ))
    };
    telegram.push_update(photo(10, "/edit make it night --seed 9"));
    let sent = telegram.wait_results(1, 20).await;
    let result = sent[0].file("photo").expect("an uploaded photo").to_vec();
    assert_eq!(
        images::dims(&result),
        (image::ImageFormat::Png, 64, 48),
        "ComfyUI's output"
    );
    let prompts = comfy.prompts();
    assert_eq!(prompts.len(), 1);
    let wf = &prompts[0].body["prompt"];
    assert_eq!(wf["111"]["inputs"]["prompt"], "make it night");
    assert_eq!(wf["3"]["inputs"]["seed"], 9);
    assert_eq!(comfy.uploads().len(), 1, "the photo was uploaded once");

    comfy.script([Run::ExecutionError(
        "CUDA error: device-side assert triggered",
    )]);
    telegram.push_update(photo(11, "/edit again"));
    let told = |c: &tg::Call| {
        c.params["text"]
            .as_str()
            .is_some_and(|t| t.contains("could not process"))
    };
    let failed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(c) = telegram.shown_texts().into_iter().find(told) {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the failure is told");
    assert!(
        failed.params["text"].as_str().unwrap().contains("refunded"),
        "{:?}",
        failed.params
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), daemon)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let store =
        qwen_edit_bot::store::sqlite::SqliteStore::open(&dir.path().join("q.sqlite3")).unwrap();
    let since = chrono::Utc::now() - chrono::Duration::days(1);
    let user = UserRef::new(Platform::Telegram, "42");
    assert_eq!(
        store.used(&user, since).await.unwrap(),
        1,
        "only the delivered edit counts"
    );
    let rows = store
        .report(since, None, ReportBy::Service, None)
        .await
        .unwrap();
    let rows: Vec<_> = rows
        .iter()
        .map(|r| (r.key.as_str(), r.images, r.generated, r.failed))
        .collect();
    assert_eq!(
        rows,
        [("(no image)", 0, 0, 1), ("comfyui", 1, 1, 0)],
        "the failed run made nothing, so no service is charged for it"
    );
}

#[tokio::test]
async fn the_cli_edits_through_comfyui() {
    let (telegram, comfy) = (
        crate::fakes::telegram::FakeTelegram::start().await,
        FakeComfy::start().await,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        daemon_config(&telegram, &comfy, dir.path()),
    )
    .unwrap();
    std::fs::write(dir.path().join("in.png"), images::png(500, 400)).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_qwen-edit-bot"))
        .args([
            "edit",
            "in.png",
            "--prompt",
            "add snow",
            "--out",
            "out.png",
            "--config",
            "config.toml",
        ])
        .current_dir(dir.path())
        .env_clear()
        .env("TELEGRAM_BOT_TOKEN", "1:t")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read(dir.path().join("out.png")).unwrap();
    assert_eq!(images::dims(&written), (image::ImageFormat::Png, 64, 48));
    let prompts = comfy.prompts();
    assert_eq!(prompts.len(), 1);
    assert_eq!(
        prompts[0].body["prompt"]["111"]["inputs"]["prompt"],
        "add snow"
    );
    assert_eq!(
        comfy.uploads()[0].bytes,
        images::png(500, 400),
        "sent as it was (PNG, in range)"
    );
}
