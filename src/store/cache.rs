//! The verification cache, [`CachedStore`]: a [`TokenStore`] over another that remembers its
//! answers to `get` and `find_by_hash` (found records for the TTL, 10 s by default; misses for
//! the shorter negative TTL, 5 s), never its errors, in a bounded [`quick_cache`].
//!
//! Revocation stays immediate through this cache (writes go through, then drop the affected
//! entries, and a lookup in flight cannot put an older answer back) and through its
//! [`CacheInvalidator`] (what a change feed from other replicas calls). Changes made elsewhere
//! with no notification are seen within the TTL, which is then the documented bound. The cache
//! holds records, not verdicts: the verifier checks revocation and expiry against its clock on
//! every request. The full account is on [`CachedStore`]; the design note is in
//! `docs/design.md`, "The verification cache".

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash, RandomState};
use std::mem::size_of;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use quick_cache::sync::{Cache, DefaultLifecycle, EntryAction};
use quick_cache::{UnitWeighter, Weighter};

use super::{StoreChange, StoreError, StoredToken, TokenStore};
use crate::id::TokenId;
use crate::record::{Owner, TokenRecord};
use crate::secret::SecretHash;

const DEFAULT_TTL: Duration = Duration::from_secs(10);
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
const DEFAULT_CAPACITY: usize = 10_000;
/// The bytes one unit of [`CachedStoreBuilder::capacity`] stands for: about what a record with
/// a few scopes and no metadata weighs (a cached miss weighs about half as much).
const BYTES_PER_ENTRY: usize = 512;
/// How many invalidation stripes a cache has. An invalidation stops the refills in flight of
/// the keys in its stripe only, so one of another id costs a refill its fill with odds of
/// about 1 in 4,096.
const STRIPES: usize = 4096;
/// The most lookups that may lead or wait in single flight at once (which bounds the in-flight
/// table); past it, a miss asks the store itself, as with no coalescing.
const MAX_IN_FLIGHT: usize = 4096;

/// A [`TokenStore`] that caches another store's lookups, misses included.
///
/// Build one with [`CachedStore::new`] (defaults: 10 s TTL, 5 s negative TTL, a budget of
/// 5,120,000 bytes: 10,000 entries of 512) or [`CachedStore::builder`].
///
/// # What is cached
///
/// It caches the answers of [`get`](TokenStore::get) and
/// [`find_by_hash`](TokenStore::find_by_hash): found records for the TTL (10 seconds by
/// default) and "no such token" answers (misses) for the negative TTL (5 seconds by default),
/// so a flood of made-up tokens with valid checksums does not reach the database either.
/// Store errors are never cached: the verifier fails closed on them and the next request asks
/// the store again. Everything else ([`next_id`](TokenStore::next_id),
/// [`list_by_owner`](TokenStore::list_by_owner)) goes straight to the wrapped store.
///
/// The cache is bounded in bytes ([`quick_cache`], entries weighed by what they hold; see
/// [`CachedStoreBuilder::max_bytes`]) and an entry's age is counted from the moment *before*
/// the store was asked, so a cached answer is never older than the TTL. A record found by hash
/// takes two entries: the record under its id, and the hash pointing at that id.
///
/// # Single flight
///
/// Concurrent misses of one key (an id or a hash) share one store lookup: the first asks, the
/// others wait for its answer and take it unless something it depends on was invalidated
/// meanwhile (then each asks the store itself). If the lookup fails, each waiter asks the store
/// itself; if the leading request is cancelled, one waiter takes the lookup over. At most 4,096
/// lookups lead or wait at once; past that a miss asks the store itself.
///
/// # Revocation
///
/// - **Through this `CachedStore`** ([`revoke`](TokenStore::revoke),
///   [`revoke_owner`](TokenStore::revoke_owner), [`insert`](TokenStore::insert)): immediate. The
///   write goes to the wrapped store first, then the affected entries are dropped, so the next
///   lookup asks the store. A lookup of those keys that was already in flight when the
///   entries were dropped does not put its older answer back into the cache, nor hand it to
///   a lookup that waited for it; lookups of other keys are not disturbed (invalidations are
///   tracked per stripe of keys, 4,096 stripes).
/// - **Elsewhere** (another replica, an admin tool writing to the database): immediate once
///   something calls the [`CacheInvalidator`] (for example a PostgreSQL `LISTEN/NOTIFY`
///   listener). With no such notification, the TTL is the bound: a token revoked elsewhere can
///   still be accepted here for up to the TTL after the revocation committed, and a token
///   issued elsewhere can be refused for up to the negative TTL if its id was looked up (and
///   missed) just before. Choose the TTLs with that in mind. With sequential ids (DCT,
///   Sanctum) the next ids are easy to guess, so anyone can plant such misses on purpose; a
///   listener that calls [`CacheInvalidator::invalidate`] for each token issued elsewhere
///   closes that window.
///
/// # Expiry is not cached
///
/// The cache holds records, not verdicts. The [`Verifier`](crate::Verifier) checks revocation,
/// `expires_at` and its maximum lifetime against its own clock on every request, whether the
/// record came from the cache or from the store, so a cached token stops working the instant
/// it expires.
///
/// # Last used
///
/// [`record_last_used`](TokenStore::record_last_used) and
/// [`record_last_used_batch`](TokenStore::record_last_used_batch) go to the wrapped store and
/// do not drop any entry. After a successful write, the cached copy of the record gets the new
/// `last_used_at` (forward only), so principals served from the cache show the last flushed
/// use without another lookup. A last use recorded elsewhere
/// (another replica) shows in the cached record only once its entry is refreshed, up to the TTL
/// later.
///
/// ```
/// use std::time::Duration;
///
/// use apitoken::{CachedStore, MemoryStore, NewToken, Owner, TokenStore, Verifier};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = CachedStore::builder(MemoryStore::new())
///     .ttl(Duration::from_secs(10))
///     .negative_ttl(Duration::from_secs(5))
///     .capacity(10_000)
///     .build();
/// let verifier = Verifier::builder(store).build();
/// let issued = verifier.issuer().issue(NewToken::new("CI", Owner::new("team-1")?)).await?;
/// let token = issued.token.expose_secret();
///
/// verifier.authenticate(token).await?; // asks the store, caches the record
/// verifier.authenticate(token).await?; // served from the cache
///
/// // Revoking through the cache is seen by the very next request.
/// verifier.store().revoke(&issued.record.id, verifier.now()).await?;
/// assert!(verifier.authenticate(token).await.is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
///
/// The store calls themselves:
///
/// ```
/// use apitoken::{CachedStore, MemoryStore, Owner, SecretHasher, TokenRecord, TokenStore};
/// use chrono::Utc;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = CachedStore::new(MemoryStore::new());
/// let id = store.next_id().await?;
/// let record = TokenRecord::new(id, Owner::new("team-1")?, "CI", Utc::now());
/// store.insert(record, SecretHasher::sha256().hash(b"secret")).await?;
///
/// assert!(store.get(&id).await?.is_some()); // from the wrapped store
/// assert!(store.get(&id).await?.is_some()); // from the cache
/// assert_eq!(store.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct CachedStore<S> {
    inner: S,
    cache: Arc<CacheState>,
}

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
    inner: S,
    ttl: Duration,
    negative_ttl: Duration,
    max_bytes: u64,
}

/// Drops entries from a [`CachedStore`]'s cache, from anywhere: a cheap handle (one `Arc`)
/// that is `Clone + Send + Sync + 'static`, made by [`CachedStore::invalidator`].
///
/// A listener for another replica's changes (PostgreSQL `LISTEN/NOTIFY`, a message bus) holds
/// one and calls [`invalidate`](Self::invalidate) with the id of every token revoked or issued
/// elsewhere. Each call is immediate: the next lookup asks the wrapped store, and a lookup
/// already in flight does not put its older answer back.
///
/// ```
/// use std::sync::Arc;
///
/// use apitoken::{CachedStore, MemoryStore, Owner, SecretHasher, TokenRecord, TokenStore};
/// use chrono::Utc;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let database = Arc::new(MemoryStore::new());
/// let here = CachedStore::new(Arc::clone(&database));
/// let elsewhere = CachedStore::new(Arc::clone(&database)); // another replica
///
/// let id = database.next_id().await?;
/// let record = TokenRecord::new(id, Owner::new("team-1")?, "CI", Utc::now());
/// database.insert(record, SecretHasher::sha256().hash(b"secret")).await?;
/// assert!(!here.get(&id).await?.expect("issued").record.is_revoked());
///
/// elsewhere.revoke(&id, Utc::now()).await?;
/// // Until told, `here` answers from its cache (for at most its TTL).
/// assert!(!here.get(&id).await?.expect("issued").record.is_revoked());
///
/// let invalidator = here.invalidator();
/// invalidator.invalidate(&id); // what a LISTEN/NOTIFY listener would do
/// assert!(here.get(&id).await?.expect("issued").record.is_revoked());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct CacheInvalidator {
    cache: Arc<CacheState>,
}

/// What the cache is keyed by: the two ways the verifier looks a token up.
#[derive(Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    Id(TokenId),
    Hash(SecretHash),
}

#[derive(Clone)]
struct CacheEntry {
    /// When the store was asked for this answer (before the call, so the age is an upper
    /// bound on how old the answer is).
    asked_at: Instant,
    /// The invalidation clock when the lookup started. An invalidation of one of `stripes`
    /// (or a clear) that ticked later makes the entry stale: it is never served again.
    tick: u64,
    /// The invalidation stripes this answer depends on: its key's, and for a record its id's,
    /// its hash's and its owner's.
    stripes: [u16; 3],
    /// What the entry holds, in bytes (an estimate; see [`CacheState::weigh`]).
    weight: u64,
    answer: CachedAnswer,
}

#[derive(Clone)]
enum CachedAnswer {
    /// The record and its hash.
    Found(StoredToken),
    /// The store had no such token.
    NotFound,
    /// Under a hash key: the record is cached under this id. Keeping the record in one place
    /// means dropping the id entry also drops every by-hash view of it, with no reverse index.
    FoundAtId(TokenId),
}

/// What a lookup in flight hands the lookups of the same key that waited for it.
#[derive(Clone)]
enum Flight {
    /// The store's answer, and the invalidation clock when the lookup started: a waiter takes
    /// it only if nothing it depends on was invalidated since.
    Answered {
        tick: u64,
        answer: Option<StoredToken>,
    },
    /// The store failed: each waiter asks it itself (errors are not shared, nor cached).
    Failed,
}

/// Weighs an entry by what it holds, computed once when the entry is made.
#[derive(Clone)]
struct EntryWeighter;

impl Weighter<CacheKey, CacheEntry> for EntryWeighter {
    fn weight(&self, _key: &CacheKey, entry: &CacheEntry) -> u64 {
        entry.weight
    }
}

/// What an invalidation names; hashed to pick its stripe.
#[derive(Hash)]
enum Tag<'a> {
    Id(&'a TokenId),
    Hash(&'a SecretHash),
    Owner(&'a str),
}

/// The state a [`CachedStore`] shares with its [`CacheInvalidator`]s.
struct CacheState {
    entries: Cache<CacheKey, CacheEntry, EntryWeighter, RandomState>,
    /// Lookups in flight, for single flight: only placeholders (its capacity is zero, so an
    /// answer handed to the waiters is never kept in it).
    flights: Cache<CacheKey, Flight, UnitWeighter, RandomState>,
    /// Lookups leading or waiting in `flights` now, at most [`MAX_IN_FLIGHT`].
    in_flight: AtomicUsize,
    /// Ticks once per invalidation, before anything is dropped.
    clock: AtomicU64,
    /// For each stripe of keys, the tick of its last invalidation. A lookup notes the clock
    /// before asking the store and its answer is kept (and served) only while none of the
    /// stripes it depends on has a later tick, so an answer read before a revocation is never
    /// served after the revocation's invalidation, while invalidations of other keys leave it
    /// alone.
    stripes: Box<[AtomicU64]>,
    /// The tick of the last [`invalidate_all`](CacheInvalidator::invalidate_all): it stops
    /// every refill in flight.
    cleared: AtomicU64,
    /// Keyed, like the cache's own hasher: invalidated ids come from requests too.
    stripe_hasher: RandomState,
    ttl: Duration,
    negative_ttl: Duration,
    /// Stripes whose last write failed, and until when their refills are not kept: a write
    /// that timed out may still commit later (a lock held elsewhere, then released), after
    /// its invalidation ran, and a refill made in between would then serve the old record
    /// for a whole TTL. Doubt lasts one TTL, so such a write is seen at most one TTL late,
    /// and the stripe's lookups go to the store meanwhile.
    doubt: std::sync::Mutex<HashMap<u16, Instant>>,
    /// Whether `doubt` has any entry: the fill path reads this one atomic when none does.
    any_doubt: std::sync::atomic::AtomicBool,
}

impl<S: TokenStore> CachedStore<S> {
    /// Wraps `inner` with the defaults: a 10-second TTL, a 5-second negative TTL and a budget of
    /// 5,120,000 bytes (10,000 entries of 512 bytes).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use apitoken::{CachedStore, MemoryStore};
    ///
    /// let store = CachedStore::new(MemoryStore::new());
    /// assert_eq!(store.ttl(), Duration::from_secs(10));
    /// assert_eq!(store.negative_ttl(), Duration::from_secs(5));
    /// assert_eq!(store.capacity(), 10_000);
    /// ```
    pub fn new(inner: S) -> Self {
        Self::builder(inner).build()
    }

    /// Starts configuring a cache over `inner`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use apitoken::{CachedStore, MemoryStore};
    ///
    /// let store = CachedStore::builder(MemoryStore::new()).ttl(Duration::from_secs(3)).build();
    /// assert_eq!(store.ttl(), Duration::from_secs(3));
    /// ```
    pub fn builder(inner: S) -> CachedStoreBuilder<S> {
        CachedStoreBuilder {
            inner,
            ttl: DEFAULT_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            max_bytes: entries_to_bytes(DEFAULT_CAPACITY),
        }
    }
}

impl<S> CachedStore<S> {
    /// The wrapped store. Writes made directly to it bypass the cache and are seen here only
    /// after an invalidation or the TTL.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore};
    ///
    /// let store = CachedStore::new(MemoryStore::new());
    /// assert!(store.inner().is_empty());
    /// ```
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// A handle that drops entries from this cache, for a listener of other replicas' changes.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore, TokenId};
    ///
    /// let store = CachedStore::new(MemoryStore::new());
    /// let invalidator = store.invalidator();
    /// std::thread::spawn(move || invalidator.invalidate(&TokenId::from_u64(7)))
    ///     .join()
    ///     .unwrap();
    /// ```
    pub fn invalidator(&self) -> CacheInvalidator {
        CacheInvalidator {
            cache: Arc::clone(&self.cache),
        }
    }

    /// How long a found record is served from the cache.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use apitoken::{CachedStore, MemoryStore};
    ///
    /// assert_eq!(CachedStore::new(MemoryStore::new()).ttl(), Duration::from_secs(10));
    /// ```
    pub fn ttl(&self) -> Duration {
        self.cache.ttl
    }

    /// How long a "no such token" answer is served from the cache.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use apitoken::{CachedStore, MemoryStore};
    ///
    /// assert_eq!(CachedStore::new(MemoryStore::new()).negative_ttl(), Duration::from_secs(5));
    /// ```
    pub fn negative_ttl(&self) -> Duration {
        self.cache.negative_ttl
    }

    /// The cache's budget in units of 512 bytes, as [`CachedStoreBuilder::capacity`] sets it:
    /// [`max_bytes`](Self::max_bytes) / 512. It can be a little below the configured capacity
    /// (by less than the cache's shard count), never above.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore};
    ///
    /// let store = CachedStore::builder(MemoryStore::new()).capacity(1_000).build();
    /// assert!(store.capacity() <= 1_000);
    /// ```
    pub fn capacity(&self) -> usize {
        usize::try_from(self.max_bytes() / BYTES_PER_ENTRY as u64).unwrap_or(usize::MAX)
    }

    /// The most bytes the cache's entries hold, by the estimate of
    /// [`CachedStoreBuilder::max_bytes`]. It can be a little below the configured budget (by
    /// less than the cache's shard count), never above.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore};
    ///
    /// let store = CachedStore::builder(MemoryStore::new()).max_bytes(1 << 20).build();
    /// assert!(store.max_bytes() <= 1 << 20);
    /// assert_eq!(CachedStore::new(MemoryStore::new()).max_bytes(), 10_000 * 512);
    /// ```
    pub fn max_bytes(&self) -> u64 {
        self.cache.entries.capacity()
    }

    /// The bytes the cache's entries hold now, by the same estimate: never above
    /// [`max_bytes`](Self::max_bytes).
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore, TokenId, TokenStore};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = CachedStore::new(MemoryStore::new());
    /// assert_eq!(store.weight(), 0);
    /// store.get(&TokenId::from_u64(1)).await?; // a cached miss
    /// assert!(store.weight() > 0 && store.weight() < 512);
    /// # Ok::<(), apitoken::StoreError>(())
    /// # }).unwrap();
    /// ```
    pub fn weight(&self) -> u64 {
        self.cache.entries.weight()
    }

    /// How many entries the cache holds, expired ones not yet evicted included.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore};
    ///
    /// assert_eq!(CachedStore::new(MemoryStore::new()).len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.cache.entries.len()
    }

    /// Whether the cache holds no entry.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore};
    ///
    /// assert!(CachedStore::new(MemoryStore::new()).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.cache.entries.is_empty()
    }
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

impl CacheInvalidator {
    /// Applies a change reported by a store's change feed: drops what is cached about that
    /// token, or everything when changes may have been missed.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore, StoreChange, TokenId, TokenStore};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = CachedStore::new(MemoryStore::new());
    /// store.get(&TokenId::from_u64(1)).await?;
    /// store.invalidator().apply(&StoreChange::Token(TokenId::from_u64(1)));
    /// assert!(store.is_empty());
    /// # Ok::<(), apitoken::StoreError>(())
    /// # }).unwrap();
    /// ```
    pub fn apply(&self, change: &StoreChange) {
        match change {
            StoreChange::Token(id) => self.invalidate(id),
            // `Unknown`, and any kind of change added later: trust nothing cached.
            _ => self.invalidate_all(),
        }
    }

    /// Drops every cached answer about the token `id`: its record, a cached miss for the id,
    /// and with them every by-hash view of the record. Call it when a token is revoked, issued
    /// or changed elsewhere.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore, TokenId, TokenStore};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = CachedStore::new(MemoryStore::new());
    /// let id = TokenId::from_u64(1);
    /// assert!(store.get(&id).await?.is_none()); // the miss is cached
    /// assert_eq!(store.len(), 1);
    /// store.invalidator().invalidate(&id);
    /// assert!(store.is_empty());
    /// # Ok::<(), apitoken::StoreError>(())
    /// # }).unwrap();
    /// ```
    pub fn invalidate(&self, id: &TokenId) {
        self.cache.invalidate_id(id);
    }

    /// Drops the cached answer for the secret hash `hash` (a miss, or the record it pointed
    /// at). For notifications that carry a hash but no id; a record looked up only by id stays
    /// cached, so prefer [`invalidate`](Self::invalidate) when the id is known.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore, SecretHasher, TokenStore};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = CachedStore::new(MemoryStore::new());
    /// let hash = SecretHasher::sha256().hash(b"not issued yet");
    /// assert!(store.find_by_hash(&hash).await?.is_none()); // the miss is cached
    /// store.invalidator().invalidate_hash(&hash);
    /// assert!(store.is_empty());
    /// # Ok::<(), apitoken::StoreError>(())
    /// # }).unwrap();
    /// ```
    pub fn invalidate_hash(&self, hash: &SecretHash) {
        self.cache.invalidate_hash(hash);
    }

    /// Drops the cached records of every token of `owner`. Misses stay (they name no owner,
    /// and a miss never lets a token in).
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore, Owner, SecretHasher, TokenRecord, TokenStore};
    /// use chrono::Utc;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = CachedStore::new(MemoryStore::new());
    /// let id = store.next_id().await?;
    /// let owner = Owner::new("team-1")?;
    /// let record = TokenRecord::new(id, owner.clone(), "CI", Utc::now());
    /// store.insert(record, SecretHasher::sha256().hash(b"secret")).await?;
    /// store.get(&id).await?;
    /// assert_eq!(store.len(), 1);
    /// store.invalidator().invalidate_owner(&owner);
    /// assert!(store.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn invalidate_owner(&self, owner: &Owner) {
        self.cache.invalidate_owner(owner);
    }

    /// Drops every entry. For a notification channel that lost messages (after a reconnect,
    /// say): what it missed is unknown, so nothing cached can be trusted.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore, TokenId, TokenStore};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = CachedStore::new(MemoryStore::new());
    /// store.get(&TokenId::from_u64(1)).await?;
    /// store.get(&TokenId::from_u64(2)).await?;
    /// store.invalidator().invalidate_all();
    /// assert!(store.is_empty());
    /// # Ok::<(), apitoken::StoreError>(())
    /// # }).unwrap();
    /// ```
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }
}

/// What a write makes stale.
enum Stale {
    Id(TokenId),
    Hash(SecretHash),
    Owner(Owner),
}

/// Drops cache entries when it goes out of scope: after the write returns, after it fails (a
/// store that timed out may still have committed), and when the write's future is dropped
/// half-way (a client that disconnected), so a revocation can never leave a stale entry. A
/// write that did not succeed also puts its keys' stripes in doubt for a TTL (see
/// `CacheState::doubt`), since it may still commit after this runs.
struct Invalidate<'a, const N: usize> {
    cache: &'a CacheState,
    drops: [Stale; N],
    succeeded: bool,
}

impl<'a, const N: usize> Invalidate<'a, N> {
    fn new(cache: &'a CacheState, drops: [Stale; N]) -> Self {
        Self {
            cache,
            drops,
            succeeded: false,
        }
    }

    /// Notes the write's outcome and hands it back.
    fn settle<T>(mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.succeeded = result.is_ok();
        result
    }
}

impl<const N: usize> std::ops::Drop for Invalidate<'_, N> {
    fn drop(&mut self) {
        for stale in &self.drops {
            let tag = match stale {
                Stale::Id(id) => Tag::Id(id),
                Stale::Hash(hash) => Tag::Hash(hash),
                Stale::Owner(owner) => Tag::Owner(owner.as_str()),
            };
            if !self.succeeded {
                self.cache.doubt(tag);
            }
            match stale {
                Stale::Id(id) => self.cache.invalidate_id(id),
                Stale::Hash(hash) => self.cache.invalidate_hash(hash),
                Stale::Owner(owner) => self.cache.invalidate_owner(owner),
            }
        }
    }
}

impl CacheState {
    /// The cached answer under `key`, if it is younger than its TTL and nothing it depends on
    /// was invalidated since its lookup started. The hit path: one shard read lock, a clone
    /// of the entry (an `Arc` count), and one atomic load (five after an invalidation).
    fn fresh(&self, key: &CacheKey) -> Option<CachedAnswer> {
        let entry = self.entries.get(key)?;
        let ttl = match entry.answer {
            CachedAnswer::NotFound => self.negative_ttl,
            CachedAnswer::Found(_) | CachedAnswer::FoundAtId(_) => self.ttl,
        };
        // An expired or invalidated entry stays until it is overwritten or evicted; it is
        // never served.
        (entry.asked_at.elapsed() < ttl && self.untouched_since(entry.tick, &entry.stripes))
            .then_some(entry.answer)
    }

    /// Whether no stripe of `stripes` was invalidated, and the cache not cleared, after the
    /// clock read `tick`.
    fn untouched_since(&self, tick: u64, stripes: &[u16]) -> bool {
        // Every stripe and clear stamp is a tick the clock handed out: if it has not moved,
        // nothing was invalidated since (the common case, one load).
        self.clock.load(Ordering::SeqCst) == tick
            || self.cleared.load(Ordering::SeqCst) <= tick
                && stripes
                    .iter()
                    .all(|&stripe| self.stripes[usize::from(stripe)].load(Ordering::SeqCst) <= tick)
    }

    fn stripe(&self, tag: Tag<'_>) -> u16 {
        // STRIPES is a power of two below 2^16: the cast keeps the low bits.
        (self.stripe_hasher.hash_one(tag) as usize % STRIPES) as u16
    }

    fn key_stripe(&self, key: &CacheKey) -> u16 {
        match key {
            CacheKey::Id(id) => self.stripe(Tag::Id(id)),
            CacheKey::Hash(hash) => self.stripe(Tag::Hash(hash)),
        }
    }

    /// The stripes an answer found under `key` depends on. A record depends on its id, its
    /// hash and its owner, whichever key it was found by, so `invalidate`, `invalidate_hash`
    /// and `invalidate_owner` all reach it.
    fn answer_stripes(&self, key: &CacheKey, answer: Option<&StoredToken>) -> [u16; 4] {
        let key_stripe = self.key_stripe(key);
        match answer {
            Some(stored) => [
                key_stripe,
                self.stripe(Tag::Id(&stored.record.id)),
                self.stripe(Tag::Hash(&stored.hash)),
                self.stripe(Tag::Owner(stored.record.owner.as_str())),
            ],
            None => [key_stripe; 4],
        }
    }

    /// A ticket for an answer about to be fetched from the wrapped store.
    fn start_lookup(&self) -> Lookup {
        Lookup {
            asked_at: Instant::now(),
            tick: self.clock.load(Ordering::SeqCst),
        }
    }

    /// Caches what the store answered for `key`, unless an invalidation of something the
    /// answer depends on ticked since `lookup` started: the answer may then predate the change
    /// that was invalidated. Invalidations of other keys do not stop it.
    fn fill(&self, key: &CacheKey, lookup: Lookup, answer: Option<&StoredToken>) {
        match (key, answer) {
            (CacheKey::Id(_), Some(stored)) => {
                self.fill_one(key, lookup, CachedAnswer::Found(stored.clone()));
            }
            (CacheKey::Hash(_), Some(stored)) => {
                let id = stored.record.id;
                // The record first: a pointer to a record that is not there is ignored.
                self.fill_one(
                    &CacheKey::Id(id),
                    lookup,
                    CachedAnswer::Found(stored.clone()),
                );
                self.fill_one(key, lookup, CachedAnswer::FoundAtId(id));
            }
            (_, None) => self.fill_one(key, lookup, CachedAnswer::NotFound),
        }
    }

    fn fill_one(&self, key: &CacheKey, lookup: Lookup, answer: CachedAnswer) {
        let stripes = match &answer {
            // Found only under its id: the key's stripe is the id's.
            CachedAnswer::Found(stored) => {
                let [_, id, hash, owner] = self.answer_stripes(key, Some(stored));
                [id, hash, owner]
            }
            CachedAnswer::NotFound | CachedAnswer::FoundAtId(_) => [self.key_stripe(key); 3],
        };
        if !self.untouched_since(lookup.tick, &stripes) || self.in_doubt(&stripes) {
            return;
        }
        let weight = ENTRY_OVERHEAD
            + match &answer {
                CachedAnswer::Found(stored) => record_bytes(&stored.record),
                CachedAnswer::NotFound | CachedAnswer::FoundAtId(_) => 0,
            };
        let entry = CacheEntry {
            asked_at: lookup.asked_at,
            tick: lookup.tick,
            stripes,
            weight,
            answer,
        };
        self.entries.insert(key.clone(), entry);
        // An invalidation between the check above and the insert may have run its removal
        // before the insert landed. The entry is never served (`fresh` checks the stripes
        // again); take it out so it does not hold a slot. Only if it is still ours and stale:
        // a newer answer may have replaced it.
        if !self.untouched_since(lookup.tick, &stripes) {
            self.entries.remove_if(key, |entry| {
                entry.tick == lookup.tick && !self.untouched_since(entry.tick, &entry.stripes)
            });
        }
    }

    /// Whether an answer a lookup in flight handed over may be taken by a lookup that waited
    /// for it: nothing it depends on was invalidated since that lookup started.
    fn still_current(&self, key: &CacheKey, tick: u64, answer: Option<&StoredToken>) -> bool {
        self.untouched_since(tick, &self.answer_stripes(key, answer))
    }

    /// Takes a seat in single flight, if there is one free.
    fn seat(&self) -> Option<Seat<'_>> {
        let taken = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let seat = Seat(&self.in_flight);
        (taken < MAX_IN_FLIGHT).then_some(seat)
    }

    /// Marks a stripe invalidated, before the caller drops entries: from here on, nothing
    /// in it that a lookup started before can be cached or served.
    /// Puts `tag`'s stripe in doubt for a TTL: see `doubt`.
    fn doubt(&self, tag: Tag<'_>) {
        let stripe = self.stripe(tag);
        let until = Instant::now() + self.ttl;
        let mut doubt = self.doubt.lock().unwrap_or_else(|e| e.into_inner());
        doubt.insert(stripe, until);
        self.any_doubt.store(true, Ordering::SeqCst);
    }

    /// Whether any of `stripes` is in doubt now (forgetting doubts that have lapsed).
    fn in_doubt(&self, stripes: &[u16]) -> bool {
        if !self.any_doubt.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        let mut doubt = self.doubt.lock().unwrap_or_else(|e| e.into_inner());
        doubt.retain(|_, until| *until > now);
        if doubt.is_empty() {
            self.any_doubt.store(false, Ordering::SeqCst);
            return false;
        }
        stripes.iter().any(|stripe| doubt.contains_key(stripe))
    }

    fn touch(&self, tag: Tag<'_>) {
        let tick = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        self.stripes[usize::from(self.stripe(tag))].fetch_max(tick, Ordering::SeqCst);
    }

    fn invalidate_id(&self, id: &TokenId) {
        self.touch(Tag::Id(id));
        // Lookups that start from now on lead a new flight rather than wait for one that
        // started before (whose answer they would not take).
        self.flights.remove(&CacheKey::Id(*id));
        if let Some((_, entry)) = self.entries.remove(&CacheKey::Id(*id))
            && let CachedAnswer::Found(stored) = entry.answer
        {
            // Not needed for correctness (a hash entry whose id entry is gone is ignored), but
            // it frees the slot.
            self.entries.remove(&CacheKey::Hash(stored.hash));
        }
    }

    fn invalidate_hash(&self, hash: &SecretHash) {
        self.touch(Tag::Hash(hash));
        self.flights.remove(&CacheKey::Hash(*hash));
        if let Some((_, entry)) = self.entries.remove(&CacheKey::Hash(*hash))
            && let CachedAnswer::FoundAtId(id) = entry.answer
        {
            self.entries.remove_if(&CacheKey::Id(id), |entry| {
                matches!(&entry.answer, CachedAnswer::Found(stored) if stored.hash == *hash)
            });
        }
    }

    fn invalidate_owner(&self, owner: &Owner) {
        self.touch(Tag::Owner(owner.as_str()));
        // One pass over the cache, shard by shard, instead of asking the store for the owner's
        // ids: no extra round trip, nothing that can fail after the revocation succeeded.
        self.entries.retain(|_, entry| {
            !matches!(&entry.answer, CachedAnswer::Found(stored) if stored.record.owner == *owner)
        });
    }

    fn invalidate_all(&self) {
        let tick = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        self.cleared.fetch_max(tick, Ordering::SeqCst);
        self.flights.clear();
        self.entries.clear();
    }

    /// Moves the cached record's `last_used_at` forward to `at`, in place: the entry keeps its
    /// age, and nothing is added if the record is not cached.
    fn refresh_last_used(&self, id: &TokenId, at: DateTime<Utc>) {
        let key = CacheKey::Id(*id);
        if !self.entries.contains_key(&key) {
            return;
        }
        // Updated under the shard lock, so a concurrent invalidation either removes the entry
        // before (nothing to update) or after (the update is dropped with it): an older record
        // is never put back. If the entry went away since the check above, `entry` hands back a
        // guard for a vacant slot; dropping it unused leaves the slot empty.
        let _vacant_or_done = self.entries.entry(&key, Some(Duration::ZERO), |_, entry| {
            if let CachedAnswer::Found(stored) = &mut entry.answer
                && stored.record.last_used_at.is_none_or(|last| last < at)
            {
                stored.record = Arc::new(TokenRecord {
                    last_used_at: Some(at),
                    ..TokenRecord::clone(&stored.record)
                });
            }
            EntryAction::Retain(())
        });
    }
}

#[derive(Clone, Copy)]
struct Lookup {
    asked_at: Instant,
    /// The invalidation clock when the lookup started.
    tick: u64,
}

/// A seat in single flight: frees itself when dropped (the lookup done, failed or cancelled).
struct Seat<'a>(&'a AtomicUsize);

impl std::ops::Drop for Seat<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What every entry weighs besides the record it may hold: its key and value as stored, and
/// quick_cache's slot, index and list links around them.
const ENTRY_OVERHEAD: u64 = (size_of::<CacheKey>() + size_of::<CacheEntry>() + 64) as u64;

/// What a cached record holds, in bytes: the record, its strings, scopes and networks, and an
/// estimate of its metadata in memory.
fn record_bytes(record: &TokenRecord) -> u64 {
    let scopes: usize = record
        .scopes
        .iter()
        .map(|scope| size_of::<crate::Scope>() + scope.as_str().len())
        .sum();
    let bytes = size_of::<TokenRecord>()
        + 2 * size_of::<usize>() // the `Arc`'s counts
        + record.name.len()
        + record.owner.as_str().len()
        + scopes
        + std::mem::size_of_val(record.allowed_ips.as_slice())
        + metadata_bytes(&record.metadata);
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// An estimate of the memory a metadata map holds: every value's slot, every string's bytes,
/// and a map entry's key and links. Walked with a stack of its own, not recursion, since
/// metadata can nest deeply.
fn metadata_bytes(metadata: &crate::record::Metadata) -> usize {
    use serde_json::Value;
    const MAP_ENTRY: usize = size_of::<String>() + size_of::<Value>() + 2 * size_of::<usize>();
    let mut bytes = 0;
    let mut pending: Vec<&Value> = Vec::new();
    for (key, value) in metadata {
        bytes += MAP_ENTRY + key.len();
        pending.push(value);
    }
    while let Some(value) = pending.pop() {
        match value {
            Value::String(text) => bytes += text.len(),
            Value::Array(values) => {
                bytes += values.len() * size_of::<Value>();
                pending.extend(values);
            }
            Value::Object(entries) => {
                for (key, value) in entries {
                    bytes += MAP_ENTRY + key.len();
                    pending.push(value);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    bytes
}

/// A budget of `entries` entries of [`BYTES_PER_ENTRY`] bytes.
fn entries_to_bytes(entries: usize) -> u64 {
    u64::try_from(entries)
        .unwrap_or(u64::MAX)
        .saturating_mul(BYTES_PER_ENTRY as u64)
}

impl<S: TokenStore> CachedStore<S> {
    /// Answers a lookup that missed the cache: with single flight, the first miss of `key`
    /// asks the store and the misses of the same key that arrive meanwhile wait for its answer
    /// instead of asking too.
    ///
    /// - The answer is cached (unless an invalidation of what it depends on raced it), then
    ///   handed to the waiters, each of which takes it only if nothing it depends on was
    ///   invalidated since the lookup started; one that cannot asks the store itself.
    /// - If the store fails, each waiter asks the store itself: errors are neither cached nor
    ///   shared, and a waiter never hangs on a lookup that will not answer.
    /// - If the leading lookup is dropped (its request cancelled), one waiter takes over and
    ///   asks the store; the others keep waiting for it.
    /// - At most [`MAX_IN_FLIGHT`] lookups lead or wait at once; past that, a miss asks the
    ///   store itself.
    async fn look_up<F, Fut>(
        &self,
        key: CacheKey,
        ask: F,
    ) -> Result<Option<StoredToken>, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<StoredToken>, StoreError>>,
    {
        let cache = &*self.cache;
        if let Some(seat) = cache.seat() {
            match cache.flights.get_value_or_guard_async(&key).await {
                Err(guard) => {
                    let lookup = cache.start_lookup();
                    let answer = ask().await;
                    let handed = match &answer {
                        Ok(answer) => {
                            cache.fill(&key, lookup, answer.as_ref());
                            Flight::Answered {
                                tick: lookup.tick,
                                answer: answer.clone(),
                            }
                        }
                        Err(_) => Flight::Failed,
                    };
                    // Wakes every waiter with the answer. `Err` only says the placeholder was
                    // dropped by an invalidation: the waiters still have the answer, and check
                    // it.
                    let _ = guard.insert(handed);
                    drop(seat);
                    return answer;
                }
                Ok(Flight::Answered { tick, answer })
                    if cache.still_current(&key, tick, answer.as_ref()) =>
                {
                    return Ok(answer);
                }
                // The store failed, or what it answered raced an invalidation: ask it ourselves.
                Ok(Flight::Answered { .. } | Flight::Failed) => drop(seat),
            }
        }
        let lookup = cache.start_lookup();
        let answer = ask().await?;
        cache.fill(&key, lookup, answer.as_ref());
        Ok(answer)
    }
}

impl<S: TokenStore> TokenStore for CachedStore<S> {
    /// Inserts into the wrapped store, then drops any cached miss for the id or the hash, so
    /// a lookup made before the token existed cannot hide it.
    async fn insert(&self, record: TokenRecord, hash: SecretHash) -> Result<(), StoreError> {
        let drop_after = Invalidate::new(&self.cache, [Stale::Id(record.id), Stale::Hash(hash)]);
        drop_after.settle(self.inner.insert(record, hash).await)
    }

    /// Inserts in the wrapped store if the owner has no token there (the check reads the
    /// store, never the cache), then drops any cached miss for the id or the hash.
    async fn insert_first(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> Result<bool, StoreError> {
        let drop_after = Invalidate::new(&self.cache, [Stale::Id(record.id), Stale::Hash(hash)]);
        drop_after.settle(self.inner.insert_first(record, hash).await)
    }

    fn next_id(&self) -> impl Future<Output = Result<TokenId, StoreError>> + Send {
        self.inner.next_id()
    }

    async fn get(&self, id: &TokenId) -> Result<Option<StoredToken>, StoreError> {
        match self.cache.fresh(&CacheKey::Id(*id)) {
            Some(CachedAnswer::Found(stored)) => return Ok(Some(stored)),
            Some(CachedAnswer::NotFound) => return Ok(None),
            Some(CachedAnswer::FoundAtId(_)) | None => {}
        }
        // Boxed, so the hit path's future stays small (the miss path's holds the store's future
        // and the single-flight state); the allocation is on the miss path only.
        Box::pin(self.look_up(CacheKey::Id(*id), || self.inner.get(id))).await
    }

    fn get_current(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        self.inner.get_current(id)
    }

    async fn find_by_hash(&self, hash: &SecretHash) -> Result<Option<StoredToken>, StoreError> {
        match self.cache.fresh(&CacheKey::Hash(*hash)) {
            Some(CachedAnswer::NotFound) => return Ok(None),
            Some(CachedAnswer::FoundAtId(id)) => {
                if let Some(CachedAnswer::Found(stored)) = self.cache.fresh(&CacheKey::Id(id))
                    && stored.hash == *hash
                {
                    return Ok(Some(stored));
                }
                // The record was invalidated or evicted: ask the store.
            }
            Some(CachedAnswer::Found(_)) | None => {}
        }
        Box::pin(self.look_up(CacheKey::Hash(*hash), || self.inner.find_by_hash(hash))).await
    }

    fn list_by_owner(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
        self.inner.list_by_owner(owner)
    }

    /// Revokes in the wrapped store, then drops the token's cached record.
    async fn revoke(&self, id: &TokenId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let drop_after = Invalidate::new(&self.cache, [Stale::Id(*id)]);
        drop_after.settle(self.inner.revoke(id, at).await)
    }

    /// Rotates in the wrapped store, then drops what is cached about both tokens.
    async fn rotate(
        &self,
        old: &TokenId,
        retire: super::Retire,
        new: TokenRecord,
        hash: SecretHash,
    ) -> Result<bool, StoreError> {
        let drop_after = Invalidate::new(
            &self.cache,
            [Stale::Id(*old), Stale::Id(new.id), Stale::Hash(hash)],
        );
        drop_after.settle(self.inner.rotate(old, retire, new, hash).await)
    }

    /// Revokes in the wrapped store, then drops every cached record of the owner (one pass over
    /// the cache, no extra store call).
    async fn revoke_owner(&self, owner: &Owner, at: DateTime<Utc>) -> Result<usize, StoreError> {
        let drop_after = Invalidate::new(&self.cache, [Stale::Owner(owner.clone())]);
        drop_after.settle(self.inner.revoke_owner(owner, at).await)
    }

    fn remove_expired(
        &self,
        before: DateTime<Utc>,
        marker: &str,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        // Expired records are refused by the verifier whether cached or not; what the cache
        // holds of them ages out with its TTL.
        self.inner.remove_expired(before, marker)
    }

    /// Writes to the wrapped store; on success, moves the cached record's `last_used_at`
    /// forward. Drops nothing.
    async fn record_last_used(&self, id: &TokenId, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.inner.record_last_used(id, at).await?;
        self.cache.refresh_last_used(id, at);
        Ok(())
    }

    /// Writes the batch to the wrapped store in one call; on success, moves each cached
    /// record's `last_used_at` forward. Drops nothing.
    async fn record_last_used_batch(
        &self,
        batch: &[(TokenId, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        self.inner.record_last_used_batch(batch).await?;
        for (id, at) in batch {
            self.cache.refresh_last_used(id, *at);
        }
        Ok(())
    }
}

// Debug output shows configuration and size only: entries hold secret hashes and records.
impl<S> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("ttl", &self.cache.ttl)
            .field("negative_ttl", &self.cache.negative_ttl)
            .field("max_bytes", &self.max_bytes())
            .field("weight", &self.weight())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<S> fmt::Debug for CachedStoreBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStoreBuilder")
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for CacheInvalidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheInvalidator")
            .field("entries", &self.cache.entries.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use tokio::sync::Notify;

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
                store.cache.stripe(Tag::Id(id))
                    != store.cache.stripe(Tag::Id(&TokenId::from_u64(1)))
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
}
