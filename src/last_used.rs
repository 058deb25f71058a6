//! Last-use tracking off the request path: times are gathered in memory and written to the
//! store in batches.
//!
//! # The guarantee
//!
//! - **No write on the request path.** A successful verification notes `(token id, now)` in an
//!   in-memory buffer: one short-held lock on one of 256 shards, chosen by a hash of the id, and
//!   no I/O. A verification never waits on a last-used write, and a failing store cannot slow
//!   it down or refuse it.
//! - **One batch per interval.** [`Verifier::flush_last_used`] drains the buffer and writes it
//!   with one [`TokenStore::record_last_used_batch`] call. The buffer keeps one entry per token,
//!   so 10,000 verifications of one token between two flushes cost one entry in one batch, not
//!   10,000 writes. The batch is sorted by id and holds each id once, so two instances that
//!   flush at the same moment update rows in the same order (Sanctum's last-used writes
//!   deadlock on exactly this, laravel/sanctum #207 and #574).
//! - **Forward only.** The buffer keeps the latest time per id, and the store contract
//!   ([`TokenStore::record_last_used`]) never moves `last_used_at` backwards, so an older time
//!   never replaces a newer one, whether it comes from another instance or from a retry.
//! - **Retried after failure.** If the batch write fails, its entries go back into the buffer
//!   (keeping the later time where the id was noted again meanwhile) and the next flush writes
//!   them. The same happens if the flush is cancelled half-way (its future dropped, its task
//!   aborted).
//! - **Flushed on shutdown.** `LastUsedFlusher::shutdown` (feature `tokio`) stops the
//!   background task and flushes what remains. Call it on SIGTERM as well as Ctrl-C:
//!   `docker stop`, Kubernetes and systemd send SIGTERM, and a process killed by it loses
//!   what was buffered since the last tick.
//!
//! # The bounds
//!
//! - **A crash loses at most one interval** of last-use times (default
//!   [`DEFAULT_FLUSH_INTERVAL`], 60 s), plus whatever failed flushes kept buffered. The
//!   authentication itself is never affected: last use is informational.
//! - **Stored values lag by up to one interval**: `last_used_at` in the store, and so in
//!   [`Principal::record`](crate::Principal::record) (which is the record as the store
//!   returned it, before this verification), is about one interval behind at most while a
//!   flusher runs and the store accepts its writes.
//! - **Memory is bounded**: at most [`DEFAULT_MAX_PENDING`] distinct ids (100,000, about 8 MB;
//!   [`VerifierBuilder::last_used_max_pending`](crate::VerifierBuilder::last_used_max_pending)
//!   changes it) wait between two flushes. When the buffer is full, a note for an id already in
//!   it still moves that id's time forward, but a note for a new id is dropped and counted
//!   ([`Verifier::last_used_dropped`]); one `tracing` warning per flush says so. The buffer
//!   never flushes early on its own: a flood of distinct tokens cannot turn into a flood of
//!   writes either.
//!
//! # Who flushes
//!
//! The verifier never writes last use by itself. The application either
//!
//! - spawns the background flusher once, with `Verifier::spawn_last_used_flusher` (feature
//!   `tokio`), and calls `LastUsedFlusher::shutdown` when it stops serving; or
//! - calls [`Verifier::flush_last_used`] on its own schedule (a cron-like job, the end of a
//!   batch run, a test).
//!
//! Without either, times stay in the buffer until it is full and are lost when the process
//! exits. This is a deliberate choice: flushing inline, from the verification that happens to
//! find the buffer old, would put a store write back on the request path of that one request.
//!
//! ```
//! use std::time::Duration;
//!
//! use apitoken::{MemoryStore, NewToken, Owner, TokenStore, Verifier};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let verifier = Verifier::builder(MemoryStore::new())
//!     .last_used_flush_interval(Duration::from_secs(60)) // the default
//!     .build();
//! // Once, when the service starts:
//! let flusher = verifier.spawn_last_used_flusher();
//!
//! let issued = verifier.issuer().issue(NewToken::new("CI", Owner::new("team-1")?)).await?;
//! for _ in 0..1_000 {
//!     verifier.authenticate(issued.token.expose_secret()).await?;
//! }
//! // Noted in memory; nothing written yet.
//! assert_eq!(verifier.last_used_pending(), 1);
//! let stored = verifier.store().get(&issued.record.id).await?.unwrap();
//! assert_eq!(stored.record.last_used_at, None);
//!
//! // When the service stops: one batch with one entry.
//! assert_eq!(flusher.shutdown().await?, 1);
//! let stored = verifier.store().get(&issued.record.id).await?.unwrap();
//! assert!(stored.record.last_used_at.is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;

use crossbeam_utils::CachePadded;
use foldhash::fast::RandomState;
use hashbrown::HashTable;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::id::TokenId;
use crate::store::{StoreError, TokenStore};
use crate::verifier::Verifier;

/// How often buffered last-use times are written, unless
/// [`VerifierBuilder::last_used_flush_interval`](crate::VerifierBuilder::last_used_flush_interval)
/// says otherwise: once a minute, as Unkey syncs its usage.
///
/// ```
/// assert_eq!(apitoken::last_used::DEFAULT_FLUSH_INTERVAL.as_secs(), 60);
/// ```
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// The shortest flush interval; shorter ones are raised to it.
///
/// ```
/// assert_eq!(apitoken::last_used::MIN_FLUSH_INTERVAL.as_millis(), 1);
/// ```
pub const MIN_FLUSH_INTERVAL: Duration = Duration::from_millis(1);

/// How many distinct token ids may wait between two flushes, unless
/// [`VerifierBuilder::last_used_max_pending`](crate::VerifierBuilder::last_used_max_pending)
/// says otherwise. An entry is 56 bytes plus the hash table's slack, so a full buffer takes
/// about 8 MB (its tables keep that capacity after a flush), and a flush briefly holds a
/// 5.6 MB batch beside it.
///
/// ```
/// assert_eq!(apitoken::last_used::DEFAULT_MAX_PENDING, 100_000);
/// ```
pub const DEFAULT_MAX_PENDING: usize = 100_000;

/// Shards of the buffer. Notes for ids on different shards never touch the same lock.
const SHARDS: usize = 256;

/// Keyed by foldhash rather than SipHash: only ids of tokens that verified are ever inserted,
/// so nobody can fill a shard with chosen colliding keys, and a note is on every request's
/// path (SipHash was most of its cost).
/// One hash of the id picks the shard (its top bits) and the slot in the shard's table (the
/// table uses the rest), so a note hashes the id once.
type Shard = Mutex<HashTable<(TokenId, DateTime<Utc>)>>;

/// The last-use times noted since the last flush: the latest per id, in sharded maps.
pub(crate) struct LastUsedBuffer {
    hasher: RandomState,
    // Each lock on its own cache line, so notes on different shards never share one.
    shards: Box<[CachePadded<Shard>]>,
    flush_interval: Duration,
    max_pending: usize,
    /// Entries in all shards. Changed only under the lock of the shard that gains or loses
    /// the entries, and never above `max_pending`.
    pending: AtomicUsize,
    /// Notes and retried entries dropped because the buffer was full, ever.
    dropped: AtomicU64,
    /// The same since the last drain, so a full buffer is logged once per flush.
    dropped_since_drain: AtomicU64,
    /// Entries taken out for writing and not yet written: they stay visible to
    /// [`noted`](Self::noted) (the idle check) until they are in the store or back in a
    /// shard. Moved here under their shard's lock, so a note is never in neither place. Each
    /// id's latest time in flight, and how many batches out hold it: an id drained, put back
    /// by a failed write and drained again is in two batches at once, and is shown until
    /// both are retired.
    in_flight: Mutex<HashMap<TokenId, InFlight, RandomState>>,
    /// How many batches are in flight, so a lookup that finds nothing in its shard skips
    /// the in-flight batches when none is out.
    flushing: AtomicUsize,
}

/// An id in batches being written: its latest time there, and how many batches hold it.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    at: DateTime<Utc>,
    batches: usize,
}

/// The most last-use entries one [`TokenStore::record_last_used_batch`] call is given: a
/// flush of a full buffer is a series of statements that each fit the store's deadline, and
/// a failure keeps only the unwritten rest.
pub const FLUSH_CHUNK: usize = 1_000;

impl LastUsedBuffer {
    pub(crate) fn new(flush_interval: Duration, max_pending: usize) -> Self {
        Self {
            hasher: RandomState::default(),
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(Mutex::new(HashTable::new())))
                .collect(),
            flush_interval: flush_interval.max(MIN_FLUSH_INTERVAL),
            max_pending,
            pending: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            dropped_since_drain: AtomicU64::new(0),
            in_flight: Mutex::new(HashMap::with_hasher(RandomState::default())),
            flushing: AtomicUsize::new(0),
        }
    }

    pub(crate) fn flush_interval(&self) -> Duration {
        self.flush_interval
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Notes that `id` was used at `at`, keeping the later time if `id` is already noted. No
    /// I/O; drops the note if `id` is new and the buffer is full.
    pub(crate) fn note(&self, id: TokenId, at: DateTime<Utc>) {
        if !self.keep_later(id, at) {
            self.count_dropped(1);
        }
    }

    /// Keeps `at` as `id`'s time unless a later one is noted; `false` when `id` is new and
    /// the buffer is full.
    fn keep_later(&self, id: TokenId, at: DateTime<Utc>) -> bool {
        let hash = self.hasher.hash_one(id);
        let mut shard = lock(self.shard(hash));
        // Found first, not through `entry`: `entry` makes room for an insert before it looks,
        // so a note of an id already held allocated whenever its shard's table was full
        // (`tests/allocations.rs`).
        if let Some((_, noted)) = shard.find_mut(hash, |(noted, _)| *noted == id) {
            if at > *noted {
                *noted = at;
            }
            return true;
        }
        if !self.reserve() {
            return false;
        }
        shard.insert_unique(hash, (id, at), |(noted, _)| self.hasher.hash_one(noted));
        true
    }

    /// The noted, not yet written, last use of `id`: in the buffer, or in a batch being
    /// written.
    pub(crate) fn noted(&self, id: &TokenId) -> Option<DateTime<Utc>> {
        let hash = self.hasher.hash_one(id);
        let buffered = lock(self.shard(hash))
            .find(hash, |(noted, _)| noted == id)
            .map(|(_, at)| *at);
        if self.flushing.load(Ordering::Acquire) == 0 {
            return buffered;
        }
        let in_flight = self.in_flight().get(id).map(|shown| shown.at);
        buffered.max(in_flight)
    }

    /// Reads the entry a note of `id` would most likely meet, and discards it: for a refusal
    /// to touch the buffer's memory as an accepted token's note does. That is the first entry
    /// at or after the slot `id`'s hash starts at, whether or not it is `id`'s: the same code
    /// and the same memory for an id the buffer holds (a known token's) and one it does not
    /// (an unknown id), so the two refusals do not differ here.
    pub(crate) fn touch(&self, id: &TokenId) {
        let hash = self.hasher.hash_one(id);
        let shard = lock(self.shard(hash));
        let entry = crate::store::nearest_entry(&shard, hash);
        std::hint::black_box(entry.map(|(noted, at)| (noted == id, *at)));
    }

    fn in_flight(&self) -> MutexGuard<'_, HashMap<TokenId, InFlight, RandomState>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes every entry out of the buffer, sorted by id. Until the batch is written its
    /// entries stay visible to [`noted`](Self::noted); those not marked
    /// [`written`](Draining::written) go back into the buffer.
    pub(crate) fn drain(&self) -> Draining<'_> {
        let mut batch = Vec::with_capacity(self.pending());
        // Announced before any entry moves, so `noted` knows to look in flight.
        self.flushing.fetch_add(1, Ordering::AcqRel);
        for shard in &*self.shards {
            // Lock order everywhere: a shard, then the in-flight map.
            let mut shard = lock(shard);
            let taken = shard.len();
            if taken == 0 {
                continue;
            }
            let mut in_flight = self.in_flight();
            for (id, at) in shard.drain() {
                let shown = in_flight.entry(id).or_insert(InFlight { at, batches: 0 });
                shown.at = shown.at.max(at);
                shown.batches += 1;
                batch.push((id, at));
            }
            drop(in_flight);
            self.pending.fetch_sub(taken, Ordering::AcqRel);
        }
        self.dropped_since_drain.store(0, Ordering::Relaxed);
        batch.sort_unstable_by_key(|(id, _)| *id);
        Draining {
            buffer: self,
            batch,
            written: 0,
        }
    }

    /// Stops showing `batch` as in flight: it is stored, or back in the buffer. An id another
    /// batch out also holds stays shown, with the later of the two times, until that batch
    /// is retired too.
    fn retire(&self, batch: &[(TokenId, DateTime<Utc>)]) {
        let mut in_flight = self.in_flight();
        for (id, _) in batch {
            if let Some(shown) = in_flight.get_mut(id) {
                shown.batches -= 1;
                if shown.batches == 0 {
                    in_flight.remove(id);
                }
            }
        }
        drop(in_flight);
        self.flushing.fetch_sub(1, Ordering::AcqRel);
    }

    /// Puts entries back after a failed write: the later time wins where the id was noted
    /// again meanwhile; new ids take free room and are dropped (and counted) beyond it.
    fn restore(&self, batch: Vec<(TokenId, DateTime<Utc>)>) {
        let mut lost = 0;
        for (id, at) in batch {
            if !self.keep_later(id, at) {
                lost += 1;
            }
        }
        if lost > 0 {
            self.count_dropped(lost);
        }
    }

    /// The shard of an id whose hash is `hash`: its top bits, which the table does not use
    /// for its slots (hashbrown takes the low bits for the slot and the top 7 for its tags,
    /// so the 8 below those).
    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash >> 49) as usize % SHARDS]
    }

    /// Takes room for one more entry, if there is any.
    fn reserve(&self) -> bool {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .is_ok()
    }

    fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        if self.dropped_since_drain.fetch_add(n, Ordering::Relaxed) == 0 {
            tracing::warn!(
                max_pending = self.max_pending,
                "last-used buffer full: last use of further tokens is not recorded until the \
                 next flush (is a flusher running? see Verifier::spawn_last_used_flusher)"
            );
        }
    }
}

impl fmt::Debug for LastUsedBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LastUsedBuffer")
            .field("flush_interval", &self.flush_interval)
            .field("max_pending", &self.max_pending)
            .field("pending", &self.pending())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl Drop for LastUsedBuffer {
    fn drop(&mut self) {
        let pending = self.pending();
        if pending > 0 {
            tracing::warn!(
                pending,
                "verifier dropped with last-use times that were never flushed"
            );
        }
    }
}

/// A drained batch. Dropped before all of it is [`written`](Self::written), it puts the rest
/// back, so a failed or cancelled write loses nothing.
pub(crate) struct Draining<'a> {
    buffer: &'a LastUsedBuffer,
    batch: Vec<(TokenId, DateTime<Utc>)>,
    /// How many of the first entries are stored.
    written: usize,
}

impl Draining<'_> {
    pub(crate) fn batch(&self) -> &[(TokenId, DateTime<Utc>)] {
        &self.batch
    }

    /// The entries not yet stored.
    pub(crate) fn unwritten(&self) -> &[(TokenId, DateTime<Utc>)] {
        &self.batch[self.written..]
    }

    /// Marks the next `n` unwritten entries as stored.
    pub(crate) fn mark_written(&mut self, n: usize) {
        self.written = (self.written + n).min(self.batch.len());
    }

    /// Marks the whole batch as stored; returns how many ids it held.
    pub(crate) fn written(mut self) -> usize {
        self.written = self.batch.len();
        self.batch.len()
    }
}

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        // Back in the buffer (or stored) first, then no longer shown as in flight.
        let rest = self.batch[self.written..].to_vec();
        if !rest.is_empty() {
            self.buffer.restore(rest);
        }
        self.buffer.retire(&self.batch);
    }
}

// A panic while a shard is locked cannot leave its map half-changed (every change is one
// insert, one assignment or one drain), so a poisoned lock is still safe to use.
fn lock(shard: &Shard) -> MutexGuard<'_, HashTable<(TokenId, DateTime<Utc>)>> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

impl<S: TokenStore> Verifier<S> {
    /// Writes the last-use times noted since the previous flush, with one
    /// [`TokenStore::record_last_used_batch`] call, and returns how many tokens it wrote.
    ///
    /// An empty buffer makes no store call and returns `Ok(0)`, as does a verifier built with
    /// [`disable_last_used`](crate::VerifierBuilder::disable_last_used). If the store fails,
    /// the entries go back into the buffer for the next flush and the error is returned; the
    /// same if this future is dropped before it completes. Flushes may run concurrently (each
    /// takes its own entries). See the [module documentation](self) for the guarantees.
    ///
    /// ```
    /// use apitoken::{MemoryStore, NewToken, Owner, TokenStore, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let issued = verifier.issuer().issue(NewToken::new("CI", Owner::new("team-1")?)).await?;
    /// let principal = verifier.authenticate(issued.token.expose_secret()).await?;
    /// // The principal holds the record as it was before this use.
    /// assert_eq!(principal.record().last_used_at, None);
    ///
    /// assert_eq!(verifier.flush_last_used().await?, 1);
    /// let stored = verifier.store().get(&issued.record.id).await?.unwrap();
    /// assert!(stored.record.last_used_at.is_some());
    /// assert_eq!(verifier.flush_last_used().await?, 0); // nothing new
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn flush_last_used(&self) -> Result<usize, StoreError> {
        let Some(buffer) = self.last_used_buffer() else {
            return Ok(0);
        };
        let mut draining = buffer.drain();
        if draining.batch().is_empty() {
            return Ok(0);
        }
        // In chunks, each its own store call: a full buffer fits the store's deadline chunk
        // by chunk, and a failure puts back only what was not written. On error (or
        // cancellation) `draining` is dropped here and restores the unwritten entries.
        while !draining.unwritten().is_empty() {
            let chunk = &draining.unwritten()[..draining.unwritten().len().min(FLUSH_CHUNK)];
            let n = chunk.len();
            self.store().record_last_used_batch(chunk).await?;
            draining.mark_written(n);
        }
        let written = draining.written();
        tracing::debug!(written, "flushed last-use times");
        Ok(written)
    }

    /// The configured [flush interval](crate::VerifierBuilder::last_used_flush_interval), for
    /// an application that schedules [`flush_last_used`](Self::flush_last_used) itself (the
    /// tokio flusher uses it on its own); `None` if last use is not tracked.
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// assert_eq!(verifier.last_used_flush_interval(), Some(Duration::from_secs(60)));
    /// let verifier = Verifier::builder(MemoryStore::new()).disable_last_used().build();
    /// assert_eq!(verifier.last_used_flush_interval(), None);
    /// ```
    pub fn last_used_flush_interval(&self) -> Option<Duration> {
        self.last_used_buffer().map(LastUsedBuffer::flush_interval)
    }

    /// How many tokens have a last-use time waiting for the next flush.
    ///
    /// ```
    /// use apitoken::{MemoryStore, NewToken, Owner, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let issued = verifier.issuer().issue(NewToken::new("CI", Owner::new("team-1")?)).await?;
    /// verifier.authenticate(issued.token.expose_secret()).await?;
    /// verifier.authenticate(issued.token.expose_secret()).await?;
    /// assert_eq!(verifier.last_used_pending(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn last_used_pending(&self) -> usize {
        self.last_used_buffer().map_or(0, LastUsedBuffer::pending)
    }

    /// How many last-use notes were dropped, since the verifier was built, because the buffer
    /// already held [`last_used_max_pending`](crate::VerifierBuilder::last_used_max_pending)
    /// other tokens. Worth exporting as a metric: a rising count means flushes are too rare,
    /// failing, or not happening at all.
    ///
    /// ```
    /// use apitoken::{MemoryStore, NewToken, Owner, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new()).last_used_max_pending(1).build();
    /// let owner = Owner::new("team-1")?;
    /// let a = verifier.issuer().issue(NewToken::new("a", owner.clone())).await?;
    /// let b = verifier.issuer().issue(NewToken::new("b", owner)).await?;
    /// verifier.authenticate(a.token.expose_secret()).await?;
    /// verifier.authenticate(b.token.expose_secret()).await?; // still verified
    /// assert_eq!(verifier.last_used_dropped(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn last_used_dropped(&self) -> u64 {
        self.last_used_buffer().map_or(0, LastUsedBuffer::dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    fn id(n: u64) -> TokenId {
        TokenId::from_u64(n)
    }

    fn buffer(max_pending: usize) -> LastUsedBuffer {
        LastUsedBuffer::new(DEFAULT_FLUSH_INTERVAL, max_pending)
    }

    #[test]
    fn an_id_in_two_batches_stays_shown_until_both_are_retired() {
        // A failed write puts the id back; a second flush drains it before the first batch
        // is retired. The first retirement must not hide the use the second batch still
        // holds: it would then be in neither place (found by the attack pass, issue 15).
        let buffer = buffer(10);
        buffer.note(id(1), t0());
        let first = buffer.drain();
        let first_batch = first.batch().to_vec();
        buffer.restore(first_batch.clone());
        let second = buffer.drain();
        assert_eq!(second.batch(), [(id(1), t0())]);
        buffer.retire(&first_batch);
        std::mem::forget(first); // retired by hand above, in the order the race takes
        assert_eq!(buffer.pending(), 0);
        assert_eq!(buffer.noted(&id(1)), Some(t0()));
        assert_eq!(second.written(), 1);
        assert_eq!(buffer.noted(&id(1)), None);
    }

    #[test]
    fn a_touch_reads_and_changes_nothing() {
        // A refusal's touch runs on every unknown id and wrong secret: on an empty buffer,
        // on one slot, on a full one, it must neither panic nor note, count or drop anything.
        let buffer = buffer(3);
        buffer.touch(&id(9));
        assert_eq!((buffer.pending(), buffer.dropped()), (0, 0));
        buffer.note(id(1), t0());
        for n in 0..100 {
            buffer.touch(&id(n));
        }
        assert_eq!((buffer.pending(), buffer.dropped()), (1, 0));
        assert_eq!(buffer.noted(&id(1)), Some(t0()));
        assert_eq!(buffer.noted(&id(9)), None);
        buffer.note(id(2), t0());
        buffer.note(id(3), t0());
        for n in 0..100 {
            buffer.touch(&id(n));
        }
        assert_eq!((buffer.pending(), buffer.dropped()), (3, 0));
        assert_eq!(buffer.drain().batch().len(), 3);
    }

    #[test]
    fn keeps_the_latest_time_per_id() {
        let buffer = buffer(10);
        buffer.note(id(1), t0());
        buffer.note(id(1), t0() + TimeDelta::seconds(5));
        buffer.note(id(1), t0() + TimeDelta::seconds(2)); // older: ignored
        buffer.note(id(2), t0());
        assert_eq!(buffer.pending(), 2);
        let drained = buffer.drain();
        assert_eq!(
            drained.batch(),
            [(id(1), t0() + TimeDelta::seconds(5)), (id(2), t0()),]
        );
        assert_eq!(drained.written(), 2);
        assert_eq!(buffer.pending(), 0);
        assert!(buffer.drain().batch().is_empty());
    }

    #[test]
    fn drain_is_sorted_by_id() {
        let buffer = buffer(1_000);
        for n in (0..500).rev() {
            buffer.note(id(n), t0());
        }
        let drained = buffer.drain();
        let ids: Vec<u64> = drained
            .batch()
            .iter()
            .map(|(id, _)| id.as_u64().unwrap())
            .collect();
        assert_eq!(ids, (0..500).collect::<Vec<_>>());
        drained.written();
    }

    #[test]
    fn notes_stay_visible_while_their_batch_is_written() {
        let buffer = buffer(10);
        buffer.note(id(1), t0());
        let mut drained = buffer.drain();
        // Out for writing: the idle check still sees the use.
        assert_eq!(buffer.noted(&id(1)), Some(t0()));
        assert_eq!(buffer.pending(), 0);
        // A later use noted meanwhile wins.
        buffer.note(id(1), t0() + TimeDelta::seconds(5));
        assert_eq!(buffer.noted(&id(1)), Some(t0() + TimeDelta::seconds(5)));
        drained.mark_written(1);
        drop(drained);
        // Written: only the later note is left, in the buffer.
        assert_eq!(buffer.noted(&id(1)), Some(t0() + TimeDelta::seconds(5)));
        let again = buffer.drain();
        again.written();
        assert_eq!(buffer.noted(&id(1)), None);
        assert_eq!(buffer.flushing.load(Ordering::SeqCst), 0);
        assert!(buffer.in_flight().is_empty());
    }

    /// A store whose `n`th batch call (and every later one) fails, counting the entries of
    /// each call.
    #[derive(Default)]
    struct FailsFrom {
        inner: crate::MemoryStore,
        fail_from: usize,
        calls: std::sync::Mutex<Vec<usize>>,
    }

    impl TokenStore for FailsFrom {
        fn insert(
            &self,
            record: crate::TokenRecord,
            hash: crate::SecretHash,
        ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
            self.inner.insert(record, hash)
        }
        fn get(
            &self,
            id: &TokenId,
        ) -> impl std::future::Future<Output = Result<Option<crate::StoredToken>, StoreError>> + Send
        {
            self.inner.get(id)
        }
        fn find_by_hash(
            &self,
            hash: &crate::SecretHash,
        ) -> impl std::future::Future<Output = Result<Option<crate::StoredToken>, StoreError>> + Send
        {
            self.inner.find_by_hash(hash)
        }
        fn list_by_owner(
            &self,
            owner: &crate::Owner,
        ) -> impl std::future::Future<Output = Result<Vec<crate::TokenRecord>, StoreError>> + Send
        {
            self.inner.list_by_owner(owner)
        }
        fn revoke(
            &self,
            id: &TokenId,
            at: DateTime<Utc>,
        ) -> impl std::future::Future<Output = Result<bool, StoreError>> + Send {
            self.inner.revoke(id, at)
        }
        fn revoke_owner(
            &self,
            owner: &crate::Owner,
            at: DateTime<Utc>,
        ) -> impl std::future::Future<Output = Result<usize, StoreError>> + Send {
            self.inner.revoke_owner(owner, at)
        }
        fn record_last_used(
            &self,
            id: &TokenId,
            at: DateTime<Utc>,
        ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
            self.inner.record_last_used(id, at)
        }
        fn record_last_used_batch(
            &self,
            batch: &[(TokenId, DateTime<Utc>)],
        ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
            let mut calls = self.calls.lock().unwrap();
            calls.push(batch.len());
            let fail = calls.len() > self.fail_from;
            std::future::ready(if fail {
                Err(StoreError::unavailable("injected"))
            } else {
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn a_flush_writes_in_chunks_and_keeps_only_the_unwritten_rest() {
        let store = FailsFrom {
            fail_from: 2,
            ..FailsFrom::default()
        };
        let verifier = crate::Verifier::builder(store).build();
        let buffer = verifier.last_used_buffer().unwrap();
        let total = FLUSH_CHUNK * 3 + 10;
        for n in 0..total as u64 {
            buffer.note(id(n), t0());
        }
        assert!(verifier.flush_last_used().await.is_err());
        // Two chunks written; the third failed; the rest never tried.
        assert_eq!(*verifier.store().calls.lock().unwrap(), [FLUSH_CHUNK; 3]);
        assert_eq!(verifier.last_used_pending(), total - 2 * FLUSH_CHUNK);
        // What is left is exactly the ids past the written chunks (the batch is sorted).
        let left = buffer.drain();
        let ids: Vec<u64> = left
            .batch()
            .iter()
            .map(|(id, _)| id.as_u64().unwrap())
            .collect();
        let mut expected: Vec<TokenId> = (0..total as u64).map(id).collect();
        expected.sort_unstable();
        let expected: Vec<u64> = expected[2 * FLUSH_CHUNK..]
            .iter()
            .map(|id| id.as_u64().unwrap())
            .collect();
        assert_eq!(ids, expected);
        left.written();
    }

    #[test]
    fn an_unwritten_batch_goes_back_and_the_later_time_wins() {
        let buffer = buffer(10);
        buffer.note(id(1), t0() + TimeDelta::seconds(10));
        buffer.note(id(2), t0() + TimeDelta::seconds(10));
        let drained = buffer.drain();
        // Meanwhile: id 1 noted again later, id 2 noted again earlier, id 3 new.
        buffer.note(id(1), t0() + TimeDelta::seconds(20));
        buffer.note(id(2), t0() + TimeDelta::seconds(1));
        buffer.note(id(3), t0());
        drop(drained); // the write failed
        assert_eq!(buffer.pending(), 3);
        let again = buffer.drain();
        assert_eq!(
            again.batch(),
            [
                (id(1), t0() + TimeDelta::seconds(20)),
                (id(2), t0() + TimeDelta::seconds(10)),
                (id(3), t0()),
            ]
        );
        again.written();
        assert_eq!(buffer.dropped(), 0);
    }

    #[test]
    fn new_ids_beyond_the_bound_are_dropped_and_counted() {
        let buffer = buffer(3);
        for n in 0..10 {
            buffer.note(id(n), t0());
        }
        assert_eq!(buffer.pending(), 3);
        assert_eq!(buffer.dropped(), 7);
        // A buffered id still moves forward when the buffer is full.
        let kept = buffer.drain();
        let kept_ids: Vec<TokenId> = kept.batch().iter().map(|(id, _)| *id).collect();
        drop(kept);
        buffer.note(kept_ids[0], t0() + TimeDelta::seconds(1));
        assert_eq!(buffer.dropped(), 7);
        let drained = buffer.drain();
        assert!(
            drained
                .batch()
                .contains(&(kept_ids[0], t0() + TimeDelta::seconds(1)))
        );
        // After a flush there is room again.
        drained.written();
        buffer.note(id(99), t0());
        assert_eq!(buffer.pending(), 1);
    }

    #[test]
    fn retried_entries_respect_the_bound() {
        let buffer = buffer(2);
        buffer.note(id(1), t0());
        buffer.note(id(2), t0());
        let failed = buffer.drain();
        buffer.note(id(3), t0());
        buffer.note(id(4), t0());
        drop(failed); // no room for ids 1 and 2
        assert_eq!(buffer.pending(), 2);
        assert_eq!(buffer.dropped(), 2);
    }

    #[test]
    fn zero_max_pending_buffers_nothing() {
        let buffer = buffer(0);
        buffer.note(id(1), t0());
        assert_eq!(buffer.pending(), 0);
        assert_eq!(buffer.dropped(), 1);
    }

    #[test]
    fn concurrent_notes_of_many_ids_never_exceed_the_bound() {
        let buffer = buffer(1_000);
        std::thread::scope(|s| {
            for thread in 0..4u64 {
                let buffer = &buffer;
                s.spawn(move || {
                    for n in 0..1_000 {
                        buffer.note(id(thread * 1_000 + n), t0());
                    }
                });
            }
        });
        assert_eq!(buffer.pending(), 1_000);
        assert_eq!(buffer.dropped(), 3_000);
        let drained = buffer.drain();
        assert_eq!(drained.batch().len(), 1_000);
        drained.written();
    }

    #[test]
    fn intervals_below_the_minimum_are_raised() {
        let buffer = LastUsedBuffer::new(Duration::ZERO, 1);
        assert_eq!(buffer.flush_interval(), MIN_FLUSH_INTERVAL);
    }
}
