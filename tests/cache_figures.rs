//! The review's figures for `CachedStore` under load, measured in real time (so ignored by
//! default; the deterministic assertions are in `tests/cache_load.rs`):
//!
//! ```text
//! cargo test --release --test cache_figures -- --ignored --nocapture
//! ```
//!
//! One hot token, 200 ms TTL, a store answering in 2 ms, verified in a loop for 3 s, without
//! and with an invalidation of some other id every 0.5 ms; and 500 concurrent lookups of one
//! uncached id. Only the public API of 0.1 is used, so the same file measures older versions.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apitoken::{
    CachedStore, MemoryStore, Owner, SecretHash, SecretHasher, StoreError, StoredToken, TokenId,
    TokenRecord, TokenStore,
};
use chrono::{DateTime, Utc};

/// A store that answers every lookup 2 ms later, and counts them.
#[derive(Default)]
struct SlowStore {
    inner: MemoryStore,
    lookups: AtomicUsize,
}

impl TokenStore for SlowStore {
    fn insert(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.insert(record, hash)
    }

    async fn get(&self, id: &TokenId) -> Result<Option<StoredToken>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = self.inner.get(id).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        answer
    }

    async fn find_by_hash(&self, hash: &SecretHash) -> Result<Option<StoredToken>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = self.inner.find_by_hash(hash).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
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

    fn record_last_used(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.record_last_used(id, at)
    }
}

async fn hot_token_for_3_s(invalidate_others: bool) -> usize {
    let store = Arc::new(
        CachedStore::builder(SlowStore::default())
            .ttl(Duration::from_millis(200))
            .build(),
    );
    let hot = TokenId::from_u64(1);
    let record = TokenRecord::new(hot, Owner::new("team-1").unwrap(), "hot", Utc::now());
    store
        .insert(record, SecretHasher::sha256().hash(b"hot"))
        .await
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let storm = invalidate_others.then(|| {
        let invalidator = store.invalidator();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_micros(500));
            let mut other = 1_000u64;
            while !done.load(Ordering::SeqCst) {
                every.tick().await;
                other += 1;
                invalidator.invalidate(&TokenId::from_u64(other));
            }
            other - 1_000
        })
    });
    let started = Instant::now();
    let mut verifications = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        assert!(store.get(&hot).await.unwrap().is_some());
        verifications += 1;
        tokio::task::yield_now().await;
    }
    done.store(true, Ordering::SeqCst);
    let invalidations = match storm {
        Some(storm) => storm.await.unwrap(),
        None => 0,
    };
    let lookups = store.inner().lookups.load(Ordering::SeqCst);
    eprintln!(
        "hot token 3 s, {invalidations} invalidations of other ids: {lookups} store lookups \
         for {verifications} verifications"
    );
    lookups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real time (6 s): run with --ignored --nocapture for the figures"]
async fn figures() {
    let quiet = hot_token_for_3_s(false).await;
    let storm = hot_token_for_3_s(true).await;

    let store = Arc::new(CachedStore::new(SlowStore::default()));
    let id = TokenId::from_u64(1);
    let record = TokenRecord::new(id, Owner::new("team-1").unwrap(), "cold", Utc::now());
    store
        .insert(record, SecretHasher::sha256().hash(b"cold"))
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(500));
    let lookups: Vec<_> = (0..500)
        .map(|_| {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                store.get(&id).await.unwrap().unwrap();
            })
        })
        .collect();
    for lookup in lookups {
        lookup.await.unwrap();
    }
    let burst = store.inner().lookups.load(Ordering::SeqCst);
    eprintln!("500 concurrent lookups of one uncached id: {burst} store lookups");
    eprintln!("figures: quiet {quiet}, storm {storm}, burst {burst}");
}
