//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), one JSON object per
//! line when `LOG_FORMAT=json`, coloured only on a terminal without `NO_COLOR`. HTTP, websocket and chat client crates are capped at `info`, so
//! no request URL (Telegram's contain the bot token) or gateway payload (Discord's IDENTIFY holds
//! the token) is ever logged.

use tracing_subscriber::EnvFilter;

/// Crates kept at `info` at most (see [`init`]).
pub const QUIET: [&str; 11] = [
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "teloxide_core",
    "teloxide",
    "tungstenite",
    "tokio_tungstenite",
    "serenity",
    "async_tungstenite",
];

/// Colour only on a terminal, and never with `NO_COLOR` set (journald, `docker logs`, files
/// and pipes get plain text).
fn colour() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. Safe to call once per process.
pub fn init() {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // HTTP-level crates log request URLs at debug/trace, and Telegram URLs contain the bot token:
    // they never log below info, whatever RUST_LOG says.
    for target in QUIET {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().with_current_span(true).try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
}

/// Panics are logged through `tracing` (one structured line, the file name without the build
/// machine's path) instead of the raw text on stderr. A decoder panic on a crafted image is
/// caught where it happens (`core::pipeline::fit_guarded`) and answered as a damaged image.
pub fn route_panics() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| {
            let file = std::path::Path::new(l.file())
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
            format!("{file}:{}", l.line())
        });
        tracing::error!(panic = %what, at = at.unwrap_or_default(), "panic");
    }));
}
