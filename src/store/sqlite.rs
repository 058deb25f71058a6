//! [`SqliteStore`]: token records in SQLite.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{Row, SqlStr};

use super::migrate::{self, Plan};
use super::sql::{self, InvalidIdentifier, timed};
use super::{StoreError, StoredToken, TokenStore};
use crate::id::TokenId;
use crate::record::{Owner, TokenRecord};
use crate::secret::SecretHash;

/// A [`TokenStore`] in SQLite (bundled with sqlx: nothing to install).
///
/// - **Schema**: the table `{prefix}tokens` (default prefix `apitoken_`). Ids and owners are
///   `TEXT` (SQLite compares them byte by byte); the secret hash is a unique 32-byte `BLOB`;
///   times are `INTEGER` microseconds since the Unix epoch, so they compare correctly in SQL.
///   [`migrate`](Self::migrate) creates it.
/// - **Queries** are parameterised, each with a deadline (3 s by default): a locked or slow
///   database makes the store report itself unavailable, and the verifier fails closed.
/// - **Changes** are not announced to other processes: SQLite has no notification channel, so
///   a cache over this store relies on its TTL (see `docs/stores.md`).
///
/// ```
/// use apitoken::{SqliteStore, Verifier};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = SqliteStore::connect("sqlite::memory:").await?;
/// store.migrate().await?;
/// let verifier = Verifier::builder(store).build();
/// # let _ = verifier;
/// # Ok::<(), apitoken::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    queries: Arc<Queries>,
    timeout: Duration,
}

#[derive(Debug)]
struct Queries {
    table: String,
    sequence: String,
    versions: String,
    insert: SqlStr,
    get: SqlStr,
    find_by_hash: SqlStr,
    list_by_owner: SqlStr,
    revoke: SqlStr,
    revoke_owner: SqlStr,
    last_used: SqlStr,
    next_id: SqlStr,
    retire_revoke: SqlStr,
    retire_expire: SqlStr,
    remove_expired: SqlStr,
    last_used_batch: SqlStr,
}

/// The schema version of [`SqliteStore`]'s tables this build writes.
const SCHEMA_VERSION: u32 = 2;

/// What the store reads, with the types it declares.
const TOKEN_COLUMNS: &[(&str, &str)] = &[
    ("id", "TEXT"),
    ("secret_hash", "BLOB"),
    ("name", "TEXT"),
    ("owner", "TEXT"),
    ("scopes", "TEXT"),
    ("metadata", "TEXT"),
    ("created_at", "INTEGER"),
    ("last_used_at", "INTEGER"),
    ("expires_at", "INTEGER"),
    ("revoked_at", "INTEGER"),
    ("allowed_ips", "TEXT"),
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

const COLUMNS: &str = "id, secret_hash, name, owner, scopes, metadata, created_at, last_used_at, \
                       expires_at, revoked_at, allowed_ips";

impl Queries {
    /// The DDL from schema version `from` to `from + 1`.
    fn migration_step(&self, from: u32) -> Vec<String> {
        let (table, sequence) = (&self.table, &self.sequence);
        match from {
            0 => vec![format!(
                "CREATE TABLE {table} (\
                     id TEXT NOT NULL PRIMARY KEY, \
                     secret_hash BLOB NOT NULL UNIQUE CHECK (length(secret_hash) = 32), \
                     name TEXT NOT NULL, \
                     owner TEXT NOT NULL, \
                     scopes TEXT NOT NULL DEFAULT '', \
                     metadata TEXT NOT NULL DEFAULT '{{}}', \
                     created_at INTEGER NOT NULL, \
                     last_used_at INTEGER, \
                     expires_at INTEGER, \
                     revoked_at INTEGER); \
                 CREATE INDEX IF NOT EXISTS {table}_owner_idx ON {table} (owner, created_at); \
                 CREATE TABLE IF NOT EXISTS {sequence} (name TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL); \
                 INSERT OR IGNORE INTO {sequence} (name, value) VALUES ('token_ids', 0);"
            )],
            1 => vec![format!(
                "ALTER TABLE {table} ADD COLUMN allowed_ips TEXT NOT NULL DEFAULT ''"
            )],
            _ => Vec::new(),
        }
    }

    fn new(prefix: &str) -> Self {
        let table = format!("{prefix}tokens");
        let sequence = format!("{prefix}sequence");
        Self {
            versions: format!("{prefix}schema_versions"),
            insert: sql::text(format!(
                "INSERT INTO {table} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            )),
            get: sql::text(format!("SELECT {COLUMNS} FROM {table} WHERE id = $1")),
            find_by_hash: sql::text(format!(
                "SELECT {COLUMNS} FROM {table} WHERE secret_hash = $1"
            )),
            list_by_owner: sql::text(format!("SELECT {COLUMNS} FROM {table} WHERE owner = $1")),
            revoke: sql::text(format!(
                "UPDATE {table} SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL"
            )),
            revoke_owner: sql::text(format!(
                "UPDATE {table} SET revoked_at = $2 WHERE owner = $1 AND revoked_at IS NULL"
            )),
            last_used: sql::text(format!(
                "UPDATE {table} SET last_used_at = $2 \
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)"
            )),
            next_id: sql::text(format!(
                "UPDATE {sequence} SET value = value + 1 WHERE name = 'token_ids' RETURNING value"
            )),
            retire_revoke: sql::text(format!(
                "UPDATE {table} SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL"
            )),
            // One statement for a whole batch: the pairs arrive as one JSON array.
            last_used_batch: sql::text(sql::sqlite_last_used_batch(&table, "last_used_at = v.at")),
            remove_expired: sql::text(format!(
                "DELETE FROM {table} WHERE expires_at <= $1 AND json_type(metadata, $2) IS NOT NULL"
            )),
            retire_expire: sql::text(format!(
                "UPDATE {table} SET expires_at = MIN(COALESCE(expires_at, $2), $2) \
                 WHERE id = $1 AND revoked_at IS NULL"
            )),
            table,
            sequence,
        }
    }
}

/// Configures a [`SqliteStore`]. Made by [`SqliteStore::builder`].
#[derive(Debug)]
#[must_use]
pub struct SqliteStoreBuilder {
    pool: SqlitePool,
    prefix: String,
    timeout: Duration,
}

impl SqliteStoreBuilder {
    /// Prefixes the table names (default `apitoken_`): lowercase letters, digits and `_`.
    pub fn table_prefix(mut self, prefix: &str) -> Result<Self, InvalidIdentifier> {
        self.prefix = sql::identifier(prefix)?.to_owned();
        Ok(self)
    }

    /// The deadline of each query, connection acquisition included. Default: 3 seconds.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the store.
    pub fn build(self) -> SqliteStore {
        SqliteStore {
            pool: self.pool,
            queries: Arc::new(Queries::new(&self.prefix)),
            timeout: self.timeout,
        }
    }
}

impl SqliteStore {
    /// A store on a new pool for `url` (`sqlite://path/to/tokens.db`, or `sqlite::memory:`),
    /// creating the file if missing, in WAL mode with a 2-second busy timeout. An in-memory
    /// database gets a single connection, so every query sees the same database.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(sql::map_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(sql::DEFAULT_ACQUIRE_TIMEOUT);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = SqlitePoolOptions::new()
            .acquire_timeout(sql::DEFAULT_ACQUIRE_TIMEOUT)
            .max_connections(if in_memory { 1 } else { 8 })
            // An in-memory database lives as long as its connection.
            .idle_timeout(if in_memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if in_memory {
                None
            } else {
                Some(Duration::from_secs(1800))
            })
            .connect_with(options)
            .await
            .map_err(sql::map_err)?;
        Ok(Self::builder(pool).build())
    }

    /// A store on an existing pool.
    pub fn builder(pool: SqlitePool) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            pool,
            prefix: "apitoken_".to_owned(),
            timeout: sql::DEFAULT_QUERY_TIMEOUT,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Brings the tables to the schema version this build uses, creating them if missing.
    ///
    /// It first reads the version recorded in `{prefix}schema_versions`; if it is current,
    /// nothing else happens (no write, so a read-only file is fine). Otherwise it upgrades
    /// in one `BEGIN IMMEDIATE` transaction (processes migrating at once take turns): a file
    /// made by a release that recorded no version is dated by its columns and gets what it
    /// lacks (`ALTER TABLE … ADD COLUMN`). A newer version than this build knows, or a table
    /// whose columns are not this store's, is refused with
    /// [`StoreErrorKind::Schema`](super::StoreErrorKind::Schema), changing nothing.
    ///
    /// Versions: 1, the first released table; 2, IP allowlists (`allowed_ips`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let queries = &self.queries;
        let columns = [(queries.table.as_str(), TOKEN_COLUMNS)];
        let plan = self.plan(&columns);
        let steps = |from: u32| queries.migration_step(from);
        migrate::sqlite_migrate(
            &self.pool,
            &plan,
            &queries.versions,
            &queries.table,
            probe_version,
            &steps,
            self.timeout,
        )
        .await
    }

    /// Checks, changing nothing, that the tables are at the schema version this build uses:
    /// [`StoreErrorKind::Schema`](super::StoreErrorKind::Schema) if they are missing, behind
    /// or ahead.
    ///
    /// ```
    /// use apitoken::{SqliteStore, StoreErrorKind};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = SqliteStore::connect("sqlite::memory:").await?;
    /// assert_eq!(store.check_schema().await.unwrap_err().kind(), StoreErrorKind::Schema);
    /// store.migrate().await?;
    /// store.check_schema().await?;
    /// # Ok::<(), apitoken::StoreError>(())
    /// # }).unwrap();
    /// ```
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let columns = [(self.queries.table.as_str(), TOKEN_COLUMNS)];
        let plan = self.plan(&columns);
        let found =
            migrate::sqlite_version(&self.pool, &plan, &self.queries.versions, self.timeout)
                .await?;
        migrate::require_current(&plan, found)?;
        if migrate::sqlite_tables_ok(&self.pool, &plan, self.timeout).await? {
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
}

impl SqliteStore {
    fn insert_query<'q>(
        &'q self,
        record: &'q TokenRecord,
        hash: &'q SecretHash,
        metadata: String,
    ) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
        sqlx::query(self.queries.insert.clone())
            .bind(record.id.as_str())
            .bind(hash.as_bytes().as_slice())
            .bind(&record.name)
            .bind(record.owner.as_str())
            .bind(record.scopes.to_string())
            .bind(metadata)
            .bind(micros(record.created_at))
            .bind(record.last_used_at.map(micros))
            .bind(record.expires_at.map(micros))
            .bind(record.revoked_at.map(micros))
            .bind(sql::networks_text(&record.allowed_ips))
    }
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| {
        StoreError::new(
            super::StoreErrorKind::Corrupt,
            "a stored time is out of range",
        )
    })
}

fn optional_time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    let value: Option<i64> = row.try_get(column).map_err(sql::map_err)?;
    value.map(from_micros).transpose()
}

fn decode(row: &SqliteRow) -> Result<StoredToken, StoreError> {
    let get_err = sql::map_err;
    let hash: Vec<u8> = row.try_get("secret_hash").map_err(get_err)?;
    let id: String = row.try_get("id").map_err(get_err)?;
    let owner: String = row.try_get("owner").map_err(get_err)?;
    let scopes: String = row.try_get("scopes").map_err(get_err)?;
    let metadata: String = row.try_get("metadata").map_err(get_err)?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).map_err(StoreError::corrupt)?;
    let mut record = TokenRecord::new(
        sql::token_id(&id)?,
        sql::owner(&owner)?,
        row.try_get::<String, _>("name").map_err(get_err)?,
        from_micros(row.try_get("created_at").map_err(get_err)?)?,
    );
    record.scopes = sql::scopes(&scopes)?;
    record.metadata = sql::metadata(metadata)?;
    record.last_used_at = optional_time(row, "last_used_at")?;
    record.expires_at = optional_time(row, "expires_at")?;
    record.revoked_at = optional_time(row, "revoked_at")?;
    let allowed: String = row.try_get("allowed_ips").map_err(get_err)?;
    record.allowed_ips = sql::networks(&allowed)?;
    Ok(StoredToken::new(record, sql::secret_hash(&hash)?))
}

impl TokenStore for SqliteStore {
    async fn insert(&self, record: TokenRecord, hash: SecretHash) -> Result<(), StoreError> {
        let metadata = serde_json::to_string(&record.metadata).map_err(StoreError::corrupt)?;
        let query = self.insert_query(&record, &hash, metadata);
        timed(self.timeout, query.execute(&self.pool)).await?;
        Ok(())
    }

    /// One `BEGIN IMMEDIATE` transaction (SQLite's single writer): the owner's records are
    /// counted and the record inserted with no other write in between, across processes.
    async fn insert_first(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> Result<bool, StoreError> {
        let metadata = serde_json::to_string(&record.metadata).map_err(StoreError::corrupt)?;
        let any = sql::text(format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE owner = $1)",
            self.queries.table
        ));
        let work = async {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let taken: bool = sqlx::query_scalar(any)
                .bind(record.owner.as_str())
                .fetch_one(&mut *tx)
                .await?;
            if taken {
                return Ok(false);
            }
            self.insert_query(&record, &hash, metadata)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        };
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
        let metadata = serde_json::to_string(&new.metadata).map_err(StoreError::corrupt)?;
        let old = *old;
        let work = async {
            let mut tx = self.pool.begin().await?;
            let retired = sqlx::query(retire_query)
                .bind(old.as_str())
                .bind(micros(at))
                .execute(&mut *tx)
                .await?;
            if retired.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            self.insert_query(&new, &hash, metadata)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        };
        timed(self.timeout, work).await
    }

    async fn next_id(&self) -> Result<TokenId, StoreError> {
        // Skips values taken by ids inserted explicitly.
        for _ in 0..1000 {
            let row = timed(
                self.timeout,
                sqlx::query(self.queries.next_id.clone()).fetch_one(&self.pool),
            )
            .await?;
            let n: i64 = row.try_get("value").map_err(sql::map_err)?;
            let id = TokenId::from_u64(u64::try_from(n).map_err(StoreError::corrupt)?);
            if self.get(&id).await?.is_none() {
                return Ok(id);
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
            let query = sqlx::query(self.queries.list_by_owner.clone()).bind(owner);
            let rows = timed(self.timeout, query.fetch_all(&self.pool)).await?;
            let mut records = rows
                .iter()
                .map(|row| decode(row).map(|s| TokenRecord::clone(&s.record)))
                .collect::<Result<Vec<_>, _>>()?;
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
            let query = sqlx::query(self.queries.revoke.clone())
                .bind(id.as_str())
                .bind(micros(at));
            let done = timed(self.timeout, query.execute(&self.pool)).await?;
            Ok(done.rows_affected() > 0)
        }
    }

    fn revoke_owner(
        &self,
        owner: &Owner,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let owner = owner.as_str().to_owned();
        async move {
            let query = sqlx::query(self.queries.revoke_owner.clone())
                .bind(owner)
                .bind(micros(at));
            let done = timed(self.timeout, query.execute(&self.pool)).await?;
            Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
        }
    }

    fn remove_expired(
        &self,
        before: DateTime<Utc>,
        marker: &str,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        // A plain name needs no escaping inside the quoted JSON path.
        let path = super::is_plain_marker(marker).then(|| format!("$.\"{marker}\""));
        async move {
            let Some(path) = path else { return Ok(0) };
            let query = sqlx::query(self.queries.remove_expired.clone())
                .bind(micros(before))
                .bind(path);
            let done = timed(self.timeout, query.execute(&self.pool)).await?;
            Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
        }
    }

    fn record_last_used(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let id = *id;
        async move {
            let query = sqlx::query(self.queries.last_used.clone())
                .bind(id.as_str())
                .bind(micros(at));
            timed(self.timeout, query.execute(&self.pool)).await?;
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
            let pairs: Vec<(&str, i64)> = latest
                .iter()
                .map(|(id, at)| (id.as_str(), micros(*at)))
                .collect();
            let pairs = serde_json::to_string(&pairs).map_err(StoreError::corrupt)?;
            let query = sqlx::query(self.queries.last_used_batch.clone()).bind(pairs);
            timed(self.timeout, query.execute(&self.pool)).await?;
            Ok(())
        }
    }
}
