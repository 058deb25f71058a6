//! [`PostgresGrantStore`]: refresh-token families and authorization codes in PostgreSQL.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Row, SqlStr};

use super::grants::{AuthorizationCodeRecord, GrantFamily, GrantStore, RefreshTokenRecord};
use crate::id::TokenId;
use crate::store::StoreError;
use crate::store::sql::migrate::postgres::{
    DEFAULT_MIGRATION_LOCK_TIMEOUT, PgMigrator, VERSIONS_TABLE,
};
use crate::store::sql::migrate::{self, Plan};
use crate::store::sql::postgres::qualified;
use crate::store::sql::{self, InvalidIdentifier, timed};

/// A [`GrantStore`] in PostgreSQL (features `oauth` and `postgres`), so refresh tokens and
/// codes survive restarts and are shared by every replica.
///
/// Three tables, in the configured schema (default: the connection's `search_path`):
/// `apitoken_oauth_families`, `apitoken_oauth_refresh_tokens` and `apitoken_oauth_codes`
/// ([`migrate`](Self::migrate) creates them; `docs/oauth.md` shows the DDL). Secrets are
/// stored only as their hash. A rotation is one transaction that locks the family row first,
/// so it cannot interleave with a revocation of the family or with another rotation; using a
/// code is one conditional `UPDATE`. Every query has a deadline (3 s by default): a database
/// that is down makes the endpoints answer 503.
///
/// ```no_run
/// use apitoken::oauth::PostgresGrantStore;
/// use apitoken::PostgresStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// let grants = PostgresGrantStore::new(store.pool().clone());
/// grants.migrate().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresGrantStore {
    pool: PgPool,
    schema: Option<String>,
    families: String,
    refresh: String,
    codes: String,
    versions: String,
    timeout: Duration,
}

impl PostgresGrantStore {
    /// A store on `pool`, in the connection's default schema.
    pub fn new(pool: PgPool) -> Self {
        Self::in_schema(pool, None)
    }

    /// A store whose tables live in `schema` (created by [`migrate`](Self::migrate) if
    /// missing): lowercase letters, digits and `_`.
    pub fn with_schema(pool: PgPool, schema: &str) -> Result<Self, InvalidIdentifier> {
        Ok(Self::in_schema(
            pool,
            Some(sql::identifier(schema)?.to_owned()),
        ))
    }

    fn in_schema(pool: PgPool, schema: Option<String>) -> Self {
        let qualify = |name: &str| qualified(schema.as_deref(), name);
        Self {
            versions: qualify(VERSIONS_TABLE),
            families: qualify("apitoken_oauth_families"),
            refresh: qualify("apitoken_oauth_refresh_tokens"),
            codes: qualify("apitoken_oauth_codes"),
            pool,
            schema,
            timeout: sql::DEFAULT_QUERY_TIMEOUT,
        }
    }

    /// The deadline of each query, connection acquisition included. Default: 3 seconds.
    #[must_use]
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Brings the tables to the schema version this build uses, as
    /// [`PostgresStore::migrate`](crate::PostgresStore::migrate) does for tokens: the
    /// recorded version is read first and nothing else happens when it is current; an
    /// upgrade runs in one transaction under the schema's advisory lock (the one the token
    /// store takes too) with a 1-second `lock_timeout`; unknown versions and foreign tables
    /// are refused with [`StoreErrorKind::Schema`](crate::StoreErrorKind::Schema).
    ///
    /// Versions: 1, the first released tables; 2, refresh-token generations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let families = &self.families;
        let refresh = &self.refresh;
        let codes = &self.codes;
        let columns: [(&str, &[(&'static str, &'static str)]); 3] = [
            (families, FAMILY_TABLE_COLUMNS),
            (refresh, REFRESH_TABLE_COLUMNS),
            (codes, CODE_TABLE_COLUMNS),
        ];
        let plan = Plan {
            component: "oauth_grants",
            current: GRANTS_SCHEMA_VERSION,
            versions: &self.versions,
            columns: &columns,
            probe: probe_grants_version,
        };
        let migrator = PgMigrator {
            schema: self.schema.clone(),
            lock_timeout: DEFAULT_MIGRATION_LOCK_TIMEOUT,
        };
        let steps = |from: u32| self.migration_step(from);
        // Migrations may wait for another replica's lock: allow them longer than a query.
        migrate::migrate(&migrator, &self.pool, &plan, &steps, self.timeout * 10).await
    }

    /// The DDL from schema version `from` to `from + 1`.
    fn migration_step(&self, from: u32) -> Vec<String> {
        let (families, refresh, codes) = (&self.families, &self.refresh, &self.codes);
        let index_name = |table: &str, column: &str| {
            let bare = table.rsplit('.').next().unwrap_or(table);
            format!("{bare}_{column}_idx")
        };
        match from {
            0 => {
                let by_family = index_name(refresh, "family");
                let by_expiry = index_name(codes, "expires_at");
                vec![format!(
                    "CREATE TABLE IF NOT EXISTS {families} ( \
                         id TEXT COLLATE \"C\" PRIMARY KEY, \
                         client_id TEXT COLLATE \"C\" NOT NULL, \
                         owner TEXT COLLATE \"C\" NOT NULL, \
                         scopes TEXT NOT NULL, \
                         created_at TIMESTAMPTZ NOT NULL, \
                         revoked_at TIMESTAMPTZ, \
                         access_tokens JSONB NOT NULL DEFAULT '[]'); \
                     CREATE TABLE IF NOT EXISTS {refresh} ( \
                         id TEXT COLLATE \"C\" PRIMARY KEY, \
                         family TEXT COLLATE \"C\" NOT NULL, \
                         secret_hash BYTEA NOT NULL, \
                         created_at TIMESTAMPTZ NOT NULL, \
                         used_at TIMESTAMPTZ); \
                     CREATE INDEX IF NOT EXISTS {by_family} ON {refresh} (family, created_at); \
                     CREATE TABLE IF NOT EXISTS {codes} ( \
                         id TEXT COLLATE \"C\" PRIMARY KEY, \
                         secret_hash BYTEA NOT NULL, \
                         client_id TEXT COLLATE \"C\" NOT NULL, \
                         redirect_uri TEXT NOT NULL, \
                         code_challenge TEXT NOT NULL, \
                         owner TEXT COLLATE \"C\" NOT NULL, \
                         scopes TEXT NOT NULL, \
                         family TEXT COLLATE \"C\" NOT NULL, \
                         created_at TIMESTAMPTZ NOT NULL, \
                         expires_at TIMESTAMPTZ NOT NULL, \
                         used_at TIMESTAMPTZ); \
                     CREATE INDEX IF NOT EXISTS {by_expiry} ON {codes} (expires_at);"
                )]
            }
            1 => vec![
                format!("ALTER TABLE {families} ADD COLUMN generation BIGINT NOT NULL DEFAULT 0"),
                format!("ALTER TABLE {refresh} ADD COLUMN generation BIGINT NOT NULL DEFAULT 0"),
            ],
            _ => Vec::new(),
        }
    }

    fn q(&self, text: String) -> SqlStr {
        sql::text(text)
    }

    /// Inserts a family and its first refresh token, if any, inside `tx`.
    async fn store_family(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        family: &GrantFamily,
        first: Option<&RefreshTokenRecord>,
    ) -> Result<(), sqlx::Error> {
        let insert_family = self.q(format!(
            "INSERT INTO {} ({FAMILY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            self.families
        ));
        sqlx::query(insert_family)
            .bind(family.id.as_str())
            .bind(family.client_id.as_str())
            .bind(family.owner.as_str())
            .bind(family.scopes.to_string())
            .bind(family.created_at)
            .bind(family.revoked_at)
            .bind(access_json(&family.access_tokens))
            .bind(generation(family.generation)?)
            .execute(&mut **tx)
            .await?;
        if let Some(first) = first {
            let insert_refresh = self.q(format!(
                "INSERT INTO {} ({REFRESH_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
                self.refresh
            ));
            sqlx::query(insert_refresh)
                .bind(first.id.as_str())
                .bind(first.family.as_str())
                .bind(first.hash.as_bytes().as_slice())
                .bind(first.created_at)
                .bind(first.used_at)
                .bind(generation(first.generation)?)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// A generation as stored (`BIGINT`).
fn generation(generation: u64) -> Result<i64, sqlx::Error> {
    i64::try_from(generation).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

fn decode_generation(row: &PgRow) -> Result<u64, StoreError> {
    let stored: i64 = row.try_get("generation").map_err(sql::map_err)?;
    u64::try_from(stored).map_err(StoreError::corrupt)
}

/// An access token noted in a family, as stored in `access_tokens`.
#[derive(Serialize, Deserialize)]
struct AccessEntry {
    id: TokenId,
    expires_at: DateTime<Utc>,
}

fn access_json(tokens: &[(TokenId, DateTime<Utc>)]) -> serde_json::Value {
    let entries: Vec<AccessEntry> = tokens
        .iter()
        .map(|(id, expires_at)| AccessEntry {
            id: *id,
            expires_at: *expires_at,
        })
        .collect();
    serde_json::to_value(entries).unwrap_or_default()
}

fn decode_family(row: &PgRow) -> Result<GrantFamily, StoreError> {
    let get = sql::map_err;
    let id: String = row.try_get("id").map_err(get)?;
    let client_id: String = row.try_get("client_id").map_err(get)?;
    let owner: String = row.try_get("owner").map_err(get)?;
    let scopes: String = row.try_get("scopes").map_err(get)?;
    let access: serde_json::Value = row.try_get("access_tokens").map_err(get)?;
    let access: Vec<AccessEntry> = serde_json::from_value(access).map_err(StoreError::corrupt)?;
    let mut family = GrantFamily::new(
        sql::token_id(&id)?,
        sql::token_id(&client_id)?,
        sql::owner(&owner)?,
        sql::scopes(&scopes)?,
        row.try_get("created_at").map_err(get)?,
    );
    family.revoked_at = row.try_get("revoked_at").map_err(get)?;
    family.access_tokens = access.into_iter().map(|a| (a.id, a.expires_at)).collect();
    family.generation = decode_generation(row)?;
    Ok(family)
}

fn decode_refresh(row: &PgRow) -> Result<RefreshTokenRecord, StoreError> {
    let get = sql::map_err;
    let id: String = row.try_get("id").map_err(get)?;
    let family: String = row.try_get("family").map_err(get)?;
    let hash: Vec<u8> = row.try_get("secret_hash").map_err(get)?;
    let mut record = RefreshTokenRecord::new(
        sql::token_id(&id)?,
        sql::token_id(&family)?,
        sql::secret_hash(&hash)?,
        row.try_get("created_at").map_err(get)?,
    );
    record.used_at = row.try_get("used_at").map_err(get)?;
    record.generation = decode_generation(row)?;
    Ok(record)
}

fn decode_code(row: &PgRow) -> Result<AuthorizationCodeRecord, StoreError> {
    let get = sql::map_err;
    let text = |column: &str| row.try_get::<String, _>(column).map_err(get);
    let hash: Vec<u8> = row.try_get("secret_hash").map_err(get)?;
    Ok(AuthorizationCodeRecord {
        id: sql::token_id(&text("id")?)?,
        hash: sql::secret_hash(&hash)?,
        client_id: sql::token_id(&text("client_id")?)?,
        redirect_uri: text("redirect_uri")?,
        code_challenge: text("code_challenge")?,
        owner: sql::owner(&text("owner")?)?,
        scopes: sql::scopes(&text("scopes")?)?,
        family: sql::token_id(&text("family")?)?,
        created_at: row.try_get("created_at").map_err(get)?,
        expires_at: row.try_get("expires_at").map_err(get)?,
        used_at: row.try_get("used_at").map_err(get)?,
    })
}

/// The schema version of the grant tables this build writes.
const GRANTS_SCHEMA_VERSION: u32 = 2;

const TIMESTAMPTZ: &str = "timestamp with time zone";
const FAMILY_TABLE_COLUMNS: &[(&str, &str)] = &[
    ("id", "text"),
    ("client_id", "text"),
    ("owner", "text"),
    ("scopes", "text"),
    ("created_at", TIMESTAMPTZ),
    ("revoked_at", TIMESTAMPTZ),
    ("access_tokens", "jsonb"),
    ("generation", "bigint"),
];
const REFRESH_TABLE_COLUMNS: &[(&str, &str)] = &[
    ("id", "text"),
    ("family", "text"),
    ("secret_hash", "bytea"),
    ("created_at", TIMESTAMPTZ),
    ("used_at", TIMESTAMPTZ),
    ("generation", "bigint"),
];
const CODE_TABLE_COLUMNS: &[(&str, &str)] = &[
    ("id", "text"),
    ("secret_hash", "bytea"),
    ("client_id", "text"),
    ("redirect_uri", "text"),
    ("code_challenge", "text"),
    ("owner", "text"),
    ("scopes", "text"),
    ("family", "text"),
    ("created_at", TIMESTAMPTZ),
    ("expires_at", TIMESTAMPTZ),
    ("used_at", TIMESTAMPTZ),
];

/// The version of grant tables made before versions were recorded.
fn probe_grants_version(family_columns: &[(String, String)]) -> u32 {
    if family_columns.is_empty() {
        0
    } else if family_columns.iter().any(|(name, _)| name == "generation") {
        2
    } else {
        1
    }
}

const FAMILY_COLUMNS: &str =
    "id, client_id, owner, scopes, created_at, revoked_at, access_tokens, generation";
const REFRESH_COLUMNS: &str = "id, family, secret_hash, created_at, used_at, generation";

impl GrantStore for PostgresGrantStore {
    async fn insert_family(
        &self,
        family: GrantFamily,
        first: RefreshTokenRecord,
    ) -> Result<(), StoreError> {
        let work = async {
            let mut tx = self.pool.begin().await?;
            self.store_family(&mut tx, &family, Some(&first)).await?;
            tx.commit().await
        };
        timed(self.timeout, work).await
    }

    async fn family(&self, id: &TokenId) -> Result<Option<GrantFamily>, StoreError> {
        let query = self.q(format!(
            "SELECT {FAMILY_COLUMNS} FROM {} WHERE id = $1",
            self.families
        ));
        let query = sqlx::query(query).bind(id.as_str());
        let row = timed(self.timeout, query.fetch_optional(&self.pool)).await?;
        row.map(|row| decode_family(&row)).transpose()
    }

    async fn refresh_token(&self, id: &TokenId) -> Result<Option<RefreshTokenRecord>, StoreError> {
        let query = self.q(format!(
            "SELECT {REFRESH_COLUMNS} FROM {} WHERE id = $1",
            self.refresh
        ));
        let query = sqlx::query(query).bind(id.as_str());
        let row = timed(self.timeout, query.fetch_optional(&self.pool)).await?;
        row.map(|row| decode_refresh(&row)).transpose()
    }

    async fn rotate_refresh(
        &self,
        old: &TokenId,
        new: RefreshTokenRecord,
        access: (TokenId, DateTime<Utc>),
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // The family row is locked first: a revocation of the family, or another rotation,
        // waits for this transaction and then sees its result.
        let lock = self.q(format!(
            "SELECT {FAMILY_COLUMNS} FROM {} WHERE id = $1 FOR UPDATE",
            self.families
        ));
        let spend = self.q(format!(
            "UPDATE {} SET used_at = $2 WHERE id = $1 AND family = $3 AND used_at IS NULL",
            self.refresh
        ));
        let note = self.q(format!(
            "UPDATE {} SET access_tokens = $2, generation = $3 WHERE id = $1",
            self.families
        ));
        let insert = self.q(format!(
            "INSERT INTO {} ({REFRESH_COLUMNS}) VALUES ($1, $2, $3, $4, NULL, $5)",
            self.refresh
        ));
        // A family keeps the token just used (its reuse is checked by hash), its successor,
        // and generation 0 (see `GrantStore::rotate_refresh`).
        let forget = self.q(format!(
            "DELETE FROM {} WHERE family = $1 AND id <> $2 AND id <> $3 AND generation <> 0",
            self.refresh
        ));
        let work = async {
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query(lock)
                .bind(new.family.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                return Ok(Ok(false));
            };
            let mut family = match decode_family(&row) {
                Ok(family) => family,
                Err(err) => return Ok(Err(err)),
            };
            if family.revoked_at.is_some() {
                return Ok(Ok(false));
            }
            let spent = sqlx::query(spend)
                .bind(old.as_str())
                .bind(now)
                .bind(new.family.as_str())
                .execute(&mut *tx)
                .await?;
            if spent.rows_affected() != 1 {
                return Ok(Ok(false));
            }
            family.add_access_token(access.0, access.1, now);
            sqlx::query(note)
                .bind(family.id.as_str())
                .bind(access_json(&family.access_tokens))
                .bind(generation(new.generation)?)
                .execute(&mut *tx)
                .await?;
            sqlx::query(insert)
                .bind(new.id.as_str())
                .bind(new.family.as_str())
                .bind(new.hash.as_bytes().as_slice())
                .bind(new.created_at)
                .bind(generation(new.generation)?)
                .execute(&mut *tx)
                .await?;
            sqlx::query(forget)
                .bind(new.family.as_str())
                .bind(old.as_str())
                .bind(new.id.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Ok(true))
        };
        // A transaction dropped without commit (an early return above) rolls back.
        timed(self.timeout, work).await?
    }

    async fn revoke_family(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> Result<Option<GrantFamily>, StoreError> {
        let query = self.q(format!(
            "UPDATE {} SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 \
             RETURNING {FAMILY_COLUMNS}",
            self.families
        ));
        let query = sqlx::query(query).bind(id.as_str()).bind(at);
        let row = timed(self.timeout, query.fetch_optional(&self.pool)).await?;
        row.map(|row| decode_family(&row)).transpose()
    }

    async fn insert_code(&self, code: AuthorizationCodeRecord) -> Result<(), StoreError> {
        let query = self.q(format!(
            "INSERT INTO {} (id, secret_hash, client_id, redirect_uri, code_challenge, owner, \
             scopes, family, created_at, expires_at, used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            self.codes
        ));
        let query = sqlx::query(query)
            .bind(code.id.as_str())
            .bind(code.hash.as_bytes().as_slice())
            .bind(code.client_id.as_str())
            .bind(code.redirect_uri)
            .bind(code.code_challenge)
            .bind(code.owner.as_str())
            .bind(code.scopes.to_string())
            .bind(code.family.as_str())
            .bind(code.created_at)
            .bind(code.expires_at)
            .bind(code.used_at);
        timed(self.timeout, query.execute(&self.pool)).await?;
        Ok(())
    }

    async fn code(&self, id: &TokenId) -> Result<Option<AuthorizationCodeRecord>, StoreError> {
        let query = self.q(format!(
            "SELECT id, secret_hash, client_id, redirect_uri, code_challenge, owner, scopes, \
             family, created_at, expires_at, used_at FROM {} WHERE id = $1",
            self.codes
        ));
        let query = sqlx::query(query).bind(id.as_str());
        let row = timed(self.timeout, query.fetch_optional(&self.pool)).await?;
        row.map(|row| decode_code(&row)).transpose()
    }

    async fn redeem_code(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
        family: GrantFamily,
        first: Option<RefreshTokenRecord>,
    ) -> Result<bool, StoreError> {
        let spend = self.q(format!(
            "UPDATE {} SET used_at = $2 WHERE id = $1 AND used_at IS NULL",
            self.codes
        ));
        let work = async {
            let mut tx = self.pool.begin().await?;
            let spent = sqlx::query(spend)
                .bind(id.as_str())
                .bind(at)
                .execute(&mut *tx)
                .await?;
            if spent.rows_affected() != 1 {
                return Ok(false);
            }
            self.store_family(&mut tx, &family, first.as_ref()).await?;
            tx.commit().await?;
            Ok(true)
        };
        // A transaction dropped without commit (the early return) rolls back.
        timed(self.timeout, work).await
    }

    fn purge(
        &self,
        now: DateTime<Utc>,
        refresh_before: DateTime<Utc>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let query = self.q(format!(
            "WITH dead AS ( \
                 SELECT f.id FROM {families} f WHERE NOT EXISTS ( \
                     SELECT 1 FROM {refresh} r WHERE r.family = f.id AND r.created_at >= $2) \
                 AND NOT EXISTS ( \
                     SELECT 1 FROM jsonb_array_elements(f.access_tokens) a \
                     WHERE (a->>'expires_at')::timestamptz > $1)), \
             gone_codes AS (DELETE FROM {codes} WHERE expires_at <= $1 RETURNING 1), \
             gone_tokens AS (DELETE FROM {refresh} WHERE family IN (SELECT id FROM dead) RETURNING 1), \
             gone_families AS (DELETE FROM {families} WHERE id IN (SELECT id FROM dead) RETURNING 1) \
             SELECT (SELECT count(*) FROM gone_codes) + (SELECT count(*) FROM gone_tokens) \
                  + (SELECT count(*) FROM gone_families)",
            families = self.families,
            refresh = self.refresh,
            codes = self.codes,
        ));
        async move {
            let query = sqlx::query(query).bind(now).bind(refresh_before);
            let row = timed(self.timeout, query.fetch_one(&self.pool)).await?;
            let removed: i64 = row.try_get(0).map_err(sql::map_err)?;
            Ok(usize::try_from(removed).unwrap_or(0))
        }
    }
}
