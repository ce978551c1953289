//! The `[backend]` section for DashScope and its API key: what makes them unusable, one line
//! each.

use super::{EDIT_PATH, INPUT_RULES, caps_of};
use crate::config::check::url_problem;
use crate::config::{BackendConfig, Secrets};
use crate::core::ports::model::SizeRejection;

/// Every problem of the DashScope settings.
pub fn problems(b: &BackendConfig, secrets: &Secrets, out: &mut Vec<String>) {
    if secrets.dashscope_api_key.is_none() {
        out.push("DASHSCOPE_API_KEY is not set (nor DASHSCOPE_API_KEY_FILE)".into());
    }
    url_problem(out, "backend.base_url", &b.base_url, &["http", "https"]);
    if let Some(at) = b.base_url.find("/services/") {
        out.push(format!(
            "backend.base_url = {:?} names the endpoint too: the bot adds {EDIT_PATH} itself; \
             set backend.base_url = {:?}",
            b.base_url,
            &b.base_url[..at]
        ));
    }
    if !b.model.starts_with("qwen-image") {
        out.push(format!(
            "backend.model = {:?} is not a Qwen-Image-Edit model (qwen-image-edit, qwen-image-edit-plus, qwen-image-edit-max, or their dated snapshots)",
            b.model
        ));
    }
    b.call_problems(out);
    let (min, max) = (INPUT_RULES.min_side, INPUT_RULES.max_side);
    if !(min..=max).contains(&b.max_input_side) {
        out.push(format!(
            "backend.max_input_side must be between {min} and {max}"
        ));
    }
    if let Err(problem) = default_size(b) {
        out.push(problem);
    }
}

/// `backend.default_size`, checked against the model's rules.
fn default_size(b: &BackendConfig) -> Result<(), String> {
    let Some(size) = b.default_size()? else {
        return Ok(());
    };
    match caps_of(&b.model).check_size(size) {
        Ok(()) => Ok(()),
        Err(SizeRejection::NotSupported) => Err(format!(
            "backend.default_size: the model {} takes no output size (use qwen-image-edit-plus or -max, or leave it empty)",
            b.model
        )),
        Err(SizeRejection::OutOfRange { min, max }) => Err(format!(
            "backend.default_size = {:?}: each side must be from {min} to {max}",
            b.default_size
        )),
    }
}
