//! The only place that names concrete adapters: the chat platforms that run (Telegram,
//! Discord) and the model services (DashScope, ComfyUI, OpenAI-compatible). A new adapter is
//! one line in each match here.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::bail;

use crate::backend::comfyui::{ComfyOptions, ComfyUi};
use crate::backend::{DashScope, DashScopeOptions, Member, OpenAi, OpenAiOptions, Services};
use crate::config::{BackendConfig, Settings};
use crate::core::jobs::Engine;
use crate::core::ports::model::EditService;
use crate::metrics::Metrics;

/// Every problem that stops `run`, one line each: the ones no adapter owns, then each
/// adapter's own (its section and secrets). Empty means the settings are usable;
/// `check-config` prints exactly these.
pub fn problems(settings: &Settings) -> Vec<String> {
    let (c, s) = (&settings.config, &settings.secrets);
    let mut out = settings.common_problems();
    let several = c.backend.all().len() > 1;
    for b in c.backend.all() {
        let mut own = Vec::new();
        match b.kind.as_str() {
            "dashscope" => crate::backend::dashscope::check::problems(b, s, &mut own),
            "openai" => crate::backend::openai::check::problems(b, &mut own),
            "comfyui" => {
                crate::backend::comfyui::check::problems(b, s.key_for(b).is_some(), &mut own)
            }
            other => own.push(format!(
                "backend.kind = {other:?}: use \"dashscope\", \"comfyui\" or \"openai\""
            )),
        }
        // With several services, each line names the one it is about.
        out.extend(own.into_iter().map(|p| match several {
            true => format!("[backend {:?}] {p}", b.label()),
            false => p,
        }));
    }
    service_list_problems(c.backend.all(), &mut out);
    crate::telegram::check::problems(&c.telegram, s, &mut out);
    crate::discord::check::problems(&c.discord, s, &mut out);
    crate::store::problems(&c.quota.database, &mut out);
    out
}

/// Names must tell the services apart (the ledger records them).
fn service_list_problems(all: &[BackendConfig], out: &mut Vec<String>) {
    for (i, b) in all.iter().enumerate() {
        let label = b.label();
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            out.push(format!(
                "backend.name = {label:?}: use letters, digits, '-', '_' and '.' only"
            ));
        }
        if all[..i].iter().any(|o| o.label() == label) {
            out.push(format!(
                "two services are named {label:?}: give each [[backend]] its own name"
            ));
        }
    }
}

/// One configured service's client, calling within this replica's share of its limits (the
/// whole of them with `quota.replicas = 1`).
fn service(settings: &Settings, b: &BackendConfig) -> anyhow::Result<Arc<dyn EditService>> {
    let b = &b.for_replica(settings.config.quota.replicas);
    let key = settings.secrets.key_for(b).cloned();
    let variable = b.key_variable();
    Ok(match b.kind.as_str() {
        "dashscope" => {
            let Some(key) = key else {
                bail!("{variable} is not set (nor {variable}_FILE)");
            };
            let opts = DashScopeOptions::from_config(b, key);
            Arc::new(DashScope::new(opts)?.with_useful_side(b.max_input_side))
        }
        "openai" => Arc::new(OpenAi::new(OpenAiOptions::from_config(b, key))?),
        "comfyui" => {
            let opts = ComfyOptions::from_config(b, key).map_err(anyhow::Error::msg)?;
            Arc::new(ComfyUi::new(opts)?)
        }
        other => bail!("backend.kind = {other:?} is not a service this bot speaks"),
    })
}

/// The configured services behind one [`EditService`], tried in priority order with failover.
pub fn backend(settings: &Settings) -> anyhow::Result<Arc<Services>> {
    let replicas = settings.config.quota.replicas;
    let members = settings
        .config
        .backend
        .all()
        .iter()
        .map(|b| {
            if replicas > 1 {
                let share = crate::config::per_replica(b.call_limits(), replicas);
                tracing::info!(
                    service = b.label(),
                    replicas,
                    max_concurrent = share.max_concurrent,
                    max_requests_per_second = share.max_requests_per_second,
                    "calling the service within this replica's share of its limits"
                );
            }
            Ok(Member {
                name: b.label().to_owned(),
                service: service(settings, b)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(Services::with_defaults(members)))
}

/// What each configured service says to a call that costs nothing (`check-config --probe`):
/// one line per service.
pub async fn probe(settings: &Settings) -> Vec<(String, Result<String, String>)> {
    let mut out = Vec::new();
    for b in settings.config.backend.all() {
        let said = match service(settings, b) {
            Ok(service) => service.probe().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        out.push((b.label().to_owned(), said));
    }
    out
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
