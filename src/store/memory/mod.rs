//! The in-memory store: the embedded default. Uses the token values and `crate::store`
//! only.

use std::collections::{HashMap, HashSet};
use std::future::{Future, ready};
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use crossbeam_utils::CachePadded;

use super::{StoreError, StoredToken, TokenStore};
use crate::id::TokenId;
use crate::record::{Owner, TokenRecord};
use crate::scope::ScopeSet;
use crate::secret::SecretHash;

/// Shards per map. Lookups on different shards never touch the same lock.
const SHARDS: usize = 256;

/// Records by id. An id is hashed once per lookup, with the store's keyed hasher (SipHash with
/// a random key, as `std`'s `HashMap`: ids are chosen by whoever presents a token, so the hash
/// must resist collisions crafted in advance). Some middle bits of that one hash pick the shard,
/// the table uses the rest.
type IdShard = RwLock<HashTable<StoredToken>>;
/// Records by secret hash, for formats without an id: each entry is eight bytes of the secret
/// hash (the table's hash; SHA-256 output is uniformly distributed and cannot be chosen by a
/// presenter) and the id's hash, which finds the record in `by_id`, where the whole secret
/// hash is compared. Sixteen bytes an entry instead of a copy of the hash and the id: this
/// index was the largest part of a token's memory.
type HashShard = RwLock<HashTable<HashEntry>>;

/// An entry of the secret-hash index: `(secret_table_hash, id hash)`.
type HashEntry = (u64, u64);

/// A [`TokenStore`] in the process's memory: for tests, single-instance services, and as the
/// default while an application has no database yet. Nothing survives a restart.
///
/// Records sit in 256 independently locked shards keyed by id, with a second sharded map from
/// secret hash to id and an index by owner; about 430 bytes a token all told
/// (`docs/performance.md`). Verification takes one shard's read lock, so
/// verifying threads do not wait for each other. Records are shared (`Arc`) and replaced whole
/// on change (revocation, last-used), so readers never see a half-written record.
///
/// ```
/// use apitoken::{MemoryStore, NewToken, Owner, ScopeRequirement, Verifier};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let verifier = Verifier::builder(MemoryStore::new()).build();
/// let issued = verifier
///     .issuer()
///     .issue(NewToken::new("Production Server", Owner::new("team-1")?).scopes(["vps:read"])?)
///     .await?;
/// let principal = verifier
///     .verify(issued.token.expose_secret(), &ScopeRequirement::all(["vps:read"])?)
///     .await?;
/// assert_eq!(principal.owner().as_str(), "team-1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    hasher: RandomState,
    // Each lock on its own cache line: a read lock writes its lock word, and two threads
    // reading neighbouring shards must not contend for one line.
    by_id: Box<[CachePadded<IdShard>]>,
    by_hash: Box<[CachePadded<HashShard>]>,
    by_owner: RwLock<OwnerIndex>,
    next_id: AtomicU64,
    /// What a miss clones in place of a record; see `get_now`.
    stand_in: StoredToken,
}

/// The index by owner, and the scope sets records share.
#[derive(Debug, Default)]
struct OwnerIndex {
    /// The id hashes of each owner's records (eight bytes a token, not a copy of each id).
    owners: HashMap<Owner, Vec<u64>>,
    /// One copy of each distinct scope set: tokens mostly hold one of a few combinations, and
    /// a shared set is 16 bytes a record instead of its own allocations. Never shrinks; it
    /// holds each combination ever inserted.
    scope_sets: HashSet<ScopeSet>,
}

impl OwnerIndex {
    fn intern(&mut self, scopes: &mut ScopeSet) {
        match self.scope_sets.get(scopes) {
            Some(shared) => *scopes = shared.clone(),
            None => {
                self.scope_sets.insert(scopes.clone());
            }
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty store with room for about `tokens` records before it reallocates.
    pub fn with_capacity(tokens: usize) -> Self {
        let per_shard = tokens.div_ceil(SHARDS);
        Self {
            hasher: RandomState::new(),
            by_id: (0..SHARDS)
                .map(|_| CachePadded::new(RwLock::new(HashTable::with_capacity(per_shard))))
                .collect(),
            by_hash: (0..SHARDS)
                .map(|_| CachePadded::new(RwLock::new(HashTable::with_capacity(per_shard))))
                .collect(),
            by_owner: RwLock::new(OwnerIndex::default()),
            next_id: AtomicU64::new(1),
            stand_in: StoredToken::new(
                TokenRecord::new(
                    TokenId::from_u64(0),
                    Owner::new("apitoken: no such token").expect("a valid owner"),
                    "",
                    DateTime::UNIX_EPOCH,
                ),
                SecretHash::from_bytes([0; 32]),
            ),
        }
    }

    /// How many records the store holds, revoked ones included.
    pub fn len(&self) -> usize {
        self.by_id.iter().map(|shard| read(shard).len()).sum()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn id_hash(&self, id: &TokenId) -> u64 {
        self.hasher.hash_one(id)
    }

    fn id_shard(&self, id_hash: u64) -> &IdShard {
        // Bits the table does not use for its bucket index (the low ones) nor its tags (the
        // top seven) while a shard holds fewer than 2^40 records.
        &self.by_id[(id_hash >> 40) as usize % SHARDS]
    }

    fn hash_shard(&self, hash: &SecretHash) -> &HashShard {
        // The hash is SHA-256 output, uniformly distributed: its first byte picks a shard.
        &self.by_hash[usize::from(hash.as_bytes()[0]) % SHARDS]
    }

    fn insert_now(&self, record: TokenRecord, hash: SecretHash) -> Result<(), StoreError> {
        self.insert_checked(record, hash, false).map(|_| ())
    }

    /// Inserts, or with `first`, inserts only if the owner has no record (returns whether
    /// it inserted).
    fn insert_checked(
        &self,
        mut record: TokenRecord,
        hash: SecretHash,
        first: bool,
    ) -> Result<bool, StoreError> {
        // Lock order everywhere: owner index, then id shard, then hash shard. Every change
        // that adds or removes records holds the owner index's write lock throughout, so the
        // duplicate-hash check below (and the owner check of `first`) cannot be raced.
        let id = record.id;
        let id_hash = self.id_hash(&id);
        let mut owners = write(&self.by_owner);
        if first
            && owners
                .owners
                .get(&record.owner)
                .is_some_and(|ids| !ids.is_empty())
        {
            return Ok(false);
        }
        if self.find_by_hash_now(&hash).is_some() {
            return Err(StoreError::conflict(
                "a token with this secret hash already exists",
            ));
        }
        let mut ids = write(self.id_shard(id_hash));
        let hasher = |stored: &StoredToken| self.id_hash(&stored.record.id);
        let Entry::Vacant(id_slot) = ids.entry(id_hash, |s| s.record.id == id, hasher) else {
            return Err(StoreError::conflict("a token with this id already exists"));
        };
        let secret_hash = secret_table_hash(&hash);
        write(self.hash_shard(&hash)).insert_unique(secret_hash, (secret_hash, id_hash), |e| e.0);
        owners.intern(&mut record.scopes);
        owners
            .owners
            .entry(record.owner.clone())
            .or_default()
            .push(id_hash);
        id_slot.insert(StoredToken::new(record, hash));
        Ok(true)
    }

    fn contains_id(&self, id: &TokenId) -> bool {
        let id_hash = self.id_hash(id);
        read(self.id_shard(id_hash))
            .find(id_hash, |s| s.record.id == *id)
            .is_some()
    }

    fn get_now(&self, id: &TokenId) -> Option<StoredToken> {
        let id_hash = self.id_hash(id);
        let shard = read(self.id_shard(id_hash));
        let found = shard.find(id_hash, |s| s.record.id == *id).cloned();
        if found.is_none() {
            // A hit reads a record to compare its id and clones the entry (an atomic
            // increment, and later a decrement). A miss does the same to a record of this
            // shard, the first at or after the bucket the id would occupy: in a large store
            // that record is as cold in the CPU's cache as a hit's, where one fixed stand-in
            // would always be warm and make an unknown id measurably cheaper
            // (`benches/timing.rs`, `benches/scale.rs`). It also reads the fields the
            // verifier checks on a hit, which sit in other cache lines of the record. The
            // fixed stand-in only serves a shard with no record nearby, which says nothing
            // about the id.
            let stand_in = super::nearest_entry(&shard, id_hash).unwrap_or(&self.stand_in);
            let stand_in = std::hint::black_box(stand_in);
            std::hint::black_box(stand_in.record.id == *id);
            stand_in.record.read_checked_fields();
            drop(std::hint::black_box(stand_in.clone()));
        }
        found
    }

    fn find_by_hash_now(&self, hash: &SecretHash) -> Option<StoredToken> {
        // Candidates first, then the id shards, one lock at a time: holding a hash shard
        // while waiting for an id shard would invert the writers' lock order. Two records
        // whose secret hashes share eight bytes are all but impossible, but each is checked.
        let secret_hash = secret_table_hash(hash);
        // One candidate, nearly always: kept out of the heap; any others go in a `Vec`.
        let (mut first, mut others) = (None, Vec::new());
        for entry in read(self.hash_shard(hash)).iter_hash(secret_hash) {
            if entry.0 == secret_hash {
                match first {
                    None => first = Some(entry.1),
                    Some(_) => others.push(entry.1),
                }
            }
        }
        first.into_iter().chain(others).find_map(|id_hash| {
            read(self.id_shard(id_hash))
                .find(id_hash, |s| s.hash == *hash)
                .cloned()
        })
    }

    /// Replaces the record `id` with `change(record)` if `change` returns one.
    fn update(
        &self,
        id: &TokenId,
        change: impl FnOnce(&TokenRecord) -> Option<TokenRecord>,
    ) -> bool {
        let id_hash = self.id_hash(id);
        let mut shard = write(self.id_shard(id_hash));
        let Some(stored) = shard.find_mut(id_hash, |s| s.record.id == *id) else {
            return false;
        };
        match change(&stored.record) {
            Some(new) => {
                stored.record = Arc::new(new);
                true
            }
            None => false,
        }
    }

    fn revoke_now(&self, id: &TokenId, at: DateTime<Utc>) -> bool {
        self.update(id, |record| {
            (!record.is_revoked()).then(|| TokenRecord {
                revoked_at: Some(at),
                ..record.clone()
            })
        })
    }

    /// Takes a record out entirely (a rotation that could not retire its old token).
    fn remove_now(&self, id: &TokenId) {
        let id_hash = self.id_hash(id);
        let mut owners = write(&self.by_owner);
        let mut ids = write(self.id_shard(id_hash));
        if let Ok(slot) = ids.find_entry(id_hash, |s| s.record.id == *id) {
            let (stored, _) = slot.remove();
            let secret_hash = secret_table_hash(&stored.hash);
            let mut hashes = write(self.hash_shard(&stored.hash));
            if let Ok(slot) = hashes.find_entry(secret_hash, |e| *e == (secret_hash, id_hash)) {
                slot.remove();
            }
            if let Some(hashes) = owners.owners.get_mut(&stored.record.owner)
                && let Some(at) = hashes.iter().position(|h| *h == id_hash)
            {
                hashes.swap_remove(at);
            }
        }
    }

    /// The records of `owner`, as the id shards hold them now.
    fn owner_records(&self, owner: &Owner) -> Vec<Arc<TokenRecord>> {
        let mut id_hashes = read(&self.by_owner)
            .owners
            .get(owner)
            .cloned()
            .unwrap_or_default();
        // Two of an owner's ids with one 64-bit hash would otherwise be listed twice.
        id_hashes.sort_unstable();
        id_hashes.dedup();
        let mut records = Vec::with_capacity(id_hashes.len());
        for id_hash in id_hashes {
            let shard = read(self.id_shard(id_hash));
            records.extend(
                shard
                    .iter_hash(id_hash)
                    .filter(|s| s.record.owner == *owner)
                    .map(|s| Arc::clone(&s.record)),
            );
        }
        records
    }
}

impl TokenStore for MemoryStore {
    fn rotate(
        &self,
        old: &TokenId,
        retire: super::Retire,
        new: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let new_id = new.id;
        let result = self.insert_now(new, hash).map(|()| {
            let retired = self.update(old, |record| {
                (!record.is_revoked()).then(|| retire.apply(record))
            });
            if !retired {
                // The old token was gone or revoked meanwhile: undo, so it is both or neither.
                self.remove_now(&new_id);
            }
            retired
        });
        ready(result)
    }

    fn insert(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(self.insert_now(record, hash))
    }

    fn insert_first(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(self.insert_checked(record, hash, true))
    }

    fn next_id(&self) -> impl Future<Output = Result<TokenId, StoreError>> + Send {
        // Skip ids that were inserted explicitly.
        let id = loop {
            let n = self.next_id.fetch_add(1, Ordering::Relaxed);
            let id = TokenId::from_u64(n);
            if !self.contains_id(&id) {
                break id;
            }
        };
        ready(Ok(id))
    }

    fn get(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        ready(Ok(self.get_now(id)))
    }

    fn find_by_hash(
        &self,
        hash: &SecretHash,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        ready(Ok(self.find_by_hash_now(hash)))
    }

    fn list_by_owner(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
        let mut records: Vec<TokenRecord> = self
            .owner_records(owner)
            .iter()
            .map(|record| TokenRecord::clone(record))
            .collect();
        records.sort_by_key(|r| (r.created_at, r.id));
        ready(Ok(records))
    }

    fn revoke(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self.revoke_now(id, at)))
    }

    fn revoke_owner(
        &self,
        owner: &Owner,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        // The owner index's write lock is held throughout: an insert for this owner (which
        // takes it too) lands wholly before, and is revoked, or wholly after. A snapshot of
        // the ids revoked one by one would miss a token inserted in between.
        let owners = write(&self.by_owner);
        let mut id_hashes = owners.owners.get(owner).cloned().unwrap_or_default();
        id_hashes.sort_unstable();
        id_hashes.dedup();
        let mut revoked = 0;
        for id_hash in id_hashes {
            let mut shard = write(self.id_shard(id_hash));
            for stored in shard.iter_hash_mut(id_hash) {
                if stored.record.owner == *owner && !stored.record.is_revoked() {
                    stored.record = Arc::new(TokenRecord {
                        revoked_at: Some(at),
                        ..TokenRecord::clone(&stored.record)
                    });
                    revoked += 1;
                }
            }
        }
        drop(owners);
        ready(Ok(revoked))
    }

    fn remove_expired(
        &self,
        before: DateTime<Utc>,
        marker: &str,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let mut gone = Vec::new();
        if super::is_plain_marker(marker) {
            for shard in self.by_id.iter() {
                gone.extend(
                    read(shard)
                        .iter()
                        .filter(|s| {
                            s.record.expires_at.is_some_and(|end| end <= before)
                                && s.record.metadata.contains_key(marker)
                        })
                        .map(|s| s.record.id),
                );
            }
        }
        for id in &gone {
            self.remove_now(id);
        }
        ready(Ok(gone.len()))
    }

    fn record_last_used(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.update(id, |record| {
            record
                .last_used_at
                .is_none_or(|last| last < at)
                .then(|| TokenRecord {
                    last_used_at: Some(at),
                    ..record.clone()
                })
        });
        ready(Ok(()))
    }
}

/// The table hash of a secret hash: eight of its bytes (SHA-256 output needs no further
/// mixing, and a presenter cannot choose it without inverting SHA-256).
fn secret_table_hash(hash: &SecretHash) -> u64 {
    let bytes = hash.as_bytes();
    u64::from_le_bytes([
        bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7], bytes[8],
    ])
}

// A panic while a lock is held cannot leave a map half-changed (every change is one insert or
// one `Arc` swap), so a poisoned lock is still safe to use.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
