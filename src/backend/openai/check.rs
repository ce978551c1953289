//! One `[backend]` of kind `openai`: what makes it unusable, one line each.

use crate::config::BackendConfig;
use crate::config::check::url_problem;

/// Every problem of an OpenAI-compatible service's settings. Its key is optional: a local
/// server may take none.
pub fn problems(b: &BackendConfig, out: &mut Vec<String>) {
    url_problem(out, "backend.base_url", &b.base_url, &["http", "https"]);
    if b.base_url.trim_end_matches('/').ends_with("/images/edits") {
        out.push(format!(
            "backend.base_url = {:?} names the endpoint too: the bot adds /images/edits itself; \
             set backend.base_url = {:?}",
            b.base_url,
            b.base_url
                .trim_end_matches('/')
                .trim_end_matches("/images/edits")
        ));
    }
    if b.model.trim().is_empty() {
        out.push(
            "backend.model: name the model the server serves (e.g. \"Qwen/Qwen-Image-Edit-2509\")"
                .into(),
        );
    }
    if !(64..=8192).contains(&b.max_input_side) {
        out.push("backend.max_input_side must be between 64 and 8192".into());
    }
    if b.max_file_mb == 0 || b.max_file_mb > 100 {
        out.push("backend.max_file_mb must be between 1 and 100".into());
    }
    b.call_problems(out);
}
