//! Wiring: settings → store, quotas, backend, engine; and the `run` daemon. Concrete adapters
//! are named only in `registry.rs`; signals and the drain at shutdown are in `shutdown.rs`.

mod registry;
mod shutdown;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use self::shutdown::Signals;

use crate::config::Settings;
use crate::core::access::{Access, DiscordPlaces, TelegramPlaces};
use crate::core::clock::{Clock, SystemClock};
use crate::core::image::FitLimits;
use crate::core::jobs::{Engine, EngineConfig};
use crate::core::ports::model::EditService;
use crate::core::ports::store::StoreError;
use crate::core::quota::{Limits, Quotas};
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
    let q = &settings.config.quota;
    let lease = Duration::from_secs(q.job_lease_secs);
    let ledger = crate::store::open_leased(&q.database, lease)
        .with_context(|| format!("cannot open the store {}", q.database))?;
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

pub use registry::{backend, probe, problems};

/// The service's input rules (each adapter applies its own `backend.max_input_side`).
pub fn fit_limits(service: &dyn EditService) -> FitLimits {
    FitLimits::new(service.input_rules())
}

/// Engine settings from the config.
pub fn engine_config(settings: &Settings, service: &dyn EditService) -> EngineConfig {
    let c = &settings.config;
    let (primary, all) = (c.backend.primary(), c.backend.all());
    EngineConfig {
        max_queue: c.quota.max_queue,
        max_in_flight_per_user: c.quota.max_in_flight_per_user,
        // As many jobs at once as the widest service takes (each limits its own calls).
        workers: all
            .iter()
            .map(|b| b.max_concurrent_per_replica(c.quota.replicas))
            .max()
            .unwrap_or(1),
        fit: fit_limits(service),
        store_prompts: c.quota.store_prompts,
        default_negative: primary.default_negative_prompt.clone(),
        fetch_timeout: Duration::from_secs(60),
        download_timeout: Duration::from_secs(
            all.iter().map(|b| b.timeout_secs).max().unwrap_or(1).max(1),
        ),
        default_size: primary.default_size().ok().flatten(),
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
    let places = quotas.store().allowed_places().await?;
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
    if crate::store::is_postgres(&database) {
        return watch_postgres(quotas, access, database);
    }
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

/// [`watch_store`] on PostgreSQL: every change notice (`NOTIFY` from an admin command on any
/// machine) drops the cached settings and reloads the places at once.
fn watch_postgres(
    quotas: Arc<Quotas>,
    access: Arc<Access>,
    database: String,
) -> tokio::task::JoinHandle<()> {
    // Notices that arrive while a reload runs are one more reload, not one each.
    let changed = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&changed);
    tokio::spawn(crate::store::postgres::listen_for_changes(
        database,
        move || notify.notify_one(),
    ));
    tokio::spawn(async move {
        loop {
            changed.notified().await;
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
    let problems = registry::problems(&settings);
    if let Some(first) = problems.first() {
        bail!("{first}{}", more(problems.len()));
    }
    let c = &settings.config;
    let quotas = quotas(&settings)?;
    // One daemon per SQLite store: a second one (a rolling deploy) would run the same jobs
    // again. On PostgreSQL replicas share the store, each holding its jobs by lease.
    let _lock = crate::store::lock(&c.quota.database).await?;
    let metrics = Arc::new(Metrics::new());
    let platforms = registry::Platforms::prepare(&settings)?;
    // An enabled platform is reported down by /healthz until it has connected.
    platforms.report_down(&metrics);
    let engine = engine(&settings, quotas, &metrics, &platforms).await?;
    let (ops_stop, ops_stopped) = tokio::sync::oneshot::channel::<()>();
    let ops = match c.http.listen.as_str() {
        "" => None,
        listen => {
            let limits = crate::listen::Limits::from_config(&c.http);
            let stopped = async {
                let _ = ops_stopped.await;
            };
            Some(
                crate::http::serve(listen, engine.clone(), metrics.clone(), limits, stopped)
                    .await?,
            )
        }
    };
    let workers = engine.spawn_workers();
    let background = [
        watch_store(
            engine.quotas().clone(),
            engine.access().clone(),
            c.quota.database.clone(),
        ),
        prune_hourly(engine.quotas().clone()),
    ];
    let failure = platforms.run(&engine, &metrics, &settings, shutdown).await;
    shutdown::drain(&engine, workers, Duration::from_secs(c.shutdown_grace_secs)).await;
    engine.release().await;
    background.iter().for_each(|task| task.abort());
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

/// The engine on `quotas`, reporting to `metrics`, serving where the allowlists say, answering
/// through every prepared chat; with the jobs a previous run left unfinished queued again.
async fn engine(
    settings: &Settings,
    quotas: Arc<Quotas>,
    metrics: &Arc<Metrics>,
    platforms: &registry::Platforms,
) -> anyhow::Result<Arc<Engine>> {
    let places = Arc::new(access(settings));
    load_places(&quotas, &places)
        .await
        .context("cannot read the allowed places")?;
    let service = registry::backend(settings)?;
    let config = engine_config(settings, service.as_ref());
    let mut engine = Engine::new(quotas, service, config);
    engine.set_observer(metrics.clone());
    engine.set_access(places);
    platforms.register(&mut engine);
    let engine = Arc::new(engine);
    let resumed = engine.resume().await;
    if resumed > 0 {
        tracing::info!(resumed, "resuming jobs left unfinished by the last run");
    }
    Ok(engine)
}

/// Forgets old job descriptions once an hour.
fn prune_hourly(quotas: Arc<Quotas>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            every.tick().await;
            prune_specs(&quotas).await;
        }
    })
}

async fn prune_specs(quotas: &Quotas) {
    let before = quotas.now() - chrono::Duration::days(SPEC_RETENTION_DAYS);
    match quotas.store().prune_specs(before).await {
        Ok(n) if n > 0 => tracing::info!(pruned = n, "forgot old job descriptions"),
        Err(e) => tracing::warn!(error = %e, "cannot prune job descriptions"),
        Ok(_) => {}
    }
}

fn more(n: usize) -> String {
    if n > 1 {
        format!(" (and {} more problems; see check-config)", n - 1)
    } else {
        String::new()
    }
}
