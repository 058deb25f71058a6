//! Schema versions for the SQL stores: each store records the version of its tables in a
//! small versions table, reads it before anything else, runs DDL only when the tables are
//! behind, and refuses tables it does not know.
//!
//! Why read first: DDL takes an exclusive lock on the table even when it changes nothing
//! (`ALTER TABLE … ADD COLUMN IF NOT EXISTS` included), and every lookup queues behind a
//! waiting exclusive lock. A store whose tables are current never takes one.
//!
//! This file holds the whole procedure ([`migrate`], [`check`]) and what it refuses; a
//! database's [`Migrator`] (`postgres.rs`, `sqlite.rs`) says how its catalog is read, how two
//! migrations are kept apart, and how a version is recorded. Uses `crate::store` only (its
//! errors and the SQL plumbing), nothing above the store layer.

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use sqlx::{Pool, Transaction};

use super::{Conn, Driver};
use crate::store::{StoreError, StoreErrorKind};

/// What a migration refuses.
#[derive(Debug)]
enum SchemaMismatch {
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

fn mismatch(err: SchemaMismatch) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Schema,
        "the stored tables are not in a form this build of apitoken can use",
        err,
    )
}

/// Errors of a migration's own statements. A unique violation here is two DDL statements
/// colliding in the catalog (the migration lock should prevent it), not a token conflict.
fn map_migrate_err(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::with_source(
            StoreErrorKind::Unavailable,
            "another migration changed the schema at the same time; run it again",
            err,
        ),
        _ => super::map_err(err),
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
    /// names it (`format_type` on PostgreSQL, the declared type on SQLite). The first is the
    /// main table, by which tables made before versions were recorded are dated.
    pub(crate) columns: &'a [(&'a str, &'a [(&'static str, &'static str)])],
    /// Dates tables made before versions were recorded.
    pub(crate) probe: Probe,
}

impl Plan<'_> {
    /// The main table, as SQL text names it.
    fn main_table(&self) -> &str {
        self.columns.first().map_or("", |(table, _)| *table)
    }

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

/// What [`check`] accepts: exactly the current version.
fn require_current(plan: &Plan<'_>, found: Option<i64>) -> Result<(), StoreError> {
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

/// The refusal of [`check`] when the version is recorded but the main table is gone.
fn missing_tables(plan: &Plan<'_>) -> StoreError {
    mismatch(SchemaMismatch::MissingTable {
        table: plan.main_table().to_owned(),
    })
}

/// The version of a store's tables made before versions were recorded, from what they hold:
/// `0` when the main table is missing (nothing made yet).
pub(crate) type Probe = fn(&[(String, String)]) -> u32;

/// The DDL from schema version `from` to `from + 1` (statements may hold several commands).
pub(crate) type Steps<'a> = &'a (dyn Fn(u32) -> Vec<String> + Sync);

/// How one database reads its catalog, keeps migrations apart and records a version.
pub(crate) trait Migrator: Send + Sync {
    /// The sqlx database.
    type Db: Driver;

    /// Whether `table` (as SQL text names it) exists.
    fn table_exists(
        conn: &mut Conn<Self::Db>,
        table: &str,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// The columns of `table` (as SQL text names it), each with its type as the plan names
    /// it; none if the table is missing.
    fn columns(
        conn: &mut Conn<Self::Db>,
        table: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, sqlx::Error>> + Send;

    /// Opens the migration's transaction, in which no other migration of the same tables
    /// runs (it waits or fails first), and whatever the database must have before the
    /// versions table can be made (PostgreSQL: the schema).
    fn begin(
        &self,
        pool: &Pool<Self::Db>,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Db>, sqlx::Error>> + Send;

    /// Run before the first DDL step, in the migration's transaction. Default: nothing.
    fn before_steps(
        &self,
        conn: &mut Conn<Self::Db>,
        plan: &Plan<'_>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let _ = (conn, plan);
        std::future::ready(Ok(()))
    }

    /// The DDL of the versions table `versions`.
    fn versions_table(versions: &str) -> String;

    /// Records `plan.current` as the version of `plan.component`, inserting or updating.
    fn record(
        conn: &mut Conn<Self::Db>,
        plan: &Plan<'_>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// The recorded version on `conn`: `None` if nothing is recorded.
async fn version_on<M: Migrator>(
    conn: &mut Conn<M::Db>,
    plan: &Plan<'_>,
) -> Result<Option<i64>, sqlx::Error> {
    if !M::table_exists(conn, plan.versions).await? {
        return Ok(None);
    }
    let query = super::text(format!(
        "SELECT version FROM {} WHERE component = $1",
        plan.versions
    ));
    let query = M::Db::text(sqlx::query(query), plan.component);
    M::Db::fetch_optional(query, conn)
        .await?
        .map(|row| M::Db::read_int(&row, "version").map_err(|err| sqlx::Error::Decode(err.into())))
        .transpose()
}

/// The recorded version, without taking any lock or writing: `None` if nothing is recorded.
async fn version<M: Migrator>(
    pool: &Pool<M::Db>,
    plan: &Plan<'_>,
    deadline: Duration,
) -> Result<Option<i64>, StoreError> {
    super::timed(deadline, async {
        let mut conn = pool.acquire().await?;
        version_on::<M>(&mut conn, plan).await
    })
    .await
}

/// [`Plan::judge`] on what the catalog holds now.
async fn tables_ok<M: Migrator>(
    pool: &Pool<M::Db>,
    plan: &Plan<'_>,
    deadline: Duration,
) -> Result<bool, StoreError> {
    let work = async {
        let mut conn = pool.acquire().await?;
        let mut found = Vec::with_capacity(plan.columns.len());
        for (table, _) in plan.columns {
            found.push(M::columns(&mut conn, table).await?);
        }
        Ok(found)
    };
    plan.judge(&super::timed(deadline, work).await?)
}

/// Checks, changing nothing and taking no lock, that the tables are at `plan.current`:
/// [`StoreErrorKind::Schema`] if they are missing, behind or ahead.
pub(crate) async fn check<M: Migrator>(
    pool: &Pool<M::Db>,
    plan: &Plan<'_>,
    deadline: Duration,
) -> Result<(), StoreError> {
    let found = version::<M>(pool, plan, deadline).await?;
    require_current(plan, found)?;
    if tables_ok::<M>(pool, plan, deadline).await? {
        Ok(())
    } else {
        Err(missing_tables(plan))
    }
}

/// Brings the tables to `plan.current`: reads the version first and returns at once if it
/// is current (and the tables are as the plan needs); otherwise, in the transaction
/// [`Migrator::begin`] opens, reads it again, runs `steps(v)` for each version `v` from the
/// one found to the current one, checks the columns and records the version. Tables made
/// before versions were recorded are dated by `plan.probe`.
pub(crate) async fn migrate<M: Migrator>(
    migrator: &M,
    pool: &Pool<M::Db>,
    plan: &Plan<'_>,
    steps: Steps<'_>,
    deadline: Duration,
) -> Result<(), StoreError> {
    if let Some(found) = version::<M>(pool, plan, deadline).await? {
        if let Some(err) = plan.newer(found) {
            return Err(err);
        }
        // Current: the tables are checked against the catalog (a read, no lock), since a
        // hand-made change behind the version row would otherwise fail every lookup.
        if found == i64::from(plan.current) && tables_ok::<M>(pool, plan, deadline).await? {
            return Ok(());
        }
    }
    let work = async {
        let mut tx = migrator.begin(pool).await?;
        let versioned = M::table_exists(&mut tx, plan.versions).await?;
        let found = if versioned {
            version_on::<M>(&mut tx, plan).await?
        } else {
            let create = M::versions_table(plan.versions);
            M::Db::execute_raw(super::text(create), &mut tx).await?;
            None
        };
        let main_columns = M::columns(&mut tx, plan.main_table()).await?;
        let from = match found {
            // The main table is gone although a version is recorded: made again.
            Some(_) if main_columns.is_empty() => 0,
            Some(found) => {
                if let Some(err) = plan.newer(found) {
                    return Ok(Err(err));
                }
                u32::try_from(found).unwrap_or(0)
            }
            None => (plan.probe)(&main_columns),
        };
        if from < plan.current {
            migrator.before_steps(&mut tx, plan).await?;
        }
        for version in from..plan.current {
            for step in steps(version) {
                M::Db::execute_raw(super::text(step), &mut tx).await?;
            }
        }
        for (table, _) in plan.columns {
            let found = M::columns(&mut tx, table).await?;
            if let Err(err) = plan.check_table(table, &found) {
                return Ok(Err(err));
            }
        }
        M::record(&mut tx, plan).await?;
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
