//! Sanctum's table on SQLite: times as whatever was written (text with or without an offset,
//! Unix seconds, Julian days), naive text when this store writes, ids reserved in
//! `sqlite_sequence` as Laravel's `AUTOINCREMENT` table draws them, a batch of last uses as
//! one JSON array. Uses the token values and `crate::store` only.

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlStr, Sqlite};

use super::{
    Backend, Key, SanctumColumns, SanctumDialect, SanctumStore, SanctumStoreBuilder, SanctumTable,
    laravel_time, unreadable,
};
use crate::store::sql::sqlite::{Lite, last_used_batch};
use crate::store::sql::sqlite_reads::DirectReads;
use crate::store::sql::{self, NaiveTimeZone, Query};
use crate::store::{StoreError, StoredToken};

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
    reads: DirectReads,
}

/// A time column's value as SQLite holds it, whichever driver read it.
enum TimeValue<'a> {
    Text(&'a str),
    /// Unix seconds.
    Integer(i64),
    /// A Julian day number.
    Real(f64),
}

/// SQLite keeps whatever was written. Text is read by our own parser, which keeps an offset
/// when there is one (sqlx's `NaiveDateTime` drops it: `10:00+02:00` would read as 10:00,
/// two hours late); numbers are Unix seconds or Julian days, instants both, as SQLite's date
/// functions read them. Anything else is refused, not guessed.
fn time_of(
    value: TimeValue<'_>,
    column: &'static str,
    zone: NaiveTimeZone,
) -> Result<DateTime<Utc>, StoreError> {
    let read = match value {
        TimeValue::Text(text) => zone.parse_text(text),
        TimeValue::Integer(seconds) => DateTime::from_timestamp(seconds, 0),
        TimeValue::Real(day) => {
            let seconds = (day - 2_440_587.5) * 86_400.0;
            // Finite and within chrono's range (about ±262,000 years) before the casts.
            if seconds.is_finite() && seconds.abs() < 8.2e15 {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let nanos = (seconds.fract() * 1e9).abs() as u32;
                #[allow(clippy::cast_possible_truncation)]
                DateTime::from_timestamp(seconds.trunc() as i64, nanos)
            } else {
                None
            }
        }
    };
    read.ok_or_else(|| unreadable(column))
}

/// A row of the table as [`DirectReads`] reads it, with the pool's types and checks, each
/// column by its place in the statements' list (`Statements::new`).
fn decode_now(
    row: &rusqlite::Row<'_>,
    table: &SanctumTable<Lite>,
) -> Result<StoredToken, StoreError> {
    use rusqlite::types::ValueRef;
    let zone = table.settings.zone;
    let text = |at: usize| row.get::<_, String>(at).map_err(StoreError::corrupt);
    let time = |at: usize, column: &'static str| {
        let value = match row.get_ref(at).map_err(StoreError::corrupt)? {
            ValueRef::Null => return Ok(None),
            ValueRef::Text(bytes) => {
                TimeValue::Text(std::str::from_utf8(bytes).map_err(|_| unreadable(column))?)
            }
            ValueRef::Integer(n) => TimeValue::Integer(n),
            ValueRef::Real(day) => TimeValue::Real(day),
            ValueRef::Blob(_) => return Err(unreadable(column)),
        };
        time_of(value, column, zone).map(Some)
    };
    SanctumColumns {
        id: row.get(0).map_err(StoreError::corrupt)?,
        tokenable_type: text(1)?,
        tokenable_id: text(2)?,
        name: text(3)?,
        token: text(4)?,
        abilities: row.get(5).map_err(StoreError::corrupt)?,
        last_used_at: time(6, "last_used_at")?,
        expires_at: time(7, "expires_at")?,
        created_at: time(8, "created_at")?,
    }
    .check(table.settings.expiration)
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
            reads: DirectReads::default(),
        }
    }

    /// As [`time_of`] reads it.
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
        let unchecked = |_| unreadable(column);
        let at = match kind.as_str() {
            "TEXT" => {
                let text: String = row.try_get_unchecked(column).map_err(sql::map_err)?;
                time_of(TimeValue::Text(&text), column, zone)?
            }
            "INTEGER" => {
                let seconds = row.try_get_unchecked(column).map_err(unchecked)?;
                time_of(TimeValue::Integer(seconds), column, zone)?
            }
            "REAL" => {
                let day = row.try_get_unchecked(column).map_err(unchecked)?;
                time_of(TimeValue::Real(day), column, zone)?
            }
            _ => return Err(unreadable(column)),
        };
        Ok(Some(at))
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

    /// On the calling thread through [`DirectReads`], once the file is known.
    async fn lookup_now(
        table: &SanctumTable<Lite>,
        statement: &str,
        key: Key<'_>,
    ) -> Option<Result<Option<StoredToken>, StoreError>> {
        DirectReads::take_turn().await;
        let reads = &table.state.reads;
        match key {
            Key::Id(id) => reads.read(statement, id, |row| {
                let Some(row) = row else { return Ok(None) };
                let found = row.get::<_, i64>(0).map_err(StoreError::corrupt);
                sql::row_if_asked(decode_now(row, table), found, id)
            }),
            Key::Hash(hex) => reads.read(statement, hex, |row| {
                row.map(|row| decode_now(row, table)).transpose()
            }),
        }
    }

    async fn after_pool_lookup(table: &SanctumTable<Lite>, conn: &mut sqlx::SqliteConnection) {
        if !table.state.reads.learnt() {
            table.state.reads.learn(conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::COLUMNS;

    /// `decode_now` reads by place: the places are those of the columns every lookup selects.
    #[test]
    fn direct_reads_read_the_columns_they_name() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, tokenable_type TEXT, tokenable_id INTEGER, \
             name TEXT, token TEXT, abilities TEXT, last_used_at TEXT, expires_at TEXT, \
             created_at TEXT)",
        )
        .unwrap();
        let statement = db.prepare(&format!("SELECT {COLUMNS} FROM t")).unwrap();
        assert_eq!(
            statement.column_names(),
            [
                "id",
                "tokenable_type",
                "tokenable_id",
                "name",
                "token",
                "abilities",
                "last_used_at",
                "expires_at",
                "created_at"
            ]
        );
    }
}
