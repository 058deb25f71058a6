//! Schema versions for the SQL stores: each store records the version of its tables in a
//! small versions table, reads it before anything else, runs DDL only when the tables are
//! behind, and refuses tables it does not know.
//!
//! Why read first: DDL takes an exclusive lock on the table even when it changes nothing
//! (`ALTER TABLE … ADD COLUMN IF NOT EXISTS` included), and every lookup queues behind a
//! waiting exclusive lock. A store whose tables are current never takes one.

use std::fmt;
use std::time::Duration;

use super::sql;
use super::{StoreError, StoreErrorKind};

/// The table that records each store's schema version, beside the store's own tables.
#[cfg(feature = "postgres")]
pub(crate) const VERSIONS_TABLE: &str = "apitoken_schema_versions";

/// What a migration refuses.
#[derive(Debug)]
pub(crate) enum SchemaMismatch {
    /// The versions table names a version this build does not know.
    Newer {
        component: &'static str,
        found: i64,
        known: u32,
    },
    /// The tables are missing, or older than this build needs, and the caller may not
    /// migrate.
    Behind {
        component: &'static str,
        found: Option<i64>,
        current: u32,
    },
    /// A version is recorded, but the table is gone.
    MissingTable { table: String },
    /// A table lacks a column the store reads.
    MissingColumn { table: String, column: &'static str },
    /// A column has another type than the store's.
    ColumnType {
        table: String,
        column: &'static str,
        found: String,
        expected: &'static str,
    },
}

impl fmt::Display for SchemaMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Newer {
                component,
                found,
                known,
            } => write!(
                f,
                "the {component} tables are at schema version {found}, and this build of \
                 apitoken knows versions up to {known}: upgrade apitoken (a newer release \
                 migrated them)"
            ),
            Self::Behind {
                component,
                found: None,
                current,
            } => write!(
                f,
                "the {component} tables record no schema version (missing, or made by a \
                 release before versions were recorded); run the store's migrate, which \
                 brings them to version {current}"
            ),
            Self::Behind {
                component,
                found: Some(found),
                current,
            } => write!(
                f,
                "the {component} tables are at schema version {found}, behind the {current} \
                 this build needs; run the store's migrate"
            ),
            Self::MissingTable { table } => write!(
                f,
                "table {table} is missing although its schema version is recorded (dropped \
                 by hand?); the store's migrate makes it again, empty"
            ),
            Self::MissingColumn { table, column } => write!(
                f,
                "table {table} has no column {column}: it was not made by apitoken, or was \
                 altered by hand"
            ),
            Self::ColumnType {
                table,
                column,
                found,
                expected,
            } => write!(
                f,
                "column {column} of table {table} is {found}, where apitoken needs \
                 {expected}: the table was not made by apitoken, or was altered by hand"
            ),
        }
    }
}

impl std::error::Error for SchemaMismatch {}

pub(crate) fn mismatch(err: SchemaMismatch) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Schema,
        "the stored tables are not in a form this build of apitoken can use",
        err,
    )
}

/// Errors of a migration's own statements. A unique violation here is two DDL statements
/// colliding in the catalog (the migration lock should prevent it), not a token conflict.
pub(crate) fn map_migrate_err(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::with_source(
            StoreErrorKind::Unavailable,
            "another migration changed the schema at the same time; run it again",
            err,
        ),
        _ => sql::map_err(err),
    }
}

/// The tables of one store as a migration sees them.
pub(crate) struct Plan<'a> {
    /// The row of the versions table that holds this store's version.
    pub(crate) component: &'static str,
    /// The version this build writes and reads.
    pub(crate) current: u32,
    /// The (qualified, quoted) versions table.
    pub(crate) versions: &'a str,
    /// Each table the store reads, with the columns it needs and their type as the dialect
    /// names it (`format_type` on PostgreSQL, the declared type on SQLite).
    pub(crate) columns: &'a [(&'a str, &'a [(&'static str, &'static str)])],
}

impl Plan<'_> {
    fn newer(&self, found: i64) -> Option<StoreError> {
        (found > i64::from(self.current)).then(|| {
            mismatch(SchemaMismatch::Newer {
                component: self.component,
                found,
                known: self.current,
            })
        })
    }

    /// What the catalog says of the plan's tables: `Ok(true)` if all are as the store needs,
    /// `Ok(false)` if the main table (the first) is missing altogether (dropped by hand
    /// behind a recorded version: a migration makes it again), an error if any table has
    /// other columns.
    fn judge(&self, found: &[Vec<(String, String)>]) -> Result<bool, StoreError> {
        if found.first().is_some_and(Vec::is_empty) {
            return Ok(false);
        }
        for ((table, _), columns) in self.columns.iter().zip(found) {
            self.check_table(table, columns)?;
        }
        Ok(true)
    }

    /// Compares the columns found (name, type) with the plan's, for `table`.
    fn check_table(&self, table: &str, found: &[(String, String)]) -> Result<(), StoreError> {
        let Some((_, wanted)) = self.columns.iter().find(|(name, _)| *name == table) else {
            return Ok(());
        };
        for (column, expected) in wanted.iter() {
            match found.iter().find(|(name, _)| name == column) {
                None => {
                    return Err(mismatch(SchemaMismatch::MissingColumn {
                        table: table.to_owned(),
                        column,
                    }));
                }
                Some((_, ty)) if !ty.eq_ignore_ascii_case(expected) => {
                    return Err(mismatch(SchemaMismatch::ColumnType {
                        table: table.to_owned(),
                        column,
                        found: ty.clone(),
                        expected,
                    }));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// What [`check_schema`](crate::PostgresStore::check_schema) and its SQLite twin accept:
/// exactly the current version.
pub(crate) fn require_current(plan: &Plan<'_>, found: Option<i64>) -> Result<(), StoreError> {
    match found {
        Some(found) if found == i64::from(plan.current) => Ok(()),
        Some(found) if found > i64::from(plan.current) => Err(mismatch(SchemaMismatch::Newer {
            component: plan.component,
            found,
            known: plan.current,
        })),
        found => Err(mismatch(SchemaMismatch::Behind {
            component: plan.component,
            found,
            current: plan.current,
        })),
    }
}

/// The refusal of [`check_schema`](crate::PostgresStore::check_schema) when the version is
/// recorded but the main table is gone.
pub(crate) fn missing_tables(plan: &Plan<'_>) -> StoreError {
    let table = plan.columns.first().map_or("", |(table, _)| *table);
    mismatch(SchemaMismatch::MissingTable {
        table: table.to_owned(),
    })
}

/// The version of a store's tables made before versions were recorded, from what they hold:
/// `0` when the main table is missing (nothing made yet).
pub(crate) type Probe = fn(&[(String, String)]) -> u32;

#[cfg(feature = "postgres")]
pub(crate) use self::postgres::{pg_migrate, pg_tables_ok, pg_version};

#[cfg(feature = "postgres")]
mod postgres {
    use sqlx::PgPool;

    use super::*;

    /// The advisory-lock key of every migration in `schema`: one per schema, so the token
    /// store and the grant store never race on `CREATE SCHEMA` or the versions table.
    pub(crate) fn pg_lock_key(schema: Option<&str>) -> String {
        format!("apitoken migrate schema {}", schema.unwrap_or(""))
    }

    /// The recorded version, without taking any lock: `None` if nothing is recorded.
    pub(crate) async fn pg_version(
        pool: &PgPool,
        plan: &Plan<'_>,
        deadline: Duration,
    ) -> Result<Option<i64>, StoreError> {
        let work = async {
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(plan.versions)
                .fetch_one(pool)
                .await?;
            if !exists {
                return Ok(None);
            }
            let query = sql::text(format!(
                "SELECT version FROM {} WHERE component = $1",
                plan.versions
            ));
            sqlx::query_scalar::<_, i64>(query)
                .bind(plan.component)
                .fetch_optional(pool)
                .await
        };
        sql::timed(deadline, work).await
    }

    async fn columns<'e, E: sqlx::PgExecutor<'e>>(
        executor: E,
        table: &str,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
        )
        .bind(table)
        .fetch_all(executor)
        .await
    }

    /// [`Plan::judge`] on what the catalog holds now.
    pub(crate) async fn pg_tables_ok(
        pool: &PgPool,
        plan: &Plan<'_>,
        deadline: Duration,
    ) -> Result<bool, StoreError> {
        let work = async {
            let mut found = Vec::with_capacity(plan.columns.len());
            for (table, _) in plan.columns {
                found.push(columns(pool, table).await?);
            }
            Ok(found)
        };
        plan.judge(&sql::timed(deadline, work).await?)
    }

    /// Takes every existing table of the plan in ACCESS EXCLUSIVE mode at once, or none:
    /// `NOWAIT` attempts in a savepoint, retried until `lock_timeout` has passed. A lookup
    /// never queues behind a lock the migration is still waiting for (with one DDL statement
    /// per table, each waiting up to `lock_timeout` while holding the tables before it, a
    /// lookup could wait a multiple of it).
    async fn lock_all(
        tx: &mut sqlx::PgConnection,
        plan: &Plan<'_>,
        lock_timeout: Duration,
    ) -> Result<(), sqlx::Error> {
        let mut existing = Vec::new();
        for (table, _) in plan.columns {
            let present: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(table)
                .fetch_one(&mut *tx)
                .await?;
            if present {
                existing.push(*table);
            }
        }
        if existing.is_empty() {
            return Ok(());
        }
        let lock = format!(
            "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE NOWAIT",
            existing.join(", ")
        );
        let until = std::time::Instant::now() + lock_timeout;
        loop {
            sqlx::raw_sql("SAVEPOINT apitoken_lock")
                .execute(&mut *tx)
                .await?;
            match sqlx::raw_sql(sql::text(lock.clone()))
                .execute(&mut *tx)
                .await
            {
                Ok(_) => {
                    sqlx::raw_sql("RELEASE SAVEPOINT apitoken_lock")
                        .execute(&mut *tx)
                        .await?;
                    return Ok(());
                }
                Err(err) if std::time::Instant::now() < until => {
                    let busy = matches!(&err, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"));
                    if !busy {
                        return Err(err);
                    }
                    sqlx::raw_sql("ROLLBACK TO SAVEPOINT apitoken_lock")
                        .execute(&mut *tx)
                        .await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Brings the tables to `plan.current`: reads the version first and returns at once if
    /// it is current; otherwise, in one transaction with `lock_timeout` and under the
    /// schema's advisory lock, reads it again, runs `steps(v)` for each version `v` from
    /// the one found to the current one, checks the columns and records the version.
    /// `probe` dates tables made before versions were recorded (from the main table's
    /// columns).
    #[allow(clippy::too_many_arguments)] // one per part of the plan; a struct would only rename them
    pub(crate) async fn pg_migrate(
        pool: &PgPool,
        plan: &Plan<'_>,
        schema: Option<&str>,
        main_table: &str,
        probe: Probe,
        steps: &(dyn Fn(u32) -> Vec<String> + Sync),
        lock_timeout: Duration,
        deadline: Duration,
    ) -> Result<(), StoreError> {
        if let Some(found) = pg_version(pool, plan, deadline).await? {
            if let Some(err) = plan.newer(found) {
                return Err(err);
            }
            // Current: the tables are checked against the catalog (a read, no lock), since a
            // hand-made change behind the version row would otherwise fail every lookup.
            if found == i64::from(plan.current) && pg_tables_ok(pool, plan, deadline).await? {
                return Ok(());
            }
        }
        let lock_key = pg_lock_key(schema);
        let work = async {
            let mut tx = pool.begin().await?;
            // The advisory lock first, without `lock_timeout`: a replica waiting for another
            // replica's upgrade holds no table lock (lookups do not queue behind it), and must
            // not fail just because that upgrade took longer than the timeout. The deadline
            // of the whole migration still bounds the wait.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(&lock_key)
                .execute(&mut *tx)
                .await?;
            // Bounds how long lookups can queue behind this migration's DDL.
            let millis = lock_timeout.as_millis().max(1);
            sqlx::raw_sql(sql::text(format!("SET LOCAL lock_timeout = '{millis}ms'")))
                .execute(&mut *tx)
                .await?;
            if let Some(schema) = schema {
                let present: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                )
                .bind(schema)
                .fetch_one(&mut *tx)
                .await?;
                if !present {
                    let create = format!("CREATE SCHEMA \"{schema}\"");
                    sqlx::raw_sql(sql::text(create)).execute(&mut *tx).await?;
                }
            }
            let versioned: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(plan.versions)
                .fetch_one(&mut *tx)
                .await?;
            let mut found = None;
            if versioned {
                let query = sql::text(format!(
                    "SELECT version FROM {} WHERE component = $1",
                    plan.versions
                ));
                found = sqlx::query_scalar::<_, i64>(query)
                    .bind(plan.component)
                    .fetch_optional(&mut *tx)
                    .await?;
            } else {
                let create = format!(
                    "CREATE TABLE {} (component TEXT COLLATE \"C\" PRIMARY KEY, \
                     version BIGINT NOT NULL, migrated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
                    plan.versions
                );
                sqlx::raw_sql(sql::text(create)).execute(&mut *tx).await?;
            }
            let main_columns = columns(&mut *tx, main_table).await?;
            let from = match found {
                // The main table is gone although a version is recorded: made again.
                Some(_) if main_columns.is_empty() => 0,
                Some(found) => {
                    if let Some(err) = plan.newer(found) {
                        return Ok(Err(err));
                    }
                    u32::try_from(found).unwrap_or(0)
                }
                None => probe(&main_columns),
            };
            if from < plan.current {
                lock_all(&mut tx, plan, lock_timeout).await?;
            }
            for version in from..plan.current {
                for step in steps(version) {
                    sqlx::raw_sql(sql::text(step)).execute(&mut *tx).await?;
                }
            }
            for (table, _) in plan.columns {
                let found = columns(&mut *tx, table).await?;
                if let Err(err) = plan.check_table(table, &found) {
                    return Ok(Err(err));
                }
            }
            let record = sql::text(format!(
                "INSERT INTO {} (component, version) VALUES ($1, $2) \
                 ON CONFLICT (component) DO UPDATE SET version = $2, migrated_at = now()",
                plan.versions
            ));
            sqlx::query(record)
                .bind(plan.component)
                .bind(i64::from(plan.current))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Ok(()))
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(Ok(result)) => result,
            Ok(Err(err)) => Err(map_migrate_err(err)),
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "the migration did not finish within its deadline",
            )),
        }
    }
}

#[cfg(feature = "sqlite")]
pub(crate) use self::sqlite::{sqlite_migrate, sqlite_tables_ok, sqlite_version};

#[cfg(feature = "sqlite")]
mod sqlite {
    use sqlx::SqlitePool;

    use super::*;

    async fn table_exists<'e, E: sqlx::SqliteExecutor<'e>>(
        executor: E,
        table: &str,
    ) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1)",
        )
        .bind(table)
        .fetch_one(executor)
        .await
    }

    /// The recorded version, without writing: `None` if nothing is recorded.
    pub(crate) async fn sqlite_version(
        pool: &SqlitePool,
        plan: &Plan<'_>,
        versions_name: &str,
        deadline: Duration,
    ) -> Result<Option<i64>, StoreError> {
        let work = async {
            if !table_exists(pool, versions_name).await? {
                return Ok(None);
            }
            let query = sql::text(format!(
                "SELECT version FROM {} WHERE component = $1",
                plan.versions
            ));
            sqlx::query_scalar::<_, i64>(query)
                .bind(plan.component)
                .fetch_optional(pool)
                .await
        };
        sql::timed(deadline, work).await
    }

    async fn columns<'e, E: sqlx::SqliteExecutor<'e>>(
        executor: E,
        table: &str,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as("SELECT name, type FROM pragma_table_info($1)")
            .bind(table)
            .fetch_all(executor)
            .await
    }

    /// [`Plan::judge`] on what the file holds now.
    pub(crate) async fn sqlite_tables_ok(
        pool: &SqlitePool,
        plan: &Plan<'_>,
        deadline: Duration,
    ) -> Result<bool, StoreError> {
        let work = async {
            let mut found = Vec::with_capacity(plan.columns.len());
            for (table, _) in plan.columns {
                found.push(columns(pool, table).await?);
            }
            Ok(found)
        };
        plan.judge(&sql::timed(deadline, work).await?)
    }

    /// As [`pg_migrate`](super::pg_migrate), in a `BEGIN IMMEDIATE` transaction (SQLite's
    /// one writer at a time is the lock). Table names in `plan.columns` and `main_table` are
    /// unquoted, as `pragma_table_info` takes them.
    pub(crate) async fn sqlite_migrate(
        pool: &SqlitePool,
        plan: &Plan<'_>,
        versions_name: &str,
        main_table: &str,
        probe: Probe,
        steps: &(dyn Fn(u32) -> Vec<String> + Sync),
        deadline: Duration,
    ) -> Result<(), StoreError> {
        if let Some(found) = sqlite_version(pool, plan, versions_name, deadline).await? {
            if let Some(err) = plan.newer(found) {
                return Err(err);
            }
            if found == i64::from(plan.current) && sqlite_tables_ok(pool, plan, deadline).await? {
                return Ok(());
            }
        }
        let work = async {
            // IMMEDIATE takes the write lock up front, so processes migrating at once wait
            // (busy timeout) instead of failing with "database is locked".
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let mut found = None;
            if table_exists(&mut *tx, versions_name).await? {
                let query = sql::text(format!(
                    "SELECT version FROM {} WHERE component = $1",
                    plan.versions
                ));
                found = sqlx::query_scalar::<_, i64>(query)
                    .bind(plan.component)
                    .fetch_optional(&mut *tx)
                    .await?;
            } else {
                let create = format!(
                    "CREATE TABLE {} (component TEXT NOT NULL PRIMARY KEY, \
                     version INTEGER NOT NULL, migrated_at INTEGER NOT NULL)",
                    plan.versions
                );
                sqlx::raw_sql(sql::text(create)).execute(&mut *tx).await?;
            }
            let main_columns = columns(&mut *tx, main_table).await?;
            let from = match found {
                Some(_) if main_columns.is_empty() => 0,
                Some(found) => {
                    if let Some(err) = plan.newer(found) {
                        return Ok(Err(err));
                    }
                    u32::try_from(found).unwrap_or(0)
                }
                None => probe(&main_columns),
            };
            for version in from..plan.current {
                for step in steps(version) {
                    sqlx::raw_sql(sql::text(step)).execute(&mut *tx).await?;
                }
            }
            for (table, _) in plan.columns {
                let found = columns(&mut *tx, table).await?;
                if let Err(err) = plan.check_table(table, &found) {
                    return Ok(Err(err));
                }
            }
            let record = sql::text(format!(
                "INSERT INTO {} (component, version, migrated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (component) DO UPDATE SET version = $2, migrated_at = $3",
                plan.versions
            ));
            sqlx::query(record)
                .bind(plan.component)
                .bind(i64::from(plan.current))
                .bind(chrono::Utc::now().timestamp_micros())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Ok(()))
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(Ok(result)) => result,
            Ok(Err(err)) => Err(map_migrate_err(err)),
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "the migration did not finish within its deadline",
            )),
        }
    }
}
