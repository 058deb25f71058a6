//! [`SqliteMigrator`]: how a migration runs on SQLite: the catalog read through
//! `sqlite_master` and `pragma_table_info`, and one `BEGIN IMMEDIATE` transaction (SQLite's
//! one writer at a time is the lock). Table names are unquoted, as `pragma_table_info` takes
//! them. Uses `crate::store` only.

use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::{Migrator, Plan};

/// The migrations of the tables in one SQLite database.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SqliteMigrator;

impl Migrator for SqliteMigrator {
    type Db = Sqlite;

    async fn table_exists(conn: &mut SqliteConnection, table: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1)",
        )
        .bind(table)
        .fetch_one(conn)
        .await
    }

    async fn columns(
        conn: &mut SqliteConnection,
        table: &str,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as("SELECT name, type FROM pragma_table_info($1)")
            .bind(table)
            .fetch_all(conn)
            .await
    }

    /// IMMEDIATE takes the write lock up front, so processes migrating at once wait (busy
    /// timeout) instead of failing with "database is locked".
    async fn begin(&self, pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    fn versions_table(versions: &str) -> String {
        format!(
            "CREATE TABLE {versions} (component TEXT NOT NULL PRIMARY KEY, \
             version INTEGER NOT NULL, migrated_at INTEGER NOT NULL)"
        )
    }

    async fn record(conn: &mut SqliteConnection, plan: &Plan<'_>) -> Result<(), sqlx::Error> {
        let record = crate::store::sql::text(format!(
            "INSERT INTO {} (component, version, migrated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (component) DO UPDATE SET version = $2, migrated_at = $3",
            plan.versions
        ));
        sqlx::query(record)
            .bind(plan.component)
            .bind(i64::from(plan.current))
            .bind(chrono::Utc::now().timestamp_micros())
            .execute(conn)
            .await?;
        Ok(())
    }
}
