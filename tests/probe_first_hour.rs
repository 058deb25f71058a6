//! Probes against the first-hour features: the detached last-use flusher, revocation through
//! the verifier (with and without a `CachedStore`), `Issuer::issue_first` under races on every
//! store, and the eager `PostgresStore::connect` / lazy `connect_lazy`. Each test asserts what
//! the docs promise; a probe that shows a defect is `#[ignore]`d with the defect in one line.

#[path = "support/stores.rs"]
mod stores;
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apitoken::{
    AuthErrorKind, CachedStore, IdKind, ManualClock, MemoryStore, NewToken, Owner, PostgresStore,
    RejectReason, SecretHash, SqliteStore, StoreError, StoreErrorKind, StoredToken, TokenFormat,
    TokenId, TokenRecord, TokenStore, Verifier,
};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use support::within;
use tokio::sync::{Barrier, Semaphore};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

struct Knobs {
    lookups: AtomicUsize,
    /// The next `get` reads the store, then stops until released.
    get_armed: AtomicBool,
    get_arrived: AtomicUsize,
    get_release: Semaphore,
    /// The next batch write stops before writing, until released.
    batch_armed: AtomicBool,
    batch_arrived: AtomicUsize,
    batch_release: Semaphore,
    /// The next `n` batch writes fail.
    fail_batches: AtomicUsize,
    /// The batch call with this (1-based) number fails; 0 for none.
    fail_call: AtomicUsize,
    /// The next `n` batch writes panic.
    panic_batches: AtomicUsize,
    /// While set, batch writes never answer.
    hang_batches: AtomicBool,
    batch_calls: AtomicUsize,
    /// Each batch write takes this long (tokio time), in milliseconds.
    batch_delay_ms: AtomicUsize,
    /// The next `revoke` commits, then reports an outage (a timed-out write that landed).
    revoke_commit_then_fail: AtomicBool,
    batch_sizes: Mutex<Vec<usize>>,
    /// Successful writes per id.
    writes: Mutex<HashMap<TokenId, usize>>,
    dropped: AtomicBool,
}

impl Knobs {
    fn new() -> Self {
        Self {
            lookups: AtomicUsize::new(0),
            get_armed: AtomicBool::new(false),
            get_arrived: AtomicUsize::new(0),
            get_release: Semaphore::new(0),
            batch_armed: AtomicBool::new(false),
            batch_arrived: AtomicUsize::new(0),
            batch_release: Semaphore::new(0),
            fail_batches: AtomicUsize::new(0),
            fail_call: AtomicUsize::new(0),
            panic_batches: AtomicUsize::new(0),
            hang_batches: AtomicBool::new(false),
            batch_calls: AtomicUsize::new(0),
            batch_delay_ms: AtomicUsize::new(0),
            revoke_commit_then_fail: AtomicBool::new(false),
            batch_sizes: Mutex::new(Vec::new()),
            writes: Mutex::new(HashMap::new()),
            dropped: AtomicBool::new(false),
        }
    }

    fn writes_of(&self, id: &TokenId) -> usize {
        self.writes.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    fn written_ids(&self) -> usize {
        self.writes.lock().unwrap().len()
    }
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A `MemoryStore` that counts, holds, fails, panics or hangs.
struct ProbeStore {
    inner: MemoryStore,
    knobs: Arc<Knobs>,
}

impl ProbeStore {
    fn new() -> (Self, Arc<Knobs>) {
        let knobs = Arc::new(Knobs::new());
        (
            Self {
                inner: MemoryStore::new(),
                knobs: Arc::clone(&knobs),
            },
            knobs,
        )
    }
}

impl Drop for ProbeStore {
    fn drop(&mut self) {
        self.knobs.dropped.store(true, Ordering::SeqCst);
    }
}

impl TokenStore for ProbeStore {
    async fn insert(&self, record: TokenRecord, hash: SecretHash) -> Result<(), StoreError> {
        self.inner.insert(record, hash).await
    }

    async fn insert_first(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> Result<bool, StoreError> {
        self.inner.insert_first(record, hash).await
    }

    async fn next_id(&self) -> Result<TokenId, StoreError> {
        self.inner.next_id().await
    }

    async fn get(&self, id: &TokenId) -> Result<Option<StoredToken>, StoreError> {
        self.knobs.lookups.fetch_add(1, Ordering::SeqCst);
        // Read first, then hold: the held answer is what the store said before the hold.
        let answer = self.inner.get(id).await;
        if self.knobs.get_armed.swap(false, Ordering::SeqCst) {
            self.knobs.get_arrived.fetch_add(1, Ordering::SeqCst);
            self.knobs.get_release.acquire().await.unwrap().forget();
        }
        answer
    }

    async fn find_by_hash(&self, hash: &SecretHash) -> Result<Option<StoredToken>, StoreError> {
        self.knobs.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.find_by_hash(hash).await
    }

    async fn list_by_owner(&self, owner: &Owner) -> Result<Vec<TokenRecord>, StoreError> {
        self.inner.list_by_owner(owner).await
    }

    async fn revoke(&self, id: &TokenId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let revoked = self.inner.revoke(id, at).await;
        if self
            .knobs
            .revoke_commit_then_fail
            .swap(false, Ordering::SeqCst)
        {
            return Err(StoreError::unavailable("probe: timed out after committing"));
        }
        revoked
    }

    async fn revoke_owner(&self, owner: &Owner, at: DateTime<Utc>) -> Result<usize, StoreError> {
        self.inner.revoke_owner(owner, at).await
    }

    async fn record_last_used(&self, id: &TokenId, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.record_last_used_batch(&[(*id, at)]).await
    }

    async fn record_last_used_batch(
        &self,
        batch: &[(TokenId, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        let k = &self.knobs;
        let call = k.batch_calls.fetch_add(1, Ordering::SeqCst) + 1;
        if k.batch_armed.swap(false, Ordering::SeqCst) {
            k.batch_arrived.fetch_add(1, Ordering::SeqCst);
            k.batch_release.acquire().await.unwrap().forget();
        }
        let delay = k.batch_delay_ms.load(Ordering::SeqCst) as u64;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if k.hang_batches.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        assert!(
            !take_one(&k.panic_batches),
            "probe: the store panics in a flush"
        );
        if take_one(&k.fail_batches) || k.fail_call.load(Ordering::SeqCst) == call {
            return Err(StoreError::unavailable("probe: injected outage"));
        }
        self.inner.record_last_used_batch(batch).await?;
        k.batch_sizes.lock().unwrap().push(batch.len());
        let mut writes = k.writes.lock().unwrap();
        for (id, _) in batch {
            *writes.entry(*id).or_default() += 1;
        }
        Ok(())
    }
}

fn owner(name: &str) -> Owner {
    Owner::new(name).unwrap()
}

async fn issue_n<S: TokenStore>(
    verifier: &Verifier<S>,
    who: &str,
    n: usize,
) -> Vec<(TokenId, String)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let issued = verifier
            .issuer()
            .issue(NewToken::new(format!("t{i}"), owner(who)))
            .await
            .unwrap();
        out.push((issued.record.id, issued.token.expose_secret().to_owned()));
    }
    out
}

async fn stored_last_use<S: TokenStore>(store: &S, id: &TokenId) -> Option<DateTime<Utc>> {
    store.get(id).await.unwrap().unwrap().record.last_used_at
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 2, 9, 0, 0).unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. The flusher
// ---------------------------------------------------------------------------------------------

/// `let _ = verifier.spawn_last_used_flusher()` keeps flushing every interval (virtual time):
/// nothing before the interval, the use stored after it, and again one interval later.
#[tokio::test(start_paused = true)]
async fn f1_a_let_underscore_handle_keeps_flushing_every_interval() {
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store)
        .last_used_flush_interval(Duration::from_secs(60))
        .build();
    let tokens = issue_n(&verifier, "team-1", 3).await;
    let _ = verifier.spawn_last_used_flusher();
    verifier.authenticate(&tokens[0].1).await.unwrap();
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(
        knobs.batch_calls.load(Ordering::SeqCst),
        0,
        "flushed before the interval"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        stored_last_use(verifier.store(), &tokens[0].0)
            .await
            .is_some()
    );
    for (id, token) in &tokens[1..] {
        verifier.authenticate(token).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(stored_last_use(verifier.store(), id).await.is_some());
    }
    assert_eq!(verifier.last_used_pending(), 0);
    assert_eq!(knobs.batch_calls.load(Ordering::SeqCst), 3);
}

/// Dropping the handle and every verifier clone frees the store at once and ends the task
/// at its next tick (virtual time), with or without an earlier flush.
#[tokio::test(start_paused = true)]
async fn f1_b_task_ends_and_store_is_freed_when_every_clone_is_dropped() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store)
        .last_used_flush_interval(Duration::from_secs(60))
        .build();
    let clone = verifier.clone();
    let tokens = issue_n(&verifier, "team-1", 1).await;
    drop(verifier.spawn_last_used_flusher());
    assert_eq!(metrics.num_alive_tasks(), baseline + 1);
    clone.authenticate(&tokens[0].1).await.unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(knobs.writes_of(&tokens[0].0), 1);
    drop(verifier);
    assert!(
        !knobs.dropped.load(Ordering::SeqCst),
        "a clone is still alive"
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        metrics.num_alive_tasks(),
        baseline + 1,
        "ended while a clone lived"
    );
    drop(clone);
    assert!(
        knobs.dropped.load(Ordering::SeqCst),
        "the task kept the store alive"
    );
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(
        metrics.num_alive_tasks(),
        baseline,
        "the task outlived the verifier"
    );
}

/// The flusher doc said the task "ends by itself once every clone of the verifier is
/// dropped", but an `Issuer` from `verifier.issuer()` holds the verifier too, so the store and
/// the task lived on after the last verifier. The doc now says so: probed here, the issuer
/// keeps both alive, and dropping it ends them.
#[tokio::test(start_paused = true)]
async fn f1_c_an_issuer_keeps_the_flusher_alive_until_it_is_dropped() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store)
        .last_used_flush_interval(Duration::from_secs(60))
        .build();
    let issuer = verifier.issuer();
    drop(verifier.spawn_last_used_flusher());
    drop(verifier);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(
        metrics.num_alive_tasks() > baseline,
        "the task ended under a live issuer"
    );
    assert!(
        !knobs.dropped.load(Ordering::SeqCst),
        "the store was freed under a live issuer"
    );
    drop(issuer);
    assert!(
        knobs.dropped.load(Ordering::SeqCst),
        "the store outlived the issuer"
    );
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(
        metrics.num_alive_tasks(),
        baseline,
        "the task outlived the issuer"
    );
}

/// `shutdown` while the task's flush is in progress waits for it (without interrupting it),
/// then writes what was noted meanwhile: both uses stored, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_a_shutdown_during_an_in_progress_flush_loses_nothing() {
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store)
        .last_used_flush_interval(Duration::from_millis(10))
        .build();
    let tokens = issue_n(&verifier, "team-1", 2).await;
    knobs.batch_armed.store(true, Ordering::SeqCst);
    let flusher = verifier.spawn_last_used_flusher();
    verifier.authenticate(&tokens[0].1).await.unwrap();
    wait_for("the flush to start", || {
        knobs.batch_arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    // Noted while the first flush is out.
    verifier.authenticate(&tokens[1].1).await.unwrap();
    let shutdown = tokio::spawn(flusher.shutdown());
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the flush in progress"
    );
    knobs.batch_release.add_permits(1);
    let written = within(shutdown).await.unwrap().unwrap();
    assert_eq!(
        written, 1,
        "the final flush writes the use noted during the first"
    );
    for (id, _) in &tokens {
        assert_eq!(knobs.writes_of(id), 1);
        assert!(stored_last_use(verifier.store(), id).await.is_some());
    }
    assert_eq!(verifier.last_used_pending(), 0);
}

/// The in-progress flush fails while `shutdown` waits: its entries go back, and the final
/// flush writes them (once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_b_shutdown_after_a_failed_in_progress_flush_writes_it() {
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store)
        .last_used_flush_interval(Duration::from_millis(10))
        .build();
    let tokens = issue_n(&verifier, "team-1", 1).await;
    knobs.batch_armed.store(true, Ordering::SeqCst);
    knobs.fail_batches.store(1, Ordering::SeqCst);
    let flusher = verifier.spawn_last_used_flusher();
    verifier.authenticate(&tokens[0].1).await.unwrap();
    wait_for("the flush to start", || {
        knobs.batch_arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    let shutdown = tokio::spawn(flusher.shutdown());
    tokio::time::sleep(Duration::from_millis(5)).await;
    knobs.batch_release.add_permits(1);
    assert_eq!(within(shutdown).await.unwrap().unwrap(), 1);
    assert_eq!(knobs.writes_of(&tokens[0].0), 1);
    assert_eq!(verifier.last_used_pending(), 0);
}

/// A failing store: a detached flusher keeps the times, retries them each tick, and once the
/// store recovers writes each id once, with the latest time noted (a later use during the
/// outage wins).
#[tokio::test(start_paused = true)]
async fn f3_failed_flushes_are_retried_not_lost_not_duplicated() {
    let clock = Arc::new(ManualClock::new(t0()));
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store)
        .clock(clock.clone())
        .last_used_flush_interval(Duration::from_secs(1))
        .build();
    let tokens = issue_n(&verifier, "team-1", 5).await;
    knobs.fail_batches.store(3, Ordering::SeqCst);
    let _ = verifier.spawn_last_used_flusher();
    for (_, token) in &tokens {
        verifier.authenticate(token).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(knobs.batch_calls.load(Ordering::SeqCst), 1);
    assert_eq!(verifier.last_used_pending(), 5, "a failed flush lost times");
    clock.advance(TimeDelta::seconds(30));
    verifier.authenticate(&tokens[0].1).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        knobs.batch_calls.load(Ordering::SeqCst),
        4,
        "one call per tick, no pile-up"
    );
    for (i, (id, _)) in tokens.iter().enumerate() {
        assert_eq!(
            knobs.writes_of(id),
            1,
            "token {i} written {} times",
            knobs.writes_of(id)
        );
        let expected = if i == 0 {
            t0() + TimeDelta::seconds(30)
        } else {
            t0()
        };
        assert_eq!(stored_last_use(verifier.store(), id).await, Some(expected));
    }
    assert_eq!(verifier.last_used_pending(), 0);
}

/// Many notes: a full buffer (4,500 of 5,000 tokens; the rest dropped and counted) is written
/// in chunks of at most `FLUSH_CHUNK`; a chunk failing half-way keeps only the unwritten rest,
/// and no id is written twice.
#[tokio::test]
async fn f4_a_huge_number_of_notes_is_chunked_and_a_mid_failure_keeps_only_the_rest() {
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store)
        .last_used_max_pending(4_500)
        .build();
    let tokens = issue_n(&verifier, "team-1", 5_000).await;
    for (_, token) in &tokens {
        verifier.authenticate(token).await.unwrap();
    }
    assert_eq!(verifier.last_used_pending(), 4_500);
    assert_eq!(verifier.last_used_dropped(), 500);
    knobs.fail_call.store(3, Ordering::SeqCst);
    let flusher = verifier.spawn_last_used_flusher();
    let err = verifier.flush_last_used().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert_eq!(
        verifier.last_used_pending(),
        2_500,
        "the written chunks were put back too"
    );
    assert_eq!(within(flusher.shutdown()).await.unwrap(), 2_500);
    let sizes = knobs.batch_sizes.lock().unwrap().clone();
    assert!(
        sizes.iter().all(|n| *n <= apitoken::last_used::FLUSH_CHUNK),
        "{sizes:?}"
    );
    assert_eq!(sizes.iter().sum::<usize>(), 4_500);
    assert_eq!(knobs.written_ids(), 4_500);
    assert!(
        knobs.writes.lock().unwrap().values().all(|n| *n == 1),
        "an id written twice"
    );
    assert_eq!(verifier.last_used_pending(), 0);
}

/// Two flushers on one verifier (one detached, one kept): each use is written exactly once,
/// both shut down / end cleanly, and the detached one ends with the verifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_a_flusher_spawned_twice_writes_each_use_once() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store)
        .last_used_flush_interval(Duration::from_millis(3))
        .build();
    let tokens = issue_n(&verifier, "team-1", 200).await;
    drop(verifier.spawn_last_used_flusher());
    tokio::time::sleep(Duration::from_millis(1)).await;
    let kept = verifier.spawn_last_used_flusher();
    for (_, token) in &tokens {
        verifier.authenticate(token).await.unwrap();
        tokio::task::yield_now().await;
    }
    wait_for("every use written", || knobs.written_ids() == tokens.len()).await;
    assert_eq!(within(kept.shutdown()).await.unwrap(), 0);
    assert!(
        knobs.writes.lock().unwrap().values().all(|n| *n == 1),
        "a use written twice"
    );
    drop(verifier);
    assert!(knobs.dropped.load(Ordering::SeqCst));
    wait_for("both tasks to end", || {
        metrics.num_alive_tasks() <= baseline
    })
    .await;
}

/// A store whose flush panics once. The docs: the task keeps flushing every interval, and
/// `shutdown` flushes what remains. What happens: the panic kills the task, later uses are
/// never written in the background, and `shutdown` re-raises the panic without flushing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Fixed: each flush runs in its own task.
async fn f6_one_panicking_flush_does_not_stop_the_flusher() {
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store)
        .last_used_flush_interval(Duration::from_millis(10))
        .build();
    let tokens = issue_n(&verifier, "team-1", 2).await;
    knobs.panic_batches.store(1, Ordering::SeqCst);
    let flusher = verifier.spawn_last_used_flusher();
    verifier.authenticate(&tokens[0].1).await.unwrap();
    wait_for("the panicking flush", || {
        knobs.batch_calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    verifier.authenticate(&tokens[1].1).await.unwrap();
    // Plenty of ticks for a live flusher to write both.
    let deadline = Instant::now() + Duration::from_millis(500);
    while knobs.written_ids() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let written_in_background = knobs.written_ids();
    let pending = verifier.last_used_pending();
    let shutdown = tokio::spawn(flusher.shutdown()).await;
    assert!(
        written_in_background == 2,
        "background flusher wrote {written_in_background} of 2 uses after one panicking flush \
         ({pending} still pending); shutdown: {}",
        match &shutdown {
            Ok(result) => format!("{result:?}"),
            Err(e) if e.is_panic() => "panicked".to_owned(),
            Err(e) => format!("{e}"),
        }
    );
}

/// A detached flusher whose flush hangs (a custom store without a deadline): dropping every
/// verifier clone should still free the store ("held only for the flush"). It is held for
/// as long as the write hangs, i.e. forever, and the task never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Fixed: the write is abandoned at the first tick after the flush is the only holder.
async fn f7_a_hanging_flush_does_not_leak_the_verifier() {
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store)
        .last_used_flush_interval(Duration::from_millis(5))
        .build();
    let tokens = issue_n(&verifier, "team-1", 1).await;
    knobs.hang_batches.store(true, Ordering::SeqCst);
    drop(verifier.spawn_last_used_flusher());
    verifier.authenticate(&tokens[0].1).await.unwrap();
    wait_for("the hanging flush", || {
        knobs.batch_calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    drop(verifier);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        knobs.dropped.load(Ordering::SeqCst),
        "the store is still alive 300 ms after the last verifier clone was dropped"
    );
}

/// `shutdown` cancelled (its future dropped by a timeout while the final write hangs) loses
/// nothing: the times stay in the buffer for a later flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f8_a_cancelled_shutdown_keeps_the_times() {
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store).build();
    let tokens = issue_n(&verifier, "team-1", 3).await;
    let flusher = verifier.spawn_last_used_flusher();
    for (_, token) in &tokens {
        verifier.authenticate(token).await.unwrap();
    }
    knobs.hang_batches.store(true, Ordering::SeqCst);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), flusher.shutdown())
            .await
            .is_err()
    );
    assert_eq!(
        verifier.last_used_pending(),
        3,
        "a cancelled shutdown lost times"
    );
    knobs.hang_batches.store(false, Ordering::SeqCst);
    assert_eq!(verifier.flush_last_used().await.unwrap(), 3);
    assert_eq!(knobs.written_ids(), 3);
}

/// A verifier without last-use tracking spawns nothing; its handle says so and shuts down
/// with `Ok(0)`. A kept handle whose verifier clones are all gone still flushes on shutdown.
#[tokio::test]
async fn f9_disabled_last_use_and_shutdown_after_the_verifier_is_gone() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let verifier = Verifier::builder(MemoryStore::new())
        .disable_last_used()
        .build();
    let flusher = verifier.spawn_last_used_flusher();
    assert_eq!(metrics.num_alive_tasks(), baseline);
    assert_eq!(flusher.interval(), None);
    assert!(
        format!("{flusher:?}").contains("running: None"),
        "{flusher:?}"
    );
    assert_eq!(flusher.shutdown().await.unwrap(), 0);

    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store).build();
    let tokens = issue_n(&verifier, "team-1", 1).await;
    let flusher = verifier.spawn_last_used_flusher();
    verifier.authenticate(&tokens[0].1).await.unwrap();
    drop(verifier);
    assert_eq!(within(flusher.shutdown()).await.unwrap(), 1);
    assert!(knobs.dropped.load(Ordering::SeqCst));
    assert_eq!(metrics.num_alive_tasks(), baseline);
}

/// A flush slower than the interval delays the next one instead of queueing more (virtual
/// time): a 5 s write with a 1 s interval makes at most one call per 5 s, never two at once.
#[tokio::test(start_paused = true)]
async fn f10_a_slow_flush_does_not_pile_up() {
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store)
        .last_used_flush_interval(Duration::from_secs(1))
        .build();
    let tokens = issue_n(&verifier, "team-1", 1).await;
    knobs.batch_delay_ms.store(5_000, Ordering::SeqCst);
    let _ = verifier.spawn_last_used_flusher();
    for _ in 0..20 {
        verifier.authenticate(&tokens[0].1).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let calls = knobs.batch_calls.load(Ordering::SeqCst);
    let done = knobs.batch_sizes.lock().unwrap().len();
    assert!(calls <= 4, "{calls} calls in 20 s with 5 s writes");
    assert!(
        calls - done <= 1,
        "{} writes in flight at once",
        calls - done
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Revocation through the verifier
// ---------------------------------------------------------------------------------------------

async fn assert_revoked<S: TokenStore>(verifier: &Verifier<S>, token: &str) {
    let err = verifier.authenticate(token).await.unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    assert_eq!(err.reason(), Some(RejectReason::Revoked));
}

/// Revocation at the verifier's clock, far in the past and far in the future: the stored
/// `revoked_at` is the clock's time, `Ok(true)` only once, then `Revoked`, whatever the clock
/// does afterwards (set before the revocation, before the token's creation).
#[tokio::test]
async fn r1_revoke_uses_the_verifiers_clock_in_the_past_and_future() {
    for start in [
        Utc.with_ymd_and_hms(2001, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2199, 1, 1, 0, 0, 0).unwrap(),
    ] {
        let clock = Arc::new(ManualClock::new(start));
        let verifier = Verifier::builder(MemoryStore::new())
            .clock(clock.clone())
            .build();
        let tokens = issue_n(&verifier, "team-1", 3).await;
        clock.advance(TimeDelta::seconds(5));
        assert!(verifier.revoke(&tokens[0].0).await.unwrap());
        assert!(!verifier.revoke(&tokens[0].0).await.unwrap());
        let stored = verifier.store().get(&tokens[0].0).await.unwrap().unwrap();
        assert_eq!(
            stored.record.revoked_at,
            Some(start + TimeDelta::seconds(5))
        );
        assert_revoked(&verifier, &tokens[0].1).await;
        clock.set(start - TimeDelta::days(1));
        assert_revoked(&verifier, &tokens[0].1).await;
        clock.set(start + TimeDelta::seconds(6));
        assert_eq!(verifier.revoke_owner(&owner("team-1")).await.unwrap(), 2);
        assert_eq!(verifier.revoke_owner(&owner("team-1")).await.unwrap(), 0);
        for (id, token) in &tokens[1..] {
            let stored = verifier.store().get(id).await.unwrap().unwrap();
            assert_eq!(
                stored.record.revoked_at,
                Some(start + TimeDelta::seconds(6))
            );
            assert_revoked(&verifier, token).await;
        }
        assert!(!verifier.revoke(&TokenId::from_u64(987_654)).await.unwrap());
    }
}

/// Through a `CachedStore` with an hour's TTL: the cached record drops at once on `revoke`
/// and on `revoke_owner`, for an id format and an id-less (by-hash) format alike.
#[tokio::test]
async fn r2_revoke_through_a_cached_store_is_immediate() {
    let no_id = TokenFormat::builder()
        .prefix("hk")
        .id(IdKind::None)
        .build()
        .unwrap();
    for format in [None, Some(no_id)] {
        let (probe, knobs) = ProbeStore::new();
        let cached = CachedStore::builder(probe)
            .ttl(Duration::from_secs(3600))
            .negative_ttl(Duration::from_secs(3600))
            .build();
        let mut builder = Verifier::builder(cached);
        if let Some(format) = &format {
            builder = builder.format(format.clone());
        }
        let verifier = builder.build();
        let tokens = issue_n(&verifier, "team-1", 4).await;
        for (_, token) in &tokens {
            verifier.authenticate(token).await.unwrap();
            verifier.authenticate(token).await.unwrap();
        }
        let before = knobs.lookups.load(Ordering::SeqCst);
        assert!(before <= 8, "not cached: {before} lookups");
        assert!(verifier.revoke(&tokens[0].0).await.unwrap());
        assert_revoked(&verifier, &tokens[0].1).await;
        verifier.authenticate(&tokens[1].1).await.unwrap();
        assert_eq!(verifier.revoke_owner(&owner("team-1")).await.unwrap(), 3);
        for (_, token) in &tokens {
            assert_revoked(&verifier, token).await;
        }
    }
}

/// A cached miss (the id looked up before it existed), then `issue_as` with that id, then
/// `revoke`: the new token verifies (the miss does not hide it), then is refused.
#[tokio::test]
async fn r2_b_negative_cache_then_issue_then_revoke() {
    let format = TokenFormat::builder()
        .prefix("job")
        .id(IdKind::Random { len: 16 })
        .build()
        .unwrap();
    let cached = CachedStore::builder(MemoryStore::new())
        .ttl(Duration::from_secs(3600))
        .negative_ttl(Duration::from_secs(3600))
        .build();
    let verifier = Verifier::builder(cached)
        .also_accept(format.clone())
        .build();
    let id = TokenId::new("Job0000000000042").unwrap();
    let other = Verifier::builder(MemoryStore::new())
        .format(format.clone())
        .build();
    let forged = other
        .issuer()
        .issue_as(&format, id, NewToken::new("x", owner("team-1")))
        .await
        .unwrap();
    assert!(
        verifier
            .authenticate(forged.token.expose_secret())
            .await
            .is_err()
    );
    assert!(!verifier.revoke(&id).await.unwrap(), "unknown id");
    let issued = verifier
        .issuer()
        .issue_as(&format, id, NewToken::new("job", owner("team-1")))
        .await
        .unwrap();
    verifier
        .authenticate(issued.token.expose_secret())
        .await
        .unwrap();
    assert!(verifier.revoke(&id).await.unwrap());
    assert_revoked(&verifier, issued.token.expose_secret()).await;
}

/// A verification in flight (its lookup already read the live record, then held) when the
/// token is revoked: a verification started after `revoke` returned must refuse, even if it
/// joins the held lookup through the cache's single flight; and the held answer is not cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_revoke_while_a_verification_is_in_flight() {
    for cache in [false, true] {
        let (probe, knobs) = ProbeStore::new();
        let (a, b, c) = if cache {
            let store = CachedStore::builder(probe)
                .ttl(Duration::from_secs(3600))
                .build();
            race_revoke(Verifier::builder(store).build(), &knobs).await
        } else {
            race_revoke(Verifier::builder(probe).build(), &knobs).await
        };
        eprintln!(
            "cache {cache}: the in-flight verification answered {:?}",
            a.map(|_| ())
        );
        assert_eq!(
            b,
            Some(RejectReason::Revoked),
            "cache {cache}: started after revoke"
        );
        assert_eq!(c, Some(RejectReason::Revoked), "cache {cache}: later");
    }
}

async fn race_revoke<S: TokenStore + 'static>(
    verifier: Verifier<S>,
    knobs: &Knobs,
) -> (
    Result<apitoken::Principal, apitoken::AuthError>,
    Option<RejectReason>,
    Option<RejectReason>,
) {
    race_revoke_by(verifier, knobs, false).await
}

async fn race_revoke_by<S: TokenStore + 'static>(
    verifier: Verifier<S>,
    knobs: &Knobs,
    by_owner: bool,
) -> (
    Result<apitoken::Principal, apitoken::AuthError>,
    Option<RejectReason>,
    Option<RejectReason>,
) {
    let tokens = issue_n(&verifier, "team-1", 1).await;
    let (id, token) = tokens[0].clone();
    knobs.get_armed.store(true, Ordering::SeqCst);
    let first = {
        let (verifier, token) = (verifier.clone(), token.clone());
        tokio::spawn(async move { verifier.authenticate(&token).await })
    };
    wait_for("the held lookup", || {
        knobs.get_arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    if by_owner {
        assert_eq!(verifier.revoke_owner(&owner("team-1")).await.unwrap(), 1);
    } else {
        assert!(verifier.revoke(&id).await.unwrap());
    }
    let second = {
        let (verifier, token) = (verifier.clone(), token.clone());
        tokio::spawn(async move { verifier.authenticate(&token).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    knobs.get_release.add_permits(1);
    let a = within(first).await.unwrap();
    let b = within(second).await.unwrap().err().and_then(|e| e.reason());
    let c = verifier
        .authenticate(&token)
        .await
        .err()
        .and_then(|e| e.reason());
    (a, b, c)
}

/// The same race with `revoke_owner` through a `CachedStore` (the owner's stripe, not the
/// id's, is what the revoke-all invalidates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_b_revoke_owner_while_a_verification_is_in_flight() {
    let (probe, knobs) = ProbeStore::new();
    let store = CachedStore::builder(probe)
        .ttl(Duration::from_secs(3600))
        .build();
    let (a, b, c) = race_revoke_by(Verifier::builder(store).build(), &knobs, true).await;
    eprintln!("the in-flight verification answered {:?}", a.map(|_| ()));
    assert_eq!(b, Some(RejectReason::Revoked), "started after revoke_owner");
    assert_eq!(c, Some(RejectReason::Revoked), "later");
}

/// `revoke_owner` racing `issue`s of the same owner: every token issued is either revoked
/// (and counted) or issued after the revoke-all (and alive): alive + counted = issued, in
/// each round, on MemoryStore, a cached MemoryStore, SQLite (file) and PostgreSQL.
async fn revoke_owner_races_issue<S: TokenStore + 'static>(store: S, label: &str) {
    let verifier = Verifier::builder(store).disable_last_used().build();
    for round in 0..12 {
        let who = format!("racer-{round}");
        let issuers = 6;
        let barrier = Arc::new(Barrier::new(issuers + 1));
        let mut tasks = Vec::new();
        for n in 0..issuers {
            let (verifier, barrier, who) = (verifier.clone(), Arc::clone(&barrier), who.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                if n % 2 == 1 {
                    tokio::task::yield_now().await;
                }
                let issued = verifier
                    .issuer()
                    .issue(NewToken::new(format!("t{n}"), owner(&who)))
                    .await
                    .unwrap();
                let token = issued.token.expose_secret().to_owned();
                // Cached (behind a CachedStore) before the revoke-all, perhaps.
                let _ = verifier.authenticate(&token).await;
                token
            }));
        }
        let revoker = {
            let (verifier, barrier, who) = (verifier.clone(), Arc::clone(&barrier), who.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                tokio::task::yield_now().await;
                verifier.revoke_owner(&owner(&who)).await.unwrap()
            })
        };
        let mut tokens = Vec::new();
        for task in tasks {
            tokens.push(within(task).await.unwrap());
        }
        let counted = within(revoker).await.unwrap();
        let mut alive = 0;
        for token in &tokens {
            match verifier.authenticate(token).await {
                Ok(_) => alive += 1,
                Err(e) => assert_eq!(e.reason(), Some(RejectReason::Revoked), "{label}"),
            }
        }
        assert_eq!(
            alive + counted,
            issuers,
            "{label} round {round}: {alive} alive + {counted} counted as revoked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_a_revoke_owner_races_issue_memory_and_cached() {
    revoke_owner_races_issue(MemoryStore::new(), "memory").await;
    revoke_owner_races_issue(
        CachedStore::builder(MemoryStore::new())
            .ttl(Duration::from_secs(3600))
            .build(),
        "cached memory",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_b_revoke_owner_races_issue_sqlite_file() {
    revoke_owner_races_issue(stores::sqlite().await, "sqlite file").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_c_revoke_owner_races_issue_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    revoke_owner_races_issue(stores::postgres(&url).await, "postgres").await;
    revoke_owner_races_issue(
        CachedStore::builder(stores::postgres(&url).await)
            .ttl(Duration::from_secs(3600))
            .build(),
        "cached postgres",
    )
    .await;
}

/// An id of another format (`issue_as` in an accepted second format) revokes like any; an id
/// differing only in case names another token on every store (no case folding).
async fn revoke_other_format<S: TokenStore>(store: S, label: &str) {
    let format = TokenFormat::builder()
        .prefix("job")
        .id(IdKind::Random { len: 16 })
        .build()
        .unwrap();
    let verifier = Verifier::builder(store).also_accept(format.clone()).build();
    let suffix = format!("{:08}", Utc::now().timestamp_subsec_nanos() % 100_000_000);
    let id = TokenId::new(&format!("JobXyZ{suffix}ab")[..16]).unwrap();
    let issued = verifier
        .issuer()
        .issue_as(&format, id, NewToken::new("job", owner("team-1")))
        .await
        .unwrap();
    let token = issued.token.expose_secret().to_owned();
    for other in [id.as_str().to_lowercase(), id.as_str().to_uppercase()] {
        let other = TokenId::new(&other).unwrap();
        assert!(
            !verifier.revoke(&other).await.unwrap(),
            "{label}: {other:?} revoked {id:?}"
        );
    }
    verifier.authenticate(&token).await.unwrap();
    assert!(verifier.revoke(&id).await.unwrap(), "{label}");
    assert_revoked(&verifier, &token).await;
}

#[tokio::test]
async fn r5_revoke_an_id_of_another_format_on_every_store() {
    revoke_other_format(MemoryStore::new(), "memory").await;
    let sqlite = SqliteStore::connect("sqlite::memory:").await.unwrap();
    sqlite.migrate().await.unwrap();
    revoke_other_format(sqlite, "sqlite").await;
    if let Some(url) = stores::postgres_url() {
        revoke_other_format(stores::postgres(&url).await, "postgres").await;
    }
}

/// A revoke through a `CachedStore` that commits but reports an error (a timeout after the
/// write landed): the cached entry is dropped anyway, so the next verification refuses.
#[tokio::test]
async fn r6_a_revoke_that_errors_after_committing_still_drops_the_cache_entry() {
    let (probe, knobs) = ProbeStore::new();
    let cached = CachedStore::builder(probe)
        .ttl(Duration::from_secs(3600))
        .build();
    let verifier = Verifier::builder(cached).build();
    let tokens = issue_n(&verifier, "team-1", 1).await;
    verifier.authenticate(&tokens[0].1).await.unwrap();
    knobs.revoke_commit_then_fail.store(true, Ordering::SeqCst);
    let err = verifier.revoke(&tokens[0].0).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert_revoked(&verifier, &tokens[0].1).await;
    assert!(
        !verifier.revoke(&tokens[0].0).await.unwrap(),
        "already revoked"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. issue_first
// ---------------------------------------------------------------------------------------------

/// `n` bootstraps of one owner at once (a barrier; each on its own verifier, as replicas),
/// over `stores` (one per replica, sharing the database). Exactly one `Some`, the rest
/// `None`, no error, one token stored.
async fn issue_first_race<S: TokenStore + 'static>(replicas: Vec<S>, n: usize, label: &str) {
    let verifiers: Vec<_> = replicas
        .into_iter()
        .map(|s| Verifier::builder(s).disable_last_used().build())
        .collect();
    for round in 0..3 {
        let who = format!("admin-{round}");
        let barrier = Arc::new(Barrier::new(n));
        let mut tasks = Vec::new();
        for i in 0..n {
            let verifier = verifiers[i % verifiers.len()].clone();
            let (barrier, who) = (Arc::clone(&barrier), who.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                verifier
                    .issuer()
                    .issue_first(NewToken::new(format!("boot {i}"), owner(&who)))
                    .await
            }));
        }
        let (mut some, mut none, mut errors) = (0, 0, Vec::new());
        for task in tasks {
            match within(task).await.unwrap() {
                Ok(Some(_)) => some += 1,
                Ok(None) => none += 1,
                Err(e) => errors.push(format!("{e}: {:?}", std::error::Error::source(&e))),
            }
        }
        let listed = verifiers[0]
            .store()
            .list_by_owner(&owner(&who))
            .await
            .unwrap();
        assert!(
            some == 1 && none == n - 1 && errors.is_empty() && listed.len() == 1,
            "{label} round {round}: {some} Some, {none} None, {} errors {:?}, {} stored",
            errors.len(),
            errors.first(),
            listed.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i1_a_issue_first_race_memory_and_cached() {
    issue_first_race(vec![MemoryStore::new()], 32, "memory").await;
    let shared = Arc::new(MemoryStore::new());
    issue_first_race(
        (0..4)
            .map(|_| CachedStore::new(Arc::clone(&shared)))
            .collect(),
        32,
        "4 cached replicas over one memory store",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i1_b_issue_first_race_sqlite_memory() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    issue_first_race(vec![store], 32, "sqlite::memory:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i1_c_issue_first_race_sqlite_file_one_pool() {
    issue_first_race(vec![stores::sqlite().await], 32, "sqlite file").await;
}

/// Four replicas (four pools) on one SQLite file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i1_d_issue_first_race_sqlite_file_four_replicas() {
    let path = std::env::temp_dir().join(format!("{}.db", stores::unique_name("probe16")));
    let url = format!("sqlite://{}", path.display());
    let first = SqliteStore::connect(&url).await.unwrap();
    first.migrate().await.unwrap();
    let mut replicas = vec![first];
    for _ in 0..3 {
        replicas.push(SqliteStore::connect(&url).await.unwrap());
    }
    issue_first_race(replicas, 32, "sqlite file, 4 pools").await;
}

/// Four replicas (four pools) on one PostgreSQL schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i1_e_issue_first_race_postgres_four_replicas() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let schema = stores::unique_name("p16");
    let mut replicas = Vec::new();
    for _ in 0..4 {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        replicas.push(stores::postgres_on(pool, &schema).await);
    }
    issue_first_race(replicas, 32, "postgres, 4 pools").await;
    let cached: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(&url)
                .await
                .unwrap();
            v.push(CachedStore::new(stores::postgres_on(pool, &schema).await));
        }
        v
    };
    // The same schema: a fresh owner.
    issue_first_race_owner_prefix(cached, 16, "cached postgres, 2 pools").await;
}

async fn issue_first_race_owner_prefix<S: TokenStore + 'static>(
    replicas: Vec<S>,
    n: usize,
    label: &str,
) {
    let verifiers: Vec<_> = replicas
        .into_iter()
        .map(|s| Verifier::builder(s).disable_last_used().build())
        .collect();
    let who = stores::unique_name("cached-admin");
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let verifier = verifiers[i % verifiers.len()].clone();
        let (barrier, who) = (Arc::clone(&barrier), who.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            verifier
                .issuer()
                .issue_first(NewToken::new(format!("boot {i}"), owner(&who)))
                .await
                .map(|o| o.is_some())
                .map_err(|e| e.to_string())
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(within(task).await.unwrap());
    }
    let wins = results.iter().filter(|r| matches!(r, Ok(true))).count();
    let errors = results.iter().filter(|r| r.is_err()).count();
    assert_eq!((wins, errors), (1, 0), "{label}: {results:?}");
}

/// The docs: "revoked and expired ones count". An owner whose only token is revoked, or
/// expired, gets `None` from `issue_first`, on every store.
async fn issue_first_after_revoked_or_expired<S: TokenStore>(store: S, label: &str) {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let verifier = Verifier::builder(store).clock(clock.clone()).build();
    let who = stores::unique_name("boot");
    let revoked_owner = owner(&format!("{who}-r"));
    let first = verifier
        .issuer()
        .issue_first(NewToken::new("boot", revoked_owner.clone()))
        .await
        .unwrap()
        .expect("first");
    assert!(verifier.revoke(&first.record.id).await.unwrap());
    assert!(
        verifier
            .issuer()
            .issue_first(NewToken::new("boot", revoked_owner.clone()))
            .await
            .unwrap()
            .is_none(),
        "{label}: revoked token did not count"
    );
    let expired_owner = owner(&format!("{who}-e"));
    verifier
        .issuer()
        .issue_first(NewToken::new("boot", expired_owner.clone()).expires_in(TimeDelta::seconds(1)))
        .await
        .unwrap()
        .expect("first");
    clock.advance(TimeDelta::seconds(2));
    assert!(
        verifier
            .issuer()
            .issue_first(NewToken::new("boot", expired_owner.clone()))
            .await
            .unwrap()
            .is_none(),
        "{label}: expired token did not count"
    );
    // Owners are compared exactly: another case or a suffix is another owner.
    for other in [
        who.to_uppercase() + "-R",
        format!("{who}-r "),
        format!("{who}-"),
    ] {
        assert!(
            verifier
                .issuer()
                .issue_first(NewToken::new("boot", owner(&other)))
                .await
                .unwrap()
                .is_some(),
            "{label}: {other:?} was taken for {revoked_owner:?}"
        );
    }
}

#[tokio::test]
async fn i2_issue_first_counts_revoked_and_expired_tokens_on_every_store() {
    issue_first_after_revoked_or_expired(MemoryStore::new(), "memory").await;
    issue_first_after_revoked_or_expired(CachedStore::new(MemoryStore::new()), "cached").await;
    issue_first_after_revoked_or_expired(stores::sqlite().await, "sqlite").await;
    if let Some(url) = stores::postgres_url() {
        issue_first_after_revoked_or_expired(stores::postgres(&url).await, "postgres").await;
    }
}

// ---------------------------------------------------------------------------------------------
// 4. PostgresStore::connect / connect_lazy
// ---------------------------------------------------------------------------------------------

const PASSWORD: &str = "Pr0beS3cretPw";

fn assert_no_password(err: &StoreError, url: &str) {
    let mut texts = vec![format!("{err}"), format!("{err:?}")];
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        texts.push(format!("{s} {s:?}"));
        source = s.source();
    }
    for text in &texts {
        assert!(!text.contains(PASSWORD), "password of {url:?} in {text}");
    }
}

async fn timed_connect(url: &str) -> (Result<PostgresStore, StoreError>, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), PostgresStore::connect(url))
        .await
        .unwrap_or_else(|_| panic!("connect({url:?}) did not return within 10 s"));
    (result, started.elapsed())
}

/// A closed port: `connect` fails with `Unavailable` (at once or within the 2 s acquire
/// timeout), `connect_lazy` succeeds and its first query answers `Unavailable`.
#[tokio::test]
async fn c1_a_down_database() {
    let url = format!("postgres://app:{PASSWORD}@127.0.0.1:1/app");
    let (result, took) = timed_connect(&url).await;
    let err = result.unwrap_err();
    eprintln!("down: {took:?} {err} / {err:?}");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_no_password(&err, &url);
    let lazy = PostgresStore::connect_lazy(&url).unwrap();
    assert!(!format!("{lazy:?}").contains(PASSWORD));
    let err = within(lazy.get(&TokenId::from_u64(1))).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert_no_password(&err, &url);
}

/// A wrong user and a wrong database on a running server: fails fast (no 2 s retry loop),
/// no password in the error; the kinds are printed.
#[tokio::test]
async fn c1_b_wrong_user_or_database() {
    let Some(base) = stores::postgres_url() else {
        return;
    };
    let (host, db) = {
        let rest = base.strip_prefix("postgres://").unwrap();
        let host = rest
            .split('@')
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let db = rest.rsplit('/').next().unwrap().to_owned();
        (host, db)
    };
    for url in [
        format!("postgres://no_such_role_p16:{PASSWORD}@{host}/{db}"),
        format!("postgres://postgres:{PASSWORD}@{host}/no_such_db_p16"),
    ] {
        let (result, took) = timed_connect(&url).await;
        let err = result.err().unwrap_or_else(|| panic!("{url}: connected"));
        eprintln!("{url}: {:?} in {took:?}: {err} / {err:?}", err.kind());
        assert!(took < Duration::from_secs(1), "{url}: took {took:?}");
        assert_no_password(&err, &url);
    }
}

/// A server that accepts and never answers: `connect` returns within a bound (the 2 s acquire
/// timeout), as `Unavailable`, without the password.
#[tokio::test]
async fn c2_a_hanging_server_is_bounded() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let accept = {
        let held = Arc::clone(&held);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                held.lock().unwrap().push(socket);
            }
        })
    };
    let url = format!("postgres://app:{PASSWORD}@127.0.0.1:{port}/app?sslmode=disable");
    let (result, took) = timed_connect(&url).await;
    let err = result.unwrap_err();
    eprintln!("hanging: {took:?} {err} / {err:?}");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        !held.lock().unwrap().is_empty(),
        "the probe server saw no connection"
    );
    assert_no_password(&err, &url);
    accept.abort();
}

/// Hostile URLs: neither constructor panics, `connect` returns in bounded time, and no error
/// shows the password.
#[tokio::test]
async fn c3_hostile_urls() {
    let long_host = "h".repeat(70_000);
    let urls = vec![
        format!("postgres://u:{PASSWORD}@127.0.0.1:notaport/db"),
        format!("postgres://u:{PASSWORD}@127.0.0.1:99999/db"),
        format!("postgres://u:{PASSWORD}@[::1/db"),
        format!("postgres://u:{PASSWORD}@127.0.0.1:1/db?sslmode=bogus"),
        format!("postgres://u:{PASSWORD}@127.0.0.1:1/db?statement-cache-capacity=x"),
        format!("postgres://u:{PASSWORD}@127.0.0.1:1/db?hostaddr=not-an-ip"),
        format!("postgres://u:{PASSWORD}@127.0.0.1:1/db?port=x"),
        format!("postgres://u:%FF%FE{PASSWORD}@127.0.0.1:1/db"),
        format!("postgres://%FF:{PASSWORD}@127.0.0.1:1/db"),
        format!("postgres://u:{PASSWORD}@127.0.0.1:1/%FF"),
        format!("postgres://u:{PASSWORD}@%2Fno%2Fsuch%2Fdir/db"),
        format!("postgres://u:{PASSWORD}@/db?host=/no/such/dir"),
        format!("mysql://u:{PASSWORD}@127.0.0.1:1/db"),
        format!("u:{PASSWORD}@127.0.0.1:1/db"),
        format!("postgres://u:{PASSWORD}@{long_host}:1/db"),
        format!("postgres://u:{PASSWORD}\n@127.0.0.1:1/db"),
        "".to_owned(),
        "postgres://".to_owned(),
    ];
    for url in &urls {
        let shown: String = url.chars().take(80).collect();
        match PostgresStore::connect_lazy(url) {
            Ok(store) => assert!(!format!("{store:?}").contains(PASSWORD), "{shown}"),
            Err(err) => {
                eprintln!("lazy {shown:?}: {:?} {err:?}", err.kind());
                assert_no_password(&err, &shown);
            }
        }
        let (result, took) = timed_connect(url).await;
        match result {
            // `""` and `postgres://` mean libpq's defaults (the local server, the OS user's
            // role and database), which exist on some machines: connecting is right there.
            Ok(_) if !url.contains(PASSWORD) => {}
            Ok(_) => panic!("{shown:?}: connected"),
            Err(err) => {
                eprintln!("connect {shown:?}: {:?} in {took:?}", err.kind());
                assert!(took < Duration::from_secs(3), "{shown}: {took:?}");
                assert_no_password(&err, &shown);
            }
        }
    }
}

/// docs/stores.md: "`connect` fails at once when the database is down". A refused port takes
/// the whole 2 s acquire timeout (sqlx retries a refused connection until it), and the error's
/// source is `PoolTimedOut`: the "connection refused" is lost, so a down database and one
/// that hangs look the same.
/// Fixed: `connect` makes one plain attempt before the pool, which fails with the cause.
#[tokio::test]
async fn c1_c_a_down_database_fails_at_once_and_says_why() {
    let url = format!("postgres://app:{PASSWORD}@127.0.0.1:1/app");
    let (result, took) = timed_connect(&url).await;
    let err = result.unwrap_err();
    let source = format!("{:?}", std::error::Error::source(&err));
    assert!(
        took < Duration::from_millis(500) && !source.contains("PoolTimedOut"),
        "down database: {took:?}, source {source}"
    );
}

/// `StoreErrorKind::Unavailable` is "could not be reached or did not answer in time". A
/// malformed URL (connect_lazy's one failure) and a role or database that does not exist are
/// neither, yet all are `Unavailable`: a caller that retries on `Unavailable` retries a
/// configuration error forever.
/// Fixed: they are `StoreErrorKind::Configuration`.
#[tokio::test]
async fn c4_configuration_errors_are_not_unavailable() {
    let mut kinds = Vec::new();
    let lazy = PostgresStore::connect_lazy("postgres://u:p@127.0.0.1:notaport/db").unwrap_err();
    kinds.push(("malformed URL (connect_lazy)", lazy.kind()));
    if let Some(base) = stores::postgres_url() {
        let host = base
            .split('@')
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let (role, _) = timed_connect(&format!("postgres://no_such_role_p16@{host}/test")).await;
        kinds.push(("unknown role", role.err().unwrap().kind()));
        let (db, _) = timed_connect(&format!("postgres://postgres@{host}/no_such_db_p16")).await;
        kinds.push(("unknown database", db.err().unwrap().kind()));
    }
    assert!(
        kinds
            .iter()
            .all(|(_, k)| *k == StoreErrorKind::Configuration),
        "{kinds:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. No secret in Debug/Display
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn s1_no_secret_in_the_debug_of_issued_tokens_or_flushers() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let flusher = verifier.spawn_last_used_flusher();
    let issued = verifier
        .issuer()
        .issue_first(NewToken::new("boot", owner("admin")))
        .await
        .unwrap()
        .unwrap();
    let token = issued.token.expose_secret().to_owned();
    let format = TokenFormat::canonical();
    let secret = support::secret_part(&format, &token);
    let hash_hex = verifier.hasher().hash(secret.as_bytes()).to_hex();
    verifier.authenticate(&token).await.unwrap();
    let texts = [
        format!("{issued:?}"),
        format!("{flusher:?}"),
        format!("{:?}", verifier.downgrade()),
        format!("{verifier:?}"),
    ];
    for text in &texts {
        for forbidden in [&token, &secret, &hash_hex] {
            assert!(!text.contains(forbidden.as_str()), "secret in {text}");
        }
    }
    assert!(texts[1].contains("running: Some(true)"), "{}", texts[1]);
    assert_eq!(flusher.shutdown().await.unwrap(), 1);
}
