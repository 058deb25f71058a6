//! The PostgreSQL change listener reports `StoreChange::Unknown` (which clears a cache) once
//! per (re)connection: not also when the connection drops, and not once a second while the
//! database is unreachable. The reconnect test needs `APITOKEN_TEST_POSTGRES_URL`.

#[path = "support/stores.rs"]
mod stores;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apitoken::{Owner, PostgresStore, SecretHasher, StoreChange, TokenId, TokenRecord, TokenStore};
use chrono::Utc;
use tokio::sync::mpsc;

/// Waits, polling, until `done` holds; panics after 10 seconds.
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The backend of the listener on `channel` (its last statement was the `LISTEN`).
async fn listener_pid(pool: &sqlx::PgPool, channel: &str) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN%' AND query LIKE $1 AND state = 'idle' AND pid <> pg_backend_pid()",
    )
    .bind(format!("%\"{channel}\"%"))
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_reconnect_reports_unknown_once() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect(&url)
        .await
        .expect("PostgreSQL");
    let schema = stores::unique_name("relisten");
    let store = stores::postgres_on(pool.clone(), &schema).await;
    let channel = format!("apitoken_changes_{schema}");

    let unknowns = Arc::new(AtomicUsize::new(0));
    let (changed, mut changes) = mpsc::unbounded_channel();
    let listener = {
        let unknowns = Arc::clone(&unknowns);
        store.spawn_change_listener(move |change| match change {
            StoreChange::Token(id) => changed.send(id).unwrap(),
            _ => {
                unknowns.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let first = {
        let mut pid = None;
        until("the listener", async || {
            pid = listener_pid(&pool, &channel).await;
            pid.is_some()
        })
        .await;
        pid.unwrap()
    };
    // Listening: the one report of the first connection is in.
    assert_eq!(unknowns.load(Ordering::SeqCst), 1);

    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(killed);
    until("the listener to reconnect", async || {
        listener_pid(&pool, &channel)
            .await
            .is_some_and(|pid| pid != first)
    })
    .await;
    // Notifications flow again after the reconnect's report. `pg_stat_activity` can show the
    // new backend's `LISTEN` a moment before the listener reads from it, so a change is sent
    // every 200 ms until one arrives (bounded), rather than once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 7;
    let notified = loop {
        let id = TokenId::from_u64(n);
        let record = TokenRecord::new(id, Owner::new("team-1").unwrap(), "t", Utc::now());
        store
            .insert(
                record,
                SecretHasher::sha256().hash(format!("secret {n}").as_bytes()),
            )
            .await
            .unwrap();
        if let Ok(got) = tokio::time::timeout(Duration::from_millis(200), changes.recv()).await {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "no notification after the reconnect"
        );
        n += 1;
    };
    assert!(notified.is_some_and(|id| id.as_u64().is_some_and(|v| v >= 7)));

    // One report for the first connection, one for the reconnect (was three: the drop too).
    assert_eq!(unknowns.load(Ordering::SeqCst), 2);
    listener.abort();
}

#[tokio::test]
async fn an_unreachable_database_reports_nothing() {
    // Nothing listens on port 1: every connection attempt fails at once.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let store = PostgresStore::builder(pool).build();
    let unknowns = Arc::new(AtomicUsize::new(0));
    let listener = {
        let unknowns = Arc::clone(&unknowns);
        store.spawn_change_listener(move |_| {
            unknowns.fetch_add(1, Ordering::SeqCst);
        })
    };
    // Three attempts (at 0, 1 and 2 seconds): each used to report `Unknown`, clearing the
    // cache that was meant to keep answering through the outage.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(unknowns.load(Ordering::SeqCst), 0);
    listener.abort();
}
