//! [`TokenTable`]: the token store of every SQL database, written once over a
//! [`TokenDialect`] (the statements, types and locks that differ). `PostgresStore` and
//! `SqliteStore` are each a `TokenTable` of their dialect and hand every
//! [`TokenStore`](crate::store::TokenStore) call to it ([`token_store_on_table!`]).
//!
//! Uses the token values and `crate::store` only.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Pool, SqlStr, Transaction};

use super::migrate::{self, Migrator, Plan};
pub(crate) use super::token_row::{Key, TokenColumns};
pub(crate) use super::token_store::token_store_on_table;
use super::{Conn, Dialect, Driver, Query, Row};
use crate::id::TokenId;
use crate::record::{Metadata, Owner, TokenRecord};
use crate::secret::SecretHash;
use crate::store::{Retire, StoreError, StoreErrorKind, StoredToken};

/// The schema version of the token tables this build writes, on every database.
pub(crate) const SCHEMA_VERSION: u32 = 2;

/// The columns of the token table, in the order `insert` binds them (`$1` to `$11`).
pub(crate) const COLUMNS: &str = "id, secret_hash, name, owner, scopes, metadata, created_at, \
                                  last_used_at, expires_at, revoked_at, allowed_ips";

/// The token table's names, as SQL text spells them (qualified and quoted where the dialect
/// needs it).
#[derive(Debug)]
pub(crate) struct Names {
    /// The token table.
    pub(crate) table: String,
    /// The id sequence (a sequence on PostgreSQL, a table on SQLite).
    pub(crate) sequence: String,
    /// The schema versions table.
    pub(crate) versions: String,
}

/// The statements whose text differs by database, with the parameters each takes in order.
#[derive(Debug)]
pub(crate) struct DialectStatements {
    /// `$1`–`$11` the [`COLUMNS`], then what [`TokenDialect::bind_owner_lock`] and
    /// [`TokenDialect::bind_announce`] bind, in that order.
    pub(crate) insert: String,
    /// `$1` the time, `$2` the id; then [`TokenDialect::bind_announce`]'s.
    pub(crate) revoke: String,
    /// `$1` the time, `$2` the owner; then [`TokenDialect::bind_announce`]'s.
    pub(crate) revoke_owner: String,
    /// No parameters; one row of `n`, the next value, and `taken`, whether a token already
    /// has that id.
    pub(crate) next_id: String,
    /// A forward-only `UPDATE` of `last_used_at` for a whole batch, which
    /// [`TokenDialect::bind_last_used`] binds.
    pub(crate) last_used_batch: String,
    /// A condition on the `metadata` column: it has the key that `$2` names (as
    /// [`TokenDialect::metadata_key`] binds it). Part of a shared statement, so written with
    /// `$2` (see [`Dialect::statement`]).
    pub(crate) has_metadata_key: String,
}

/// Which owner-wide write a transaction is for: the dialect decides what it locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnerWrite {
    /// A rotation: inserts for the owner, so no revoke-all of the owner may run between.
    Rotate,
    /// A bootstrap: counts the owner's records and inserts, with no other insert between.
    InsertFirst,
    /// A revoke-all of the owner: sees every insert committed before it, and holds off the
    /// inserts that start later until it commits.
    RevokeAll,
}

/// What the token table needs of a database beyond [`Dialect`]: its types, the statements
/// that differ, and how owner-wide writes are kept apart.
pub(crate) trait TokenDialect: Dialect {
    /// What a table keeps per store besides its names (PostgreSQL: its `NOTIFY` channel, the
    /// owner-lock name and its migrator).
    type State: fmt::Debug + Send + Sync;

    /// How this database migrates the token tables.
    type Migrations: Migrator<Db = Self::Db>;

    /// Each column the store reads, with its type as [`Migrator::columns`] names it.
    const COLUMN_TYPES: &'static [(&'static str, &'static str)];

    /// The DDL from schema version `from` to `from + 1`: 1, the first released table, its
    /// owner index and the id sequence; 2, IP allowlists (`allowed_ips`).
    fn migration_step(names: &Names, from: u32) -> Vec<String>;

    /// How long a migration may take, given the query deadline.
    fn migration_deadline(query_timeout: Duration) -> Duration {
        query_timeout
    }

    /// The statements whose text differs.
    fn statements(names: &Names) -> DialectStatements;

    /// Binds an instant (or `NULL`) as the time columns hold it.
    fn bind_time(query: Query<Self::Db>, at: Option<DateTime<Utc>>) -> Query<Self::Db>;

    /// Reads a time column.
    fn read_time(row: &Row<Self::Db>, column: &str) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Binds the metadata as the `metadata` column holds it.
    fn bind_metadata(
        query: Query<Self::Db>,
        metadata: &Metadata,
    ) -> Result<Query<Self::Db>, StoreError>;

    /// Reads the `metadata` column.
    fn read_metadata(row: &Row<Self::Db>, column: &str) -> Result<serde_json::Value, StoreError>;

    /// Binds the key a `remove_expired` marker names, as
    /// [`DialectStatements::has_metadata_key`] takes it. `marker` is a plain name.
    fn metadata_key(query: Query<Self::Db>, marker: &str) -> Query<Self::Db>;

    /// Binds a batch of last uses (one per id, in id order) for
    /// [`DialectStatements::last_used_batch`].
    fn bind_last_used(
        query: Query<Self::Db>,
        batch: &[(TokenId, DateTime<Utc>)],
    ) -> Result<Query<Self::Db>, StoreError>;

    /// Binds what the dialect's `insert` takes after the columns to serialise it against a
    /// revoke-all of `owner`. Default: nothing.
    fn bind_owner_lock(
        state: &Self::State,
        query: Query<Self::Db>,
        owner: &Owner,
    ) -> Query<Self::Db> {
        let _ = (state, owner);
        query
    }

    /// Binds what the dialect's writes take last to announce the change to other replicas.
    /// Default: nothing.
    fn bind_announce(state: &Self::State, query: Query<Self::Db>) -> Query<Self::Db> {
        let _ = state;
        query
    }

    /// Announces, inside a rotation's transaction, that the token `id` changed. Default:
    /// nothing (a database with no change feed).
    fn announce(
        state: &Self::State,
        conn: &mut Conn<Self::Db>,
        id: &TokenId,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let _ = (state, conn, id);
        std::future::ready(Ok(()))
    }

    /// Opens the transaction of an owner-wide write.
    fn begin_owner_write(
        state: &Self::State,
        pool: &Pool<Self::Db>,
        owner: &Owner,
        write: OwnerWrite,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Db>, sqlx::Error>> + Send;

    /// The migrator of this store's tables.
    fn migrations(state: &Self::State) -> &Self::Migrations;

    /// Answers a [`get`](TokenTable::get) (`key` an id) or a
    /// [`find_by_hash`](TokenTable::find_by_hash) (`key` a hash) on the calling thread,
    /// where this database can: `Some` with the answer, `None` to ask the pool. `statement`
    /// is the lookup's text. Default: always the pool.
    fn lookup_now(
        state: &Self::State,
        statement: &str,
        key: Key<'_>,
    ) -> impl Future<Output = Option<Result<Option<StoredToken>, StoreError>>> + Send {
        let _ = (state, statement, key);
        std::future::ready(None)
    }

    /// Called on the pool's connection that just answered a lookup, for what
    /// [`lookup_now`](Self::lookup_now) needs to learn from a working one. Default: nothing.
    fn after_pool_lookup(
        state: &Self::State,
        conn: &mut Conn<Self::Db>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (state, conn);
        std::future::ready(())
    }
}

/// Every statement of the token table, made once per store.
#[derive(Debug)]
struct Statements {
    insert: SqlStr,
    get: SqlStr,
    find_by_hash: SqlStr,
    list_by_owner: SqlStr,
    owner_has_any: SqlStr,
    revoke: SqlStr,
    revoke_owner: SqlStr,
    retire_revoke: SqlStr,
    retire_expire: SqlStr,
    last_used: SqlStr,
    last_used_batch: SqlStr,
    next_id: SqlStr,
    remove_expired: SqlStr,
}

impl Statements {
    fn new<D: Dialect>(names: &Names, own: DialectStatements) -> Self {
        let table = &names.table;
        let shared = |sql: String| D::statement(sql);
        Self {
            get: shared(super::row_or_next(COLUMNS, table)),
            find_by_hash: shared(format!(
                "SELECT {COLUMNS} FROM {table} WHERE secret_hash = $1"
            )),
            list_by_owner: shared(format!("SELECT {COLUMNS} FROM {table} WHERE owner = $1")),
            owner_has_any: shared(format!("SELECT 1 FROM {table} WHERE owner = $1 LIMIT 1")),
            retire_revoke: shared(format!(
                "UPDATE {table} SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL"
            )),
            // The sooner of the token's own expiry and the grace period's end.
            retire_expire: shared(format!(
                "UPDATE {table} SET expires_at = \
                 CASE WHEN expires_at < $1 THEN expires_at ELSE $2 END \
                 WHERE id = $3 AND revoked_at IS NULL"
            )),
            last_used: shared(format!(
                "UPDATE {table} SET last_used_at = $1 \
                 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)"
            )),
            remove_expired: shared(format!(
                "DELETE FROM {table} WHERE expires_at <= $1 AND {}",
                own.has_metadata_key
            )),
            // The dialect's own, in its own form already.
            insert: super::text(own.insert),
            revoke: super::text(own.revoke),
            revoke_owner: super::text(own.revoke_owner),
            last_used_batch: super::text(own.last_used_batch),
            next_id: super::text(own.next_id),
        }
    }
}

/// The token table on a database: the [`TokenStore`](crate::store::TokenStore) logic, once.
#[derive(Debug)]
pub(crate) struct TokenTable<D: TokenDialect> {
    pub(crate) pool: Pool<D::Db>,
    pub(crate) state: Arc<D::State>,
    names: Arc<Names>,
    statements: Arc<Statements>,
    timeout: Duration,
}

// By hand: a derive would ask the database and the state to be `Clone` too.
impl<D: TokenDialect> Clone for TokenTable<D> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            state: Arc::clone(&self.state),
            names: Arc::clone(&self.names),
            statements: Arc::clone(&self.statements),
            timeout: self.timeout,
        }
    }
}

/// The version of a token table made before versions were recorded, from its columns.
fn probe_version(columns: &[(String, String)]) -> u32 {
    if columns.is_empty() {
        0
    } else if columns.iter().any(|(name, _)| name == "allowed_ips") {
        2
    } else {
        1
    }
}

impl<D: TokenDialect> TokenTable<D> {
    pub(crate) fn new(pool: Pool<D::Db>, state: D::State, names: Names, timeout: Duration) -> Self {
        let statements = Statements::new::<D>(&names, D::statements(&names));
        Self {
            pool,
            state: Arc::new(state),
            names: Arc::new(names),
            statements: Arc::new(statements),
            timeout,
        }
    }

    fn query(&self, statement: &SqlStr) -> Query<D::Db> {
        sqlx::query(statement.clone())
    }

    /// The insert of `record`, every value bound.
    fn insert_query(
        &self,
        record: &TokenRecord,
        hash: &SecretHash,
    ) -> Result<Query<D::Db>, StoreError> {
        let q = self.query(&self.statements.insert);
        let q = D::Db::text(q, record.id.as_str());
        let q = D::Db::bytes(q, hash.as_bytes());
        let q = D::Db::text(q, &record.name);
        let q = D::Db::text(q, record.owner.as_str());
        let q = D::Db::text(q, &record.scopes.to_string());
        let q = D::bind_metadata(q, &record.metadata)?;
        let q = D::bind_time(q, Some(record.created_at));
        let q = D::bind_time(q, record.last_used_at);
        let q = D::bind_time(q, record.expires_at);
        let q = D::bind_time(q, record.revoked_at);
        let q = D::Db::text(q, &super::networks_text(&record.allowed_ips));
        let q = D::bind_owner_lock(&self.state, q, &record.owner);
        Ok(D::bind_announce(&self.state, q))
    }

    fn decode(row: &Row<D::Db>) -> Result<StoredToken, StoreError> {
        let text = |column| D::Db::read_text(row, column);
        let time = |column| D::read_time(row, column);
        TokenColumns {
            id: text("id")?,
            secret_hash: D::Db::read_bytes(row, "secret_hash")?,
            name: text("name")?,
            owner: text("owner")?,
            scopes: text("scopes")?,
            metadata: D::read_metadata(row, "metadata")?,
            created_at: time("created_at")?,
            last_used_at: time("last_used_at")?,
            expires_at: time("expires_at")?,
            revoked_at: time("revoked_at")?,
            allowed_ips: text("allowed_ips")?,
        }
        .check()
    }

    /// Runs a single-row lookup on the pool, within the deadline, and lets the dialect learn
    /// from the working connection.
    async fn fetch_one_row(&self, query: Query<D::Db>) -> Result<Option<Row<D::Db>>, StoreError> {
        super::timed(self.timeout, async {
            let mut conn = self.pool.acquire().await?;
            let row = D::Db::fetch_optional(query, &mut conn).await?;
            D::after_pool_lookup(&self.state, &mut conn).await;
            Ok(row)
        })
        .await
    }

    fn plan<'a>(
        &'a self,
        columns: &'a [(&'a str, &'a [(&'static str, &'static str)])],
    ) -> Plan<'a> {
        Plan {
            component: "tokens",
            current: SCHEMA_VERSION,
            versions: &self.names.versions,
            columns,
            probe: probe_version,
        }
    }

    /// Brings the tables to [`SCHEMA_VERSION`] (see the public stores' `migrate`).
    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        let columns = [(self.names.table.as_str(), D::COLUMN_TYPES)];
        let steps = |from: u32| D::migration_step(&self.names, from);
        migrate::migrate(
            D::migrations(&self.state),
            &self.pool,
            &self.plan(&columns),
            &steps,
            D::migration_deadline(self.timeout),
        )
        .await
    }

    /// Checks, changing nothing, that the tables are at [`SCHEMA_VERSION`].
    pub(crate) async fn check_schema(&self) -> Result<(), StoreError> {
        let columns = [(self.names.table.as_str(), D::COLUMN_TYPES)];
        migrate::check::<D::Migrations>(&self.pool, &self.plan(&columns), self.timeout).await
    }

    pub(crate) async fn insert(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> Result<(), StoreError> {
        let query = self.insert_query(&record, &hash)?;
        super::execute::<D>(&self.pool, self.timeout, query).await?;
        Ok(())
    }

    /// One transaction, opened as the dialect keeps owner-wide writes apart
    /// ([`OwnerWrite::InsertFirst`]): the owner's records are counted and the record inserted
    /// with no other insert for the owner in between.
    pub(crate) async fn insert_first(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> Result<bool, StoreError> {
        let insert = self.insert_query(&record, &hash)?;
        let any = D::Db::text(
            self.query(&self.statements.owner_has_any),
            record.owner.as_str(),
        );
        let work = async {
            let mut tx = D::begin_owner_write(
                &self.state,
                &self.pool,
                &record.owner,
                OwnerWrite::InsertFirst,
            )
            .await?;
            if D::Db::fetch_optional(any, &mut tx).await?.is_some() {
                return Ok(false);
            }
            D::Db::execute(insert, &mut tx).await?;
            tx.commit().await?;
            Ok(true)
        };
        // A transaction dropped without commit (the early return) rolls back.
        super::timed(self.timeout, work).await
    }

    pub(crate) async fn rotate(
        &self,
        old: &TokenId,
        retire: Retire,
        new: TokenRecord,
        hash: SecretHash,
    ) -> Result<bool, StoreError> {
        let retire_query = match retire {
            Retire::RevokeAt(at) => {
                D::bind_time(self.query(&self.statements.retire_revoke), Some(at))
            }
            Retire::ExpireAt(at) => {
                let q = D::bind_time(self.query(&self.statements.retire_expire), Some(at));
                D::bind_time(q, Some(at))
            }
        };
        let retire_query = D::Db::text(retire_query, old.as_str());
        let insert = self.insert_query(&new, &hash)?;
        let work = async {
            // First, before any row lock: a revoke-all holding the owner's lock may be
            // waiting for the old token's row.
            let mut tx =
                D::begin_owner_write(&self.state, &self.pool, &new.owner, OwnerWrite::Rotate)
                    .await?;
            let retired = D::Db::execute(retire_query, &mut tx).await?;
            if D::rows_affected(&retired) == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            D::Db::execute(insert, &mut tx).await?;
            D::announce(&self.state, &mut tx, old).await?;
            tx.commit().await?;
            Ok(true)
        };
        super::timed(self.timeout, work).await
    }

    pub(crate) async fn next_id(&self) -> Result<TokenId, StoreError> {
        // Skips sequence values taken by ids inserted explicitly.
        for _ in 0..1000 {
            let query = self.query(&self.statements.next_id);
            let row = super::fetch_optional(&self.pool, self.timeout, query)
                .await?
                // As a query for exactly one row answers when the sequence's row is gone.
                .ok_or_else(|| super::map_err(sqlx::Error::RowNotFound))?;
            if !D::Db::read_flag(&row, "taken")? {
                return super::numeric_id(D::Db::read_int(&row, "n")?);
            }
        }
        Err(StoreError::new(
            StoreErrorKind::Conflict,
            "1000 consecutive sequence values were already taken",
        ))
    }

    pub(crate) async fn get(&self, id: &TokenId) -> Result<Option<StoredToken>, StoreError> {
        let statement = &self.statements.get;
        let key = Key::Id(id);
        if let Some(answer) = D::lookup_now(&self.state, statement.as_str(), key).await {
            return answer;
        }
        let query = key.bind(self.query(statement));
        let Some(row) = self.fetch_one_row(query).await? else {
            return Ok(None);
        };
        let found = D::Db::read_text(&row, "id");
        super::row_if_asked(Self::decode(&row), found, id.as_str())
    }

    pub(crate) async fn find_by_hash(
        &self,
        hash: &SecretHash,
    ) -> Result<Option<StoredToken>, StoreError> {
        let statement = &self.statements.find_by_hash;
        let key = Key::Hash(hash);
        if let Some(answer) = D::lookup_now(&self.state, statement.as_str(), key).await {
            return answer;
        }
        let query = key.bind(self.query(statement));
        let row = self.fetch_one_row(query).await?;
        row.map(|row| Self::decode(&row)).transpose()
    }

    pub(crate) async fn list_by_owner(
        &self,
        owner: &Owner,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let query = D::Db::text(self.query(&self.statements.list_by_owner), owner.as_str());
        let rows = super::fetch_all(&self.pool, self.timeout, query).await?;
        let mut records = rows
            .iter()
            .map(|row| Self::decode(row).map(|s| TokenRecord::clone(&s.record)))
            .collect::<Result<Vec<_>, _>>()?;
        // The same order as every other store (numeric ids by value).
        records.sort_by_key(|r| (r.created_at, r.id));
        Ok(records)
    }

    pub(crate) async fn revoke(&self, id: &TokenId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let query = D::bind_time(self.query(&self.statements.revoke), Some(at));
        let query = D::bind_announce(&self.state, D::Db::text(query, id.as_str()));
        Ok(super::execute::<D>(&self.pool, self.timeout, query).await? > 0)
    }

    pub(crate) async fn revoke_owner(
        &self,
        owner: &Owner,
        at: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let query = D::bind_time(self.query(&self.statements.revoke_owner), Some(at));
        let query = D::bind_announce(&self.state, D::Db::text(query, owner.as_str()));
        let work = async {
            let mut tx =
                D::begin_owner_write(&self.state, &self.pool, owner, OwnerWrite::RevokeAll).await?;
            let done = D::Db::execute(query, &mut tx).await?;
            tx.commit().await?;
            Ok(D::rows_affected(&done))
        };
        let revoked = super::timed(self.timeout, work).await?;
        Ok(usize::try_from(revoked).unwrap_or(usize::MAX))
    }

    pub(crate) async fn remove_expired(
        &self,
        before: DateTime<Utc>,
        marker: &str,
    ) -> Result<usize, StoreError> {
        if !crate::store::is_plain_marker(marker) {
            return Ok(0);
        }
        let query = D::bind_time(self.query(&self.statements.remove_expired), Some(before));
        let query = D::metadata_key(query, marker);
        let gone = super::execute::<D>(&self.pool, self.timeout, query).await?;
        Ok(usize::try_from(gone).unwrap_or(usize::MAX))
    }

    pub(crate) async fn record_last_used(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let query = D::bind_time(self.query(&self.statements.last_used), Some(at));
        let query = D::bind_time(D::Db::text(query, id.as_str()), Some(at));
        super::execute::<D>(&self.pool, self.timeout, query).await?;
        Ok(())
    }

    pub(crate) async fn record_last_used_batch(
        &self,
        batch: &[(TokenId, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        let latest = super::latest_per_id(batch);
        if latest.is_empty() {
            return Ok(());
        }
        let query = D::bind_last_used(self.query(&self.statements.last_used_batch), &latest)?;
        super::execute::<D>(&self.pool, self.timeout, query).await?;
        Ok(())
    }
}
