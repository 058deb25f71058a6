//! Sanctum's table on SQLite: times as whatever was written (text with or without an offset,
//! Unix seconds, Julian days), naive text when this store writes, ids reserved in
//! `sqlite_sequence` as Laravel's `AUTOINCREMENT` table draws them, a batch of last uses as
//! one JSON array. Uses the token values and `crate::store` only.

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlStr, Sqlite};

use super::{
    Backend, SanctumDialect, SanctumStore, SanctumStoreBuilder, SanctumTable, laravel_time,
    unreadable,
};
use crate::store::StoreError;
use crate::store::sql::sqlite::{Lite, last_used_batch};
use crate::store::sql::{self, NaiveTimeZone, Query};

impl SanctumStore {
    /// A store over an SQLite database that a Laravel application migrated.
    pub fn sqlite(pool: sqlx::SqlitePool) -> SanctumStoreBuilder {
        Self::builder(pool, Backend::Sqlite)
    }
}

/// The statements of a store over the table on SQLite.
#[derive(Debug)]
pub(crate) struct LiteSanctum {
    next_id_seed: SqlStr,
    next_id: SqlStr,
    last_used_batch: SqlStr,
}

impl SanctumDialect for Lite {
    type State = LiteSanctum;

    fn state(table: &str) -> LiteSanctum {
        LiteSanctum {
            // Laravel's SQLite table is AUTOINCREMENT: reserving the id in `sqlite_sequence`
            // keeps this process and the Laravel app from handing out the same one.
            next_id_seed: sql::text(format!(
                "INSERT INTO sqlite_sequence (name, seq) SELECT '{table}', 0 \
                 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = '{table}')"
            )),
            next_id: sql::text(format!(
                "UPDATE sqlite_sequence SET seq = MAX(seq, (SELECT COALESCE(MAX(id), 0) FROM {table})) + 1 \
                 WHERE name = '{table}' RETURNING seq AS n"
            )),
            last_used_batch: sql::text(last_used_batch(
                table,
                "last_used_at = v.at, updated_at = v.at",
            )),
        }
    }

    /// SQLite keeps whatever was written. Text is read by our own parser, which keeps an
    /// offset when there is one (sqlx's `NaiveDateTime` drops it: `10:00+02:00` would read as
    /// 10:00 here, two hours late); numbers are Unix seconds or Julian days, instants both,
    /// as SQLite's date functions read them. Anything else is refused, not guessed.
    fn read_time(
        row: &SqliteRow,
        column: &'static str,
        zone: NaiveTimeZone,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        use sqlx::{TypeInfo, ValueRef};
        let raw = row.try_get_raw(column).map_err(sql::map_err)?;
        if raw.is_null() {
            return Ok(None);
        }
        let kind = raw.type_info().name().to_owned();
        match kind.as_str() {
            "TEXT" => {
                let text: String = row.try_get_unchecked(column).map_err(sql::map_err)?;
                zone.parse_text(&text)
                    .map(Some)
                    .ok_or_else(|| unreadable(column))
            }
            "INTEGER" | "REAL" => row
                .try_get_unchecked::<DateTime<Utc>, _>(column)
                .map(Some)
                .map_err(|_| unreadable(column)),
            _ => Err(unreadable(column)),
        }
    }

    /// Naive text, as Laravel writes them on SQLite.
    async fn bind_insert_times(
        table: &SanctumTable<Lite>,
        query: Query<Sqlite>,
        expires_at: Option<DateTime<Utc>>,
        created_at: DateTime<Utc>,
    ) -> Result<Query<Sqlite>, StoreError> {
        let zone = table.settings.zone;
        let created = laravel_time(zone, created_at);
        Ok(query
            .bind(expires_at.map(|at| laravel_time(zone, at)))
            .bind(created)
            .bind(created))
    }

    async fn next_id(table: &SanctumTable<Lite>) -> Result<i64, StoreError> {
        let work = async {
            let mut tx = table.pool.begin().await?;
            sqlx::query(table.state.next_id_seed.clone())
                .execute(&mut *tx)
                .await?;
            let row = sqlx::query(table.state.next_id.clone())
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            row.try_get::<i64, _>("n")
        };
        sql::timed(table.settings.timeout, work).await
    }

    async fn record_last_used(
        table: &SanctumTable<Lite>,
        batch: &[(i64, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        let zone = table.settings.zone;
        // As sqlx writes a `NaiveDateTime` to SQLite, so text compares in order.
        let pairs: Vec<(i64, String)> = batch
            .iter()
            .map(|(id, at)| (*id, laravel_time(zone, *at).format("%F %T").to_string()))
            .collect();
        let pairs = serde_json::to_string(&pairs).map_err(StoreError::corrupt)?;
        let query = sqlx::query(table.state.last_used_batch.clone()).bind(pairs);
        sql::execute::<Lite>(&table.pool, table.settings.timeout, query).await?;
        Ok(())
    }
}
