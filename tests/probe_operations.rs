//! attack14 probes: schema migrations (PostgreSQL, SQLite) under concurrency, cancellation
//! and half states, and `issue_first` races on every store.

#[path = "support/stores.rs"]
mod stores;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apitoken::oauth::PostgresGrantStore;
use apitoken::{
    CachedStore, MemoryStore, NewToken, Owner, PostgresStore, SqliteStore, StoreErrorKind,
    TokenStore, Verifier,
};
use sqlx::AssertSqlSafe;
use stores::{postgres_url, unique_name};
use tokio::sync::Barrier;

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
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{schema}.apitoken_schema_versions"))
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

/// A lookup of the first-release row as the store's `get` would make it (by id), in SQL
/// that a v1 table can answer.
async fn raw_lookup(pool: &sqlx::PgPool, schema: &str) -> bool {
    sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
        "SELECT name FROM {schema}.apitoken_tokens WHERE id = 'old1'"
    )))
    .fetch_optional(pool)
    .await
    .unwrap()
    .is_some()
}

async fn issue_and_verify<S: TokenStore + Clone + 'static>(store: S) {
    let verifier = Verifier::builder(store).disable_last_used().build();
    let issued = verifier
        .issuer()
        .issue(NewToken::new("ci", Owner::new("acct-9").unwrap()))
        .await
        .expect("issue");
    verifier
        .verify(
            issued.token.expose_secret(),
            &apitoken::ScopeRequirement::all::<[&str; 0], &str>([]).unwrap(),
        )
        .await
        .expect("verify");
}

/// Claim 1: replicas that start together on a first-release (v1) schema all succeed, and
/// the old row survives. Separate pools, as separate processes would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_pg_replicas_upgrade_a_v1_schema_at_once() {
    let Some(url) = postgres_url() else { return };
    let admin = pool(&url, 2).await;
    let schema = unique_name("p14r");
    exec(&admin, first_release_postgres(&schema)).await;
    let barrier = Arc::new(Barrier::new(6));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let store = store_in(&pool(&url, 2).await, &schema);
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store.migrate().await
        }));
    }
    for task in tasks {
        task.await
            .unwrap()
            .expect("every replica's migrate succeeds");
    }
    assert_eq!(recorded_version(&admin, &schema, "tokens").await, Some(2));
    let store = store_in(&admin, &schema);
    assert!(store.get(&"old1".parse().unwrap()).await.unwrap().is_some());
    exec(&admin, format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// Claim 1 (half state): the versions table says `tokens = 2`, but the token table was
/// dropped (a restore of only some tables, a hand `DROP`). `migrate` is documented as
/// "creating them (and the schema) if missing"; `check_schema` as refusing missing tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_pg_version_row_present_but_table_dropped() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 4).await;
    let schema = unique_name("p14d");
    let store = store_in(&pool, &schema);
    store.migrate().await.unwrap();
    exec(&pool, format!("DROP TABLE {schema}.apitoken_tokens")).await;
    let check = store.check_schema().await;
    let migrated = store.migrate().await;
    let issued = Verifier::builder(store.clone())
        .disable_last_used()
        .build()
        .issuer()
        .issue(NewToken::new("ci", Owner::new("acct-9").unwrap()))
        .await;
    exec(&pool, format!("DROP SCHEMA {schema} CASCADE")).await;
    eprintln!("check_schema: {check:?}\nmigrate: {migrated:?}\nissue: {issued:?}");
    assert_eq!(
        check.as_ref().map_err(|e| e.kind()),
        Err(StoreErrorKind::Schema),
        "check_schema must not call a missing table current: {check:?}"
    );
    assert!(migrated.is_ok(), "{migrated:?}");
    assert!(
        issued.is_ok(),
        "after migrate() the table must exist: {issued:?}"
    );
}

/// Claim 1: a versions table that holds only the grant store's row, beside a first-release
/// token table: the token store dates its table by its columns and upgrades it with its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_pg_versions_row_of_another_component_only() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 4).await;
    let schema = unique_name("p14o");
    exec(&pool, first_release_postgres(&schema)).await;
    let grants = PostgresGrantStore::with_schema(pool.clone(), &schema).unwrap();
    grants.migrate().await.unwrap();
    let store = store_in(&pool, &schema);
    assert_eq!(
        store.check_schema().await.unwrap_err().kind(),
        StoreErrorKind::Schema
    );
    store.migrate().await.expect("upgrade");
    assert_eq!(recorded_version(&pool, &schema, "tokens").await, Some(2));
    let old = store.get(&"old1".parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(old.record.name, "from the first release");
    issue_and_verify(store).await;
    exec(&pool, format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// Claim 1: the token and grant stores upgrading one v1 schema at the same moment (both
/// unversioned) both succeed: the advisory lock is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_pg_token_and_grant_upgrade_a_v1_schema_together() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 8).await;
    for _ in 0..5 {
        let schema = unique_name("p14g");
        let grants = PostgresGrantStore::with_schema(pool.clone(), &schema).unwrap();
        grants.migrate().await.unwrap();
        // Back to v1 for both: no generation columns, no version rows.
        exec(
            &pool,
            format!(
                "ALTER TABLE {schema}.apitoken_oauth_families DROP COLUMN generation; \
                 ALTER TABLE {schema}.apitoken_oauth_refresh_tokens DROP COLUMN generation; \
                 DROP TABLE {schema}.apitoken_schema_versions; \
                 CREATE TABLE {schema}.apitoken_tokens (\
                 id TEXT COLLATE \"C\" PRIMARY KEY, \
                 secret_hash BYTEA NOT NULL UNIQUE CHECK (octet_length(secret_hash) = 32), \
                 name TEXT NOT NULL, owner TEXT COLLATE \"C\" NOT NULL, \
                 scopes TEXT NOT NULL DEFAULT '', metadata JSONB NOT NULL DEFAULT '{{}}', \
                 created_at TIMESTAMPTZ NOT NULL, last_used_at TIMESTAMPTZ, \
                 expires_at TIMESTAMPTZ, revoked_at TIMESTAMPTZ); \
                 CREATE SEQUENCE {schema}.apitoken_token_ids;"
            ),
        )
        .await;
        let tokens = store_in(&pool, &schema);
        let (a, b) = tokio::join!(tokens.migrate(), grants.migrate());
        a.expect("tokens");
        b.expect("grants");
        assert_eq!(recorded_version(&pool, &schema, "tokens").await, Some(2));
        assert_eq!(
            recorded_version(&pool, &schema, "oauth_grants").await,
            Some(2)
        );
        exec(&pool, format!("DROP SCHEMA {schema} CASCADE")).await;
    }
}

/// Claim 1: a current schema migrates with no wait behind an open WRITER (row locks and a
/// ROW EXCLUSIVE table lock held by an uncommitted UPDATE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_pg_current_schema_behind_an_open_writer() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 4).await;
    let schema = unique_name("p14w");
    exec(&pool, first_release_postgres(&schema)).await;
    let store = store_in(&pool, &schema);
    store.migrate().await.unwrap();
    let mut writer = pool.begin().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "UPDATE {schema}.apitoken_tokens SET name = 'w' WHERE id = 'old1'; \
         LOCK TABLE {schema}.apitoken_tokens IN SHARE ROW EXCLUSIVE MODE"
    )))
    .execute(&mut *writer)
    .await
    .unwrap();
    let started = Instant::now();
    let again = tokio::time::timeout(Duration::from_secs(5), store.migrate()).await;
    assert!(matches!(again, Ok(Ok(()))), "{again:?}");
    assert!(started.elapsed() < Duration::from_millis(900));
    writer.rollback().await.unwrap();
    exec(&pool, format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// Claim 1: "lookups never wait more than lock_timeout behind it". The grant store's
/// v1 -> v2 step alters two tables. Reader R1 holds the families table until 0.9 s, reader
/// R2 the refresh table for 4 s. The migration gets families at 0.9 s (under its 1 s
/// timeout), then waits up to 1 s more for refresh while holding ACCESS EXCLUSIVE on
/// families: a families lookup made at 0.2 s waits ~1.7 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_pg_grant_upgrade_bounds_lookups_by_lock_timeout() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 8).await;
    let schema = unique_name("p14l");
    let grants = PostgresGrantStore::with_schema(pool.clone(), &schema).unwrap();
    grants.migrate().await.unwrap();
    exec(
        &pool,
        format!(
            "ALTER TABLE {schema}.apitoken_oauth_families DROP COLUMN generation; \
             ALTER TABLE {schema}.apitoken_oauth_refresh_tokens DROP COLUMN generation; \
             DELETE FROM {schema}.apitoken_schema_versions WHERE component = 'oauth_grants'"
        ),
    )
    .await;
    let mut r1 = pool.begin().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.apitoken_oauth_families"
    )))
    .execute(&mut *r1)
    .await
    .unwrap();
    let mut r2 = pool.begin().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.apitoken_oauth_refresh_tokens"
    )))
    .execute(&mut *r2)
    .await
    .unwrap();
    let start = Instant::now();
    let migrating = {
        let grants = grants.clone();
        tokio::spawn(async move { grants.migrate().await })
    };
    let release_r1 = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(900)).await;
        r1.rollback().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let looked = Instant::now();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.apitoken_oauth_families"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let waited = looked.elapsed();
    let result = migrating.await.unwrap();
    release_r1.await.unwrap();
    r2.rollback().await.unwrap();
    eprintln!(
        "lookup waited {waited:?}; migration ended {:?} after start: {result:?}",
        start.elapsed()
    );
    exec(&pool, format!("DROP SCHEMA {schema} CASCADE")).await;
    assert!(
        waited < Duration::from_millis(1200),
        "a lookup waited {waited:?} behind a migration with a 1 s lock_timeout"
    );
}

/// Claim 1: the token store's single ALTER does bound a lookup by lock_timeout (measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_pg_token_upgrade_bounds_lookups_by_lock_timeout() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 8).await;
    let schema = unique_name("p14t");
    exec(&pool, first_release_postgres(&schema)).await;
    let mut reader = pool.begin().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.apitoken_tokens"
    )))
    .execute(&mut *reader)
    .await
    .unwrap();
    let store = store_in(&pool, &schema);
    let migrating = {
        let store = store.clone();
        tokio::spawn(async move { store.migrate().await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let looked = Instant::now();
    let got = raw_lookup(&pool, &schema).await;
    let waited = looked.elapsed();
    let result = migrating.await.unwrap();
    reader.rollback().await.unwrap();
    exec(&pool, format!("DROP SCHEMA {schema} CASCADE")).await;
    assert!(got);
    assert!(waited < Duration::from_millis(1200), "{waited:?}");
    assert_eq!(result.unwrap_err().kind(), StoreErrorKind::Unavailable);
}

/// Claim 1: a migration dropped while it waits for its ALTER (mid-transaction) leaves no
/// lock and no half state: lookups go on within lock_timeout, and the next migrate succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_pg_migrate_dropped_mid_transaction() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 6).await;
    let schema = unique_name("p14c");
    exec(&pool, first_release_postgres(&schema)).await;
    let mut reader = pool.begin().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.apitoken_tokens"
    )))
    .execute(&mut *reader)
    .await
    .unwrap();
    let store = store_in(&pool, &schema);
    let dropped = tokio::time::timeout(Duration::from_millis(300), store.migrate()).await;
    assert!(dropped.is_err(), "the migration waits behind the reader");
    assert_eq!(recorded_version(&pool, &schema, "tokens").await, None);
    let looked = Instant::now();
    assert!(raw_lookup(&pool, &schema).await);
    assert!(looked.elapsed() < Duration::from_millis(1500));
    reader.rollback().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), store.migrate())
        .await
        .expect("no lock left behind")
        .expect("upgrade after a dropped one");
    assert_eq!(recorded_version(&pool, &schema, "tokens").await, Some(2));
    exec(&pool, format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// Claim 1: a foreign table lacking `allowed_ips` and with a wrong type elsewhere: the ALTER
/// the plan runs is rolled back, the refusal is `Schema`, and no column or version appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_pg_foreign_v1_looking_table_is_refused_unchanged() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 4).await;
    let schema = unique_name("p14f");
    exec(
        &pool,
        format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.apitoken_tokens \
             (id INTEGER PRIMARY KEY, name TEXT)"
        ),
    )
    .await;
    let store = store_in(&pool, &schema);
    let err = store.migrate().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Schema, "{err:?}");
    let cols: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 \
         AND table_name = 'apitoken_tokens'",
    )
    .bind(&schema)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(cols, 2, "the ALTER was rolled back");
    assert_eq!(recorded_version(&pool, &schema, "tokens").await, None);
    exec(&pool, format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// Claim 1 (SQLite): an upgrade of a v1 file while another process holds the write lock
/// waits for it (busy timeout) and then succeeds, or fails leaving v1; never half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_sqlite_upgrade_behind_another_writer() {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name("p14s")));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = SqliteStore::connect(&url).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(
        "CREATE TABLE apitoken_tokens (\
             id TEXT NOT NULL PRIMARY KEY, \
             secret_hash BLOB NOT NULL UNIQUE CHECK (length(secret_hash) = 32), \
             name TEXT NOT NULL, owner TEXT NOT NULL, scopes TEXT NOT NULL DEFAULT '', \
             metadata TEXT NOT NULL DEFAULT '{}', created_at INTEGER NOT NULL, \
             last_used_at INTEGER, expires_at INTEGER, revoked_at INTEGER); \
         CREATE TABLE IF NOT EXISTS apitoken_sequence (name TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL); \
         INSERT OR IGNORE INTO apitoken_sequence (name, value) VALUES ('token_ids', 0); \
         INSERT INTO apitoken_tokens (id, secret_hash, name, owner, created_at) \
             VALUES ('old1', zeroblob(32), 'old', 'acct-1', 0);"
            .to_owned(),
    ))
    .execute(store.pool())
    .await
    .unwrap();
    // Another writer, on its own pool (another process).
    let other = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let mut held = other.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("UPDATE apitoken_tokens SET name = 'held' WHERE id = 'old1'")
        .execute(&mut *held)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        held.commit().await.unwrap();
    });
    let migrated = store.migrate().await;
    release.await.unwrap();
    match &migrated {
        Ok(()) => store.check_schema().await.expect("current after upgrade"),
        Err(err) => {
            assert!(
                store.check_schema().await.is_err(),
                "failed but current? {err:?}"
            );
            store
                .migrate()
                .await
                .expect("upgrade once the writer is gone");
        }
    }
    let old = store.get(&"old1".parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(old.record.name, "held");
    assert!(
        migrated.is_ok(),
        "waited through busy timeout: {migrated:?}"
    );
    drop(store);
    let _ = std::fs::remove_file(&path);
}

// ---- issue_first ----

async fn race_issue_first<S: TokenStore + 'static>(stores: Vec<S>, owner: &str) -> (usize, usize) {
    let n = stores.len();
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = Vec::new();
    for store in stores {
        let barrier = barrier.clone();
        let owner = Owner::new(owner).unwrap();
        tasks.push(tokio::spawn(async move {
            let verifier = Verifier::builder(store).disable_last_used().build();
            barrier.wait().await;
            verifier
                .issuer()
                .issue_first(NewToken::new("bootstrap", owner))
                .await
        }));
    }
    let mut won = 0;
    let mut errors = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(Some(_)) => won += 1,
            Ok(None) => {}
            Err(err) => {
                eprintln!("issue_first error: {err:?}");
                errors += 1;
            }
        }
    }
    (won, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_issue_first_races_memory_and_cache() {
    for _ in 0..20 {
        let store = Arc::new(MemoryStore::new());
        let (won, errors) = race_issue_first(vec![store.clone(); 16], "admin").await;
        assert_eq!((won, errors), (1, 0));
        assert_eq!(
            store
                .list_by_owner(&Owner::new("admin").unwrap())
                .await
                .unwrap()
                .len(),
            1
        );
        // Replicas: separate caches over one store.
        let caches: Vec<_> = (0..8).map(|_| CachedStore::new(store.clone())).collect();
        let (won, _) = race_issue_first(caches, "admin2").await;
        assert_eq!(won, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_issue_first_races_sqlite() {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name("p14b")));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let first = SqliteStore::connect(&url).await.unwrap();
    first.migrate().await.unwrap();
    let mut stores = vec![first.clone()];
    for _ in 0..5 {
        stores.push(SqliteStore::connect(&url).await.unwrap());
    }
    let (won, errors) = race_issue_first(stores, "admin").await;
    assert_eq!((won, errors), (1, 0));
    assert_eq!(
        first
            .list_by_owner(&Owner::new("admin").unwrap())
            .await
            .unwrap()
            .len(),
        1
    );
    drop(first);
    let _ = std::fs::remove_file(&path);
}

/// Claim 2 on PostgreSQL: separate pools (replicas), caches in front holding a stale miss
/// for the owner's listing, and cancelled attempts before the race leaving no lock behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_issue_first_races_postgres_with_cancellations() {
    let Some(url) = postgres_url() else { return };
    let admin = pool(&url, 2).await;
    let schema = unique_name("p14i");
    store_in(&admin, &schema).migrate().await.unwrap();
    let owner = Owner::new("admin").unwrap();
    // Dropped attempts at every early point: none may leave a token or hold the owner lock.
    let store = store_in(&admin, &schema);
    let verifier = Verifier::builder(store.clone()).disable_last_used().build();
    for micros in [0u64, 50, 200, 500, 1000, 2000, 3000] {
        let issuer = verifier.issuer();
        let attempt =
            issuer.issue_first(NewToken::new("bootstrap", Owner::new("cancelled").unwrap()));
        let _ = tokio::time::timeout(Duration::from_micros(micros), attempt).await;
    }
    // Stale misses cached for the owner in front of each replica.
    let mut stores = Vec::new();
    for _ in 0..6 {
        let cached = CachedStore::new(store_in(&pool(&url, 2).await, &schema));
        assert!(cached.list_by_owner(&owner).await.unwrap().is_empty());
        stores.push(cached);
    }
    let (won, errors) =
        tokio::time::timeout(Duration::from_secs(20), race_issue_first(stores, "admin"))
            .await
            .expect("no lock left by a dropped attempt");
    assert_eq!((won, errors), (1, 0));
    assert_eq!(store.list_by_owner(&owner).await.unwrap().len(), 1);
    // A dropped attempt for "cancelled" either committed whole or left nothing; one more
    // finishes promptly either way.
    let again = tokio::time::timeout(
        Duration::from_secs(5),
        verifier
            .issuer()
            .issue_first(NewToken::new("bootstrap", Owner::new("cancelled").unwrap())),
    )
    .await
    .expect("the owner lock was released");
    again.unwrap();
    assert_eq!(
        store
            .list_by_owner(&Owner::new("cancelled").unwrap())
            .await
            .unwrap()
            .len(),
        1
    );
    // After revoke_owner the owner still "has" a (revoked) token: no second bootstrap.
    store
        .revoke_owner(&owner, chrono::Utc::now())
        .await
        .unwrap();
    assert!(
        verifier
            .issuer()
            .issue_first(NewToken::new("bootstrap", owner.clone()))
            .await
            .unwrap()
            .is_none()
    );
    exec(&admin, format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// Claim 1 (half state, columns): tables recorded as current, then altered by hand (a column
/// the store reads dropped). The refusal of "missing columns" (`MissingColumn` says "or was
/// altered by hand") applies only inside an upgrade: the fast path trusts the version row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_pg_current_version_with_a_dropped_column_is_refused() {
    let Some(url) = postgres_url() else { return };
    let pool = pool(&url, 4).await;
    let schema = unique_name("p14k");
    let store = store_in(&pool, &schema);
    store.migrate().await.unwrap();
    exec(
        &pool,
        format!("ALTER TABLE {schema}.apitoken_tokens DROP COLUMN allowed_ips"),
    )
    .await;
    let migrated = store.migrate().await;
    let check = store.check_schema().await;
    let got = store.get(&"abcdefghijkl".parse().unwrap()).await;
    exec(&pool, format!("DROP SCHEMA {schema} CASCADE")).await;
    eprintln!("migrate: {migrated:?}\ncheck_schema: {check:?}\nget: {got:?}");
    assert_eq!(
        migrated.map_err(|e| e.kind()),
        Err(StoreErrorKind::Schema),
        "a missing column is refused"
    );
}

/// Claim 1 (SQLite, half state): the version row says current, the token table is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_sqlite_version_row_present_but_table_dropped() {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name("p14sd")));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe("DROP TABLE apitoken_tokens".to_owned()))
        .execute(store.pool())
        .await
        .unwrap();
    let check = store.check_schema().await;
    let migrated = store.migrate().await;
    let issued = Verifier::builder(store.clone())
        .disable_last_used()
        .build()
        .issuer()
        .issue(NewToken::new("ci", Owner::new("acct-9").unwrap()))
        .await;
    drop(store);
    let _ = std::fs::remove_file(&path);
    eprintln!("check_schema: {check:?}\nmigrate: {migrated:?}\nissue: {issued:?}");
    assert_eq!(check.map_err(|e| e.kind()), Err(StoreErrorKind::Schema));
    assert!(migrated.is_ok());
    assert!(issued.is_ok(), "{issued:?}");
}

/// Claim 1: a role with only SELECT/INSERT/UPDATE on a current schema migrates (no DDL),
/// and on a behind (v1) schema is told PermissionDenied, changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_pg_restricted_role_current_and_behind() {
    let Some(url) = postgres_url() else { return };
    let admin = pool(&url, 2).await;
    let current = unique_name("p14rc");
    let behind = unique_name("p14rb");
    let role = unique_name("p14role");
    store_in(&admin, &current).migrate().await.unwrap();
    exec(&admin, first_release_postgres(&behind)).await;
    exec(
        &admin,
        format!(
            "CREATE ROLE {role} LOGIN; \
             GRANT USAGE ON SCHEMA {current}, {behind} TO {role}; \
             GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {current} TO {role}; \
             GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {behind} TO {role}; \
             GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {current} TO {role}"
        ),
    )
    .await;
    let role_url = url.replacen("postgres@", &format!("{role}@"), 1);
    let limited = pool(&role_url, 2).await;
    let ok = store_in(&limited, &current).migrate().await;
    let denied = store_in(&limited, &behind).migrate().await;
    let version = recorded_version(&admin, &behind, "tokens").await;
    limited.close().await;
    exec(
        &admin,
        format!(
            "DROP SCHEMA {current} CASCADE; DROP SCHEMA {behind} CASCADE; \
             DROP OWNED BY {role}; DROP ROLE {role}"
        ),
    )
    .await;
    ok.expect("current schema, no DDL");
    assert_eq!(
        denied.map_err(|e| e.kind()),
        Err(StoreErrorKind::PermissionDenied)
    );
    assert_eq!(version, None);
}
