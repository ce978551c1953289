//! Command line (docs/PRODUCT.md §2) → the library. Nothing else lives here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use qwen_edit_bot::cli::{self, AllowAction, EditArgs, Format, QuotaAction, UsageArgs};
use qwen_edit_bot::config::Settings;

/// The version line: the crate version, the git commit and the build date.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("QEB_GIT_COMMIT"),
    ", built ",
    env!("QEB_BUILD_DATE"),
    ")"
);

/// Qwen-Image-Edit for Discord and Telegram, with quotas.
#[derive(Parser)]
#[command(version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--config PATH`, shared by every subcommand that reads the configuration.
#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file (a relative quota.database is taken from its folder).
    #[arg(long, default_value = "config.toml", global = true)]
    config: PathBuf,
}

/// The arguments of `edit`.
#[derive(clap::Args)]
struct EditFlags {
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
    #[arg(long, allow_hyphen_values = true)]
    seed: Option<String>,
    /// Number of images, 1 to 6 (plus/max models).
    #[arg(short = 'n', long = "n", allow_hyphen_values = true)]
    n: Option<String>,
    /// Output size WxH, each side 512 to 2048 (plus/max models), e.g. 1024x1536.
    #[arg(long)]
    size: Option<String>,
    /// Output path; with several results, -1, -2, … are added to the name.
    #[arg(long, default_value = "edited.png")]
    out: PathBuf,
    #[command(flatten)]
    config: ConfigArg,
}

/// The arguments of `usage`.
#[derive(clap::Args)]
struct UsageFlags {
    /// First day to include, YYYY-MM-DD (default: the first of this month, UTC).
    #[arg(long)]
    since: Option<String>,
    /// Last day to include, YYYY-MM-DD (default: up to now).
    #[arg(long)]
    until: Option<String>,
    /// Group rows by user, chat or day.
    #[arg(long, default_value = "day", value_parser = cli::report_by)]
    by: qwen_edit_bot::core::ports::store::ReportBy,
    /// `table`, `json` or `csv` (a header row, no total).
    #[arg(long, default_value = "table", value_parser = cli::format)]
    format: Format,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bot: every enabled platform, the job workers and the HTTP endpoint.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// One edit through the configured backend, no chat platform; writes the PNG(s).
    Edit(EditFlags),
    /// Validate the config and environment exactly as `run` does; print the effective config
    /// with secrets redacted, and where the bot answers.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show or change a user's quota. USER is platform:id, e.g. telegram:12345.
    Quota {
        #[command(subcommand)]
        action: QuotaCommand,
        /// `table` (one line) or `json`.
        #[arg(long, default_value = "table", value_parser = cli::format, global = true)]
        format: Format,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Where the bot answers: allow a Telegram group or Discord server (PLACE is
    /// telegram:<chat id> or discord:<server id>), on top of the config's lists.
    Allow {
        #[command(subcommand)]
        action: AllowCommand,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Usage and cost report from the job ledger.
    Usage(UsageFlags),
    /// Probe a running daemon's GET /livez (exit 0 when it answers 200): Docker's HEALTHCHECK.
    Health {
        /// The URL to probe (default: /livez on http.listen of the config).
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum QuotaCommand {
    /// Used, limit and reset time in the current window.
    Show {
        /// platform:id, e.g. telegram:12345.
        user: String,
    },
    /// Give the user their own limit per window ("default" removes it).
    Set {
        /// platform:id, e.g. telegram:12345.
        user: String,
        /// Edits per window, or "default".
        limit: String,
    },
    /// Forget the user's usage so far in this window.
    Reset {
        /// platform:id, e.g. telegram:12345.
        user: String,
    },
    /// Refuse every request of the user.
    Block {
        /// platform:id, e.g. telegram:12345.
        user: String,
    },
    /// Lift a block.
    Unblock {
        /// platform:id, e.g. telegram:12345.
        user: String,
    },
}

#[derive(Subcommand)]
enum AllowCommand {
    /// Allow a place; the running bot answers there within a second.
    Add {
        /// telegram:<chat id> or discord:<server id>.
        place: String,
    },
    /// No longer allow a place added with `allow add`.
    Remove {
        /// telegram:<chat id> or discord:<server id>.
        place: String,
    },
    /// Print where the bot answers (config and store merged).
    List,
}

fn main() -> ExitCode {
    qwen_edit_bot::memory::tune_allocator();
    let cli = Cli::parse();
    qwen_edit_bot::logging::init();
    qwen_edit_bot::logging::route_panics();
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
        Command::Run { config } => qwen_edit_bot::app::run(load(&config.config)?).await?,
        Command::CheckConfig { config } => return Ok(check_config(&config.config)),
        Command::Edit(flags) => edit(flags).await?,
        Command::Quota {
            action,
            format,
            config,
        } => {
            let settings = load(&config.config)?;
            let (user, action) = quota_action(action)?;
            println!("{}", cli::quota(&settings, &user, action, format).await?);
        }
        Command::Allow { action, config } => {
            let settings = load(&config.config)?;
            let action = match action {
                AllowCommand::Add { place } => AllowAction::Add(place),
                AllowCommand::Remove { place } => AllowAction::Remove(place),
                AllowCommand::List => AllowAction::List,
            };
            print!("{}", cli::allow(&settings, action).await?);
        }
        Command::Usage(flags) => usage(flags).await?,
        Command::Health { url, config } => return cli::health(&config.config, url).await,
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "qwen-edit-bot", &mut std::io::stdout());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `edit`: the paths of the results, one a line.
async fn edit(flags: EditFlags) -> anyhow::Result<()> {
    let settings = load(&flags.config.config)?;
    let args = EditArgs {
        images: flags.images,
        prompt: flags.prompt,
        negative: flags.negative,
        seed: flags.seed,
        n: flags.n,
        size: flags.size,
        out: flags.out,
    };
    for path in cli::edit(&settings, args).await? {
        println!("{}", path.display());
    }
    Ok(())
}

/// `usage`: the report, as asked.
async fn usage(flags: UsageFlags) -> anyhow::Result<()> {
    let settings = load(&flags.config.config)?;
    let args = UsageArgs {
        since: flags.since,
        until: flags.until,
        by: flags.by,
        format: flags.format,
    };
    print!("{}", cli::usage(&settings, args).await?);
    Ok(())
}

fn quota_action(action: QuotaCommand) -> anyhow::Result<(String, QuotaAction)> {
    Ok(match action {
        QuotaCommand::Show { user } => (user, QuotaAction::Show),
        QuotaCommand::Set { user, limit } => (user, QuotaAction::Set(parse_limit(&limit)?)),
        QuotaCommand::Reset { user } => (user, QuotaAction::Reset),
        QuotaCommand::Block { user } => (user, QuotaAction::Block),
        QuotaCommand::Unblock { user } => (user, QuotaAction::Unblock),
    })
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
    let problems = qwen_edit_bot::app::problems(&settings);
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
