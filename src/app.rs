//! Wiring: settings → store, quotas, backend, engine; and the `run` daemon.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::backend::{DashScope, DashScopeOptions};
use crate::config::Settings;
use crate::core::access::{Access, DiscordPlaces, TelegramPlaces};
use crate::core::clock::{Clock, SystemClock};
use crate::core::image::FitLimits;
use crate::core::jobs::{Engine, EngineConfig};
use crate::core::quota::{Limits, Quotas, StoreError};
use crate::metrics::Metrics;

/// Quota limits from `[quota]`.
pub fn limits(settings: &Settings) -> Limits {
    let q = &settings.config.quota;
    Limits {
        per_user: q.per_user,
        window: q.window,
        per_chat: q.per_chat,
        global_per_day: q.global_per_day,
    }
}

/// Opens the store and wraps it in [`Quotas`] with the system clock.
pub fn quotas(settings: &Settings) -> anyhow::Result<Arc<Quotas>> {
    quotas_with_clock(settings, Arc::new(SystemClock))
}

pub fn quotas_with_clock(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<Quotas>> {
    let ledger = crate::store::open(&settings.config.quota.database)
        .with_context(|| format!("cannot open the store {}", settings.config.quota.database))?;
    Ok(Arc::new(Quotas::new(ledger, clock, limits(settings))))
}

/// Like [`quotas`], for the admin commands: the database must exist (nothing is created).
pub fn existing_quotas(settings: &Settings) -> anyhow::Result<Arc<Quotas>> {
    let ledger = crate::store::open_existing(&settings.config.quota.database)?;
    Ok(Arc::new(Quotas::new(
        ledger,
        Arc::new(SystemClock),
        limits(settings),
    )))
}

/// The DashScope client from `[backend]` and `DASHSCOPE_API_KEY`.
pub fn backend(settings: &Settings) -> anyhow::Result<Arc<DashScope>> {
    let Some(key) = settings.secrets.dashscope_api_key.clone() else {
        bail!("DASHSCOPE_API_KEY is not set (nor DASHSCOPE_API_KEY_FILE)");
    };
    let opts = DashScopeOptions::from_config(&settings.config.backend, key);
    Ok(Arc::new(DashScope::new(opts)?))
}

/// The input rules: DashScope's, with `backend.max_input_side` as the useful side.
pub fn fit_limits(settings: &Settings) -> FitLimits {
    FitLimits {
        useful_side: settings.config.backend.max_input_side,
        ..FitLimits::default()
    }
}

/// Engine settings from the config.
pub fn engine_config(settings: &Settings) -> EngineConfig {
    let c = &settings.config;
    EngineConfig {
        max_queue: c.quota.max_queue,
        max_in_flight_per_user: c.quota.max_in_flight_per_user,
        workers: c.backend.max_concurrent,
        fit: fit_limits(settings),
        store_prompts: c.quota.store_prompts,
        default_negative: c.backend.default_negative_prompt.clone(),
        fetch_timeout: Duration::from_secs(60),
        download_timeout: Duration::from_secs(c.backend.timeout_secs.max(1)),
        default_size: c.default_size().ok().flatten(),
    }
}

/// The allowlists from `[telegram]` and `[discord]` (the store's entries are added by
/// [`watch_store`] or [`load_places`]).
pub fn access(settings: &Settings) -> Access {
    let (t, d) = (&settings.config.telegram, &settings.config.discord);
    Access::new(
        TelegramPlaces {
            allowed_chats: t.allowed_chats.clone(),
            private_chats: t.private_chats,
            leave_unlisted: t.leave_unlisted,
            operators: t.admin_ids.clone(),
        },
        DiscordPlaces {
            allowed_guilds: d.allowed_guilds.clone(),
            allowed_channels: d.allowed_channels.clone(),
            allowed_roles: d.allowed_roles.clone(),
            direct_messages: d.direct_messages,
            leave_unlisted: d.leave_unlisted,
            operators: d.admin_ids.clone(),
        },
    )
}

/// Reads the places allowed from the CLI into `access`.
pub async fn load_places(quotas: &Quotas, access: &Access) -> Result<(), StoreError> {
    let places = quotas.on_store(|l| l.allowed_places()).await?;
    access.set_stored(&places);
    Ok(())
}

/// How often the daemon looks whether the CLI changed the store.
const STORE_WATCH: Duration = Duration::from_millis(250);

/// Picks up what the CLI writes while the daemon runs (allowed places, blocks, limits): the
/// admin commands stamp `<database>.changed` after a write (`store::mark_changed`); when its
/// time moves, the places are reloaded and cached settings dropped, so a change is in force
/// within [`STORE_WATCH`] and one store read. Looking is reading a tiny file: no store access,
/// no extra thread (asking SQLite from the blocking pool four times a second cost the daemon
/// about half a MiB of resident memory).
fn watch_store(
    quotas: Arc<Quotas>,
    access: Arc<Access>,
    database: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = crate::store::stamp_of(&database);
        let mut every = tokio::time::interval(STORE_WATCH);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let now = crate::store::stamp_of(&database);
            if now == seen {
                continue;
            }
            seen = now;
            quotas.forget_all();
            if let Err(e) = load_places(&quotas, &access).await {
                tracing::warn!(error = %e, "cannot reload the allowed places");
            }
        }
    })
}

/// How long job descriptions (with prompts, for 🔁) are kept.
const SPEC_RETENTION_DAYS: i64 = 7;

/// The daemon until SIGINT/SIGTERM; a second signal exits at once (the store is consistent
/// after every write, so nothing is lost). Returns an error (non-zero exit) when nothing can
/// run.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let (first, first_seen) = tokio::sync::oneshot::channel::<()>();
    // Installed before anything else starts, so a signal during start-up is a clean stop too.
    let mut signals = Signals::install()?;
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("shutting down (send the signal again to exit at once)");
        let _ = first.send(());
        signals.next().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    serve(settings, async {
        let _ = first_seen.await;
    })
    .await
}

/// The daemon until `shutdown` resolves: every enabled platform and the job workers.
pub async fn serve(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let problems = settings.problems();
    if let Some(first) = problems.first() {
        bail!("{first}{}", more(problems.len()));
    }
    let c = &settings.config;
    let quotas = quotas(&settings)?;
    // One daemon per store: a second one (a rolling deploy) would run the same jobs again.
    let _lock = crate::store::lock(&settings.config.quota.database)?;
    let backend = backend(&settings)?;
    let metrics = Arc::new(Metrics::new());
    // An enabled platform is reported down by /healthz until it has connected.
    if c.telegram.enabled {
        metrics.health.set_telegram(false);
    }
    if c.discord.enabled {
        metrics.health.set_discord(false);
    }
    let places = Arc::new(access(&settings));
    load_places(&quotas, &places)
        .await
        .context("cannot read the allowed places")?;
    let mut engine = Engine::new(quotas, backend, engine_config(&settings));
    engine.set_observer(metrics.clone());
    engine.set_access(places);
    let telegram = match c.telegram.enabled {
        true => Some(crate::telegram::prepare(&settings)?),
        false => None,
    };
    if let Some(t) = &telegram {
        engine.register(t.chat.clone());
    }
    let discord = match c.discord.enabled {
        true => Some(crate::discord::prepare(&settings)?),
        false => None,
    };
    if let Some(d) = &discord {
        engine.register(d.chat.clone());
    }
    let engine = Arc::new(engine);
    let resumed = engine.resume().await;
    if resumed > 0 {
        tracing::info!(resumed, "resuming jobs left unfinished by the last run");
    }
    let (ops_stop, ops_stopped) = tokio::sync::oneshot::channel::<()>();
    let ops = match c.http.listen.as_str() {
        "" => None,
        listen => Some(
            crate::http::serve(
                listen,
                engine.clone(),
                metrics.clone(),
                crate::listen::Limits::from_config(&c.http),
                async {
                    let _ = ops_stopped.await;
                },
            )
            .await?,
        ),
    };
    let workers = engine.spawn_workers();
    let watcher = watch_store(
        engine.quotas().clone(),
        engine.access().clone(),
        c.quota.database.clone(),
    );
    let pruner = {
        let quotas = engine.quotas().clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                prune_specs(&quotas).await;
            }
        })
    };
    // One shutdown for both front-ends; either one ending (or failing) stops the other too.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_on_signal.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // A front-end that fails (a refused token) stops only itself; the daemon stops when none is
    // left running, or at the signal.
    let running = std::sync::atomic::AtomicUsize::new(
        usize::from(telegram.is_some()) + usize::from(discord.is_some()),
    );
    let ended = |r: anyhow::Result<()>| {
        if let Err(e) = &r {
            tracing::error!(error = %e, "a platform stopped; the others go on");
        }
        let left = running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) - 1;
        if r.is_ok() || left == 0 {
            let _ = stop_tx.send(true);
        }
        Some(r)
    };
    let (e, m) = (&engine, &metrics);
    let (tg, dc) = tokio::join!(
        async {
            let r = crate::telegram::run(
                telegram?,
                e.clone(),
                m.clone(),
                &settings,
                stopped(stop_rx.clone()),
            );
            ended(r.await)
        },
        async {
            let r = crate::discord::run(
                discord?,
                e.clone(),
                m.clone(),
                &settings,
                stopped(stop_rx.clone()),
            );
            ended(r.await)
        }
    );
    let mut served = false;
    let mut failures = Vec::new();
    for result in [tg, dc].into_iter().flatten() {
        match result {
            Ok(()) => served = true,
            Err(e) => failures.push(e),
        }
    }
    // Exit non-zero only when every enabled platform failed (what a restart cannot fix).
    let failure = match served {
        false => failures.into_iter().next(),
        true => None,
    };
    drain(&engine, workers, Duration::from_secs(c.shutdown_grace_secs)).await;
    pruner.abort();
    watcher.abort();
    let _ = ops_stop.send(());
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// Shutdown after intake stopped: waiting jobs go back to the store, running ones get `grace`
/// to finish and be delivered; whatever is still running then stays in the store as running or
/// answered, and resumes at the next start.
async fn drain(engine: &Engine, workers: Vec<tokio::task::JoinHandle<()>>, grace: Duration) {
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

async fn prune_specs(quotas: &Quotas) {
    let before = quotas.now() - chrono::Duration::days(SPEC_RETENTION_DAYS);
    let ledger = quotas.ledger().clone();
    match tokio::task::spawn_blocking(move || ledger.prune_specs(before)).await {
        Ok(Ok(n)) if n > 0 => tracing::info!(pruned = n, "forgot old job descriptions"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune job descriptions"),
        _ => {}
    }
}

/// SIGINT and SIGTERM, listened to from the moment [`Signals::install`] returns.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
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
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn more(n: usize) -> String {
    if n > 1 {
        format!(" (and {} more problems; see check-config)", n - 1)
    } else {
        String::new()
    }
}
