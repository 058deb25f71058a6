//! Sanctum's table on PostgreSQL: `timestamp` and `timestamptz` columns told apart by their
//! type (read once from the catalogue for writes, per value for reads), ids from the `id`
//! column's serial sequence, a batch of last uses in one `UPDATE … FROM UNNEST(…)`. Uses the
//! token values and `crate::store` only.

use chrono::{DateTime, NaiveDateTime, Timelike, Utc};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, SqlStr};

use super::{
    Backend, SanctumDialect, SanctumStore, SanctumStoreBuilder, SanctumTable, laravel_time,
    unreadable,
};
use crate::store::StoreError;
use crate::store::sql::postgres::Pg;
use crate::store::sql::{self, NaiveTimeZone, Query};

impl SanctumStore {
    /// A store over a PostgreSQL database that a Laravel application migrated.
    pub fn postgres(pool: sqlx::PgPool) -> SanctumStoreBuilder {
        Self::builder(pool, Backend::Postgres)
    }
}

/// What a store learns of the table on PostgreSQL, and its own statements.
#[derive(Debug)]
pub(crate) struct PgSanctum {
    table: String,
    /// Which of the table's time columns are `timestamptz`, learnt at the first write: a
    /// write must bind each column's own type, because PostgreSQL converts between the two
    /// in the session's `TimeZone`, which need not be Laravel's.
    writes: tokio::sync::OnceCell<PgWrites>,
    time_types: SqlStr,
    next_id: SqlStr,
}

/// How to write Sanctum's time columns on PostgreSQL, by their types.
#[derive(Debug)]
struct PgWrites {
    created_tz: bool,
    expires_tz: bool,
    updated_tz: bool,
    last_used_batch: SqlStr,
}

/// An instant to the second, for a `timestamptz` column.
fn laravel_instant(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_nanosecond(0).unwrap_or(at)
}

/// The forward-only last-use `UPDATE`. Each batch binds every time twice, as an instant
/// (`timestamptz`) and as the naive time in the app's zone (`timestamp`), and each column
/// takes the one of its own type, so no conversion depends on the session.
fn last_used_batch(table: &str, last_used_tz: bool, updated_tz: bool) -> SqlStr {
    let pick = |tz: bool| if tz { "v.at_tz" } else { "v.at_naive" };
    let (last_used, updated) = (pick(last_used_tz), pick(updated_tz));
    sql::text(format!(
        "UPDATE {table} AS t SET last_used_at = {last_used}, updated_at = {updated} \
         FROM UNNEST($1::bigint[], $2::timestamptz[], $3::timestamp[]) \
         AS v(id, at_tz, at_naive) \
         WHERE t.id = v.id AND (t.last_used_at IS NULL OR t.last_used_at < {last_used})"
    ))
}

impl PgSanctum {
    /// The types of the table's time columns, read from the catalogue once. A column changed
    /// from `timestamp` to `timestamptz` while this store runs is seen after a restart.
    async fn writes(&self, table: &SanctumTable<Pg>) -> Result<&PgWrites, StoreError> {
        self.writes
            .get_or_try_init(|| async {
                let query = sqlx::query(self.time_types.clone());
                let rows = sql::fetch_all(&table.pool, table.settings.timeout, query).await?;
                let mut tz = std::collections::HashMap::new();
                for row in &rows {
                    let name: String = row.try_get("name").map_err(sql::map_err)?;
                    let is_tz: bool = row.try_get("tz").map_err(sql::map_err)?;
                    tz.insert(name, is_tz);
                }
                let tz = |column: &str| tz.get(column).copied().unwrap_or(false);
                Ok(PgWrites {
                    created_tz: tz("created_at"),
                    expires_tz: tz("expires_at"),
                    updated_tz: tz("updated_at"),
                    last_used_batch: last_used_batch(
                        &self.table,
                        tz("last_used_at"),
                        tz("updated_at"),
                    ),
                })
            })
            .await
    }
}

impl SanctumDialect for Pg {
    type State = PgSanctum;

    fn state(table: &str) -> PgSanctum {
        PgSanctum {
            table: table.to_owned(),
            writes: tokio::sync::OnceCell::new(),
            // The table as the session's search_path finds it, as every other query does.
            time_types: sql::text(format!(
                "SELECT attname::text AS name, atttypid = 'timestamptz'::regtype AS tz \
                 FROM pg_attribute WHERE attrelid = to_regclass('{table}') \
                 AND attnum > 0 AND NOT attisdropped"
            )),
            next_id: sql::text(format!(
                "SELECT nextval(pg_get_serial_sequence('{table}', 'id')) AS n"
            )),
        }
    }

    /// `timestamptz` is an instant; `timestamp` (Laravel's `timestamps()`) a naive time in the
    /// app's zone. Laravel's `timestampsTz()` makes the first, and tables migrated from one
    /// to the other are common, so the column's type decides, not a guess.
    fn read_time(
        row: &PgRow,
        column: &'static str,
        zone: NaiveTimeZone,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        use sqlx::{TypeInfo, ValueRef};
        let raw = row.try_get_raw(column).map_err(sql::map_err)?;
        if raw.is_null() {
            return Ok(None);
        }
        if raw.type_info().name() == "TIMESTAMPTZ" {
            let at: DateTime<Utc> = row.try_get(column).map_err(sql::map_err)?;
            return Ok(Some(at));
        }
        let naive: NaiveDateTime = row.try_get(column).map_err(sql::map_err)?;
        zone.to_utc(naive)
            .map(Some)
            .ok_or_else(|| unreadable(column))
    }

    /// Each column gets a value of its own type (see `PgSanctum::writes`).
    async fn bind_insert_times(
        table: &SanctumTable<Pg>,
        query: Query<Postgres>,
        expires_at: Option<DateTime<Utc>>,
        created_at: DateTime<Utc>,
    ) -> Result<Query<Postgres>, StoreError> {
        let types = table.state.writes(table).await?;
        let zone = table.settings.zone;
        let bind = |query: Query<Postgres>, tz: bool, at: Option<DateTime<Utc>>| {
            if tz {
                query.bind(at.map(laravel_instant))
            } else {
                query.bind(at.map(|at| laravel_time(zone, at)))
            }
        };
        let query = bind(query, types.expires_tz, expires_at);
        let query = bind(query, types.created_tz, Some(created_at));
        Ok(bind(query, types.updated_tz, Some(created_at)))
    }

    async fn next_id(table: &SanctumTable<Pg>) -> Result<i64, StoreError> {
        let query = sqlx::query(table.state.next_id.clone());
        let row = sql::fetch_optional(&table.pool, table.settings.timeout, query)
            .await?
            .ok_or_else(|| sql::map_err(sqlx::Error::RowNotFound))?;
        row.try_get("n").map_err(sql::map_err)
    }

    async fn record_last_used(
        table: &SanctumTable<Pg>,
        batch: &[(i64, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        let writes = table.state.writes(table).await?;
        let zone = table.settings.zone;
        let ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
        let instants: Vec<DateTime<Utc>> =
            batch.iter().map(|(_, at)| laravel_instant(*at)).collect();
        let naive: Vec<NaiveDateTime> = batch
            .iter()
            .map(|(_, at)| laravel_time(zone, *at))
            .collect();
        let query = sqlx::query(writes.last_used_batch.clone())
            .bind(ids)
            .bind(instants)
            .bind(naive);
        sql::execute::<Pg>(&table.pool, table.settings.timeout, query).await?;
        Ok(())
    }
}
