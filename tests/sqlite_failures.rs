//! `SqliteStore` with a locked or read-only database file: writes fail with a clear store
//! error within the deadline, verification gives the right answer or "store unavailable" (the
//! middleware's 503) and never a wrong verdict, buffered last-use times are kept, and
//! everything works again once the lock is gone, without a restart.
//!
//! What a lock blocks depends on SQLite's locking model. `SqliteStore::connect` opens the file
//! in WAL mode, where a writer (even one in `BEGIN EXCLUSIVE`) does not block readers: only
//! writes wait. A connection in `PRAGMA locking_mode = EXCLUSIVE`, or any writer on a
//! database in rollback-journal mode, blocks readers too. Each case is tested as it is.

#[path = "support/stores.rs"]
mod stores;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apitoken::{
    AuthErrorKind, IssueError, IssuedToken, ManualClock, NewToken, Owner, RejectReason,
    ScopeRequirement, SqliteStore, StoreError, StoreErrorKind, TokenFormat, TokenStore, Verifier,
};
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions};

/// The busy timeout `SqliteStore::connect` sets: how long a statement waits for a lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Slack for a loaded machine on top of a deadline.
const SLACK: Duration = Duration::from_millis(1500);

/// A fresh database file, migrated by a writable store.
async fn database() -> (PathBuf, SqliteStore) {
    let path = std::env::temp_dir().join(format!("{}.db", stores::unique_name("locked")));
    let store = SqliteStore::connect(&url(&path)).await.unwrap();
    store.migrate().await.unwrap();
    (path, store)
}

fn url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Now, to the microsecond `SqliteStore` keeps.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

fn verifier(store: SqliteStore, clock: &Arc<ManualClock>) -> Verifier<SqliteStore> {
    Verifier::builder(store).clock(clock.clone()).build()
}

async fn issue(verifier: &Verifier<SqliteStore>, name: &str) -> Result<IssuedToken, IssueError> {
    verifier
        .issuer()
        .issue(
            NewToken::new(name, Owner::new("team-1").unwrap())
                .scopes(["vps:read"])
                .unwrap(),
        )
        .await
}

fn need() -> ScopeRequirement {
    ScopeRequirement::all(["vps:read"]).unwrap()
}

/// `token` with the first character of its secret changed and a valid checksum: it reaches
/// the store, and is refused for its secret.
fn wrong_secret(token: &str) -> String {
    let format = TokenFormat::canonical();
    let parsed = format.parse(token).unwrap();
    let secret = parsed.secret();
    let first = if secret.starts_with('A') { "B" } else { "A" };
    let changed = format!("{first}{}", &secret[1..]);
    format
        .render(parsed.id(), &changed)
        .unwrap()
        .expose_secret()
        .to_owned()
}

/// A store error's kind, and whether its sources say `needle` (case-insensitively).
fn explains(err: &StoreError, needle: &str) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(err) = source {
        if err.to_string().to_lowercase().contains(needle) {
            return true;
        }
        source = err.source();
    }
    false
}

fn store_error(err: IssueError) -> StoreError {
    match err {
        IssueError::Store(err) => err,
        other => panic!("not a store error: {other:?}"),
    }
}

/// A second connection to `path` that holds the write lock: `BEGIN EXCLUSIVE` and a write,
/// not committed.
async fn hold_write_lock(path: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new().filename(path);
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE; UPDATE apitoken_sequence SET value = value")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// Runs `work`, asserting it ends within `limit` (plus [`SLACK`]); prints how long it took.
async fn within<T>(limit: Duration, work: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = tokio::time::timeout(limit + SLACK, work)
        .await
        .unwrap_or_else(|_| panic!("no answer within {:?}", limit + SLACK));
    println!("answered in {:?} (limit {limit:?})", started.elapsed());
    out
}

/// Writes under the lock: issuing, revoking and flushing last use each fail with
/// `Unavailable`, saying the database is locked, and the flush keeps its notes.
async fn writes_fail_and_keep_notes(verifier: &Verifier<SqliteStore>, victim: &IssuedToken) {
    let pending = verifier.last_used_pending();
    assert!(pending > 0);
    let (issued, revoked, flushed) = within(BUSY_TIMEOUT, async {
        tokio::join!(
            issue(verifier, "during the lock"),
            verifier.store().revoke(&victim.record.id, verifier.now()),
            verifier.flush_last_used(),
        )
    })
    .await;
    for err in [
        store_error(issued.unwrap_err()),
        revoked.unwrap_err(),
        flushed.unwrap_err(),
    ] {
        assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err:?}");
        assert!(explains(&err, "locked"), "{err:?}");
    }
    assert_eq!(
        verifier.last_used_pending(),
        pending,
        "a failed flush keeps its notes"
    );
}

/// After the lock: every write goes through, the kept notes are written with their times, and
/// the revoked token is refused.
async fn everything_works_again(
    verifier: &Verifier<SqliteStore>,
    noted: &IssuedToken,
    noted_at: DateTime<Utc>,
    victim: &IssuedToken,
) {
    let need = need();
    verifier
        .verify(noted.token.expose_secret(), &need)
        .await
        .unwrap();
    issue(verifier, "after the lock").await.unwrap();
    assert!(
        verifier
            .store()
            .revoke(&victim.record.id, verifier.now())
            .await
            .unwrap()
    );
    let err = verifier
        .verify(victim.token.expose_secret(), &need)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Revoked));
    assert!(verifier.flush_last_used().await.unwrap() >= 1);
    assert_eq!(verifier.last_used_pending(), 0);
    let stored = verifier
        .store()
        .get(&noted.record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.record.last_used_at, Some(noted_at));
}

#[tokio::test]
async fn in_wal_mode_a_held_write_lock_blocks_writes_but_verification_answers_correctly() {
    let (path, store) = database().await;
    let t0 = t0();
    let clock = Arc::new(ManualClock::new(t0));
    let verifier = verifier(store, &clock);
    let token = issue(&verifier, "svc").await.unwrap();
    let victim = issue(&verifier, "victim").await.unwrap();
    let need = need();
    let used_at = t0 + TimeDelta::seconds(1);
    clock.set(used_at);
    verifier
        .verify(token.token.expose_secret(), &need)
        .await
        .unwrap();

    let mut lock = hold_write_lock(&path).await;
    // Readers see the last committed state: the right verdicts, at full speed.
    within(Duration::ZERO, async {
        verifier
            .verify(token.token.expose_secret(), &need)
            .await
            .unwrap();
        let err = verifier
            .verify(&wrong_secret(token.token.expose_secret()), &need)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), Some(RejectReason::WrongSecret));
    })
    .await;
    writes_fail_and_keep_notes(&verifier, &victim).await;
    // Still answering reads after the failed writes.
    verifier
        .verify(token.token.expose_secret(), &need)
        .await
        .unwrap();

    sqlx::raw_sql("ROLLBACK").execute(&mut lock).await.unwrap();
    everything_works_again(&verifier, &token, used_at, &victim).await;
    lock.close().await.unwrap();
}

/// A store on a new file in rollback-journal mode (`journal_mode = DELETE`, SQLite's own
/// default), where a writer's lock blocks readers.
async fn journal_store(busy_timeout: Duration, query_timeout: Duration) -> (PathBuf, SqliteStore) {
    let path = std::env::temp_dir().join(format!("{}.db", stores::unique_name("journal")));
    let options = SqliteConnectOptions::from_str(&url(&path))
        .unwrap()
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Delete)
        .busy_timeout(busy_timeout);
    let pool = SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .unwrap();
    let store = SqliteStore::builder(pool)
        .query_timeout(query_timeout)
        .build();
    store.migrate().await.unwrap();
    (path, store)
}

#[tokio::test]
async fn in_wal_mode_no_second_connection_can_lock_readers_out() {
    // `locking_mode = EXCLUSIVE` is the one lock that keeps WAL readers out; SQLite refuses it
    // to a second connection while the store's pool has the database open.
    let (path, store) = database().await;
    let clock = Arc::new(ManualClock::new(t0()));
    let verifier = verifier(store, &clock);
    let token = issue(&verifier, "svc").await.unwrap();
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_millis(200));
    let mut other = SqliteConnection::connect_with(&options).await.unwrap();
    let err = sqlx::raw_sql(
        "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; \
         UPDATE apitoken_sequence SET value = value",
    )
    .execute(&mut other)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("database is locked"), "{err}");
    verifier
        .verify(token.token.expose_secret(), &need())
        .await
        .unwrap();
    other.close().await.unwrap();
}

#[tokio::test]
async fn in_rollback_journal_mode_a_held_write_lock_is_503_and_recovers() {
    let busy = Duration::from_millis(500);
    let (path, store) = journal_store(busy, Duration::from_secs(3)).await;
    let t0 = t0();
    let clock = Arc::new(ManualClock::new(t0));
    let verifier = verifier(store, &clock);
    let token = issue(&verifier, "svc").await.unwrap();
    let victim = issue(&verifier, "victim").await.unwrap();
    let need = need();
    let used_at = t0 + TimeDelta::seconds(1);
    clock.set(used_at);
    verifier
        .verify(token.token.expose_secret(), &need)
        .await
        .unwrap();

    let lock = hold_write_lock(&path).await;
    let err = within(busy, async {
        verifier
            .verify(token.token.expose_secret(), &need)
            .await
            .unwrap_err()
    })
    .await;
    assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable, "{err:?}");
    writes_fail_and_keep_notes(&verifier, &victim).await;

    lock.close().await.unwrap();
    everything_works_again(&verifier, &token, used_at, &victim).await;
}

#[tokio::test]
async fn a_query_deadline_shorter_than_the_busy_timeout_answers_at_the_deadline() {
    // Readers blocked (rollback journal), a 2 s busy timeout, a 300 ms deadline per query.
    let deadline = Duration::from_millis(300);
    let (path, store) = journal_store(BUSY_TIMEOUT, deadline).await;
    let t0 = t0();
    let clock = Arc::new(ManualClock::new(t0));
    let verifier = verifier(store, &clock);
    let token = issue(&verifier, "svc").await.unwrap();
    let victim = issue(&verifier, "victim").await.unwrap();
    let need = need();
    let used_at = t0 + TimeDelta::seconds(1);
    clock.set(used_at);
    verifier
        .verify(token.token.expose_secret(), &need)
        .await
        .unwrap();

    let lock = hold_write_lock(&path).await;
    for _ in 0..3 {
        let started = Instant::now();
        let err = within(deadline, async {
            verifier
                .verify(token.token.expose_secret(), &need)
                .await
                .unwrap_err()
        })
        .await;
        assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable, "{err:?}");
        // At the deadline, well before the 2 s busy timeout.
        assert!(started.elapsed() < BUSY_TIMEOUT, "{:?}", started.elapsed());
    }
    let err = within(deadline, verifier.flush_last_used())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err:?}");
    assert_eq!(verifier.last_used_pending(), 1);

    // The abandoned statements are still waiting out their busy timeout on their
    // connections; once the lock is gone they finish and the pool serves again.
    lock.close().await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while verifier
        .verify(token.token.expose_secret(), &need)
        .await
        .is_err()
    {
        assert!(Instant::now() < until, "no recovery within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    everything_works_again(&verifier, &token, used_at, &victim).await;
}

/// With `verifier` on a read-only view of the database: verification gives the right
/// verdicts, every write fails at once with `Unavailable` saying the database is read-only,
/// and the flush keeps its notes.
async fn read_only_behaves(
    verifier: &Verifier<SqliteStore>,
    clock: &ManualClock,
    token: &IssuedToken,
    victim: &IssuedToken,
) {
    let need = need();
    clock.advance(TimeDelta::seconds(1));
    verifier
        .verify(token.token.expose_secret(), &need)
        .await
        .unwrap();
    let err = verifier
        .verify(&wrong_secret(token.token.expose_secret()), &need)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::WrongSecret));

    let (issued, revoked, flushed) = within(Duration::ZERO, async {
        tokio::join!(
            issue(verifier, "read-only"),
            verifier.store().revoke(&victim.record.id, verifier.now()),
            verifier.flush_last_used(),
        )
    })
    .await;
    for err in [
        store_error(issued.unwrap_err()),
        revoked.unwrap_err(),
        flushed.unwrap_err(),
    ] {
        assert_eq!(err.kind(), StoreErrorKind::PermissionDenied, "{err:?}");
        assert!(explains(&err, "readonly"), "{err:?}");
    }
    assert_eq!(
        verifier.last_used_pending(),
        1,
        "a failed flush keeps its notes"
    );
    // Nothing was written: the victim still works.
    verifier
        .verify(victim.token.expose_secret(), &need)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_database_opened_read_only_verifies_correctly_and_refuses_writes_clearly() {
    let (path, writable) = database().await;
    let clock = Arc::new(ManualClock::new(t0()));
    let token = issue(&verifier(writable.clone(), &clock), "svc")
        .await
        .unwrap();
    let victim = issue(&verifier(writable.clone(), &clock), "victim")
        .await
        .unwrap();

    // `mode=ro` opens the file with SQLITE_OPEN_READONLY: every write is SQLITE_READONLY, as
    // for a file the process may not write (SQLite then opens it read-only by itself; see the
    // `chattr +i` test below).
    let read_only = SqliteStore::connect(&format!("{}?mode=ro", url(&path)))
        .await
        .unwrap();
    let verifier = verifier(read_only, &clock);
    read_only_behaves(&verifier, &clock, &token, &victim).await;
    // A change made through a writable store is seen by the read-only one.
    assert!(
        writable
            .revoke(&victim.record.id, Utc::now())
            .await
            .unwrap()
    );
    let err = verifier
        .verify(victim.token.expose_secret(), &need())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Revoked));
}

/// `chattr +i` on a file, undone when dropped (also when the test fails).
struct Immutable(PathBuf);

impl Immutable {
    /// `None` (after printing why) where `chattr` or the file system does not allow it.
    fn set(path: &Path) -> Option<Self> {
        let done = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output();
        match done {
            Ok(out) if out.status.success() => Some(Self(path.to_owned())),
            Ok(out) => {
                println!(
                    "skipped: chattr +i failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(err) => {
                println!("skipped: chattr not runnable: {err}");
                None
            }
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn an_immutable_database_file_is_opened_read_only_and_refuses_writes_clearly() {
    // The operating system refuses writes even to root: SQLite's read-write open fails, it
    // falls back to read-only by itself, and `SqliteStore::connect` succeeds on a plain URL.
    let (path, writable) = database().await;
    let clock = Arc::new(ManualClock::new(t0()));
    let token = issue(&verifier(writable.clone(), &clock), "svc")
        .await
        .unwrap();
    let victim = issue(&verifier(writable.clone(), &clock), "victim")
        .await
        .unwrap();
    let Some(_immutable) = Immutable::set(&path) else {
        return;
    };
    let store = SqliteStore::connect(&url(&path)).await.unwrap();
    let verifier = verifier(store, &clock);
    read_only_behaves(&verifier, &clock, &token, &victim).await;
}
