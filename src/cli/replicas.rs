//! What `check-config` says about `quota.replicas`: each service's limits as one replica uses
//! them.

use crate::config::{Settings, per_replica};

/// One line per service with the share of its limits each replica calls it within; empty with
/// one replica (it uses the limits as configured).
pub fn replicas_report(settings: &Settings) -> String {
    let replicas = settings.config.quota.replicas;
    if replicas <= 1 {
        return String::new();
    }
    let mut out = format!(
        "\n# call limits per replica ({replicas} processes share each service's account)\n"
    );
    for b in settings.config.backend.all() {
        let whole = b.call_limits();
        let share = per_replica(whole, replicas);
        let together = share.max_concurrent * replicas as usize;
        let over = match together > whole.max_concurrent {
            true => format!("; together up to {together} at once (each share is rounded up)"),
            false => String::new(),
        };
        out.push_str(&format!(
            "# backend {}: each of {replicas} replicas calls it at most {} at once and at most \
             {} times a second (of max_concurrent = {}, max_requests_per_second = {}){over}\n",
            b.label(),
            share.max_concurrent,
            rate(share.max_requests_per_second),
            whole.max_concurrent,
            whole.max_requests_per_second,
        ));
    }
    out
}

/// Calls a second as an operator reads them: at most 3 decimals, no trailing zeros.
fn rate(per_second: f64) -> String {
    let shown = format!("{per_second:.3}");
    let shown = shown.trim_end_matches('0').trim_end_matches('.');
    match shown {
        "0" => format!("{per_second:.1e}"),
        _ => shown.to_owned(),
    }
}
