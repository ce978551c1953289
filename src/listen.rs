//! Serving HTTP safely on a port anyone can reach (the ops endpoint and the Telegram webhook).
//!
//! hyper closes a connection whose request headers do not arrive within `header_timeout`; at
//! most `max_connections` connections are served at once (more wait in the kernel's backlog
//! until one is closed, so idle ones cannot exhaust file descriptors); each request must be
//! complete within [`REQUEST_TIMEOUT_FACTOR`] × `header_timeout`; bodies are capped by each
//! route (the webhook reads its body only after the secret matched).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// A whole request (headers and body) must arrive within this many header timeouts.
pub const REQUEST_TIMEOUT_FACTOR: u32 = 5;

/// How both listeners treat their connections (`[http]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(c: &crate::config::HttpConfig) -> Self {
        Self {
            header_timeout: Duration::from_millis(c.header_timeout_ms.max(1)),
            max_connections: c.max_connections.max(1),
        }
    }

    /// How long one request may take in all.
    pub fn request_timeout(&self) -> Duration {
        self.header_timeout * REQUEST_TIMEOUT_FACTOR
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish (at
/// most one request timeout).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout(),
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // HTTP/1 only (Telegram and probes speak it): an HTTP/2 sniffing builder would wait for the
    // first bytes with no timeout.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        // A free slot first: beyond the cap, connections wait to be accepted.
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    let _ = tokio::time::timeout(limits.request_timeout(), graceful.shutdown()).await;
}
