//! `store copy --from <sqlite file> --to postgres://…`: moves an install from its SQLite file to
//! PostgreSQL — the ledger (every job, with its sequence numbers, which resets refer to), the
//! users' settings, the allowed places and album parts being collected — in one transaction.
//!
//! It refuses while a bot runs on the file (it takes the same lock a bot takes, and keeps it
//! until the copy is done, so none starts meanwhile) and refuses a target that already holds
//! jobs, settings or places: a copy never merges two ledgers.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use tokio_postgres::types::ToSql;

/// How a column is read from SQLite and written to PostgreSQL.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Text,
    /// 0/1 in SQLite, BOOLEAN in PostgreSQL.
    Bool,
}

/// One table: its name and its columns.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
}

use Kind::{Bool, Int, Text};

const TABLES: &[Table] = &[
    Table {
        name: "jobs",
        columns: &[
            ("seq", Int),
            ("id", Text),
            ("platform", Text),
            ("user_id", Text),
            ("chat_id", Text),
            ("group_id", Text),
            ("model", Text),
            ("cost", Int),
            ("status", Text),
            ("created_at", Int),
            ("started_at", Int),
            ("finished_at", Int),
            ("request_id", Text),
            ("error", Text),
            ("prompt", Text),
            ("spec", Text),
            ("result_urls", Text),
            ("attempts", Int),
            ("told", Bool),
            ("generated", Int),
            ("token", Text),
            ("result_chat", Text),
            ("result_message", Text),
            ("service", Text),
        ],
    },
    Table {
        name: "users",
        columns: &[
            ("platform", Text),
            ("user_id", Text),
            ("scope", Text),
            ("limit_override", Int),
            ("blocked", Bool),
            ("reset_at", Int),
            ("reset_seq", Int),
        ],
    },
    Table {
        name: "allowed_places",
        columns: &[("platform", Text), ("place", Text)],
    },
    Table {
        name: "album_parts",
        columns: &[
            ("seq", Int),
            ("group_key", Text),
            ("part_id", Text),
            ("part", Text),
        ],
    },
];

/// Rows moved per table, in [`TABLES`]' order.
pub type Copied = Vec<(&'static str, u64)>;

/// Copies the SQLite store at `from` into the PostgreSQL database at `to`.
pub async fn copy(from: &Path, to: &str) -> anyhow::Result<Copied> {
    let shown = from.display().to_string();
    // Made current (migrated) first, so every column below exists; refuses a file that is not
    // one of ours.
    super::sqlite::SqliteStore::open_existing(from)?;
    let _held = super::lock(&shown).await.map_err(|_| {
        anyhow::anyhow!("a qwen-edit-bot is running on {shown}: stop it before copying its store")
    })?;
    let target = super::postgres::open(to)?;
    let mut client = target.client().await?;
    let tx = client.transaction().await?;
    for t in TABLES {
        let row = tx
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {})", t.name), &[])
            .await?;
        if row.get::<_, bool>(0) {
            anyhow::bail!(
                "{} already holds {}: copy into an empty database",
                crate::config::without_password(to),
                t.name
            );
        }
    }
    let sqlite = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut copied = Vec::new();
    for table in TABLES {
        copied.push((table.name, copy_table(&sqlite, &tx, table).await?));
    }
    for table in ["jobs", "album_parts"] {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'seq'),
                               COALESCE((SELECT MAX(seq) FROM {table}), 0) + 1, false)"
            ),
            &[],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(copied)
}

/// Rows read from SQLite and written to PostgreSQL per round.
const CHUNK: i64 = 1000;

/// Copies one table, [`CHUNK`] rows at a time in rowid order (memory stays bounded, and each
/// chunk starts where the last ended, however large the ledger).
async fn copy_table(
    sqlite: &Connection,
    tx: &tokio_postgres::Transaction<'_>,
    t: &Table,
) -> anyhow::Result<u64> {
    let names: Vec<&str> = t.columns.iter().map(|(n, _)| *n).collect();
    let select = format!(
        "SELECT rowid, {} FROM {} WHERE rowid > ?2 ORDER BY rowid LIMIT ?1",
        names.join(", "),
        t.name
    );
    let marks: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    let insert = tx
        .prepare(&format!(
            "INSERT INTO {} ({}) VALUES ({})",
            t.name,
            names.join(", "),
            marks.join(", ")
        ))
        .await?;
    let (mut done, mut after) = (0u64, 0i64);
    loop {
        let rows = read_chunk(sqlite, &select, t, after)?;
        let Some((last, _)) = rows.last() else {
            return Ok(done);
        };
        after = *last;
        for (_, row) in &rows {
            let params: Vec<&(dyn ToSql + Sync)> = row.iter().map(Cell::as_sql).collect();
            tx.execute(&insert, &params).await?;
        }
        done += rows.len() as u64;
    }
}

/// One value on its way.
enum Cell {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(bool),
}

impl Cell {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::Int(v) => v,
            Cell::Text(v) => v,
            Cell::Bool(v) => v,
        }
    }
}

/// Up to [`CHUNK`] rows after rowid `after`, each with its rowid.
fn read_chunk(
    sqlite: &Connection,
    select: &str,
    t: &Table,
    after: i64,
) -> rusqlite::Result<Vec<(i64, Vec<Cell>)>> {
    let mut stmt = sqlite.prepare_cached(select)?;
    let rows = stmt.query_map([CHUNK, after], |r| {
        let cells = t
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, kind))| {
                let i = i + 1;
                Ok(match kind {
                    Kind::Int => Cell::Int(r.get(i)?),
                    Kind::Text => Cell::Text(r.get(i)?),
                    Kind::Bool => Cell::Bool(r.get::<_, Option<i64>>(i)?.unwrap_or(0) != 0),
                })
            })
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((r.get(0)?, cells))
    })?;
    rows.collect()
}
