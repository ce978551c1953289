//! Stopping: the signals that start it, and the drain that lets running jobs finish.

use std::time::Duration;

use crate::core::jobs::Engine;

/// Shutdown after intake stopped: waiting jobs go back to the store, running ones get `grace`
/// to finish and be delivered; whatever is still running then stays in the store as running or
/// answered, and resumes at the next start.
pub async fn drain(engine: &Engine, workers: Vec<tokio::task::JoinHandle<()>>, grace: Duration) {
    let handed_back = engine.close();
    tracing::info!(
        handed_back,
        running = engine.in_flight(),
        "no longer taking updates; finishing running jobs"
    );
    let deadline = tokio::time::Instant::now() + grace;
    let aborts: Vec<_> = workers.iter().map(|w| w.abort_handle()).collect();
    let all = async {
        for w in workers {
            let _ = w.await;
        }
    };
    if tokio::time::timeout_at(deadline, all).await.is_err() {
        tracing::warn!(
            "shutdown grace ran out; running jobs stay in the store and resume next start"
        );
        aborts.iter().for_each(|a| a.abort());
    }
    if !engine.settle(deadline).await {
        tracing::warn!("deliveries cut short at exit; they resume next start");
    }
}

/// SIGINT and SIGTERM, listened to from the moment [`Signals::install`] returns.
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves at the next SIGINT or SIGTERM.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
