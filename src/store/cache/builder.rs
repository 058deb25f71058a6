//! [`CachedStoreBuilder`]: a cache's TTLs and byte budget, and the building of its state.
//! Uses the token values and `crate::store` only, as the whole cache does.

use std::hash::RandomState;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use quick_cache::UnitWeighter;
use quick_cache::sync::{Cache, DefaultLifecycle};

use super::entries::{BYTES_PER_ENTRY, EntryWeighter, entries_to_bytes};
use super::state::CacheState;
use super::{CachedStore, MAX_IN_FLIGHT, STRIPES};
use crate::store::TokenStore;

/// Configures a [`CachedStore`]. Made by [`CachedStore::builder`].
///
/// ```
/// use std::time::Duration;
///
/// use apitoken::{CachedStore, MemoryStore};
///
/// let store = CachedStore::builder(MemoryStore::new())
///     .ttl(Duration::from_secs(30))
///     .negative_ttl(Duration::from_secs(2))
///     .capacity(50_000)
///     .build();
/// assert_eq!(store.ttl(), Duration::from_secs(30));
/// ```
#[must_use]
pub struct CachedStoreBuilder<S> {
    pub(super) inner: S,
    pub(super) ttl: Duration,
    pub(super) negative_ttl: Duration,
    pub(super) max_bytes: u64,
}

impl<S: TokenStore> CachedStoreBuilder<S> {
    /// How long a found record is served from the cache. Default: 10 seconds. This is also
    /// how long a revocation made elsewhere can go unnoticed when no invalidation arrives.
    /// Zero caches no record.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use apitoken::{CachedStore, MemoryStore};
    ///
    /// let store = CachedStore::builder(MemoryStore::new()).ttl(Duration::from_secs(2)).build();
    /// assert_eq!(store.ttl(), Duration::from_secs(2));
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a "no such token" answer is served from the cache. Default: 5 seconds. This
    /// is also how long a token issued elsewhere can be refused here, if its id or hash was
    /// looked up just before it was issued and no invalidation arrives. Zero caches no miss.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use apitoken::{CachedStore, MemoryStore, TokenId, TokenStore};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = CachedStore::builder(MemoryStore::new()).negative_ttl(Duration::ZERO).build();
    /// assert!(store.get(&TokenId::from_u64(1)).await?.is_none());
    /// assert!(store.get(&TokenId::from_u64(1)).await?.is_none()); // asked the store again
    /// # Ok::<(), apitoken::StoreError>(())
    /// # }).unwrap();
    /// ```
    pub fn negative_ttl(mut self, negative_ttl: Duration) -> Self {
        self.negative_ttl = negative_ttl;
        self
    }

    /// The cache's budget in entries of 512 bytes: the same as
    /// [`max_bytes`](Self::max_bytes)`(capacity * 512)`. Default: 10,000 (5,120,000 bytes).
    /// 512 bytes is about what a record with a few scopes and no metadata weighs, so this is
    /// about how many such tokens fit; a cached miss weighs less (about 200 bytes), a token
    /// with many scopes, networks or much metadata more. Zero caches nothing.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore, TokenId, TokenStore};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = CachedStore::builder(MemoryStore::new()).capacity(64).build();
    /// for n in 0..1_000 {
    ///     store.get(&TokenId::from_u64(n)).await?;
    /// }
    /// assert!(store.weight() <= 64 * 512);
    /// # Ok::<(), apitoken::StoreError>(())
    /// # }).unwrap();
    /// ```
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.max_bytes = entries_to_bytes(capacity);
        self
    }

    /// The most bytes the cached entries hold. Default: 5,120,000 (10,000 entries of 512
    /// bytes; [`capacity`](Self::capacity) sets the same budget in entries). An entry weighs
    /// a fixed overhead (its key, its slot, its bookkeeping: about 200 bytes) and, for a
    /// record, the record: its name, owner, scopes, allowlist and an estimate of its metadata
    /// in memory. A single entry heavier than a shard's share of the budget (the budget over
    /// the cache's shard count, a few per core) is not cached at all; its lookups go to the
    /// store. Zero caches nothing.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore, TokenId, TokenStore};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = CachedStore::builder(MemoryStore::new()).max_bytes(64 * 1024).build();
    /// for n in 0..1_000 {
    ///     store.get(&TokenId::from_u64(n)).await?;
    /// }
    /// assert!(store.weight() <= 64 * 1024);
    /// # Ok::<(), apitoken::StoreError>(())
    /// # }).unwrap();
    /// ```
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Builds the store.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore, Verifier};
    ///
    /// let verifier = Verifier::builder(CachedStore::builder(MemoryStore::new()).build()).build();
    /// assert!(verifier.store().is_empty());
    /// ```
    pub fn build(self) -> CachedStore<S> {
        let weight_capacity = self.max_bytes;
        let estimated_entries =
            usize::try_from(weight_capacity / BYTES_PER_ENTRY as u64).unwrap_or(usize::MAX);
        let entries = Cache::with(
            estimated_entries,
            weight_capacity,
            EntryWeighter,
            // Ids and hashes come from requests, so keys are attacker-chosen: a keyed SipHash,
            // not a fast unkeyed hash, keeps them from being made to collide.
            RandomState::new(),
            DefaultLifecycle::default(),
        );
        // quick_cache gives each shard ceil(budget / shards) bytes, so the total can exceed
        // the budget by up to shards - 1. Round down to a multiple of the shard count so the
        // configured budget is a hard bound.
        let shards = entries.num_shards() as u64;
        let per_shard_total = weight_capacity / shards * shards;
        if per_shard_total != entries.capacity() {
            entries.set_capacity(per_shard_total);
        }
        // Zero capacity: an answer handed to the waiters is never kept, only placeholders.
        let flights = Cache::with(
            MAX_IN_FLIGHT,
            0,
            UnitWeighter,
            RandomState::new(),
            DefaultLifecycle::default(),
        );
        CachedStore {
            inner: self.inner,
            cache: Arc::new(CacheState {
                entries,
                flights,
                in_flight: AtomicUsize::new(0),
                clock: AtomicU64::new(0),
                stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
                cleared: AtomicU64::new(0),
                stripe_hasher: RandomState::new(),
                ttl: self.ttl,
                negative_ttl: self.negative_ttl,
                doubt: std::sync::Mutex::default(),
                any_doubt: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }
}
