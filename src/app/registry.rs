//! The only place that names concrete adapters: the chat platforms that run (Telegram,
//! Discord) and the model service (DashScope). A new adapter is one line here.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::bail;

use crate::backend::{DashScope, DashScopeOptions};
use crate::config::Settings;
use crate::core::jobs::Engine;
use crate::metrics::Metrics;

/// Every problem that stops `run`, one line each: the ones no adapter owns, then each
/// adapter's own (its section and secrets). Empty means the settings are usable;
/// `check-config` prints exactly these.
pub fn problems(settings: &Settings) -> Vec<String> {
    let (c, s) = (&settings.config, &settings.secrets);
    let mut out = settings.common_problems();
    match c.backend.kind.as_str() {
        "dashscope" => crate::backend::dashscope::check::problems(&c.backend, s, &mut out),
        other => out.push(format!(
            "backend.kind = {other:?}: only \"dashscope\" is supported"
        )),
    }
    crate::telegram::check::problems(&c.telegram, s, &mut out);
    crate::discord::check::problems(&c.discord, s, &mut out);
    crate::store::problems(&c.quota.database, &mut out);
    out
}

/// The DashScope client from `[backend]` and `DASHSCOPE_API_KEY`.
pub fn backend(settings: &Settings) -> anyhow::Result<Arc<DashScope>> {
    let Some(key) = settings.secrets.dashscope_api_key.clone() else {
        bail!("DASHSCOPE_API_KEY is not set (nor DASHSCOPE_API_KEY_FILE)");
    };
    let opts = DashScopeOptions::from_config(&settings.config.backend, key);
    Ok(Arc::new(DashScope::new(opts)?))
}

/// The enabled chat platforms, prepared (clients built) but not connected.
pub struct Platforms {
    telegram: Option<crate::telegram::Prepared>,
    discord: Option<crate::discord::Prepared>,
}

impl Platforms {
    pub fn prepare(settings: &Settings) -> anyhow::Result<Self> {
        let c = &settings.config;
        Ok(Self {
            telegram: match c.telegram.enabled {
                true => Some(crate::telegram::prepare(settings)?),
                false => None,
            },
            discord: match c.discord.enabled {
                true => Some(crate::discord::prepare(settings)?),
                false => None,
            },
        })
    }

    /// Each platform is down for `/healthz` until it has connected.
    pub fn report_down(&self, metrics: &Metrics) {
        if self.telegram.is_some() {
            metrics.health.set_telegram(false);
        }
        if self.discord.is_some() {
            metrics.health.set_discord(false);
        }
    }

    /// The engine answers each platform's jobs through its chat.
    pub fn register(&self, engine: &mut Engine) {
        if let Some(t) = &self.telegram {
            engine.register(t.chat.clone());
        }
        if let Some(d) = &self.discord {
            engine.register(d.chat.clone());
        }
    }

    /// Runs every platform until `shutdown`. One that fails (a refused token) stops only
    /// itself; they all stop when none is left running, at the signal, or when one ends by
    /// itself. Returns the error to exit with: a failure, only when every platform failed.
    pub async fn run(
        self,
        engine: &Arc<Engine>,
        metrics: &Arc<Metrics>,
        settings: &Settings,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Option<anyhow::Error> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stop_on_signal = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_on_signal.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let running = AtomicUsize::new(
            usize::from(self.telegram.is_some()) + usize::from(self.discord.is_some()),
        );
        let ended = |r: anyhow::Result<()>| {
            if let Err(e) = &r {
                tracing::error!(error = %e, "a platform stopped; the others go on");
            }
            if r.is_ok() || running.fetch_sub(1, Ordering::SeqCst) == 1 {
                let _ = stop_tx.send(true);
            }
            Some(r)
        };
        let (e, m) = (engine, metrics);
        let (tg, dc) = tokio::join!(
            async {
                let stop = stopped(stop_rx.clone());
                ended(
                    crate::telegram::run(self.telegram?, e.clone(), m.clone(), settings, stop)
                        .await,
                )
            },
            async {
                let stop = stopped(stop_rx.clone());
                ended(
                    crate::discord::run(self.discord?, e.clone(), m.clone(), settings, stop).await,
                )
            }
        );
        let results: Vec<anyhow::Result<()>> = [tg, dc].into_iter().flatten().collect();
        // Exit non-zero only when every enabled platform failed (what a restart cannot fix).
        if results.iter().any(Result::is_ok) {
            return None;
        }
        results.into_iter().find_map(Result::err)
    }
}
