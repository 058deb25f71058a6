//! Review probes for "revoke-all is atomic against inserts and rotations of the same owner"
//! (PostgreSQL advisory locks, `MemoryStore`'s owner index lock) and for the management API's
//! promise that a create or rotation racing a revoke-all never leaves a live token.
//!
//! Interleavings are forced with held PostgreSQL transactions and `pg_stat_activity` polling,
//! or with barriers; no test relies on a sleep to order events.

#[path = "support/stores.rs"]
mod stores;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apitoken::management::TokenApi;
use apitoken::middleware::AuthLayer;
use apitoken::{
    CachedStore, MemoryStore, NewToken, Owner, PostgresStore, SecretHasher, TokenFormat,
    TokenRecord, TokenStore, Verifier,
};
use axum::Router;
use axum::body::Body;
use chrono::TimeDelta;
use http::{Request, StatusCode};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Row};
use tower::ServiceExt;

/// Polls `query` (one integer) on `conn` until it is at least 1 or `done` says to stop;
/// bounded by a deadline.
async fn wait_for(
    conn: &mut sqlx::PgConnection,
    query: &'static str,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = sqlx::query(query)
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get(0);
        if n >= 1 || done() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {query}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A pool whose sessions start with `default_transaction_isolation` = `isolation` (or the
/// server's default).
async fn pool(url: &str, isolation: Option<&str>) -> sqlx::PgPool {
    let mut options = PgConnectOptions::from_str(url).expect("a PostgreSQL URL");
    if let Some(level) = isolation {
        options = options.options([("default_transaction_isolation", level)]);
    }
    PgPoolOptions::new()
        .max_connections(6)
        .connect_with(options)
        .await
        .expect("PostgreSQL")
}

/// A token of `owner` made on a scratch store, so the test knows its id before the insert:
/// the record, its hash and its text (which verifies once stored).
async fn handmade(owner: &Owner) -> (TokenRecord, apitoken::SecretHash, String) {
    let scratch = Verifier::builder(MemoryStore::new()).build();
    let issued = scratch
        .issuer()
        .issue(NewToken::new("in flight", owner.clone()))
        .await
        .unwrap();
    let text = issued.token.expose_secret().to_owned();
    let format = TokenFormat::canonical();
    let hash = SecretHasher::sha256().hash(format.parse(&text).unwrap().secret().as_bytes());
    (issued.record, hash, text)
}

/// An insert of the owner's that already holds the owner lock (its CTE ran) when the
/// revoke-all starts must be revoked by it: it landed "wholly before". The insert is held in
/// flight by another session's uncommitted row with the same id (the primary key makes the
/// insert wait for that session, after it took the shared advisory lock).
async fn revoke_all_with_an_insert_in_flight(isolation: Option<&str>) {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let schema = stores::unique_name("probe_rr");
    let store = stores::postgres_on(pool(&url, isolation).await, &schema).await;
    let verifier = Verifier::builder(store).build();
    let team = Owner::new("team-1").unwrap();
    verifier
        .issuer()
        .issue(NewToken::new("existing", team.clone()))
        .await
        .unwrap();
    let (record, hash, text) = handmade(&team).await;
    let id = record.id;

    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.apitoken_tokens (id, secret_hash, name, owner, created_at) \
         VALUES ($1, $2, 'blocker', 'nobody', now())"
    )))
    .bind(id.as_str())
    .bind(vec![7u8; 32])
    .execute(&mut holder)
    .await
    .unwrap();

    let insert = tokio::spawn({
        let verifier = verifier.clone();
        async move { verifier.store().insert(record, hash).await }
    });
    // The insert has its shared owner lock and waits for the blocker's row.
    wait_for(
        &mut watcher,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND wait_event = 'transactionid' AND query LIKE '%pg_advisory_xact_lock_shared%'",
        || false,
    )
    .await;
    let revoke_all = tokio::spawn({
        let verifier = verifier.clone();
        let team = team.clone();
        async move { verifier.store().revoke_owner(&team, verifier.now()).await }
    });
    // The revoke-all waits for the insert's shared lock.
    wait_for(
        &mut watcher,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND wait_event = 'advisory' AND query LIKE '%pg_advisory_xact_lock(%'",
        || false,
    )
    .await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    insert.await.unwrap().expect("the insert goes through");
    let revoked = revoke_all
        .await
        .unwrap()
        .expect("the revoke-all goes through");
    let after = verifier.authenticate(&text).await;
    assert!(
        after.is_err(),
        "isolation {isolation:?}: the insert that held the owner lock before the revoke-all \
         survived it (revoke_owner revoked {revoked}): {:?}",
        verifier.store().get(&id).await.unwrap().map(|s| s.record)
    );
    assert_eq!(revoked, 2, "the existing token and the one in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_revoke_all_takes_an_insert_that_held_the_owner_lock_first() {
    revoke_all_with_an_insert_in_flight(None).await;
}

/// The same under `default_transaction_isolation = 'repeatable read'` (a database, role or
/// pool setting some deployments use): the revoke-all's snapshot is taken by its first
/// statement, the lock request, before it waits, so its `UPDATE` cannot see the insert it
/// waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_under_repeatable_read_revoke_all_takes_an_insert_that_held_the_owner_lock() {
    revoke_all_with_an_insert_in_flight(Some("repeatable read")).await;
}

/// A rotation through `TokenApi` racing a revoke-all that is held open (it holds the owner
/// lock and waits for a row): the rotation waits for the owner lock, then finds its target
/// revoked and issues nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_rotation_racing_a_revoke_all_held_open_issues_nothing_live() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let schema = stores::unique_name("probe_rot");
    let verifier =
        Verifier::builder(stores::postgres_on(pool(&url, None).await, &schema).await).build();
    let team = Owner::new("team-1").unwrap();
    let stolen = verifier
        .issuer()
        .issue(
            NewToken::new("stolen", team.clone())
                .scopes(["tokens:write"])
                .unwrap(),
        )
        .await
        .unwrap();
    let victim = verifier
        .issuer()
        .issue(NewToken::new("ci", team.clone()))
        .await
        .unwrap();
    let app = Router::new()
        .nest("/tokens", TokenApi::new(verifier.clone()).router())
        .layer(AuthLayer::new(verifier.clone()));

    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM {schema}.apitoken_tokens WHERE id = $1 FOR UPDATE"
    )))
    .bind(stolen.record.id.as_str())
    .fetch_one(&mut holder)
    .await
    .unwrap();
    let revoke_all = tokio::spawn({
        let verifier = verifier.clone();
        let team = team.clone();
        async move { verifier.store().revoke_owner(&team, verifier.now()).await }
    });
    wait_for(
        &mut watcher,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND wait_event = 'transactionid' AND query LIKE '%revoked_at%'",
        || false,
    )
    .await;

    let request = Request::post(format!("/tokens/{}/rotate", victim.record.id))
        .header(
            "authorization",
            format!("Bearer {}", stolen.token.expose_secret()),
        )
        .header("content-type", "application/json")
        .body(Body::from(r#"{"grace_seconds":0}"#))
        .unwrap();
    let rotate = tokio::spawn(app.oneshot(request));
    wait_for(
        &mut watcher,
        "SELECT count(*) FROM pg_stat_activity \
         WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'",
        || rotate.is_finished(),
    )
    .await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();

    assert_eq!(revoke_all.await.unwrap().unwrap(), 2);
    let response = rotate.await.unwrap().unwrap();
    assert_ne!(response.status(), StatusCode::CREATED);
    let records = verifier.store().list_by_owner(&team).await.unwrap();
    assert_eq!(records.len(), 2, "no rotated copy was stored: {records:#?}");
    assert!(records.iter().all(TokenRecord::is_revoked), "{records:#?}");
}

/// Rotations (with and without grace), inserts and revoke-alls of one owner, all at once and
/// many times over: no deadlock (PostgreSQL would abort one with 40P01) and no error, and a
/// rotation never leaves a live copy of a token a revoke-all took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_revoke_all_rotate_and_insert_never_deadlock() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let schema = stores::unique_name("probe_dl");
    let verifier =
        Verifier::builder(stores::postgres_on(pool(&url, None).await, &schema).await).build();
    let team = Owner::new("team-1").unwrap();
    let started = Instant::now();
    for round in 0..15 {
        let a = verifier
            .issuer()
            .issue(NewToken::new("a", team.clone()))
            .await
            .unwrap();
        let b = verifier
            .issuer()
            .issue(NewToken::new("b", team.clone()))
            .await
            .unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(4));
        let spawn_rotate = |id: apitoken::TokenId, grace: TimeDelta| {
            let (verifier, barrier) = (verifier.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                verifier.issuer().rotate(&id, grace).await
            })
        };
        let rotate_a = spawn_rotate(a.record.id, TimeDelta::zero());
        let rotate_b = spawn_rotate(b.record.id, TimeDelta::hours(1));
        let insert = tokio::spawn({
            let (verifier, barrier, team) = (verifier.clone(), barrier.clone(), team.clone());
            async move {
                barrier.wait().await;
                verifier.issuer().issue(NewToken::new("c", team)).await
            }
        });
        let revoke_all = tokio::spawn({
            let (verifier, barrier, team) = (verifier.clone(), barrier.clone(), team.clone());
            async move {
                barrier.wait().await;
                verifier.store().revoke_owner(&team, verifier.now()).await
            }
        });
        revoke_all
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: revoke-all failed: {e:?}"));
        insert
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: insert failed: {e:?}"));
        for (name, rotation, old) in [("a", rotate_a, a), ("b", rotate_b, b)] {
            match rotation.await.unwrap() {
                Ok(new) => {
                    // Rotated before the revoke-all (which then took the copy) or after it
                    // (impossible: the old token was revoked). Either way: not live.
                    let live = verifier.authenticate(new.token.expose_secret()).await;
                    assert!(
                        live.is_err(),
                        "round {round}: rotated copy of {name} outlived the revoke-all"
                    );
                }
                Err(apitoken::IssueError::NotFound) => {}
                Err(e) => panic!("round {round}: rotation of {name} failed: {e:?}"),
            }
            assert!(
                verifier
                    .authenticate(old.token.expose_secret())
                    .await
                    .is_err()
            );
        }
        // Start the next round from a clean team.
        verifier
            .store()
            .revoke_owner(&team, verifier.now())
            .await
            .unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// A revoke-all that times out while it waits for the owner lock (its future dropped, the
/// session still queued on the server) must not keep the owner locked: once the holder is
/// gone, the owner's inserts go through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_timed_out_revoke_all_leaves_no_lock_behind() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let schema = stores::unique_name("probe_to");
    let pool = pool(&url, None).await;
    stores::postgres_on(pool.clone(), &schema).await;
    let store = PostgresStore::builder(pool)
        .schema(&schema)
        .unwrap()
        .query_timeout(Duration::from_millis(300))
        .build();
    let verifier = Verifier::builder(store).build();
    let team = Owner::new("team-1").unwrap();
    let (record, hash, _) = handmade(&team).await;
    let id = record.id;

    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.apitoken_tokens (id, secret_hash, name, owner, created_at) \
         VALUES ($1, $2, 'blocker', 'nobody', now())"
    )))
    .bind(id.as_str())
    .bind(vec![9u8; 32])
    .execute(&mut holder)
    .await
    .unwrap();
    // An insert of the owner's holds the shared lock, stuck behind the blocker.
    let stuck = tokio::spawn({
        let verifier = verifier.clone();
        async move { verifier.store().insert(record, hash).await }
    });
    wait_for(
        &mut watcher,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND wait_event = 'transactionid' AND query LIKE '%pg_advisory_xact_lock_shared%'",
        || false,
    )
    .await;
    let timed_out = verifier
        .store()
        .revoke_owner(&team, verifier.now())
        .await
        .expect_err("the revoke-all cannot get the owner lock within 300 ms");
    assert_eq!(
        timed_out.kind(),
        apitoken::StoreErrorKind::Unavailable,
        "{timed_out:?}"
    );
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    // The stuck insert fails (its deadline passed) or lands; either way the lock is free.
    let _ = stuck.await.unwrap();

    let begun = Instant::now();
    let later = verifier
        .issuer()
        .issue(NewToken::new("later", team.clone()))
        .await;
    assert!(later.is_ok(), "{later:?}");
    assert!(
        begun.elapsed() < Duration::from_millis(250),
        "an insert of the owner waited {:?} for a dead revoke-all",
        begun.elapsed()
    );
    // And nothing the dead revoke-all might still do revokes a later token.
    let n: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.apitoken_tokens WHERE revoked_at IS NOT NULL"
    )))
    .fetch_one(&mut watcher)
    .await
    .unwrap()
    .get(0);
    assert_eq!(n, 0, "the timed-out revoke-all revoked something after all");
}

/// Two replicas, each with a `CachedStore` over the same PostgreSQL tables (no change
/// listener: the documented staleness is the cache's TTL). An admin revokes the team on
/// replica A; within replica B's cache window the stolen token still verifies there (the
/// documented window), and creates a token. The management API's check of its caller
/// (`settle`) reads B's cache too, so the new token is handed out and outlives the revoke-all
/// for good, long after the window has closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_create_through_a_stale_cache_does_not_outlive_a_revoke_all() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let schema = stores::unique_name("probe_cache");
    let pool = pool(&url, None).await;
    let a_store = stores::postgres_on(pool.clone(), &schema).await;
    let b_store = PostgresStore::builder(pool)
        .schema(&schema)
        .unwrap()
        .build();
    let a = Verifier::builder(CachedStore::new(a_store)).build();
    let b = Verifier::builder(CachedStore::new(b_store)).build();
    let team = Owner::new("team-1").unwrap();
    let stolen = a
        .issuer()
        .issue(
            NewToken::new("stolen", team.clone())
                .scopes(["tokens:write", "tokens:read"])
                .unwrap(),
        )
        .await
        .unwrap();
    let b_app = Router::new()
        .nest("/tokens", TokenApi::new(b.clone()).router())
        .layer(AuthLayer::new(b.clone()));
    let bearer = format!("Bearer {}", stolen.token.expose_secret());
    // The attacker has been using the token on replica B: it is in B's cache.
    let list = b_app
        .clone()
        .oneshot(
            Request::get("/tokens")
                .header("authorization", &bearer)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);

    assert_eq!(a.store().revoke_owner(&team, a.now()).await.unwrap(), 1);
    let create = b_app
        .oneshot(
            Request::post("/tokens")
                .header("authorization", &bearer)
                .header("content-type", "application/json")
                .body(Body::from(r#"{"name":"backdoor"}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = create.status();
    let body = axum::body::to_bytes(create.into_body(), usize::MAX)
        .await
        .unwrap();
    let records = a.store().inner().list_by_owner(&team).await.unwrap();
    let live: Vec<&TokenRecord> = records.iter().filter(|r| !r.is_revoked()).collect();
    assert!(
        live.is_empty(),
        "create answered {status} {}; live after the revoke-all: {live:#?}",
        String::from_utf8_lossy(&body)
    );
}

/// `MemoryStore`: rotations racing revoke-alls of the same owner on two threads, many times
/// over; a rotation either fails or its copy is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_a_rotation_racing_revoke_all_never_leaves_a_live_copy() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let team = Owner::new("team-1").unwrap();
    for round in 0..300 {
        let old = verifier
            .issuer()
            .issue(NewToken::new("old", team.clone()))
            .await
            .unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let rotate = {
            let (verifier, barrier) = (verifier.clone(), barrier.clone());
            let id = old.record.id;
            tokio::task::spawn_blocking(move || {
                barrier.wait();
                futures_lite_block_on(verifier.issuer().rotate(&id, TimeDelta::hours(1)))
            })
        };
        let revoke = {
            let (verifier, barrier, team) = (verifier.clone(), barrier.clone(), team.clone());
            tokio::task::spawn_blocking(move || {
                barrier.wait();
                futures_lite_block_on(verifier.store().revoke_owner(&team, verifier.now()))
            })
        };
        revoke.await.unwrap().unwrap();
        match rotate.await.unwrap() {
            Ok(new) => assert!(
                verifier
                    .authenticate(new.token.expose_secret())
                    .await
                    .is_err(),
                "round {round}: the rotated copy outlived the revoke-all"
            ),
            Err(apitoken::IssueError::NotFound) => {}
            Err(e) => panic!("round {round}: {e:?}"),
        }
        let live: Vec<TokenRecord> = verifier
            .store()
            .list_by_owner(&team)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| !r.is_revoked())
            .collect();
        assert!(live.is_empty(), "round {round}: {live:#?}");
    }
}

/// Runs a future that never waits on I/O (the `MemoryStore`'s are ready at once) to
/// completion on this thread.
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}
