//! The `[backend]` section for ComfyUI: what makes it unusable, one line each.

use reqwest::header::HeaderName;

use super::{MIN_INPUT_SIDE, load_workflow};
use crate::config::BackendConfig;
use crate::config::check::url_problem;

/// Largest input side worth sending to a diffusion model on one GPU.
const MAX_INPUT_SIDE: u32 = 4096;
/// Largest input file setting we accept, in MB.
const MAX_FILE_MB: u32 = 100;

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
    let checks = [
        (
            b.timeout_secs == 0,
            "backend.timeout_secs must be at least 1",
        ),
        (
            b.max_concurrent == 0,
            "backend.max_concurrent must be at least 1",
        ),
        (
            !(b.max_requests_per_second.is_finite() && b.max_requests_per_second > 0.0),
            "backend.max_requests_per_second must be a positive number",
        ),
        (
            b.max_attempts == 0 || b.max_attempts > 10,
            "backend.max_attempts must be between 1 and 10",
        ),
    ];
    out.extend(
        checks
            .iter()
            .filter(|(bad, _)| *bad)
            .map(|(_, p)| p.to_string()),
    );
    if !(MIN_INPUT_SIDE..=MAX_INPUT_SIDE).contains(&b.max_input_side) {
        out.push(format!(
            "backend.max_input_side must be between {MIN_INPUT_SIDE} and {MAX_INPUT_SIDE}"
        ));
    }
    if !(1..=MAX_FILE_MB).contains(&b.max_file_mb) {
        out.push(format!(
            "backend.max_file_mb must be between 1 and {MAX_FILE_MB}"
        ));
    }
}
