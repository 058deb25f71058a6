//! [`PgMigrator`]: how a migration runs on PostgreSQL: the catalog read through
//! `to_regclass` and `pg_attribute`, an advisory lock per schema, a `lock_timeout`, every
//! table locked at once before DDL. Uses `crate::store` only.

use std::time::Duration;

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::{Migrator, Plan};

/// The table that records each store's schema version, beside the store's own tables.
pub(crate) const VERSIONS_TABLE: &str = "apitoken_schema_versions";

/// How long a migration waits for a table lock (PostgreSQL's `lock_timeout`).
pub(crate) const DEFAULT_MIGRATION_LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// The migrations of the tables in one schema (or on the `search_path`).
#[derive(Debug, Clone)]
pub(crate) struct PgMigrator {
    /// The schema, created if missing; `None` for the connection's `search_path`.
    pub(crate) schema: Option<String>,
    /// How long DDL waits for a table lock, so that lookups queue behind it at most that
    /// long.
    pub(crate) lock_timeout: Duration,
}

impl PgMigrator {
    /// The advisory-lock key of every migration in the schema: one per schema, so the token
    /// store and the grant store never race on `CREATE SCHEMA` or the versions table.
    fn lock_key(&self) -> String {
        format!(
            "apitoken migrate schema {}",
            self.schema.as_deref().unwrap_or("")
        )
    }
}

/// Takes every existing table of the plan in ACCESS EXCLUSIVE mode at once, or none:
/// `NOWAIT` attempts in a savepoint, retried until `lock_timeout` has passed. A lookup never
/// queues behind a lock the migration is still waiting for (with one DDL statement per table,
/// each waiting up to `lock_timeout` while holding the tables before it, a lookup could wait
/// a multiple of it).
async fn lock_all(
    tx: &mut PgConnection,
    plan: &Plan<'_>,
    lock_timeout: Duration,
) -> Result<(), sqlx::Error> {
    let mut existing = Vec::new();
    for (table, _) in plan.columns {
        if PgMigrator::table_exists(&mut *tx, table).await? {
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
        match sqlx::raw_sql(crate::store::sql::text(lock.clone()))
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

impl Migrator for PgMigrator {
    type Db = Postgres;

    async fn table_exists(conn: &mut PgConnection, table: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(conn)
            .await
    }

    async fn columns(
        conn: &mut PgConnection,
        table: &str,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
        )
        .bind(table)
        .fetch_all(conn)
        .await
    }

    /// The schema's advisory lock first, without `lock_timeout`: a replica waiting for
    /// another replica's upgrade holds no table lock (lookups do not queue behind it), and
    /// must not fail just because that upgrade took longer than the timeout; the deadline of
    /// the whole migration still bounds the wait. Then `lock_timeout`, then the schema.
    async fn begin(&self, pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(self.lock_key())
            .execute(&mut *tx)
            .await?;
        // Bounds how long lookups can queue behind this migration's DDL.
        let millis = self.lock_timeout.as_millis().max(1);
        sqlx::raw_sql(crate::store::sql::text(format!(
            "SET LOCAL lock_timeout = '{millis}ms'"
        )))
        .execute(&mut *tx)
        .await?;
        if let Some(schema) = &self.schema {
            let present: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                    .bind(schema)
                    .fetch_one(&mut *tx)
                    .await?;
            if !present {
                let create = format!("CREATE SCHEMA \"{schema}\"");
                sqlx::raw_sql(crate::store::sql::text(create))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(tx)
    }

    async fn before_steps(
        &self,
        conn: &mut PgConnection,
        plan: &Plan<'_>,
    ) -> Result<(), sqlx::Error> {
        lock_all(conn, plan, self.lock_timeout).await
    }

    fn versions_table(versions: &str) -> String {
        format!(
            "CREATE TABLE {versions} (component TEXT COLLATE \"C\" PRIMARY KEY, \
             version BIGINT NOT NULL, migrated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
    }

    async fn record(conn: &mut PgConnection, plan: &Plan<'_>) -> Result<(), sqlx::Error> {
        let record = crate::store::sql::text(format!(
            "INSERT INTO {} (component, version) VALUES ($1, $2) \
             ON CONFLICT (component) DO UPDATE SET version = $2, migrated_at = now()",
            plan.versions
        ));
        sqlx::query(record)
            .bind(plan.component)
            .bind(i64::from(plan.current))
            .execute(conn)
            .await?;
        Ok(())
    }
}
