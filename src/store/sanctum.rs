//! [`SanctumStore`]: Laravel Sanctum's own `personal_access_tokens` table.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Timelike, Utc};
use sqlx::{Row, SqlStr};

use super::naive_time::NaiveTimeZone;
use super::sql::{self, InvalidIdentifier, timed};
use super::{StoreError, StoreErrorKind, StoredToken, TokenStore};
use crate::id::TokenId;
use crate::record::{Owner, TokenRecord};
use crate::scope::{Scope, ScopeSet};
use crate::secret::SecretHash;

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
    queries: Arc<Queries>,
    expiration: Option<TimeDelta>,
    timeout: Duration,
    zone: NaiveTimeZone,
    /// Which of the table's time columns are `timestamptz`, learnt at the first write: a
    /// write must bind each column's own type, because PostgreSQL converts between the two
    /// in the session's `TimeZone`, which need not be Laravel's.
    #[cfg(feature = "postgres")]
    pg_writes: Arc<tokio::sync::OnceCell<PgWrites>>,
}

/// How to write Sanctum's time columns on PostgreSQL, by their types.
#[cfg(feature = "postgres")]
#[derive(Debug)]
struct PgWrites {
    created_tz: bool,
    expires_tz: bool,
    updated_tz: bool,
    last_used_batch: SqlStr,
}

#[derive(Debug, Clone)]
enum Backend {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

/// Runs `$body` with `$pool` bound to whichever pool the store has. Each arm is compiled for
/// its own database, so one query text serves both.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres($pool) => $body,
            #[cfg(feature = "sqlite")]
            Backend::Sqlite($pool) => $body,
        }
    };
}

#[derive(Debug)]
struct Queries {
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    table: String,
    insert: SqlStr,
    get: SqlStr,
    find_by_hash: SqlStr,
    list_by_owner: SqlStr,
    revoke: SqlStr,
    revoke_owner: SqlStr,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    time_types_postgres: SqlStr,
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    last_used_batch_sqlite: SqlStr,
    next_id_postgres: SqlStr,
    next_id_sqlite_seed: SqlStr,
    next_id_sqlite: SqlStr,
}

impl Queries {
    fn new(table: &str) -> Self {
        // `tokenable_id` is a bigint in Laravel's default migration and a string with
        // `uuidMorphs`: read it as text either way.
        let columns = "id, tokenable_type, CAST(tokenable_id AS TEXT) AS tokenable_id, name, \
                       token, abilities, last_used_at, expires_at, created_at";
        let owner = "tokenable_type = $1 AND CAST(tokenable_id AS TEXT) = $2";
        Self {
            table: table.to_owned(),
            insert: sql::text(format!(
                "INSERT INTO {table} (id, tokenable_type, tokenable_id, name, token, abilities, \
                 expires_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            )),
            get: sql::text(format!("SELECT {columns} FROM {table} WHERE id = $1")),
            find_by_hash: sql::text(format!("SELECT {columns} FROM {table} WHERE token = $1")),
            list_by_owner: sql::text(format!("SELECT {columns} FROM {table} WHERE {owner}")),
            revoke: sql::text(format!("DELETE FROM {table} WHERE id = $1")),
            revoke_owner: sql::text(format!("DELETE FROM {table} WHERE {owner}")),
            // The table as the session's search_path finds it, as every other query does.
            time_types_postgres: sql::text(format!(
                "SELECT attname::text AS name, atttypid = 'timestamptz'::regtype AS tz \
                 FROM pg_attribute WHERE attrelid = to_regclass('{table}') \
                 AND attnum > 0 AND NOT attisdropped"
            )),
            // One statement for a whole batch, on either database.
            last_used_batch_sqlite: sql::text(sql::sqlite_last_used_batch(
                table,
                "last_used_at = v.at, updated_at = v.at",
            )),
            next_id_postgres: sql::text(format!(
                "SELECT nextval(pg_get_serial_sequence('{table}', 'id')) AS n"
            )),
            // Laravel's SQLite table is AUTOINCREMENT: reserving the id in `sqlite_sequence`
            // keeps this process and the Laravel app from handing out the same one.
            next_id_sqlite_seed: sql::text(format!(
                "INSERT INTO sqlite_sequence (name, seq) SELECT '{table}', 0 \
                 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = '{table}')"
            )),
            next_id_sqlite: sql::text(format!(
                "UPDATE sqlite_sequence SET seq = MAX(seq, (SELECT COALESCE(MAX(id), 0) FROM {table})) + 1 \
                 WHERE name = '{table}' RETURNING seq AS n"
            )),
        }
    }

    /// The forward-only last-use `UPDATE` for PostgreSQL. Each batch binds every time twice,
    /// as an instant (`timestamptz`) and as the naive time in the app's zone (`timestamp`), and
    /// each column takes the one of its own type, so no conversion depends on the session.
    #[cfg(feature = "postgres")]
    fn last_used_batch_postgres(&self, last_used_tz: bool, updated_tz: bool) -> SqlStr {
        let pick = |tz: bool| if tz { "v.at_tz" } else { "v.at_naive" };
        let (last_used, updated) = (pick(last_used_tz), pick(updated_tz));
        let table = &self.table;
        sql::text(format!(
            "UPDATE {table} AS t SET last_used_at = {last_used}, updated_at = {updated} \
             FROM UNNEST($1::bigint[], $2::timestamptz[], $3::timestamp[]) \
             AS v(id, at_tz, at_naive) \
             WHERE t.id = v.id AND (t.last_used_at IS NULL OR t.last_used_at < {last_used})"
        ))
    }
}

/// Configures a [`SanctumStore`]. Made by [`SanctumStore::postgres`] or
/// [`SanctumStore::sqlite`].
#[derive(Debug)]
#[must_use]
pub struct SanctumStoreBuilder {
    backend: Backend,
    table: String,
    expiration: Option<TimeDelta>,
    timeout: Duration,
    zone: NaiveTimeZone,
}

impl SanctumStoreBuilder {
    /// The table's name, if the application renamed it. Default: `personal_access_tokens`.
    pub fn table(mut self, table: &str) -> Result<Self, InvalidIdentifier> {
        self.table = sql::identifier(table)?.to_owned();
        Ok(self)
    }

    /// Sanctum's `expiration` setting: tokens expire this long after `created_at`, or at
    /// their own `expires_at` if that is sooner. Default: none (Sanctum's default, `null`).
    pub fn expiration(mut self, expiration: TimeDelta) -> Self {
        self.expiration = Some(expiration);
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
        self.zone = zone;
        self
    }

    /// The deadline of each query, connection acquisition included. Default: 3 seconds.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the store.
    pub fn build(self) -> SanctumStore {
        SanctumStore {
            backend: self.backend,
            queries: Arc::new(Queries::new(&self.table)),
            expiration: self.expiration,
            timeout: self.timeout,
            zone: self.zone,
            #[cfg(feature = "postgres")]
            pg_writes: Arc::default(),
        }
    }
}

impl SanctumStore {
    /// A store over a PostgreSQL database that a Laravel application migrated.
    #[cfg(feature = "postgres")]
    pub fn postgres(pool: sqlx::PgPool) -> SanctumStoreBuilder {
        Self::builder(Backend::Postgres(pool))
    }

    /// A store over an SQLite database that a Laravel application migrated.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(pool: sqlx::SqlitePool) -> SanctumStoreBuilder {
        Self::builder(Backend::Sqlite(pool))
    }

    fn builder(backend: Backend) -> SanctumStoreBuilder {
        SanctumStoreBuilder {
            backend,
            table: "personal_access_tokens".to_owned(),
            expiration: None,
            timeout: sql::DEFAULT_QUERY_TIMEOUT,
            zone: NaiveTimeZone::UTC,
        }
    }

    fn decode<R: TimeRow>(&self, row: &R) -> Result<StoredToken, StoreError>
    where
        for<'a> &'a str: sqlx::ColumnIndex<R>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let get_err = sql::map_err;
        let id: i64 = row.try_get("id").map_err(get_err)?;
        let id = TokenId::from_u64(u64::try_from(id).map_err(StoreError::corrupt)?);
        let tokenable_type: String = row.try_get("tokenable_type").map_err(get_err)?;
        let tokenable_id: String = row.try_get("tokenable_id").map_err(get_err)?;
        let owner = sql::owner(&format!("{tokenable_type}:{tokenable_id}"))?;
        let hash: String = row.try_get("token").map_err(get_err)?;
        let hash = SecretHash::from_hex(&hash).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                "a Sanctum token hash is not 64 hex digits",
            )
        })?;
        let abilities: Option<String> = row.try_get("abilities").map_err(get_err)?;
        let time = |column| row.time(column, self.zone);
        // Laravel's timestamps are nullable; an unknown creation time counts as long ago, so
        // an expiration setting refuses the token rather than letting it live forever.
        let created_at = time("created_at")?.unwrap_or(DateTime::UNIX_EPOCH);

        let mut record = TokenRecord::new(
            id,
            owner,
            row.try_get::<String, _>("name").map_err(get_err)?,
            created_at,
        );
        record.scopes = abilities_to_scopes(abilities.as_deref());
        record.last_used_at = time("last_used_at")?;
        record.expires_at = time("expires_at")?;
        if let Some(expiration) = self.expiration {
            let global = created_at.checked_add_signed(expiration);
            record.expires_at = match (record.expires_at, global) {
                (Some(own), Some(global)) => Some(own.min(global)),
                (own, global) => own.or(global),
            };
        }
        Ok(StoredToken::new(record, hash))
    }

    /// The types of the table's time columns, read from the catalogue once. A column changed
    /// from `timestamp` to `timestamptz` while this store runs is seen after a restart.
    #[cfg(feature = "postgres")]
    async fn pg_writes(&self, pool: &sqlx::PgPool) -> Result<&PgWrites, StoreError> {
        self.pg_writes
            .get_or_try_init(|| async {
                let query = sqlx::query(self.queries.time_types_postgres.clone());
                let rows = timed(self.timeout, query.fetch_all(pool)).await?;
                let mut tz = std::collections::HashMap::new();
                for row in &rows {
                    let name: String = row.try_get("name").map_err(sql::map_err)?;
                    let is_tz: bool = row.try_get("tz").map_err(sql::map_err)?;
                    tz.insert(name, is_tz);
                }
                let tz = |column: &str| tz.get(column).copied().unwrap_or(false);
                Ok(PgWrites {
                    created_tz: tz("created_at"),
                    expires_tz: tz("expires_at"),
                    updated_tz: tz("updated_at"),
                    last_used_batch: self
                        .queries
                        .last_used_batch_postgres(tz("last_used_at"), tz("updated_at")),
                })
            })
            .await
    }

    async fn fetch_optional(
        &self,
        query: &SqlStr,
        bind: Bind<'_>,
    ) -> Result<Option<StoredToken>, StoreError> {
        on_pool!(self, pool => {
            let query = bind.apply(sqlx::query(query.clone()));
            let row = timed(self.timeout, query.fetch_optional(pool)).await?;
            row.map(|row| self.decode(&row)).transpose()
        })
    }
}

/// The one value a lookup binds.
enum Bind<'a> {
    Id(i64),
    Text(&'a str),
}

impl Bind<'_> {
    fn apply<'q, DB: sqlx::Database>(
        self,
        query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    ) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
    where
        i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        match self {
            Bind::Id(id) => query.bind(id),
            Bind::Text(text) => query.bind(text.to_owned()),
        }
    }
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

/// An instant to the second, for a `timestamptz` column.
#[cfg(feature = "postgres")]
fn laravel_instant(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_nanosecond(0).unwrap_or(at)
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

/// Reads one of Sanctum's time columns, whatever type the database gave it.
trait TimeRow: Row {
    fn time(
        &self,
        column: &'static str,
        zone: NaiveTimeZone,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;
}

#[cfg(feature = "postgres")]
impl TimeRow for sqlx::postgres::PgRow {
    /// `timestamptz` is an instant; `timestamp` (Laravel's `timestamps()`) a naive time in the
    /// app's zone. Laravel's `timestampsTz()` makes the first, and tables migrated from one
    /// to the other are common, so the column's type decides, not a guess.
    fn time(
        &self,
        column: &'static str,
        zone: NaiveTimeZone,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        use sqlx::{TypeInfo, ValueRef};
        let raw = self.try_get_raw(column).map_err(sql::map_err)?;
        if raw.is_null() {
            return Ok(None);
        }
        if raw.type_info().name() == "TIMESTAMPTZ" {
            let at: DateTime<Utc> = self.try_get(column).map_err(sql::map_err)?;
            return Ok(Some(at));
        }
        let naive: NaiveDateTime = self.try_get(column).map_err(sql::map_err)?;
        zone.to_utc(naive)
            .map(Some)
            .ok_or_else(|| unreadable(column))
    }
}

#[cfg(feature = "sqlite")]
impl TimeRow for sqlx::sqlite::SqliteRow {
    /// SQLite keeps whatever was written. Text is read by our own parser, which keeps an
    /// offset when there is one (sqlx's `NaiveDateTime` drops it: `10:00+02:00` would read as
    /// 10:00 here, two hours late); numbers are Unix seconds or Julian days, instants both,
    /// as SQLite's date functions read them. Anything else is refused, not guessed.
    fn time(
        &self,
        column: &'static str,
        zone: NaiveTimeZone,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        use sqlx::{TypeInfo, ValueRef};
        let raw = self.try_get_raw(column).map_err(sql::map_err)?;
        if raw.is_null() {
            return Ok(None);
        }
        let kind = raw.type_info().name().to_owned();
        match kind.as_str() {
            "TEXT" => {
                let text: String = self.try_get_unchecked(column).map_err(sql::map_err)?;
                zone.parse_text(&text)
                    .map(Some)
                    .ok_or_else(|| unreadable(column))
            }
            "INTEGER" | "REAL" => self
                .try_get_unchecked::<DateTime<Utc>, _>(column)
                .map(Some)
                .map_err(|_| unreadable(column)),
            _ => Err(unreadable(column)),
        }
    }
}

impl TokenStore for SanctumStore {
    async fn insert(&self, record: TokenRecord, hash: SecretHash) -> Result<(), StoreError> {
        let id = record
            .id
            .as_u64()
            .and_then(|n| i64::try_from(n).ok())
            .ok_or(StoreError::new(
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
        let created = laravel_time(self.zone, record.created_at);
        let expires = record.expires_at.map(|at| laravel_time(self.zone, at));
        let hex = hash.to_hex();
        match &self.backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => {
                let types = self.pg_writes(pool).await?;
                let query = sqlx::query(self.queries.insert.clone()).bind(id).bind(kind);
                let query = match owner_id.parse::<i64>() {
                    Ok(n) => query.bind(n),
                    Err(_) => query.bind(owner_id),
                };
                let query = query.bind(&record.name).bind(&hex).bind(&abilities);
                // Each column gets a value of its own type (see `PgWrites`).
                let query = if types.expires_tz {
                    query.bind(record.expires_at.map(laravel_instant))
                } else {
                    query.bind(expires)
                };
                let instant = |tz: bool| tz.then(|| laravel_instant(record.created_at));
                let query = match instant(types.created_tz) {
                    Some(at) => query.bind(at),
                    None => query.bind(created),
                };
                let query = match instant(types.updated_tz) {
                    Some(at) => query.bind(at),
                    None => query.bind(created),
                };
                timed(self.timeout, query.execute(pool)).await?;
            }
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(pool) => {
                let query = sqlx::query(self.queries.insert.clone()).bind(id).bind(kind);
                // A numeric tokenable id goes in as a number, for Laravel's bigint column.
                let query = match owner_id.parse::<i64>() {
                    Ok(n) => query.bind(n),
                    Err(_) => query.bind(owner_id),
                };
                let query = query
                    .bind(&record.name)
                    .bind(&hex)
                    .bind(&abilities)
                    .bind(expires)
                    .bind(created)
                    .bind(created);
                timed(self.timeout, query.execute(pool)).await?;
            }
        }
        Ok(())
    }

    async fn next_id(&self) -> Result<TokenId, StoreError> {
        let n: i64 = match &self.backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => {
                let query = sqlx::query(self.queries.next_id_postgres.clone());
                let row = timed(self.timeout, query.fetch_one(pool)).await?;
                row.try_get("n").map_err(sql::map_err)?
            }
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(pool) => {
                let work = async {
                    let mut tx = pool.begin().await?;
                    sqlx::query(self.queries.next_id_sqlite_seed.clone())
                        .execute(&mut *tx)
                        .await?;
                    let row = sqlx::query(self.queries.next_id_sqlite.clone())
                        .fetch_one(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    row.try_get::<i64, _>("n")
                };
                timed(self.timeout, work).await?
            }
        };
        Ok(TokenId::from_u64(
            u64::try_from(n).map_err(StoreError::corrupt)?,
        ))
    }

    fn get(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        let id = id.as_u64().and_then(|n| i64::try_from(n).ok());
        async move {
            match id {
                // Not a Sanctum id: no such row.
                None => Ok(None),
                Some(id) => self.fetch_optional(&self.queries.get, Bind::Id(id)).await,
            }
        }
    }

    fn find_by_hash(
        &self,
        hash: &SecretHash,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        let hex = hash.to_hex();
        async move {
            self.fetch_optional(&self.queries.find_by_hash, Bind::Text(&hex))
                .await
        }
    }

    fn list_by_owner(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
        let parts = tokenable(owner).map(|(t, i)| (t.to_owned(), i.to_owned()));
        async move {
            let Some((kind, id)) = parts else {
                return Ok(Vec::new());
            };
            let mut records = on_pool!(self, pool => {
                let query = sqlx::query(self.queries.list_by_owner.clone()).bind(kind).bind(id);
                let rows = timed(self.timeout, query.fetch_all(pool)).await?;
                rows.iter()
                    .map(|row| self.decode(row).map(|s| TokenRecord::clone(&s.record)))
                    .collect::<Result<Vec<_>, _>>()?
            });
            records.sort_by_key(|r| (r.created_at, r.id));
            Ok(records)
        }
    }

    fn revoke(
        &self,
        id: &TokenId,
        _at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let id = id.as_u64().and_then(|n| i64::try_from(n).ok());
        async move {
            let Some(id) = id else {
                return Ok(false);
            };
            let deleted = on_pool!(self, pool => {
                let query = sqlx::query(self.queries.revoke.clone()).bind(id);
                timed(self.timeout, query.execute(pool)).await?.rows_affected()
            });
            Ok(deleted > 0)
        }
    }

    fn revoke_owner(
        &self,
        owner: &Owner,
        _at: DateTime<Utc>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let parts = tokenable(owner).map(|(t, i)| (t.to_owned(), i.to_owned()));
        async move {
            let Some((kind, id)) = parts else {
                return Ok(0);
            };
            let deleted = on_pool!(self, pool => {
                let query = sqlx::query(self.queries.revoke_owner.clone()).bind(kind).bind(id);
                timed(self.timeout, query.execute(pool)).await?.rows_affected()
            });
            Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
        }
    }

    fn record_last_used(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let batch = [(*id, at)];
        async move { self.record_last_used_batch(&batch).await }
    }

    fn record_last_used_batch(
        &self,
        batch: &[(TokenId, DateTime<Utc>)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let latest: Vec<(i64, DateTime<Utc>)> = sql::latest_per_id(batch)
            .into_iter()
            .filter_map(|(id, at)| Some((i64::try_from(id.as_u64()?).ok()?, at)))
            .collect();
        async move {
            if latest.is_empty() {
                return Ok(());
            }
            match &self.backend {
                #[cfg(feature = "postgres")]
                Backend::Postgres(pool) => {
                    let types = self.pg_writes(pool).await?;
                    let ids: Vec<i64> = latest.iter().map(|(id, _)| *id).collect();
                    let instants: Vec<DateTime<Utc>> =
                        latest.iter().map(|(_, at)| laravel_instant(*at)).collect();
                    let naive: Vec<NaiveDateTime> = latest
                        .iter()
                        .map(|(_, at)| laravel_time(self.zone, *at))
                        .collect();
                    let query = sqlx::query(types.last_used_batch.clone())
                        .bind(ids)
                        .bind(instants)
                        .bind(naive);
                    timed(self.timeout, query.execute(pool)).await?;
                }
                #[cfg(feature = "sqlite")]
                Backend::Sqlite(pool) => {
                    // As sqlx writes a `NaiveDateTime` to SQLite, so text compares in order.
                    let pairs: Vec<(i64, String)> = latest
                        .iter()
                        .map(|(id, at)| {
                            (
                                *id,
                                laravel_time(self.zone, *at).format("%F %T").to_string(),
                            )
                        })
                        .collect();
                    let pairs = serde_json::to_string(&pairs).map_err(StoreError::corrupt)?;
                    let query =
                        sqlx::query(self.queries.last_used_batch_sqlite.clone()).bind(pairs);
                    timed(self.timeout, query.execute(pool)).await?;
                }
            }
            Ok(())
        }
    }
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
