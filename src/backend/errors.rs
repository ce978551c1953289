//! DashScope's status and `code` (docs/DASHSCOPE.md §1.7) → [`BackendError`].

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
