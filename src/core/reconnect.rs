//! Waiting between attempts to reach a platform at start-up: 0.5 s, doubling up to 30 s, cut
//! short by a stop signal.

use std::time::Duration;

use tokio::sync::watch;

const FIRST: Duration = Duration::from_millis(500);
const MAX: Duration = Duration::from_secs(30);

/// The growing pause between connection attempts.
pub struct Reconnect {
    wait: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self { wait: FIRST }
    }
}

impl Reconnect {
    /// How long the next pause lasts.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Pauses before the next attempt; `false` when `stop` turned true first (give up).
    pub async fn pause(&mut self, stop: &watch::Receiver<bool>) -> bool {
        let mut stop = stop.clone();
        let paused = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => false,
            _ = tokio::time::sleep(self.wait) => true,
        };
        self.wait = (self.wait * 2).min(MAX);
        paused
    }
}
