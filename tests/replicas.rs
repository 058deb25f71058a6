//! Several replicas on one PostgreSQL database, each with its own pool and its own
//! verification cache: a revoke through one is refused by every other within 100 ms, not
//! after the cache's TTL, and one missed while a replica's listener was disconnected is
//! refused once the listener is back. Needs `APITOKEN_TEST_POSTGRES_URL`.

#[path = "support/stores.rs"]
mod stores;

use std::time::{Duration, Instant};

use apitoken::{
    AuthErrorKind, CachedStore, NewToken, Owner, PostgresStore, RejectReason, ScopeRequirement,
    TokenId, TokenStore, Verifier,
};

async fn replica(url: &str, schema: &str) -> Verifier<CachedStore<PostgresStore>> {
    let verifier = quiet_replica(url, schema).await;
    let _listener = verifier.store().spawn_change_listener();
    verifier
}

/// A replica without a change listener: it hears of no other replica's changes.
async fn quiet_replica(url: &str, schema: &str) -> Verifier<CachedStore<PostgresStore>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect(url)
        .await
        .expect("PostgreSQL");
    let store = stores::postgres_on(pool, schema).await;
    // A TTL far beyond the test: only the notification can explain a prompt refusal.
    let cached = CachedStore::builder(store)
        .ttl(Duration::from_secs(600))
        .negative_ttl(Duration::from_secs(600))
        .build();
    Verifier::builder(cached).build()
}

#[tokio::test]
async fn a_revoke_on_one_replica_is_refused_by_the_other_within_100_ms() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let schema = stores::unique_name("replicas");
    let a = replica(&url, &schema).await;
    let b = replica(&url, &schema).await;
    // Let both listeners subscribe.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let issued = a
        .issuer()
        .issue(
            NewToken::new("svc", Owner::new("team-1").unwrap())
                .scopes(["vps:read"])
                .unwrap(),
        )
        .await
        .unwrap();
    let token = issued.token.expose_secret();
    let need = ScopeRequirement::all(["vps:read"]).unwrap();

    // B caches the record (a hit is served from memory from now on).
    b.verify(token, &need).await.expect("B verifies");
    b.verify(token, &need)
        .await
        .expect("B verifies from its cache");

    assert!(a.store().revoke(&issued.record.id, a.now()).await.unwrap());
    let revoked_at = Instant::now();
    loop {
        match b.verify(token, &need).await {
            Err(err) => {
                assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
                assert_eq!(err.reason(), Some(RejectReason::Revoked));
                break;
            }
            Ok(_) => {
                assert!(
                    revoked_at.elapsed() < Duration::from_millis(100),
                    "B still accepted the token {:?} after A revoked it",
                    revoked_at.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    let latency = revoked_at.elapsed();
    eprintln!("cross-replica revocation took {latency:?}");

    // A token issued on A after B cached a miss for its id is seen by B at once, too.
    let next = a.store().next_id().await.unwrap();
    assert!(b.store().get(&next).await.unwrap().is_none()); // B caches the miss
    let mut record =
        apitoken::TokenRecord::new(next, Owner::new("team-1").unwrap(), "late", a.now());
    record.scopes = apitoken::ScopeSet::parse("vps:read").unwrap();
    let hash = apitoken::SecretHasher::sha256().hash(b"late token secret");
    a.store().insert(record, hash).await.unwrap();
    let started = Instant::now();
    loop {
        if b.store().get(&next).await.unwrap().is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "B kept its cached miss"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A schema name at `len` bytes: the unique name, padded with `x` or cut to length.
fn schema_of_len(len: usize) -> String {
    let mut name = stores::unique_name("s");
    name.truncate(len);
    while name.len() < len {
        name.push('x');
    }
    name
}

#[tokio::test]
async fn schema_names_up_to_the_longest_allowed_keep_writes_and_notifications_working() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    // 46 bytes is the longest whose channel `apitoken_changes_{schema}` fits PostgreSQL's
    // 63-byte identifiers; 47 and 48 (the longest a schema may be here) used to break every
    // write that notifies.
    for len in [46, 47, 48] {
        let schema = schema_of_len(len);
        let a = replica(&url, &schema).await;
        let b = replica(&url, &schema).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let issued = a
            .issuer()
            .issue(NewToken::new("svc", Owner::new("team-1").unwrap()))
            .await
            .unwrap_or_else(|err| panic!("issue with a {len}-byte schema: {err}"));
        let token = issued.token.expose_secret();
        b.authenticate(token).await.expect("B caches the token");
        assert!(
            a.store().revoke(&issued.record.id, a.now()).await.unwrap(),
            "revoke with a {len}-byte schema"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.authenticate(token).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "B never heard of the revocation with a {len}-byte schema"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            a.store()
                .revoke_owner(&Owner::new("team-1").unwrap(), a.now())
                .await
                .unwrap(),
            0
        );
    }
}

/// Polls `check` every 10 ms until it gives `Some`, for at most `limit`.
async fn poll<T>(limit: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The backends listening on `channel`: those whose last statement was its `LISTEN`.
async fn listeners(admin: &sqlx::PgPool, channel: &str) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE pid <> pg_backend_pid() AND query LIKE 'LISTEN %' AND position($1 in query) > 0",
    )
    .bind(format!("\"{channel}\""))
    .fetch_all(admin)
    .await
    .expect("pg_stat_activity")
}

async fn backend_alive(admin: &sqlx::PgPool, pid: i32) -> bool {
    sqlx::query_scalar("SELECT count(*) > 0 FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(admin)
        .await
        .expect("pg_stat_activity")
}

#[tokio::test]
async fn a_revoke_missed_while_the_listener_was_down_is_refused_once_it_is_back() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let schema = stores::unique_name("relisten");
    let channel = format!("apitoken_changes_{schema}");
    let admin = sqlx::PgPool::connect(&url).await.expect("PostgreSQL");
    // Only B listens, so every LISTEN on this schema's channel is B's.
    let a = quiet_replica(&url, &schema).await;
    let b = replica(&url, &schema).await;
    let need = ScopeRequirement::all(["vps:read"]).unwrap();
    let wait = Duration::from_secs(5);

    // The listener pauses a second before it reconnects; should this machine be so slow that
    // it is back before the revoke below, the NOTIFY was not missed and the attempt proves
    // nothing: try again.
    for attempt in 1..=3 {
        let issued = a
            .issuer()
            .issue(
                NewToken::new("svc", Owner::new("team-1").unwrap())
                    .scopes(["vps:read"])
                    .unwrap(),
            )
            .await
            .unwrap();
        let token = issued.token.expose_secret();

        let listening = poll(wait, async || {
            Some(listeners(&admin, &channel).await).filter(|l| !l.is_empty())
        })
        .await
        .expect("B listens");
        assert_eq!(listening.len(), 1, "one listener, B's: {listening:?}");
        let killed = listening[0];
        b.verify(token, &need).await.expect("B verifies");
        // A cached miss for an id nobody issues: only a clear of the whole cache removes it.
        let nobody = TokenId::new(&format!("nobody{attempt:06}")).unwrap();
        assert!(b.store().get(&nobody).await.unwrap().is_none());
        assert!(!b.store().is_empty());
        let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(killed)
            .fetch_one(&admin)
            .await
            .unwrap();
        assert!(terminated);
        poll(wait, async || {
            (!backend_alive(&admin, killed).await).then_some(())
        })
        .await
        .expect("the LISTEN backend ends");
        // A listener that also emptied the cache when it noticed the loss (this one no longer
        // does: it clears once, when it listens again) would drop what B caches next; give
        // such a one its moment (if it never does, the check below sees that B still serves
        // the entry, which is all this needs).
        let _ = poll(Duration::from_millis(500), async || {
            b.store().is_empty().then_some(())
        })
        .await;

        // B caches the token while nobody listens; A revokes it, and the NOTIFY goes nowhere.
        b.verify(token, &need).await.expect("B verifies");
        assert!(a.store().revoke(&issued.record.id, a.now()).await.unwrap());
        let missed = listeners(&admin, &channel).await.is_empty();
        let stale = b.verify(token, &need).await.is_ok();
        if !(missed && stale) {
            eprintln!(
                "attempt {attempt} proves nothing: NOTIFY missed {missed}, B still served its \
                 cached entry {stale}"
            );
            continue;
        }

        // Once B's listener is back, the entry it cached before is gone: B asks the database.
        let revoked_at = Instant::now();
        let refused = poll(wait, async || b.verify(token, &need).await.err()).await;
        let back = listeners(&admin, &channel).await;
        let err = refused.unwrap_or_else(|| {
            panic!(
                "B still accepts the token {:?} after the revoke; listening again: {back:?}",
                revoked_at.elapsed()
            )
        });
        assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
        assert_eq!(err.reason(), Some(RejectReason::Revoked));
        assert!(!back.is_empty() && !back.contains(&killed), "{back:?}");
        eprintln!(
            "attempt {attempt}: refused {:?} after the missed revoke",
            revoked_at.elapsed()
        );
        return;
    }
    panic!("three attempts: B's listener was back before the revoke every time");
}
