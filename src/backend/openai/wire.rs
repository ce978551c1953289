//! The OpenAI images API's wire format (docs/SERVICES.md §2): the multipart edit request, its
//! answer (`data[].b64_json` or `data[].url`) and its error body, mapped to [`BackendError`].

use std::time::Duration;

use serde::Deserialize;

use crate::backend::errors::by_status;
use crate::core::ports::model::{BackendError, EditRequest, OperatorProblem};

/// The multipart form of one edit: `model`, one `image[]` part per input, `prompt`, `n`,
/// `size` when asked, and `response_format`.
pub(super) fn form(model: &str, req: &EditRequest) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new().text("model", model.to_owned());
    for (i, image) in req.images.iter().enumerate() {
        let ext = image.format.extension();
        let body = reqwest::Body::from(image.bytes.clone());
        let part = reqwest::multipart::Part::stream_with_length(body, image.bytes.len() as u64)
            .file_name(format!("input-{}.{ext}", i + 1))
            .mime_str(image.format.mime())
            .expect("a valid MIME type");
        form = form.part("image[]", part);
    }
    let mut form = form
        .text("prompt", req.prompt.clone())
        .text("n", req.n.max(1).to_string())
        .text("response_format", "b64_json");
    if let Some(size) = req.size {
        form = form.text("size", format!("{}x{}", size.width, size.height));
    }
    form
}

/// One image of a successful answer.
pub(super) enum Image {
    Inline(String),
    Url(String),
}

#[derive(Deserialize)]
struct WireAnswer {
    data: Option<Vec<WireImage>>,
}

#[derive(Deserialize)]
struct WireImage {
    b64_json: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize)]
struct WireErrorBody {
    error: Option<WireError>,
}

#[derive(Deserialize, Default)]
struct WireError {
    message: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<serde_json::Value>,
}

/// The images of a 200, or the error an answer stands for.
pub(super) fn parse(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> Result<Vec<Image>, BackendError> {
    if status != 200 {
        return Err(error(status, body, retry_after));
    }
    let answer: WireAnswer = serde_json::from_slice(body)
        .map_err(|_| BackendError::Malformed("the body is not the images JSON".into()))?;
    let images: Vec<Image> = answer
        .data
        .unwrap_or_default()
        .into_iter()
        .filter_map(|d| match (d.b64_json, d.url) {
            (Some(b64), _) if !b64.is_empty() => Some(Image::Inline(b64)),
            (_, Some(url)) if !url.is_empty() => Some(Image::Url(url)),
            _ => None,
        })
        .collect();
    if images.is_empty() {
        return Err(BackendError::Malformed("no image in the response".into()));
    }
    Ok(images)
}

/// The error a non-200 answer stands for, from its OpenAI-style body (if it has one).
pub(super) fn error(status: u16, body: &[u8], retry_after: Option<Duration>) -> BackendError {
    let error = serde_json::from_slice::<WireErrorBody>(body)
        .ok()
        .and_then(|b| b.error)
        .unwrap_or_default();
    classify(status, &error, retry_after)
}

/// Maps an OpenAI-style error (status, `error.type`, `error.code`) to the same errors and
/// operator problems as DashScope's.
fn classify(status: u16, e: &WireError, retry_after: Option<Duration>) -> BackendError {
    let code = match &e.code {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => e.kind.clone().unwrap_or_default(),
    };
    let kind = e.kind.as_deref().unwrap_or("");
    let message: String = e
        .message
        .as_deref()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    let moderated = [
        "moderation_blocked",
        "content_policy_violation",
        "content_filter",
    ]
    .iter()
    .any(|m| code.contains(m) || kind.contains(m));
    let billing =
        status == 429 && (code == "insufficient_quota" || code == "billing_hard_limit_reached");
    if moderated {
        BackendError::Moderated { code }
    } else if billing {
        BackendError::Operator {
            problem: OperatorProblem::Billing,
            code,
            message,
        }
    } else {
        by_status(status, &code, message, retry_after)
    }
}
