//! Statuses and service codes → [`BackendError`]: DashScope's codes (docs/DASHSCOPE.md §1.7),
//! and the plain HTTP meaning every other service shares ([`by_status`]).

use std::time::Duration;

use crate::core::ports::model::{BackendError, OperatorProblem};

/// Maps a non-success answer (status + DashScope `code`/`message`) to an error.
pub(crate) fn classify(
    status: u16,
    code: &str,
    message: &str,
    retry_after: Option<Duration>,
) -> BackendError {
    let code_owned = || code.to_owned();
    let msg = || message.chars().take(300).collect::<String>();
    let lower = code.to_ascii_lowercase();
    if lower.starts_with("datainspectionfailed") || lower == "data_inspection_failed" {
        return BackendError::Moderated { code: code_owned() };
    }
    if let Some(problem) = operator_problem(status, code) {
        return BackendError::Operator {
            problem,
            code: code_owned(),
            message: msg(),
        };
    }
    match status {
        429 => BackendError::Throttled {
            code: code_owned(),
            retry_after,
        },
        408 => BackendError::Unavailable {
            status,
            code: code_owned(),
        },
        500..=599 => BackendError::Unavailable {
            status,
            code: code_owned(),
        },
        400..=499 => BackendError::Rejected {
            code: code_owned(),
            message: msg(),
        },
        // A 200 carrying `code` and no `output`, or an unexpected status.
        _ if code.starts_with("Throttling") => BackendError::Throttled {
            code: code_owned(),
            retry_after,
        },
        _ if code.starts_with("InternalError") || code == "ModelUnavailable" => {
            BackendError::Unavailable {
                status,
                code: code_owned(),
            }
        }
        _ => BackendError::Rejected {
            code: code_owned(),
            message: msg(),
        },
    }
}

/// What the operator must fix, for the codes (and statuses) that mean the bot itself is
/// refused.
fn operator_problem(status: u16, code: &str) -> Option<OperatorProblem> {
    Some(match code {
        "InvalidApiKey" => OperatorProblem::Key,
        "Arrearage" | "PrepaidBillOverdue" | "PostpaidBillOverdue" | "CommodityNotPurchased" => {
            OperatorProblem::Billing
        }
        "Throttling.AllocationQuota" | "LimitRequests" => OperatorProblem::Allowance,
        "ModelNotFound" | "WorkSpaceNotFound" => OperatorProblem::Model,
        _ if code.starts_with("AccessDenied") || code.ends_with(".AccessDenied") => {
            OperatorProblem::Permission
        }
        _ if matches!(status, 401 | 403) => OperatorProblem::Permission,
        _ => return None,
    })
}

/// What a failed HTTP status means when the service says no more (OpenAI-style bodies, ComfyUI):
/// 401 the key, 403 permission, 404 no such model or API, 429 throttled, 408/5xx unavailable,
/// any other 4xx a refused request. `code` empty: `http_<status>`.
pub(crate) fn by_status(
    status: u16,
    code: &str,
    message: String,
    retry_after: Option<Duration>,
) -> BackendError {
    let code = if code.is_empty() {
        format!("http_{status}")
    } else {
        code.to_owned()
    };
    let operator = |problem| BackendError::Operator {
        problem,
        code: code.clone(),
        message: message.clone(),
    };
    match status {
        401 => operator(OperatorProblem::Key),
        403 => operator(OperatorProblem::Permission),
        404 => operator(OperatorProblem::Model),
        429 => BackendError::Throttled { code, retry_after },
        400..=499 if status != 408 => BackendError::Rejected { code, message },
        _ => BackendError::Unavailable { status, code },
    }
}
