//! Album parts, the places allowed from the CLI, and the usage report in the PostgreSQL store.
//!
//! Keys are ordered byte-wise (`COLLATE "C"`), as SQLite orders them, whatever the database's
//! own collation.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use crate::core::model::Platform;
use crate::core::ports::store::{ReportBy, ReportRow, StoreError, merge_by_service};

use super::{PgStore, get, ms, pg, unsigned};

pub(super) async fn save_album_part(
    db: &PgStore,
    group: &str,
    part_id: &str,
    part: &str,
) -> Result<(), StoreError> {
    db.client()
        .await?
        .execute(
            "INSERT INTO album_parts (group_key, part_id, part) VALUES ($1, $2, $3)
             ON CONFLICT (group_key, part_id) DO NOTHING",
            &[&group, &part_id, &part],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

/// The first column of every row, as text.
fn texts(rows: &[Row]) -> Result<Vec<String>, StoreError> {
    rows.iter().map(|r| get(r, 0)).collect()
}

pub(super) async fn album_parts(db: &PgStore, group: &str) -> Result<Vec<String>, StoreError> {
    let rows = db
        .client()
        .await?
        .query(
            "SELECT part FROM album_parts WHERE group_key = $1 ORDER BY seq",
            &[&group],
        )
        .await
        .map_err(pg)?;
    texts(&rows)
}

pub(super) async fn album_groups(db: &PgStore) -> Result<Vec<String>, StoreError> {
    let rows = db
        .client()
        .await?
        .query(
            "SELECT group_key FROM album_parts GROUP BY group_key ORDER BY MIN(seq)",
            &[],
        )
        .await
        .map_err(pg)?;
    texts(&rows)
}

pub(super) async fn drop_album(db: &PgStore, group: &str) -> Result<(), StoreError> {
    db.client()
        .await?
        .execute("DELETE FROM album_parts WHERE group_key = $1", &[&group])
        .await
        .map_err(pg)?;
    Ok(())
}

pub(super) async fn set_allowed(
    db: &PgStore,
    platform: Platform,
    place: &str,
    allowed: bool,
) -> Result<bool, StoreError> {
    let sql = if allowed {
        "INSERT INTO allowed_places (platform, place) VALUES ($1, $2) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM allowed_places WHERE platform = $1 AND place = $2"
    };
    let changed = db
        .client()
        .await?
        .execute(sql, &[&platform.as_str(), &place])
        .await
        .map_err(pg)?;
    Ok(changed > 0)
}

pub(super) async fn allowed_places(db: &PgStore) -> Result<Vec<(Platform, String)>, StoreError> {
    let rows = db
        .client()
        .await?
        .query(
            "SELECT platform, place FROM allowed_places
             ORDER BY platform COLLATE \"C\", place COLLATE \"C\"",
            &[],
        )
        .await
        .map_err(pg)?;
    let mut places = Vec::with_capacity(rows.len());
    for r in &rows {
        let (platform, place): (String, String) = (get(r, 0)?, get(r, 1)?);
        if let Ok(platform) = platform.parse::<Platform>() {
            places.push((platform, place));
        }
    }
    Ok(places)
}

/// The report's grouping key, as SQL.
fn key_of(by: ReportBy) -> &'static str {
    match by {
        ReportBy::User => "platform || ':' || user_id",
        ReportBy::Chat => "platform || ':' || chat_id",
        ReportBy::Day => {
            "to_char(to_timestamp(created_at::DOUBLE PRECISION / 1000) AT TIME ZONE 'UTC', \
             'YYYY-MM-DD')"
        }
        ReportBy::Service => crate::store::SERVICE_OF_JOB,
    }
}

/// One (key, service) row of the report query.
fn report_row(r: &Row) -> Result<(ReportRow, String), StoreError> {
    let (jobs, images, failed, generated): (i64, i64, i64, i64) =
        (get(r, 2)?, get(r, 3)?, get(r, 4)?, get(r, 5)?);
    let (images, generated) = (unsigned(images), unsigned(generated));
    let row = ReportRow {
        key: get(r, 0)?,
        jobs: unsigned(jobs),
        images,
        failed: unsigned(failed),
        generated,
        undelivered: generated.saturating_sub(images),
        by_service: Vec::new(),
    };
    Ok((row, get(r, 1)?))
}

pub(super) async fn report(
    db: &PgStore,
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    by: ReportBy,
    within: Option<(Platform, &str)>,
) -> Result<Vec<ReportRow>, StoreError> {
    let sql = format!(
        "SELECT ({key}) COLLATE \"C\" AS k, ({service}) COLLATE \"C\" AS s,
                SUM(CASE WHEN status = 'delivered' THEN 1 ELSE 0 END)::BIGINT,
                COALESCE(SUM(CASE WHEN status = 'delivered' THEN cost END), 0)::BIGINT,
                SUM(CASE WHEN status IN ('failed','undelivered') THEN 1 ELSE 0 END)::BIGINT,
                COALESCE(SUM(GREATEST(generated,
                    CASE WHEN status = 'delivered' THEN cost ELSE 0 END)), 0)::BIGINT
         FROM jobs WHERE created_at >= $1 AND ($4::BIGINT IS NULL OR created_at < $4)
             AND ($2::TEXT IS NULL OR (platform = $2 AND group_id = $3::TEXT))
         GROUP BY k, s ORDER BY k, s",
        key = key_of(by),
        service = crate::store::SERVICE_OF_JOB,
    );
    let (platform, group) = (within.map(|(p, _)| p.as_str()), within.map(|(_, g)| g));
    let (since, until) = (ms(since), until.map(ms));
    let rows = db
        .client()
        .await?
        .query(&sql, &[&since, &platform, &group, &until])
        .await
        .map_err(pg)?;
    let parts = rows.iter().map(report_row).collect::<Result<Vec<_>, _>>()?;
    Ok(merge_by_service(parts))
}
