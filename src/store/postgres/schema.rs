//! The PostgreSQL schema as an ordered list of migrations, each applied once, in its own
//! transaction, under an advisory lock so that replicas starting together do not race.
//!
//! Times are BIGINT milliseconds and JSON is TEXT, as in the SQLite store, so both stores share
//! their SQL's meaning (and no chrono or JSON support is needed from the driver).

use chrono::Utc;
use tokio_postgres::Client;

use crate::core::ports::store::StoreError;

use super::connect::message;

/// The advisory lock key migrations run under ("qeb-mig"), apart from the reserve lock and
/// the elected roles' locks.
const MIGRATION_LOCK: i64 = 0x0071_6562_2d6d_6967;

/// Which migrations a database has had.
const TRACKING: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    applied_at BIGINT NOT NULL
)";

/// Version 1: everything the SQLite store has today, plus job leases (`owner`, `lease_until`)
/// for replicas sharing the database.
const V1: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    platform    TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    chat_id     TEXT NOT NULL,
    group_id    TEXT,
    model       TEXT NOT NULL,
    cost        BIGINT NOT NULL,
    status      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT,
    request_id  TEXT,
    error       TEXT,
    prompt      TEXT,
    spec        TEXT,
    result_urls TEXT,
    attempts    BIGINT NOT NULL DEFAULT 0,
    -- false while a failed job's user has not been told yet
    told        BOOLEAN NOT NULL DEFAULT TRUE,
    -- images the backend made for the job (spent money, delivered or not)
    generated   BIGINT NOT NULL DEFAULT 0,
    -- the unguessable id in the result's 🔁 button, and the message that carries it
    token          TEXT,
    result_chat    TEXT,
    result_message TEXT,
    -- the configured service (backend.name) that made the images, when several are configured
    service        TEXT,
    -- the replica working on the unfinished job, and until when its claim holds
    owner          TEXT,
    lease_until    BIGINT
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (status) WHERE status IN ('queued','running','ready');
CREATE INDEX IF NOT EXISTS jobs_user ON jobs (platform, user_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_group ON jobs (platform, group_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_time ON jobs (created_at);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_token ON jobs (token) WHERE token IS NOT NULL;
CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY, checked_at BIGINT NOT NULL);
-- parts of chat albums being collected (a message each, as JSON), until their job is stored
CREATE TABLE IF NOT EXISTS album_parts (
    seq       BIGSERIAL PRIMARY KEY,
    group_key TEXT NOT NULL,
    part_id   TEXT NOT NULL,
    part      TEXT NOT NULL,
    UNIQUE (group_key, part_id)
);
-- chats and servers the operator allowed from the CLI (`allow add`), on top of the config's
CREATE TABLE IF NOT EXISTS allowed_places (
    platform TEXT NOT NULL,
    place    TEXT NOT NULL,
    PRIMARY KEY (platform, place)
);
CREATE TABLE IF NOT EXISTS users (
    platform       TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    -- '' for the whole bot (operators, CLI); a group or guild id for that chat's admins
    scope          TEXT NOT NULL DEFAULT '',
    limit_override BIGINT,
    blocked        BOOLEAN NOT NULL DEFAULT FALSE,
    reset_at       BIGINT,
    -- an operator's reset: only jobs with a larger seq count (bot-wide rows only)
    reset_seq      BIGINT,
    PRIMARY KEY (platform, user_id, scope)
);
";

/// Version 2: the messages that stand for a job in its chat until its result replaces them
/// (JSON of `core::ports::chat::Placeholder`).
const V2: &str = "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS placeholder TEXT";

/// Every migration, oldest first. Append only: a version, once released, never changes.
const MIGRATIONS: &[(i32, &str)] = &[(1, V1), (2, V2)];

/// Brings the database named `target` (for messages) up to date; with `create` false, a
/// database without our schema is an error and nothing is created.
pub(super) async fn prepare(
    client: &mut Client,
    target: &str,
    create: bool,
) -> Result<(), StoreError> {
    if !create && !has_schema(client).await.map_err(|e| failed(target, &e))? {
        return Err(StoreError(format!(
            "there is no qwen-edit-bot schema in {target} (quota.database); the daemon creates \
             it when it first runs: check the URL and the --config file"
        )));
    }
    for &(version, sql) in MIGRATIONS {
        apply(client, version, sql).await.map_err(|e| {
            StoreError(format!(
                "{target}: schema migration {version} failed: {}",
                message(&e)
            ))
        })?;
    }
    Ok(())
}

fn failed(target: &str, e: &tokio_postgres::Error) -> StoreError {
    StoreError(format!("{target}: {}", message(e)))
}

/// Whether the database holds our jobs table (admin commands must not create an empty one).
async fn has_schema(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT to_regclass('jobs') IS NOT NULL", &[])
        .await?;
    row.try_get(0)
}

/// Applies one migration unless it was, in one transaction: the lock makes a second replica
/// wait, then find the version recorded and skip it.
async fn apply(client: &mut Client, version: i32, sql: &str) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(TRACKING).await?;
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)",
            &[&version],
        )
        .await?;
    let applied: bool = row.try_get(0)?;
    if !applied {
        tx.batch_execute(sql).await?;
        let now = Utc::now().timestamp_millis();
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&version, &now],
        )
        .await?;
    }
    tx.commit().await
}
