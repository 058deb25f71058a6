//! The SQL stores, on sqlx: what they share lives here, and each database has one file for
//! what differs.
//!
//! - This file: the [`Driver`] plumbing every sqlx database gets for free (binding and reading
//!   the plain types, running a query on a connection), the [`Dialect`] trait each database
//!   implements, error mapping, query deadlines, identifier checks, and the decoding of the
//!   values every table holds (ids, owners, scopes, hashes, networks).
//! - `tokens.rs`: [`TokenTable`](tokens::TokenTable), the whole [`TokenStore`](super::TokenStore)
//!   logic of [`PostgresStore`] and [`SqliteStore`], written once over a
//!   [`TokenDialect`](tokens::TokenDialect).
//! - `migrate/`: schema versions and migrations, shared, with each database's catalog queries
//!   and locks in a file of its own.
//! - `sanctum/`: [`SanctumStore`] over Laravel's own table, shared, with each database's time
//!   columns and sequences in a file of its own.
//! - `naive_time.rs`: [`NaiveTimeZone`], the zone of another application's offset-less times.
//! - `token_store.rs`: the `TokenStore` implementation each public store gets from its table.
//! - `token_row.rs`: a token row as a driver read it, before it is checked, and what a
//!   single-row lookup is by.
//! - `postgres.rs`, `sqlite.rs`: one per database, each its dialect (the statements and types
//!   that differ) and its public store; a further database is one more such file, plus one
//!   each under `migrate/` and `sanctum/`.
//! - `sqlite_reads.rs`: SQLite's single-row lookups on the calling thread through `rusqlite`,
//!   past sqlx's worker thread.
//!
//! Files here may use the token values (`crate::{id, record, scope, secret}`) and
//! `crate::store`, nothing above the store layer.

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
mod sqlite_reads;

pub(crate) mod migrate;
mod naive_time;
mod sanctum;
mod token_row;
mod token_store;
mod tokens;

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Database, Pool, SqlStr};

pub use naive_time::{NaiveTimeZone, UnknownTimeZone};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, PostgresStoreBuilder};
pub use sanctum::{SanctumStore, SanctumStoreBuilder};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, SqliteStoreBuilder};

use super::{StoreError, StoreErrorKind, StoredToken};
use crate::id::TokenId;
use crate::record::Owner;
use crate::scope::ScopeSet;
use crate::secret::SecretHash;

/// How long a query may take, acquiring its connection included, before the store reports
/// itself unavailable. Verification fails closed rather than hanging on a slow database.
pub(crate) const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// How long to wait for a pooled connection.
pub(crate) const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a pooled connection may sit unused before the pool checks it (a ping) on the
/// way out. sqlx's default checks every connection it hands out: one more round trip to the
/// database (or, on SQLite, to the connection's worker thread) on every lookup. A connection
/// used this recently is taken as alive, as HikariCP does for 500 ms; if it is not (the
/// database restarted meanwhile), the query on it fails like any other store error (closed:
/// 503), and sqlx drops the connection when it comes back, so one request per such
/// connection fails (`tests/pool_checks.rs`).
pub(crate) const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The pool options every store's own constructor uses: acquisition bounded (a query fails
/// rather than waits when the database is gone), and a connection checked on acquire only
/// when it sat unused for [`PING_AFTER_IDLE`].
pub(crate) fn pool_options<DB: Database>() -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .acquire_timeout(DEFAULT_ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// A query on `DB` with the values bound so far, as [`sqlx::query`] makes it.
pub(crate) type Query<DB> = sqlx::query::Query<'static, DB, <DB as Database>::Arguments>;

/// A row of `DB`.
pub(crate) type Row<DB> = <DB as Database>::Row;

/// A connection of `DB`, for a query inside a transaction.
pub(crate) type Conn<DB> = <DB as Database>::Connection;

/// What the shared code does with a database's sqlx driver, the same on every database: bind
/// and read text, bytes and integers, and run a query on a connection.
///
/// Implemented once, below, for every sqlx database that has those types. It is a trait of the
/// database rather than bounds on the shared code because Rust does not let a trait's users
/// rely on a bound such as `String: Decode<'_, Self::Db>`, while a dialect's `type Db: Driver`
/// carries this trait to every use.
pub(crate) trait Driver: Database {
    /// Binds text.
    fn text(query: Query<Self>, value: &str) -> Query<Self>;
    /// Binds bytes.
    fn bytes(query: Query<Self>, value: &[u8]) -> Query<Self>;
    /// Binds a 64-bit integer.
    fn int(query: Query<Self>, value: i64) -> Query<Self>;
    /// Reads a text column.
    fn read_text(row: &Row<Self>, column: &str) -> Result<String, StoreError>;
    /// Reads a text column that may be `NULL`.
    fn read_opt_text(row: &Row<Self>, column: &str) -> Result<Option<String>, StoreError>;
    /// Reads a bytes column.
    fn read_bytes(row: &Row<Self>, column: &str) -> Result<Vec<u8>, StoreError>;
    /// Reads an integer column.
    fn read_int(row: &Row<Self>, column: &str) -> Result<i64, StoreError>;
    /// Reads a boolean column (an integer 0 or 1 where the database has no booleans).
    fn read_flag(row: &Row<Self>, column: &str) -> Result<bool, StoreError>;
    /// Runs a statement.
    fn execute(
        query: Query<Self>,
        conn: &mut Conn<Self>,
    ) -> impl Future<Output = Result<Self::QueryResult, sqlx::Error>> + Send;
    /// Runs SQL text that may hold several statements and binds nothing (DDL).
    fn execute_raw(
        sql: SqlStr,
        conn: &mut Conn<Self>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Runs a query for at most one row.
    fn fetch_optional(
        query: Query<Self>,
        conn: &mut Conn<Self>,
    ) -> impl Future<Output = Result<Option<Row<Self>>, sqlx::Error>> + Send;
    /// Runs a query for every row.
    fn fetch_all(
        query: Query<Self>,
        conn: &mut Conn<Self>,
    ) -> impl Future<Output = Result<Vec<Row<Self>>, sqlx::Error>> + Send;
}

impl<DB> Driver for DB
where
    DB: Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'a> &'a str: sqlx::ColumnIndex<DB::Row> + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> &'a [u8]: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> Option<String>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> Vec<u8>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> i64: sqlx::Decode<'r, DB> + sqlx::Encode<'r, DB> + sqlx::Type<DB>,
    for<'r> bool: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
{
    fn text(query: Query<Self>, value: &str) -> Query<Self> {
        query.bind(value)
    }

    fn bytes(query: Query<Self>, value: &[u8]) -> Query<Self> {
        query.bind(value)
    }

    fn int(query: Query<Self>, value: i64) -> Query<Self> {
        query.bind(value)
    }

    /// `NULL` is refused: sqlx reads it as `""` on SQLite (and refuses it on PostgreSQL).
    fn read_text(row: &Row<Self>, column: &str) -> Result<String, StoreError> {
        let text: Option<String> = sqlx::Row::try_get(row, column).map_err(map_err)?;
        text.ok_or_else(null_column)
    }

    fn read_opt_text(row: &Row<Self>, column: &str) -> Result<Option<String>, StoreError> {
        sqlx::Row::try_get(row, column).map_err(map_err)
    }

    fn read_bytes(row: &Row<Self>, column: &str) -> Result<Vec<u8>, StoreError> {
        let bytes: Option<Vec<u8>> = sqlx::Row::try_get(row, column).map_err(map_err)?;
        bytes.ok_or_else(null_column)
    }

    fn read_int(row: &Row<Self>, column: &str) -> Result<i64, StoreError> {
        let n: Option<i64> = sqlx::Row::try_get(row, column).map_err(map_err)?;
        n.ok_or_else(null_column)
    }

    fn read_flag(row: &Row<Self>, column: &str) -> Result<bool, StoreError> {
        sqlx::Row::try_get(row, column).map_err(map_err)
    }

    fn execute(
        query: Query<Self>,
        conn: &mut Conn<Self>,
    ) -> impl Future<Output = Result<Self::QueryResult, sqlx::Error>> + Send {
        query.execute(conn)
    }

    async fn execute_raw(sql: SqlStr, conn: &mut Conn<Self>) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sql).execute(conn).await?;
        Ok(())
    }

    fn fetch_optional(
        query: Query<Self>,
        conn: &mut Conn<Self>,
    ) -> impl Future<Output = Result<Option<Row<Self>>, sqlx::Error>> + Send {
        query.fetch_optional(conn)
    }

    fn fetch_all(
        query: Query<Self>,
        conn: &mut Conn<Self>,
    ) -> impl Future<Output = Result<Vec<Row<Self>>, sqlx::Error>> + Send {
        query.fetch_all(conn)
    }
}

/// A column every row must fill holds `NULL`: a table made by hand without `NOT NULL`.
fn null_column() -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        "a column every token fills holds NULL",
    )
}

/// What every table's shared code needs to know of a database: its sqlx driver, how it counts
/// changed rows, how it takes a statement's text. Each kind of table adds a trait of its own
/// on top ([`TokenDialect`](tokens::TokenDialect), Sanctum's); the migrations have theirs
/// ([`Migrator`](migrate::Migrator)). Implemented by a marker type in the database's own
/// file (`Pg`, `Lite`).
///
/// Shared statements number their parameters `$1, $2, …` in the order they are bound, each
/// used once, so that [`statement`](Self::statement) can rewrite them for a database whose
/// parameters are positional `?` (MySQL) without reordering anything.
pub(crate) trait Dialect: Send + Sync + 'static {
    /// The sqlx database.
    type Db: Driver;

    /// How many rows a write changed, as the driver reports it.
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;

    /// A shared statement's text as this database takes it. The default keeps `$n`, which
    /// PostgreSQL and SQLite both read.
    fn statement(sql: String) -> SqlStr {
        text(sql)
    }
}

/// A schema, table or prefix name that is not a plain SQL identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "an SQL identifier is 1 to 48 ASCII lowercase letters, digits or '_', not starting with a digit"
)]
#[non_exhaustive]
pub struct InvalidIdentifier;

/// Names are spliced into SQL text (they cannot be bound), so only plain identifiers pass.
pub(crate) fn identifier(name: &str) -> Result<&str, InvalidIdentifier> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok { Ok(name) } else { Err(InvalidIdentifier) }
}

/// The lookup of one row by its key `id`, `$1`, that returns a row whether or not one has
/// that key: the row itself, or else the first row after it. The caller decodes whatever
/// comes back and answers "not found" unless the row's key is the one asked for. A query
/// that finds no row sends nothing back and decodes nothing, a few microseconds less than one
/// that finds it (`benches/sql.rs`), and that difference would tell a client which ids exist;
/// this way a hit and a miss each cost one index seek, one row sent back and one decoded.
/// Only an id past every row (and an empty table) returns nothing: that says only that no
/// larger id exists.
pub(crate) fn row_or_next(columns: &str, table: &str) -> String {
    format!("SELECT {columns} FROM {table} WHERE id >= $1 ORDER BY id LIMIT 1")
}

/// The answer to a [`row_or_next`] lookup: the row `decoded` if its key `found` is the one
/// `asked`, else "no such token". Decoded whether or not it is the row asked for, so a miss
/// costs what a hit does; another token's row, corrupt or not, is never more than "no such
/// token". A key column that cannot be read at all is an error: it cannot tell the row asked
/// for from another (an `int4` Sanctum id, found by the attack pass).
pub(crate) fn row_if_asked<K: PartialEq<A>, A>(
    decoded: Result<StoredToken, StoreError>,
    found: Result<K, StoreError>,
    asked: A,
) -> Result<Option<StoredToken>, StoreError> {
    if found? == asked {
        decoded.map(Some)
    } else {
        Ok(None)
    }
}

/// SQL text made from fixed fragments and [`identifier`]-checked names; every value is bound.
pub(crate) fn text(sql: String) -> SqlStr {
    use sqlx::SqlSafeStr;
    sqlx::AssertSqlSafe(std::sync::Arc::<str>::from(sql)).into_sql_str()
}

#[derive(Debug, thiserror::Error)]
#[error("the database did not answer within {0:?}")]
struct QueryTimedOut(Duration);

/// The database refused the connection settings, with this SQLSTATE code.
#[derive(Debug, thiserror::Error)]
#[error("the database refused the connection settings (SQLSTATE {0})")]
struct RefusedSettings(String);

/// Whether the database refused for lack of a privilege: SQLSTATE 42501 on PostgreSQL,
/// `SQLITE_READONLY` (and its extended codes) on SQLite.
fn is_permission_denied(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else {
        return false;
    };
    code == "42501" || code.parse::<i32>().is_ok_and(|n| n & 0xff == 8)
}

/// PostgreSQL's codes for a connection its settings cannot make: class 28 (invalid
/// authorization: no such role, wrong password) and 3D000 (no such database). Retrying them
/// is pointless, unlike a database that is down.
fn is_misconfigured(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.code()
        .is_some_and(|code| code.len() == 5 && (code.starts_with("28") || code == "3D000"))
}

pub(crate) fn map_err(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::with_source(
            StoreErrorKind::Conflict,
            "a token with this id or secret hash already exists",
            err,
        ),
        sqlx::Error::Database(db) if is_permission_denied(db.as_ref()) => StoreError::with_source(
            StoreErrorKind::PermissionDenied,
            "the database refused: the role lacks a privilege this needs",
            err,
        ),
        sqlx::Error::Configuration(_) => StoreError::with_source(
            StoreErrorKind::Configuration,
            "the connection settings are not valid",
            err,
        ),
        // The server's message names the role or the database as the URL spelled them, and a
        // mistyped URL can put its password there: keep the code only.
        sqlx::Error::Database(db) if is_misconfigured(db.as_ref()) => StoreError::with_source(
            StoreErrorKind::Configuration,
            "the database refused the connection settings: no such role, wrong password or no such database",
            RefusedSettings(db.code().map(|code| code.into_owned()).unwrap_or_default()),
        ),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::corrupt(err),
        // Connection, pool, I/O, TLS, protocol and other database errors: the store cannot
        // answer, and verification fails closed.
        _ => StoreError::unavailable(err),
    }
}

/// Runs a query with a deadline.
pub(crate) async fn timed<T>(
    limit: Duration,
    query: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, query).await {
        Ok(result) => result.map_err(map_err),
        Err(_) => Err(StoreError::unavailable(QueryTimedOut(limit))),
    }
}

/// Runs a statement on a connection of `pool`, within `limit` (acquiring it included), and
/// returns how many rows it changed.
pub(crate) async fn execute<D: Dialect>(
    pool: &Pool<D::Db>,
    limit: Duration,
    query: Query<D::Db>,
) -> Result<u64, StoreError> {
    let done = timed(limit, async {
        let mut conn = pool.acquire().await?;
        D::Db::execute(query, &mut conn).await
    })
    .await?;
    Ok(D::rows_affected(&done))
}

/// Runs a query for at most one row on a connection of `pool`, within `limit`.
pub(crate) async fn fetch_optional<DB: Driver>(
    pool: &Pool<DB>,
    limit: Duration,
    query: Query<DB>,
) -> Result<Option<Row<DB>>, StoreError> {
    timed(limit, async {
        let mut conn = pool.acquire().await?;
        DB::fetch_optional(query, &mut conn).await
    })
    .await
}

/// Runs a query for every row on a connection of `pool`, within `limit`.
pub(crate) async fn fetch_all<DB: Driver>(
    pool: &Pool<DB>,
    limit: Duration,
    query: Query<DB>,
) -> Result<Vec<Row<DB>>, StoreError> {
    timed(limit, async {
        let mut conn = pool.acquire().await?;
        DB::fetch_all(query, &mut conn).await
    })
    .await
}

pub(crate) fn token_id(text: &str) -> Result<TokenId, StoreError> {
    TokenId::new(text).map_err(StoreError::corrupt)
}

/// A numeric id as stored: a non-negative integer.
pub(crate) fn numeric_id(n: i64) -> Result<TokenId, StoreError> {
    Ok(TokenId::from_u64(
        u64::try_from(n).map_err(StoreError::corrupt)?,
    ))
}

pub(crate) fn owner(text: &str) -> Result<Owner, StoreError> {
    Owner::new(text).map_err(StoreError::corrupt)
}

pub(crate) fn scopes(text: &str) -> Result<ScopeSet, StoreError> {
    ScopeSet::parse(text).map_err(StoreError::corrupt)
}

pub(crate) fn secret_hash(bytes: &[u8]) -> Result<SecretHash, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(SecretHash::from_bytes)
        .map_err(|_| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                "a stored secret hash is not 32 bytes",
            )
        })
}

pub(crate) fn metadata(value: serde_json::Value) -> Result<crate::record::Metadata, StoreError> {
    match value {
        serde_json::Value::Object(map) => Ok(map),
        _ => Err(StoreError::new(
            StoreErrorKind::Corrupt,
            "stored metadata is not a JSON object",
        )),
    }
}

/// Allowed networks as stored: CIDRs separated by spaces.
pub(crate) fn networks_text(nets: &[ipnet::IpNet]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn networks(text: &str) -> Result<Vec<ipnet::IpNet>, StoreError> {
    text.split(' ')
        .filter(|s| !s.is_empty())
        .map(|net| net.parse().map_err(StoreError::corrupt))
        .collect()
}

/// Keeps the latest time per id, so a batch UPDATE never meets one id twice.
pub(crate) fn latest_per_id(batch: &[(TokenId, DateTime<Utc>)]) -> Vec<(TokenId, DateTime<Utc>)> {
    let mut latest: std::collections::HashMap<TokenId, DateTime<Utc>> =
        std::collections::HashMap::with_capacity(batch.len());
    for (id, at) in batch {
        latest
            .entry(*id)
            .and_modify(|t| *t = (*t).max(*at))
            .or_insert(*at);
    }
    let mut latest: Vec<_> = latest.into_iter().collect();
    // Every replica updates rows in the same order, so concurrent flushes cannot deadlock
    // on each other's row locks in the loops that write one row at a time.
    latest.sort_unstable_by_key(|(id, _)| *id);
    latest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "tenant_1", "apitoken", "_x"] {
            assert!(identifier(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "A",
            "a-b",
            "a;drop table x",
            "a\"b",
            "a b",
            &"a".repeat(49),
        ] {
            assert!(identifier(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn latest_per_id_keeps_the_max() {
        let t = Utc::now();
        let a = TokenId::from_u64(1);
        let b = TokenId::from_u64(2);
        let mut out = latest_per_id(&[
            (a, t),
            (b, t),
            (a, t + chrono::TimeDelta::seconds(1)),
            (a, t),
        ]);
        out.sort();
        assert_eq!(out, vec![(a, t + chrono::TimeDelta::seconds(1)), (b, t)]);
    }
}
