//! `CachedStore` under a verifier: lookups saved, revocation immediate through the cache and
//! through the invalidator, bounded by the TTL otherwise; expiry still by the verifier's clock;
//! misses, errors, capacity and last use.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use apitoken::{
    AuthErrorKind, CacheInvalidator, CachedStore, IdKind, IssuedToken, ManualClock, MemoryStore,
    NewToken, Owner, RejectReason, SecretHash, SecretHasher, StoreError, StoredToken, TokenFormat,
    TokenId, TokenRecord, TokenStore, Verifier,
};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

// ---------------------------------------------------------------------------------------------
// A store that counts lookups and writes, and can be told to fail
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct CountingStore {
    inner: MemoryStore,
    gets: AtomicUsize,
    finds: AtomicUsize,
    last_used_writes: AtomicUsize,
    /// How many of the next lookups fail with `Unavailable`.
    failing_lookups: AtomicUsize,
    /// Whether a lookup waits a millisecond between reading and answering, as a remote store
    /// does, leaving room for a write to land in between.
    slow_lookups: AtomicBool,
}

impl CountingStore {
    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    fn finds(&self) -> usize {
        self.finds.load(Ordering::SeqCst)
    }

    fn last_used_writes(&self) -> usize {
        self.last_used_writes.load(Ordering::SeqCst)
    }

    fn fail_next_lookups(&self, n: usize) {
        self.failing_lookups.store(n, Ordering::SeqCst);
    }

    fn lookup_fails(&self) -> bool {
        self.failing_lookups
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    async fn answer_later(&self) {
        if self.slow_lookups.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn down() -> StoreError {
        StoreError::unavailable(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ))
    }
}

impl TokenStore for CountingStore {
    fn insert(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.insert(record, hash)
    }

    fn next_id(&self) -> impl Future<Output = Result<TokenId, StoreError>> + Send {
        self.inner.next_id()
    }

    async fn get(&self, id: &TokenId) -> Result<Option<StoredToken>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        if self.lookup_fails() {
            return Err(Self::down());
        }
        let answer = self.inner.get(id).await;
        self.answer_later().await;
        answer
    }

    async fn find_by_hash(&self, hash: &SecretHash) -> Result<Option<StoredToken>, StoreError> {
        self.finds.fetch_add(1, Ordering::SeqCst);
        if self.lookup_fails() {
            return Err(Self::down());
        }
        let answer = self.inner.find_by_hash(hash).await;
        self.answer_later().await;
        answer
    }

    fn list_by_owner(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
        self.inner.list_by_owner(owner)
    }

    fn revoke(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.inner.revoke(id, at)
    }

    fn revoke_owner(
        &self,
        owner: &Owner,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        self.inner.revoke_owner(owner, at)
    }

    async fn record_last_used(&self, id: &TokenId, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.last_used_writes.fetch_add(1, Ordering::SeqCst);
        self.inner.record_last_used(id, at).await
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

type Database = Arc<CountingStore>;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn owner(text: &str) -> Owner {
    Owner::new(text).unwrap()
}

/// A format with no id in the token: verification goes through `find_by_hash`.
fn id_less() -> TokenFormat {
    TokenFormat::builder()
        .prefix("tk_live_")
        .id(IdKind::None)
        .build()
        .unwrap()
}

/// One replica: a verifier over a cache over the shared database.
fn replica(database: &Database, ttl: Duration) -> Verifier<CachedStore<Database>> {
    Verifier::builder(CachedStore::builder(Arc::clone(database)).ttl(ttl).build()).build()
}

async fn issue<S: TokenStore>(verifier: &Verifier<S>, team: &str) -> IssuedToken {
    verifier
        .issuer()
        .issue(NewToken::new("test token", owner(team)))
        .await
        .unwrap()
}

async fn refused_because<S: TokenStore>(verifier: &Verifier<S>, token: &str) -> RejectReason {
    let err = verifier.authenticate(token).await.unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    err.reason().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Lookups saved
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_hot_token_costs_one_store_lookup_per_thousand_verifications() {
    let database = Database::default();
    let verifier = replica(&database, Duration::from_secs(60));
    let issued = issue(&verifier, "team-1").await;
    let token = issued.token.expose_secret();

    for _ in 0..1_000 {
        verifier.authenticate(token).await.unwrap();
    }
    assert_eq!(database.gets(), 1);
    // Last use is buffered: no write until the flush, then one.
    assert_eq!(database.last_used_writes(), 0);
    assert_eq!(verifier.flush_last_used().await.unwrap(), 1);
    assert_eq!(database.last_used_writes(), 1);

    // Without the cache, every verification is a lookup.
    let uncached = Verifier::builder(CountingStore::default()).build();
    let issued = issue(&uncached, "team-1").await;
    for _ in 0..1_000 {
        uncached
            .authenticate(issued.token.expose_secret())
            .await
            .unwrap();
    }
    assert_eq!(uncached.store().gets(), 1_000);
}

#[tokio::test]
async fn a_hot_id_less_token_costs_one_store_lookup_per_thousand_verifications() {
    let database = Database::default();
    let verifier = Verifier::builder(CachedStore::new(Arc::clone(&database)))
        .format(id_less())
        .build();
    let issued = issue(&verifier, "team-1").await;
    for _ in 0..1_000 {
        verifier
            .authenticate(issued.token.expose_secret())
            .await
            .unwrap();
    }
    assert_eq!(database.finds(), 1);
    assert_eq!(database.gets(), 0);
}

#[tokio::test]
async fn last_use_moves_the_cached_record_forward_without_a_lookup() {
    let database = Database::default();
    let clock = Arc::new(ManualClock::new(t0()));
    let verifier = Verifier::builder(CachedStore::new(Arc::clone(&database)))
        .clock(clock.clone())
        .build();
    let issued = issue(&verifier, "team-1").await;
    let token = issued.token.expose_secret();

    let first = verifier.authenticate(token).await.unwrap();
    assert_eq!(first.record().last_used_at, None);
    assert_eq!(database.last_used_writes(), 0);
    verifier.flush_last_used().await.unwrap();
    assert_eq!(database.last_used_writes(), 1);

    clock.advance(TimeDelta::seconds(30));
    let second = verifier.authenticate(token).await.unwrap();
    // The cached copy carries the write the flush made, without a lookup.
    assert_eq!(second.record().last_used_at, Some(t0()));

    clock.advance(TimeDelta::seconds(31));
    verifier.authenticate(token).await.unwrap();
    verifier.flush_last_used().await.unwrap();
    assert_eq!(database.last_used_writes(), 2);
    let third = verifier.authenticate(token).await.unwrap();
    assert_eq!(
        third.record().last_used_at,
        Some(t0() + TimeDelta::seconds(61))
    );
    // Recording last use dropped nothing: still the one lookup.
    assert_eq!(database.gets(), 1);

    // The batch form does the same, forward only.
    let store = verifier.store();
    let id = issued.record.id;
    let later = t0() + TimeDelta::hours(1);
    store
        .record_last_used_batch(&[(id, later), (TokenId::from_u64(999), later)])
        .await
        .unwrap();
    store.record_last_used(&id, t0()).await.unwrap();
    let cached = store.get(&id).await.unwrap().unwrap();
    assert_eq!(cached.record.last_used_at, Some(later));
    assert_eq!(database.gets(), 1);
}

// ---------------------------------------------------------------------------------------------
// Revocation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_revocation_through_the_cache_is_refused_on_the_next_request() {
    let verifier = Verifier::builder(CachedStore::new(MemoryStore::new())).build();
    let issued = issue(&verifier, "team-1").await;
    let token = issued.token.expose_secret();
    verifier.authenticate(token).await.unwrap();
    verifier.authenticate(token).await.unwrap();

    assert!(
        verifier
            .store()
            .revoke(&issued.record.id, verifier.now())
            .await
            .unwrap()
    );
    assert_eq!(
        refused_because(&verifier, token).await,
        RejectReason::Revoked
    );
}

#[tokio::test]
async fn a_revocation_through_the_cache_is_refused_on_the_next_request_by_hash() {
    let verifier = Verifier::builder(CachedStore::new(MemoryStore::new()))
        .format(id_less())
        .build();
    let issued = issue(&verifier, "team-1").await;
    let token = issued.token.expose_secret();
    verifier.authenticate(token).await.unwrap();

    verifier
        .store()
        .revoke(&issued.record.id, verifier.now())
        .await
        .unwrap();
    assert_eq!(
        refused_because(&verifier, token).await,
        RejectReason::Revoked
    );
}

#[tokio::test]
async fn revoking_an_owner_through_the_cache_drops_only_that_owners_records() {
    let database = Database::default();
    let verifier = replica(&database, Duration::from_secs(60));
    let a1 = issue(&verifier, "team-a").await;
    let a2 = issue(&verifier, "team-a").await;
    let b = issue(&verifier, "team-b").await;
    for issued in [&a1, &a2, &b] {
        verifier
            .authenticate(issued.token.expose_secret())
            .await
            .unwrap();
    }
    assert_eq!(database.gets(), 3);

    let revoked = verifier
        .store()
        .revoke_owner(&owner("team-a"), verifier.now())
        .await
        .unwrap();
    assert_eq!(revoked, 2);
    for issued in [&a1, &a2] {
        assert_eq!(
            refused_because(&verifier, issued.token.expose_secret()).await,
            RejectReason::Revoked
        );
    }
    verifier
        .authenticate(b.token.expose_secret())
        .await
        .unwrap();
    // team-a's two records were fetched again; team-b's stayed cached.
    assert_eq!(database.gets(), 5);
}

#[tokio::test]
async fn a_revocation_on_another_replica_is_seen_at_once_after_invalidate() {
    let database = Database::default();
    let here = replica(&database, Duration::from_secs(60));
    let elsewhere = CachedStore::new(Arc::clone(&database));
    let issued = issue(&here, "team-1").await;
    let token = issued.token.expose_secret();
    here.authenticate(token).await.unwrap();

    elsewhere
        .revoke(&issued.record.id, Utc::now())
        .await
        .unwrap();
    // Not told yet: the cached record is still served.
    here.authenticate(token).await.unwrap();
    assert_eq!(database.gets(), 1);

    here.store().invalidator().invalidate(&issued.record.id);
    assert_eq!(refused_because(&here, token).await, RejectReason::Revoked);
    assert_eq!(database.gets(), 2);
}

#[tokio::test]
async fn invalidating_an_id_drops_the_record_found_by_hash() {
    let database = Database::default();
    let here = Verifier::builder(CachedStore::new(Arc::clone(&database)))
        .format(id_less())
        .build();
    let elsewhere = CachedStore::new(Arc::clone(&database));
    let issued = issue(&here, "team-1").await;
    let token = issued.token.expose_secret();
    here.authenticate(token).await.unwrap();
    assert_eq!(database.finds(), 1);

    elsewhere
        .revoke(&issued.record.id, Utc::now())
        .await
        .unwrap();
    here.authenticate(token).await.unwrap();

    // The notification names the id; the token was cached under its hash.
    here.store().invalidator().invalidate(&issued.record.id);
    assert_eq!(refused_because(&here, token).await, RejectReason::Revoked);
    assert_eq!(database.finds(), 2);
}

#[tokio::test]
async fn invalidate_hash_and_invalidate_all_drop_cached_records() {
    let database = Database::default();
    let here = Verifier::builder(CachedStore::new(Arc::clone(&database)))
        .format(id_less())
        .build();
    let elsewhere = CachedStore::new(Arc::clone(&database));
    let first = issue(&here, "team-1").await;
    let second = issue(&here, "team-1").await;
    for issued in [&first, &second] {
        here.authenticate(issued.token.expose_secret())
            .await
            .unwrap();
    }
    elsewhere
        .revoke_owner(&owner("team-1"), Utc::now())
        .await
        .unwrap();

    let hash = database
        .inner
        .get(&first.record.id)
        .await
        .unwrap()
        .unwrap()
        .hash;
    here.store().invalidator().invalidate_hash(&hash);
    assert_eq!(
        refused_because(&here, first.token.expose_secret()).await,
        RejectReason::Revoked
    );
    here.authenticate(second.token.expose_secret())
        .await
        .unwrap();

    here.store().invalidator().invalidate_all();
    assert_eq!(
        refused_because(&here, second.token.expose_secret()).await,
        RejectReason::Revoked
    );
}

#[tokio::test]
async fn a_revocation_on_another_replica_is_seen_after_the_ttl_without_invalidate() {
    // Long enough that the check right after the revocation surely falls inside it on a busy
    // machine; short enough to wait out.
    const TTL: Duration = Duration::from_millis(250);
    let database = Database::default();
    let here = replica(&database, TTL);
    let elsewhere = CachedStore::new(Arc::clone(&database));
    let issued = issue(&here, "team-1").await;
    let token = issued.token.expose_secret();
    here.authenticate(token).await.unwrap();

    elsewhere
        .revoke(&issued.record.id, Utc::now())
        .await
        .unwrap();
    here.authenticate(token).await.unwrap();

    // An entry's age counts from before the lookup that filled it, so one TTL after the
    // revocation the entry is stale for certain.
    tokio::time::sleep(TTL + Duration::from_millis(20)).await;
    assert_eq!(refused_because(&here, token).await, RejectReason::Revoked);
    assert_eq!(database.gets(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_that_starts_after_a_revocation_is_refused() {
    // A churn task keeps dropping the token's entry until the revocation returns, so refills
    // (store reads) are in flight when it lands. A refill that read the record before the
    // revocation must not be served afterwards. Repeated: the interleaving differs per round.
    let database = Database::default();
    database.slow_lookups.store(true, Ordering::SeqCst);
    let verifier = replica(&database, Duration::from_secs(60));
    for _round in 0..20 {
        let issued = issue(&verifier, "team-1").await;
        let id = issued.record.id;
        let token = issued.token.expose_secret().to_owned();
        let revoked = Arc::new(AtomicBool::new(false));

        let churn = {
            let invalidator = verifier.store().invalidator();
            let revoked = Arc::clone(&revoked);
            tokio::spawn(async move {
                while !revoked.load(Ordering::SeqCst) {
                    invalidator.invalidate(&id);
                    tokio::task::yield_now().await;
                }
            })
        };
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let verifier = verifier.clone();
                let token = token.clone();
                let revoked = Arc::clone(&revoked);
                tokio::spawn(async move {
                    let mut refused_after = 0;
                    while refused_after < 20 {
                        let started_after_revocation = revoked.load(Ordering::SeqCst);
                        let result = verifier.authenticate(&token).await;
                        if started_after_revocation {
                            let err = result.expect_err("accepted after the revocation returned");
                            assert_eq!(err.reason(), Some(RejectReason::Revoked));
                            refused_after += 1;
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();

        tokio::time::sleep(Duration::from_millis(3)).await;
        verifier.store().revoke(&id, verifier.now()).await.unwrap();
        revoked.store(true, Ordering::SeqCst);
        churn.await.unwrap();
        for worker in workers {
            worker.await.unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Expiry stays with the verifier's clock
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_cached_record_expires_by_the_verifiers_clock() {
    let database = Database::default();
    let clock = Arc::new(ManualClock::new(t0()));
    let verifier = Verifier::builder(CachedStore::new(Arc::clone(&database)))
        .clock(clock.clone())
        .max_lifetime(TimeDelta::days(30))
        .build();
    let issued = verifier
        .issuer()
        .issue(NewToken::new("short", owner("team-1")).expires_in(TimeDelta::hours(1)))
        .await
        .unwrap();
    let token = issued.token.expose_secret();
    verifier.authenticate(token).await.unwrap();

    clock.advance(TimeDelta::minutes(59));
    verifier.authenticate(token).await.unwrap();
    clock.advance(TimeDelta::minutes(1));
    assert_eq!(
        refused_because(&verifier, token).await,
        RejectReason::Expired
    );
    // Refused from the cached record: the store was asked once.
    assert_eq!(database.gets(), 1);

    // The maximum lifetime is checked the same way.
    let forever = issue(&verifier, "team-1").await;
    verifier
        .authenticate(forever.token.expose_secret())
        .await
        .unwrap();
    clock.advance(TimeDelta::days(30));
    assert_eq!(
        refused_because(&verifier, forever.token.expose_secret()).await,
        RejectReason::LifetimeExceeded
    );
    assert_eq!(database.gets(), 2);
}

// ---------------------------------------------------------------------------------------------
// Misses
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_cached_miss_for_an_id_is_dropped_when_the_token_is_issued() {
    let database = Database::default();
    let verifier = Verifier::builder(CachedStore::new(Arc::clone(&database)))
        .format(TokenFormat::dct())
        .build();
    // DCT ids are sequential: the next token will be id 1. Look it up before it exists.
    let made_up = TokenFormat::dct()
        .generate(Some(&TokenId::from_u64(1)))
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            refused_because(&verifier, made_up.expose_secret()).await,
            RejectReason::UnknownToken
        );
    }
    assert_eq!(database.gets(), 1, "the miss was not cached");

    let issued = issue(&verifier, "team-1").await;
    assert_eq!(issued.record.id, TokenId::from_u64(1));
    verifier
        .authenticate(issued.token.expose_secret())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_cached_miss_for_a_hash_is_dropped_on_insert() {
    let database = Database::default();
    let store = CachedStore::new(Arc::clone(&database));
    let hash = SecretHasher::sha256().hash(b"a secret imported later");
    assert!(store.find_by_hash(&hash).await.unwrap().is_none());
    assert!(store.find_by_hash(&hash).await.unwrap().is_none());
    assert_eq!(database.finds(), 1);

    let id = store.next_id().await.unwrap();
    store
        .insert(
            TokenRecord::new(id, owner("team-1"), "imported", Utc::now()),
            hash,
        )
        .await
        .unwrap();
    let found = store.find_by_hash(&hash).await.unwrap().unwrap();
    assert_eq!(found.record.id, id);
}

#[tokio::test]
async fn misses_expire_after_the_negative_ttl() {
    const NEGATIVE_TTL: Duration = Duration::from_millis(50);
    let database = Database::default();
    let store = CachedStore::builder(Arc::clone(&database))
        .ttl(Duration::from_secs(60))
        .negative_ttl(NEGATIVE_TTL)
        .build();
    let id = TokenId::from_u64(1);
    assert!(store.get(&id).await.unwrap().is_none());

    // Issued elsewhere, with no notification.
    let record = TokenRecord::new(id, owner("team-1"), "elsewhere", Utc::now());
    database
        .insert(record, SecretHasher::sha256().hash(b"s"))
        .await
        .unwrap();
    tokio::time::sleep(NEGATIVE_TTL + Duration::from_millis(10)).await;
    assert!(store.get(&id).await.unwrap().is_some());
    assert_eq!(database.gets(), 2);
}

// ---------------------------------------------------------------------------------------------
// Errors, capacity, configuration
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn store_errors_are_not_cached() {
    let database = Database::default();
    let verifier = replica(&database, Duration::from_secs(60));
    let issued = issue(&verifier, "team-1").await;
    let token = issued.token.expose_secret();

    database.fail_next_lookups(1);
    let err = verifier.authenticate(token).await.unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable);
    verifier.authenticate(token).await.unwrap();
    verifier.authenticate(token).await.unwrap();
    assert_eq!(database.gets(), 2);

    // Nor for lookups that would have missed.
    let id = TokenId::from_u64(12345);
    database.fail_next_lookups(1);
    assert!(verifier.store().get(&id).await.is_err());
    assert!(verifier.store().get(&id).await.unwrap().is_none());
}

#[tokio::test]
async fn the_cache_never_holds_more_bytes_than_its_budget() {
    for capacity in [1, 10, 100, 1_000, 4_097, 10_000] {
        let database = Database::default();
        let store = CachedStore::builder(Arc::clone(&database))
            .capacity(capacity)
            .build();
        assert!(store.capacity() <= capacity);
        assert!(store.max_bytes() <= capacity as u64 * 512);
        let lookups = capacity as u64 * 3 + 500;
        for n in 0..lookups {
            store.get(&TokenId::from_u64(n)).await.unwrap();
            assert!(
                store.weight() <= store.max_bytes(),
                "{} > {capacity}",
                store.weight()
            );
        }
        // And it is used: nearly full after more distinct lookups than it holds (short of a
        // few entries per shard when the budget is small).
        let slack = if capacity < 100 { 512 * 8 } else { 0 };
        assert!(
            store.weight() >= (store.max_bytes() * 9 / 10).saturating_sub(slack),
            "{} of {}",
            store.weight(),
            store.max_bytes()
        );
        assert_eq!(database.gets() as u64, lookups);
    }

    // The defaults: 10,000 entries of 512 bytes, as close as the shard count allows.
    let store = CachedStore::new(MemoryStore::new());
    assert!((9_000..=10_000).contains(&store.capacity()));
    assert!((9_000 * 512..=10_000 * 512).contains(&store.max_bytes()));
}

#[tokio::test]
async fn a_zero_capacity_or_zero_ttl_caches_nothing() {
    let database = Database::default();
    let no_room = Verifier::builder(
        CachedStore::builder(Arc::clone(&database))
            .capacity(0)
            .build(),
    )
    .build();
    let issued = issue(&no_room, "team-1").await;
    for _ in 0..3 {
        no_room
            .authenticate(issued.token.expose_secret())
            .await
            .unwrap();
    }
    assert_eq!(database.gets(), 3);

    let no_time = replica(&database, Duration::ZERO);
    for _ in 0..3 {
        no_time
            .authenticate(issued.token.expose_secret())
            .await
            .unwrap();
    }
    assert_eq!(database.gets(), 6);
}

#[tokio::test]
async fn debug_output_shows_no_secret_and_no_hash() {
    let verifier = Verifier::builder(CachedStore::new(MemoryStore::new())).build();
    let issued = issue(&verifier, "team-1").await;
    let token = issued.token.expose_secret();
    verifier.authenticate(token).await.unwrap();
    let hash = verifier
        .store()
        .get(&issued.record.id)
        .await
        .unwrap()
        .unwrap()
        .hash;
    let secret = TokenFormat::canonical()
        .parse(token)
        .unwrap()
        .secret()
        .to_owned();

    let outputs = [
        format!("{:?}", verifier.store()),
        format!("{:?}", verifier.store().invalidator()),
        format!("{:?}", CachedStore::builder(MemoryStore::new())),
        format!("{verifier:?}"),
    ];
    for output in outputs {
        assert!(!output.contains(&secret), "{output}");
        assert!(!output.contains(&hash.to_hex()), "{output}");
    }
    assert!(format!("{:?}", verifier.store()).contains("len: 1"));
}

#[test]
fn the_invalidator_can_go_anywhere() {
    fn clone_send_sync_static<T: Clone + Send + Sync + 'static>() {}
    clone_send_sync_static::<CacheInvalidator>();
}
