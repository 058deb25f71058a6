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
//!
//! The files: this one holds [`CachedStore`] and its [`TokenStore`] implementation (lookups
//! with single flight, writes that invalidate); `builder.rs` its configuration; `entries.rs`
//! what an entry holds and how much it weighs; `state.rs` the state a store shares with its
//! invalidators and how answers are filled and served; `invalidate.rs` the
//! [`CacheInvalidator`], the guard that invalidates after every write, and the invalidation
//! stripes; `tests.rs` the unit tests.
//!
//! It may use the token values (`crate::{id, record, scope, secret}`) and `crate::store`'s
//! trait and types, nothing above the store layer.

mod builder;
mod entries;
mod invalidate;
mod state;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use builder::CachedStoreBuilder;
use entries::{BYTES_PER_ENTRY, CacheKey, CachedAnswer, Flight, entries_to_bytes};
pub use invalidate::CacheInvalidator;
use invalidate::{Invalidate, Stale};
use state::CacheState;

use super::{StoreError, StoredToken, TokenStore};
use crate::id::TokenId;
use crate::record::{Owner, TokenRecord};
use crate::secret::SecretHash;

const DEFAULT_TTL: Duration = Duration::from_secs(10);
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
const DEFAULT_CAPACITY: usize = 10_000;
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
mod tests;
