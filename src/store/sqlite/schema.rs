//! The SQLite schema and its migrations from databases made by earlier versions.

use rusqlite::Connection;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    platform    TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    chat_id     TEXT NOT NULL,
    group_id    TEXT,
    model       TEXT NOT NULL,
    cost        INTEGER NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    request_id  TEXT,
    error       TEXT,
    prompt      TEXT,
    spec        TEXT,
    result_urls TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    -- 0 while a failed job's user has not been told yet
    told        INTEGER NOT NULL DEFAULT 1,
    -- images the backend made for the job (spent money, delivered or not)
    generated   INTEGER NOT NULL DEFAULT 0,
    -- the unguessable id in the result's 🔁 button, and the message that carries it
    token          TEXT,
    result_chat    TEXT,
    result_message TEXT,
    -- the configured service (backend.name) that made the images, when several are configured
    service        TEXT,
    -- the messages that stand for the job in its chat until its result replaces them (JSON)
    placeholder    TEXT
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (status) WHERE status IN ('queued','running','ready');
CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY, checked_at INTEGER NOT NULL);
-- parts of chat albums being collected (a message each, as JSON), until their job is stored
CREATE TABLE IF NOT EXISTS album_parts (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
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
CREATE INDEX IF NOT EXISTS jobs_user ON jobs (platform, user_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_group ON jobs (platform, group_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_time ON jobs (created_at);
CREATE TABLE IF NOT EXISTS users (
    platform       TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    -- '' for the whole bot (operators, CLI); a group or guild id for that chat's admins
    scope          TEXT NOT NULL DEFAULT '',
    limit_override INTEGER,
    blocked        INTEGER NOT NULL DEFAULT 0,
    reset_at       INTEGER,
    -- an operator's reset: only jobs with a larger seq count (bot-wide rows only)
    reset_seq      INTEGER,
    PRIMARY KEY (platform, user_id, scope)
);
";

/// Indexes on columns that [`migrate`] may have to add first.
const LATE_INDEXES: &str =
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_token ON jobs (token) WHERE token IS NOT NULL;";

/// Brings a database made by an earlier version up to [`SCHEMA`] (which `CREATE TABLE IF NOT
/// EXISTS` leaves alone): job columns added since, and per-scope user settings.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has = |table: &str, column: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    for (column, definition) in [
        ("result_urls", "TEXT"),
        ("attempts", "INTEGER NOT NULL DEFAULT 0"),
        ("told", "INTEGER NOT NULL DEFAULT 1"),
        ("generated", "INTEGER NOT NULL DEFAULT 0"),
        ("token", "TEXT"),
        ("result_chat", "TEXT"),
        ("result_message", "TEXT"),
        ("service", "TEXT"),
        ("placeholder", "TEXT"),
    ] {
        if !has("jobs", column)? {
            conn.execute_batch(&format!(
                "ALTER TABLE jobs ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    if !has("users", "scope")? {
        // The key gains `scope`: rebuild the table; old settings become bot-wide ('').
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE users RENAME TO users_before_scope;
             CREATE TABLE users (
                 platform TEXT NOT NULL, user_id TEXT NOT NULL, scope TEXT NOT NULL DEFAULT '',
                 limit_override INTEGER, blocked INTEGER NOT NULL DEFAULT 0, reset_at INTEGER,
                 PRIMARY KEY (platform, user_id, scope));
             INSERT INTO users (platform, user_id, scope, limit_override, blocked, reset_at)
                 SELECT platform, user_id, '', limit_override, blocked, reset_at
                 FROM users_before_scope;
             DROP TABLE users_before_scope;
             COMMIT;",
        )?;
    }
    if !has("users", "reset_seq")? {
        // Resets were times; they become positions in the job sequence. A chat admin's reset is
        // no longer a rule (only operators forgive usage), so only bot-wide ones carry over.
        conn.execute_batch(
            "ALTER TABLE users ADD COLUMN reset_seq INTEGER;
             UPDATE users SET reset_seq =
                 (SELECT COALESCE(MAX(seq), 0) FROM jobs WHERE jobs.created_at < users.reset_at)
             WHERE reset_at IS NOT NULL AND scope = '';",
        )?;
    }
    conn.execute_batch(LATE_INDEXES)
}
