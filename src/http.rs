//! The operations endpoint on `http.listen`: `GET /livez` (liveness: the process can make
//! progress), `GET /readyz` and its older name `/healthz` (readiness: platforms, backend, store),
//! and `GET /metrics`. Point a liveness probe (Docker `HEALTHCHECK`, Kubernetes `livenessProbe`)
//! at `/livez`: a backend or platform outage makes the bot unready, never dead, so it is not
//! restarted in a loop while the outage lasts.

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use crate::core::jobs::Engine;
use crate::metrics::Metrics;

struct Ops {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
}

/// Binds `listen` and serves until `shutdown` resolves. Binding errors are returned at once.
pub async fn serve(
    listen: &str,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    limits: crate::listen::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("http.listen = {listen}: {e}"))?;
    tracing::info!(listen = %listen, "serving /healthz and /metrics");
    let app = axum::Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(healthz))
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        // Nothing here takes a body.
        .layer(axum::extract::DefaultBodyLimit::max(1024))
        .with_state(Arc::new(Ops { engine, metrics }));
    Ok(tokio::spawn(crate::listen::serve(
        listener, app, limits, shutdown,
    )))
}

/// How long the store's write check may take before the process counts as stuck.
const STORE_CHECK: std::time::Duration = std::time::Duration::from_secs(3);

/// A real write to the store, bounded in time; `{"ok": …}`.
async fn store_check(ops: &Ops) -> Value {
    let check = ops.engine.quotas().store().check_writable();
    match tokio::time::timeout(STORE_CHECK, check).await {
        Ok(Ok(())) => json!({ "ok": true }),
        Ok(Err(e)) => json!({ "ok": false, "error": e.to_string() }),
        Err(_) => json!({ "ok": false, "error": "the store did not answer in time" }),
    }
}

/// Liveness: this answer itself shows the runtime is responsive; the store must take a write.
/// Nothing outside the process (backend, platforms) is asked.
async fn livez(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    let store = store_check(&ops).await;
    let alive = store["ok"] == Value::Bool(true);
    let status = match alive {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body =
        json!({ "status": if alive { "ok" } else { "down" }, "components": { "store": store } });
    (status, Json(body))
}

/// Readiness: every part the bot needs to serve, each named when down.
async fn healthz(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    let store = store_check(&ops).await;
    let backend = match ops.metrics.health.backend() {
        None => json!({ "ok": true, "detail": "no call yet" }),
        Some(Ok(())) => json!({ "ok": true }),
        Some(Err(code)) => json!({ "ok": false, "error": code }),
    };
    let mut components = serde_json::Map::new();
    components.insert("store".into(), store);
    components.insert("backend".into(), backend);
    if let Some(connected) = ops.metrics.health.telegram() {
        components.insert("telegram".into(), json!({ "ok": connected }));
    }
    if let Some(connected) = ops.metrics.health.discord() {
        components.insert("discord".into(), json!({ "ok": connected }));
    }
    let down: Vec<String> = components
        .iter()
        .filter(|(_, v)| v["ok"] != Value::Bool(true))
        .map(|(k, _)| k.clone())
        .collect();
    let status = if down.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": if down.is_empty() { "ok" } else { "down" }, "down": down, "components": components });
    (status, Json(body))
}

async fn render_metrics(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    ops.metrics.queue_depth.set(ops.engine.queue_len() as i64);
    ops.metrics.in_flight.set(ops.engine.in_flight() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ops.metrics.render(),
    )
}
