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

use std::fmt;
use std::future::Future;
use std::hash::RandomState;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use quick_cache::UnitWeighter;
use quick_cache::sync::{Cache, DefaultLifecycle, EntryAction};

use super::{StoreChange, StoreError, StoredToken, TokenStore};
use crate::id::TokenId;
use crate::record::{Owner, TokenRecord};
use crate::secret::SecretHash;

const DEFAULT_TTL: Duration = Duration::from_secs(10);
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
const DEFAULT_CAPACITY: usize = 10_000;

/// A [`TokenStore`] that caches another store's lookups, misses included.
///
/// Build one with [`CachedStore::new`] (defaults: 10 s TTL, 5 s negative TTL, 10,000 entries)
/// or [`CachedStore::builder`].
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
/// The cache is bounded ([`quick_cache`], 10,000 entries by default) and an entry's age is
/// counted from the moment *before* the store was asked, so a cached answer is never older than
/// the TTL. A record found by hash takes two entries: the record under its id, and the hash
/// pointing at that id.
///
/// # Revocation
///
/// - **Through this `CachedStore`** ([`revoke`](TokenStore::revoke),
///   [`revoke_owner`](TokenStore::revoke_owner), [`insert`](TokenStore::insert)): immediate. The
///   write goes to the wrapped store first, then the affected entries are dropped, so the next
///   lookup asks the store. A lookup that was already in flight when the entries were dropped
///   does not put its older answer back into the cache.
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
    capacity: usize,
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

/// The state a [`CachedStore`] shares with its [`CacheInvalidator`]s.
struct CacheState {
    entries: Cache<CacheKey, CacheEntry, UnitWeighter, RandomState>,
    /// Bumped by every invalidation, before entries are dropped. A lookup records it before
    /// asking the store and keeps its answer only if it has not moved, so an answer read before
    /// a revocation is never cached after the revocation's invalidation.
    generation: AtomicU64,
    ttl: Duration,
    negative_ttl: Duration,
}

impl<S: TokenStore> CachedStore<S> {
    /// Wraps `inner` with the defaults: a 10-second TTL, a 5-second negative TTL and room for
    /// 10,000 entries.
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
            capacity: DEFAULT_CAPACITY,
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

    /// The most entries the cache holds. It can be a little below the configured capacity
    /// (by less than the cache's shard count), never above.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore};
    ///
    /// let store = CachedStore::builder(MemoryStore::new()).capacity(1_000).build();
    /// assert!(store.capacity() <= 1_000);
    /// ```
    pub fn capacity(&self) -> usize {
        usize::try_from(self.cache.entries.capacity()).unwrap_or(usize::MAX)
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

    /// The most entries the cache holds. Default: 10,000. A token looked up by id takes one
    /// entry; one looked up by hash takes two. Zero caches nothing.
    ///
    /// ```
    /// use apitoken::{CachedStore, MemoryStore, TokenId, TokenStore};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = CachedStore::builder(MemoryStore::new()).capacity(64).build();
    /// for n in 0..1_000 {
    ///     store.get(&TokenId::from_u64(n)).await?;
    /// }
    /// assert!(store.len() <= 64);
    /// # Ok::<(), apitoken::StoreError>(())
    /// # }).unwrap();
    /// ```
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
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
        let weight_capacity = u64::try_from(self.capacity).unwrap_or(u64::MAX);
        let entries = Cache::with(
            self.capacity,
            weight_capacity,
            UnitWeighter,
            // Ids and hashes come from requests, so keys are attacker-chosen: a keyed SipHash,
            // not a fast unkeyed hash, keeps them from being made to collide.
            RandomState::new(),
            DefaultLifecycle::default(),
        );
        // quick_cache gives each shard ceil(capacity / shards) entries, so the total can exceed
        // the capacity by up to shards - 1. Round down to a multiple of the shard count so the
        // configured capacity is a hard bound.
        let shards = entries.num_shards() as u64;
        let per_shard_total = weight_capacity / shards * shards;
        if per_shard_total != entries.capacity() {
            entries.set_capacity(per_shard_total);
        }
        CachedStore {
            inner: self.inner,
            cache: Arc::new(CacheState {
                entries,
                generation: AtomicU64::new(0),
                ttl: self.ttl,
                negative_ttl: self.negative_ttl,
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
/// half-way (a client that disconnected), so a revocation can never leave a stale entry.
struct Invalidate<'a, const N: usize> {
    cache: &'a CacheState,
    drops: [Stale; N],
}

impl<'a, const N: usize> Invalidate<'a, N> {
    fn new(cache: &'a CacheState, drops: [Stale; N]) -> Self {
        Self { cache, drops }
    }
}

impl<const N: usize> std::ops::Drop for Invalidate<'_, N> {
    fn drop(&mut self) {
        for stale in &self.drops {
            match stale {
                Stale::Id(id) => self.cache.invalidate_id(id),
                Stale::Hash(hash) => self.cache.invalidate_hash(hash),
                Stale::Owner(owner) => self.cache.invalidate_owner(owner),
            }
        }
    }
}

impl CacheState {
    /// The cached answer under `key`, if it is younger than its TTL.
    fn fresh(&self, key: &CacheKey) -> Option<CachedAnswer> {
        let entry = self.entries.get(key)?;
        let ttl = match entry.answer {
            CachedAnswer::NotFound => self.negative_ttl,
            CachedAnswer::Found(_) | CachedAnswer::FoundAtId(_) => self.ttl,
        };
        // An expired entry stays until it is overwritten or evicted; it is never served.
        (entry.asked_at.elapsed() < ttl).then_some(entry.answer)
    }

    /// A ticket for an answer about to be fetched from the wrapped store.
    fn start_lookup(&self) -> Lookup {
        Lookup {
            asked_at: Instant::now(),
            generation: self.generation.load(Ordering::SeqCst),
        }
    }

    /// Caches `answers`, unless an invalidation happened since `lookup` started: the store's
    /// answer may then predate the change that was invalidated.
    fn fill(&self, lookup: Lookup, answers: Vec<(CacheKey, CachedAnswer)>) {
        if self.generation.load(Ordering::SeqCst) != lookup.generation {
            return;
        }
        for (key, answer) in &answers {
            let entry = CacheEntry {
                asked_at: lookup.asked_at,
                answer: answer.clone(),
            };
            self.entries.insert(key.clone(), entry);
        }
        // An invalidation between the check above and the inserts may have run its removals
        // before the inserts landed. Invalidations bump the generation before removing, so
        // checking again after inserting catches it; take the answers back out.
        if self.generation.load(Ordering::SeqCst) != lookup.generation {
            for (key, _) in &answers {
                self.entries.remove(key);
            }
        }
    }

    fn invalidated(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn invalidate_id(&self, id: &TokenId) {
        self.invalidated();
        if let Some((_, entry)) = self.entries.remove(&CacheKey::Id(*id))
            && let CachedAnswer::Found(stored) = entry.answer
        {
            // Not needed for correctness (a hash entry whose id entry is gone is ignored), but
            // it frees the slot.
            self.entries.remove(&CacheKey::Hash(stored.hash));
        }
    }

    fn invalidate_hash(&self, hash: &SecretHash) {
        self.invalidated();
        if let Some((_, entry)) = self.entries.remove(&CacheKey::Hash(*hash))
            && let CachedAnswer::FoundAtId(id) = entry.answer
        {
            self.entries.remove_if(&CacheKey::Id(id), |entry| {
                matches!(&entry.answer, CachedAnswer::Found(stored) if stored.hash == *hash)
            });
        }
    }

    fn invalidate_owner(&self, owner: &Owner) {
        self.invalidated();
        // One pass over the cache, shard by shard, instead of asking the store for the owner's
        // ids: no extra round trip, nothing that can fail after the revocation succeeded.
        self.entries.retain(|_, entry| {
            !matches!(&entry.answer, CachedAnswer::Found(stored) if stored.record.owner == *owner)
        });
    }

    fn invalidate_all(&self) {
        self.invalidated();
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
    generation: u64,
}

impl<S: TokenStore> TokenStore for CachedStore<S> {
    /// Inserts into the wrapped store, then drops any cached miss for the id or the hash, so
    /// a lookup made before the token existed cannot hide it.
    async fn insert(&self, record: TokenRecord, hash: SecretHash) -> Result<(), StoreError> {
        let _drop_after = Invalidate::new(&self.cache, [Stale::Id(record.id), Stale::Hash(hash)]);
        self.inner.insert(record, hash).await
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
        let lookup = self.cache.start_lookup();
        let answer = self.inner.get(id).await?;
        let cached = match &answer {
            Some(stored) => CachedAnswer::Found(stored.clone()),
            None => CachedAnswer::NotFound,
        };
        self.cache.fill(lookup, vec![(CacheKey::Id(*id), cached)]);
        Ok(answer)
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
        let lookup = self.cache.start_lookup();
        let answer = self.inner.find_by_hash(hash).await?;
        let cached = match &answer {
            Some(stored) => {
                let id = stored.record.id;
                vec![
                    (CacheKey::Id(id), CachedAnswer::Found(stored.clone())),
                    (CacheKey::Hash(*hash), CachedAnswer::FoundAtId(id)),
                ]
            }
            None => vec![(CacheKey::Hash(*hash), CachedAnswer::NotFound)],
        };
        self.cache.fill(lookup, cached);
        Ok(answer)
    }

    fn list_by_owner(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
        self.inner.list_by_owner(owner)
    }

    /// Revokes in the wrapped store, then drops the token's cached record.
    async fn revoke(&self, id: &TokenId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let _drop_after = Invalidate::new(&self.cache, [Stale::Id(*id)]);
        self.inner.revoke(id, at).await
    }

    /// Rotates in the wrapped store, then drops what is cached about both tokens.
    async fn rotate(
        &self,
        old: &TokenId,
        retire: super::Retire,
        new: TokenRecord,
        hash: SecretHash,
    ) -> Result<bool, StoreError> {
        let _drop_after = Invalidate::new(
            &self.cache,
            [Stale::Id(*old), Stale::Id(new.id), Stale::Hash(hash)],
        );
        self.inner.rotate(old, retire, new, hash).await
    }

    /// Revokes in the wrapped store, then drops every cached record of the owner (one pass over
    /// the cache, no extra store call).
    async fn revoke_owner(&self, owner: &Owner, at: DateTime<Utc>) -> Result<usize, StoreError> {
        let _drop_after = Invalidate::new(&self.cache, [Stale::Owner(owner.clone())]);
        self.inner.revoke_owner(owner, at).await
    }

    /// Writes to the wrapped store; on success, moves the cached record's `last_used_at`
    /// forward. Drops nothing.
    fn remove_expired(
        &self,
        before: DateTime<Utc>,
        marker: &str,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        // Expired records are refused by the verifier whether cached or not; what the cache
        // holds of them ages out with its TTL.
        self.inner.remove_expired(before, marker)
    }

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
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<S> fmt::Debug for CachedStoreBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStoreBuilder")
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("capacity", &self.capacity)
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
        let lookup = store.cache.start_lookup();
        store.invalidator().invalidate_all();
        store.cache.fill(
            lookup,
            vec![(CacheKey::Id(TokenId::from_u64(1)), CachedAnswer::NotFound)],
        );
        assert!(store.is_empty());

        let lookup = store.cache.start_lookup();
        store.cache.fill(
            lookup,
            vec![(CacheKey::Id(TokenId::from_u64(1)), CachedAnswer::NotFound)],
        );
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn capacity_is_rounded_down_to_whole_shards_never_up() {
        for capacity in [0, 1, 31, 33, 100, 1_000, 4_097, 10_000, 12_345] {
            let store = CachedStore::builder(MemoryStore::new())
                .capacity(capacity)
                .build();
            let shards = store.cache.entries.num_shards();
            assert!(store.capacity() <= capacity, "{capacity}");
            assert!(capacity - store.capacity() < shards, "{capacity}");
        }
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
        store.cache.fill(
            lookup,
            vec![(
                CacheKey::Hash(hash(2)),
                CachedAnswer::FoundAtId(TokenId::from_u64(1)),
            )],
        );
        assert!(store.find_by_hash(&hash(2)).await.unwrap().is_none());
    }
}
