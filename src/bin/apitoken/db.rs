//! Opening the store a `--database` URL names.

use std::str::FromStr;
use std::time::Duration;

use apitoken::{PostgresStore, SqliteStore, StoreError, StoreErrorKind};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::Failure;
use crate::args::DatabaseArgs;

/// How long to wait for a connection before calling the database unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A store, migrated and ready.
pub(crate) enum Database {
    Postgres(PostgresStore),
    Sqlite(SqliteStore),
}

/// A database URL, checked (scheme and syntax) before any connection is tried.
enum Target {
    Postgres(PgConnectOptions),
    Sqlite(SqliteConnectOptions),
}

/// Checks the URL. Never repeats it: it may hold a password.
fn target(args: &DatabaseArgs) -> Result<Target, Failure> {
    let url = args.database.as_str();
    let target = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        PgConnectOptions::from_str(url).map(Target::Postgres)
    } else if url.starts_with("sqlite:") {
        if args.schema.is_some() {
            return Err(Failure::Usage(
                "--schema is for PostgreSQL; a SQLite database has no schemas".into(),
            ));
        }
        SqliteConnectOptions::from_str(url).map(Target::Sqlite)
    } else {
        return Err(Failure::Usage(
            "unsupported database URL scheme: expected postgres://, postgresql:// or sqlite:"
                .into(),
        ));
    };
    target.map_err(|e| Failure::Usage(format!("the database URL is not valid: {e}")))
}

/// Opens the store. `create` (for `create` and `bootstrap`) lets a SQLite file be created and
/// migrates the tables; the other commands never migrate (no DDL, no lock, no privilege
/// beyond reading and updating rows) and only check the schema version, and refuse a missing
/// SQLite file rather than make an empty one at a mistyped path.
pub(crate) async fn open(args: &DatabaseArgs, create: bool) -> Result<Database, Failure> {
    match target(args)? {
        Target::Postgres(options) => {
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_lazy_with(options);
            let mut builder = PostgresStore::builder(pool);
            if let Some(schema) = &args.schema {
                builder = builder
                    .schema(schema)
                    .map_err(|e| Failure::Usage(format!("--schema: {e}")))?;
            }
            let store = builder.build();
            if create {
                store.migrate().await.map_err(schema_failure)?;
            } else {
                store.check_schema().await.map_err(schema_failure)?;
            }
            Ok(Database::Postgres(store))
        }
        Target::Sqlite(options) => {
            let options = options
                .create_if_missing(create)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(CONNECT_TIMEOUT);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(|e| {
                    let hint = if create {
                        ""
                    } else {
                        " (does the file exist? only create and bootstrap make a new one)"
                    };
                    Failure::Runtime(format!(
                        "could not open the SQLite database{hint}: {}",
                        chain(&e)
                    ))
                })?;
            let store = SqliteStore::builder(pool).build();
            if create {
                migrate_sqlite(&store).await?;
            } else {
                store.check_schema().await.map_err(schema_failure)?;
            }
            Ok(Database::Sqlite(store))
        }
    }
}

impl Database {
    /// Closes the pool, so SQLite checkpoints its log and PostgreSQL sees a clean goodbye.
    pub(crate) async fn close(&self) {
        match self {
            Database::Postgres(store) => store.pool().close().await,
            Database::Sqlite(store) => store.pool().close().await,
        }
    }
}

/// `SqliteStore::migrate` runs in a deferred transaction, which SQLite refuses at once
/// (`database is locked`, no busy wait) when another process wrote in between, as two CLI
/// runs started together do. Such a refusal is retried a few times.
async fn migrate_sqlite(store: &SqliteStore) -> Result<(), Failure> {
    let mut attempt = 1;
    loop {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            Err(err) if attempt < 10 && chain(&err).contains("database is locked") => {
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                attempt += 1;
            }
            Err(err) => return Err(schema_failure(err)),
        }
    }
}

/// What a failed migration or schema check tells the operator.
fn schema_failure(err: StoreError) -> Failure {
    let what = match err.kind() {
        StoreErrorKind::Schema => {
            "the database's tables are not ones this apitoken can use (`create` and \
             `bootstrap` migrate them; `list` and `revoke` never do)"
        }
        StoreErrorKind::PermissionDenied => {
            "permission denied: migrating needs CREATE on the schema and ownership of the \
             tables; run `create` once as their owner, or migrate from the application"
        }
        StoreErrorKind::Configuration => {
            "the database refused the connection settings (check the URL's user, password \
             and database name)"
        }
        _ => "could not reach the database",
    };
    Failure::Runtime(format!("{what}: {}", chain(&err)))
}

/// An error and its sources, `: `-separated.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(next) = source {
        let text = next.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = next.source();
    }
    out
}
