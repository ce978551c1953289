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
    b.call_problems(out);
    b.input_problems(64, 8192, out);
}
