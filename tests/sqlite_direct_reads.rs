//! The SQLite stores' lookups on the calling thread (`src/store/sql/sqlite_reads.rs`): once a
//! lookup has reached the file through the pool, `get` and `find_by_hash` answer without a
//! pool connection; they see every write as soon as it commits, from this store or another;
//! an in-memory database never reads a file; a lock sends the lookup back to the pool, which
//! answers within its deadline.
//!
//! The pool here has one connection, held by the test where it matters: a lookup that needs
//! the pool then fails with `Unavailable` at the acquire timeout, and one that answers did not
//! use it.

#[path = "support/stores.rs"]
mod stores;

use std::path::{Path, PathBuf};
use std::time::Duration;

use apitoken::{
    NewToken, Owner, SanctumStore, ScopePolicy, ScopeRequirement, SecretHasher, SqliteStore,
    StoreErrorKind, TokenFormat, TokenStore, Verifier,
};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions};

const ACQUIRE: Duration = Duration::from_millis(300);

fn file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}.db", stores::unique_name(name)))
}

/// A pool of one connection on `options`, giving up on an acquire after [`ACQUIRE`].
async fn one_connection(options: SqliteConnectOptions) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE)
        .connect_with(options)
        .await
        .unwrap()
}

async fn native(path: &Path) -> (SqlitePool, SqliteStore) {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let pool = one_connection(options).await;
    let store = SqliteStore::builder(pool.clone())
        .query_timeout(Duration::from_secs(2))
        .build();
    store.migrate().await.unwrap();
    (pool, store)
}

fn need() -> ScopeRequirement {
    ScopeRequirement::all(["vps:read"]).unwrap()
}

fn new_token(name: &str) -> NewToken {
    NewToken::new(name, Owner::new("App\\Models\\User:1").unwrap())
        .scopes(["vps:read"])
        .unwrap()
}

#[tokio::test]
async fn a_native_lookup_answers_without_a_pool_connection_once_the_file_is_known() {
    let path = file("direct-native");
    let (pool, store) = native(&path).await;
    let verifier = Verifier::builder(store.clone()).build();
    let issued = verifier.issuer().issue(new_token("a")).await.unwrap();
    let token = issued.token.expose_secret().to_owned();
    let hash = store
        .get(&issued.record.id)
        .await
        .unwrap()
        .expect("the pool's lookup finds it")
        .hash;

    let held = pool.acquire().await.unwrap();
    // By id, by hash, and a verification: each answered with the pool's one connection held.
    let by_id = store.get(&issued.record.id).await.unwrap().unwrap();
    assert_eq!(by_id.record.name, "a");
    let by_hash = store.find_by_hash(&hash).await.unwrap().unwrap();
    assert_eq!(by_hash.record.id, issued.record.id);
    let principal = verifier.verify(&token, &need()).await.unwrap();
    assert_eq!(principal.token_id(), &issued.record.id);
    // A write still needs the pool: it is the only thing held up.
    let err = store
        .revoke(&issued.record.id, verifier.now())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    drop(held);

    // Once the pool is free, the revocation commits and the next direct lookup sees it.
    assert!(
        store
            .revoke(&issued.record.id, verifier.now())
            .await
            .unwrap()
    );
    let held = pool.acquire().await.unwrap();
    let after = store.get(&issued.record.id).await.unwrap().unwrap();
    assert!(after.record.revoked_at.is_some());
    drop(held);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_write_by_another_store_on_the_file_is_seen_at_once() {
    let path = file("direct-two-stores");
    let (_, reader) = native(&path).await;
    let writer = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let verifier = Verifier::builder(reader.clone()).build();
    let issued = Verifier::builder(writer.clone())
        .build()
        .issuer()
        .issue(new_token("b"))
        .await
        .unwrap();
    let token = issued.token.expose_secret().to_owned();
    verifier.verify(&token, &need()).await.unwrap();
    verifier.verify(&token, &need()).await.unwrap();

    assert!(
        writer
            .revoke(&issued.record.id, verifier.now())
            .await
            .unwrap()
    );
    let refused = verifier.verify(&token, &need()).await.unwrap_err();
    assert_eq!(refused.kind(), apitoken::AuthErrorKind::InvalidToken);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn an_in_memory_database_never_reads_the_file_its_name_names() {
    // A file on disk holding a token, and an in-memory database with the same name.
    let path = file("direct-memory-name");
    let (_, on_disk) = native(&path).await;
    let issued = Verifier::builder(on_disk.clone())
        .build()
        .issuer()
        .issue(new_token("on disk"))
        .await
        .unwrap();
    let options = SqliteConnectOptions::new().filename(&path).in_memory(true);
    let pool = one_connection(options).await;
    let memory = SqliteStore::builder(pool.clone()).build();
    memory.migrate().await.unwrap();
    for _ in 0..3 {
        assert!(memory.get(&issued.record.id).await.unwrap().is_none());
    }
    // Every lookup goes through the pool: with its connection held, none answers.
    let held = pool.acquire().await.unwrap();
    let err = memory.get(&issued.record.id).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    drop(held);
    let _ = std::fs::remove_file(&path);
}

/// A connection that holds the file's lock until dropped: `locking_mode = EXCLUSIVE` and a
/// write, so no other connection reads, whatever the journal mode.
async fn lock_out_readers(path: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new().filename(path);
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql(
        "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; \
         UPDATE apitoken_sequence SET value = value; COMMIT;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn
}

#[tokio::test]
async fn a_lock_sends_the_lookup_to_the_pool_which_answers_within_its_deadline() {
    let path = file("direct-locked");
    // The default journal mode (rollback), a busy timeout shorter than the query deadline.
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .busy_timeout(Duration::from_millis(400));
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let store = SqliteStore::builder(pool)
        .query_timeout(Duration::from_secs(2))
        .build();
    store.migrate().await.unwrap();
    let verifier = Verifier::builder(store.clone()).build();
    let issued = verifier.issuer().issue(new_token("c")).await.unwrap();
    let token = issued.token.expose_secret().to_owned();
    verifier.verify(&token, &need()).await.unwrap();

    let lock = lock_out_readers(&path).await;
    let started = std::time::Instant::now();
    let err = verifier.verify(&token, &need()).await.unwrap_err();
    assert_eq!(err.kind(), apitoken::AuthErrorKind::StoreUnavailable);
    // The pool's busy timeout, not the direct read's, decided: it waited, and not forever.
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    drop(lock);

    verifier.verify(&token, &need()).await.unwrap();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_sanctum_lookup_answers_without_a_pool_connection_once_the_file_is_known() {
    let path = file("direct-sanctum");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = one_connection(options).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(stores::laravel_sqlite_ddl(
        "personal_access_tokens",
    )))
    .execute(&pool)
    .await
    .unwrap();
    let store = SanctumStore::sqlite(pool.clone())
        .query_timeout(Duration::from_secs(2))
        .build();
    let verifier = Verifier::builder(store.clone())
        .format(TokenFormat::sanctum())
        .hasher(SecretHasher::sha256())
        .scope_policy(ScopePolicy::sanctum())
        .build();
    let issued = verifier.issuer().issue(new_token("d")).await.unwrap();
    let token = issued.token.expose_secret().to_owned();
    let stored = store.get(&issued.record.id).await.unwrap().unwrap();
    // A time Laravel wrote as text with an offset, read by the direct path as by the pool's.
    sqlx::query("UPDATE personal_access_tokens SET last_used_at = '2026-01-02 10:00:00+02:00'")
        .execute(&pool)
        .await
        .unwrap();

    let held = pool.acquire().await.unwrap();
    let by_id = store.get(&issued.record.id).await.unwrap().unwrap();
    assert_eq!(by_id.record.name, "d");
    assert_eq!(
        by_id.record.last_used_at.unwrap().to_rfc3339(),
        "2026-01-02T08:00:00+00:00"
    );
    let by_hash = store.find_by_hash(&stored.hash).await.unwrap().unwrap();
    assert_eq!(by_hash.record.id, issued.record.id);
    verifier.verify(&token, &need()).await.unwrap();
    drop(held);
    let _ = std::fs::remove_file(&path);
}
