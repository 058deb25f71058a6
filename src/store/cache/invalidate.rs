//! Invalidation: the [`CacheInvalidator`] handle, the guard that invalidates after every
//! write through the cache, and the stripes and doubts that keep an answer read before a
//! change from being cached or served after it.
//! Uses the token values and `crate::store` only, as the whole cache does.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::STRIPES;
use super::entries::{CacheKey, CachedAnswer};
use super::state::CacheState;
use crate::id::TokenId;
use crate::record::Owner;
use crate::secret::SecretHash;
use crate::store::{StoreChange, StoreError, StoredToken};

/// Drops entries from a [`CachedStore`](super::CachedStore)'s cache, from anywhere: a cheap
/// handle (one `Arc`) that is `Clone + Send + Sync + 'static`, made by
/// [`CachedStore::invalidator`](super::CachedStore::invalidator).
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
    pub(super) cache: Arc<CacheState>,
}

/// What an invalidation names; hashed to pick its stripe.
#[derive(Hash)]
pub(super) enum Tag<'a> {
    Id(&'a TokenId),
    Hash(&'a SecretHash),
    Owner(&'a str),
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
pub(super) enum Stale {
    Id(TokenId),
    Hash(SecretHash),
    Owner(Owner),
}

/// Drops cache entries when it goes out of scope: after the write returns, after it fails (a
/// store that timed out may still have committed), and when the write's future is dropped
/// half-way (a client that disconnected), so a revocation can never leave a stale entry. A
/// write that did not succeed also puts its keys' stripes in doubt for a TTL (see
/// `CacheState::doubt`), since it may still commit after this runs.
pub(super) struct Invalidate<'a, const N: usize> {
    cache: &'a CacheState,
    drops: [Stale; N],
    succeeded: bool,
}

impl<'a, const N: usize> Invalidate<'a, N> {
    pub(super) fn new(cache: &'a CacheState, drops: [Stale; N]) -> Self {
        Self {
            cache,
            drops,
            succeeded: false,
        }
    }

    /// Notes the write's outcome and hands it back.
    pub(super) fn settle<T>(mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
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
    /// Whether no stripe of `stripes` was invalidated, and the cache not cleared, after the
    /// clock read `tick`.
    pub(super) fn untouched_since(&self, tick: u64, stripes: &[u16]) -> bool {
        // Every stripe and clear stamp is a tick the clock handed out: if it has not moved,
        // nothing was invalidated since (the common case, one load).
        self.clock.load(Ordering::SeqCst) == tick
            || self.cleared.load(Ordering::SeqCst) <= tick
                && stripes
                    .iter()
                    .all(|&stripe| self.stripes[usize::from(stripe)].load(Ordering::SeqCst) <= tick)
    }

    pub(super) fn stripe(&self, tag: Tag<'_>) -> u16 {
        // STRIPES is a power of two below 2^16: the cast keeps the low bits.
        (self.stripe_hasher.hash_one(tag) as usize % STRIPES) as u16
    }

    pub(super) fn key_stripe(&self, key: &CacheKey) -> u16 {
        match key {
            CacheKey::Id(id) => self.stripe(Tag::Id(id)),
            CacheKey::Hash(hash) => self.stripe(Tag::Hash(hash)),
        }
    }

    /// The stripes an answer found under `key` depends on. A record depends on its id, its
    /// hash and its owner, whichever key it was found by, so `invalidate`, `invalidate_hash`
    /// and `invalidate_owner` all reach it.
    pub(super) fn answer_stripes(&self, key: &CacheKey, answer: Option<&StoredToken>) -> [u16; 4] {
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

    /// Whether an answer a lookup in flight handed over may be taken by a lookup that waited
    /// for it: nothing it depends on was invalidated since that lookup started.
    pub(super) fn still_current(
        &self,
        key: &CacheKey,
        tick: u64,
        answer: Option<&StoredToken>,
    ) -> bool {
        self.untouched_since(tick, &self.answer_stripes(key, answer))
    }

    /// Marks a stripe invalidated, before the caller drops entries: from here on, nothing
    /// in it that a lookup started before can be cached or served.
    /// Puts `tag`'s stripe in doubt for a TTL: see `doubt`.
    pub(super) fn doubt(&self, tag: Tag<'_>) {
        let stripe = self.stripe(tag);
        let until = Instant::now() + self.ttl;
        let mut doubt = self.doubt.lock().unwrap_or_else(|e| e.into_inner());
        doubt.insert(stripe, until);
        self.any_doubt.store(true, Ordering::SeqCst);
    }

    /// Whether any of `stripes` is in doubt now (forgetting doubts that have lapsed).
    pub(super) fn in_doubt(&self, stripes: &[u16]) -> bool {
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

    pub(super) fn touch(&self, tag: Tag<'_>) {
        let tick = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        self.stripes[usize::from(self.stripe(tag))].fetch_max(tick, Ordering::SeqCst);
    }

    pub(super) fn invalidate_id(&self, id: &TokenId) {
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

    pub(super) fn invalidate_hash(&self, hash: &SecretHash) {
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

    pub(super) fn invalidate_owner(&self, owner: &Owner) {
        self.touch(Tag::Owner(owner.as_str()));
        // One pass over the cache, shard by shard, instead of asking the store for the owner's
        // ids: no extra round trip, nothing that can fail after the revocation succeeded.
        self.entries.retain(|_, entry| {
            !matches!(&entry.answer, CachedAnswer::Found(stored) if stored.record.owner == *owner)
        });
    }

    pub(super) fn invalidate_all(&self) {
        let tick = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        self.cleared.fetch_max(tick, Ordering::SeqCst);
        self.flights.clear();
        self.entries.clear();
    }
}
