//! qwen-edit-bot: Qwen-Image-Edit for Discord and Telegram, with quotas.

pub mod app; // wiring: settings → store, backend, engine; the `run` daemon
pub mod backend; // the model-service adapters (DashScope)
pub mod cli; // the admin subcommands: edit, quota, usage, allow, health
pub mod config; // config.toml + env secrets
pub mod core; // platform-free logic: parsing, images, quotas, jobs
pub mod discord; // the Discord chat adapter (serenity)
pub mod http; // the operations endpoint: /healthz, /metrics
pub mod listen; // serving HTTP safely: timeouts, a connection cap
pub mod logging; // tracing setup (RUST_LOG, LOG_FORMAT=json)
pub mod memory; // allocator settings (large buffers go back to the OS)
pub mod messages; // every user-facing sentence, in English and Chinese
pub mod metrics; // Prometheus metrics and component health
pub mod process_metrics; // process_* metrics and qeb_build_info
pub mod store; // the store adapters (SQLite)
pub mod telegram; // the Telegram chat adapter (teloxide)
