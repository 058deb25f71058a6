//! A Rust service pointed at a Laravel app's database verifies the tokens that app issued.
//!
//! Tokens here are made the way `HasApiTokens::createToken` makes them (the generator in
//! `support/stores.rs` is written from Sanctum's format, not from this crate) and inserted
//! with the SQL Laravel runs, on SQLite always and on PostgreSQL when
//! `APITOKEN_TEST_POSTGRES_URL` is set.

#[path = "support/stores.rs"]
mod stores;

use apitoken::{
    AuthErrorKind, RejectReason, SanctumStore, ScopePolicy, ScopeRequirement, SecretHasher,
    TokenFormat, TokenStore, Verifier,
};
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{AssertSqlSafe, Database, Executor};

/// One row as Laravel writes it: `createToken($name, $abilities, $expiresAt)`.
struct Row<'a> {
    user: i64,
    name: &'a str,
    abilities: &'a str,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    prefix: &'a str,
}

impl Default for Row<'_> {
    fn default() -> Self {
        Self {
            user: 1,
            name: "api",
            abilities: r#"["*"]"#,
            expires_at: None,
            created_at: Utc::now(),
            prefix: "",
        }
    }
}

/// Inserts the row and returns `"{id}|{plainTextToken}"`, as Sanctum returns it.
async fn create_token<'c, DB, E>(db: E, table: &str, row: Row<'_>) -> String
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB> + sqlx::Decode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let (plain, hash) = stores::sanctum_plain_text(row.prefix);
    // Laravel's query builder sends dates as 'Y-m-d H:i:s' strings: PostgreSQL casts them to
    // its timestamp columns, SQLite stores the text as it is.
    let time = |n: u8| {
        if DB::NAME == "PostgreSQL" {
            format!("CAST(${n} AS timestamp)")
        } else {
            format!("${n}")
        }
    };
    let (expires, created) = (time(6), time(7));
    let sql = format!(
        "INSERT INTO {table} (tokenable_type, tokenable_id, name, token, abilities, expires_at, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, {expires}, {created}, {created}) \
         RETURNING id"
    );
    let id: (i64,) = sqlx::query_as(AssertSqlSafe(sql))
        .bind("App\\Models\\User".to_owned())
        .bind(row.user)
        .bind(row.name.to_owned())
        .bind(hash)
        .bind(row.abilities.to_owned())
        .bind(row.expires_at.map(stores::laravel_time))
        .bind(stores::laravel_time(row.created_at))
        .fetch_one(db)
        .await
        .expect("insert like Laravel");
    format!("{}|{plain}", id.0)
}

fn verifier(store: SanctumStore, format: TokenFormat) -> Verifier<SanctumStore> {
    Verifier::builder(store)
        .format(format)
        .hasher(SecretHasher::sha256())
        .scope_policy(ScopePolicy::sanctum())
        .build()
}

fn need(scope: &str) -> ScopeRequirement {
    ScopeRequirement::all([scope]).unwrap()
}

macro_rules! sanctum_checks {
    ($pool:expr, $table:expr, $store:expr, $expiring:expr) => {{
        let pool = $pool;
        let table: &str = $table;
        let store: SanctumStore = $store;
        let expiring: SanctumStore = $expiring;
        let v = verifier(store.clone(), TokenFormat::sanctum());

        // A default token (`['*']`) can do everything; the principal is the tokenable.
        let any = create_token(&pool, table, Row::default()).await;
        let p = v
            .verify(&any, &need("vps:write"))
            .await
            .expect("Laravel's token verifies");
        assert_eq!(p.owner().as_str(), "App\\Models\\User:1");
        assert_eq!(p.name(), "api");

        // Abilities are honoured exactly.
        let read_only = create_token(
            &pool,
            table,
            Row {
                abilities: r#"["vps:read","edit posts"]"#,
                user: 2,
                ..Row::default()
            },
        )
        .await;
        assert!(v.verify(&read_only, &need("vps:read")).await.is_ok());
        let err = v.verify(&read_only, &need("vps:write")).await.unwrap_err();
        assert_eq!(err.kind(), AuthErrorKind::InsufficientScope);

        // A token without `id|` is found by its hash, as Sanctum does.
        let (_, bare) = any.split_once('|').unwrap();
        assert!(v.verify(bare, &need("vps:read")).await.is_ok());

        // A wrong checksum never reaches the database.
        let mut forged = any.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        let err = v.verify(&forged, &need("vps:read")).await.unwrap_err();
        assert_eq!(err.reason(), Some(RejectReason::BadChecksum));

        // The right id with another token's secret: refused.
        let (id, _) = any.split_once('|').unwrap();
        let (_, other_secret) = read_only.split_once('|').unwrap();
        let err = v
            .verify(&format!("{id}|{other_secret}"), &need("vps:read"))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), Some(RejectReason::WrongSecret));

        // Its own expires_at, at the second Laravel stores.
        let expired = create_token(
            &pool,
            table,
            Row {
                expires_at: Some(Utc::now() - TimeDelta::seconds(5)),
                ..Row::default()
            },
        )
        .await;
        let err = v.verify(&expired, &need("vps:read")).await.unwrap_err();
        assert_eq!(err.reason(), Some(RejectReason::Expired));

        // Sanctum's global `expiration` (minutes from created_at).
        let old = create_token(
            &pool,
            table,
            Row {
                created_at: Utc::now() - TimeDelta::minutes(61),
                ..Row::default()
            },
        )
        .await;
        assert!(v.verify(&old, &need("vps:read")).await.is_ok());
        let strict = verifier(expiring, TokenFormat::sanctum());
        let err = strict.verify(&old, &need("vps:read")).await.unwrap_err();
        assert_eq!(err.reason(), Some(RejectReason::Expired));
        assert!(strict.verify(&any, &need("vps:read")).await.is_ok());

        // Deleted in Laravel (`$token->delete()`): refused at once.
        let doomed = create_token(&pool, table, Row::default()).await;
        assert!(v.verify(&doomed, &need("vps:read")).await.is_ok());
        let (doomed_id, _) = doomed.split_once('|').unwrap();
        let delete = format!(
            "DELETE FROM {table} WHERE id = {}",
            doomed_id.parse::<i64>().unwrap()
        );
        sqlx::raw_sql(AssertSqlSafe(delete))
            .execute(&pool)
            .await
            .unwrap();
        let err = v.verify(&doomed, &need("vps:read")).await.unwrap_err();
        assert_eq!(err.reason(), Some(RejectReason::UnknownToken));

        // Revoking from Rust deletes the row, as Sanctum does.
        assert!(v.store().revoke(p.token_id(), v.now()).await.unwrap());
        assert!(v.verify(&any, &need("vps:read")).await.is_err());

        // Sanctum's token_prefix, after the `|`; tokens from before it was set still work.
        let prefixed = create_token(
            &pool,
            table,
            Row {
                prefix: "acme_",
                ..Row::default()
            },
        )
        .await;
        assert!(prefixed.contains("|acme_"));
        let pv = verifier(
            store.clone(),
            TokenFormat::sanctum_with_prefix("acme_").unwrap(),
        );
        assert!(pv.verify(&prefixed, &need("vps:read")).await.is_ok());
        assert!(pv.verify(&read_only, &need("vps:read")).await.is_ok());

        // Last use lands in Laravel's column, to the second, forward-only.
        let used = create_token(
            &pool,
            table,
            Row {
                user: 3,
                ..Row::default()
            },
        )
        .await;
        let used_id: i64 = used.split_once('|').unwrap().0.parse().unwrap();
        let when = Utc::now() - TimeDelta::seconds(30);
        let batch = [(apitoken::TokenId::from_u64(used_id as u64), when)];
        v.store().record_last_used_batch(&batch).await.unwrap();
        let earlier = [(
            apitoken::TokenId::from_u64(used_id as u64),
            when - TimeDelta::hours(1),
        )];
        v.store().record_last_used_batch(&earlier).await.unwrap();
        let record = v
            .store()
            .get(&apitoken::TokenId::from_u64(used_id as u64))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            record.record.last_used_at.map(|t| t.timestamp()),
            Some(when.timestamp())
        );

        // Tokens this crate issues into the table are ones Laravel can read back: the row's
        // `token` is sha256 of the text after `|`.
        let issued = v
            .issuer()
            .issue(
                apitoken::NewToken::new(
                    "from rust",
                    apitoken::Owner::new("App\\Models\\User:4").unwrap(),
                )
                .scopes(["vps:read"])
                .unwrap(),
            )
            .await
            .expect("issue into Sanctum's table");
        let text = issued.token.expose_secret().to_owned();
        let (id_text, plain) = text.split_once('|').unwrap();
        let sql = format!(
            "SELECT token, abilities, CAST(tokenable_id AS TEXT) FROM {table} WHERE id = {}",
            id_text.parse::<i64>().unwrap()
        );
        let (hash, abilities, user): (String, String, String) = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_one(&pool)
            .await
            .unwrap();
        use sha2::Digest;
        assert_eq!(hash, stores::hex(&sha2::Sha256::digest(plain.as_bytes())));
        assert_eq!(abilities, r#"["vps:read"]"#);
        assert_eq!(user, "4");
        assert!(v.verify(&text, &need("vps:read")).await.is_ok());
        // And the next token Laravel creates does not collide with it.
        let after = create_token(&pool, table, Row::default()).await;
        assert!(v.verify(&after, &need("vps:read")).await.is_ok());
    }};
}

#[tokio::test]
async fn laravel_tokens_verify_on_sqlite() {
    let s = stores::sanctum_sqlite().await;
    let expiring = SanctumStore::sqlite(s.pool.clone())
        .expiration(TimeDelta::minutes(60))
        .build();
    sanctum_checks!(s.pool, &s.table, s.store, expiring);
}

#[tokio::test]
async fn laravel_tokens_verify_on_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let s = stores::sanctum_postgres(&url).await;
    let expiring = SanctumStore::postgres(s.pool.clone())
        .table(&s.table)
        .unwrap()
        .expiration(TimeDelta::minutes(60))
        .build();
    sanctum_checks!(s.pool, &s.table, s.store, expiring);
}

/// Laravel's table after a migration to `timestampsTz()`: every check passes the same.
#[tokio::test]
async fn laravel_tokens_verify_on_postgres_timestamptz() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let s = stores::sanctum_postgres(&url).await;
    let table = &s.table;
    let alter = format!(
        "alter table \"{table}\" alter column \"last_used_at\" type timestamp(0) with time zone, \
         alter column \"expires_at\" type timestamp(0) with time zone, \
         alter column \"created_at\" type timestamp(0) with time zone, \
         alter column \"updated_at\" type timestamp(0) with time zone"
    );
    sqlx::raw_sql(AssertSqlSafe(alter))
        .execute(&s.pool)
        .await
        .unwrap();
    let expiring = SanctumStore::postgres(s.pool.clone())
        .table(&s.table)
        .unwrap()
        .expiration(TimeDelta::minutes(60))
        .build();
    sanctum_checks!(s.pool, &s.table, s.store, expiring);
}

#[tokio::test]
async fn what_sanctum_cannot_store_is_refused_not_dropped() {
    let s = stores::sanctum_sqlite().await;
    let v = verifier(s.store, TokenFormat::sanctum());
    let owner = apitoken::Owner::new("App\\Models\\User:9").unwrap();
    let restricted = apitoken::NewToken::new("office", owner.clone())
        .allowed_ips(["203.0.113.0/24".parse().unwrap()]);
    let err = v.issuer().issue(restricted).await.unwrap_err();
    assert!(
        matches!(err, apitoken::IssueError::Store(ref e) if e.kind() == apitoken::StoreErrorKind::Unsupported),
        "{err:?}"
    );
    let mut meta = apitoken::Metadata::new();
    meta.insert("env".into(), "prod".into());
    let with_meta = apitoken::NewToken::new("m", owner).metadata(meta);
    assert!(v.issuer().issue(with_meta).await.is_err());
}
