//! Album parts, the places allowed from the CLI, and the usage report in the SQLite store.

use chrono::{DateTime, Utc};
use rusqlite::params;

use crate::core::model::Platform;
use crate::core::ports::store::{ReportBy, ReportRow, StoreError, merge_by_service};

use super::db::{Db, db, ms};

impl Db {
    pub(super) fn save_album_part(
        &self,
        group: &str,
        part_id: &str,
        part: &str,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO album_parts (group_key, part_id, part) VALUES (?1, ?2, ?3)",
                params![group, part_id, part],
            )
            .map_err(db)?;
        Ok(())
    }

    pub(super) fn album_parts(&self, group: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT part FROM album_parts WHERE group_key = ?1 ORDER BY seq")
            .map_err(db)?;
        let rows = stmt.query_map([group], |r| r.get(0)).map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    pub(super) fn album_groups(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT group_key FROM album_parts GROUP BY group_key ORDER BY MIN(seq)")
            .map_err(db)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    pub(super) fn drop_album(&self, group: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM album_parts WHERE group_key = ?1", [group])
            .map_err(db)?;
        Ok(())
    }

    pub(super) fn set_allowed(
        &self,
        platform: Platform,
        place: &str,
        allowed: bool,
    ) -> Result<bool, StoreError> {
        let sql = if allowed {
            "INSERT OR IGNORE INTO allowed_places (platform, place) VALUES (?1, ?2)"
        } else {
            "DELETE FROM allowed_places WHERE platform = ?1 AND place = ?2"
        };
        let changed = self
            .conn()
            .execute(sql, params![platform.as_str(), place])
            .map_err(db)?;
        Ok(changed > 0)
    }

    pub(super) fn allowed_places(&self) -> Result<Vec<(Platform, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT platform, place FROM allowed_places ORDER BY platform, place")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        Ok(rows
            .into_iter()
            .filter_map(|(p, place)| Some((p.parse().ok()?, place)))
            .collect())
    }

    pub(super) fn report(
        &self,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
        by: ReportBy,
        within: Option<(Platform, &str)>,
    ) -> Result<Vec<ReportRow>, StoreError> {
        let key = match by {
            ReportBy::User => "platform || ':' || user_id",
            ReportBy::Chat => "platform || ':' || chat_id",
            ReportBy::Day => "strftime('%Y-%m-%d', created_at / 1000, 'unixepoch')",
            ReportBy::Service => crate::store::SERVICE_OF_JOB,
        };
        let service = crate::store::SERVICE_OF_JOB;
        let sql = format!(
            "SELECT {key} AS k, {service} AS s,
                    SUM(status = 'delivered'),
                    COALESCE(SUM(CASE WHEN status = 'delivered' THEN cost END), 0),
                    SUM(status IN ('failed','undelivered')),
                    COALESCE(SUM(MAX(generated, CASE WHEN status = 'delivered' THEN cost ELSE 0 END)), 0)
             FROM jobs WHERE created_at >= ?1 AND (?4 IS NULL OR created_at < ?4)
                 AND (?2 IS NULL OR (platform = ?2 AND group_id = ?3))
             GROUP BY k, s ORDER BY k, s"
        );
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql).map_err(db)?;
        let rows = stmt
            .query_map(
                params![
                    ms(since),
                    within.map(|(p, _)| p.as_str()),
                    within.map(|(_, g)| g),
                    until.map(ms)
                ],
                |r| {
                    let (images, generated): (u64, u64) = (r.get(3)?, r.get(5)?);
                    let row = ReportRow {
                        key: r.get(0)?,
                        jobs: r.get(2)?,
                        images,
                        failed: r.get(4)?,
                        generated,
                        undelivered: generated.saturating_sub(images),
                        by_service: Vec::new(),
                    };
                    Ok((row, r.get::<_, String>(1)?))
                },
            )
            .map_err(db)?;
        let parts = rows.collect::<Result<Vec<_>, _>>().map_err(db)?;
        Ok(merge_by_service(parts))
    }
}
