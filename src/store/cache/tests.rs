//! The cache's unit tests: lookups overtaken by invalidations, fills across them, weights
//! and budgets.
//! Uses the token values and `crate::store` only, as the whole cache does.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use super::entries::{ENTRY_OVERHEAD, record_bytes};
use super::invalidate::Tag;
use super::*;
use crate::secret::SecretHasher;
use crate::store::MemoryStore;

/// A store whose next lookup, once armed, reads its answer and then waits to be released:
/// the window in which a revocation can overtake a lookup in flight.
#[derive(Default)]
struct PausingStore {
    inner: MemoryStore,
    pause_next_lookup: AtomicBool,
    answer_read: Notify,
    release: Notify,
}

impl PausingStore {
    async fn maybe_pause(&self) {
        if self.pause_next_lookup.swap(false, Ordering::SeqCst) {
            self.answer_read.notify_one();
            self.release.notified().await;
        }
    }
}

impl TokenStore for PausingStore {
    fn insert(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.insert(record, hash)
    }

    async fn get(&self, id: &TokenId) -> Result<Option<StoredToken>, StoreError> {
        let answer = self.inner.get(id).await;
        self.maybe_pause().await;
        answer
    }

    async fn find_by_hash(&self, hash: &SecretHash) -> Result<Option<StoredToken>, StoreError> {
        let answer = self.inner.find_by_hash(hash).await;
        self.maybe_pause().await;
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

fn record(id: u64) -> TokenRecord {
    TokenRecord::new(
        TokenId::from_u64(id),
        Owner::new("team-1").unwrap(),
        "t",
        Utc::now(),
    )
}

fn hash(n: u64) -> SecretHash {
    SecretHasher::sha256().hash(&n.to_le_bytes())
}

/// Starts `lookup` on a task, waits until the store has read its answer, runs `change`,
/// then lets the lookup finish and returns what it answered.
async fn overtaken<T: Send + 'static>(
    store: &Arc<CachedStore<PausingStore>>,
    lookup: impl Future<Output = T> + Send + 'static,
    change: impl Future<Output = ()>,
) -> T {
    store
        .inner()
        .pause_next_lookup
        .store(true, Ordering::SeqCst);
    let in_flight = tokio::spawn(lookup);
    store.inner().answer_read.notified().await;
    change.await;
    store.inner().release.notify_one();
    in_flight.await.unwrap()
}

#[tokio::test]
async fn a_record_read_before_a_revocation_is_not_cached_after_it() {
    let store = Arc::new(CachedStore::new(PausingStore::default()));
    let id = TokenId::from_u64(1);
    store.insert(record(1), hash(1)).await.unwrap();

    let lookup = {
        let store = Arc::clone(&store);
        async move { store.get(&id).await }
    };
    let revoke = async {
        assert!(store.revoke(&id, Utc::now()).await.unwrap());
    };
    let answered = overtaken(&store, lookup, revoke).await.unwrap().unwrap();
    // The lookup in flight answers what it read...
    assert!(!answered.record.is_revoked());
    // ...but did not cache it.
    assert!(store.get(&id).await.unwrap().unwrap().record.is_revoked());
}

#[tokio::test]
async fn a_record_read_by_hash_before_an_invalidation_is_not_cached_after_it() {
    let store = Arc::new(CachedStore::new(PausingStore::default()));
    let id = TokenId::from_u64(1);
    store.insert(record(1), hash(1)).await.unwrap();

    let lookup = {
        let store = Arc::clone(&store);
        async move { store.find_by_hash(&hash(1)).await }
    };
    let revoke_elsewhere = async {
        // Revoked in the database behind the cache, then notified.
        assert!(store.inner().inner.revoke(&id, Utc::now()).await.unwrap());
        store.invalidator().invalidate(&id);
    };
    let answered = overtaken(&store, lookup, revoke_elsewhere).await.unwrap();
    assert!(!answered.unwrap().record.is_revoked());
    let found = store.find_by_hash(&hash(1)).await.unwrap().unwrap();
    assert!(found.record.is_revoked());
}

#[tokio::test]
async fn a_miss_read_before_an_insert_is_not_cached_after_it() {
    let store = Arc::new(CachedStore::new(PausingStore::default()));
    let id = TokenId::from_u64(1);

    let lookup = {
        let store = Arc::clone(&store);
        async move { store.get(&id).await }
    };
    let issue = async {
        store.insert(record(1), hash(1)).await.unwrap();
    };
    assert!(overtaken(&store, lookup, issue).await.unwrap().is_none());
    assert!(store.get(&id).await.unwrap().is_some());
}

#[test]
fn an_answer_fetched_across_an_invalidation_is_not_filled() {
    let store = CachedStore::new(MemoryStore::new());
    let one = CacheKey::Id(TokenId::from_u64(1));
    let lookup = store.cache.start_lookup();
    store.invalidator().invalidate_all();
    store.cache.fill_one(&one, lookup, CachedAnswer::NotFound);
    assert!(store.is_empty());

    let lookup = store.cache.start_lookup();
    store.invalidator().invalidate(&TokenId::from_u64(1));
    store.cache.fill_one(&one, lookup, CachedAnswer::NotFound);
    assert!(store.is_empty());

    let lookup = store.cache.start_lookup();
    store.cache.fill_one(&one, lookup, CachedAnswer::NotFound);
    assert_eq!(store.len(), 1);
}

#[test]
fn a_stale_answer_landing_late_does_not_replace_a_newer_one() {
    let store = CachedStore::new(MemoryStore::new());
    let one = CacheKey::Id(TokenId::from_u64(1));
    let before = store.cache.start_lookup();
    store.invalidator().invalidate(&TokenId::from_u64(1));
    let after = store.cache.start_lookup();
    store.cache.fill_one(&one, after, CachedAnswer::NotFound);
    store.cache.fill_one(&one, before, CachedAnswer::NotFound);
    assert!(store.cache.fresh(&one).is_some());
}

#[test]
fn an_entry_inserted_across_an_invalidation_is_never_served() {
    // The invalidation lands between a fill's check and its insert: the entry is in the
    // cache for a moment, but `fresh` checks the stripes itself.
    let store = CachedStore::new(MemoryStore::new());
    let one = CacheKey::Id(TokenId::from_u64(1));
    let lookup = store.cache.start_lookup();
    store.cache.fill_one(&one, lookup, CachedAnswer::NotFound);
    assert!(store.cache.fresh(&one).is_some());
    store.cache.touch(Tag::Id(&TokenId::from_u64(1))); // no removal
    assert_eq!(store.len(), 1);
    assert!(store.cache.fresh(&one).is_none());
}

#[test]
fn an_invalidation_of_another_id_leaves_a_refill_alone() {
    let store = CachedStore::new(MemoryStore::new());
    let one = CacheKey::Id(TokenId::from_u64(1));
    // An id in another stripe than id 1 (the stripes are keyed at random).
    let other = (2..)
        .map(TokenId::from_u64)
        .find(|id| {
            store.cache.stripe(Tag::Id(id)) != store.cache.stripe(Tag::Id(&TokenId::from_u64(1)))
        })
        .unwrap();
    let lookup = store.cache.start_lookup();
    store.invalidator().invalidate(&other);
    store.cache.fill_one(&one, lookup, CachedAnswer::NotFound);
    assert!(store.cache.fresh(&one).is_some());
}

#[test]
fn the_byte_budget_is_rounded_down_to_whole_shards_never_up() {
    for max_bytes in [0, 1, 31, 33, 100, 1_000, 4_097, 10_000, 12_345, 5_120_000] {
        let store = CachedStore::builder(MemoryStore::new())
            .max_bytes(max_bytes)
            .build();
        let shards = store.cache.entries.num_shards() as u64;
        assert!(store.max_bytes() <= max_bytes, "{max_bytes}");
        assert!(max_bytes - store.max_bytes() < shards, "{max_bytes}");
    }
    for capacity in [0, 1, 100, 10_000] {
        let store = CachedStore::builder(MemoryStore::new())
            .capacity(capacity)
            .build();
        let shards = store.cache.entries.num_shards() as u64;
        assert!(store.capacity() <= capacity, "{capacity}");
        assert!(
            capacity as u64 * 512 - store.max_bytes() < shards,
            "{capacity}"
        );
    }
}

#[test]
fn a_record_weighs_what_it_holds() {
    let light = record(1);
    let mut heavy = record(2);
    heavy.name = "n".repeat(1_000);
    let mut metadata = crate::record::Metadata::new();
    metadata.insert("notes".into(), "x".repeat(10_000).into());
    metadata.insert(
        "nested".into(),
        serde_json::json!([{"k": "y".repeat(5_000)}, [1, 2, 3]]),
    );
    heavy.metadata = metadata;
    let light_bytes = record_bytes(&light);
    let heavy_bytes = record_bytes(&heavy);
    assert!(light_bytes < 400, "{light_bytes}");
    assert!(heavy_bytes >= light_bytes + 16_000, "{heavy_bytes}");
    assert!(heavy_bytes < light_bytes + 17_000, "{heavy_bytes}");
    const { assert!(ENTRY_OVERHEAD < 256) };
}

#[tokio::test]
async fn last_use_of_an_uncached_record_adds_no_entry() {
    let store = CachedStore::new(MemoryStore::new());
    store.insert(record(1), hash(1)).await.unwrap();
    store
        .record_last_used(&TokenId::from_u64(1), Utc::now())
        .await
        .unwrap();
    assert!(store.is_empty());
    // The write reached the wrapped store.
    let stored = store.inner().get(&TokenId::from_u64(1)).await.unwrap();
    assert!(stored.unwrap().record.last_used_at.is_some());
}

#[tokio::test]
async fn invalidating_an_id_also_frees_the_hash_entry() {
    let store = CachedStore::new(MemoryStore::new());
    store.insert(record(1), hash(1)).await.unwrap();
    store.find_by_hash(&hash(1)).await.unwrap().unwrap();
    assert_eq!(store.len(), 2);
    store.invalidator().invalidate(&TokenId::from_u64(1));
    assert!(store.is_empty());
}

#[tokio::test]
async fn a_hash_entry_pointing_at_a_record_with_another_hash_is_ignored() {
    // As after a secret re-rolled outside this cache: the hash no longer names the record.
    let store = CachedStore::new(MemoryStore::new());
    store.insert(record(1), hash(1)).await.unwrap();
    store.get(&TokenId::from_u64(1)).await.unwrap().unwrap();
    let lookup = store.cache.start_lookup();
    store.cache.fill_one(
        &CacheKey::Hash(hash(2)),
        lookup,
        CachedAnswer::FoundAtId(TokenId::from_u64(1)),
    );
    assert!(store.find_by_hash(&hash(2)).await.unwrap().is_none());
}
