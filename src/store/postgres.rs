//! [`PostgresStore`]: token records in PostgreSQL.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Row, SqlStr};

use super::migrate::{self, Plan};
use super::sql::{self, InvalidIdentifier, timed};
use super::{StoreChange, StoreError, StoredToken, TokenStore};
use crate::id::TokenId;
use crate::record::{Owner, TokenRecord};
use crate::secret::SecretHash;

/// A [`TokenStore`] in PostgreSQL, on an sqlx pool.
///
/// - **Schema**: one table, `apitoken_tokens`, in the configured schema (default: the
///   connection's `search_path`). Ids and owners are `TEXT COLLATE "C"` (byte comparison, case
///   sensitive); the secret hash is `BYTEA`, unique; times are `TIMESTAMPTZ` (microseconds).
///   [`migrate`](Self::migrate) creates it, under an advisory lock so that replicas starting
///   together do not race. See `docs/stores.md` for the DDL.
/// - **Queries** are parameterised, each with a deadline (3 s by default, connection
///   acquisition included): a database that is down or slow makes the store report
///   [`StoreErrorKind::Unavailable`](super::StoreErrorKind::Unavailable), and the verifier
///   fails closed. The pool reconnects by itself when the database returns.
/// - **Changes** (insert, revoke) send a `NOTIFY` in the same statement, so another replica's
///   [`spawn_change_listener`](Self::spawn_change_listener) can drop cached entries at once.
/// - **Last use** is written forward-only, a batch in one `UPDATE … FROM UNNEST(…)`.
///
/// ```no_run
/// use apitoken::{PostgresStore, Verifier};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/app")?;
/// store.migrate().await?;
/// let verifier = Verifier::builder(store).build();
/// # let _ = verifier;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    queries: Arc<Queries>,
    timeout: Duration,
    lock_timeout: Duration,
}

#[derive(Debug)]
struct Queries {
    schema: Option<String>,
    table: String,
    /// `schema.apitoken_tokens` unquoted, as every release has spelled it in the owner
    /// lock's key (replicas of two releases must agree on it).
    lock_name: String,
    versions: String,
    channel: String,
    insert: SqlStr,
    get: SqlStr,
    find_by_hash: SqlStr,
    list_by_owner: SqlStr,
    revoke: SqlStr,
    revoke_owner: SqlStr,
    last_used: SqlStr,
    last_used_batch: SqlStr,
    next_id: SqlStr,
    retire_revoke: SqlStr,
    retire_expire: SqlStr,
    notify: SqlStr,
    /// Taken by inserts and rotations: they may run together, but not during a revoke-all of
    /// the same owner.
    owner_shared: SqlStr,
    /// Taken by a revoke-all before its `UPDATE`, which then sees every insert committed
    /// before it, and which every later insert waits for.
    owner_exclusive: SqlStr,
}

const COLUMNS: &str = "id, secret_hash, name, owner, scopes, metadata, created_at, last_used_at, \
                       expires_at, revoked_at, allowed_ips";

impl Queries {
    fn new(schema: Option<String>) -> Self {
        let qualify = |name: &str| sql::qualified(schema.as_deref(), name);
        let table = qualify("apitoken_tokens");
        let sequence = qualify("apitoken_token_ids");
        let versions = qualify(migrate::VERSIONS_TABLE);
        let channel = change_channel(schema.as_deref());
        Self {
            insert: sql::text(format!(
                "WITH owner_lock AS (SELECT pg_advisory_xact_lock_shared($13)), \
                 inserted AS (INSERT INTO {table} ({COLUMNS}) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 FROM owner_lock \
                 RETURNING id) \
                 SELECT pg_notify($12, id) FROM inserted"
            )),
            get: sql::text(format!("SELECT {COLUMNS} FROM {table} WHERE id = $1")),
            find_by_hash: sql::text(format!(
                "SELECT {COLUMNS} FROM {table} WHERE secret_hash = $1"
            )),
            list_by_owner: sql::text(format!("SELECT {COLUMNS} FROM {table} WHERE owner = $1")),
            revoke: sql::text(format!(
                "WITH revoked AS (UPDATE {table} SET revoked_at = $2 \
                 WHERE id = $1 AND revoked_at IS NULL RETURNING id) \
                 SELECT pg_notify($3, id) FROM revoked"
            )),
            revoke_owner: sql::text(format!(
                "WITH revoked AS (UPDATE {table} SET revoked_at = $2 \
                 WHERE owner = $1 AND revoked_at IS NULL RETURNING id) \
                 SELECT pg_notify($3, id) FROM revoked"
            )),
            last_used: sql::text(format!(
                "UPDATE {table} SET last_used_at = $2 \
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)"
            )),
            last_used_batch: sql::text(format!(
                "UPDATE {table} AS t SET last_used_at = v.at \
                 FROM UNNEST($1::text[], $2::timestamptz[]) AS v(id, at) \
                 WHERE t.id = v.id AND (t.last_used_at IS NULL OR t.last_used_at < v.at)"
            )),
            next_id: sql::text(format!(
                "SELECT n FROM (SELECT nextval('{sequence}') AS n) AS s \
                 WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE id = s.n::text)"
            )),
            retire_revoke: sql::text(format!(
                "UPDATE {table} SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING id"
            )),
            retire_expire: sql::text(format!(
                "UPDATE {table} SET expires_at = LEAST(COALESCE(expires_at, $2), $2) \
                 WHERE id = $1 AND revoked_at IS NULL RETURNING id"
            )),
            notify: sql::text("SELECT pg_notify($1, $2)".to_owned()),
            owner_shared: sql::text("SELECT pg_advisory_xact_lock_shared($1)".to_owned()),
            owner_exclusive: sql::text("SELECT pg_advisory_xact_lock($1)".to_owned()),
            lock_name: match &schema {
                Some(schema) => format!("{schema}.apitoken_tokens"),
                None => "apitoken_tokens".to_owned(),
            },
            schema,
            table,
            versions,
            channel,
        }
    }

    /// The DDL from schema version `from` to `from + 1`.
    ///
    /// 1. The first released schema: the table, its owner index, the id sequence.
    /// 2. IP allowlists (`allowed_ips`).
    fn migration_step(&self, from: u32) -> Vec<String> {
        let table = &self.table;
        let sequence = sql::qualified(self.schema.as_deref(), "apitoken_token_ids");
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
}

/// The schema version of [`PostgresStore`]'s tables this build writes.
const SCHEMA_VERSION: u32 = 2;

/// What the store reads, with PostgreSQL's names for the types.
const TOKEN_COLUMNS: &[(&str, &str)] = &[
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

/// The version of a token table made before versions were recorded.
fn probe_version(columns: &[(String, String)]) -> u32 {
    if columns.is_empty() {
        0
    } else if columns.iter().any(|(name, _)| name == "allowed_ips") {
        2
    } else {
        1
    }
}

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
        self.schema = Some(sql::identifier(schema)?.to_owned());
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
        PostgresStore {
            pool: self.pool,
            queries: Arc::new(Queries::new(self.schema)),
            timeout: self.timeout,
            lock_timeout: self.lock_timeout,
        }
    }
}

impl PostgresStore {
    /// A store on a new pool for `url`, with a 2-second acquire timeout. Connects lazily: this
    /// fails only for a malformed URL, and a database that is down now is found when it
    /// returns.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .acquire_timeout(sql::DEFAULT_ACQUIRE_TIMEOUT)
            .connect_lazy(url)
            .map_err(sql::map_err)?;
        Ok(Self::builder(pool).build())
    }

    /// A store on an existing pool.
    pub fn builder(pool: PgPool) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            pool,
            schema: None,
            timeout: sql::DEFAULT_QUERY_TIMEOUT,
            lock_timeout: sql::DEFAULT_MIGRATION_LOCK_TIMEOUT,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
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
    ///   [`Unavailable`](super::StoreErrorKind::Unavailable) rather than stall every lookup.
    ///   Tables made by releases that recorded no version are dated by their columns.
    /// - A newer version than this build knows, or a table whose columns are not this
    ///   store's (another type, one missing), is refused with
    ///   [`StoreErrorKind::Schema`](super::StoreErrorKind::Schema), changing nothing. A role
    ///   without the privileges DDL needs gets
    ///   [`StoreErrorKind::PermissionDenied`](super::StoreErrorKind::PermissionDenied).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let queries = &self.queries;
        let columns = [(queries.table.as_str(), TOKEN_COLUMNS)];
        let plan = self.plan(&columns);
        let steps = |from: u32| queries.migration_step(from);
        migrate::pg_migrate(
            &self.pool,
            &plan,
            queries.schema.as_deref(),
            &queries.table,
            probe_version,
            &steps,
            self.lock_timeout,
            // Migrations may wait for another replica's lock: allow them longer than a query.
            self.timeout * 10,
        )
        .await
    }

    /// Checks, changing nothing and taking no lock, that the tables are at the schema
    /// version this build uses: for processes that must not migrate (a read-only role, a
    /// command-line listing). [`StoreErrorKind::Schema`](super::StoreErrorKind::Schema) if
    /// they are missing, behind or ahead.
    ///
    /// ```no_run
    /// # async fn run(store: apitoken::PostgresStore) -> Result<(), apitoken::StoreError> {
    /// store.check_schema().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let columns = [(self.queries.table.as_str(), TOKEN_COLUMNS)];
        let plan = self.plan(&columns);
        let found = migrate::pg_version(&self.pool, &plan, self.timeout).await?;
        migrate::require_current(&plan, found)?;
        if migrate::pg_tables_ok(&self.pool, &plan, self.timeout).await? {
            Ok(())
        } else {
            Err(migrate::missing_tables(&plan))
        }
    }

    fn plan<'a>(
        &'a self,
        columns: &'a [(&'a str, &'a [(&'static str, &'static str)])],
    ) -> Plan<'a> {
        Plan {
            component: "tokens",
            current: SCHEMA_VERSION,
            versions: &self.queries.versions,
            columns,
        }
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
        let pool = self.pool.clone();
        let channel = self.queries.channel.clone();
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

impl PostgresStore {
    fn insert_query<'q>(
        &'q self,
        record: &'q TokenRecord,
        hash: &'q SecretHash,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(self.queries.insert.clone())
            .bind(record.id.as_str())
            .bind(hash.as_bytes().as_slice())
            .bind(&record.name)
            .bind(record.owner.as_str())
            .bind(record.scopes.to_string())
            .bind(serde_json::Value::Object(record.metadata.clone()))
            .bind(record.created_at)
            .bind(record.last_used_at)
            .bind(record.expires_at)
            .bind(record.revoked_at)
            .bind(sql::networks_text(&record.allowed_ips))
            .bind(&self.queries.channel)
            .bind(owner_lock_key(&self.queries.lock_name, &record.owner))
    }
}

impl super::CachedStore<PostgresStore> {
    /// Keeps this cache in step with every replica: listens for the changes any
    /// `PostgresStore` on the same database and schema makes (issue, revoke) and drops the
    /// affected entries, or all of them once after each reconnect. A revoke on one replica then takes
    /// effect on the others within the notification's delivery time, not the cache's TTL.
    ///
    /// ```no_run
    /// use apitoken::{CachedStore, PostgresStore, Verifier};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = CachedStore::new(PostgresStore::connect("postgres://postgres@127.0.0.1/app")?);
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

fn decode(row: &PgRow) -> Result<StoredToken, StoreError> {
    let get_err = sql::map_err;
    let hash: Vec<u8> = row.try_get("secret_hash").map_err(get_err)?;
    let id: String = row.try_get("id").map_err(get_err)?;
    let owner: String = row.try_get("owner").map_err(get_err)?;
    let scopes: String = row.try_get("scopes").map_err(get_err)?;
    let metadata: serde_json::Value = row.try_get("metadata").map_err(get_err)?;
    let mut record = TokenRecord::new(
        sql::token_id(&id)?,
        sql::owner(&owner)?,
        row.try_get::<String, _>("name").map_err(get_err)?,
        row.try_get("created_at").map_err(get_err)?,
    );
    record.scopes = sql::scopes(&scopes)?;
    record.metadata = sql::metadata(metadata)?;
    record.last_used_at = row.try_get("last_used_at").map_err(get_err)?;
    record.expires_at = row.try_get("expires_at").map_err(get_err)?;
    record.revoked_at = row.try_get("revoked_at").map_err(get_err)?;
    let allowed: String = row.try_get("allowed_ips").map_err(get_err)?;
    record.allowed_ips = sql::networks(&allowed)?;
    Ok(StoredToken::new(record, sql::secret_hash(&hash)?))
}

impl TokenStore for PostgresStore {
    async fn insert(&self, record: TokenRecord, hash: SecretHash) -> Result<(), StoreError> {
        let query = self.insert_query(&record, &hash);
        timed(self.timeout, query.execute(&self.pool)).await?;
        Ok(())
    }

    /// One transaction under the owner's exclusive advisory lock (the one revoke-all takes;
    /// inserts take it shared): the owner's records are counted and the record inserted with
    /// no other insert for the owner in between.
    async fn insert_first(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> Result<bool, StoreError> {
        let key = owner_lock_key(&self.queries.lock_name, &record.owner);
        let any = sql::text(format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE owner = $1)",
            self.queries.table
        ));
        let work = async {
            let mut tx = self.pool.begin().await?;
            // READ COMMITTED, so the count sees what committed while the lock was awaited.
            sqlx::query(READ_COMMITTED).execute(&mut *tx).await?;
            sqlx::query(self.queries.owner_exclusive.clone())
                .bind(key)
                .execute(&mut *tx)
                .await?;
            let taken: bool = sqlx::query_scalar(any)
                .bind(record.owner.as_str())
                .fetch_one(&mut *tx)
                .await?;
            if taken {
                return Ok(false);
            }
            self.insert_query(&record, &hash).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        };
        // A transaction dropped without commit (the early return) rolls back.
        timed(self.timeout, work).await
    }

    async fn rotate(
        &self,
        old: &TokenId,
        retire: super::Retire,
        new: TokenRecord,
        hash: SecretHash,
    ) -> Result<bool, StoreError> {
        let (retire_query, at) = match retire {
            super::Retire::RevokeAt(at) => (self.queries.retire_revoke.clone(), at),
            super::Retire::ExpireAt(at) => (self.queries.retire_expire.clone(), at),
        };
        let old = *old;
        let work = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(READ_COMMITTED).execute(&mut *tx).await?;
            // First, before any row lock: a revoke-all holding the owner's lock may be
            // waiting for the old token's row.
            sqlx::query(self.queries.owner_shared.clone())
                .bind(owner_lock_key(&self.queries.lock_name, &new.owner))
                .execute(&mut *tx)
                .await?;
            let retired = sqlx::query(retire_query)
                .bind(old.as_str())
                .bind(at)
                .fetch_optional(&mut *tx)
                .await?;
            if retired.is_none() {
                tx.rollback().await?;
                return Ok(false);
            }
            self.insert_query(&new, &hash).execute(&mut *tx).await?;
            sqlx::query(self.queries.notify.clone())
                .bind(&self.queries.channel)
                .bind(old.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        };
        timed(self.timeout, work).await
    }

    async fn next_id(&self) -> Result<TokenId, StoreError> {
        // Skips sequence values taken by ids inserted explicitly.
        for _ in 0..1000 {
            let row = timed(
                self.timeout,
                sqlx::query(self.queries.next_id.clone()).fetch_optional(&self.pool),
            )
            .await?;
            if let Some(row) = row {
                let n: i64 = row.try_get("n").map_err(sql::map_err)?;
                let n = u64::try_from(n).map_err(StoreError::corrupt)?;
                return Ok(TokenId::from_u64(n));
            }
        }
        Err(StoreError::new(
            super::StoreErrorKind::Conflict,
            "1000 consecutive sequence values were already taken",
        ))
    }

    fn get(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        let id = *id;
        async move {
            let query = sqlx::query(self.queries.get.clone()).bind(id.as_str());
            let row = timed(self.timeout, query.fetch_optional(&self.pool)).await?;
            row.map(|row| decode(&row)).transpose()
        }
    }

    fn find_by_hash(
        &self,
        hash: &SecretHash,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        let hash = *hash;
        async move {
            let query =
                sqlx::query(self.queries.find_by_hash.clone()).bind(hash.as_bytes().as_slice());
            let row = timed(self.timeout, query.fetch_optional(&self.pool)).await?;
            row.map(|row| decode(&row)).transpose()
        }
    }

    fn list_by_owner(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
        let owner = owner.as_str().to_owned();
        async move {
            let rows = timed(
                self.timeout,
                sqlx::query(self.queries.list_by_owner.clone())
                    .bind(owner)
                    .fetch_all(&self.pool),
            )
            .await?;
            let mut records = rows
                .iter()
                .map(|row| decode(row).map(|s| TokenRecord::clone(&s.record)))
                .collect::<Result<Vec<_>, _>>()?;
            // The same order as every other store (numeric ids by value).
            records.sort_by_key(|r| (r.created_at, r.id));
            Ok(records)
        }
    }

    fn revoke(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let id = *id;
        async move {
            let rows = timed(
                self.timeout,
                sqlx::query(self.queries.revoke.clone())
                    .bind(id.as_str().to_owned())
                    .bind(at)
                    .bind(&self.queries.channel)
                    .fetch_all(&self.pool),
            )
            .await?;
            Ok(!rows.is_empty())
        }
    }

    fn revoke_owner(
        &self,
        owner: &Owner,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let key = owner_lock_key(&self.queries.lock_name, owner);
        let owner = owner.as_str().to_owned();
        async move {
            let work = async {
                let mut tx = self.pool.begin().await?;
                // READ COMMITTED whatever the connection's default: under REPEATABLE READ the
                // snapshot would be taken by the lock statement, before it waits, and the
                // UPDATE would miss the inserts it waited for.
                sqlx::query(READ_COMMITTED).execute(&mut *tx).await?;
                // Waits for inserts of this owner in flight; later ones wait for the commit.
                sqlx::query(self.queries.owner_exclusive.clone())
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                let rows = sqlx::query(self.queries.revoke_owner.clone())
                    .bind(owner)
                    .bind(at)
                    .bind(&self.queries.channel)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(rows.len())
            };
            timed(self.timeout, work).await
        }
    }

    fn remove_expired(
        &self,
        before: DateTime<Utc>,
        marker: &str,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let marker = super::is_plain_marker(marker).then(|| marker.to_owned());
        let query = sql::text(format!(
            "WITH gone AS (DELETE FROM {} WHERE expires_at <= $1 AND metadata ? $2 RETURNING 1) \
             SELECT count(*) FROM gone",
            self.queries.table
        ));
        async move {
            let Some(marker) = marker else { return Ok(0) };
            let row = timed(
                self.timeout,
                sqlx::query(query)
                    .bind(before)
                    .bind(marker)
                    .fetch_one(&self.pool),
            )
            .await?;
            let gone: i64 = row.try_get(0).map_err(sql::map_err)?;
            Ok(usize::try_from(gone).unwrap_or(0))
        }
    }

    fn record_last_used(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let id = *id;
        async move {
            timed(
                self.timeout,
                sqlx::query(self.queries.last_used.clone())
                    .bind(id.as_str().to_owned())
                    .bind(at)
                    .execute(&self.pool),
            )
            .await?;
            Ok(())
        }
    }

    fn record_last_used_batch(
        &self,
        batch: &[(TokenId, DateTime<Utc>)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let latest = sql::latest_per_id(batch);
        async move {
            if latest.is_empty() {
                return Ok(());
            }
            let ids: Vec<String> = latest
                .iter()
                .map(|(id, _)| id.as_str().to_owned())
                .collect();
            let times: Vec<DateTime<Utc>> = latest.iter().map(|(_, at)| *at).collect();
            timed(
                self.timeout,
                sqlx::query(self.queries.last_used_batch.clone())
                    .bind(ids)
                    .bind(times)
                    .execute(&self.pool),
            )
            .await?;
            Ok(())
        }
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
