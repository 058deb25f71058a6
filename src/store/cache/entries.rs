//! What a cache entry holds (an answer, when it was asked, what it depends on) and what it
//! weighs against the byte budget.
//! Uses the token values and `crate::store` only, as the whole cache does.

use std::mem::size_of;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Instant;

use quick_cache::Weighter;

use crate::id::TokenId;
use crate::record::TokenRecord;
use crate::secret::SecretHash;
use crate::store::StoredToken;

/// The bytes one unit of [`CachedStoreBuilder::capacity`](super::CachedStoreBuilder::capacity)
/// stands for: about what a record with a few scopes and no metadata weighs (a cached miss
/// weighs about half as much).
pub(super) const BYTES_PER_ENTRY: usize = 512;

/// What the cache is keyed by: the two ways the verifier looks a token up.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) enum CacheKey {
    Id(TokenId),
    Hash(SecretHash),
}

#[derive(Clone)]
pub(super) struct CacheEntry {
    /// When the store was asked for this answer (before the call, so the age is an upper
    /// bound on how old the answer is).
    pub(super) asked_at: Instant,
    /// The invalidation clock when the lookup started. An invalidation of one of `stripes`
    /// (or a clear) that ticked later makes the entry stale: it is never served again.
    pub(super) tick: u64,
    /// The invalidation stripes this answer depends on: its key's, and for a record its id's,
    /// its hash's and its owner's.
    pub(super) stripes: [u16; 3],
    /// What the entry holds, in bytes (an estimate: [`ENTRY_OVERHEAD`] and [`record_bytes`]).
    pub(super) weight: u64,
    pub(super) answer: CachedAnswer,
}

#[derive(Clone)]
pub(super) enum CachedAnswer {
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
pub(super) enum Flight {
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
pub(super) struct EntryWeighter;

impl Weighter<CacheKey, CacheEntry> for EntryWeighter {
    fn weight(&self, _key: &CacheKey, entry: &CacheEntry) -> u64 {
        entry.weight
    }
}

#[derive(Clone, Copy)]
pub(super) struct Lookup {
    pub(super) asked_at: Instant,
    /// The invalidation clock when the lookup started.
    pub(super) tick: u64,
}

/// A seat in single flight: frees itself when dropped (the lookup done, failed or cancelled).
pub(super) struct Seat<'a>(pub(super) &'a AtomicUsize);

impl std::ops::Drop for Seat<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What every entry weighs besides the record it may hold: its key and value as stored, and
/// quick_cache's slot, index and list links around them.
pub(super) const ENTRY_OVERHEAD: u64 =
    (size_of::<CacheKey>() + size_of::<CacheEntry>() + 64) as u64;

/// What a cached record holds, in bytes: the record, its strings, scopes and networks, and an
/// estimate of its metadata in memory.
pub(super) fn record_bytes(record: &TokenRecord) -> u64 {
    let scopes: usize = record
        .scopes
        .iter()
        .map(|scope| size_of::<crate::scope::Scope>() + scope.as_str().len())
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
pub(super) fn entries_to_bytes(entries: usize) -> u64 {
    u64::try_from(entries)
        .unwrap_or(u64::MAX)
        .saturating_mul(BYTES_PER_ENTRY as u64)
}
