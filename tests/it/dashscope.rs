//! The DashScope client against the fake: request contract, retries, error mapping, limits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use qwen_edit_bot::backend::dashscope::INPUT_RULES;
use qwen_edit_bot::backend::{DashScope, DashScopeOptions};
use qwen_edit_bot::core::image::{FitLimits, fit};
use qwen_edit_bot::core::ports::model::{BackendError, EditRequest, EditService};
use secrecy::SecretString;

use crate::fakes::dashscope::{API_KEY, FakeDashScope, Reply};
use crate::fakes::images;

/// A sleeper that records each wait in `delays` instead of waiting.
pub fn recording(delays: &Arc<Mutex<Vec<Duration>>>) -> qwen_edit_bot::backend::Sleeper {
    let delays = delays.clone();
    Arc::new(move |d| {
        delays.lock().unwrap().push(d);
        Box::pin(async {})
    })
}

/// Client options for the fake; sleeps are recorded, not waited for.
pub fn options(fake: &FakeDashScope, delays: &Arc<Mutex<Vec<Duration>>>) -> DashScopeOptions {
    DashScopeOptions {
        base_url: fake.base_url.clone(),
        model: "qwen-image-edit-plus".into(),
        api_key: SecretString::from(API_KEY),
        watermark: false,
        prompt_extend: true,
        policy: crate::services::policy(4, delays),
    }
}

fn request(n: u8) -> EditRequest {
    let img = fit(
        Bytes::from(images::jpeg(800, 600)),
        &FitLimits::new(INPUT_RULES),
    )
    .unwrap();
    EditRequest {
        images: vec![img],
        prompt: "make it night".into(),
        negative: Some("people".into()),
        seed: Some(42),
        n,
        size: None,
        progress: None,
    }
}

async fn setup() -> (FakeDashScope, DashScope, Arc<Mutex<Vec<Duration>>>) {
    let fake = FakeDashScope::start().await;
    let delays = Arc::new(Mutex::new(Vec::new()));
    let client = DashScope::new(options(&fake, &delays)).unwrap();
    (fake, client, delays)
}

#[tokio::test]
async fn an_edit_sends_the_documented_body_and_returns_every_result_url() {
    let (fake, client, _) = setup().await;
    fake.script([Reply::Ok(3)]);
    let resp = client.edit(&request(3)).await.unwrap();
    assert_eq!(resp.parts.len(), 3);
    assert_eq!(resp.request_id.as_deref(), Some("req-ok-1"));
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].violations.is_empty(), "{:?}", seen[0].violations);
    assert_eq!(seen[0].images, vec![("image/jpeg".to_string(), 800, 600)]);
    assert_eq!(seen[0].authorization, Some(format!("Bearer {API_KEY}")));
    let body = &seen[0].body;
    assert_eq!(body["model"], "qwen-image-edit-plus");
    let content = body["input"]["messages"][0]["content"].as_array().unwrap();
    assert_eq!(content.last().unwrap()["text"], "make it night");
    let p = &body["parameters"];
    assert_eq!((p["n"].as_u64(), p["seed"].as_u64()), (Some(3), Some(42)));
    assert_eq!(p["negative_prompt"], "people");
    assert_eq!(
        (p["watermark"].as_bool(), p["prompt_extend"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(p.get("size").is_none());
    // Results come back without the API key.
    for url in &resp.parts {
        let png = client.redeem(url, 64 << 20).await.unwrap();
        assert_eq!(images::dims(&png).1, 64);
    }
    assert_eq!(fake.download_auth(), vec![None, None, None]);
}

#[tokio::test]
async fn the_original_model_gets_no_prompt_extend_and_n_of_one() {
    let fake = FakeDashScope::start().await;
    fake.set_model("qwen-image-edit");
    let delays = Arc::new(Mutex::new(Vec::new()));
    let opts = DashScopeOptions {
        model: "qwen-image-edit".into(),
        ..options(&fake, &delays)
    };
    let client = DashScope::new(opts).unwrap();
    assert_eq!(client.caps().max_n, 1);
    client.edit(&request(1)).await.unwrap();
    let seen = fake.seen();
    assert!(seen[0].violations.is_empty(), "{:?}", seen[0].violations);
    assert!(seen[0].body["parameters"].get("prompt_extend").is_none());
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_with_growing_jittered_delays() {
    let (fake, client, delays) = setup().await;
    fake.script([
        Reply::Error {
            status: 429,
            code: "Throttling.RateQuota",
            retry_after: Some("3"),
        },
        Reply::Error {
            status: 500,
            code: "InternalError",
            retry_after: None,
        },
        Reply::Error {
            status: 503,
            code: "ModelUnavailable",
            retry_after: None,
        },
        Reply::Ok(1),
    ]);
    let resp = client.edit(&request(1)).await.unwrap();
    assert_eq!(resp.parts.len(), 1);
    assert_eq!(fake.calls(), 4);
    let d = delays.lock().unwrap().clone();
    assert_eq!(d.len(), 3);
    assert!(
        d[0] >= Duration::from_secs(3),
        "Retry-After honoured: {d:?}"
    );
    assert!(
        (Duration::from_secs(1)..=Duration::from_secs(2)).contains(&d[1]),
        "{d:?}"
    );
    assert!(
        (Duration::from_secs(2)..=Duration::from_secs(4)).contains(&d[2]),
        "{d:?}"
    );
}

#[tokio::test]
async fn retries_are_bounded_by_max_attempts() {
    let (fake, client, delays) = setup().await;
    fake.script((0..10).map(|_| Reply::Error {
        status: 500,
        code: "InternalError",
        retry_after: None,
    }));
    let err = client.edit(&request(1)).await.unwrap_err();
    assert_eq!(
        err,
        BackendError::Unavailable {
            status: 500,
            code: "InternalError".into()
        }
    );
    assert_eq!(fake.calls(), 4);
    assert_eq!(delays.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn moderation_and_invalid_parameters_are_final_with_their_own_meaning() {
    let (fake, client, delays) = setup().await;
    fake.script([Reply::Error {
        status: 400,
        code: "DataInspectionFailed",
        retry_after: None,
    }]);
    let err = client.edit(&request(1)).await.unwrap_err();
    assert_eq!(
        err,
        BackendError::Moderated {
            code: "DataInspectionFailed".into()
        }
    );
    fake.script([Reply::Error {
        status: 400,
        code: "InvalidParameter",
        retry_after: None,
    }]);
    assert!(matches!(
        client.edit(&request(1)).await,
        Err(BackendError::Rejected { .. })
    ));
    fake.script([Reply::Error {
        status: 401,
        code: "InvalidApiKey",
        retry_after: None,
    }]);
    assert!(matches!(
        client.edit(&request(1)).await,
        Err(BackendError::Operator { .. })
    ));
    fake.script([Reply::Error {
        status: 400,
        code: "Arrearage",
        retry_after: None,
    }]);
    assert!(matches!(
        client.edit(&request(1)).await,
        Err(BackendError::Operator { .. })
    ));
    fake.script([Reply::Error {
        status: 404,
        code: "ModelNotFound",
        retry_after: None,
    }]);
    assert!(matches!(
        client.edit(&request(1)).await,
        Err(BackendError::Operator { .. })
    ));
    assert_eq!(fake.calls(), 5, "no retries on final errors");
    assert!(delays.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_200_with_a_code_and_no_output_is_an_error() {
    let (fake, client, _) = setup().await;
    fake.script([Reply::CodeWith200("InvalidParameter")]);
    assert!(
        matches!(client.edit(&request(1)).await, Err(BackendError::Rejected { code, .. }) if code == "InvalidParameter")
    );
}

#[tokio::test]
async fn malformed_json_is_reported_not_retried() {
    let (fake, client, _) = setup().await;
    fake.script([Reply::Malformed]);
    assert!(matches!(
        client.edit(&request(1)).await,
        Err(BackendError::Malformed(_))
    ));
    assert_eq!(fake.calls(), 1);
}

#[tokio::test]
async fn a_result_url_that_is_gone_is_a_download_error() {
    let (fake, client, _) = setup().await;
    fake.script([Reply::MissingResult]);
    let resp = client.edit(&request(1)).await.unwrap();
    let err = client.redeem(&resp.parts[0], 64 << 20).await.unwrap_err();
    assert_eq!(err, BackendError::Download("HTTP 404".into()));
}

#[tokio::test]
async fn a_hanging_backend_is_cut_by_the_timeout() {
    let fake = FakeDashScope::start().await;
    fake.script([Reply::Hang, Reply::Hang]);
    let delays = Arc::new(Mutex::new(Vec::new()));
    let mut opts = options(&fake, &delays);
    (opts.policy.timeout, opts.policy.max_attempts) = (Duration::from_millis(300), 2);
    let client = DashScope::new(opts).unwrap();
    let started = std::time::Instant::now();
    let err = client.edit(&request(1)).await.unwrap_err();
    assert_eq!(err, BackendError::Timeout(Duration::from_millis(300)));
    assert_eq!(
        fake.calls(),
        2,
        "a timeout is retried once more, then final"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn no_more_than_max_concurrent_calls_are_in_flight() {
    let fake = FakeDashScope::start().await;
    fake.set_latency(Duration::from_millis(150));
    let delays = Arc::new(Mutex::new(Vec::new()));
    let mut opts = options(&fake, &delays);
    opts.policy.max_concurrent = 3;
    let client = Arc::new(DashScope::new(opts).unwrap());
    let req = Arc::new(request(1));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (c, r) = (client.clone(), req.clone());
            tokio::spawn(async move { c.edit(&r).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(fake.calls(), 10);
    assert_eq!(fake.max_in_flight(), 3);
}

#[tokio::test]
async fn calls_are_spaced_by_the_rate_limit() {
    let fake = FakeDashScope::start().await;
    let delays = Arc::new(Mutex::new(Vec::new()));
    let mut opts = options(&fake, &delays);
    opts.policy.max_requests_per_second = 20.0;
    let client = Arc::new(DashScope::new(opts).unwrap());
    let req = Arc::new(request(1));
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let (c, r) = (client.clone(), req.clone());
            tokio::spawn(async move { c.edit(&r).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut at: Vec<_> = fake.seen().iter().map(|s| s.at).collect();
    at.sort();
    // 5 calls at 20/s with a burst of 1: 4 gaps of 50 ms leave the client. The fake notes a
    // call once it has read it, which a loaded machine can delay by some milliseconds, so the
    // bound keeps a margin (without the limiter the five arrive within a few ms).
    assert!(
        at[4] - at[0] >= Duration::from_millis(150),
        "{:?}",
        at[4] - at[0]
    );
}

#[tokio::test]
async fn the_api_key_never_appears_in_an_error() {
    let (fake, client, _) = setup().await;
    fake.script([Reply::Error {
        status: 401,
        code: "InvalidApiKey",
        retry_after: None,
    }]);
    let err = client.edit(&request(1)).await.unwrap_err();
    assert!(!format!("{err} {err:?}").contains(API_KEY));
    let mut opts = DashScopeOptions {
        base_url: "http://127.0.0.1:9/api/v1".into(),
        ..options(&fake, &Arc::new(Mutex::new(Vec::new())))
    };
    opts.policy.max_attempts = 1;
    let unreachable = DashScope::new(opts).unwrap();
    let err = unreachable.edit(&request(1)).await.unwrap_err();
    assert!(matches!(err, BackendError::Network(_)));
    assert!(!format!("{err} {err:?}").contains(API_KEY));
}

#[test]
fn the_file_limit_dashscope_states_keeps_every_data_uri_within_10_mb_and_no_more_than_needed() {
    use qwen_edit_bot::backend::dashscope::data_uri;
    use qwen_edit_bot::core::image::{Fitted, Format};
    let uri_of = |format: Format, len: usize| {
        data_uri(&Fitted {
            bytes: Bytes::from(vec![0u8; len]),
            format,
            width: 1024,
            height: 1024,
            passthrough: false,
        })
        .len()
    };
    let (limit, max) = (INPUT_RULES.max_file_bytes, 10 * 1024 * 1024);
    for format in [
        Format::Jpeg,
        Format::Png,
        Format::Gif,
        Format::Bmp,
        Format::Tiff,
        Format::WebP,
    ] {
        assert!(uri_of(format, limit) <= max, "{format:?} at the limit");
    }
    // One base64 quantum more would not fit as JPEG: the limit gives nothing away.
    assert!(uri_of(Format::Jpeg, limit + 3) > max);
    assert_eq!((INPUT_RULES.min_side, INPUT_RULES.max_side), (384, 3072));
}
