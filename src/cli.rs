//! Admin subcommands that work without a chat: `edit`, `quota …`, `usage`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use chrono::{NaiveDate, Utc};

use crate::config::Settings;
use crate::core::command::EditCommand;
use crate::core::edit::EditBackend;
use crate::core::image::FitLimits;
use crate::core::jobs::MAX_INPUTS;
use crate::core::pipeline::execute;
use crate::core::quota::{
    JobStatus, Ledger, Limits, Platform, ReportBy, ReportRow, Reservation, UserRef, Window,
};
use crate::messages::{self, Lang};

/// Arguments of `edit`.
#[derive(Debug, Clone)]
pub struct EditArgs {
    pub images: Vec<PathBuf>,
    pub prompt: String,
    pub negative: Option<String>,
    pub seed: Option<String>,
    pub n: Option<String>,
    /// Output size `WxH`; default: `backend.default_size`, else the model's.
    pub size: Option<String>,
    pub out: PathBuf,
}

/// One edit through the configured backend; writes the results and prints their paths.
pub async fn edit(settings: &Settings, args: EditArgs) -> anyhow::Result<Vec<PathBuf>> {
    if args.images.is_empty() || args.images.len() > MAX_INPUTS {
        bail!("give 1 to {MAX_INPUTS} images (got {})", args.images.len());
    }
    let command = EditCommand::from_parts(
        &args.prompt,
        args.negative.as_deref(),
        args.seed.as_deref(),
        args.n.as_deref(),
    )
    .and_then(|c| c.with_size(args.size.as_deref()))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if command.truncated {
        eprintln!("note: the prompt was cut to 800 characters");
    }
    let backend = crate::app::backend(settings)?;
    let mut command = command;
    command.size = command
        .size
        .or(settings.config.default_size().ok().flatten());
    let caps = backend.caps();
    if command.count() > caps.max_n {
        bail!(
            "{} makes at most {} image(s) per edit",
            backend.model(),
            caps.max_n
        );
    }
    if let Some(size) = command.size {
        caps.check_size(size).map_err(|e| {
            let refused = crate::core::error::Rejection::from(e);
            anyhow::anyhow!("{}: {refused} (--size {size})", backend.model())
        })?;
    }
    let limits = FitLimits::default();
    let mut inputs = Vec::with_capacity(args.images.len());
    for path in &args.images {
        inputs.push(read_input(path, limits.max_input_bytes)?);
    }
    let negative = command.negative.clone().or_else(|| {
        Some(settings.config.backend.default_negative_prompt.clone()).filter(|s| !s.is_empty())
    });
    let ledger = crate::app::quotas(settings)?.ledger().clone();
    let job_id = record_start(&ledger, backend.model(), u32::from(command.count())).await?;
    let result = execute(backend.as_ref(), &limits, inputs, &command, negative).await;
    let outcome = match &result {
        Ok(d) => Ok((d.images.len() as u32, d.request_id.clone())),
        Err(reason) => Err(reason.code()),
    };
    tokio::task::spawn_blocking(move || match outcome {
        Ok((images, request_id)) => {
            ledger.deliver(&job_id, images, request_id.as_deref(), None, Utc::now())
        }
        Err(code) => ledger.finish(&job_id, JobStatus::Failed, None, Some(&code), Utc::now()),
    })
    .await??;
    let delivery = result.map_err(|reason| {
        let text = messages::failure_reason(Lang::En, &reason);
        anyhow::anyhow!("{text} ({reason})")
    })?;
    let paths = output_paths(&args.out, delivery.images.len());
    for (path, bytes) in paths.iter().zip(&delivery.images) {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(id) = &delivery.request_id {
        eprintln!("request id: {id}");
    }
    Ok(paths)
}

/// Records a CLI edit in the ledger (it costs money like any other), outside every quota.
async fn record_start(ledger: &Arc<dyn Ledger>, model: &str, cost: u32) -> anyhow::Result<String> {
    let job_id = uuid::Uuid::new_v4().simple().to_string();
    let r = Reservation {
        job_id: job_id.clone(),
        user: UserRef::new(Platform::Cli, "local"),
        chat: "local".into(),
        group: None,
        model: model.to_owned(),
        cost,
        prompt: None,
        spec: None,
        token: None,
    };
    let unlimited = Limits {
        per_user: u32::MAX,
        window: Window::Day,
        per_chat: 0,
        global_per_day: 0,
    };
    let ledger = Arc::clone(ledger);
    tokio::task::spawn_blocking(move || ledger.reserve(&r, &unlimited, Utc::now()))
        .await??
        .map_err(|no| anyhow::anyhow!("{no}"))?;
    Ok(job_id)
}

fn read_input(path: &Path, max: usize) -> anyhow::Result<Bytes> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > max as u64 {
        bail!("{}: larger than {} MB", path.display(), max >> 20);
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Bytes::from(bytes))
}

/// `out.png` for one result; `out-1.png`, `out-2.png`, … for several.
pub fn output_paths(out: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![out.to_owned()];
    }
    let stem = out
        .file_stem()
        .map_or("edited".into(), |s| s.to_string_lossy().into_owned());
    let ext = out
        .extension()
        .map_or("png".into(), |s| s.to_string_lossy().into_owned());
    (1..=n)
        .map(|i| out.with_file_name(format!("{stem}-{i}.{ext}")))
        .collect()
}

/// What `quota` does.
#[derive(Debug, Clone)]
pub enum QuotaAction {
    Show,
    /// `None` clears the user's own limit (back to `quota.per_user`).
    Set(Option<u32>),
    Reset,
    Block,
    Unblock,
}

/// Runs a `quota` subcommand and returns what to print.
pub async fn quota(settings: &Settings, user: &str, action: QuotaAction) -> anyhow::Result<String> {
    let user: UserRef = user.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let quotas = crate::app::quotas(settings)?;
    match action {
        QuotaAction::Show => {}
        QuotaAction::Set(limit) => quotas.set_limit(&user, limit).await?,
        QuotaAction::Reset => quotas.reset(&user).await?,
        QuotaAction::Block => quotas.set_blocked(&user, true).await?,
        QuotaAction::Unblock => quotas.set_blocked(&user, false).await?,
    }
    let q = quotas.show(&user).await?;
    let mut out = format!(
        "{user}: used {} of {}{} this {} window, {} left, resets {}",
        q.used,
        q.limit,
        if q.overridden { " (own limit)" } else { "" },
        settings.config.quota.window.as_str(),
        q.remaining(),
        messages::when(q.resets_at),
    );
    if q.blocked {
        out.push_str(", blocked");
    }
    Ok(out)
}

/// What `allow` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowAction {
    /// Allow the place (`telegram:<chat>` or `discord:<server>`).
    Add(String),
    /// No longer allow a place added before.
    Remove(String),
    List,
}

/// Runs an `allow` subcommand and returns what to print. A running daemon picks the change up
/// within a second.
pub async fn allow(settings: &Settings, action: AllowAction) -> anyhow::Result<String> {
    let quotas = crate::app::quotas(settings)?;
    let mut out = String::new();
    if let AllowAction::Add(place) | AllowAction::Remove(place) = &action {
        let (platform, id) = parse_place(place)?;
        let add = matches!(action, AllowAction::Add(_));
        let before = quotas.on_store(|l| l.allowed_places()).await?;
        let listed_before =
            listed(settings, platform) || before.iter().any(|(p, _)| *p == platform);
        let id_owned = id.clone();
        let changed = quotas
            .on_store(move |l| l.set_allowed(platform, &id_owned, add))
            .await?;
        out.push_str(&match (add, changed) {
            (true, true) => format!("{place} is allowed now"),
            (true, false) => format!("{place} was allowed already"),
            (false, true) => format!("{place} is no longer allowed by the store"),
            (false, false) => format!("{place} was not in the store's list"),
        });
        if add && changed && !listed_before {
            out.push_str(&format!(
                "\nnote: {} answered everywhere until now; from now on only in the places listed",
                platform.as_str()
            ));
        }
        if !add && allowed_by_config(settings, platform, &id) {
            out.push_str("\nnote: the config file still lists it; remove it there too");
        }
        out.push('\n');
    }
    let access = crate::app::access(settings);
    crate::app::load_places(&quotas, &access).await?;
    for line in access.describe() {
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// `telegram:<chat id>` or `discord:<server id>`.
fn parse_place(place: &str) -> anyhow::Result<(Platform, String)> {
    let (platform, id) = place.split_once(':').unwrap_or((place, ""));
    let ok = match platform {
        "telegram" => id.parse::<i64>().is_ok(),
        "discord" => id.parse::<u64>().is_ok(),
        _ => false,
    };
    if !ok {
        bail!(
            "{place:?}: give telegram:<chat id> (e.g. telegram:-1001234567890) or discord:<server id>"
        );
    }
    Ok((
        platform.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        id.to_owned(),
    ))
}

/// Whether the config lists any place of `platform`.
fn listed(settings: &Settings, platform: Platform) -> bool {
    let c = &settings.config;
    match platform {
        Platform::Telegram => !c.telegram.allowed_chats.is_empty(),
        Platform::Discord => !c.discord.allowed_guilds.is_empty(),
        Platform::Cli => true,
    }
}

fn allowed_by_config(settings: &Settings, platform: Platform, id: &str) -> bool {
    let c = &settings.config;
    match platform {
        Platform::Telegram => id
            .parse()
            .is_ok_and(|id| c.telegram.allowed_chats.contains(&id)),
        Platform::Discord => id
            .parse()
            .is_ok_and(|id| c.discord.allowed_guilds.contains(&id)),
        Platform::Cli => false,
    }
}

/// Where the bot answers, for `check-config`: the config's lists merged with the store's (when
/// the database exists; it is not created here).
pub fn places_report(settings: &Settings) -> String {
    let access = crate::app::access(settings);
    let database = Path::new(&settings.config.quota.database);
    let mut out =
        String::from("\n# where the bot answers (config lists merged with `allow add`)\n");
    if database.exists() {
        match crate::store::sqlite::SqliteLedger::open(database).and_then(|l| l.allowed_places()) {
            Ok(places) => access.set_stored(&places),
            Err(e) => out.push_str(&format!("# cannot read the stored places: {e}\n")),
        }
    }
    for line in access.describe() {
        out.push_str(&format!("# {line}\n"));
    }
    out
}

/// Parses `--by`.
pub fn report_by(s: &str) -> Result<ReportBy, String> {
    match s {
        "user" => Ok(ReportBy::User),
        "chat" => Ok(ReportBy::Chat),
        "day" => Ok(ReportBy::Day),
        other => Err(format!("--by {other:?}: use user, chat or day")),
    }
}

/// The usage report since `since` (`YYYY-MM-DD`; default: the first of this month).
pub async fn usage(
    settings: &Settings,
    since: Option<&str>,
    by: ReportBy,
) -> anyhow::Result<String> {
    let since = match since {
        Some(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| anyhow::anyhow!("--since {s:?}: write a date as YYYY-MM-DD"))?,
        None => {
            let today = Utc::now().date_naive();
            today.with_day0(0).unwrap_or(today)
        }
    };
    let since_t = since.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    let quotas = crate::app::quotas(settings)?;
    let ledger = quotas.ledger().clone();
    let rows =
        tokio::task::spawn_blocking(move || ledger.report(since_t, None, by, None)).await??;
    let price = settings.config.quota.price_per_image;
    let mut out = Vec::new();
    writeln!(out, "since {since}")?;
    let head = match by {
        ReportBy::User => "user",
        ReportBy::Chat => "chat",
        ReportBy::Day => "day",
    };
    // The operator pays for what the model made: cost is generated images × price, of which
    // `lost` is the part that never reached a chat.
    writeln!(
        out,
        "{head:<28} {:>8} {:>9} {:>11} {:>8} {:>9} {:>10} {:>10}",
        "jobs", "delivered", "undelivered", "failed", "generated", "cost", "lost"
    )?;
    let mut total = ReportRow {
        key: "total".into(),
        jobs: 0,
        images: 0,
        failed: 0,
        generated: 0,
        undelivered: 0,
    };
    for r in &rows {
        write_row(&mut out, r, price)?;
        total.jobs += r.jobs;
        total.images += r.images;
        total.failed += r.failed;
        total.generated += r.generated;
        total.undelivered += r.undelivered;
    }
    write_row(&mut out, &total, price)?;
    Ok(String::from_utf8(out)?)
}

fn write_row(out: &mut Vec<u8>, r: &ReportRow, price: f64) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<28} {:>8} {:>9} {:>11} {:>8} {:>9} {:>10.2} {:>10.2}",
        r.key,
        r.jobs,
        r.images,
        r.undelivered,
        r.failed,
        r.generated,
        r.generated as f64 * price,
        r.undelivered as f64 * price
    )
}

use chrono::Datelike as _;
