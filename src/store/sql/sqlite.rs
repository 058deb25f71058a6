//! SQLite: its dialect ([`Lite`]: times as `INTEGER` microseconds, metadata as JSON text, a
//! sequence table, `BEGIN IMMEDIATE` for a bootstrap, a JSON array for a batch) and
//! [`SqliteStore`]. The token logic itself is [`TokenTable`]'s. Uses the token values and
//! `crate::store` only.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteQueryResult, SqliteRow,
};
use sqlx::{Row, Sqlite, Transaction};

use super::migrate::sqlite::SqliteMigrator;
use super::sqlite_reads::DirectReads;
use super::tokens::{
    COLUMNS, DialectStatements, Key, Names, OwnerWrite, TokenColumns, TokenDialect, TokenTable,
    token_store_on_table,
};
use super::{Dialect, InvalidIdentifier, Query};
use crate::id::TokenId;
use crate::record::{Metadata, Owner};
use crate::store::{StoreError, StoreErrorKind, StoredToken};

/// A [`TokenStore`](crate::store::TokenStore) in SQLite (bundled with sqlx: nothing to
/// install).
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
    table: TokenTable<Lite>,
}

token_store_on_table!(SqliteStore);

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
        self.prefix = super::identifier(prefix)?.to_owned();
        Ok(self)
    }

    /// The deadline of each query, connection acquisition included. Default: 3 seconds.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the store.
    pub fn build(self) -> SqliteStore {
        let prefix = &self.prefix;
        let names = Names {
            table: format!("{prefix}tokens"),
            sequence: format!("{prefix}sequence"),
            versions: format!("{prefix}schema_versions"),
        };
        SqliteStore {
            table: TokenTable::new(self.pool, LiteTokens::default(), names, self.timeout),
        }
    }
}

impl SqliteStore {
    /// A store on a new pool for `url` (`sqlite://path/to/tokens.db`, or `sqlite::memory:`),
    /// creating the file if missing, in WAL mode with a 2-second busy timeout. An in-memory
    /// database gets a single connection, so every query sees the same database.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(super::map_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(super::DEFAULT_ACQUIRE_TIMEOUT);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = Self::pool_options()
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
            .map_err(super::map_err)?;
        Ok(Self::builder(pool).build())
    }

    /// The pool options [`connect`](Self::connect) starts from, for a pool of your own
    /// (passed to [`SanctumStore::sqlite`](crate::SanctumStore::sqlite), say): a 2-second
    /// acquire timeout, and a connection pinged on acquire only after 1 s unused. sqlx's own
    /// default pings every connection it hands out, a round trip to the connection's worker
    /// thread on every lookup (about a third of an uncached lookup here,
    /// `docs/performance.md`).
    ///
    /// ```
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = apitoken::SqliteStore::pool_options()
    ///     .max_connections(4)
    ///     .connect_lazy("sqlite://tokens.db")?;
    /// let store = apitoken::SqliteStore::builder(pool).build();
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// # rt.block_on(async { run() }).unwrap();
    /// ```
    pub fn pool_options() -> sqlx::sqlite::SqlitePoolOptions {
        super::pool_options()
    }

    /// A store on an existing pool.
    pub fn builder(pool: SqlitePool) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            pool,
            prefix: "apitoken_".to_owned(),
            timeout: super::DEFAULT_QUERY_TIMEOUT,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.table.pool
    }

    /// Brings the tables to the schema version this build uses, creating them if missing.
    ///
    /// It first reads the version recorded in `{prefix}schema_versions`; if it is current,
    /// nothing else happens (no write, so a read-only file is fine). Otherwise it upgrades
    /// in one `BEGIN IMMEDIATE` transaction (processes migrating at once take turns): a file
    /// made by a release that recorded no version is dated by its columns and gets what it
    /// lacks (`ALTER TABLE … ADD COLUMN`). A newer version than this build knows, or a table
    /// whose columns are not this store's, is refused with
    /// [`StoreErrorKind::Schema`], changing nothing.
    ///
    /// Versions: 1, the first released table; 2, IP allowlists (`allowed_ips`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.table.migrate().await
    }

    /// Checks, changing nothing, that the tables are at the schema version this build uses:
    /// [`StoreErrorKind::Schema`] if they are missing, behind or ahead.
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
        self.table.check_schema().await
    }
}

/// A forward-only last-use `UPDATE` of `table` on SQLite for a whole batch in one statement:
/// the `(id, time)` pairs arrive as one JSON array in `$1`. `set` is the `SET` list, written
/// in terms of `v.at`.
pub(crate) fn last_used_batch(table: &str, set: &str) -> String {
    format!(
        "UPDATE {table} SET {set} \
         FROM (SELECT json_extract(value, '$[0]') AS id, \
                      json_extract(value, '$[1]') AS at FROM json_each($1)) AS v \
         WHERE {table}.id = v.id \
         AND ({table}.last_used_at IS NULL OR {table}.last_used_at < v.at)"
    )
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| StoreError::new(StoreErrorKind::Corrupt, "a stored time is out of range"))
}

/// A secret hash that is neither a BLOB nor a TEXT.
#[derive(Debug, thiserror::Error)]
#[error("a stored secret hash is not bytes")]
struct NotBytes;

/// SQLite, as the SQL stores' dialect.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lite;

/// What a token table on SQLite keeps: its migrator, and the reads that run on the calling
/// thread.
#[derive(Debug, Default)]
pub(crate) struct LiteTokens {
    migrator: SqliteMigrator,
    reads: DirectReads,
}

/// A token row as [`DirectReads`] reads it: the same columns, types and checks as the pool's
/// reads (`Lite::read_time`, `Lite::read_metadata`), each column by its place in [`COLUMNS`]:
/// rusqlite finds a column by name with a scan of every name.
fn decode_now(row: &rusqlite::Row<'_>) -> Result<StoredToken, StoreError> {
    use rusqlite::types::ValueRef;
    let text = |at: usize| row.get::<_, String>(at).map_err(StoreError::corrupt);
    let time = |at: usize| {
        let micros: Option<i64> = row.get(at).map_err(StoreError::corrupt)?;
        micros.map(from_micros).transpose()
    };
    TokenColumns {
        id: text(0)?,
        // As sqlx reads bytes: a BLOB, or the bytes of a TEXT.
        secret_hash: match row.get_ref(1).map_err(StoreError::corrupt)? {
            ValueRef::Blob(bytes) | ValueRef::Text(bytes) => bytes.to_vec(),
            _ => return Err(StoreError::corrupt(NotBytes)),
        },
        name: text(2)?,
        owner: text(3)?,
        scopes: text(4)?,
        metadata: serde_json::from_str(&text(5)?).map_err(StoreError::corrupt)?,
        created_at: time(6)?,
        last_used_at: time(7)?,
        expires_at: time(8)?,
        revoked_at: time(9)?,
        allowed_ips: text(10)?,
    }
    .check()
}

impl Dialect for Lite {
    type Db = Sqlite;

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }
}

impl TokenDialect for Lite {
    type State = LiteTokens;
    type Migrations = SqliteMigrator;

    /// With the types the table declares.
    const COLUMN_TYPES: &'static [(&'static str, &'static str)] = &[
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

    fn migration_step(names: &Names, from: u32) -> Vec<String> {
        let Names {
            table, sequence, ..
        } = names;
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

    fn statements(names: &Names) -> DialectStatements {
        let Names {
            table, sequence, ..
        } = names;
        let revoke = |which: &str| {
            format!("UPDATE {table} SET revoked_at = $1 WHERE {which} = $2 AND revoked_at IS NULL")
        };
        DialectStatements {
            insert: format!(
                "INSERT INTO {table} ({COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ),
            revoke: revoke("id"),
            revoke_owner: revoke("owner"),
            next_id: format!(
                "UPDATE {sequence} SET value = value + 1 WHERE name = 'token_ids' \
                 RETURNING value AS n, \
                 EXISTS (SELECT 1 FROM {table} WHERE id = CAST(value AS TEXT)) AS taken"
            ),
            // One statement for a whole batch: the pairs arrive as one JSON array.
            last_used_batch: last_used_batch(table, "last_used_at = v.at"),
            has_metadata_key: "json_type(metadata, $2) IS NOT NULL".to_owned(),
        }
    }

    fn bind_time(query: Query<Sqlite>, at: Option<DateTime<Utc>>) -> Query<Sqlite> {
        query.bind(at.map(micros))
    }

    fn read_time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let value: Option<i64> = row.try_get(column).map_err(super::map_err)?;
        value.map(from_micros).transpose()
    }

    fn bind_metadata(
        query: Query<Sqlite>,
        metadata: &Metadata,
    ) -> Result<Query<Sqlite>, StoreError> {
        let text = serde_json::to_string(metadata).map_err(StoreError::corrupt)?;
        Ok(query.bind(text))
    }

    fn read_metadata(row: &SqliteRow, column: &str) -> Result<serde_json::Value, StoreError> {
        let text: String = row.try_get(column).map_err(super::map_err)?;
        serde_json::from_str(&text).map_err(StoreError::corrupt)
    }

    /// A plain name needs no escaping inside the quoted JSON path.
    fn metadata_key(query: Query<Sqlite>, marker: &str) -> Query<Sqlite> {
        query.bind(format!("$.\"{marker}\""))
    }

    fn bind_last_used(
        query: Query<Sqlite>,
        batch: &[(TokenId, DateTime<Utc>)],
    ) -> Result<Query<Sqlite>, StoreError> {
        let pairs: Vec<(&str, i64)> = batch
            .iter()
            .map(|(id, at)| (id.as_str(), micros(*at)))
            .collect();
        let pairs = serde_json::to_string(&pairs).map_err(StoreError::corrupt)?;
        Ok(query.bind(pairs))
    }

    /// SQLite has one writer at a time, so a single write needs no lock of its own; a
    /// bootstrap's count-then-insert takes the write lock up front (`BEGIN IMMEDIATE`), so no
    /// other write comes between, across processes.
    async fn begin_owner_write(
        _: &LiteTokens,
        pool: &SqlitePool,
        _: &Owner,
        write: OwnerWrite,
    ) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        match write {
            OwnerWrite::InsertFirst => pool.begin_with("BEGIN IMMEDIATE").await,
            OwnerWrite::Rotate | OwnerWrite::RevokeAll => pool.begin().await,
        }
    }

    fn migrations(state: &LiteTokens) -> &SqliteMigrator {
        &state.migrator
    }

    /// On the calling thread through [`DirectReads`], once the file is known.
    async fn lookup_now(
        state: &LiteTokens,
        statement: &str,
        key: Key<'_>,
    ) -> Option<Result<Option<StoredToken>, StoreError>> {
        DirectReads::take_turn().await;
        match key {
            Key::Id(id) => state.reads.read(statement, id.as_str(), |row| {
                let Some(row) = row else { return Ok(None) };
                let found = row.get::<_, String>(0).map_err(StoreError::corrupt);
                super::row_if_asked(decode_now(row), found, id.as_str())
            }),
            Key::Hash(hash) => state.reads.read(statement, hash.as_bytes(), |row| {
                row.map(decode_now).transpose()
            }),
        }
    }

    async fn after_pool_lookup(state: &LiteTokens, conn: &mut sqlx::SqliteConnection) {
        if !state.reads.learnt() {
            state.reads.learn(conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`decode_now`] reads by place: the places are those of the columns every lookup
    /// selects (the store suite checks each value read back).
    #[test]
    fn direct_reads_read_the_columns_they_name() {
        let places = [
            "id",
            "secret_hash",
            "name",
            "owner",
            "scopes",
            "metadata",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
            "allowed_ips",
        ];
        let listed: Vec<&str> = COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(listed, places);
    }
}
