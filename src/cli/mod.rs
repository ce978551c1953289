//! Admin subcommands that work without a chat: `edit` here, `quota …` and `usage` in
//! `report`, `allow …` in `allow`.

mod allow;
mod health;
mod replicas;
mod report;

pub use allow::{AllowAction, allow, places_report};
pub use health::health;
pub use replicas::replicas_report;
pub use report::{Format, QuotaAction, UsageArgs, format, quota, report_by, usage};

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use chrono::Utc;

use crate::config::Settings;
use crate::core::command::{EditCommand, MAX_PROMPT_CHARS};
use crate::core::error::FailureReason;
use crate::core::jobs::{Delivery, MAX_INPUTS};
use crate::core::model::{Platform, UserRef};
use crate::core::pipeline::execute;
use crate::core::ports::model::EditService;
use crate::core::ports::store::{JobStatus, Store};
use crate::core::quota::{Limits, Reservation, Window};
use crate::messages::{self, Lang};

/// Arguments of `edit` (its command-line options).
#[derive(Debug, Clone, clap::Args)]
pub struct EditArgs {
    /// 1 to 3 input images (JPEG, PNG, WEBP, GIF, BMP, TIFF).
    #[arg(required = true, num_args = 1..=3)]
    pub images: Vec<PathBuf>,
    /// The edit instruction (at most 800 characters).
    #[arg(long)]
    pub prompt: String,
    /// What to avoid (at most 500 characters).
    #[arg(long)]
    pub negative: Option<String>,
    /// Seed, 0 to 2147483647.
    #[arg(long, allow_hyphen_values = true)]
    pub seed: Option<String>,
    /// Number of images, 1 to 6 (plus/max models).
    #[arg(short = 'n', long = "n", allow_hyphen_values = true)]
    pub n: Option<String>,
    /// Output size WxH, each side 512 to 2048 (plus/max models), e.g. 1024x1536.
    #[arg(long)]
    pub size: Option<String>,
    /// Output path; with several results, -1, -2, … are added to the name.
    #[arg(long, default_value = "edited.png")]
    pub out: PathBuf,
}

/// One edit through the configured backend; writes the results and prints their paths.
pub async fn edit(settings: &Settings, args: EditArgs) -> anyhow::Result<Vec<PathBuf>> {
    if args.images.is_empty() || args.images.len() > MAX_INPUTS {
        bail!("give 1 to {MAX_INPUTS} images (got {})", args.images.len());
    }
    let backend = crate::app::backend(settings)?;
    let command = command_of(settings, &args, backend.as_ref())?;
    let limits = crate::app::fit_limits(backend.as_ref());
    let mut inputs = Vec::with_capacity(args.images.len());
    for path in &args.images {
        inputs.push(read_input(path, limits.max_input_bytes)?);
    }
    let negative = command.negative.clone().or_else(|| {
        Some(
            settings
                .config
                .backend
                .primary()
                .default_negative_prompt
                .clone(),
        )
        .filter(|s| !s.is_empty())
    });
    let store = crate::app::quotas(settings)?.store().clone();
    let job_id = record_start(store.as_ref(), backend.model(), u32::from(command.count())).await?;
    let result = execute(
        backend.as_ref(),
        &limits,
        inputs,
        &command,
        negative,
        store.as_ref(),
        &job_id,
    )
    .await;
    record_end(store.as_ref(), &job_id, &result).await?;
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

/// The edit the arguments ask for, checked against what the model can do.
fn command_of(
    settings: &Settings,
    args: &EditArgs,
    backend: &dyn EditService,
) -> anyhow::Result<EditCommand> {
    let mut command = EditCommand::from_parts(
        &args.prompt,
        args.negative.as_deref(),
        args.seed.as_deref(),
        args.n.as_deref(),
    )
    .and_then(|c| c.with_size(args.size.as_deref()))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if command.truncated {
        eprintln!("note: the prompt was cut to {MAX_PROMPT_CHARS} characters");
    }
    command.size = command.size.or(settings
        .config
        .backend
        .primary()
        .default_size()
        .ok()
        .flatten());
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
    Ok(command)
}

/// Records how a CLI edit ended: delivered (charged what was made) or failed.
async fn record_end(
    store: &dyn Store,
    job_id: &str,
    result: &Result<Delivery, FailureReason>,
) -> anyhow::Result<()> {
    match result {
        Ok(d) => {
            let (images, request_id) = (d.images.len() as u32, d.request_id.as_deref());
            store
                .deliver(job_id, images, request_id, None, Utc::now())
                .await
        }
        Err(reason) => {
            let (failed, code) = (JobStatus::Failed, reason.code());
            store
                .finish(job_id, failed, None, Some(&code), Utc::now())
                .await
        }
    }?;
    Ok(())
}

/// Records a CLI edit in the ledger (it costs money like any other), outside every quota.
async fn record_start(store: &dyn Store, model: &str, cost: u32) -> anyhow::Result<String> {
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
        admission: crate::core::quota::Admission::NONE,
    };
    let unlimited = Limits {
        per_user: u32::MAX,
        window: Window::Day,
        per_chat: 0,
        global_per_day: 0,
    };
    store
        .reserve(&r, &unlimited, Utc::now())
        .await?
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
