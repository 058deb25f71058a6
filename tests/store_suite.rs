//! One suite, run against every store: memory, SQLite, PostgreSQL, and Sanctum's table on
//! PostgreSQL and SQLite. The stores cannot drift apart without one of these failing.
//!
//! PostgreSQL runs when `APITOKEN_TEST_POSTGRES_URL` is set (`.ci/run` sets it); otherwise
//! those tests print "skipped: …" and pass.

#[path = "support/stores.rs"]
mod stores;

use apitoken::{
    AuthErrorKind, NewToken, Owner, ScopePolicy, ScopeRequirement, ScopeSet, SecretHasher,
    StoreErrorKind, TokenFormat, TokenId, TokenRecord, TokenStore, Verifier,
};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

/// How a store legitimately differs from the others.
#[derive(Clone, Copy)]
struct Traits {
    /// Revocation deletes the record (Sanctum) instead of setting `revoked_at`.
    revoke_deletes: bool,
    /// The store keeps metadata (Sanctum has no column for it).
    keeps_metadata: bool,
    /// Ids must be numeric, and owners `type:id` (Sanctum).
    sanctum: bool,
}

const OWN: Traits = Traits {
    revoke_deletes: false,
    keeps_metadata: true,
    sanctum: false,
};
const SANCTUM: Traits = Traits {
    revoke_deletes: true,
    keeps_metadata: false,
    sanctum: true,
};

fn owner(t: Traits, n: u32) -> Owner {
    let text = if t.sanctum {
        format!("App\\Models\\User:{n}")
    } else {
        format!("team-{n}")
    };
    Owner::new(&text).unwrap()
}

/// Whole seconds: every store keeps at least that precision (Sanctum keeps no more).
fn at(second: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_780_000_000 + second, 0).unwrap()
}

fn hash(n: u64) -> apitoken::SecretHash {
    SecretHasher::sha256().hash(format!("secret number {n}").as_bytes())
}

async fn new_record<S: TokenStore>(store: &S, t: Traits, who: u32, created: i64) -> TokenRecord {
    let id = store.next_id().await.expect("next_id");
    let mut record = TokenRecord::new(id, owner(t, who), format!("token {id}"), at(created));
    record.scopes = ScopeSet::parse("vps:read storage:delete").unwrap();
    record.expires_at = Some(at(10_000));
    if t.keeps_metadata {
        record.metadata.insert("env".into(), "prod".into());
    }
    if !t.sanctum {
        record.allowed_ips = vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
    }
    record
}

async fn suite<S: TokenStore + 'static>(store: S, t: Traits) {
    // next_id hands out distinct ids.
    let a = store.next_id().await.unwrap();
    let b = store.next_id().await.unwrap();
    assert_ne!(a, b, "next_id repeated itself");

    // Insert, then read back by id and by hash: the same record.
    let first = new_record(&store, t, 1, 0).await;
    store.insert(first.clone(), hash(1)).await.unwrap();
    let by_id = store
        .get(&first.id)
        .await
        .unwrap()
        .expect("inserted record");
    assert_eq!(*by_id.record, first, "get returned a different record");
    assert_eq!(by_id.hash, hash(1));
    let by_hash = store
        .find_by_hash(&hash(1))
        .await
        .unwrap()
        .expect("by hash");
    assert_eq!(by_hash.record, by_id.record);
    assert!(store.find_by_hash(&hash(999)).await.unwrap().is_none());
    assert!(
        store
            .get(&TokenId::from_u64(9_999_999))
            .await
            .unwrap()
            .is_none()
    );

    // Duplicates are conflicts, and leave nothing behind.
    let mut same_id = first.clone();
    same_id.name = "dup".into();
    let err = store.insert(same_id, hash(2)).await.unwrap_err();
    assert_eq!(
        err.kind(),
        StoreErrorKind::Conflict,
        "duplicate id: {err:?}"
    );
    let other = new_record(&store, t, 1, 1).await;
    let err = store.insert(other.clone(), hash(1)).await.unwrap_err();
    assert_eq!(
        err.kind(),
        StoreErrorKind::Conflict,
        "duplicate hash: {err:?}"
    );
    assert!(store.get(&other.id).await.unwrap().is_none());

    // Listing by owner: only that owner's, oldest first.
    let second = new_record(&store, t, 1, 5).await;
    store.insert(second.clone(), hash(3)).await.unwrap();
    let elsewhere = new_record(&store, t, 2, 3).await;
    store.insert(elsewhere.clone(), hash(4)).await.unwrap();
    let listed = store.list_by_owner(&owner(t, 1)).await.unwrap();
    let ids: Vec<TokenId> = listed.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![first.id, second.id]);
    assert!(store.list_by_owner(&owner(t, 77)).await.unwrap().is_empty());

    // Last use moves forward only, one by one and in batches.
    store.record_last_used(&first.id, at(100)).await.unwrap();
    store.record_last_used(&first.id, at(50)).await.unwrap();
    let got = store.get(&first.id).await.unwrap().unwrap();
    assert_eq!(got.record.last_used_at, Some(at(100)));
    store
        .record_last_used_batch(&[
            (first.id, at(90)),
            (second.id, at(200)),
            (second.id, at(150)),
            (TokenId::from_u64(8_888_888), at(1)),
        ])
        .await
        .unwrap();
    assert_eq!(
        store
            .get(&first.id)
            .await
            .unwrap()
            .unwrap()
            .record
            .last_used_at,
        Some(at(100))
    );
    assert_eq!(
        store
            .get(&second.id)
            .await
            .unwrap()
            .unwrap()
            .record
            .last_used_at,
        Some(at(200))
    );
    store.record_last_used_batch(&[]).await.unwrap();

    // Revocation: once, then gone or marked.
    assert!(store.revoke(&first.id, at(300)).await.unwrap());
    assert!(!store.revoke(&first.id, at(301)).await.unwrap());
    assert!(
        !store
            .revoke(&TokenId::from_u64(7_777_777), at(300))
            .await
            .unwrap()
    );
    let after = store.get(&first.id).await.unwrap();
    if t.revoke_deletes {
        assert!(after.is_none(), "Sanctum deletes revoked tokens");
    } else {
        assert_eq!(after.unwrap().record.revoked_at, Some(at(300)));
    }

    // Owner-wide revocation reaches that owner only.
    let third = new_record(&store, t, 1, 6).await;
    store.insert(third.clone(), hash(5)).await.unwrap();
    assert_eq!(store.revoke_owner(&owner(t, 1), at(400)).await.unwrap(), 2);
    assert_eq!(store.revoke_owner(&owner(t, 1), at(401)).await.unwrap(), 0);
    let untouched = store.get(&elsewhere.id).await.unwrap().unwrap();
    assert!(!untouched.record.is_revoked());

    if !t.sanctum {
        // Ids compare byte for byte: case matters.
        let mut mixed =
            TokenRecord::new("AbCdEfGh1234".parse().unwrap(), owner(t, 3), "mixed", at(0));
        mixed.scopes = ScopeSet::new();
        store.insert(mixed, hash(6)).await.unwrap();
        assert!(
            store
                .get(&"abcdefgh1234".parse().unwrap())
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .get(&"AbCdEfGh1234".parse().unwrap())
                .await
                .unwrap()
                .is_some()
        );
    }

    if !t.sanctum {
        // Expired records carrying the marker go; unexpired or unmarked ones stay.
        let make = |n: u32, expires: i64, marked: bool| {
            let mut record = TokenRecord::new(
                format!("purge{n}").parse().unwrap(),
                owner(t, 4),
                "purge",
                at(0),
            );
            record.expires_at = Some(at(expires));
            if marked {
                record
                    .metadata
                    .insert("oauth".into(), serde_json::json!({"kind": "access_token"}));
            }
            record
        };
        let cases = [
            (1, 100, true),
            (2, 200, true),
            (3, 300, true),
            (4, 100, false),
        ];
        for (n, expires, marked) in cases {
            store
                .insert(make(n, expires, marked), hash(100 + u64::from(n)))
                .await
                .unwrap();
        }
        assert_eq!(store.remove_expired(at(200), "oauth").await.unwrap(), 2);
        for (n, gone) in [(1, true), (2, true), (3, false), (4, false)] {
            let found = store
                .get(&format!("purge{n}").parse().unwrap())
                .await
                .unwrap();
            assert_eq!(found.is_none(), gone, "purge{n}");
        }
        assert_eq!(store.remove_expired(at(200), "oauth").await.unwrap(), 0);
        assert_eq!(
            store
                .remove_expired(at(1000), "not a plain name")
                .await
                .unwrap(),
            0
        );
    }

    verifier_round_trip(store, t).await;
}

/// Issue, verify, refuse a missing scope, revoke, refuse: through the verifier.
async fn verifier_round_trip<S: TokenStore + 'static>(store: S, t: Traits) {
    let format = if t.sanctum {
        TokenFormat::sanctum()
    } else {
        TokenFormat::canonical()
    };
    let policy = if t.sanctum {
        ScopePolicy::sanctum()
    } else {
        ScopePolicy::strict()
    };
    let verifier = Verifier::builder(store)
        .format(format)
        .scope_policy(policy)
        .build();
    let issued = verifier
        .issuer()
        .issue(
            NewToken::new("round trip", owner(t, 9))
                .scopes(["vps:read"])
                .unwrap(),
        )
        .await
        .expect("issue");
    let token = issued.token.expose_secret();
    let read = ScopeRequirement::all(["vps:read"]).unwrap();
    let write = ScopeRequirement::all(["vps:write"]).unwrap();
    let principal = verifier.verify(token, &read).await.expect("verify");
    assert_eq!(principal.owner(), &owner(t, 9));
    let err = verifier.verify(token, &write).await.unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InsufficientScope);
    assert!(
        verifier
            .store()
            .revoke(&issued.record.id, verifier.now())
            .await
            .unwrap()
    );
    let err = verifier.verify(token, &read).await.unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
}

#[tokio::test]
async fn memory_store() {
    suite(stores::memory(), OWN).await;
}

#[tokio::test]
async fn sqlite_store() {
    suite(stores::sqlite().await, OWN).await;
}

#[tokio::test]
async fn postgres_store() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    suite(stores::postgres(&url).await, OWN).await;
}

#[tokio::test]
async fn sanctum_store_on_sqlite() {
    suite(stores::sanctum_sqlite().await.store, SANCTUM).await;
}

#[tokio::test]
async fn sanctum_store_on_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    suite(stores::sanctum_postgres(&url).await.store, SANCTUM).await;
}

#[tokio::test]
async fn migrations_can_run_twice_and_concurrently() {
    let sqlite = stores::sqlite().await;
    sqlite.migrate().await.unwrap();
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let store = stores::postgres(&url).await;
    let (a, b) = tokio::join!(store.migrate(), store.clone().migrate_owned());
    a.unwrap();
    b.unwrap();
}

trait MigrateOwned {
    async fn migrate_owned(self) -> Result<(), apitoken::StoreError>;
}

impl MigrateOwned for apitoken::PostgresStore {
    async fn migrate_owned(self) -> Result<(), apitoken::StoreError> {
        self.migrate().await
    }
}

#[tokio::test]
async fn invalid_names_are_refused() {
    let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
    assert!(
        apitoken::PostgresStore::builder(pool.clone())
            .schema("x; drop table y")
            .is_err()
    );
    assert!(
        apitoken::SanctumStore::postgres(pool)
            .table("Bad Name")
            .is_err()
    );
    let _ = TimeDelta::zero();
}
