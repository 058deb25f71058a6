//! Uncached SQL lookups against the bare native driver (issue 17, item 4): the same
//! single-row query through `rusqlite` (SQLite) and `tokio-postgres` (PostgreSQL), through
//! sqlx with and without its ping before each acquire, through the store's `get`, and a whole
//! uncached verification. Native tables and Laravel Sanctum's table, 1,000 tokens each.
//!
//! ```sh
//! cargo bench --bench sql                                   # SQLite only
//! APITOKEN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench sql
//! ```

use std::hint::black_box;
use std::time::Duration;

use apitoken::{
    NewToken, Owner, PostgresStore, SanctumStore, ScopePolicy, ScopeRequirement, SecretHasher,
    SqliteStore, TokenFormat, TokenStore, Verifier,
};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;

mod common;
use common::config;

const TOKENS: usize = 1_000;
/// The row every figure reads: one in the middle of the table.
const PICK: usize = TOKENS / 2;

/// What the native store selects (`src/store/sql/tokens.rs`).
const NATIVE_COLUMNS: &str = "id, secret_hash, name, owner, scopes, metadata, created_at, \
                              last_used_at, expires_at, revoked_at, allowed_ips";
/// What `SanctumStore` selects (`src/store/sql/sanctum/mod.rs`).
const SANCTUM_COLUMNS: &str = "id, tokenable_type, CAST(tokenable_id AS TEXT) AS tokenable_id, \
                               name, token, abilities, last_used_at, expires_at, created_at";

/// A runtime as a service has one: sqlx returns a connection to its pool in a spawned task
/// (with a ping), which runs on a worker thread beside the next lookup.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn need() -> ScopeRequirement {
    ScopeRequirement::all(["vps:read"]).unwrap()
}

/// `TOKENS` tokens issued through `verifier`; the text of the one at `PICK`.
fn issue<S: TokenStore>(rt: &Runtime, verifier: &Verifier<S>) -> String {
    let issuer = verifier.issuer();
    // A Sanctum `tokenable` (type and id), which the native store takes as any owner.
    let owner = Owner::new("App\\Models\\User:1").unwrap();
    let mut picked = None;
    for i in 0..TOKENS {
        let token = rt
            .block_on(
                issuer.issue(
                    NewToken::new(format!("bench-{i:04}"), owner.clone())
                        .scopes(["vps:read", "vps:write"])
                        .unwrap(),
                ),
            )
            .unwrap()
            .token;
        if i == PICK {
            picked = Some(token.expose_secret().to_owned());
        }
    }
    picked.unwrap()
}

fn sanctum_verifier(store: SanctumStore) -> Verifier<SanctumStore> {
    Verifier::builder(store)
        .format(TokenFormat::sanctum())
        .hasher(SecretHasher::sha256())
        .scope_policy(ScopePolicy::sanctum())
        .build()
}

/// Laravel's migration on SQLite (as in `tests/support/stores.rs`).
const LARAVEL_SQLITE: &str = r#"create table "personal_access_tokens" ("id" integer primary key autoincrement not null, "tokenable_type" varchar not null, "tokenable_id" integer not null, "name" text not null, "token" varchar not null, "abilities" text, "last_used_at" datetime, "expires_at" datetime, "created_at" datetime, "updated_at" datetime);
create unique index "personal_access_tokens_token_unique" on "personal_access_tokens" ("token");"#;

/// Reads every column of a row as `rusqlite` values, as a store's decoder must.
fn read_row(row: &rusqlite::Row<'_>, columns: usize) -> usize {
    (0..columns)
        .map(|i| match row.get_ref(i).unwrap() {
            rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => t.len(),
            rusqlite::types::ValueRef::Integer(n) => n as usize,
            _ => 0,
        })
        .sum()
}

fn bench_sqlite(c: &mut Criterion) {
    let rt = runtime();
    let dir = std::env::temp_dir().join(format!("apitoken-bench-sql-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let native_path = dir.join("native.db");
    let laravel_path = dir.join("laravel.db");

    // The native store as `SqliteStore::connect` makes it (WAL, its own pool options).
    let store = rt.block_on(async {
        let store = SqliteStore::connect(&format!("sqlite://{}", native_path.display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    });
    let verifier = Verifier::builder(store.clone()).build();
    let token = issue(&rt, &verifier);
    let id = token.split_once('.').unwrap().0.to_owned();

    // Laravel's table, on a pool with sqlx's defaults (what an application passes in).
    let (sanctum_pool, sanctum) = rt.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&laravel_path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(LARAVEL_SQLITE))
            .execute(&pool)
            .await
            .unwrap();
        (pool.clone(), SanctumStore::sqlite(pool).build())
    });
    let sanctum_verifier = sanctum_verifier(sanctum.clone());
    let sanctum_token = issue(&rt, &sanctum_verifier);
    let sanctum_id: i64 = sanctum_token.split_once('|').unwrap().0.parse().unwrap();

    let native_sql = format!("SELECT {NATIVE_COLUMNS} FROM apitoken_tokens WHERE id = ?1");
    let sanctum_sql = format!("SELECT {SANCTUM_COLUMNS} FROM personal_access_tokens WHERE id = ?1");
    let need = need();
    let mut group = c.benchmark_group("sqlite");

    let native = rusqlite::Connection::open(&native_path).unwrap();
    group.bench_function("native/rusqlite", |b| {
        let mut statement = native.prepare_cached(&native_sql).unwrap();
        b.iter(|| {
            statement
                .query_row([black_box(id.as_str())], |row| Ok(read_row(row, 11)))
                .unwrap()
        })
    });
    let pinged = rt.block_on(sqlx_sqlite_pool(&native_path, true));
    let unpinged = rt.block_on(sqlx_sqlite_pool(&native_path, false));
    for (name, pool) in [("native/sqlx", &pinged), ("native/sqlx_no_ping", &unpinged)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(
                    sqlx::query(sqlx::AssertSqlSafe(native_sql.as_str()))
                        .bind(black_box(id.as_str()))
                        .fetch_optional(pool),
                )
                .unwrap()
                .unwrap()
            })
        });
    }
    let token_id = id.parse().unwrap();
    group.bench_function("native/store_get", |b| {
        b.iter(|| {
            rt.block_on(store.get(black_box(&token_id)))
                .unwrap()
                .unwrap()
        })
    });
    group.bench_function("native/verify_uncached", |b| {
        b.iter(|| {
            rt.block_on(verifier.verify(black_box(&token), &need))
                .unwrap()
        })
    });
    refusals(&mut group, &rt, &verifier, "native", &token, &need);

    let laravel = rusqlite::Connection::open(&laravel_path).unwrap();
    group.bench_function("sanctum/rusqlite", |b| {
        let mut statement = laravel.prepare_cached(&sanctum_sql).unwrap();
        b.iter(|| {
            statement
                .query_row([black_box(sanctum_id)], |row| Ok(read_row(row, 9)))
                .unwrap()
        })
    });
    group.bench_function("sanctum/sqlx", |b| {
        b.iter(|| {
            rt.block_on(
                sqlx::query(sqlx::AssertSqlSafe(sanctum_sql.as_str()))
                    .bind(black_box(sanctum_id))
                    .fetch_optional(&sanctum_pool),
            )
            .unwrap()
            .unwrap()
        })
    });
    let sanctum_token_id = apitoken::TokenId::from_u64(sanctum_id as u64);
    group.bench_function("sanctum/store_get", |b| {
        b.iter(|| {
            rt.block_on(sanctum.get(black_box(&sanctum_token_id)))
                .unwrap()
                .unwrap()
        })
    });
    group.bench_function("sanctum/verify_uncached", |b| {
        b.iter(|| {
            rt.block_on(sanctum_verifier.verify(black_box(&sanctum_token), &need))
                .unwrap()
        })
    });
    refusals(
        &mut group,
        &rt,
        &sanctum_verifier,
        "sanctum",
        &sanctum_token,
        &need,
    );
    group.finish();
    drop((native, laravel));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Uncached refusals beside `token`'s verification (item 3): an id no row has, and `token`'s
/// id with another secret. Each is one query, as a hit is; the figures show it costs the same.
fn refusals<S: TokenStore>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    verifier: &Verifier<S>,
    table: &str,
    token: &str,
    need: &ScopeRequirement,
) {
    let format = match table {
        "sanctum" => TokenFormat::sanctum(),
        _ => TokenFormat::canonical(),
    };
    let id = format.parse(token).unwrap().id().copied().unwrap();
    let other =
        |id: Option<&apitoken::TokenId>| format.generate(id).unwrap().expose_secret().to_owned();
    // Canonical ids are text, Sanctum's a row number: an id past every row of either table,
    // and for text ids one between two rows (next to `token`'s). Sanctum's ids are dense
    // (nothing between them until rows are deleted).
    let mut inputs = vec![("verify_wrong_secret_uncached", other(Some(&id)))];
    if table == "sanctum" {
        let past = apitoken::TokenId::from_u64(9_000_000_000);
        inputs.push(("verify_unknown_uncached", other(Some(&past))));
    } else {
        let past = "zz0000000000".parse().unwrap();
        // The same length (a canonical id has one), the last character changed.
        let text = id.as_str();
        let last = if text.ends_with('0') { '1' } else { '0' };
        let between = format!("{}{last}", &text[..text.len() - 1])
            .parse()
            .unwrap();
        inputs.push(("verify_unknown_uncached", other(Some(&past))));
        inputs.push(("verify_unknown_between_uncached", other(Some(&between))));
    }
    for (name, input) in inputs {
        group.bench_function(format!("{table}/{name}"), |b| {
            b.iter(|| {
                rt.block_on(verifier.verify(black_box(&input), need))
                    .unwrap_err()
            })
        });
    }
}

async fn sqlx_sqlite_pool(path: &std::path::Path, ping: bool) -> sqlx::SqlitePool {
    sqlx::sqlite::SqlitePoolOptions::new()
        .test_before_acquire(ping)
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(path))
        .await
        .unwrap()
}

fn bench_postgres(c: &mut Criterion) {
    let Ok(url) = std::env::var("APITOKEN_TEST_POSTGRES_URL") else {
        eprintln!("sql postgres: skipped (set APITOKEN_TEST_POSTGRES_URL)");
        return;
    };
    let rt = runtime();
    let schema = format!("apitoken_bench_sql_{}", std::process::id());
    let store = rt.block_on(async {
        let pool = PostgresStore::connect(&url).await.unwrap().pool().clone();
        let store = PostgresStore::builder(pool)
            .schema(&schema)
            .unwrap()
            .build();
        store.migrate().await.unwrap();
        store
    });
    let verifier = Verifier::builder(store.clone()).build();
    let token = issue(&rt, &verifier);
    let id = token.split_once('.').unwrap().0.to_owned();
    let native_sql =
        format!("SELECT {NATIVE_COLUMNS} FROM \"{schema}\".apitoken_tokens WHERE id = $1");

    let (client, connection) = rt
        .block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls))
        .unwrap();
    let driver = rt.spawn(connection);
    let statement = rt.block_on(client.prepare(&native_sql)).unwrap();
    let pinged = rt.block_on(sqlx_pg_pool(&url, true));
    let unpinged = rt.block_on(sqlx_pg_pool(&url, false));
    let need = need();
    let token_id = id.parse().unwrap();

    let mut group = c.benchmark_group("postgres_sql");
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("native/tokio_postgres", |b| {
        b.iter(|| {
            rt.block_on(client.query_opt(&statement, &[&black_box(id.as_str())]))
                .unwrap()
                .unwrap()
        })
    });
    for (name, pool) in [("native/sqlx", &pinged), ("native/sqlx_no_ping", &unpinged)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(
                    sqlx::query(sqlx::AssertSqlSafe(native_sql.as_str()))
                        .bind(black_box(id.as_str()))
                        .fetch_optional(pool),
                )
                .unwrap()
                .unwrap()
            })
        });
    }
    group.bench_function("native/store_get", |b| {
        b.iter(|| {
            rt.block_on(store.get(black_box(&token_id)))
                .unwrap()
                .unwrap()
        })
    });
    group.bench_function("native/verify_uncached", |b| {
        b.iter(|| {
            rt.block_on(verifier.verify(black_box(&token), &need))
                .unwrap()
        })
    });
    refusals(&mut group, &rt, &verifier, "native", &token, &need);
    group.finish();
    rt.block_on(async {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(&unpinged)
        .await
        .unwrap();
    });
    drop(client);
    let _ = rt.block_on(driver);
}

async fn sqlx_pg_pool(url: &str, ping: bool) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .test_before_acquire(ping)
        .connect(url)
        .await
        .unwrap()
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_sqlite, bench_postgres
}
criterion_main!(benches);
