//! Opening a PostgreSQL store: checking the URL, building the pool, migrating the schema, and
//! turning driver errors into [`StoreError`]s that name the server but never the password.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

use crate::config::without_password;
use crate::core::ports::store::StoreError;

use super::{PgStore, schema};

/// Connections one process keeps at most (reserves serialize on a lock anyway; the rest are
/// short single statements).
const MAX_CONNECTIONS: usize = 16;
/// How long connecting may take before the store reports the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call waits for a free connection before it fails instead of hanging.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens the store at `url`, creating or migrating its schema.
/// How long a replica's claim on a job holds without renewal (`quota.job_lease_secs`).
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

pub fn open(url: &str) -> Result<PgStore, StoreError> {
    open_with(url, true)
}

/// Opens the store at `url` only if it holds our schema (the admin commands: a mistyped URL
/// must not quietly create an empty schema and report zeros); creates nothing.
pub fn open_existing(url: &str) -> Result<PgStore, StoreError> {
    open_with(url, false)
}

/// What makes `url` unusable as `quota.database`, one line each; never the password.
pub fn problems(url: &str, out: &mut Vec<String>) {
    const EXAMPLE: &str = "postgres://user:password@host:5432/database";
    match url::Url::parse(url) {
        Err(e) => out.push(format!(
            "quota.database is not a PostgreSQL URL ({e}); write it as {EXAMPLE}"
        )),
        Ok(u) if !matches!(u.scheme(), "postgres" | "postgresql") => out.push(format!(
            "quota.database = {:?}: a PostgreSQL URL starts with postgres:// or postgresql://",
            without_password(url)
        )),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => out.push(format!(
            "quota.database = {:?}: the URL names no host; write it as {EXAMPLE}",
            without_password(url)
        )),
        Ok(_) if url.parse::<tokio_postgres::Config>().is_err() => out.push(format!(
            "quota.database = {:?}: PostgreSQL does not accept this URL (check the port and \
             the options after '?')",
            without_password(url)
        )),
        Ok(_) => {}
    }
}

/// The connection settings of `url`, with our connect timeout unless it sets one, and the
/// server as messages name it.
fn config_of(url: &str) -> Result<(tokio_postgres::Config, String), StoreError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
        StoreError(format!(
            "{} is not a PostgreSQL connection URL (quota.database)",
            without_password(url)
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let target = target_of(&config);
    Ok((config, target))
}

/// One connection of its own (elected roles, change notices, `store copy`), outside the pool,
/// with the pool's timeout and error messages; the caller drives (or spawns) the connection.
pub(crate) async fn session(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    StoreError,
> {
    let (config, target) = config_of(url)?;
    config
        .connect(NoTls)
        .await
        .map_err(|e| StoreError(format!("cannot connect to {target}: {}", message(&e))))
}

fn open_with(url: &str, create: bool) -> Result<PgStore, StoreError> {
    let (config, target) = config_of(url)?;
    on_own_runtime(prepare(&config, &target, create))?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(MAX_CONNECTIONS)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(WAIT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError(format!("{target}: cannot build the connection pool: {e}")))?;
    Ok(PgStore {
        pool,
        target: target.into(),
        owner: format!("qeb-{}", uuid::Uuid::new_v4().simple()).into(),
        lease: DEFAULT_LEASE,
    })
}

/// Runs `work` to completion on a thread of its own with its own runtime: callers are
/// synchronous, and may or may not be inside a runtime already (where `block_on` would panic).
/// Whatever `work` connects lives and dies with that runtime; the pool connects afresh.
fn on_own_runtime<T: Send>(
    work: impl Future<Output = Result<T, StoreError>> + Send,
) -> Result<T, StoreError> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<T, StoreError> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| StoreError(format!("cannot start a runtime to migrate: {e}")))?;
                runtime.block_on(work)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(StoreError(
                    "the PostgreSQL migration thread panicked".into(),
                ))
            })
    })
}

/// Connects once, checks (`create` false) or brings the schema up to date, and disconnects.
async fn prepare(
    config: &tokio_postgres::Config,
    target: &str,
    create: bool,
) -> Result<(), StoreError> {
    let (mut client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| StoreError(format!("cannot connect to {target}: {}", message(&e))))?;
    let driver = tokio::spawn(connection);
    let result = schema::prepare(&mut client, target, create).await;
    // Dropping the client ends the connection cleanly; its driver then returns.
    drop(client);
    let _ = driver.await;
    result
}

/// `postgres://user@host:port/database` for messages, from the parsed configuration (so
/// key=value connection strings are named too); never the password.
fn target_of(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let database = config.get_dbname().or(config.get_user()).unwrap_or("");
    format!("postgres://{user}{}/{database}", hosts.join(","))
}

/// A driver error in words: its kind and its cause (the server's message for database errors;
/// the driver's `Display` gives only the kind). Neither ever holds the password.
pub(super) fn message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{e}: {db}");
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// A failed statement.
pub(super) fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError(message(&e))
}

/// No connection to be had: names the server, since that is what the operator must check.
pub(super) fn pool_error(target: &str, e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => StoreError(format!("{target}: {}", message(&e))),
        other => StoreError(format!("{target}: {other}")),
    }
}
