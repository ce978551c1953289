//! What makes settings unusable, the part no adapter owns: no platform, the quota's and the
//! HTTP endpoint's values. Each adapter checks its own section and secrets
//! (`telegram::check`, `discord::check`, `backend::dashscope::check`, `store::problems`), and
//! `app::problems` puts the one list together, the same for `run` and `check-config` (one line
//! each, naming the key and the fix).

use super::{BackendConfig, Config, Settings};
use crate::core::command::Size;

impl Settings {
    /// The problems no adapter owns, one line each.
    pub fn common_problems(&self) -> Vec<String> {
        let mut out = self.config.common_problems();
        let c = &self.config;
        if !c.telegram.enabled && !c.discord.enabled {
            out.push(format!(
                "no platform is enabled: set telegram.enabled or discord.enabled in {}",
                self.path.display()
            ));
        }
        out
    }
}

impl Config {
    /// Value problems no adapter owns that the TOML schema cannot express, one line each.
    pub fn common_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.quota_problems(&mut out);
        let listen = &self.http.listen;
        if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
            out.push(format!("http.listen = {listen:?} is not host:port"));
        }
        out
    }

    fn quota_problems(&self, out: &mut Vec<String>) {
        let q = &self.quota;
        if q.max_in_flight_per_user == 0 {
            out.push("quota.max_in_flight_per_user must be at least 1".into());
        }
        if q.max_queue == 0 {
            out.push("quota.max_queue must be at least 1".into());
        }
        if !(q.price_per_image.is_finite() && q.price_per_image >= 0.0) {
            out.push(format!(
                "quota.price_per_image = {} must be zero or more",
                q.price_per_image
            ));
        }
        if q.replicas == 0 {
            out.push("quota.replicas must be at least 1".into());
        } else if q.replicas > 1 && !crate::store::is_postgres(&q.database) {
            // A SQLite file is one process's (its run lock refuses a second).
            out.push(format!(
                "quota.replicas = {}: quota.replicas > 1 needs a postgres:// quota.database \
                 (a SQLite file serves one process); set quota.replicas = 1",
                q.replicas
            ));
        }
        if !(MIN_JOB_LEASE_SECS..=MAX_JOB_LEASE_SECS).contains(&q.job_lease_secs) {
            out.push(format!(
                "quota.job_lease_secs = {} must be between {MIN_JOB_LEASE_SECS} and \
                 {MAX_JOB_LEASE_SECS}",
                q.job_lease_secs
            ));
        }
    }
}

/// Shortest `quota.job_lease_secs` accepted: a lease must outlast a renewal's round trip.
const MIN_JOB_LEASE_SECS: u64 = 3;
/// Longest `quota.job_lease_secs` accepted: a crashed replica's jobs wait at most this long.
const MAX_JOB_LEASE_SECS: u64 = 3600;

/// Largest `backend.max_file_mb` accepted.
const MAX_FILE_MB: u32 = 100;

impl BackendConfig {
    /// `max_input_side` within `min..=max`, and `max_file_mb` (services that take files).
    pub fn input_problems(&self, min: u32, max: u32, out: &mut Vec<String>) {
        if !(min..=max).contains(&self.max_input_side) {
            out.push(format!(
                "backend.max_input_side must be between {min} and {max}"
            ));
        }
        if !(1..=MAX_FILE_MB).contains(&self.max_file_mb) {
            out.push(format!(
                "backend.max_file_mb must be between 1 and {MAX_FILE_MB}"
            ));
        }
    }

    /// The settings every kind of service shares: call limits and request defaults.
    pub fn call_problems(&self, out: &mut Vec<String>) {
        let checks = [
            (
                self.timeout_secs == 0,
                "backend.timeout_secs must be at least 1",
            ),
            (
                self.max_concurrent == 0,
                "backend.max_concurrent must be at least 1",
            ),
            (
                !(self.max_requests_per_second.is_finite() && self.max_requests_per_second > 0.0),
                "backend.max_requests_per_second must be a positive number",
            ),
            (
                self.max_attempts == 0 || self.max_attempts > 10,
                "backend.max_attempts must be between 1 and 10",
            ),
            (
                self.default_negative_prompt.chars().count()
                    > crate::core::command::MAX_NEGATIVE_CHARS,
                "backend.default_negative_prompt is longer than 500 characters",
            ),
            (
                self.price_per_image
                    .is_some_and(|p| !(p.is_finite() && p >= 0.0)),
                "backend.price_per_image must be zero or more",
            ),
        ];
        out.extend(
            checks
                .iter()
                .filter(|(bad, _)| *bad)
                .map(|(_, p)| p.to_string()),
        );
    }

    /// `backend.default_size` as a size; the service's adapter checks it against the model.
    pub fn default_size(&self) -> Result<Option<Size>, String> {
        if self.default_size.trim().is_empty() {
            return Ok(None);
        }
        Size::parse(&self.default_size).map(Some).map_err(|_| {
            format!(
                "backend.default_size = {:?}: write WIDTHxHEIGHT, e.g. \"1024x1536\"",
                self.default_size
            )
        })
    }
}

/// Whether `value` parses as a URL with one of `schemes` and a host.
pub fn url_ok(value: &str, schemes: &[&str]) -> bool {
    url::Url::parse(value)
        .is_ok_and(|u| schemes.contains(&u.scheme()) && u.host_str().is_some_and(|h| !h.is_empty()))
}

/// Adds a problem when `value` is not a URL with one of `schemes` and a host.
pub fn url_problem(out: &mut Vec<String>, key: &str, value: &str, schemes: &[&str]) {
    if !url_ok(value, schemes) {
        out.push(format!(
            "{key} = {value:?} is not a valid {} URL",
            schemes.join("/")
        ));
    }
}
