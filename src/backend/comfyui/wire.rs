//! ComfyUI's HTTP answers (`server.py`): the upload and `/prompt` replies, a `/history` entry,
//! the image references a part carries, `/system_stats`, and statuses turned into
//! [`BackendError`]s. Everything is read as loose JSON: ComfyUI adds fields between versions.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::errors::by_status;
use crate::core::ports::model::{BackendError, OperatorProblem};

/// Longest message we keep from the server, in characters.
const MAX_MESSAGE_CHARS: usize = 300;

/// One image ComfyUI made, as `/view` takes it back. A part of an answer is this, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    pub filename: String,
    #[serde(default)]
    pub subfolder: String,
    #[serde(rename = "type", default = "output_type")]
    pub kind: String,
}

fn output_type() -> String {
    "output".into()
}

impl ImageRef {
    /// The part an [`crate::core::ports::model::Answer`] stores for this image.
    pub fn to_part(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The image a stored part names; parts of other services are refused.
    pub fn from_part(part: &str) -> Result<Self, BackendError> {
        serde_json::from_str::<ImageRef>(part)
            .ok()
            .filter(|r| !r.filename.is_empty())
            .ok_or_else(|| BackendError::Download("not a ComfyUI image reference".into()))
    }
}

/// How a finished prompt ended, from its `/history` entry.
pub enum Finished {
    Images(Vec<ImageRef>),
    Failed(BackendError),
}

/// The first `MAX_MESSAGE_CHARS` characters of `s`, on one line.
pub fn short(s: &str) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().take(MAX_MESSAGE_CHARS).collect()
}

/// A status that is not a success, for any call (the `/prompt` 400 has its own reader): the
/// shared HTTP meaning, with ComfyUI's own for 405 (a server that is not ComfyUI's API).
pub fn status_error(status: u16, retry_after: Option<Duration>, what: &str) -> BackendError {
    let message = match status {
        404 | 405 => format!("no ComfyUI API at backend.base_url ({what} answered {status})"),
        _ => format!("ComfyUI (or its proxy) answered HTTP {status} to {what}"),
    };
    // 405: the path exists but not as ComfyUI's API — the same fix as a 404.
    by_status(
        if status == 405 { 404 } else { status },
        "",
        message,
        retry_after,
    )
}

/// The stored name of an uploaded image, as a `LoadImage` input takes it.
pub fn uploaded_name(body: &[u8]) -> Result<String, BackendError> {
    #[derive(Deserialize)]
    struct Uploaded {
        name: String,
        #[serde(default)]
        subfolder: String,
    }
    let up: Uploaded = serde_json::from_slice(body).map_err(|_| {
        BackendError::Malformed("the upload answer is not {name, subfolder}".into())
    })?;
    Ok(if up.subfolder.is_empty() {
        up.name
    } else {
        format!("{}/{}", up.subfolder, up.name)
    })
}

/// The `prompt_id` of an accepted prompt.
pub fn prompt_id(body: &[u8]) -> Result<String, BackendError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| BackendError::Malformed("the /prompt answer is not JSON".into()))?;
    v.get("prompt_id")
        .and_then(Value::as_str)
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_owned)
        .ok_or_else(|| BackendError::Malformed("the /prompt answer has no usable prompt_id".into()))
}

/// A `/prompt` 400: the workflow failed validation (`{"error": {...}, "node_errors": {...}}`).
/// It is the operator's workflow (or its models) to fix, so it names the node and the reason.
pub fn invalid_workflow(body: &[u8]) -> BackendError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let first_node = v
        .get("node_errors")
        .and_then(Value::as_object)
        .and_then(|m| m.iter().next());
    let message = match first_node {
        Some((id, node)) => {
            let class = node
                .get("class_type")
                .and_then(Value::as_str)
                .unwrap_or("?");
            let reason = node
                .get("errors")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
                .map(reason_of)
                .unwrap_or_default();
            format!("node {id} ({class}): {reason}")
        }
        None => match v.get("error") {
            Some(Value::String(s)) => s.clone(),
            Some(e) => reason_of(e),
            None => "the workflow was refused".into(),
        },
    };
    BackendError::Operator {
        problem: OperatorProblem::Model,
        code: "invalid_workflow".into(),
        message: short(&message),
    }
}

/// `message: details` of one ComfyUI error object.
fn reason_of(e: &Value) -> String {
    let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").trim();
    match (text("message"), text("details")) {
        (m, "") => m.to_owned(),
        ("", d) => d.to_owned(),
        (m, d) => format!("{m}: {d}"),
    }
}

/// The error an `execution_error` message (or history entry) carries. Running out of GPU
/// memory is the server's state, not the request's fault, so it is `Unavailable`.
pub fn execution_error(data: &Value) -> BackendError {
    let text = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("");
    let message = text("exception_message");
    let kind = text("exception_type");
    let lower = format!("{message} {kind}").to_ascii_lowercase();
    let oom_word = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == "oom");
    if lower.contains("out of memory") || lower.contains("outofmemory") || oom_word {
        tracing::warn!(node = text("node_id"), "ComfyUI ran out of memory");
        return BackendError::Unavailable {
            status: 503,
            code: "out_of_memory".into(),
        };
    }
    let node = match (text("node_id"), text("node_type")) {
        ("", _) => String::new(),
        (id, "") => format!("node {id}: "),
        (id, class) => format!("node {id} ({class}): "),
    };
    BackendError::Rejected {
        code: "execution_error".into(),
        message: short(&format!("{node}{message}")),
    }
}

/// A run stopped on the server (`execution_interrupted`): someone cancelled it there.
pub fn interrupted() -> BackendError {
    BackendError::Unavailable {
        status: 503,
        code: "execution_interrupted".into(),
    }
}

/// How a `/history/{prompt_id}` answer says the prompt ended; `None` while it has not.
pub fn history(
    body: &[u8],
    prompt_id: &str,
    output_node: Option<&str>,
) -> Result<Option<Finished>, BackendError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| BackendError::Malformed("the /history answer is not JSON".into()))?;
    let Some(entry) = v.get(prompt_id) else {
        return Ok(None);
    };
    let status = entry.get("status");
    let failed = status
        .and_then(|s| s.get("status_str"))
        .and_then(Value::as_str)
        == Some("error");
    if failed {
        return Ok(Some(Finished::Failed(failure_in(status))));
    }
    let images = images_of(entry.get("outputs").unwrap_or(&Value::Null), output_node);
    Ok(Some(Finished::Images(images)))
}

/// The failure a history entry's status messages (`[[event, data], ...]`) record.
fn failure_in(status: Option<&Value>) -> BackendError {
    let messages = status
        .and_then(|s| s.get("messages"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for m in messages {
        match m.as_array().map(Vec::as_slice) {
            Some([Value::String(event), data]) if event == "execution_error" => {
                return execution_error(data);
            }
            Some([Value::String(event), _]) if event == "execution_interrupted" => {
                return interrupted();
            }
            _ => {}
        }
    }
    BackendError::Rejected {
        code: "execution_error".into(),
        message: "the workflow failed on the ComfyUI server".into(),
    }
}

/// The images of `outputs` (`{node_id: {"images": [...]}}`): those of `output_node`, or else
/// the saved (`type = output`) images of every node, or any image when none is saved.
pub fn images_of(outputs: &Value, output_node: Option<&str>) -> Vec<ImageRef> {
    let refs = |node: &Value| -> Vec<ImageRef> {
        node.get("images")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| serde_json::from_value::<ImageRef>(i.clone()).ok())
            .filter(|r| !r.filename.is_empty())
            .collect()
    };
    if let Some(id) = output_node {
        return outputs.get(id).map(refs).unwrap_or_default();
    }
    let all: Vec<ImageRef> = outputs
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(refs)
        .collect();
    let saved: Vec<ImageRef> = all.iter().filter(|r| r.kind == "output").cloned().collect();
    if saved.is_empty() { all } else { saved }
}

/// One line about the server for `check-config --probe`: version and devices.
pub fn system_summary(body: &[u8]) -> Result<String, BackendError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| BackendError::Malformed("the /system_stats answer is not JSON".into()))?;
    let system = v.get("system").unwrap_or(&Value::Null);
    let text = |x: &Value, k: &str| x.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let version = text(system, "comfyui_version");
    let devices: Vec<String> = v
        .get("devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|d| {
            let gib =
                |k: &str| d.get(k).and_then(Value::as_f64).unwrap_or(0.0) / f64::from(1u32 << 30);
            format!(
                "{} ({:.1} GiB VRAM, {:.1} GiB free)",
                text(d, "name"),
                gib("vram_total"),
                gib("vram_free")
            )
        })
        .collect();
    let version = if version.is_empty() {
        "unknown version".into()
    } else {
        version
    };
    let devices = if devices.is_empty() {
        "no device listed".into()
    } else {
        devices.join("; ")
    };
    Ok(short(&format!("ComfyUI {version}; {devices}")))
}
