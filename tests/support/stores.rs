//! Every store the crate ships, made fresh and isolated for one test, plus a Sanctum token
//! generator written from Sanctum's format (not from this crate's code).

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use apitoken::{MemoryStore, PostgresStore, SanctumStore, SqliteStore};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

pub const POSTGRES_URL_VAR: &str = "APITOKEN_TEST_POSTGRES_URL";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other test (nor another run of this one) uses.
pub fn unique_name(stem: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = Utc::now().timestamp_subsec_nanos();
    format!("{stem}_{}_{n}_{nanos}", std::process::id())
}

/// The PostgreSQL URL, or `None` after printing why the test is skipped.
pub fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "skipped: set {POSTGRES_URL_VAR} (for example postgres://postgres@127.0.0.1:5432/test)"
            );
            None
        }
    }
}

pub fn memory() -> MemoryStore {
    MemoryStore::new()
}

pub async fn sqlite() -> SqliteStore {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name("apitoken")));
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open SQLite");
    store.migrate().await.expect("migrate SQLite");
    store
}

/// A `PostgresStore` in a schema of its own. Fails loudly if the URL is set but the database
/// cannot be reached.
pub async fn postgres(url: &str) -> PostgresStore {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR} is set but PostgreSQL is unreachable: {e}"));
    postgres_on(pool, &unique_name("t")).await
}

pub async fn postgres_on(pool: sqlx::PgPool, schema: &str) -> PostgresStore {
    let store = PostgresStore::builder(pool)
        .schema(schema)
        .expect("valid schema name")
        .build();
    store.migrate().await.expect("migrate PostgreSQL");
    store
}

/// Laravel's `personal_access_tokens` migration as Laravel runs it on PostgreSQL (Sanctum 4).
pub fn laravel_postgres_ddl(table: &str) -> String {
    format!(
        r#"create table "{table}" ("id" bigserial not null primary key, "tokenable_type" varchar(255) not null, "tokenable_id" bigint not null, "name" text not null, "token" varchar(64) not null, "abilities" text null, "last_used_at" timestamp(0) without time zone null, "expires_at" timestamp(0) without time zone null, "created_at" timestamp(0) without time zone null, "updated_at" timestamp(0) without time zone null);
create index "{table}_tokenable_type_tokenable_id_index" on "{table}" ("tokenable_type", "tokenable_id");
alter table "{table}" add constraint "{table}_token_unique" unique ("token");
create index "{table}_expires_at_index" on "{table}" ("expires_at");"#
    )
}

/// The same migration as Laravel runs it on SQLite.
pub fn laravel_sqlite_ddl(table: &str) -> String {
    format!(
        r#"create table "{table}" ("id" integer primary key autoincrement not null, "tokenable_type" varchar not null, "tokenable_id" integer not null, "name" text not null, "token" varchar not null, "abilities" text, "last_used_at" datetime, "expires_at" datetime, "created_at" datetime, "updated_at" datetime);
create index "{table}_tokenable_type_tokenable_id_index" on "{table}" ("tokenable_type", "tokenable_id");
create unique index "{table}_token_unique" on "{table}" ("token");
create index "{table}_expires_at_index" on "{table}" ("expires_at");"#
    )
}

pub struct Sanctum<P> {
    pub store: SanctumStore,
    pub pool: P,
    pub table: String,
}

pub async fn sanctum_postgres(url: &str) -> Sanctum<sqlx::PgPool> {
    let pool = sqlx::PgPool::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR} is set but PostgreSQL is unreachable: {e}"));
    let table = unique_name("pat");
    sqlx::raw_sql(sqlx::AssertSqlSafe(laravel_postgres_ddl(&table)))
        .execute(&pool)
        .await
        .expect("create Laravel's table");
    let store = SanctumStore::postgres(pool.clone())
        .table(&table)
        .expect("valid table")
        .build();
    Sanctum { store, pool, table }
}

pub async fn sanctum_sqlite() -> Sanctum<sqlx::SqlitePool> {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name("laravel")));
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options)
        .await
        .expect("open SQLite");
    let table = "personal_access_tokens".to_owned();
    sqlx::raw_sql(sqlx::AssertSqlSafe(laravel_sqlite_ddl(&table)))
        .execute(&pool)
        .await
        .expect("create Laravel's table");
    let store = SanctumStore::sqlite(pool.clone()).build();
    Sanctum { store, pool, table }
}

/// `Str::random(40)`: letters and digits.
pub fn laravel_random_40() -> String {
    use rand_like::fill;
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 40];
    fill(&mut bytes);
    bytes
        .iter()
        .map(|b| ALNUM[usize::from(*b) % ALNUM.len()] as char)
        .collect()
}

/// What `HasApiTokens::createToken` stores and returns, written from Sanctum's source:
/// `plainTextToken = prefix . Str::random(40) . hash('crc32b', entropy)`, the row's `token` is
/// `hash('sha256', plainTextToken)`, and the caller gets `"{id}|{plainTextToken}"`.
pub struct LaravelToken {
    pub text: String,
    pub id: i64,
}

pub fn sanctum_plain_text(prefix: &str) -> (String, String) {
    let entropy = laravel_random_40();
    let crc = format!("{:08x}", crc32fast::hash(entropy.as_bytes()));
    let plain = format!("{prefix}{entropy}{crc}");
    let hash = hex(&Sha256::digest(plain.as_bytes()));
    (plain, hash)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn laravel_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Tiny OS-randomness helper so the generator does not borrow the crate's own.
mod rand_like {
    pub fn fill(buf: &mut [u8]) {
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(buf))
            .expect("read /dev/urandom");
    }
}

/// An error and its sources, for asserting on what an operator would read.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(next) = source {
        out.push_str(": ");
        out.push_str(&next.to_string());
        source = next.source();
    }
    out
}
