//! The state a [`CachedStore`](super::CachedStore) shares with its invalidators: the entries,
//! the lookups in flight, the invalidation clock; how an answer is served and filled. Uses the
//! token values and `crate::store` only, as the whole cache does.

use std::collections::HashMap;
use std::hash::RandomState;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use quick_cache::UnitWeighter;
use quick_cache::sync::{Cache, EntryAction};

use super::MAX_IN_FLIGHT;
use super::entries::{
    CacheEntry, CacheKey, CachedAnswer, ENTRY_OVERHEAD, EntryWeighter, Flight, Lookup, Seat,
    record_bytes,
};
use crate::id::TokenId;
use crate::record::TokenRecord;
use crate::store::StoredToken;

/// The state a [`CachedStore`](super::CachedStore) shares with its
/// [`CacheInvalidator`](super::CacheInvalidator)s.
pub(super) struct CacheState {
    pub(super) entries: Cache<CacheKey, CacheEntry, EntryWeighter, RandomState>,
    /// Lookups in flight, for single flight: only placeholders (its capacity is zero, so an
    /// answer handed to the waiters is never kept in it).
    pub(super) flights: Cache<CacheKey, Flight, UnitWeighter, RandomState>,
    /// Lookups leading or waiting in `flights` now, at most [`MAX_IN_FLIGHT`].
    pub(super) in_flight: AtomicUsize,
    /// Ticks once per invalidation, before anything is dropped.
    pub(super) clock: AtomicU64,
    /// For each stripe of keys, the tick of its last invalidation. A lookup notes the clock
    /// before asking the store and its answer is kept (and served) only while none of the
    /// stripes it depends on has a later tick, so an answer read before a revocation is never
    /// served after the revocation's invalidation, while invalidations of other keys leave it
    /// alone.
    pub(super) stripes: Box<[AtomicU64]>,
    /// The tick of the last [`invalidate_all`](super::CacheInvalidator::invalidate_all): it stops
    /// every refill in flight.
    pub(super) cleared: AtomicU64,
    /// Keyed, like the cache's own hasher: invalidated ids come from requests too.
    pub(super) stripe_hasher: RandomState,
    pub(super) ttl: Duration,
    pub(super) negative_ttl: Duration,
    /// Stripes whose last write failed, and until when their refills are not kept: a write
    /// that timed out may still commit later (a lock held elsewhere, then released), after
    /// its invalidation ran, and a refill made in between would then serve the old record
    /// for a whole TTL. Doubt lasts one TTL, so such a write is seen at most one TTL late,
    /// and the stripe's lookups go to the store meanwhile.
    pub(super) doubt: std::sync::Mutex<HashMap<u16, Instant>>,
    /// Whether `doubt` has any entry: the fill path reads this one atomic when none does.
    pub(super) any_doubt: std::sync::atomic::AtomicBool,
}

impl CacheState {
    /// The cached answer under `key`, if it is younger than its TTL and nothing it depends on
    /// was invalidated since its lookup started. The hit path: one shard read lock, a clone
    /// of the entry (an `Arc` count), and one atomic load (five after an invalidation).
    pub(super) fn fresh(&self, key: &CacheKey) -> Option<CachedAnswer> {
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

    /// A ticket for an answer about to be fetched from the wrapped store.
    pub(super) fn start_lookup(&self) -> Lookup {
        Lookup {
            asked_at: Instant::now(),
            tick: self.clock.load(Ordering::SeqCst),
        }
    }

    /// Caches what the store answered for `key`, unless an invalidation of something the
    /// answer depends on ticked since `lookup` started: the answer may then predate the change
    /// that was invalidated. Invalidations of other keys do not stop it.
    pub(super) fn fill(&self, key: &CacheKey, lookup: Lookup, answer: Option<&StoredToken>) {
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

    pub(super) fn fill_one(&self, key: &CacheKey, lookup: Lookup, answer: CachedAnswer) {
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

    /// Takes a seat in single flight, if there is one free.
    pub(super) fn seat(&self) -> Option<Seat<'_>> {
        let taken = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let seat = Seat(&self.in_flight);
        (taken < MAX_IN_FLIGHT).then_some(seat)
    }

    /// Moves the cached record's `last_used_at` forward to `at`, in place: the entry keeps its
    /// age, and nothing is added if the record is not cached.
    pub(super) fn refresh_last_used(&self, id: &TokenId, at: DateTime<Utc>) {
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
