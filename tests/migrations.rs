//! Schema versions and migrations of the SQL stores: a current schema is never touched (no
//! DDL, no lock), an old one is upgraded in place with its rows, an unknown one is refused,
//! an upgrade waits for a table lock at most its `lock_timeout`, and the token and grant
//! stores migrate one schema together without colliding.

#[path = "support/stores.rs"]
mod stores;

use std::time::{Duration, Instant};

use apitoken::oauth::PostgresGrantStore;
use apitoken::{
    NewToken, Owner, PostgresStore, SqliteStore, StoreErrorKind, TokenId, TokenStore, Verifier,
};
use sqlx::AssertSqlSafe;
use stores::{postgres_url, unique_name};

/// The token table as the first release made it (schema version 1, which recorded no
/// version): no `allowed_ips`. Taken from that release's `migrate`.
fn first_release_postgres(schema: &str) -> String {
    format!(
        "CREATE SCHEMA {schema}; \
         CREATE TABLE {schema}.apitoken_tokens (\
             id TEXT COLLATE \"C\" PRIMARY KEY, \
             secret_hash BYTEA NOT NULL UNIQUE CHECK (octet_length(secret_hash) = 32), \
             name TEXT NOT NULL, \
             owner TEXT COLLATE \"C\" NOT NULL, \
             scopes TEXT NOT NULL DEFAULT '', \
             metadata JSONB NOT NULL DEFAULT '{{}}', \
             created_at TIMESTAMPTZ NOT NULL, \
             last_used_at TIMESTAMPTZ, \
             expires_at TIMESTAMPTZ, \
             revoked_at TIMESTAMPTZ); \
         CREATE INDEX IF NOT EXISTS apitoken_tokens_owner_idx ON {schema}.apitoken_tokens (owner, created_at); \
         CREATE SEQUENCE IF NOT EXISTS {schema}.apitoken_token_ids; \
         INSERT INTO {schema}.apitoken_tokens (id, secret_hash, name, owner, scopes, created_at) \
             VALUES ('old1', '\\x{}', 'from the first release', 'acct-1', 'db:read', now());",
        "ab".repeat(32)
    )
}

async fn pool(url: &str, connections: u32) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await
        .expect("APITOKEN_TEST_POSTGRES_URL is set but PostgreSQL is unreachable")
}

async fn exec(pool: &sqlx::PgPool, text: String) {
    sqlx::raw_sql(AssertSqlSafe(text))
        .execute(pool)
        .await
        .expect("setup SQL");
}

fn store_in(pool: &sqlx::PgPool, schema: &str) -> PostgresStore {
    PostgresStore::builder(pool.clone())
        .schema(schema)
        .unwrap()
        .build()
}

async fn recorded_version(pool: &sqlx::PgPool, schema: &str, component: &str) -> Option<i64> {
    let table = format!("{schema}.apitoken_schema_versions");
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(pool)
        .await
        .unwrap();
    if !exists {
        return None;
    }
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM {schema}.apitoken_schema_versions WHERE component = $1"
    )))
    .bind(component)
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn issue_and_verify<S: TokenStore + Clone + 'static>(store: S) {
    let verifier = Verifier::builder(store).disable_last_used().build();
    let issued = verifier
        .issuer()
        .issue(NewToken::new("ci", Owner::new("acct-9").unwrap()))
        .await
        .expect("issue");
    let principal = verifier
        .verify(
            issued.token.expose_secret(),
            &apitoken::ScopeRequirement::all::<[&str; 0], &str>([]).unwrap(),
        )
        .await
        .expect("verify");
    assert_eq!(principal.owner().as_str(), "acct-9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_upgrades_the_first_released_schema_in_place() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 4).await;
    let schema = unique_name("m");
    exec(&pool, first_release_postgres(&schema)).await;
    let store = store_in(&pool, &schema);
    assert_eq!(
        store.check_schema().await.unwrap_err().kind(),
        StoreErrorKind::Schema,
        "an unversioned table is not current"
    );
    store.migrate().await.expect("upgrade");
    assert_eq!(recorded_version(&pool, &schema, "tokens").await, Some(2));
    store.check_schema().await.expect("current now");
    // The old row reads back, with no allowlist.
    let old = store.get(&"old1".parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(old.record.name, "from the first release");
    assert!(old.record.allowed_ips.is_empty());
    issue_and_verify(store.clone()).await;
    // Again: nothing to do.
    store.migrate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_current_schema_is_not_touched_even_behind_an_open_reader() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 4).await;
    let schema = unique_name("m");
    let store = store_in(&pool, &schema);
    store.migrate().await.unwrap();
    // A report (or pg_dump) holds a read lock on the table.
    let mut reader = pool.begin().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.apitoken_tokens"
    )))
    .execute(&mut *reader)
    .await
    .unwrap();
    let started = Instant::now();
    let again = tokio::time::timeout(Duration::from_secs(5), store.migrate()).await;
    assert!(matches!(again, Ok(Ok(()))), "{again:?}");
    // DDL here would have queued behind the reader until it ended.
    assert!(started.elapsed() < Duration::from_secs(2));
    issue_and_verify(store.clone()).await;
    reader.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_upgrade_behind_a_reader_gives_up_at_its_lock_timeout_and_lookups_go_on() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 6).await;
    let schema = unique_name("m");
    exec(&pool, first_release_postgres(&schema)).await;
    let mut reader = pool.begin().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.apitoken_tokens"
    )))
    .execute(&mut *reader)
    .await
    .unwrap();
    let store = PostgresStore::builder(pool.clone())
        .schema(&schema)
        .unwrap()
        .migration_lock_timeout(Duration::from_millis(300))
        .build();
    let migrating = {
        let store = store.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (store.migrate().await, started.elapsed())
        })
    };
    // Lookups made meanwhile do not wait for the reader (nor for long behind the migration).
    let id: TokenId = "old1".parse().unwrap();
    for _ in 0..5 {
        let started = Instant::now();
        let found = sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
            "SELECT name FROM {schema}.apitoken_tokens WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(found, "from the first release");
        assert!(started.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (result, took) = migrating.await.unwrap();
    let err = result.expect_err("the reader holds the table");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Nothing half-done: still version 1, and the upgrade succeeds once the reader is gone.
    assert!(
        sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NULL")
            .bind(format!("{schema}.apitoken_schema_versions"))
            .fetch_one(&pool)
            .await
            .unwrap()
    );
    reader.rollback().await.unwrap();
    store
        .migrate()
        .await
        .expect("upgrade once the reader is gone");
    assert_eq!(recorded_version(&pool, &schema, "tokens").await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_newer_version_and_a_foreign_table_changing_nothing() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 4).await;
    // A newer release migrated this schema.
    let schema = unique_name("m");
    let store = store_in(&pool, &schema);
    store.migrate().await.unwrap();
    exec(
        &pool,
        format!("UPDATE {schema}.apitoken_schema_versions SET version = 99"),
    )
    .await;
    let err = store.migrate().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Schema);
    let text = stores::error_chain(&err);
    assert!(
        text.contains("99") && text.contains("upgrade apitoken"),
        "{text}"
    );
    assert_eq!(
        store.check_schema().await.unwrap_err().kind(),
        StoreErrorKind::Schema
    );
    assert_eq!(recorded_version(&pool, &schema, "tokens").await, Some(99));

    // A table of the same name that is not ours: `id BIGINT`.
    let schema = unique_name("m");
    exec(
        &pool,
        format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.apitoken_tokens (id BIGINT PRIMARY KEY, \
             secret_hash BYTEA, name TEXT, owner TEXT, scopes TEXT, metadata JSONB, \
             created_at TIMESTAMPTZ, last_used_at TIMESTAMPTZ, expires_at TIMESTAMPTZ, \
             revoked_at TIMESTAMPTZ, allowed_ips TEXT)"
        ),
    )
    .await;
    let err = store_in(&pool, &schema).migrate().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Schema);
    let text = stores::error_chain(&err);
    assert!(
        text.contains("column id") && text.contains("bigint"),
        "{text}"
    );
    assert_eq!(recorded_version(&pool, &schema, "tokens").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_role_without_ddl_rights_uses_a_current_schema_and_is_told_why_it_cannot_make_one()
 {
    let Some(url) = postgres_url() else { return };
    let admin = pool(&url, 2).await;
    let schema = unique_name("m");
    store_in(&admin, &schema).migrate().await.unwrap();
    let role = unique_name("app");
    exec(
        &admin,
        format!(
            "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {schema} TO {role}; \
             GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {schema} TO {role}; \
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"
        ),
    )
    .await;
    let as_role = url.replacen("postgres@", &format!("{role}@"), 1);
    let app = pool(&as_role, 2).await;
    let store = store_in(&app, &schema);
    store
        .migrate()
        .await
        .expect("current: nothing to do, nothing needed");
    store.check_schema().await.unwrap();
    issue_and_verify(store).await;
    // A schema it may not create in.
    let empty = unique_name("m");
    exec(&admin, format!("CREATE SCHEMA {empty}")).await;
    let err = store_in(&app, &empty).migrate().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::PermissionDenied, "{err:?}");
    app.close().await;
    exec(&admin, format!("DROP OWNED BY {role}; DROP ROLE {role}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_token_and_grant_stores_migrate_a_fresh_schema_together() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 8).await;
    for _ in 0..10 {
        let schema = unique_name("m");
        let tokens = store_in(&pool, &schema);
        let grants = PostgresGrantStore::with_schema(pool.clone(), &schema).unwrap();
        let (a, b) = tokio::join!(tokens.migrate(), grants.migrate());
        a.expect("tokens");
        b.expect("grants");
        assert_eq!(recorded_version(&pool, &schema, "tokens").await, Some(2));
        assert_eq!(
            recorded_version(&pool, &schema, "oauth_grants").await,
            Some(2)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schemas_named_like_reserved_words_work() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 4).await;
    for schema in ["user", "order"] {
        exec(&pool, format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await;
        let store = store_in(&pool, schema);
        store.migrate().await.expect("migrate");
        issue_and_verify(store.clone()).await;
        let owner = Owner::new("acct-9").unwrap();
        assert_eq!(
            store
                .revoke_owner(&owner, chrono::Utc::now())
                .await
                .unwrap(),
            1
        );
        PostgresGrantStore::with_schema(pool.clone(), schema)
            .unwrap()
            .migrate()
            .await
            .expect("grant tables");
        exec(&pool, format!("DROP SCHEMA \"{schema}\" CASCADE")).await;
    }
}

// ---- SQLite ----

fn sqlite_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}.db", unique_name("apitoken-m")))
}

async fn sqlite_at(path: &std::path::Path) -> SqliteStore {
    SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

#[tokio::test]
async fn sqlite_upgrades_a_file_from_the_first_release_in_place() {
    let path = sqlite_path();
    let store = sqlite_at(&path).await;
    sqlx::raw_sql(AssertSqlSafe(
        "CREATE TABLE apitoken_tokens (\
             id TEXT NOT NULL PRIMARY KEY, \
             secret_hash BLOB NOT NULL UNIQUE CHECK (length(secret_hash) = 32), \
             name TEXT NOT NULL, owner TEXT NOT NULL, scopes TEXT NOT NULL DEFAULT '', \
             metadata TEXT NOT NULL DEFAULT '{}', created_at INTEGER NOT NULL, \
             last_used_at INTEGER, expires_at INTEGER, revoked_at INTEGER); \
         CREATE INDEX IF NOT EXISTS apitoken_tokens_owner_idx ON apitoken_tokens (owner, created_at); \
         CREATE TABLE IF NOT EXISTS apitoken_sequence (name TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL); \
         INSERT OR IGNORE INTO apitoken_sequence (name, value) VALUES ('token_ids', 0); \
         INSERT INTO apitoken_tokens (id, secret_hash, name, owner, created_at) \
             VALUES ('old1', zeroblob(32), 'from the first release', 'acct-1', 0);"
            .to_owned(),
    ))
    .execute(store.pool())
    .await
    .unwrap();
    assert_eq!(
        store.check_schema().await.unwrap_err().kind(),
        StoreErrorKind::Schema
    );
    store.migrate().await.expect("upgrade");
    store.check_schema().await.unwrap();
    let old = store.get(&"old1".parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(old.record.name, "from the first release");
    assert!(old.record.allowed_ips.is_empty());
    issue_and_verify(store.clone()).await;
    store.migrate().await.unwrap();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn sqlite_refuses_a_newer_version_and_a_foreign_table() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    sqlx::query("UPDATE apitoken_schema_versions SET version = 7")
        .execute(store.pool())
        .await
        .unwrap();
    let err = store.migrate().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Schema);
    assert!(stores::error_chain(&err).contains("version 7"));

    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    sqlx::query("CREATE TABLE apitoken_tokens (id INTEGER PRIMARY KEY, allowed_ips TEXT)")
        .execute(store.pool())
        .await
        .unwrap();
    let err = store.migrate().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Schema);
    let text = stores::error_chain(&err);
    assert!(text.contains("column id"), "{text}");
}

#[tokio::test]
async fn sqlite_a_current_file_opened_read_only_migrates_without_writing() {
    let path = sqlite_path();
    let store = sqlite_at(&path).await;
    store.migrate().await.unwrap();
    store.pool().close().await;
    let read_only = SqliteStore::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .unwrap();
    read_only.migrate().await.expect("nothing to write");
    read_only.check_schema().await.unwrap();
    let _ = std::fs::remove_file(&path);
}

/// A replica that waits for another replica's upgrade (on the schema's advisory lock) holds no
/// table lock, and must not fail because that upgrade outlasted its own `lock_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_replica_waiting_for_another_replicas_upgrade_does_not_time_out() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 8).await;
    let schema = unique_name("m");
    exec(&pool, first_release_postgres(&schema)).await;
    // A reader holds the table for 1 s: the first replica's upgrade waits for it (its own
    // lock_timeout is 3 s); the second replica's lock_timeout is 200 ms.
    let mut reader = pool.begin().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.apitoken_tokens"
    )))
    .execute(&mut *reader)
    .await
    .unwrap();
    let replica = |timeout_ms: u64| {
        PostgresStore::builder(pool.clone())
            .schema(&schema)
            .unwrap()
            .migration_lock_timeout(Duration::from_millis(timeout_ms))
            .build()
    };
    let first = replica(3_000);
    let second = replica(200);
    let first_run = tokio::spawn(async move { first.migrate().await });
    // Let the first take the advisory lock, then start the second behind it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second_run = tokio::spawn(async move { second.migrate().await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    reader.rollback().await.unwrap();
    first_run
        .await
        .unwrap()
        .expect("the first replica upgrades");
    second_run
        .await
        .unwrap()
        .expect("the second waits for it, then finds the tables current");
    assert_eq!(recorded_version(&pool, &schema, "tokens").await, Some(2));
}
