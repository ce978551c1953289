//! Command line (SPEC §2) → the library. Nothing else lives here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qwen_edit_bot::cli::{self, AllowAction, EditArgs, QuotaAction};
use qwen_edit_bot::config::Settings;

/// Qwen-Image-Edit for Discord and Telegram, with quotas.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bot: every enabled platform, the job workers and the HTTP endpoint.
    Run {
        /// Configuration file.
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// One edit through the configured backend, no chat platform; writes the PNG(s).
    Edit {
        /// 1 to 3 input images (JPEG, PNG, WEBP, GIF, BMP, TIFF).
        #[arg(required = true, num_args = 1..=3)]
        images: Vec<PathBuf>,
        /// The edit instruction (at most 800 characters).
        #[arg(long)]
        prompt: String,
        /// What to avoid (at most 500 characters).
        #[arg(long)]
        negative: Option<String>,
        /// Seed, 0 to 2147483647.
        #[arg(long)]
        seed: Option<String>,
        /// Number of images, 1 to 6 (plus/max models).
        #[arg(short = 'n', long = "n")]
        n: Option<String>,
        /// Output size WxH, each side 512 to 2048 (plus/max models), e.g. 1024x1536.
        #[arg(long)]
        size: Option<String>,
        /// Output path; with several results, -1, -2, … are added to the name.
        #[arg(long, default_value = "edited.png")]
        out: PathBuf,
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Validate the config and environment; print the effective config with secrets redacted.
    CheckConfig {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Show or change a user's quota. USER is platform:id, e.g. telegram:12345.
    Quota {
        #[command(subcommand)]
        action: QuotaCommand,
        #[arg(long, default_value = "config.toml", global = true)]
        config: PathBuf,
    },
    /// Where the bot answers: allow a Telegram group or Discord server (PLACE is
    /// telegram:<chat id> or discord:<server id>), on top of the config's lists.
    Allow {
        #[command(subcommand)]
        action: AllowCommand,
        #[arg(long, default_value = "config.toml", global = true)]
        config: PathBuf,
    },
    /// Usage and cost report from the job ledger.
    Usage {
        /// First day to include, YYYY-MM-DD (default: the first of this month, UTC).
        #[arg(long)]
        since: Option<String>,
        /// Group rows by user, chat or day.
        #[arg(long, default_value = "day", value_parser = cli::report_by)]
        by: qwen_edit_bot::core::quota::ReportBy,
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum QuotaCommand {
    /// Used, limit and reset time in the current window.
    Show { user: String },
    /// Give the user their own limit per window ("default" removes it).
    Set { user: String, limit: String },
    /// Forget the user's usage so far in this window.
    Reset { user: String },
    /// Refuse every request of the user.
    Block { user: String },
    /// Lift a block.
    Unblock { user: String },
}

#[derive(Subcommand)]
enum AllowCommand {
    /// Allow a place; the running bot answers there within a second.
    Add { place: String },
    /// No longer allow a place added with `allow add`.
    Remove { place: String },
    /// Print where the bot answers (config and store merged).
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    qwen_edit_bot::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn load(path: &Path) -> anyhow::Result<Settings> {
    Ok(Settings::load(path)?)
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => qwen_edit_bot::app::run(load(&config)?).await?,
        Command::CheckConfig { config } => return Ok(check_config(&config)),
        Command::Edit {
            images,
            prompt,
            negative,
            seed,
            n,
            size,
            out,
            config,
        } => {
            let settings = load(&config)?;
            let args = EditArgs {
                images,
                prompt,
                negative,
                seed,
                n,
                size,
                out,
            };
            for path in cli::edit(&settings, args).await? {
                println!("{}", path.display());
            }
        }
        Command::Quota { action, config } => {
            let settings = load(&config)?;
            let (user, action) = match action {
                QuotaCommand::Show { user } => (user, QuotaAction::Show),
                QuotaCommand::Set { user, limit } => (user, QuotaAction::Set(parse_limit(&limit)?)),
                QuotaCommand::Reset { user } => (user, QuotaAction::Reset),
                QuotaCommand::Block { user } => (user, QuotaAction::Block),
                QuotaCommand::Unblock { user } => (user, QuotaAction::Unblock),
            };
            println!("{}", cli::quota(&settings, &user, action).await?);
        }
        Command::Allow { action, config } => {
            let settings = load(&config)?;
            let action = match action {
                AllowCommand::Add { place } => AllowAction::Add(place),
                AllowCommand::Remove { place } => AllowAction::Remove(place),
                AllowCommand::List => AllowAction::List,
            };
            print!("{}", cli::allow(&settings, action).await?);
        }
        Command::Usage { since, by, config } => {
            let settings = load(&config)?;
            print!("{}", cli::usage(&settings, since.as_deref(), by).await?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_limit(s: &str) -> anyhow::Result<Option<u32>> {
    if s == "default" {
        return Ok(None);
    }
    s.parse::<u32>()
        .map(Some)
        .map_err(|_| anyhow::anyhow!("limit {s:?}: give a whole number, or \"default\""))
}

fn check_config(path: &Path) -> ExitCode {
    let settings = match Settings::load(path) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    let problems = settings.problems();
    if problems.is_empty() {
        print!("{}", settings.redacted());
        print!("{}", cli::places_report(&settings));
        return ExitCode::SUCCESS;
    }
    for p in &problems {
        eprintln!("error: {p}");
    }
    ExitCode::FAILURE
}
