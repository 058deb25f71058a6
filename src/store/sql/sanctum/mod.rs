//! [`SanctumStore`]: Laravel Sanctum's own `personal_access_tokens` table, on any database
//! Laravel runs it on.
//!
//! This file holds what is the same everywhere: the store and its builder, the mapping of
//! Sanctum's columns to a record, and every statement but the few that differ.
//! [`SanctumTable`] is the logic, once, over a [`SanctumDialect`]; `postgres.rs` and
//! `sqlite.rs` each say how their database's time columns are read and written, how an id is
//! drawn from the table's sequence, and how a batch of last uses is written. Uses the token
//! values and `crate::store` only.

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Timelike, Utc};
use sqlx::{Pool, SqlStr};

use super::naive_time::NaiveTimeZone;
use super::{Conn, Dialect, Driver, InvalidIdentifier, Query, Row};
use crate::id::TokenId;
use crate::record::{Owner, TokenRecord};
use crate::scope::{Scope, ScopeSet};
use crate::secret::SecretHash;
use crate::store::{StoreError, StoreErrorKind, StoredToken, TokenStore};

/// A [`TokenStore`] over a Laravel application's `personal_access_tokens` table, so a Rust
/// service verifies the tokens that application issued, in the same database.
///
/// Pair it with [`TokenFormat::sanctum`](crate::TokenFormat::sanctum) (or
/// `sanctum_with_prefix`), [`SecretHasher::sha256`](crate::SecretHasher::sha256) (Sanctum
/// stores `hash('sha256', …)` of the text after the `|`) and
/// [`ScopePolicy::sanctum`](crate::ScopePolicy::sanctum) (the ability `*` grants everything,
/// every other ability matches exactly, as Sanctum's `can()` does).
///
/// How Sanctum's columns map to a [`TokenRecord`]:
///
/// | Sanctum | record |
/// |---|---|
/// | `id` (bigint) | `id` (decimal) |
/// | `tokenable_type`, `tokenable_id` | `owner`, as `App\Models\User:42` |
/// | `name` | `name` |
/// | `token` (sha256 hex) | the secret hash |
/// | `abilities` (JSON array; `["*"]` by default) | `scopes` (abilities that are not valid scopes, such as ones with spaces, are left out: no route can require them) |
/// | `last_used_at`, `expires_at`, `created_at` | the same: `timestamptz` and SQLite text with an offset by their offset, naive times in [`SanctumStoreBuilder::timezone`] (UTC by default, as Laravel) |
/// | — | `revoked_at`: Sanctum deletes revoked tokens; [`revoke`](TokenStore::revoke) deletes the row, as `$token->delete()` does |
/// | — | `metadata`: empty; Sanctum has no such column |
///
/// Sanctum's global `expiration` setting (minutes from `created_at`) is honoured with
/// [`SanctumStoreBuilder::expiration`]. Last use is written forward-only, to the second, with
/// `updated_at`, as Sanctum writes it. The store never alters the table's schema: Laravel's
/// migrations own it.
///
/// ```no_run
/// use apitoken::{SanctumStore, ScopePolicy, SecretHasher, TokenFormat, Verifier};
/// use chrono::TimeDelta;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect_lazy("postgres://laravel@127.0.0.1/laravel")?;
/// let store = SanctumStore::postgres(pool)
///     .expiration(TimeDelta::minutes(525_600)) // config('sanctum.expiration')
///     .build();
/// let verifier = Verifier::builder(store)
///     .format(TokenFormat::sanctum())
///     .hasher(SecretHasher::sha256())
///     .scope_policy(ScopePolicy::sanctum())
///     .build();
/// # let _ = verifier;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SanctumStore {
    backend: Backend,
}

/// The table on whichever database the store was made for.
#[derive(Debug, Clone)]
enum Backend {
    #[cfg(feature = "postgres")]
    Postgres(SanctumTable<super::postgres::Pg>),
    #[cfg(feature = "sqlite")]
    Sqlite(SanctumTable<super::sqlite::Lite>),
}

/// Runs `$body` with `$table` bound to the store's [`SanctumTable`], whichever database it is
/// on. Each arm is compiled for its own dialect, so one body serves every database.
macro_rules! on_table {
    ($backend:expr, $table:ident => $body:expr) => {
        match $backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres($table) => $body,
            #[cfg(feature = "sqlite")]
            Backend::Sqlite($table) => $body,
        }
    };
}

/// What the builder sets.
#[derive(Debug)]
struct Settings {
    table: String,
    expiration: Option<TimeDelta>,
    timeout: Duration,
    zone: NaiveTimeZone,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            table: "personal_access_tokens".to_owned(),
            expiration: None,
            timeout: super::DEFAULT_QUERY_TIMEOUT,
            zone: NaiveTimeZone::UTC,
        }
    }
}

/// What Sanctum's table needs of a database beyond [`Dialect`].
trait SanctumDialect: Dialect + Sized {
    /// The statements and what the store learns of the table, per store.
    type State: fmt::Debug + Send + Sync;

    /// The state of a store over `table`.
    fn state(table: &str) -> Self::State;

    /// Reads one of Sanctum's time columns, whatever type the database gave it.
    fn read_time(
        row: &Row<Self::Db>,
        column: &'static str,
        zone: NaiveTimeZone,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Binds the insert's last three values, `expires_at`, `created_at` and `updated_at`
    /// (`created_at` again), each as its column holds it and to the second, as Laravel
    /// writes them.
    fn bind_insert_times(
        table: &SanctumTable<Self>,
        query: Query<Self::Db>,
        expires_at: Option<DateTime<Utc>>,
        created_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Query<Self::Db>, StoreError>> + Send;

    /// Draws the next id from the table's own sequence, as Laravel's inserts do.
    fn next_id(table: &SanctumTable<Self>) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Writes a batch of last uses (one per id, in id order) forward-only, with `updated_at`.
    fn record_last_used(
        table: &SanctumTable<Self>,
        batch: &[(i64, DateTime<Utc>)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Answers a lookup by `key` on the calling thread, where this database can: `Some` with
    /// the answer, `None` to ask the pool. `statement` is the lookup's text. Default: always
    /// the pool.
    fn lookup_now(
        table: &SanctumTable<Self>,
        statement: &str,
        key: Key<'_>,
    ) -> impl Future<Output = Option<Result<Option<StoredToken>, StoreError>>> + Send {
        let _ = (table, statement, key);
        std::future::ready(None)
    }

    /// Called on the pool's connection that just answered a lookup, for what
    /// [`lookup_now`](Self::lookup_now) needs to learn from a working one. Default: nothing.
    fn after_pool_lookup(
        table: &SanctumTable<Self>,
        conn: &mut Conn<Self::Db>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (table, conn);
        std::future::ready(())
    }
}

/// What a single-row lookup of Sanctum's table is by.
#[derive(Debug, Clone, Copy)]
enum Key<'a> {
    /// `get`: the row with this id, read as [`super::row_or_next`] says.
    Id(i64),
    /// `find_by_hash`: the row whose `token` is this hex.
    Hash(&'a str),
}

impl Key<'_> {
    /// Binds the key to the pool's query.
    fn bind<DB: Driver>(self, query: Query<DB>) -> Query<DB> {
        match self {
            Key::Id(id) => DB::int(query, id),
            Key::Hash(hex) => DB::text(query, hex),
        }
    }
}

/// A row of Sanctum's table as a driver read it, before it is checked.
#[derive(Debug)]
struct SanctumColumns {
    id: i64,
    tokenable_type: String,
    tokenable_id: String,
    name: String,
    token: String,
    abilities: Option<String>,
    last_used_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    created_at: Option<DateTime<Utc>>,
}

impl SanctumColumns {
    /// The stored token, with Sanctum's global `expiration` applied.
    fn check(self, expiration: Option<TimeDelta>) -> Result<StoredToken, StoreError> {
        let id = super::numeric_id(self.id)?;
        let owner = super::owner(&format!("{}:{}", self.tokenable_type, self.tokenable_id))?;
        let hash = SecretHash::from_hex(&self.token).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                "a Sanctum token hash is not 64 hex digits",
            )
        })?;
        // Laravel's timestamps are nullable; an unknown creation time counts as long ago, so
        // an expiration setting refuses the token rather than letting it live forever.
        let created_at = self.created_at.unwrap_or(DateTime::UNIX_EPOCH);
        let mut record = TokenRecord::new(id, owner, self.name, created_at);
        record.scopes = abilities_to_scopes(self.abilities.as_deref());
        record.last_used_at = self.last_used_at;
        record.expires_at = self.expires_at;
        if let Some(expiration) = expiration {
            let global = created_at.checked_add_signed(expiration);
            record.expires_at = match (record.expires_at, global) {
                (Some(own), Some(global)) => Some(own.min(global)),
                (own, global) => own.or(global),
            };
        }
        Ok(StoredToken::new(record, hash))
    }
}

/// What every lookup selects, in this order (SQLite's direct reads read by place).
/// `tokenable_id` is a bigint in Laravel's default migration and a string with `uuidMorphs`:
/// read as text either way.
const COLUMNS: &str = "id, tokenable_type, CAST(tokenable_id AS TEXT) AS tokenable_id, name, \
                       token, abilities, last_used_at, expires_at, created_at";

/// The statements that are the same on every database.
#[derive(Debug)]
struct Statements {
    insert: SqlStr,
    get: SqlStr,
    find_by_hash: SqlStr,
    list_by_owner: SqlStr,
    revoke: SqlStr,
    revoke_owner: SqlStr,
}

impl Statements {
    fn new<D: Dialect>(table: &str) -> Self {
        let columns = COLUMNS;
        let owner = "tokenable_type = $1 AND CAST(tokenable_id AS TEXT) = $2";
        Self {
            insert: D::statement(format!(
                "INSERT INTO {table} (id, tokenable_type, tokenable_id, name, token, abilities, \
                 expires_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            )),
            get: D::statement(super::row_or_next(columns, table)),
            find_by_hash: D::statement(format!("SELECT {columns} FROM {table} WHERE token = $1")),
            list_by_owner: D::statement(format!("SELECT {columns} FROM {table} WHERE {owner}")),
            revoke: D::statement(format!("DELETE FROM {table} WHERE id = $1")),
            revoke_owner: D::statement(format!("DELETE FROM {table} WHERE {owner}")),
        }
    }
}

/// Sanctum's table on one database: the store's logic, once.
#[derive(Debug)]
struct SanctumTable<D: SanctumDialect> {
    pool: Pool<D::Db>,
    settings: Arc<Settings>,
    statements: Arc<Statements>,
    state: Arc<D::State>,
}

// By hand: a derive would ask the database and the state to be `Clone` too.
impl<D: SanctumDialect> Clone for SanctumTable<D> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            settings: Arc::clone(&self.settings),
            statements: Arc::clone(&self.statements),
            state: Arc::clone(&self.state),
        }
    }
}

/// Configures a [`SanctumStore`]. Made by [`SanctumStore::postgres`] or
/// [`SanctumStore::sqlite`].
#[derive(Debug)]
#[must_use]
pub struct SanctumStoreBuilder {
    backend: Backend,
    settings: Settings,
}

impl SanctumStoreBuilder {
    fn new(backend: Backend) -> Self {
        Self {
            backend,
            settings: Settings::default(),
        }
    }

    /// The table's name, if the application renamed it. Default: `personal_access_tokens`.
    pub fn table(mut self, table: &str) -> Result<Self, InvalidIdentifier> {
        self.settings.table = super::identifier(table)?.to_owned();
        Ok(self)
    }

    /// Sanctum's `expiration` setting: tokens expire this long after `created_at`, or at
    /// their own `expires_at` if that is sooner. Default: none (Sanctum's default, `null`).
    pub fn expiration(mut self, expiration: TimeDelta) -> Self {
        self.settings.expiration = Some(expiration);
        self
    }

    /// Laravel's `app.timezone`: the zone in which the table's naive times (`timestamp`
    /// columns, SQLite text without an offset) were written, and in which this store writes
    /// them. Default: [`NaiveTimeZone::UTC`], Laravel's default. `timestamptz` columns and
    /// text with an offset are read by their own offset whatever this is.
    ///
    /// A zone with daylight saving needs [`NaiveTimeZone::iana`] (feature `timezones`); a
    /// [`NaiveTimeZone::fixed`] offset would be an hour off half the year.
    ///
    /// ```no_run
    /// use apitoken::SanctumStore;
    /// use apitoken::store::NaiveTimeZone;
    ///
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::SqlitePool::connect_lazy("sqlite://database/database.sqlite")?;
    /// # #[cfg(feature = "timezones")]
    /// let store = SanctumStore::sqlite(pool)
    ///     .timezone(NaiveTimeZone::iana("Europe/Berlin")?) // config('app.timezone')
    ///     .build();
    /// # Ok(())
    /// # }
    /// ```
    pub fn timezone(mut self, zone: NaiveTimeZone) -> Self {
        self.settings.zone = zone;
        self
    }

    /// The deadline of each query, connection acquisition included. Default: 3 seconds.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// Builds the store.
    pub fn build(mut self) -> SanctumStore {
        let settings = Arc::new(self.settings);
        on_table!(&mut self.backend, table => table.configure(&settings));
        SanctumStore {
            backend: self.backend,
        }
    }
}

impl SanctumStore {
    /// The Sanctum table on `pool`, with the default settings.
    fn builder<D: SanctumDialect>(
        pool: Pool<D::Db>,
        backend: fn(SanctumTable<D>) -> Backend,
    ) -> SanctumStoreBuilder {
        SanctumStoreBuilder::new(backend(SanctumTable::new(pool, &Arc::default())))
    }
}

impl<D: SanctumDialect> SanctumTable<D> {
    fn new(pool: Pool<D::Db>, settings: &Arc<Settings>) -> Self {
        Self {
            pool,
            settings: Arc::clone(settings),
            statements: Arc::new(Statements::new::<D>(&settings.table)),
            state: Arc::new(D::state(&settings.table)),
        }
    }

    /// Takes the builder's settings.
    fn configure(&mut self, settings: &Arc<Settings>) {
        *self = Self::new(self.pool.clone(), settings);
    }

    fn query(&self, statement: &SqlStr) -> Query<D::Db> {
        sqlx::query(statement.clone())
    }

    fn decode(&self, row: &Row<D::Db>) -> Result<StoredToken, StoreError> {
        let text = |column| D::Db::read_text(row, column);
        let time = |column| D::read_time(row, column, self.settings.zone);
        SanctumColumns {
            id: D::Db::read_int(row, "id")?,
            tokenable_type: text("tokenable_type")?,
            tokenable_id: text("tokenable_id")?,
            name: text("name")?,
            token: text("token")?,
            abilities: D::Db::read_opt_text(row, "abilities")?,
            last_used_at: time("last_used_at")?,
            expires_at: time("expires_at")?,
            created_at: time("created_at")?,
        }
        .check(self.settings.expiration)
    }

    /// Runs a single-row lookup on the pool, within the deadline, and lets the dialect learn
    /// from the working connection.
    async fn fetch_one_row(&self, query: Query<D::Db>) -> Result<Option<Row<D::Db>>, StoreError> {
        super::timed(self.settings.timeout, async {
            let mut conn = self.pool.acquire().await?;
            let row = D::Db::fetch_optional(query, &mut conn).await?;
            D::after_pool_lookup(self, &mut conn).await;
            Ok(row)
        })
        .await
    }

    async fn insert(&self, record: TokenRecord, hash: SecretHash) -> Result<(), StoreError> {
        let id = sanctum_id(&record.id).ok_or(StoreError::new(
            StoreErrorKind::Unsupported,
            "Sanctum token ids are numbers",
        ))?;
        let (kind, owner_id) = tokenable(&record.owner).ok_or(StoreError::new(
            StoreErrorKind::Unsupported,
            "a Sanctum owner is `tokenable_type:tokenable_id`",
        ))?;
        if !record.allowed_ips.is_empty() {
            return Err(StoreError::unsupported(
                "Sanctum's table has no column for IP allowlists",
            ));
        }
        if !record.metadata.is_empty() {
            return Err(StoreError::unsupported(
                "Sanctum's table has no column for metadata",
            ));
        }
        if record.revoked_at.is_some() {
            return Err(StoreError::unsupported(
                "Sanctum has no revoked tokens, only deleted ones",
            ));
        }
        let abilities: Vec<&str> = record.scopes.iter().map(Scope::as_str).collect();
        let abilities = serde_json::to_string(&abilities).map_err(StoreError::corrupt)?;
        let query = D::Db::int(self.query(&self.statements.insert), id);
        let query = D::Db::text(query, kind);
        // A numeric tokenable id goes in as a number, for Laravel's bigint column.
        let query = match owner_id.parse::<i64>() {
            Ok(n) => D::Db::int(query, n),
            Err(_) => D::Db::text(query, owner_id),
        };
        let query = D::Db::text(query, &record.name);
        let query = D::Db::text(query, &hash.to_hex());
        let query = D::Db::text(query, &abilities);
        let query = D::bind_insert_times(self, query, record.expires_at, record.created_at).await?;
        super::execute::<D>(&self.pool, self.settings.timeout, query).await?;
        Ok(())
    }

    async fn next_id(&self) -> Result<TokenId, StoreError> {
        super::numeric_id(D::next_id(self).await?)
    }

    async fn get(&self, id: &TokenId) -> Result<Option<StoredToken>, StoreError> {
        match sanctum_id(id) {
            // Not a Sanctum id: no such row.
            None => Ok(None),
            Some(id) => {
                let statement = &self.statements.get;
                let key = Key::Id(id);
                if let Some(answer) = D::lookup_now(self, statement.as_str(), key).await {
                    return answer;
                }
                let query = key.bind(self.query(statement));
                let Some(row) = self.fetch_one_row(query).await? else {
                    return Ok(None);
                };
                let found = D::Db::read_int(&row, "id");
                super::row_if_asked(self.decode(&row), found, id)
            }
        }
    }

    async fn find_by_hash(&self, hash: &SecretHash) -> Result<Option<StoredToken>, StoreError> {
        let hex = hash.to_hex();
        let statement = &self.statements.find_by_hash;
        let key = Key::Hash(&hex);
        if let Some(answer) = D::lookup_now(self, statement.as_str(), key).await {
            return answer;
        }
        let query = key.bind(self.query(statement));
        let row = self.fetch_one_row(query).await?;
        row.map(|row| self.decode(&row)).transpose()
    }

    /// The query of `statement` for the owner's rows, or `None` for an owner this store did
    /// not make (no such rows).
    fn for_owner(&self, statement: &SqlStr, owner: &Owner) -> Option<Query<D::Db>> {
        let (kind, id) = tokenable(owner)?;
        Some(D::Db::text(D::Db::text(self.query(statement), kind), id))
    }

    async fn list_by_owner(&self, owner: &Owner) -> Result<Vec<TokenRecord>, StoreError> {
        let Some(query) = self.for_owner(&self.statements.list_by_owner, owner) else {
            return Ok(Vec::new());
        };
        let rows = super::fetch_all(&self.pool, self.settings.timeout, query).await?;
        let mut records = rows
            .iter()
            .map(|row| self.decode(row).map(|s| TokenRecord::clone(&s.record)))
            .collect::<Result<Vec<_>, _>>()?;
        records.sort_by_key(|r| (r.created_at, r.id));
        Ok(records)
    }

    async fn revoke(&self, id: &TokenId) -> Result<bool, StoreError> {
        let Some(id) = sanctum_id(id) else {
            return Ok(false);
        };
        let query = D::Db::int(self.query(&self.statements.revoke), id);
        Ok(super::execute::<D>(&self.pool, self.settings.timeout, query).await? > 0)
    }

    async fn revoke_owner(&self, owner: &Owner) -> Result<usize, StoreError> {
        let Some(query) = self.for_owner(&self.statements.revoke_owner, owner) else {
            return Ok(0);
        };
        let deleted = super::execute::<D>(&self.pool, self.settings.timeout, query).await?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    async fn record_last_used_batch(
        &self,
        batch: &[(TokenId, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        let latest: Vec<(i64, DateTime<Utc>)> = super::latest_per_id(batch)
            .into_iter()
            .filter_map(|(id, at)| Some((sanctum_id(&id)?, at)))
            .collect();
        if latest.is_empty() {
            return Ok(());
        }
        D::record_last_used(self, &latest).await
    }
}

impl TokenStore for SanctumStore {
    async fn insert(&self, record: TokenRecord, hash: SecretHash) -> Result<(), StoreError> {
        on_table!(&self.backend, table => table.insert(record, hash).await)
    }

    async fn next_id(&self) -> Result<TokenId, StoreError> {
        on_table!(&self.backend, table => table.next_id().await)
    }

    async fn get(&self, id: &TokenId) -> Result<Option<StoredToken>, StoreError> {
        on_table!(&self.backend, table => table.get(id).await)
    }

    async fn find_by_hash(&self, hash: &SecretHash) -> Result<Option<StoredToken>, StoreError> {
        on_table!(&self.backend, table => table.find_by_hash(hash).await)
    }

    async fn list_by_owner(&self, owner: &Owner) -> Result<Vec<TokenRecord>, StoreError> {
        on_table!(&self.backend, table => table.list_by_owner(owner).await)
    }

    /// Deletes the row, as Sanctum's `$token->delete()` does; the time is not kept.
    async fn revoke(&self, id: &TokenId, _at: DateTime<Utc>) -> Result<bool, StoreError> {
        on_table!(&self.backend, table => table.revoke(id).await)
    }

    /// Deletes the owner's rows.
    async fn revoke_owner(&self, owner: &Owner, _at: DateTime<Utc>) -> Result<usize, StoreError> {
        on_table!(&self.backend, table => table.revoke_owner(owner).await)
    }

    async fn record_last_used(&self, id: &TokenId, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.record_last_used_batch(&[(*id, at)]).await
    }

    async fn record_last_used_batch(
        &self,
        batch: &[(TokenId, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        on_table!(&self.backend, table => table.record_last_used_batch(batch).await)
    }
}

/// A token id as Sanctum's `bigint` key, or `None` for an id that is not one.
fn sanctum_id(id: &TokenId) -> Option<i64> {
    id.as_u64().and_then(|n| i64::try_from(n).ok())
}

/// Sanctum's abilities (a JSON array of strings) as scopes. `null` or unreadable JSON grants
/// nothing; abilities that are not valid scopes cannot be required by any route and are left
/// out.
fn abilities_to_scopes(abilities: Option<&str>) -> ScopeSet {
    let Some(text) = abilities else {
        return ScopeSet::new();
    };
    match serde_json::from_str::<Vec<String>>(text) {
        Ok(list) => list.iter().filter_map(|a| Scope::new(a).ok()).collect(),
        Err(_) => {
            tracing::warn!(
                "a Sanctum token's abilities are not a JSON array of strings; granting none"
            );
            ScopeSet::new()
        }
    }
}

/// Splits an owner made by this store back into `tokenable_type` and `tokenable_id`.
fn tokenable(owner: &Owner) -> Option<(&str, &str)> {
    owner.as_str().rsplit_once(':')
}

/// Laravel writes times as `Y-m-d H:i:s`, to the second, in its `app.timezone`.
fn laravel_time(zone: NaiveTimeZone, at: DateTime<Utc>) -> NaiveDateTime {
    let naive = zone.to_naive(at);
    naive.with_nanosecond(0).unwrap_or(naive)
}

/// A time column that holds no date and time this store can read. Names the column only:
/// the value is the other application's data, and is not echoed.
#[derive(Debug, thiserror::Error)]
#[error("Sanctum's `{0}` holds no date and time this store can read")]
struct UnreadableTime(&'static str);

fn unreadable(column: &'static str) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Corrupt,
        "a Sanctum time column holds no date and time this store can read",
        UnreadableTime(column),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abilities() {
        assert_eq!(
            abilities_to_scopes(Some(r#"["*"]"#)),
            ScopeSet::parse("*").unwrap()
        );
        assert_eq!(
            abilities_to_scopes(Some(r#"["server:update","edit posts","vps:read"]"#)),
            ScopeSet::parse("server:update vps:read").unwrap()
        );
        assert!(abilities_to_scopes(None).is_empty());
        assert!(abilities_to_scopes(Some("not json")).is_empty());
        assert!(abilities_to_scopes(Some(r#"{"a":1}"#)).is_empty());
    }

    #[test]
    fn owners_split_at_the_last_colon() {
        let owner = Owner::new("App\\Models\\User:42").unwrap();
        assert_eq!(tokenable(&owner), Some(("App\\Models\\User", "42")));
        assert_eq!(tokenable(&Owner::new("nocolon").unwrap()), None);
    }
}
