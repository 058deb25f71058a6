//! PostgreSQL: its dialect ([`Pg`]: `TIMESTAMPTZ` and `JSONB`, `NOTIFY` in the statements
//! that change a token, advisory locks that keep a revoke-all and an insert of the same owner
//! apart, `UNNEST` for a batch) and [`PostgresStore`] with its change listener. The token
//! logic itself is [`TokenTable`]'s. Uses the token values and `crate::store` only.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::{ConnectOptions, Connection, PgConnection, Postgres, Row, Transaction};

use super::migrate::postgres::{DEFAULT_MIGRATION_LOCK_TIMEOUT, PgMigrator, VERSIONS_TABLE};
use super::tokens::{
    COLUMNS, DialectStatements, Names, OwnerWrite, TokenDialect, TokenTable, token_store_on_table,
};
use super::{Dialect, InvalidIdentifier, Query};
use crate::id::TokenId;
use crate::record::{Metadata, Owner};
use crate::store::{StoreChange, StoreError};

/// A [`TokenStore`](crate::store::TokenStore) in PostgreSQL, on an sqlx pool.
///
/// - **Schema**: one table, `apitoken_tokens`, in the configured schema (default: the
///   connection's `search_path`). Ids and owners are `TEXT COLLATE "C"` (byte comparison, case
///   sensitive); the secret hash is `BYTEA`, unique; times are `TIMESTAMPTZ` (microseconds).
///   [`migrate`](Self::migrate) creates it, under an advisory lock so that replicas starting
///   together do not race. See `docs/stores.md` for the DDL.
/// - **Queries** are parameterised, each with a deadline (3 s by default, connection
///   acquisition included): a database that is down or slow makes the store report
///   [`StoreErrorKind::Unavailable`](crate::store::StoreErrorKind::Unavailable), and the
///   verifier fails closed. The pool reconnects by itself when the database returns.
/// - **Changes** (insert, revoke) send a `NOTIFY` in the same statement, so another replica's
///   [`spawn_change_listener`](Self::spawn_change_listener) can drop cached entries at once.
/// - **Last use** is written forward-only, a batch in one `UPDATE … FROM UNNEST(…)`.
///
/// ```no_run
/// use apitoken::{PostgresStore, Verifier};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// store.migrate().await?;
/// let verifier = Verifier::builder(store).build();
/// # let _ = verifier;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    table: TokenTable<Pg>,
}

token_store_on_table!(PostgresStore);

/// Configures a [`PostgresStore`]. Made by [`PostgresStore::builder`].
#[derive(Debug)]
#[must_use]
pub struct PostgresStoreBuilder {
    pool: PgPool,
    schema: Option<String>,
    timeout: Duration,
    lock_timeout: Duration,
}

impl PostgresStoreBuilder {
    /// Keeps the tables in this schema (created by [`PostgresStore::migrate`] if missing):
    /// lowercase letters, digits and `_`. Reserved words (`user`, `order`) are fine: the
    /// name is quoted wherever it is used.
    pub fn schema(mut self, schema: &str) -> Result<Self, InvalidIdentifier> {
        self.schema = Some(super::identifier(schema)?.to_owned());
        Ok(self)
    }

    /// How long [`PostgresStore::migrate`] waits for a table lock before giving up
    /// (PostgreSQL's `lock_timeout`), so that lookups queued behind its DDL wait at most
    /// that long. Default: 1 second. Only a migration that has DDL to run takes a lock.
    pub fn migration_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The deadline of each query, connection acquisition included. Default: 3 seconds.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the store. No connection is made until the first query.
    pub fn build(self) -> PostgresStore {
        let schema = self.schema;
        let qualify = |name: &str| qualified(schema.as_deref(), name);
        let names = Names {
            table: qualify("apitoken_tokens"),
            sequence: qualify("apitoken_token_ids"),
            versions: qualify(VERSIONS_TABLE),
        };
        let state = PgState {
            channel: change_channel(schema.as_deref()),
            lock_name: match &schema {
                Some(schema) => format!("{schema}.apitoken_tokens"),
                None => "apitoken_tokens".to_owned(),
            },
            migrator: PgMigrator {
                schema,
                lock_timeout: self.lock_timeout,
            },
        };
        PostgresStore {
            table: TokenTable::new(self.pool, state, names, self.timeout),
        }
    }
}

impl PostgresStore {
    /// A store on a new pool for `url`, with a 2-second acquire timeout, connecting now:
    /// settings the database refuses (no such role or database, a wrong password) fail here
    /// with [`Configuration`](crate::store::StoreErrorKind::Configuration), and a database
    /// that is down with [`Unavailable`](crate::store::StoreErrorKind::Unavailable), at once
    /// for a refused connection and after 2 seconds for one that never answers, as
    /// [`SqliteStore::connect`](crate::SqliteStore::connect) and sqlx's `PgPool::connect` do.
    /// [`connect_lazy`](Self::connect_lazy) instead defers the first connection to the first
    /// query.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), apitoken::StoreError> {
    /// let store = apitoken::PostgresStore::connect("postgres://app@127.0.0.1/app").await?;
    /// store.migrate().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(super::map_err)?;
        // One plain attempt first: the pool retries a refused connection until its acquire
        // timeout and then reports only that it timed out, where this fails now with the
        // cause (connection refused, no such role).
        let probe = super::timed(super::DEFAULT_ACQUIRE_TIMEOUT, options.connect()).await?;
        // Its goodbye is a courtesy; the pool's own connection is what counts.
        let _ = probe.close().await;
        let pool = Self::pool_options()
            .connect_with(options)
            .await
            .map_err(super::map_err)?;
        Ok(Self::builder(pool).build())
    }

    /// A store on a new pool for `url`, with a 2-second acquire timeout, connecting at the
    /// first query: this fails only for a malformed URL, and a database that is down now is
    /// found when it returns (each query then fails with
    /// [`Unavailable`](crate::store::StoreErrorKind::Unavailable) until it does). For a
    /// process that must start while its database is still coming up.
    ///
    /// ```
    /// # fn run() -> Result<(), apitoken::StoreError> {
    /// // Nothing listens on port 1; the store is still made.
    /// let store = apitoken::PostgresStore::connect_lazy("postgres://app@127.0.0.1:1/app")?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// # rt.block_on(async { run() }).unwrap();
    /// ```
    pub fn connect_lazy(url: &str) -> Result<Self, StoreError> {
        let pool = Self::pool_options()
            .connect_lazy(url)
            .map_err(super::map_err)?;
        Ok(Self::builder(pool).build())
    }

    /// The pool options [`connect`](Self::connect) and [`connect_lazy`](Self::connect_lazy)
    /// use, for a pool of your own (shared with the application, or passed to
    /// [`SanctumStore::postgres`](crate::SanctumStore::postgres)): a 2-second acquire timeout,
    /// and a connection pinged on acquire only after 1 s unused. sqlx's own default pings
    /// every connection it hands out, one more round trip on every lookup
    /// (`docs/performance.md`, uncached SQL).
    ///
    /// ```
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = apitoken::PostgresStore::pool_options()
    ///     .max_connections(20)
    ///     .connect_lazy("postgres://app@127.0.0.1/app")?;
    /// let store = apitoken::PostgresStore::builder(pool).build();
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// # rt.block_on(async { run() }).unwrap();
    /// ```
    pub fn pool_options() -> PgPoolOptions {
        super::pool_options()
    }

    /// A store on an existing pool.
    pub fn builder(pool: PgPool) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            pool,
            schema: None,
            timeout: super::DEFAULT_QUERY_TIMEOUT,
            lock_timeout: DEFAULT_MIGRATION_LOCK_TIMEOUT,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.table.pool
    }

    /// Brings the tables to the schema version this build uses, creating them (and the
    /// schema) if missing. Safe to call from every replica at start-up, and cheap once done:
    ///
    /// - It first reads the version recorded in `apitoken_schema_versions`. If it is
    ///   current, that is all: no DDL, no lock, and a role with only `SELECT`, `INSERT` and
    ///   `UPDATE` may call it.
    /// - Otherwise it upgrades in one transaction, under an advisory lock per schema (shared
    ///   with `PostgresGrantStore`, so the two never race on `CREATE SCHEMA`), with
    ///   `lock_timeout` set ([`migration_lock_timeout`](PostgresStoreBuilder::migration_lock_timeout),
    ///   1 s by default): a reader holding the table makes the migration fail with
    ///   [`Unavailable`](crate::store::StoreErrorKind::Unavailable) rather than stall every
    ///   lookup. Tables made by releases that recorded no version are dated by their columns.
    /// - A newer version than this build knows, or a table whose columns are not this
    ///   store's (another type, one missing), is refused with
    ///   [`StoreErrorKind::Schema`](crate::store::StoreErrorKind::Schema), changing nothing. A
    ///   role without the privileges DDL needs gets
    ///   [`StoreErrorKind::PermissionDenied`](crate::store::StoreErrorKind::PermissionDenied).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.table.migrate().await
    }

    /// Checks, changing nothing and taking no lock, that the tables are at the schema
    /// version this build uses: for processes that must not migrate (a read-only role, a
    /// command-line listing). [`StoreErrorKind::Schema`](crate::store::StoreErrorKind::Schema)
    /// if they are missing, behind or ahead.
    ///
    /// ```no_run
    /// # async fn run(store: apitoken::PostgresStore) -> Result<(), apitoken::StoreError> {
    /// store.check_schema().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        self.table.check_schema().await
    }

    /// Listens for changes made through any `PostgresStore` on the same database and schema
    /// (this process's included) and calls `on_change` for each: [`StoreChange::Token`] for a
    /// token issued or revoked, and [`StoreChange::Unknown`] once each time it is listening
    /// again (connected, and `LISTEN` in effect), since changes made while it was not may have
    /// been missed. Reconnects by itself, with a one-second pause after a failure. Losing the
    /// connection, or failing to connect while the database is down, reports nothing: a cache
    /// keeps answering from what it holds (each entry for at most its TTL) until the listener
    /// is back and reports `Unknown`.
    ///
    /// Pass the changes to a cache's invalidator so a revoke on one replica takes effect on
    /// every replica within the notification's delivery time.
    pub fn spawn_change_listener<F>(&self, on_change: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(StoreChange) + Send + Sync + 'static,
    {
        let pool = self.table.pool.clone();
        let channel = self.table.state.channel.clone();
        tokio::spawn(async move {
            loop {
                match listen(&pool, &channel, &on_change).await {
                    Ok(()) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "token change listener lost its connection");
                    }
                }
                // Whatever happens until we listen again is unknown: `listen` reports it once
                // `LISTEN` is back in effect (reporting it here too would clear a cache twice
                // per reconnect, and once a second while the database is down).
                if pool.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }
}

impl crate::store::CachedStore<PostgresStore> {
    /// Keeps this cache in step with every replica: listens for the changes any
    /// `PostgresStore` on the same database and schema makes (issue, revoke) and drops the
    /// affected entries, or all of them once after each reconnect. A revoke on one replica then takes
    /// effect on the others within the notification's delivery time, not the cache's TTL.
    ///
    /// ```no_run
    /// use apitoken::{CachedStore, PostgresStore, Verifier};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = CachedStore::new(PostgresStore::connect("postgres://postgres@127.0.0.1/app").await?);
    /// let _listener = store.spawn_change_listener();
    /// let verifier = Verifier::builder(store).build();
    /// # let _ = verifier;
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn_change_listener(&self) -> tokio::task::JoinHandle<()> {
        let invalidator = self.invalidator();
        self.inner()
            .spawn_change_listener(move |change| invalidator.apply(&change))
    }
}

/// Listens until the connection is lost; returns `Ok` when it is, `Err` if it cannot connect.
async fn listen<F: Fn(StoreChange)>(
    pool: &PgPool,
    channel: &str,
    on_change: &F,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    // Anything before LISTEN took effect was missed: the one report per (re)connection.
    on_change(StoreChange::Unknown);
    while let Some(notification) = listener.try_recv().await? {
        match TokenId::new(notification.payload()) {
            Ok(id) => on_change(StoreChange::Token(id)),
            Err(_) => on_change(StoreChange::Unknown),
        }
    }
    Ok(())
}

/// `name` in `schema` (quoted, since a schema may be named like a reserved word), or `name`
/// alone, found on the connection's `search_path`.
pub(crate) fn qualified(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(schema) => format!("\"{schema}\".{name}"),
        None => name.to_owned(),
    }
}

/// The first statement of the transactions whose correctness rests on seeing what committed
/// while they waited for a lock.
const READ_COMMITTED: &str = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED";

/// PostgreSQL's longest identifier, in bytes: a longer channel name is cut (and `pg_notify`
/// refuses it), so writes that notify would fail.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// The `NOTIFY` channel of the tables in `schema`. Channels are per schema, so tenants in one
/// database do not see each other's changes: `apitoken_changes_{schema}`, or, when that would
/// pass PostgreSQL's 63-byte limit, `apitoken_changes_0` and 16 hex digits of the schema
/// name's SHA-256. No schema name starts with a digit, so the hashed form never meets a plain
/// one.
fn change_channel(schema: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let Some(schema) = schema else {
        return "apitoken_changes".to_owned();
    };
    let plain = format!("apitoken_changes_{schema}");
    if plain.len() <= MAX_IDENTIFIER_BYTES {
        return plain;
    }
    let digest = Sha256::digest(schema.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("apitoken_changes_0{hex}")
}

/// The advisory-lock key that serialises a revoke-all of `owner` in `table` against inserts
/// and rotations of that owner's tokens: 64 bits of a SHA-256, the same in every replica.
///
/// Under READ COMMITTED, a revoke-all's single `UPDATE … WHERE owner = $1` does not see a row
/// inserted while it runs, and a management API checking its caller afterwards cannot see
/// the revoke-all that has not committed yet: without this lock a create racing a revoke-all
/// could hand out a token that outlives it.
fn owner_lock_key(table: &str, owner: &Owner) -> i64 {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"apitoken owner lock\0");
    hasher.update(table.as_bytes());
    hasher.update(b"\0");
    hasher.update(owner.as_str().as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(bytes)
}

/// PostgreSQL, as the SQL stores' dialect.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pg;

impl Dialect for Pg {
    type Db = Postgres;

    fn rows_affected(done: &PgQueryResult) -> u64 {
        // A `SELECT pg_notify(…) FROM changed` reports the rows it returned: one per change.
        done.rows_affected()
    }
}

/// What a [`PostgresStore`] keeps besides its names.
#[derive(Debug)]
pub(crate) struct PgState {
    channel: String,
    /// `schema.apitoken_tokens` unquoted, as every release has spelled it in the owner
    /// lock's key (replicas of two releases must agree on it).
    lock_name: String,
    migrator: PgMigrator,
}

impl TokenDialect for Pg {
    type State = PgState;
    type Migrations = PgMigrator;

    /// With PostgreSQL's names for the types.
    const COLUMN_TYPES: &'static [(&'static str, &'static str)] = &[
        ("id", "text"),
        ("secret_hash", "bytea"),
        ("name", "text"),
        ("owner", "text"),
        ("scopes", "text"),
        ("metadata", "jsonb"),
        ("created_at", "timestamp with time zone"),
        ("last_used_at", "timestamp with time zone"),
        ("expires_at", "timestamp with time zone"),
        ("revoked_at", "timestamp with time zone"),
        ("allowed_ips", "text"),
    ];

    fn migration_step(names: &Names, from: u32) -> Vec<String> {
        let Names {
            table, sequence, ..
        } = names;
        match from {
            0 => vec![format!(
                "CREATE TABLE {table} (\
                     id TEXT COLLATE \"C\" PRIMARY KEY, \
                     secret_hash BYTEA NOT NULL UNIQUE CHECK (octet_length(secret_hash) = 32), \
                     name TEXT NOT NULL, \
                     owner TEXT COLLATE \"C\" NOT NULL, \
                     scopes TEXT NOT NULL DEFAULT '', \
                     metadata JSONB NOT NULL DEFAULT '{{}}', \
                     created_at TIMESTAMPTZ NOT NULL, \
                     last_used_at TIMESTAMPTZ, \
                     expires_at TIMESTAMPTZ, \
                     revoked_at TIMESTAMPTZ); \
                 CREATE INDEX IF NOT EXISTS apitoken_tokens_owner_idx ON {table} (owner, created_at); \
                 CREATE SEQUENCE IF NOT EXISTS {sequence};"
            )],
            1 => vec![format!(
                "ALTER TABLE {table} ADD COLUMN allowed_ips TEXT NOT NULL DEFAULT ''"
            )],
            _ => Vec::new(),
        }
    }

    /// Migrations may wait for another replica's lock: allow them longer than a query.
    fn migration_deadline(query_timeout: Duration) -> Duration {
        query_timeout * 10
    }

    fn statements(names: &Names) -> DialectStatements {
        let Names {
            table, sequence, ..
        } = names;
        DialectStatements {
            // Takes the owner's lock shared and notifies, in the one statement.
            insert: format!(
                "WITH owner_lock AS (SELECT pg_advisory_xact_lock_shared($12)), \
                 inserted AS (INSERT INTO {table} ({COLUMNS}) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 FROM owner_lock \
                 RETURNING id) \
                 SELECT pg_notify($13, id) FROM inserted"
            ),
            revoke: format!(
                "WITH revoked AS (UPDATE {table} SET revoked_at = $1 \
                 WHERE id = $2 AND revoked_at IS NULL RETURNING id) \
                 SELECT pg_notify($3, id) FROM revoked"
            ),
            revoke_owner: format!(
                "WITH revoked AS (UPDATE {table} SET revoked_at = $1 \
                 WHERE owner = $2 AND revoked_at IS NULL RETURNING id) \
                 SELECT pg_notify($3, id) FROM revoked"
            ),
            next_id: format!(
                "SELECT s.n, EXISTS (SELECT 1 FROM {table} WHERE id = s.n::text) AS taken \
                 FROM (SELECT nextval('{sequence}') AS n) AS s"
            ),
            last_used_batch: format!(
                "UPDATE {table} AS t SET last_used_at = v.at \
                 FROM UNNEST($1::text[], $2::timestamptz[]) AS v(id, at) \
                 WHERE t.id = v.id AND (t.last_used_at IS NULL OR t.last_used_at < v.at)"
            ),
            has_metadata_key: "metadata ? $2".to_owned(),
        }
    }

    fn bind_time(query: Query<Postgres>, at: Option<DateTime<Utc>>) -> Query<Postgres> {
        query.bind(at)
    }

    fn read_time(row: &PgRow, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        row.try_get(column).map_err(super::map_err)
    }

    fn bind_metadata(
        query: Query<Postgres>,
        metadata: &Metadata,
    ) -> Result<Query<Postgres>, StoreError> {
        Ok(query.bind(serde_json::Value::Object(metadata.clone())))
    }

    fn read_metadata(row: &PgRow, column: &str) -> Result<serde_json::Value, StoreError> {
        row.try_get(column).map_err(super::map_err)
    }

    fn metadata_key(query: Query<Postgres>, marker: &str) -> Query<Postgres> {
        query.bind(marker.to_owned())
    }

    fn bind_last_used(
        query: Query<Postgres>,
        batch: &[(TokenId, DateTime<Utc>)],
    ) -> Result<Query<Postgres>, StoreError> {
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.as_str().to_owned()).collect();
        let times: Vec<DateTime<Utc>> = batch.iter().map(|(_, at)| *at).collect();
        Ok(query.bind(ids).bind(times))
    }

    fn bind_owner_lock(state: &PgState, query: Query<Postgres>, owner: &Owner) -> Query<Postgres> {
        query.bind(owner_lock_key(&state.lock_name, owner))
    }

    fn bind_announce(state: &PgState, query: Query<Postgres>) -> Query<Postgres> {
        query.bind(state.channel.clone())
    }

    async fn announce(
        state: &PgState,
        conn: &mut PgConnection,
        id: &TokenId,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&state.channel)
            .bind(id.as_str())
            .execute(conn)
            .await?;
        Ok(())
    }

    /// READ COMMITTED whatever the connection's default: under REPEATABLE READ the snapshot
    /// would be taken by the lock statement, before it waits, and the statements after it
    /// would miss what committed while it waited. Then the owner's advisory lock: shared for
    /// a rotation (inserts may run together, but not during a revoke-all of the same owner),
    /// exclusive for a revoke-all (which then sees every insert committed before it, and
    /// which every later insert waits for) and for a bootstrap's count-then-insert.
    async fn begin_owner_write(
        state: &PgState,
        pool: &PgPool,
        owner: &Owner,
        write: OwnerWrite,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let lock = match write {
            OwnerWrite::Rotate => "SELECT pg_advisory_xact_lock_shared($1)",
            OwnerWrite::InsertFirst | OwnerWrite::RevokeAll => "SELECT pg_advisory_xact_lock($1)",
        };
        let mut tx = pool.begin().await?;
        sqlx::query(READ_COMMITTED).execute(&mut *tx).await?;
        sqlx::query(lock)
            .bind(owner_lock_key(&state.lock_name, owner))
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    fn migrations(state: &PgState) -> &PgMigrator {
        &state.migrator
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_channels_fit_postgresqls_identifiers() {
        assert_eq!(change_channel(None), "apitoken_changes");
        let fits = "a".repeat(46);
        assert_eq!(
            change_channel(Some(&fits)),
            format!("apitoken_changes_{fits}")
        );
        let long = "a".repeat(48);
        let hashed = change_channel(Some(&long));
        assert!(hashed.len() <= MAX_IDENTIFIER_BYTES, "{hashed}");
        assert!(hashed.starts_with("apitoken_changes_0"), "{hashed}");
        // Per schema still: two long names sharing a prefix get two channels.
        assert_ne!(
            hashed,
            change_channel(Some(&format!("{}b", "a".repeat(47))))
        );
    }
}
