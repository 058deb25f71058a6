//! The verifier end to end: issue, verify, refuse; store access, clocks, last use, peppers,
//! several formats, and what errors and records reveal.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use apitoken::{
    AuthErrorKind, FormatError, IdKind, IssueError, IssuedToken, ManualClock, MemoryStore,
    NewToken, Owner, RejectReason, ScopeRequirement, ScopeSet, SecretHash, SecretHasher,
    StoreError, StoreErrorKind, StoredToken, TokenFormat, TokenId, TokenRecord, TokenStore,
    Verifier,
};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

const DCT_1: &str = "1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD4pflejgqjd0pfKtywlSWR9G0fIaWajuKcBT3";
const DCT_2: &str = "2.vCfC0MnpySYZLshuxap2aZ7xqBKAnQvV7hFnobe7xuNlHS9AF2NQnV9XXw4UyET6";
const SANCTUM_SEED: &str = "1|7TEwyZaQXMXRVBZV9USjWNRbXAbPv9BrgMJSLDCk345196d2";
const SANCTUM_SEED_ENTROPY: &str = "7TEwyZaQXMXRVBZV9USjWNRbXAbPv9BrgMJSLDCk";
/// crc32b of the 40 entropy characters, as printed in the DanubeData seed.
const SANCTUM_SEED_CRC: &str = "345196d2";

// ---------------------------------------------------------------------------------------------
// A store that counts calls and can be told to fail
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct CountingStore {
    inner: MemoryStore,
    gets: AtomicUsize,
    finds: AtomicUsize,
    /// Calls to `record_last_used` (one token each).
    last_used: AtomicUsize,
    /// Calls to `record_last_used_batch`, failed ones included, and the entries they carried.
    batches: AtomicUsize,
    batch_entries: AtomicUsize,
    fail_lookups: AtomicBool,
    /// How many of the next `record_last_used_batch` calls fail.
    fail_batches: AtomicUsize,
    /// `record_last_used_batch` never completes while set.
    hang_batches: AtomicBool,
}

impl CountingStore {
    fn lookups(&self) -> usize {
        self.gets.load(Ordering::SeqCst) + self.finds.load(Ordering::SeqCst)
    }

    /// Every last-used write: single calls and batches.
    fn last_used_writes(&self) -> usize {
        self.last_used.load(Ordering::SeqCst) + self.batches()
    }

    fn batches(&self) -> usize {
        self.batches.load(Ordering::SeqCst)
    }

    fn batch_entries(&self) -> usize {
        self.batch_entries.load(Ordering::SeqCst)
    }

    fn down() -> StoreError {
        StoreError::unavailable(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ))
    }
}

impl TokenStore for CountingStore {
    fn insert(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.insert(record, hash)
    }

    fn next_id(&self) -> impl Future<Output = Result<TokenId, StoreError>> + Send {
        self.inner.next_id()
    }

    async fn get(&self, id: &TokenId) -> Result<Option<StoredToken>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        if self.fail_lookups.load(Ordering::SeqCst) {
            return Err(Self::down());
        }
        self.inner.get(id).await
    }

    async fn find_by_hash(&self, hash: &SecretHash) -> Result<Option<StoredToken>, StoreError> {
        self.finds.fetch_add(1, Ordering::SeqCst);
        if self.fail_lookups.load(Ordering::SeqCst) {
            return Err(Self::down());
        }
        self.inner.find_by_hash(hash).await
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

    async fn record_last_used(&self, id: &TokenId, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.last_used.fetch_add(1, Ordering::SeqCst);
        self.inner.record_last_used(id, at).await
    }

    async fn record_last_used_batch(
        &self,
        batch: &[(TokenId, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.batch_entries.fetch_add(batch.len(), Ordering::SeqCst);
        if self.hang_batches.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let fail = self
            .fail_batches
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(Self::down());
        }
        // MemoryStore keeps the default: one `record_last_used` per entry, not counted above.
        self.inner.record_last_used_batch(batch).await
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn owner(text: &str) -> Owner {
    Owner::new(text).unwrap()
}

fn all(scopes: &[&str]) -> ScopeRequirement {
    ScopeRequirement::all(scopes).unwrap()
}

fn any(scopes: &[&str]) -> ScopeRequirement {
    ScopeRequirement::any(scopes).unwrap()
}

fn new_token(name: &str, team: &str, scopes: &[&str]) -> NewToken {
    NewToken::new(name, owner(team)).scopes(scopes).unwrap()
}

async fn issue<S: TokenStore>(verifier: &Verifier<S>, team: &str, scopes: &[&str]) -> IssuedToken {
    verifier
        .issuer()
        .issue(new_token("test token", team, scopes))
        .await
        .unwrap()
}

fn counting_verifier() -> Verifier<CountingStore> {
    Verifier::builder(CountingStore::default()).build()
}

fn clocked(store: CountingStore) -> (Verifier<CountingStore>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let verifier = Verifier::builder(store).clock(clock.clone()).build();
    (verifier, clock)
}

/// The secret part of a token in `format` (what is hashed).
fn secret_part(format: &TokenFormat, token: &str) -> String {
    format.parse(token).unwrap().secret().to_owned()
}

/// `token` with the character at `at` replaced by another base62 character.
fn change_at(token: &str, at: usize) -> String {
    let c = token.as_bytes()[at];
    let other = if c == b'A' { "B" } else { "A" };
    let mut changed = token.to_owned();
    changed.replace_range(at..=at, other);
    changed
}

// ---------------------------------------------------------------------------------------------
// Happy path and refusals
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn issue_then_verify() {
    let verifier = counting_verifier();
    let mut metadata = apitoken::Metadata::new();
    metadata.insert("env".into(), "prod".into());
    let issued = verifier
        .issuer()
        .issue(
            NewToken::new("Production Server", owner("team-1"))
                .scopes(["vps:read", "storage:read"])
                .unwrap()
                .metadata(metadata.clone()),
        )
        .await
        .unwrap();
    let token = issued.token.expose_secret();
    assert!(TokenFormat::canonical().parse(token).is_ok());

    let principal = verifier.verify(token, &all(&["vps:read"])).await.unwrap();
    assert_eq!(principal.owner().as_str(), "team-1");
    assert_eq!(principal.name(), "Production Server");
    assert_eq!(principal.token_id(), &issued.record.id);
    assert_eq!(
        principal.scopes(),
        &ScopeSet::parse("vps:read storage:read").unwrap()
    );
    assert_eq!(principal.metadata(), &metadata);
    assert_eq!(principal.expires_at(), None);
    assert_eq!(verifier.store().gets.load(Ordering::SeqCst), 1);

    let principal = verifier.authenticate(token).await.unwrap();
    assert_eq!(principal.token_id(), &issued.record.id);
    let principal = verifier
        .verify(token, &all(&["vps:read", "storage:read"]))
        .await
        .unwrap();
    assert_eq!(principal.owner().as_str(), "team-1");

    // The store holds the hash of the secret part, never the text.
    let stored = verifier
        .store()
        .inner
        .get(&issued.record.id)
        .await
        .unwrap()
        .unwrap();
    let secret = secret_part(&TokenFormat::canonical(), token);
    assert_eq!(stored.hash, SecretHasher::sha256().hash(secret.as_bytes()));
    assert_eq!(stored.record.name, "Production Server");
}

#[tokio::test]
async fn unknown_id_is_an_invalid_token() {
    let verifier = counting_verifier();
    issue(&verifier, "team-1", &[]).await;
    let id: TokenId = "AAAAAAAAAAAA".parse().unwrap();
    let made_up = TokenFormat::canonical().generate(Some(&id)).unwrap();
    let err = verifier
        .authenticate(made_up.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    assert_eq!(err.reason(), Some(RejectReason::UnknownToken));
    assert_eq!(err.token_id(), Some(&id));
    assert_eq!(err.missing_scopes(), None);
    assert_eq!(err.to_string(), "invalid token");
    // The unknown id was looked up: the checksum was right.
    assert_eq!(verifier.store().lookups(), 1);
}

#[tokio::test]
async fn wrong_secret_for_a_known_id() {
    let verifier = counting_verifier();
    let issued = issue(&verifier, "team-1", &["vps:read"]).await;
    let forged = TokenFormat::canonical()
        .generate(Some(&issued.record.id))
        .unwrap();
    let err = verifier
        .verify(forged.expose_secret(), &all(&["vps:read"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    assert_eq!(err.reason(), Some(RejectReason::WrongSecret));
    assert_eq!(err.token_id(), Some(&issued.record.id));
    // The real one still works.
    assert!(
        verifier
            .authenticate(issued.token.expose_secret())
            .await
            .is_ok()
    );
}

/// Positions in a 32-byte hash at both ends of each of its 8-byte words.
const WORD_EDGES: [usize; 7] = [0, 7, 8, 15, 16, 24, 31];

#[test]
fn secret_hashes_differing_in_any_one_byte_compare_unequal() {
    use subtle::ConstantTimeEq;
    let base: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let hash = SecretHash::from_bytes(base);
    assert_eq!(hash, SecretHash::from_bytes(base));
    assert!(bool::from(hash.ct_eq(&SecretHash::from_bytes(base))));
    assert_eq!(
        SecretHash::from_bytes([0; 32]),
        SecretHash::from_bytes([0; 32])
    );
    // Every byte, the word edges among them, with a low bit, a high bit and all bits flipped.
    assert!(WORD_EDGES.iter().all(|at| *at < 32));
    for at in 0..32 {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bytes = base;
            bytes[at] ^= flip;
            let other = SecretHash::from_bytes(bytes);
            assert_ne!(hash, other, "differs at byte {at} ({flip:#04x})");
            assert_ne!(other, hash, "differs at byte {at} ({flip:#04x})");
            assert!(!bool::from(hash.ct_eq(&other)), "ct_eq, byte {at}");
            assert!(!bool::from(other.ct_eq(&hash)), "ct_eq, byte {at}");
        }
    }
}

#[tokio::test]
async fn a_stored_hash_differing_in_one_byte_refuses_the_token() {
    use sha2::{Digest, Sha256};
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let format = TokenFormat::canonical();
    for (n, at) in std::iter::once(None)
        .chain(WORD_EDGES.map(Some))
        .enumerate()
    {
        let id: TokenId = format!("hashedge{n:04}").parse().unwrap();
        let token = format.generate(Some(&id)).unwrap();
        let token = token.expose_secret();
        // The stored form, computed here with `sha2` rather than by the crate's hasher.
        let mut stored: [u8; 32] = Sha256::digest(secret_part(&format, token).as_bytes()).into();
        if let Some(at) = at {
            stored[at] ^= 0x01;
        }
        let record = TokenRecord::new(id, owner("team-1"), "edge", Utc::now());
        verifier
            .store()
            .insert(record, SecretHash::from_bytes(stored))
            .await
            .unwrap();
        match (at, verifier.authenticate(token).await) {
            (None, Ok(principal)) => assert_eq!(principal.token_id(), &id),
            (Some(_), Err(err)) => assert_eq!(err.reason(), Some(RejectReason::WrongSecret)),
            (at, result) => panic!("stored hash off at {at:?}: {:?}", result.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn bad_checksum_and_malformed_tokens_never_reach_the_store() {
    let verifier = counting_verifier();
    let issued = issue(&verifier, "team-1", &["vps:read"]).await;
    let token = issued.token.expose_secret();
    for at in [0, 5, 11, 13, 30, 55, 56, 61] {
        let changed = change_at(token, at);
        let err = verifier
            .verify(&changed, &all(&["vps:read"]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), AuthErrorKind::InvalidToken, "position {at}");
        assert_eq!(
            err.reason(),
            Some(RejectReason::BadChecksum),
            "position {at}"
        );
        assert_eq!(err.token_id(), None);
    }
    let malformed = [
        ("", FormatError::Empty),
        ("hello world", FormatError::InvalidCharacter),
        (&format!("{token}\n"), FormatError::InvalidCharacter),
        (&format!(" {token}"), FormatError::InvalidCharacter),
        (&"a".repeat(600), FormatError::TooLong),
        ("q7Xa0LmB2pZe", FormatError::MissingSeparator),
        (&format!("x{token}"), FormatError::InvalidId),
        (DCT_1, FormatError::InvalidId),
    ];
    for (text, expected) in malformed {
        let err = verifier.authenticate(text).await.unwrap_err();
        assert_eq!(err.kind(), AuthErrorKind::InvalidToken, "{text:?}");
        assert_eq!(
            err.reason(),
            Some(RejectReason::Malformed(expected)),
            "{text:?}"
        );
    }
    assert_eq!(verifier.store().lookups(), 0);
    assert_eq!(verifier.last_used_pending(), 0);
}

#[tokio::test]
async fn bad_checksum_is_refused_even_when_the_store_is_down() {
    let verifier = counting_verifier();
    let issued = issue(&verifier, "team-1", &[]).await;
    verifier.store().fail_lookups.store(true, Ordering::SeqCst);
    let err = verifier
        .authenticate(&change_at(issued.token.expose_secret(), 20))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    assert_eq!(err.reason(), Some(RejectReason::BadChecksum));
    assert_eq!(verifier.store().lookups(), 0);
}

#[tokio::test]
async fn revoked_tokens_are_refused() {
    let verifier = counting_verifier();
    let issued = issue(&verifier, "team-1", &["vps:read"]).await;
    let token = issued.token.expose_secret();
    assert!(verifier.authenticate(token).await.is_ok());
    assert!(
        verifier
            .store()
            .revoke(&issued.record.id, verifier.now())
            .await
            .unwrap()
    );
    let err = verifier
        .verify(token, &all(&["vps:read"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    assert_eq!(err.reason(), Some(RejectReason::Revoked));
    assert_eq!(err.token_id(), Some(&issued.record.id));
    // Revocation is once.
    assert!(
        !verifier
            .store()
            .revoke(&issued.record.id, verifier.now())
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn revoke_owner_revokes_that_owner_only() {
    let verifier = counting_verifier();
    let a1 = issue(&verifier, "team-a", &[]).await;
    let a2 = issue(&verifier, "team-a", &[]).await;
    let b1 = issue(&verifier, "team-b", &[]).await;
    let revoked = verifier
        .store()
        .revoke_owner(&owner("team-a"), verifier.now())
        .await
        .unwrap();
    assert_eq!(revoked, 2);
    for issued in [&a1, &a2] {
        let err = verifier
            .authenticate(issued.token.expose_secret())
            .await
            .unwrap_err();
        assert_eq!(err.reason(), Some(RejectReason::Revoked));
    }
    let principal = verifier
        .authenticate(b1.token.expose_secret())
        .await
        .unwrap();
    assert_eq!(principal.owner().as_str(), "team-b");
    let listed = verifier
        .store()
        .list_by_owner(&owner("team-a"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(TokenRecord::is_revoked));
    // Again: nothing left to revoke.
    assert_eq!(
        verifier
            .store()
            .revoke_owner(&owner("team-a"), verifier.now())
            .await
            .unwrap(),
        0
    );
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn expiry_boundary() {
    let (verifier, clock) = clocked(CountingStore::default());
    let expires = t0() + TimeDelta::hours(1);
    let issued = verifier
        .issuer()
        .issue(new_token("short", "team-1", &[]).expires_at(expires))
        .await
        .unwrap();
    assert_eq!(issued.record.expires_at, Some(expires));
    assert_eq!(issued.record.created_at, t0());
    let token = issued.token.expose_secret();

    clock.set(expires - TimeDelta::nanoseconds(1));
    let principal = verifier.authenticate(token).await.unwrap();
    assert_eq!(principal.expires_at(), Some(expires));

    clock.set(expires);
    let err = verifier.authenticate(token).await.unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    assert_eq!(err.reason(), Some(RejectReason::Expired));

    clock.advance(TimeDelta::nanoseconds(1));
    let err = verifier.authenticate(token).await.unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Expired));

    // A clock set back makes it valid again: expiry is judged at verification time.
    clock.set(expires - TimeDelta::seconds(1));
    assert!(verifier.authenticate(token).await.is_ok());
}

#[tokio::test]
async fn expires_in_counts_from_issue() {
    let (verifier, clock) = clocked(CountingStore::default());
    let issued = verifier
        .issuer()
        .issue(new_token("ninety days", "team-1", &[]).expires_in(TimeDelta::days(90)))
        .await
        .unwrap();
    assert_eq!(issued.record.expires_at, Some(t0() + TimeDelta::days(90)));
    clock.set(t0() + TimeDelta::days(90) - TimeDelta::seconds(1));
    assert!(
        verifier
            .authenticate(issued.token.expose_secret())
            .await
            .is_ok()
    );
    clock.set(t0() + TimeDelta::days(90));
    let err = verifier
        .authenticate(issued.token.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Expired));
}

#[tokio::test]
async fn max_lifetime_boundary() {
    let clock = Arc::new(ManualClock::new(t0()));
    let lifetime = TimeDelta::days(30);
    let verifier = Verifier::builder(CountingStore::default())
        .clock(clock.clone())
        .max_lifetime(lifetime)
        .build();
    // No expiry of its own, and one far beyond the lifetime: both are bounded.
    let forever = issue(&verifier, "team-1", &[]).await;
    let long = verifier
        .issuer()
        .issue(new_token("long", "team-1", &[]).expires_in(TimeDelta::days(365)))
        .await
        .unwrap();
    for issued in [&forever, &long] {
        let token = issued.token.expose_secret();
        clock.set(t0() + lifetime - TimeDelta::nanoseconds(1));
        assert!(verifier.authenticate(token).await.is_ok());
        clock.set(t0() + lifetime);
        let err = verifier.authenticate(token).await.unwrap_err();
        assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
        assert_eq!(err.reason(), Some(RejectReason::LifetimeExceeded));
        assert_eq!(err.token_id(), Some(&issued.record.id));
    }
}

#[tokio::test]
async fn max_idle_boundary() {
    let clock = Arc::new(ManualClock::new(t0()));
    let idle = TimeDelta::days(30);
    let verifier = Verifier::builder(CountingStore::default())
        .clock(clock.clone())
        .max_idle(idle)
        .build();
    // Pairs of tokens with the same last use: an accepted verification is a use, so the one
    // checked just before the limit cannot be the one checked at it.
    let pair = async || {
        (
            issue(&verifier, "team-1", &[]).await,
            issue(&verifier, "team-1", &[]).await,
        )
    };
    let verify_at = async |issued: &IssuedToken, at| {
        clock.set(at);
        verifier.authenticate(issued.token.expose_secret()).await
    };

    // Never used: idle from `created_at`.
    let (before, at) = pair().await;
    let end = t0() + idle;
    assert!(
        verify_at(&before, end - TimeDelta::nanoseconds(1))
            .await
            .is_ok()
    );
    let err = verify_at(&at, end).await.unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    assert_eq!(err.reason(), Some(RejectReason::Idle));
    assert_eq!(err.token_id(), Some(&at.record.id));

    // Used, the use noted in memory only: idle from that use.
    let (before, at) = pair().await;
    let used = t0() + TimeDelta::days(40) + TimeDelta::nanoseconds(123_456_789);
    clock.set(used);
    for issued in [&before, &at] {
        verifier
            .authenticate(issued.token.expose_secret())
            .await
            .unwrap();
    }
    let end = used + idle;
    assert!(
        verify_at(&before, end - TimeDelta::nanoseconds(1))
            .await
            .is_ok()
    );
    let err = verify_at(&at, end).await.unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Idle));

    // Used and flushed: idle from the stored `last_used_at`.
    let (before, at) = pair().await;
    let used = end + TimeDelta::days(1) + TimeDelta::nanoseconds(987);
    clock.set(used);
    for issued in [&before, &at] {
        verifier
            .authenticate(issued.token.expose_secret())
            .await
            .unwrap();
    }
    verifier.flush_last_used().await.unwrap();
    assert_eq!(verifier.last_used_pending(), 0);
    assert_eq!(
        stored_last_used(&verifier, &at.record.id).await,
        Some(used),
        "flushed"
    );
    let end = used + idle;
    assert!(
        verify_at(&before, end - TimeDelta::nanoseconds(1))
            .await
            .is_ok()
    );
    let err = verify_at(&at, end).await.unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Idle));
}

#[tokio::test]
async fn a_lifetime_past_the_end_of_time_never_runs_out() {
    let clock = Arc::new(ManualClock::new(t0()));
    let verifier = Verifier::builder(CountingStore::default())
        .clock(clock.clone())
        .max_lifetime(TimeDelta::MAX)
        .build();
    let issued = issue(&verifier, "team-1", &[]).await;
    clock.set(t0() + TimeDelta::days(365 * 100));
    assert!(
        verifier
            .authenticate(issued.token.expose_secret())
            .await
            .is_ok()
    );
}

// ---------------------------------------------------------------------------------------------
// Scopes through the verifier
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn insufficient_scope_reports_the_missing_scopes() {
    let verifier = counting_verifier();
    let issued = issue(&verifier, "team-1", &["vps:read"]).await;
    let token = issued.token.expose_secret();
    let err = verifier
        .verify(token, &all(&["vps:read", "vps:write", "storage:read"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InsufficientScope);
    assert_eq!(err.to_string(), "insufficient scope");
    assert_eq!(
        err.missing_scopes(),
        Some(&ScopeSet::parse("vps:write storage:read").unwrap())
    );
    assert_eq!(err.token_id(), Some(&issued.record.id));
    assert_eq!(err.reason(), None);

    // Any-of: every listed scope is reported when none is held.
    let err = verifier
        .verify(token, &any(&["vps:write", "admin"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InsufficientScope);
    assert_eq!(
        err.missing_scopes(),
        Some(&ScopeSet::parse("vps:write admin").unwrap())
    );
    assert!(
        verifier
            .verify(token, &any(&["vps:write", "vps:read"]))
            .await
            .is_ok()
    );
    // A token issued with no scopes holds none.
    let none = issue(&verifier, "team-1", &[]).await;
    let err = verifier
        .verify(none.token.expose_secret(), &all(&["vps:read"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InsufficientScope);
    assert!(
        verifier
            .authenticate(none.token.expose_secret())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn an_invalid_token_never_reveals_scope_information() {
    let (verifier, clock) = clocked(CountingStore::default());
    let wrong_scope = all(&["storage:delete"]);

    let revoked = issue(&verifier, "team-1", &["vps:read"]).await;
    verifier
        .store()
        .revoke(&revoked.record.id, verifier.now())
        .await
        .unwrap();
    let expired = verifier
        .issuer()
        .issue(new_token("exp", "team-1", &["vps:read"]).expires_in(TimeDelta::minutes(5)))
        .await
        .unwrap();
    let live = issue(&verifier, "team-1", &["vps:read"]).await;
    clock.advance(TimeDelta::minutes(10));

    let forged = TokenFormat::canonical()
        .generate(Some(&live.record.id))
        .unwrap();
    for (token, reason) in [
        (revoked.token.expose_secret(), RejectReason::Revoked),
        (expired.token.expose_secret(), RejectReason::Expired),
        (forged.expose_secret(), RejectReason::WrongSecret),
    ] {
        let err = verifier.verify(token, &wrong_scope).await.unwrap_err();
        assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
        assert_eq!(err.reason(), Some(reason));
        assert_eq!(err.missing_scopes(), None);
        assert!(!format!("{err:?}").contains("storage:delete"));
        assert!(!format!("{err:?}").contains("vps:read"));
    }
}

// ---------------------------------------------------------------------------------------------
// Store failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unavailable_store_fails_closed() {
    let verifier = counting_verifier();
    let issued = issue(&verifier, "team-1", &["vps:read"]).await;
    verifier.store().fail_lookups.store(true, Ordering::SeqCst);
    let err = verifier
        .verify(issued.token.expose_secret(), &all(&["vps:read"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable);
    assert_eq!(err.to_string(), "token store unavailable");
    assert_eq!(err.reason(), None);
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(verifier.last_used_pending(), 0);

    // An unknown id is not "unknown" when the store could not answer.
    let made_up = TokenFormat::canonical()
        .generate(Some(&"BBBBBBBBBBBB".parse().unwrap()))
        .unwrap();
    let err = verifier
        .authenticate(made_up.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable);

    verifier.store().fail_lookups.store(false, Ordering::SeqCst);
    assert!(
        verifier
            .authenticate(issued.token.expose_secret())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn an_unavailable_store_fails_closed_for_id_less_formats() {
    let format = TokenFormat::builder()
        .prefix("tk_live_")
        .id(IdKind::None)
        .build()
        .unwrap();
    let verifier = Verifier::builder(CountingStore::default())
        .format(format)
        .build();
    let issued = issue(&verifier, "team-1", &[]).await;
    verifier.store().fail_lookups.store(true, Ordering::SeqCst);
    let err = verifier
        .authenticate(issued.token.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable);
    assert_eq!(verifier.store().finds.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// Last use
// ---------------------------------------------------------------------------------------------

async fn stored_last_used(
    verifier: &Verifier<CountingStore>,
    id: &TokenId,
) -> Option<DateTime<Utc>> {
    verifier
        .store()
        .inner
        .get(id)
        .await
        .unwrap()
        .unwrap()
        .record
        .last_used_at
}

#[tokio::test]
async fn last_use_is_noted_in_memory_and_written_by_a_flush() {
    let (verifier, clock) = clocked(CountingStore::default());
    let issued = issue(&verifier, "team-1", &[]).await;
    let token = issued.token.expose_secret();
    let id = issued.record.id;
    assert_eq!(stored_last_used(&verifier, &id).await, None);

    let principal = verifier.authenticate(token).await.unwrap();
    // The principal holds the record as it was before this use.
    assert_eq!(principal.record().last_used_at, None);
    // Noted, not written.
    assert_eq!(verifier.last_used_pending(), 1);
    assert_eq!(verifier.store().last_used_writes(), 0);
    assert_eq!(stored_last_used(&verifier, &id).await, None);

    assert_eq!(verifier.flush_last_used().await.unwrap(), 1);
    assert_eq!(verifier.store().batches(), 1);
    assert_eq!(verifier.last_used_pending(), 0);
    assert_eq!(stored_last_used(&verifier, &id).await, Some(t0()));
    // Nothing new: no store call at all.
    assert_eq!(verifier.flush_last_used().await.unwrap(), 0);
    assert_eq!(verifier.store().batches(), 1);

    // The next verification sees the flushed time.
    clock.set(t0() + TimeDelta::seconds(61));
    let principal = verifier.authenticate(token).await.unwrap();
    assert_eq!(principal.record().last_used_at, Some(t0()));
    assert_eq!(verifier.flush_last_used().await.unwrap(), 1);
    assert_eq!(
        stored_last_used(&verifier, &id).await,
        Some(t0() + TimeDelta::seconds(61))
    );

    // A refused verification notes nothing.
    clock.advance(TimeDelta::hours(1));
    verifier
        .verify(token, &all(&["vps:write"]))
        .await
        .unwrap_err();
    verifier
        .authenticate(&change_at(token, token.len() - 10))
        .await
        .unwrap_err();
    assert_eq!(verifier.last_used_pending(), 0);
    assert_eq!(verifier.flush_last_used().await.unwrap(), 0);
    assert_eq!(verifier.store().batches(), 2);
    // The verifier never writes one token at a time.
    assert_eq!(verifier.store().last_used.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn ten_thousand_verifications_of_one_token_cost_one_write() {
    let (verifier, clock) = clocked(CountingStore::default());
    let issued = issue(&verifier, "team-1", &[]).await;
    let token = issued.token.expose_secret();
    for _ in 0..10_000 {
        verifier.authenticate(token).await.unwrap();
        clock.advance(TimeDelta::milliseconds(1));
    }
    assert_eq!(verifier.store().last_used_writes(), 0);
    assert_eq!(verifier.last_used_pending(), 1);

    assert_eq!(verifier.flush_last_used().await.unwrap(), 1);
    assert_eq!(verifier.store().batches(), 1);
    assert_eq!(verifier.store().batch_entries(), 1);
    assert_eq!(verifier.store().last_used.load(Ordering::SeqCst), 0);
    // The latest of the 10,000 times.
    assert_eq!(
        stored_last_used(&verifier, &issued.record.id).await,
        Some(t0() + TimeDelta::milliseconds(9_999))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_verifications_of_one_token_make_one_entry() {
    let verifier = counting_verifier();
    let issued = issue(&verifier, "team-1", &[]).await;
    let token = issued.token.expose_secret().to_owned();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let verifier = verifier.clone();
            let token = token.clone();
            tokio::spawn(async move {
                for _ in 0..1_000 {
                    verifier.authenticate(&token).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(verifier.store().last_used_writes(), 0);
    assert_eq!(verifier.flush_last_used().await.unwrap(), 1);
    assert_eq!(verifier.store().batch_entries(), 1);
}

#[tokio::test]
async fn last_use_only_moves_forward() {
    let (verifier, clock) = clocked(CountingStore::default());
    let a = issue(&verifier, "team-1", &[]).await;
    let b = issue(&verifier, "team-1", &[]).await;

    // In the buffer: an older note does not replace a newer one.
    clock.set(t0() + TimeDelta::seconds(10));
    verifier
        .authenticate(a.token.expose_secret())
        .await
        .unwrap();
    clock.set(t0() + TimeDelta::seconds(5));
    verifier
        .authenticate(a.token.expose_secret())
        .await
        .unwrap();

    // In the store: a later time written meanwhile (by another instance) is kept.
    let later = t0() + TimeDelta::hours(1);
    verifier
        .store()
        .inner
        .record_last_used(&b.record.id, later)
        .await
        .unwrap();
    verifier
        .authenticate(b.token.expose_secret())
        .await
        .unwrap();

    assert_eq!(verifier.flush_last_used().await.unwrap(), 2);
    assert_eq!(
        stored_last_used(&verifier, &a.record.id).await,
        Some(t0() + TimeDelta::seconds(10))
    );
    assert_eq!(stored_last_used(&verifier, &b.record.id).await, Some(later));
}

#[tokio::test]
async fn several_tokens_are_written_in_one_batch() {
    let (verifier, clock) = clocked(CountingStore::default());
    let mut issued = Vec::new();
    for team in ["team-1", "team-2", "team-3"] {
        issued.push(issue(&verifier, team, &[]).await);
    }
    for (n, token) in issued.iter().enumerate() {
        for _ in 0..=n {
            verifier
                .authenticate(token.token.expose_secret())
                .await
                .unwrap();
            clock.advance(TimeDelta::seconds(1));
        }
    }
    assert_eq!(verifier.last_used_pending(), 3);
    assert_eq!(verifier.flush_last_used().await.unwrap(), 3);
    assert_eq!(verifier.store().batches(), 1);
    assert_eq!(verifier.store().batch_entries(), 3);
    // Token n was last used after 0+1+…+n earlier verifications, one second apart.
    for (n, seconds) in [0, 2, 5].into_iter().enumerate() {
        assert_eq!(
            stored_last_used(&verifier, &issued[n].record.id).await,
            Some(t0() + TimeDelta::seconds(seconds))
        );
    }
}

#[tokio::test]
async fn disable_last_used_records_nothing() {
    let clock = Arc::new(ManualClock::new(t0()));
    let verifier = Verifier::builder(CountingStore::default())
        .clock(clock.clone())
        .disable_last_used()
        .build();
    let issued = issue(&verifier, "team-1", &[]).await;
    for _ in 0..3 {
        verifier
            .authenticate(issued.token.expose_secret())
            .await
            .unwrap();
        clock.advance(TimeDelta::hours(2));
    }
    assert_eq!(verifier.last_used_pending(), 0);
    assert_eq!(verifier.last_used_flush_interval(), None);
    assert_eq!(verifier.flush_last_used().await.unwrap(), 0);
    let flusher = verifier.spawn_last_used_flusher();
    assert_eq!(flusher.interval(), None);
    assert_eq!(flusher.shutdown().await.unwrap(), 0);
    assert_eq!(verifier.store().last_used_writes(), 0);
    assert_eq!(stored_last_used(&verifier, &issued.record.id).await, None);
}

#[tokio::test]
async fn a_failing_flush_keeps_the_times_for_the_next_flush() {
    let (verifier, clock) = clocked(CountingStore::default());
    let issued = issue(&verifier, "team-1", &["vps:read"]).await;
    let token = issued.token.expose_secret();
    let id = issued.record.id;
    verifier.store().fail_batches.store(1, Ordering::SeqCst);

    // The request never sees the store's last-used trouble.
    verifier.verify(token, &all(&["vps:read"])).await.unwrap();
    let err = verifier.flush_last_used().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert_eq!(verifier.last_used_pending(), 1);
    assert_eq!(stored_last_used(&verifier, &id).await, None);

    // Nothing new happened: the next flush writes the kept time.
    assert_eq!(verifier.flush_last_used().await.unwrap(), 1);
    assert_eq!(stored_last_used(&verifier, &id).await, Some(t0()));

    // Fail again, and use the token again before the retry: the later time wins.
    verifier.store().fail_batches.store(1, Ordering::SeqCst);
    clock.advance(TimeDelta::seconds(30));
    verifier.authenticate(token).await.unwrap();
    verifier.flush_last_used().await.unwrap_err();
    clock.advance(TimeDelta::seconds(30));
    verifier.authenticate(token).await.unwrap();
    assert_eq!(verifier.last_used_pending(), 1);
    assert_eq!(verifier.flush_last_used().await.unwrap(), 1);
    assert_eq!(
        stored_last_used(&verifier, &id).await,
        Some(t0() + TimeDelta::seconds(60))
    );
    assert_eq!(verifier.store().batches(), 4);
    assert_eq!(verifier.last_used_dropped(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_flush_keeps_the_times_and_never_holds_up_verification() {
    let verifier = counting_verifier();
    let issued = issue(&verifier, "team-1", &[]).await;
    let token = issued.token.expose_secret();
    verifier.authenticate(token).await.unwrap();

    verifier.store().hang_batches.store(true, Ordering::SeqCst);
    let hanging = tokio::spawn({
        let verifier = verifier.clone();
        async move { verifier.flush_last_used().await }
    });
    while verifier.store().batches() == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(verifier.last_used_pending(), 0); // drained, being written

    // Verifications go on while the write hangs.
    for _ in 0..3 {
        verifier.authenticate(token).await.unwrap();
    }
    hanging.abort();
    assert!(hanging.await.unwrap_err().is_cancelled());
    assert_eq!(verifier.last_used_pending(), 1);

    verifier.store().hang_batches.store(false, Ordering::SeqCst);
    assert_eq!(verifier.flush_last_used().await.unwrap(), 1);
    assert!(
        stored_last_used(&verifier, &issued.record.id)
            .await
            .is_some()
    );
}

#[tokio::test]
async fn the_buffer_is_bounded() {
    let (verifier, clock) = {
        let clock = Arc::new(ManualClock::new(t0()));
        let verifier = Verifier::builder(CountingStore::default())
            .clock(clock.clone())
            .last_used_max_pending(2)
            .build();
        (verifier, clock)
    };
    let mut issued = Vec::new();
    for _ in 0..5 {
        issued.push(issue(&verifier, "team-1", &[]).await);
    }
    // Every verification succeeds; only two distinct tokens are kept.
    for token in &issued {
        verifier
            .authenticate(token.token.expose_secret())
            .await
            .unwrap();
    }
    assert_eq!(verifier.last_used_pending(), 2);
    assert_eq!(verifier.last_used_dropped(), 3);
    // A kept token still moves forward when the buffer is full.
    clock.advance(TimeDelta::seconds(5));
    verifier
        .authenticate(issued[0].token.expose_secret())
        .await
        .unwrap();
    assert_eq!(verifier.last_used_dropped(), 3);
    assert_eq!(verifier.flush_last_used().await.unwrap(), 2);
    assert_eq!(
        stored_last_used(&verifier, &issued[0].record.id).await,
        Some(t0() + TimeDelta::seconds(5))
    );
    // The flush made room.
    verifier
        .authenticate(issued[4].token.expose_secret())
        .await
        .unwrap();
    assert_eq!(verifier.last_used_pending(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_flusher_writes_every_interval_and_on_shutdown() {
    let verifier = counting_verifier();
    let flusher = verifier.spawn_last_used_flusher();
    assert_eq!(flusher.interval(), Some(Duration::from_secs(60)));
    let issued = issue(&verifier, "team-1", &[]).await;
    let token = issued.token.expose_secret();
    let id = issued.record.id;

    // An idle flusher makes no store call.
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(verifier.store().batches(), 0);

    // Used at 61 s; the tick at 120 s writes it, with no explicit flush call.
    for _ in 0..100 {
        verifier.authenticate(token).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(58)).await; // 119 s
    assert_eq!(verifier.store().batches(), 0);
    assert_eq!(stored_last_used(&verifier, &id).await, None);
    tokio::time::sleep(Duration::from_secs(2)).await; // 121 s
    assert_eq!(verifier.store().batches(), 1);
    assert_eq!(verifier.store().batch_entries(), 1);
    assert!(stored_last_used(&verifier, &id).await.is_some());
    assert_eq!(verifier.last_used_pending(), 0);

    // Shutdown flushes what the next tick would have written.
    verifier.authenticate(token).await.unwrap();
    assert_eq!(flusher.shutdown().await.unwrap(), 1);
    assert_eq!(verifier.store().batches(), 2);
    assert_eq!(verifier.last_used_pending(), 0);

    // The task is gone.
    verifier.authenticate(token).await.unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(verifier.store().batches(), 2);
    assert_eq!(verifier.store().last_used.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_flush_interval_is_configurable() {
    let verifier = Verifier::builder(CountingStore::default())
        .last_used_flush_interval(Duration::from_secs(10))
        .build();
    assert_eq!(
        verifier.last_used_flush_interval(),
        Some(Duration::from_secs(10))
    );
    let flusher = verifier.spawn_last_used_flusher();
    let issued = issue(&verifier, "team-1", &[]).await;
    // Ticks at 10, 20, 30 s; each round uses the token at 5, 15, 25 s and looks 10 s later.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for round in 1..=3 {
        verifier
            .authenticate(issued.token.expose_secret())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(verifier.store().batches(), round);
    }
    assert_eq!(flusher.shutdown().await.unwrap(), 0);
    assert_eq!(verifier.store().batches(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_flusher_retries_a_failed_flush_on_the_next_tick() {
    let verifier = counting_verifier();
    let flusher = verifier.spawn_last_used_flusher();
    let issued = issue(&verifier, "team-1", &[]).await;
    verifier.store().fail_batches.store(1, Ordering::SeqCst);
    verifier
        .authenticate(issued.token.expose_secret())
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(verifier.store().batches(), 1);
    assert_eq!(verifier.last_used_pending(), 1);
    assert_eq!(stored_last_used(&verifier, &issued.record.id).await, None);

    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(verifier.store().batches(), 2);
    assert_eq!(verifier.last_used_pending(), 0);
    assert!(
        stored_last_used(&verifier, &issued.record.id)
            .await
            .is_some()
    );
    assert_eq!(flusher.shutdown().await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_final_flush_is_reported_and_kept() {
    let verifier = counting_verifier();
    let flusher = verifier.spawn_last_used_flusher();
    let issued = issue(&verifier, "team-1", &[]).await;
    verifier
        .authenticate(issued.token.expose_secret())
        .await
        .unwrap();
    verifier.store().fail_batches.store(1, Ordering::SeqCst);
    let err = flusher.shutdown().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert_eq!(verifier.last_used_pending(), 1);
    assert_eq!(verifier.flush_last_used().await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_flusher_handle_leaves_the_task_flushing() {
    let verifier = counting_verifier();
    // What rustc's `must_use` help suggests: it must not stop the task.
    let _ = verifier.spawn_last_used_flusher();
    let issued = issue(&verifier, "team-1", &[]).await;
    verifier
        .authenticate(issued.token.expose_secret())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(verifier.store().batches(), 1);
    assert_eq!(verifier.last_used_pending(), 0);
    assert!(
        stored_last_used(&verifier, &issued.record.id)
            .await
            .is_some()
    );

    // And on the next tick too.
    verifier
        .authenticate(issued.token.expose_secret())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(verifier.store().batches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_detached_flusher_ends_with_its_verifier() {
    let store = Arc::new(MemoryStore::new());
    let verifier = Verifier::builder(Arc::clone(&store)).build();
    let _ = verifier.spawn_last_used_flusher();
    let also = verifier.spawn_last_used_flusher();
    drop(also);
    // Both tasks run (and pass a tick) before the verifier goes.
    tokio::time::sleep(Duration::from_secs(61)).await;
    drop(verifier);
    // The tasks hold the verifier weakly: once it is gone, so is every hold on its store.
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(Arc::strong_count(&store), 1);
}

// ---------------------------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn id_less_format_verifies_by_hash() {
    let format = TokenFormat::builder()
        .prefix("tk_live_")
        .id(IdKind::None)
        .build()
        .unwrap();
    let verifier = Verifier::builder(CountingStore::default())
        .format(format.clone())
        .build();
    let issued = issue(&verifier, "team-1", &["read:databases"]).await;
    let token = issued.token.expose_secret();
    assert!(token.starts_with("tk_live_"));
    assert_eq!(format.parse(token).unwrap().id(), None);

    let principal = verifier
        .verify(token, &all(&["read:databases"]))
        .await
        .unwrap();
    assert_eq!(principal.token_id(), &issued.record.id);
    assert_eq!(verifier.store().finds.load(Ordering::SeqCst), 1);
    assert_eq!(verifier.store().gets.load(Ordering::SeqCst), 0);

    // Another well-formed token of the format is unknown, with no id to report.
    let other = format.generate(None).unwrap();
    let err = verifier
        .authenticate(other.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::UnknownToken));
    assert_eq!(err.token_id(), None);

    // Revocation works by record key.
    verifier
        .store()
        .revoke(&issued.record.id, verifier.now())
        .await
        .unwrap();
    let err = verifier.authenticate(token).await.unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Revoked));
}

#[tokio::test]
async fn db_audit_style_prefixed_tokens_verify() {
    let format = TokenFormat::builder()
        .prefix("dbaudit_live_")
        .separator(apitoken::Separator::Underscore)
        .build()
        .unwrap();
    let verifier = Verifier::builder(MemoryStore::new()).format(format).build();
    let issued = issue(&verifier, "org-1", &["read:databases"]).await;
    let token = issued.token.expose_secret();
    assert!(token.starts_with(&format!("dbaudit_live_{}_", issued.record.id)));
    assert!(
        verifier
            .verify(token, &all(&["read:databases"]))
            .await
            .is_ok()
    );
    // A canonical token is the wrong prefix here.
    let canonical = TokenFormat::canonical()
        .generate(Some(&issued.record.id))
        .unwrap();
    let err = verifier
        .authenticate(canonical.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(
        err.reason(),
        Some(RejectReason::Malformed(FormatError::WrongPrefix))
    );
}

#[tokio::test]
async fn dct_seed_tokens_verify_against_their_records() {
    let verifier = Verifier::builder(MemoryStore::new())
        .format(TokenFormat::dct())
        .build();
    let record = TokenRecord::new(
        TokenId::from_u64(1),
        owner("admin"),
        "bootstrap",
        verifier.now(),
    );
    let hash = SecretHasher::sha256().hash(&DCT_1.as_bytes()[2..]);
    verifier.store().insert(record, hash).await.unwrap();

    let principal = verifier.authenticate(DCT_1).await.unwrap();
    assert_eq!(principal.token_id().as_u64(), Some(1));
    assert_eq!(principal.name(), "bootstrap");
    let err = verifier.authenticate(DCT_2).await.unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::UnknownToken));
    assert_eq!(err.token_id().and_then(TokenId::as_u64), Some(2));
}

#[tokio::test]
async fn pepper_must_match() {
    let store = Arc::new(MemoryStore::new());
    let pepper_a = SecretHasher::hmac_sha256(&[0xA5; 32]).unwrap();
    let pepper_b = SecretHasher::hmac_sha256(&[0x5A; 32]).unwrap();
    assert!(pepper_a.is_peppered());
    let a = Verifier::builder(store.clone()).hasher(pepper_a).build();
    let b = Verifier::builder(store.clone()).hasher(pepper_b).build();
    let plain = Verifier::builder(store.clone()).build();

    let issued = issue(&a, "team-1", &["vps:read"]).await;
    let token = issued.token.expose_secret();
    assert!(a.verify(token, &all(&["vps:read"])).await.is_ok());
    for other in [&b, &plain] {
        let err = other.authenticate(token).await.unwrap_err();
        assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
        assert_eq!(err.reason(), Some(RejectReason::WrongSecret));
    }
    // The stored hash is not plain SHA-256 of the secret.
    let stored = store.get(&issued.record.id).await.unwrap().unwrap();
    let secret = secret_part(&TokenFormat::canonical(), token);
    assert_ne!(stored.hash, SecretHasher::sha256().hash(secret.as_bytes()));
    assert!(SecretHasher::hmac_sha256(&[1; 31]).is_err());

    // And a token issued without a pepper fails under one.
    let issued = issue(&plain, "team-1", &[]).await;
    let err = a
        .authenticate(issued.token.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::WrongSecret));
}

/// Builds a Sanctum token as Laravel does: `{id}|{40 alnum}{crc32b hex of the 40}`, and
/// stores its record with the SHA-256 of everything after the `|`.
async fn insert_sanctum_token<S: TokenStore>(
    verifier: &Verifier<S>,
    entropy: &str,
    scopes: &str,
) -> (TokenId, String) {
    let id = verifier.store().next_id().await.unwrap();
    let token = TokenFormat::sanctum().render(Some(&id), entropy).unwrap();
    let text = token.expose_secret().to_owned();
    assert!(text.starts_with(&format!("{id}|{entropy}")));
    assert_eq!(text.len(), id.as_str().len() + 1 + 40 + 8);
    let after_pipe = &text[text.find('|').unwrap() + 1..];
    let mut record = TokenRecord::new(id, owner("team-laravel"), "Laravel token", verifier.now());
    record.scopes = ScopeSet::parse(scopes).unwrap();
    verifier
        .store()
        .insert(record, SecretHasher::sha256().hash(after_pipe.as_bytes()))
        .await
        .unwrap();
    (id, text)
}

#[tokio::test]
async fn sanctum_render_matches_laravel_for_the_seed() {
    let rendered = TokenFormat::sanctum()
        .render(Some(&TokenId::from_u64(1)), SANCTUM_SEED_ENTROPY)
        .unwrap();
    assert_eq!(rendered.expose_secret(), SANCTUM_SEED);
    assert!(rendered.expose_secret().ends_with(SANCTUM_SEED_CRC));
}

#[tokio::test]
async fn sanctum_only_verifier_verifies_laravel_tokens() {
    let verifier = Verifier::builder(MemoryStore::new())
        .format(TokenFormat::sanctum())
        .build();
    // The seed token, stored as Laravel stores it: hash('sha256', everything after '|').
    let record = TokenRecord::new(
        TokenId::from_u64(1),
        owner("danube"),
        "Production Server",
        verifier.now(),
    );
    let hash = SecretHasher::sha256().hash(&SANCTUM_SEED.as_bytes()[2..]);
    verifier.store().insert(record, hash).await.unwrap();
    let principal = verifier.authenticate(SANCTUM_SEED).await.unwrap();
    assert_eq!(principal.owner().as_str(), "danube");

    // Sanctum looks up a token without `id|` by its hash; so does the verifier.
    let principal = verifier.authenticate(&SANCTUM_SEED[2..]).await.unwrap();
    assert_eq!(principal.token_id().as_u64(), Some(1));

    let wrong_crc = format!("{}345196d3", &SANCTUM_SEED[..SANCTUM_SEED.len() - 8]);
    let err = verifier.authenticate(&wrong_crc).await.unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::BadChecksum));
}

#[tokio::test]
async fn also_accept_verifies_sanctum_tokens_beside_canonical_ones() {
    let verifier = Verifier::builder(MemoryStore::new())
        .also_accept(TokenFormat::sanctum())
        .build();
    let (id, sanctum_token) = insert_sanctum_token(
        &verifier,
        "abcdefghijABCDEFGHIJ0123456789klmnopqrst",
        "vps:read",
    )
    .await;

    let principal = verifier
        .verify(&sanctum_token, &all(&["vps:read"]))
        .await
        .unwrap();
    assert_eq!(principal.token_id(), &id);
    assert_eq!(principal.owner().as_str(), "team-laravel");

    // New tokens are issued in the first (canonical) format and verify too.
    let issued = issue(&verifier, "team-1", &[]).await;
    assert!(
        TokenFormat::canonical()
            .parse(issued.token.expose_secret())
            .is_ok()
    );
    assert!(
        verifier
            .authenticate(issued.token.expose_secret())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn also_accept_verifies_dct_tokens_beside_canonical_ones() {
    let verifier = Verifier::builder(MemoryStore::new())
        .also_accept(TokenFormat::dct())
        .build();
    let record = TokenRecord::new(
        TokenId::from_u64(1),
        owner("admin"),
        "bootstrap",
        verifier.now(),
    );
    let hash = SecretHasher::sha256().hash(&DCT_1.as_bytes()[2..]);
    verifier.store().insert(record, hash).await.unwrap();
    let principal = verifier.authenticate(DCT_1).await.unwrap();
    assert_eq!(principal.name(), "bootstrap");
}

#[tokio::test]
async fn also_accept_sanctum_after_a_prefixed_format() {
    // With a prefixed first format, a Sanctum token is a "wrong prefix" and the next format is
    // tried.
    let verifier = Verifier::builder(MemoryStore::new())
        .format(TokenFormat::builder().prefix("tk_").build().unwrap())
        .also_accept(TokenFormat::sanctum())
        .build();
    let (id, sanctum_token) =
        insert_sanctum_token(&verifier, "ZYXWVUTSRQ0123456789abcdefghijklmnopqrst", "").await;
    let principal = verifier.authenticate(&sanctum_token).await.unwrap();
    assert_eq!(principal.token_id(), &id);
    let issued = issue(&verifier, "team-1", &[]).await;
    assert!(issued.token.expose_secret().starts_with("tk_"));
    assert!(
        verifier
            .authenticate(issued.token.expose_secret())
            .await
            .is_ok()
    );
}

// ---------------------------------------------------------------------------------------------
// Secret hygiene
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn secrets_never_reach_debug_errors_or_records() {
    let verifier = counting_verifier();
    let issued = issue(&verifier, "team-1", &["vps:read"]).await;
    let token = issued.token.expose_secret().to_owned();
    let secret = secret_part(&TokenFormat::canonical(), &token);
    let hash_hex = SecretHasher::sha256().hash(secret.as_bytes()).to_hex();

    let debug = format!("{issued:?}");
    let pretty = format!("{issued:#?}");
    for shown in [&debug, &pretty] {
        assert!(!shown.contains(&secret), "{shown}");
        assert!(!shown.contains(&secret[..16]), "{shown}");
        assert!(!shown.contains(&token), "{shown}");
        assert!(!shown.contains(&hash_hex[..16]), "{shown}");
    }

    let json = serde_json::to_string(&issued.record).unwrap();
    assert!(!json.contains(&secret[..16]), "{json}");
    assert!(!json.contains(&hash_hex), "{json}");
    assert!(!json.contains(&hash_hex[..16]), "{json}");
    assert!(json.contains(issued.record.id.as_str()));

    // Errors for a presented token: wrong secret, bad checksum, malformed, insufficient scope.
    let forged = TokenFormat::canonical()
        .generate(Some(&issued.record.id))
        .unwrap();
    let forged_secret = secret_part(&TokenFormat::canonical(), forged.expose_secret());
    let presented = [
        (forged.expose_secret().to_owned(), forged_secret.clone()),
        (change_at(&token, 20), secret.clone()),
        (format!("{token} "), secret.clone()),
        (token.clone(), secret.clone()),
    ];
    for (text, hidden) in presented {
        let err = verifier
            .verify(&text, &all(&["vps:write"]))
            .await
            .unwrap_err();
        for shown in [err.to_string(), format!("{err:?}"), format!("{err:#?}")] {
            assert!(!shown.contains(&hidden[..16]), "{shown}");
            assert!(!shown.contains(&text), "{shown}");
        }
    }

    // Parsed tokens, hashers and hashes redact too.
    let parsed = TokenFormat::canonical().parse(&token).unwrap();
    assert!(!format!("{parsed:?}").contains(&secret[..16]));
    assert!(
        !format!("{:?}", SecretHasher::sha256().hash(secret.as_bytes())).contains(&hash_hex[..8])
    );
}

// ---------------------------------------------------------------------------------------------
// Issue validation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn issue_validates_names() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let issuer = verifier.issuer();
    for bad in [
        String::new(),
        "a\nb".to_owned(),
        "tab\there".to_owned(),
        "nul\0".to_owned(),
        "\u{7f}".to_owned(),
        "\u{85}next line".to_owned(),
        "x".repeat(256),
    ] {
        let result = issuer
            .issue(NewToken::new(bad.clone(), owner("team-1")))
            .await;
        assert!(
            matches!(result, Err(IssueError::InvalidName)),
            "{bad:?}: {result:?}"
        );
    }
    assert!(verifier.store().is_empty());
    for ok in [
        "Production Server",
        "CI/CD Pipeline",
        "é ü 日本",
        &"x".repeat(255),
    ] {
        let issued = issuer
            .issue(NewToken::new(ok, owner("team-1")))
            .await
            .unwrap();
        assert_eq!(issued.record.name, ok);
    }
}

#[tokio::test]
async fn issue_refuses_expiry_not_in_the_future() {
    let clock = Arc::new(ManualClock::new(t0()));
    let verifier = Verifier::builder(MemoryStore::new())
        .clock(clock.clone())
        .build();
    let issuer = verifier.issuer();
    let cases = [
        new_token("past", "team-1", &[]).expires_at(t0() - TimeDelta::seconds(1)),
        new_token("now", "team-1", &[]).expires_at(t0()),
        new_token("zero", "team-1", &[]).expires_in(TimeDelta::zero()),
        new_token("negative", "team-1", &[]).expires_in(TimeDelta::seconds(-1)),
        new_token("overflow", "team-1", &[]).expires_in(TimeDelta::MAX),
    ];
    for new in cases {
        let result = issuer.issue(new).await;
        assert!(
            matches!(result, Err(IssueError::ExpiryOutOfRange)),
            "{result:?}"
        );
    }
    assert!(verifier.store().is_empty());
    let issued = issuer
        .issue(new_token("ok", "team-1", &[]).expires_at(t0() + TimeDelta::nanoseconds(1)))
        .await
        .unwrap();
    assert_eq!(
        issued.record.expires_at,
        Some(t0() + TimeDelta::nanoseconds(1))
    );
}

#[tokio::test]
async fn numeric_formats_get_sequential_ids_from_the_store() {
    let verifier = Verifier::builder(MemoryStore::new())
        .format(TokenFormat::dct())
        .build();
    for expected in 1..=3u64 {
        let issued = issue(&verifier, "team-1", &[]).await;
        assert_eq!(issued.record.id.as_u64(), Some(expected));
        let token = issued.token.expose_secret();
        assert!(token.starts_with(&format!("{expected}.")), "{token}");
        assert_eq!(token.len(), expected.to_string().len() + 1 + 64);
        let principal = verifier.authenticate(token).await.unwrap();
        assert_eq!(principal.token_id().as_u64(), Some(expected));
    }
    assert_eq!(verifier.store().len(), 3);
}

#[tokio::test]
async fn random_id_formats_get_distinct_random_ids() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let a = issue(&verifier, "team-1", &[]).await;
    let b = issue(&verifier, "team-1", &[]).await;
    assert_ne!(a.record.id, b.record.id);
    for issued in [&a, &b] {
        let id = issued.record.id.as_str();
        assert_eq!(id.len(), 12);
        assert!(id.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(issued.token.expose_secret().starts_with(&format!("{id}.")));
    }
}

#[tokio::test]
async fn issuing_where_the_store_cannot_allocate_ids_fails() {
    /// A store with no numeric sequence: the trait's default `next_id`.
    #[derive(Debug, Default)]
    struct NoSequence(MemoryStore);

    impl TokenStore for NoSequence {
        fn insert(
            &self,
            record: TokenRecord,
            hash: SecretHash,
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            self.0.insert(record, hash)
        }
        fn get(
            &self,
            id: &TokenId,
        ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
            self.0.get(id)
        }
        fn find_by_hash(
            &self,
            hash: &SecretHash,
        ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
            self.0.find_by_hash(hash)
        }
        fn list_by_owner(
            &self,
            owner: &Owner,
        ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
            self.0.list_by_owner(owner)
        }
        fn revoke(
            &self,
            id: &TokenId,
            at: DateTime<Utc>,
        ) -> impl Future<Output = Result<bool, StoreError>> + Send {
            self.0.revoke(id, at)
        }
        fn revoke_owner(
            &self,
            owner: &Owner,
            at: DateTime<Utc>,
        ) -> impl Future<Output = Result<usize, StoreError>> + Send {
            self.0.revoke_owner(owner, at)
        }
        fn record_last_used(
            &self,
            id: &TokenId,
            at: DateTime<Utc>,
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            self.0.record_last_used(id, at)
        }
    }

    let verifier = Verifier::builder(NoSequence::default())
        .format(TokenFormat::dct())
        .build();
    let result = verifier.issuer().issue(new_token("x", "team-1", &[])).await;
    match result {
        Err(IssueError::Store(err)) => {
            assert_eq!(err.kind(), apitoken::StoreErrorKind::Unsupported);
        }
        other => panic!("{other:?}"),
    }
    // Random ids need no sequence.
    let verifier = Verifier::builder(NoSequence::default()).build();
    assert!(
        verifier
            .issuer()
            .issue(new_token("x", "team-1", &[]))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn bad_checksum_stays_a_bad_checksum_with_several_formats() {
    // Accepting Sanctum tokens too must not turn a mistyped canonical token into a store
    // lookup, nor hide that its checksum was wrong.
    let verifier = Verifier::builder(CountingStore::default())
        .also_accept(TokenFormat::sanctum())
        .also_accept(TokenFormat::dct())
        .build();
    let issued = issue(&verifier, "team-1", &[]).await;
    let err = verifier
        .authenticate(&change_at(issued.token.expose_secret(), 30))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    assert_eq!(err.reason(), Some(RejectReason::BadChecksum));
    let wrong_crc = format!("{}345196d3", &SANCTUM_SEED[..SANCTUM_SEED.len() - 8]);
    let err = verifier.authenticate(&wrong_crc).await.unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    assert_ne!(err.kind(), AuthErrorKind::StoreUnavailable);
    assert_eq!(verifier.store().lookups(), 0);
}
