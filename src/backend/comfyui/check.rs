//! The `[backend]` section for ComfyUI: what makes it unusable, one line each.

use reqwest::header::HeaderName;

use super::{MIN_INPUT_SIDE, load_workflow};
use crate::config::BackendConfig;
use crate::config::check::url_problem;

/// Largest input side worth sending to a diffusion model on one GPU.
const MAX_INPUT_SIDE: u32 = 4096;

/// Every problem of the ComfyUI settings. `secret_present`: whether the secret named by
/// `backend.api_key_env` was found (only asked when that setting is not empty).
pub fn problems(b: &BackendConfig, secret_present: bool, out: &mut Vec<String>) {
    url_problem(out, "backend.base_url", &b.base_url, &["http", "https"]);
    if !b.api_key_env.trim().is_empty() && !secret_present {
        out.push(format!(
            "{} is not set (backend.api_key_env names it as the ComfyUI secret)",
            b.api_key_env.trim()
        ));
    }
    let header = b.auth_header.trim();
    if !header.is_empty() && HeaderName::from_bytes(header.as_bytes()).is_err() {
        out.push(format!(
            "backend.auth_header = {header:?} is not a valid HTTP header name"
        ));
    }
    if b.model.trim().is_empty() {
        out.push("backend.model must name the model the workflow runs (for the ledger), e.g. \"qwen-image-edit-2509\"".into());
    }
    if let Err(problem) = load_workflow(b) {
        out.push(problem);
    }
    b.call_problems(out);
    b.input_problems(MIN_INPUT_SIDE, MAX_INPUT_SIDE, out);
}
