//! Prometheus metrics and component health (docs/PRODUCT.md §7). One registry per process (not the global
//! one), so several bots in one test process do not mix their numbers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::core::pipeline::Observer;

/// Every metric the bot exports.
pub struct Metrics {
    registry: Registry,
    pub jobs: IntCounterVec,
    pub queue_depth: IntGauge,
    pub in_flight: IntGauge,
    pub backend_latency: Histogram,
    pub backend_errors: IntCounterVec,
    pub quota_rejections: IntCounterVec,
    pub platform_send_errors: IntCounterVec,
    pub images_delivered: IntCounterVec,
    pub health: Health,
}

/// What `/healthz` reports besides the store (checked live).
#[derive(Default)]
pub struct Health {
    /// Whether the last backend call reached the service (`None`: no call yet).
    backend: Mutex<Option<Result<(), String>>>,
    /// Per platform: connected (the last poll or setup call succeeded).
    telegram: AtomicBool,
    telegram_enabled: AtomicBool,
    discord: AtomicBool,
    discord_enabled: AtomicBool,
}

impl Health {
    pub fn backend(&self) -> Option<Result<(), String>> {
        self.backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_telegram(&self, connected: bool) {
        self.telegram_enabled.store(true, Ordering::SeqCst);
        self.telegram.store(connected, Ordering::SeqCst);
    }

    pub fn set_discord(&self, connected: bool) {
        self.discord_enabled.store(true, Ordering::SeqCst);
        self.discord.store(connected, Ordering::SeqCst);
    }

    /// `Some(connected)` when Discord runs in this process.
    pub fn discord(&self) -> Option<bool> {
        self.discord_enabled
            .load(Ordering::SeqCst)
            .then(|| self.discord.load(Ordering::SeqCst))
    }

    /// `Some(connected)` when Telegram runs in this process.
    pub fn telegram(&self) -> Option<bool> {
        self.telegram_enabled
            .load(Ordering::SeqCst)
            .then(|| self.telegram.load(Ordering::SeqCst))
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl Metrics {
    pub fn new() -> Self {
        crate::process_metrics::start_time();
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let queue_depth = gauge("qeb_queue_depth", "Jobs waiting for a worker");
        let in_flight = gauge("qeb_jobs_in_flight", "Jobs being worked on");
        let backend_latency = Histogram::with_opts(
            HistogramOpts::new(
                "qeb_backend_latency_seconds",
                "Duration of backend edit calls, retries included",
            )
            .buckets(vec![
                0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(backend_latency.clone()))
            .expect("unique metric");
        Self {
            jobs: counter(
                &registry,
                "qeb_jobs_total",
                "Finished jobs by final status",
                &["status"],
            ),
            backend_errors: counter(
                &registry,
                "qeb_backend_errors_total",
                "Failed backend calls by error code",
                &["code"],
            ),
            quota_rejections: counter(
                &registry,
                "qeb_quota_rejections_total",
                "Requests refused by quota, by reason",
                &["reason"],
            ),
            platform_send_errors: counter(
                &registry,
                "qeb_platform_send_errors_total",
                "Failed sends to a chat platform",
                &["platform"],
            ),
            images_delivered: counter(
                &registry,
                "qeb_images_delivered_total",
                "Edited images posted",
                &["platform"],
            ),
            queue_depth,
            in_flight,
            backend_latency,
            registry,
            health: Health::default(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            return String::new();
        }
        let mut text = String::from_utf8(out).unwrap_or_default();
        text.push_str(&crate::process_metrics::render());
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Observer for Metrics {
    fn backend_call(&self, seconds: f64, error: Option<&str>, reachable: bool) {
        self.backend_latency.observe(seconds);
        if let Some(code) = error {
            self.backend_errors.with_label_values(&[code]).inc();
        }
        let state = if reachable {
            Ok(())
        } else {
            Err(error.unwrap_or("unreachable").to_owned())
        };
        *self
            .health
            .backend
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(state);
    }

    fn job_finished(&self, delivered: bool) {
        let status = if delivered { "delivered" } else { "failed" };
        self.jobs.with_label_values(&[status]).inc();
    }

    fn quota_rejected(&self, reason: &str) {
        self.quota_rejections.with_label_values(&[reason]).inc();
    }

    fn images_delivered(&self, platform: &str, count: usize) {
        self.images_delivered
            .with_label_values(&[platform])
            .inc_by(count as u64);
    }

    fn send_failed(&self, platform: &str) {
        self.platform_send_errors
            .with_label_values(&[platform])
            .inc();
    }
}
