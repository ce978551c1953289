//! `usage` and `quota`: reports from the ledger as a table for eyes, or JSON / CSV for scripts.

use anyhow::bail;
use chrono::{DateTime, Datelike as _, NaiveDate, Utc};
use serde::Serialize;

use crate::config::Settings;
use crate::core::model::UserRef;
use crate::core::ports::store::{ReportBy, ReportRow, ServiceUse};
use crate::core::quota::UserQuota;
use crate::messages;

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Csv,
}

/// Parses `--format`.
pub fn format(s: &str) -> Result<Format, String> {
    match s {
        "table" => Ok(Format::Table),
        "json" => Ok(Format::Json),
        "csv" => Ok(Format::Csv),
        other => Err(format!("--format {other:?}: use table, json or csv")),
    }
}

/// Parses `--by`.
pub fn report_by(s: &str) -> Result<ReportBy, String> {
    match s {
        "user" => Ok(ReportBy::User),
        "chat" => Ok(ReportBy::Chat),
        "day" => Ok(ReportBy::Day),
        "service" => Ok(ReportBy::Service),
        other => Err(format!("--by {other:?}: use user, chat, day or service")),
    }
}

/// What `usage` reports (its command-line options).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UsageArgs {
    /// First day to include, YYYY-MM-DD (default: the first of this month, UTC).
    #[arg(long)]
    pub since: Option<String>,
    /// Last day to include, YYYY-MM-DD (default: up to now).
    #[arg(long)]
    pub until: Option<String>,
    /// Group rows by user, chat, day or service (the model service that made the images, each
    /// priced at its own `backend.price_per_image`).
    #[arg(long, default_value = "day", value_parser = report_by)]
    pub by: ReportBy,
    /// `table`, `json` or `csv` (a header row, no total).
    #[arg(long, default_value = "table", value_parser = format)]
    pub format: Format,
}

/// One row as scripts read it: counts, and the money (each service's generated images × its
/// price, of it lost = its undelivered images × its price).
#[derive(Debug, Serialize)]
struct Row<'a> {
    key: &'a str,
    jobs: u64,
    delivered: u64,
    undelivered: u64,
    failed: u64,
    generated: u64,
    cost: f64,
    lost: f64,
}

impl<'a> Row<'a> {
    fn of(r: &'a ReportRow, price_of: &impl Fn(&str) -> f64) -> Self {
        let money = |count: fn(&ServiceUse) -> u64| {
            let sum: f64 = r
                .by_service
                .iter()
                .map(|s| count(s) as f64 * price_of(&s.service))
                .sum();
            round2(sum)
        };
        Row {
            key: &r.key,
            jobs: r.jobs,
            delivered: r.images,
            undelivered: r.undelivered,
            failed: r.failed,
            generated: r.generated,
            cost: money(|s| s.generated),
            lost: money(|s| s.undelivered),
        }
    }
}

/// Every row summed, its services' images too.
fn total_of(rows: &[ReportRow]) -> ReportRow {
    let mut total = ReportRow {
        key: "total".into(),
        jobs: 0,
        images: 0,
        failed: 0,
        generated: 0,
        undelivered: 0,
        by_service: Vec::new(),
    };
    let mut shares: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for r in rows {
        total.jobs += r.jobs;
        total.images += r.images;
        total.failed += r.failed;
        total.generated += r.generated;
        total.undelivered += r.undelivered;
        for s in &r.by_service {
            let share = shares.entry(&s.service).or_default();
            share.0 += s.generated;
            share.1 += s.undelivered;
        }
    }
    total.by_service = shares
        .into_iter()
        .map(|(service, (generated, undelivered))| ServiceUse {
            service: service.to_owned(),
            generated,
            undelivered,
        })
        .collect();
    total
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn day(value: &str, flag: &str) -> anyhow::Result<NaiveDate> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| anyhow::anyhow!("{flag} {value:?}: write a date as YYYY-MM-DD"))
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

/// The usage report of `args`.
pub async fn usage(settings: &Settings, args: UsageArgs) -> anyhow::Result<String> {
    let since = match &args.since {
        Some(s) => day(s, "--since")?,
        None => {
            let today = Utc::now().date_naive();
            today.with_day0(0).unwrap_or(today)
        }
    };
    let until = args
        .until
        .as_deref()
        .map(|u| day(u, "--until"))
        .transpose()?;
    if until.is_some_and(|u| u < since) {
        bail!("--until is before --since");
    }
    let until_t = until.and_then(|u| u.succ_opt()).map(midnight);
    let (since_t, by) = (midnight(since), args.by);
    let store = crate::app::existing_quotas(settings)?.store().clone();
    let rows = store.report(since_t, until_t, by, None).await?;
    let price = settings.config.quota.price_per_image;
    // Each service's images at its own price; images of services no longer configured (and
    // of jobs from before services were recorded) at quota.price_per_image.
    let price_of = |service: &str| {
        settings
            .config
            .backend
            .all()
            .iter()
            .find(|b| b.label() == service)
            .and_then(|b| b.price_per_image)
            .unwrap_or(price)
    };
    let total = total_of(&rows);
    let head = match by {
        ReportBy::User => "user",
        ReportBy::Chat => "chat",
        ReportBy::Day => "day",
        ReportBy::Service => "service",
    };
    let rows: Vec<Row<'_>> = rows.iter().map(|r| Row::of(r, &price_of)).collect();
    let total = Row::of(&total, &price_of);
    Ok(match args.format {
        Format::Table => table(head, since, until, &rows, &total),
        Format::Csv => csv(head, &rows),
        Format::Json => {
            let report = serde_json::json!({
                "since": since.to_string(),
                "until": until.map(|u| u.to_string()),
                "by": head,
                "price_per_image": price,
                "rows": rows,
                "total": total,
            });
            format!("{}\n", serde_json::to_string_pretty(&report)?)
        }
    })
}

fn table(
    head: &str,
    since: NaiveDate,
    until: Option<NaiveDate>,
    rows: &[Row<'_>],
    total: &Row<'_>,
) -> String {
    let mut out = match until {
        Some(u) => format!("since {since} until {u}\n"),
        None => format!("since {since}\n"),
    };
    out.push_str(&format!(
        "{head:<28} {:>8} {:>9} {:>11} {:>8} {:>9} {:>10} {:>10}\n",
        "jobs", "delivered", "undelivered", "failed", "generated", "cost", "lost"
    ));
    for r in rows.iter().chain(std::iter::once(total)) {
        out.push_str(&format!(
            "{:<28} {:>8} {:>9} {:>11} {:>8} {:>9} {:>10.2} {:>10.2}\n",
            r.key, r.jobs, r.delivered, r.undelivered, r.failed, r.generated, r.cost, r.lost
        ));
    }
    out
}

/// A header row, then one row per key (no total: scripts sum).
fn csv(head: &str, rows: &[Row<'_>]) -> String {
    let mut out = format!("{head},jobs,delivered,undelivered,failed,generated,cost,lost\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{:.2},{:.2}\n",
            csv_cell(r.key),
            r.jobs,
            r.delivered,
            r.undelivered,
            r.failed,
            r.generated,
            r.cost,
            r.lost
        ));
    }
    out
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
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

/// Runs a `quota` subcommand and returns what to print: one line, or JSON.
pub async fn quota(
    settings: &Settings,
    user: &str,
    action: QuotaAction,
    format: Format,
) -> anyhow::Result<String> {
    let user: UserRef = user.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let quotas = crate::app::existing_quotas(settings)?;
    match action {
        QuotaAction::Show => {}
        QuotaAction::Set(limit) => quotas.set_limit(&user, limit).await?,
        QuotaAction::Reset => quotas.reset(&user).await?,
        QuotaAction::Block => quotas.set_blocked(&user, true).await?,
        QuotaAction::Unblock => quotas.set_blocked(&user, false).await?,
    }
    if !matches!(action, QuotaAction::Show) {
        crate::store::mark_changed(&settings.config.quota.database).await;
    }
    let q = quotas.show(&user).await?;
    let window = settings.config.quota.window.as_str();
    match format {
        Format::Table => Ok(quota_line(&user, &q, window)),
        Format::Json => Ok(serde_json::to_string(&quota_json(&user, &q, window))?),
        Format::Csv => bail!("quota prints a line, or JSON with --format json"),
    }
}

fn quota_json(user: &UserRef, q: &UserQuota, window: &str) -> serde_json::Value {
    serde_json::json!({
        "user": user.to_string(),
        "used": q.used,
        "limit": q.limit,
        "own_limit": q.overridden,
        "remaining": q.remaining(),
        "window": window,
        "resets_at": q.resets_at.to_rfc3339(),
        "blocked": q.blocked,
    })
}

fn quota_line(user: &UserRef, q: &UserQuota, window: &str) -> String {
    let mut out = format!(
        "{user}: used {} of {}{} this {window} window, {} left, resets {}",
        q.used,
        q.limit,
        if q.overridden { " (own limit)" } else { "" },
        q.remaining(),
        messages::when(q.resets_at),
    );
    if q.blocked {
        out.push_str(", blocked");
    }
    out
}
