//! Several replicas on one PostgreSQL database, each with its own pool and its own
//! verification cache: a revoke through one is refused by every other within 100 ms, not
//! after the cache's TTL. Needs `APITOKEN_TEST_POSTGRES_URL`.

#[path = "support/stores.rs"]
mod stores;

use std::time::{Duration, Instant};

use apitoken::{
    AuthErrorKind, CachedStore, NewToken, Owner, PostgresStore, RejectReason, ScopeRequirement,
    TokenStore, Verifier,
};

async fn replica(url: &str, schema: &str) -> Verifier<CachedStore<PostgresStore>> {
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
    let _listener = cached.spawn_change_listener();
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
