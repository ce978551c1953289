//! DashScope's wire format: the request body and the answer, parsed into an [`Answer`] or a
//! classified error.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::DashScopeOptions;
use super::rules::{caps_of, data_uri};
use crate::backend::errors::classify;
use crate::core::ports::model::{Answer, BackendError, EditRequest};

/// The JSON body of one edit (docs/DASHSCOPE.md §1.4): the images as data URIs, then the
/// prompt, and the parameters the model takes.
pub(super) fn body(opts: &DashScopeOptions, req: &EditRequest) -> Result<Vec<u8>, BackendError> {
    let caps = caps_of(&opts.model);
    let uris: Vec<String> = req.images.iter().map(data_uri).collect();
    let mut content: Vec<Part<'_>> = uris
        .iter()
        .map(|u| Part {
            image: Some(u),
            text: None,
        })
        .collect();
    content.push(Part {
        image: None,
        text: Some(&req.prompt),
    });
    let wire = WireRequest {
        model: &opts.model,
        input: WireInput {
            messages: [WireMessage {
                role: "user",
                content,
            }],
        },
        parameters: WireParams {
            n: req.n.clamp(1, caps.max_n),
            negative_prompt: req.negative.as_deref().filter(|s| !s.trim().is_empty()),
            seed: req.seed,
            watermark: opts.watermark,
            prompt_extend: caps.prompt_extend.then_some(opts.prompt_extend),
            size: req
                .size
                .filter(|_| caps.size_sides.is_some())
                .map(|s| s.wire()),
        },
    };
    serde_json::to_vec(&wire).map_err(|e| BackendError::Malformed(e.to_string()))
}

pub(super) fn parse_response(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> Result<Answer, BackendError> {
    let parsed: Result<WireResponse, _> = serde_json::from_slice(body);
    let Ok(resp) = parsed else {
        if status == 200 {
            return Err(BackendError::Malformed("the body is not JSON".into()));
        }
        return Err(classify(status, "", "", retry_after));
    };
    let code = resp.code.as_deref().unwrap_or("");
    let message = resp
        .message
        .as_deref()
        .or(resp.msg.as_deref())
        .unwrap_or("");
    if status != 200 || (!code.is_empty() && resp.output.is_none()) {
        // DashScope support asks for the request id of a failed call.
        tracing::warn!(
            status,
            code,
            request_id = resp.request_id.as_deref().unwrap_or(""),
            "the backend answered with an error"
        );
        return Err(classify(status, code, message, retry_after));
    }
    let urls: Vec<String> = resp
        .output
        .into_iter()
        .flat_map(|o| o.choices)
        .flat_map(|c| c.message.content)
        .filter_map(|p| p.image)
        .collect();
    if urls.is_empty() {
        return Err(BackendError::Malformed("no image in the response".into()));
    }
    Ok(Answer {
        request_id: resp.request_id,
        parts: urls,
        service: None,
    })
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    input: WireInput<'a>,
    parameters: WireParams<'a>,
}

#[derive(Serialize)]
struct WireInput<'a> {
    messages: [WireMessage<'a>; 1],
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Vec<Part<'a>>,
}

#[derive(Serialize)]
struct Part<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

#[derive(Serialize)]
struct WireParams<'a> {
    n: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    negative_prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u32>,
    watermark: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_extend: Option<bool>,
    /// `"W*H"` (an asterisk, not an x).
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<String>,
}

#[derive(Deserialize)]
struct WireResponse {
    output: Option<WireOutput>,
    request_id: Option<String>,
    code: Option<String>,
    message: Option<String>,
    msg: Option<String>,
}

#[derive(Deserialize)]
struct WireOutput {
    #[serde(default)]
    choices: Vec<WireChoice>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireChoiceMessage,
}

#[derive(Deserialize)]
struct WireChoiceMessage {
    #[serde(default)]
    content: Vec<WirePart>,
}

#[derive(Deserialize)]
struct WirePart {
    image: Option<String>,
}
