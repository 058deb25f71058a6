//! What the SQL stores share: error mapping, query deadlines, identifier checks, row decoding.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{StoreError, StoreErrorKind};
use crate::id::TokenId;
use crate::record::Owner;
use crate::scope::ScopeSet;
use crate::secret::SecretHash;

/// How long a query may take, acquiring its connection included, before the store reports
/// itself unavailable. Verification fails closed rather than hanging on a slow database.
pub(crate) const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// How long to wait for a pooled connection.
/// How long a migration waits for a table lock (PostgreSQL's `lock_timeout`).
#[cfg(feature = "postgres")]
pub(crate) const DEFAULT_MIGRATION_LOCK_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

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

#[cfg(feature = "postgres")]
/// `name` in `schema` (quoted, since a schema may be named like a reserved word), or `name`
/// alone, found on the connection's `search_path`.
pub(crate) fn qualified(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(schema) => format!("\"{schema}\".{name}"),
        None => name.to_owned(),
    }
}

/// A forward-only last-use `UPDATE` of `table` on SQLite for a whole batch in one statement:
/// the `(id, time)` pairs arrive as one JSON array in `$1`. `set` is the `SET` list, written
/// in terms of `v.at`.
pub(crate) fn sqlite_last_used_batch(table: &str, set: &str) -> String {
    format!(
        "UPDATE {table} SET {set} \
         FROM (SELECT json_extract(value, '$[0]') AS id, \
                      json_extract(value, '$[1]') AS at FROM json_each($1)) AS v \
         WHERE {table}.id = v.id \
         AND ({table}.last_used_at IS NULL OR {table}.last_used_at < v.at)"
    )
}

/// SQL text made from fixed fragments and [`identifier`]-checked names; every value is bound.
pub(crate) fn text(sql: String) -> sqlx::SqlStr {
    use sqlx::SqlSafeStr;
    sqlx::AssertSqlSafe(std::sync::Arc::<str>::from(sql)).into_sql_str()
}

#[derive(Debug, thiserror::Error)]
#[error("the database did not answer within {0:?}")]
struct QueryTimedOut(Duration);

/// Whether the database refused for lack of a privilege: SQLSTATE 42501 on PostgreSQL,
/// `SQLITE_READONLY` (and its extended codes) on SQLite.
fn is_permission_denied(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else {
        return false;
    };
    code == "42501" || code.parse::<i32>().is_ok_and(|n| n & 0xff == 8)
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

pub(crate) fn token_id(text: &str) -> Result<TokenId, StoreError> {
    TokenId::new(text).map_err(StoreError::corrupt)
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
