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

#[derive(Subcommand)]
enum Command {
    /// Run the bot: every enabled platform, the job workers and the HTTP endpoint.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// One edit through the configured backend, no chat platform; writes the PNG(s).
    Edit {
        #[command(flatten)]
        args: EditArgs,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate the config and environment exactly as `run` does; print the effective config
    /// with secrets redacted, and where the bot answers.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
        /// Also call each model service once in a way that costs nothing (ComfyUI
        /// /system_stats, OpenAI /models, DashScope an authenticated task lookup) and say what
        /// it found; fails when one cannot be reached or refuses the key.
        #[arg(long)]
        probe: bool,
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
    Usage {
        #[command(flatten)]
        args: UsageArgs,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Probe a running daemon's GET /livez (exit 0 when it answers 200): Docker's HEALTHCHECK.
    Health {
        /// The URL to probe (default: /livez on http.listen of the config).
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Move the store: copy a SQLite store into an empty PostgreSQL database.
    Store {
        #[command(subcommand)]
        action: StoreCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy the ledger, settings, allowed places and albums of a SQLite store into an empty
    /// PostgreSQL database, in one transaction; refused while a bot runs on the file.
    Copy {
        /// The SQLite file (quota.database of the old install).
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL database, postgres://user:password@host:port/db.
        #[arg(long)]
        to: String,
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
        Command::CheckConfig { config, probe } => {
            return Ok(check_config(&config.config, probe).await);
        }
        Command::Edit { args, config } => {
            for path in cli::edit(&load(&config.config)?, args).await? {
                println!("{}", path.display());
            }
        }
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
        Command::Usage { args, config } => {
            print!("{}", cli::usage(&load(&config.config)?, args).await?);
        }
        Command::Health { url, config } => return cli::health(&config.config, url).await,
        Command::Store {
            action: StoreCommand::Copy { from, to },
        } => {
            for (table, rows) in qwen_edit_bot::store::copy::copy(&from, &to).await? {
                println!("{table}: {rows} rows");
            }
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "qwen-edit-bot", &mut std::io::stdout());
        }
    }
    Ok(ExitCode::SUCCESS)
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

async fn check_config(path: &Path, probe: bool) -> ExitCode {
    let settings = match Settings::load(path) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    let problems = qwen_edit_bot::app::problems(&settings);
    if problems.is_empty() {
        print!("{}", settings.redacted());
        print!("{}", cli::replicas_report(&settings));
        print!("{}", cli::places_report(&settings).await);
        if !probe {
            return ExitCode::SUCCESS;
        }
        let mut code = ExitCode::SUCCESS;
        for (name, said) in qwen_edit_bot::app::probe(&settings).await {
            match said {
                Ok(found) => println!("probe {name}: {found}"),
                Err(e) => {
                    eprintln!("error: probe {name}: {e}");
                    code = ExitCode::FAILURE;
                }
            }
        }
        return code;
    }
    for p in &problems {
        eprintln!("error: {p}");
    }
    ExitCode::FAILURE
}
