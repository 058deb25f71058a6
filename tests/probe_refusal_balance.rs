//! Probes of the refusal balance (commits 1fbeca3 and 9305abf), written to break its claims:
//!
//! 1. `MemoryStore::get` on a miss reads a neighbouring record and never returns it; a hit
//!    returns exactly the record asked for, at any size, after revocations, rotations and
//!    removals, and under concurrent writers.
//! 2. A refusal's last-use balance (`LastUsedBuffer::touch`) changes nothing: no refusal
//!    notes, drops or counts a last use, and accepted tokens' notes and flushes are unaffected
//!    by storms of refusals, with flushes interleaved and with a full buffer.
//! 3. The SQL stores' `get` (`WHERE id >= $1 ORDER BY id LIMIT 1`) answers a row only if its
//!    id is byte for byte the one asked for: hostile ids, corrupt neighbours, rows deleted
//!    while lookups run, a connection that cannot answer mid-lookup; and through
//!    `Verifier::verify`, a missing id presented with its neighbour's secret is refused as
//!    `UnknownToken`.
//!
//! PostgreSQL runs when `APITOKEN_TEST_POSTGRES_URL` is set; otherwise those tests print
//! "skipped: …" and pass.

#[path = "support/stores.rs"]
mod stores;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use apitoken::{
    AuthErrorKind, Clock, ManualClock, MemoryStore, NewToken, Owner, RejectReason, Retire,
    SanctumStore, ScopePolicy, ScopeRequirement, SecretHash, SecretHasher, SqliteStore,
    StoreErrorKind, StoredToken, TokenFormat, TokenId, TokenRecord, TokenStore, Verifier,
};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// xorshift64*: deterministic ids, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn text(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| char::from(alphabet[self.below(alphabet.len())]))
            .collect()
    }
}

/// `TokenId`'s alphabet in byte order: `-` < digits < upper case < `_` < lower case.
const ALPHABET: &[u8] = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SANCTUM_OWNER: &str = "App\\Models\\User:1";
/// The default flush interval: nothing is flushed but by the probes' own calls.
const MINUTE: Duration = Duration::from_secs(60);

fn id(text: &str) -> TokenId {
    TokenId::new(text).unwrap_or_else(|_| panic!("{text:?} is a valid id"))
}

/// Any id `TokenId` accepts: 1 to 40 characters of its whole alphabet.
fn random_id(rng: &mut Rng) -> TokenId {
    let len = 1 + rng.below(apitoken::MAX_ID_LEN);
    id(&rng.text(ALPHABET, len))
}

fn t0() -> DateTime<Utc> {
    Utc.timestamp_opt(1_780_000_000, 0).unwrap()
}

fn record(id: TokenId, owner: &str) -> TokenRecord {
    TokenRecord::new(id, Owner::new(owner).unwrap(), format!("token {id}"), t0())
}

fn hash_of(id: &TokenId) -> SecretHash {
    SecretHasher::sha256().hash(format!("secret of {id}").as_bytes())
}

/// `get(id)` must be `Ok(Some)` of exactly `id`'s record.
async fn expect_hit<S: TokenStore>(store: &S, id: &TokenId, what: &str) -> StoredToken {
    let found = store
        .get(id)
        .await
        .unwrap_or_else(|e| panic!("{what}: get({id}) of a held id failed: {e:?}"))
        .unwrap_or_else(|| panic!("{what}: held id {id} was not found"));
    assert_eq!(
        found.record.id, *id,
        "{what}: asked for {id}, got another row"
    );
    found
}

/// `get(id)` must be `Ok(None)`.
async fn expect_miss<S: TokenStore>(store: &S, id: &TokenId, what: &str) {
    match store.get(id).await {
        Ok(None) => {}
        Ok(Some(found)) => panic!(
            "{what}: asked for {id}, which no record has, and got record {}",
            found.record.id
        ),
        Err(e) => panic!("{what}: get({id}) of a missing id failed: {e:?}"),
    }
}

/// A canonical token for `id`: its text and its secret.
fn canonical_token(id: &TokenId) -> (String, String) {
    let format = TokenFormat::canonical();
    let text = format
        .generate(Some(id))
        .unwrap()
        .expose_secret()
        .to_owned();
    let secret = format.parse(&text).unwrap().secret().to_owned();
    (text, secret)
}

/// The canonical token text naming `id` with `secret` (a well-formed token, checksum right).
fn canonical_with(id: &TokenId, secret: &str) -> String {
    TokenFormat::canonical()
        .render(Some(id), secret)
        .unwrap()
        .expose_secret()
        .to_owned()
}

fn none() -> ScopeRequirement {
    ScopeRequirement::none()
}

/// Asserts `token` is refused as an invalid token, for `reason`.
async fn expect_refused<S: TokenStore>(
    verifier: &Verifier<S>,
    token: &str,
    reason: RejectReason,
    what: &str,
) {
    match verifier.verify(token, &none()).await {
        Ok(principal) => panic!(
            "{what}: accepted as token {} (owner {}), expected {reason:?}",
            principal.token_id(),
            principal.owner()
        ),
        Err(err) => {
            assert_eq!(err.kind(), AuthErrorKind::InvalidToken, "{what}: {err:?}");
            assert_eq!(err.reason(), Some(reason), "{what}: {err:?}");
        }
    }
}

async fn expect_accepted<S: TokenStore>(verifier: &Verifier<S>, token: &str, as_id: &TokenId) {
    let principal = verifier
        .verify(token, &none())
        .await
        .unwrap_or_else(|e| panic!("token {as_id} refused: {e:?}"));
    assert_eq!(principal.token_id(), as_id, "accepted as another token");
}

/// A statement made of fixed text and names this file chose.
fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

// ---------------------------------------------------------------------------------------------
// Hostile ids, on every store
// ---------------------------------------------------------------------------------------------

/// Held text ids: both ends of the id space (`-` is the smallest id, 40 `z` the largest),
/// every character class, prefixes of each other, ids that differ only in case.
fn held_text_ids() -> Vec<TokenId> {
    let mut held: Vec<String> = [
        "-",
        "0",
        "9",
        "A",
        "Z",
        "_",
        "a",
        "z",
        "a-",
        "a0",
        "aA",
        "a_",
        "aa",
        "ab",
        "abc",
        "abd",
        "ABC",
        "Abc",
        "mmmm",
        "mmmm-",
        "mmmm_",
        "mmmmA",
        "mmmma",
        "mmmm0003",
        "MMMM0003",
        "mmmmmmmmmmm5",
        "zzzzzzzzzzzy",
    ]
    .map(str::to_owned)
    .to_vec();
    held.push("-".repeat(40));
    held.push("z".repeat(40));
    held.push("a".repeat(40));
    held.push("a".repeat(39));
    held.push(format!("{}9", "-".repeat(39)));
    held.iter().map(|t| id(t)).collect()
}

/// Ids next to `text` in every way a loose comparison or an off-by-one seek could confuse:
/// its case swapped, each prefix, one more character of each class, each character stepped to
/// its neighbours in the alphabet.
fn around(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let swapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    out.push(swapped);
    for n in 1..text.len() {
        out.push(text[..n].to_owned());
    }
    for c in ["-", "0", "9", "A", "Z", "_", "a", "z"] {
        out.push(format!("{text}{c}"));
    }
    let bytes = text.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        let at = ALPHABET.iter().position(|a| a == b).unwrap();
        for step in [
            at.checked_sub(1),
            Some(at + 1).filter(|n| *n < ALPHABET.len()),
        ]
        .into_iter()
        .flatten()
        {
            let mut changed = bytes.to_vec();
            changed[i] = ALPHABET[step];
            out.push(String::from_utf8(changed).unwrap());
        }
    }
    out
}

/// Inserts the held ids in two halves and checks, after each step, every held id (its own
/// record and hash) and every id around them and at random (none).
async fn check_text_ids<S: TokenStore>(store: &S, what: &str) {
    let held = held_text_ids();
    let all_held: BTreeSet<TokenId> = held.iter().copied().collect();
    let mut missing: BTreeSet<TokenId> = BTreeSet::new();
    for h in &held {
        for text in around(h.as_str()) {
            if let Ok(candidate) = TokenId::new(&text)
                && !all_held.contains(&candidate)
            {
                missing.insert(candidate);
            }
        }
    }
    let mut rng = Rng::new(0x5eed_0001);
    while missing.len() < 2_000 {
        let candidate = random_id(&mut rng);
        if !all_held.contains(&candidate) {
            missing.insert(candidate);
        }
    }
    let owner = "team-1";
    // Empty table: nothing, not even past every row.
    for h in &held {
        expect_miss(store, h, &format!("{what}, empty")).await;
    }
    let (first, second): (Vec<_>, Vec<_>) = held
        .iter()
        .enumerate()
        .partition(|(i, _)| i.is_multiple_of(2));
    let mut inserted: BTreeSet<TokenId> = BTreeSet::new();
    for (step, half) in [first, second].into_iter().enumerate() {
        for (_, h) in half {
            store.insert(record(*h, owner), hash_of(h)).await.unwrap();
            inserted.insert(*h);
        }
        let what = format!("{what}, step {step}");
        for h in &held {
            if inserted.contains(h) {
                let found = expect_hit(store, h, &what).await;
                assert_eq!(
                    found.hash,
                    hash_of(h),
                    "{what}: {h} came with another's hash"
                );
                assert_eq!(found.record.name, format!("token {h}"), "{what}");
            } else {
                expect_miss(store, h, &what).await;
            }
        }
        // The second step checks every neighbour; the first a third of them.
        for (n, m) in missing.iter().enumerate() {
            if step == 1 || n.is_multiple_of(3) {
                expect_miss(store, m, &what).await;
            }
        }
    }
}

#[tokio::test]
async fn hostile_text_ids_memory() {
    check_text_ids(&MemoryStore::new(), "memory").await;
}

#[tokio::test]
async fn hostile_text_ids_sqlite() {
    check_text_ids(&stores::sqlite().await, "sqlite").await;
}

#[tokio::test]
async fn hostile_text_ids_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    check_text_ids(&stores::postgres(&url).await, "postgres").await;
}

/// Sanctum ids are `bigint`s: both ends of `i64`, zero, and ids beyond `i64` (valid
/// `TokenId`s and canonical `u64`s, which `sanctum_id` maps to nothing).
async fn check_numeric_ids<S: TokenStore>(store: &S, what: &str) {
    let max = i64::MAX as u64;
    let held: Vec<TokenId> = [0, 1, 2, 10, 11, 100, 1 << 62, max - 1, max]
        .map(TokenId::from_u64)
        .to_vec();
    let mut missing: Vec<TokenId> = [
        3,
        9,
        12,
        99,
        101,
        1_000,
        (1 << 62) - 1,
        (1 << 62) + 1,
        max - 2,
        max + 1,
        max + 2,
        u64::MAX - 1,
        u64::MAX,
    ]
    .map(TokenId::from_u64)
    .to_vec();
    // Not canonical decimals: never a Sanctum row, whatever they would parse to.
    for text in [
        "00", "01", "010", "011", "-1", "-0", "1-", "1_", "a", "A", "11a", "0x10", "_0", "1e3",
    ] {
        missing.push(id(text));
    }
    missing.push(id(&format!("{max}-")));
    missing.push(id(&"1".repeat(40)));
    missing.push(id(&"9".repeat(20)));
    missing.push(id(&"9".repeat(19)));
    let mut rng = Rng::new(0x5eed_0002);
    for _ in 0..300 {
        let n = rng.next() >> 1;
        let candidate = TokenId::from_u64(n);
        if !held.contains(&candidate) {
            missing.push(candidate);
        }
    }
    for h in &held {
        expect_miss(store, h, &format!("{what}, empty")).await;
    }
    for h in &held {
        store
            .insert(record(*h, SANCTUM_OWNER), hash_of(h))
            .await
            .unwrap();
    }
    for h in &held {
        let found = expect_hit(store, h, what).await;
        assert_eq!(
            found.hash,
            hash_of(h),
            "{what}: {h} came with another's hash"
        );
    }
    for m in &missing {
        expect_miss(store, m, what).await;
    }
}

#[tokio::test]
async fn hostile_numeric_ids_memory() {
    check_numeric_ids(&MemoryStore::new(), "memory").await;
}

#[tokio::test]
async fn hostile_numeric_ids_sanctum_sqlite() {
    let sanctum = stores::sanctum_sqlite().await;
    check_numeric_ids(&sanctum.store, "sanctum on sqlite").await;
}

#[tokio::test]
async fn hostile_numeric_ids_sanctum_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let sanctum = stores::sanctum_postgres(&url).await;
    check_numeric_ids(&sanctum.store, "sanctum on postgres").await;
}

// ---------------------------------------------------------------------------------------------
// The neighbour's secret under a missing id, through `Verifier::verify`
// ---------------------------------------------------------------------------------------------

/// Tokens A < B < C. B's (and A's, and C's) secret presented under ids that are not stored
/// and sort just before (or after) theirs: `get` answers "the row or the next one", and that
/// next row's hash must never be compared as a match.
async fn check_neighbour_secret<S: TokenStore>(verifier: &Verifier<S>, what: &str) {
    let [a, b, c] = ["mmmmmmmmmmm1", "mmmmmmmmmmm5", "mmmmmmmmmmm9"].map(id);
    let mut secrets = HashMap::new();
    for token_id in [a, b, c] {
        let (text, secret) = canonical_token(&token_id);
        let hash = verifier.hasher().hash(secret.as_bytes());
        verifier
            .store()
            .insert(record(token_id, "team-1"), hash)
            .await
            .unwrap();
        secrets.insert(token_id, (text, secret));
    }
    for token_id in [a, b, c] {
        expect_accepted(verifier, &secrets[&token_id].0, &token_id).await;
    }
    let cases: [(TokenId, &[&str]); 3] = [
        (
            b,
            &[
                "mmmmmmmmmmm4", // just before B
                "mmmmmmmmmmm2",
                "mmmmmmmmmmm3",
                "MMMMMMMMMMM5", // B in upper case: sorts before every stored id
                "Mmmmmmmmmmm5",
                "mmmmmmmmmmm6", // just after B
                "mmmmmmmmmml9",
                "mmmmmmmmmmm0", // before A
                "000000000000", // before everything
                "zzzzzzzzzzzz", // past every row
            ],
        ),
        (
            a,
            &[
                "mmmmmmmmmmm0",
                "mmmmmmmmmmlz",
                "MMMMMMMMMMM1",
                "000000000001",
            ],
        ),
        (
            c,
            &[
                "mmmmmmmmmmm8",
                "mmmmmmmmmmm6",
                "MMMMMMMMMMM9",
                "mmmmmmmmmmma",
            ],
        ),
    ];
    for (victim, presented_ids) in cases {
        let secret = &secrets[&victim].1;
        for presented in presented_ids {
            let presented = id(presented);
            let token = canonical_with(&presented, secret);
            let what = format!("{what}: {victim}'s secret under unknown id {presented}");
            expect_refused(verifier, &token, RejectReason::UnknownToken, &what).await;
            let err = verifier.verify(&token, &none()).await.unwrap_err();
            assert_eq!(err.token_id(), Some(&presented), "{what}");
        }
        // Another stored id with the victim's secret: the wrong secret, not a match.
        for other in [a, b, c].into_iter().filter(|o| *o != victim) {
            let token = canonical_with(&other, secret);
            let what = format!("{what}: {victim}'s secret under {other}");
            expect_refused(verifier, &token, RejectReason::WrongSecret, &what).await;
        }
    }
}

#[tokio::test]
async fn neighbour_secret_is_refused_memory() {
    check_neighbour_secret(&Verifier::builder(MemoryStore::new()).build(), "memory").await;
}

#[tokio::test]
async fn neighbour_secret_is_refused_sqlite() {
    let verifier = Verifier::builder(stores::sqlite().await).build();
    check_neighbour_secret(&verifier, "sqlite").await;
}

#[tokio::test]
async fn neighbour_secret_is_refused_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let verifier = Verifier::builder(stores::postgres(&url).await).build();
    check_neighbour_secret(&verifier, "postgres").await;
}

fn sanctum_verifier(store: SanctumStore) -> Verifier<SanctumStore> {
    Verifier::builder(store)
        .format(TokenFormat::sanctum())
        .hasher(SecretHasher::sha256())
        .scope_policy(ScopePolicy::sanctum())
        .build()
}

/// Sanctum rows 11 (A), 13 (B) and 2^62 (C), made as Laravel makes them; B's plain text
/// under row numbers that no row has, before and after B, zero, `i64::MAX`, and `u64`s
/// beyond `i64`.
async fn check_sanctum_neighbour_secret(verifier: &Verifier<SanctumStore>, what: &str) {
    let rows = [11u64, 13, 1 << 62];
    let mut plains = HashMap::new();
    for n in rows {
        let (plain, hash) = stores::sanctum_plain_text("");
        let token_id = TokenId::from_u64(n);
        verifier
            .store()
            .insert(
                record(token_id, SANCTUM_OWNER),
                SecretHash::from_hex(&hash).unwrap(),
            )
            .await
            .unwrap();
        plains.insert(n, plain);
    }
    for n in rows {
        expect_accepted(
            verifier,
            &format!("{n}|{}", plains[&n]),
            &TokenId::from_u64(n),
        )
        .await;
    }
    let max = i64::MAX as u64;
    let cases: [(u64, &[u64]); 3] = [
        (
            13,
            &[12, 0, 1, 10, 14, (1 << 62) - 1, max, max + 1, u64::MAX],
        ),
        (11, &[10, 0, 9, 12]),
        (1 << 62, &[(1 << 62) - 1, 14, (1 << 62) + 1, max]),
    ];
    for (victim, presented_ids) in cases {
        let plain = &plains[&victim];
        for presented in presented_ids {
            let token = format!("{presented}|{plain}");
            let what = format!("{what}: row {victim}'s plain text under missing row {presented}");
            expect_refused(verifier, &token, RejectReason::UnknownToken, &what).await;
        }
        for other in rows.into_iter().filter(|o| *o != victim) {
            let token = format!("{other}|{plain}");
            let what = format!("{what}: row {victim}'s plain text under row {other}");
            expect_refused(verifier, &token, RejectReason::WrongSecret, &what).await;
        }
        // Past u64 and not canonical: never a lookup, never accepted.
        for presented in ["18446744073709551616", "013", "00"] {
            let token = format!("{presented}|{plain}");
            let err = verifier.verify(&token, &none()).await.unwrap_err();
            assert_eq!(
                err.kind(),
                AuthErrorKind::InvalidToken,
                "{what}: {presented}"
            );
        }
    }
}

#[tokio::test]
async fn neighbour_secret_is_refused_sanctum_sqlite() {
    let sanctum = stores::sanctum_sqlite().await;
    check_sanctum_neighbour_secret(&sanctum_verifier(sanctum.store), "sanctum on sqlite").await;
}

#[tokio::test]
async fn neighbour_secret_is_refused_sanctum_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let sanctum = stores::sanctum_postgres(&url).await;
    check_sanctum_neighbour_secret(&sanctum_verifier(sanctum.store), "sanctum on postgres").await;
}

// ---------------------------------------------------------------------------------------------
// Corrupt rows: an error when asked for, nothing when only next to a missing id
// ---------------------------------------------------------------------------------------------

/// The rows of the corrupt-row probes: `(id, corrupted column or None)`, in id order, and the
/// missing ids whose next row is each corrupt one.
const CORRUPT_LAYOUT: &[(&str, Option<&str>)] = &[
    ("kkkkkkkkkk05", Some("secret_hash")),
    ("kkkkkkkkkk10", None),
    ("kkkkkkkkkk20", Some("scopes")),
    ("kkkkkkkkkk30", None),
    ("kkkkkkkkkk40", Some("metadata")),
    ("kkkkkkkkkk50", None),
    ("kkkkkkkkkk60", Some("allowed_ips")),
    ("kkkkkkkkkk70", None),
    ("kkkkkkkkkk80", Some("created_at")),
    ("kkkkkkkkkk90", None),
    ("kkkkkkkkkkA0", Some("owner")),
];
/// Missing ids, each just before a corrupt row (and one before a sound row after a corrupt).
const BEFORE_CORRUPT: &[&str] = &[
    "kkkkkkkkkk00",
    "kkkkkkkkkk04",
    "kkkkkkkkkk19",
    "kkkkkkkkkk39",
    "kkkkkkkkkk59",
    "kkkkkkkkkk79",
    "kkkkkkkkkk9z",
    "kkkkkkkkkk81",
];

/// Inserts the layout's rows through `verifier`'s store; the tokens by id.
async fn insert_layout<S: TokenStore>(
    verifier: &Verifier<S>,
) -> HashMap<TokenId, (String, String)> {
    let mut tokens = HashMap::new();
    for (text, _) in CORRUPT_LAYOUT {
        let token_id = id(text);
        let (token, secret) = canonical_token(&token_id);
        let hash = verifier.hasher().hash(secret.as_bytes());
        verifier
            .store()
            .insert(record(token_id, "team-1"), hash)
            .await
            .unwrap();
        tokens.insert(token_id, (token, secret));
    }
    tokens
}

/// After the caller corrupted the rows: each corrupt row is `Corrupt` and its token fails
/// closed; each sound row is itself; each missing id before a corrupt row is `None`, and its
/// token, with the corrupt neighbour's secret or the next sound row's, is `UnknownToken`.
async fn check_corrupt_layout<S: TokenStore>(
    verifier: &Verifier<S>,
    tokens: &HashMap<TokenId, (String, String)>,
    what: &str,
) {
    let store = verifier.store();
    for (text, corrupt) in CORRUPT_LAYOUT {
        let token_id = id(text);
        match corrupt {
            Some(column) => {
                let err = match store.get(&token_id).await {
                    Ok(found) => panic!(
                        "{what}: row {token_id} with a corrupt {column} answered {:?}",
                        found.map(|f| f.record.id)
                    ),
                    Err(err) => err,
                };
                assert_eq!(
                    err.kind(),
                    StoreErrorKind::Corrupt,
                    "{what}: {column}: {err:?}"
                );
                let err = verifier
                    .verify(&tokens[&token_id].0, &none())
                    .await
                    .unwrap_err();
                assert_eq!(
                    err.kind(),
                    AuthErrorKind::StoreUnavailable,
                    "{what}: the token of a row with a corrupt {column}: {err:?}"
                );
            }
            None => {
                expect_hit(store, &token_id, what).await;
                expect_accepted(verifier, &tokens[&token_id].0, &token_id).await;
            }
        }
    }
    for text in BEFORE_CORRUPT {
        let missing = id(text);
        expect_miss(store, &missing, what).await;
        for (stored, (_, secret)) in tokens {
            let token = canonical_with(&missing, secret);
            let what = format!("{what}: missing {missing} with {stored}'s secret");
            expect_refused(verifier, &token, RejectReason::UnknownToken, &what).await;
        }
    }
}

/// Rows whose stored id is a held-looking id plus a trailing space, or plus `!`: not valid
/// `TokenId`s, and each is the row right after the id it extends. Asked for that id, the store
/// must answer nothing (byte for byte, not "equal after trimming"), and the row's own secret
/// under that id must be refused as unknown.
const RENAMED: &[(&str, &str)] = &[
    ("kkkkkkkkkkB1", "kkkkkkkkkkB1 "),
    ("kkkkkkkkkkB2", "kkkkkkkkkkB2!"),
    ("kkkkkkkkkkB3", "kkkkkkkkkkB3-"),
];

async fn insert_renamed<S: TokenStore>(verifier: &Verifier<S>) -> HashMap<TokenId, String> {
    let mut secrets = HashMap::new();
    for (text, _) in RENAMED {
        let token_id = id(text);
        let (_, secret) = canonical_token(&token_id);
        let hash = verifier.hasher().hash(secret.as_bytes());
        verifier
            .store()
            .insert(record(token_id, "team-1"), hash)
            .await
            .unwrap();
        secrets.insert(token_id, secret);
    }
    secrets
}

async fn check_renamed<S: TokenStore>(
    verifier: &Verifier<S>,
    secrets: &HashMap<TokenId, String>,
    what: &str,
) {
    for (text, stored_as) in RENAMED {
        let asked = id(text);
        let what = format!("{what}: {asked} next to a row stored as {stored_as:?}");
        expect_miss(verifier.store(), &asked, &what).await;
        let token = canonical_with(&asked, &secrets[&asked]);
        expect_refused(verifier, &token, RejectReason::UnknownToken, &what).await;
    }
}

#[tokio::test]
async fn corrupt_neighbours_sqlite() {
    let verifier = Verifier::builder(stores::sqlite().await).build();
    let tokens = insert_layout(&verifier).await;
    let renamed = insert_renamed(&verifier).await;
    let pool = verifier.store().pool().clone();
    let mut conn = pool.acquire().await.unwrap();
    for (text, stored_as) in RENAMED {
        sqlx::query("UPDATE apitoken_tokens SET id = $1 WHERE id = $2")
            .bind(*stored_as)
            .bind(*text)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    // The hash's length CHECK is what keeps a short hash out; corruption does not ask.
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut *conn)
        .await
        .unwrap();
    for (text, corrupt) in CORRUPT_LAYOUT {
        let Some(column) = corrupt else { continue };
        let value = match *column {
            "secret_hash" => "x'0102'",
            "scopes" => "'vps:read bad\\scope'",
            "metadata" => "'not json'",
            "allowed_ips" => "'10.0.0.0/8 not-a-network'",
            // Text in an INTEGER column: kept as text by SQLite's affinity.
            "created_at" => "'yesterday'",
            "owner" => "'team' || char(1)",
            other => unreachable!("{other}"),
        };
        sqlx::query(sql(format!(
            "UPDATE apitoken_tokens SET {column} = {value} WHERE id = '{text}'"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    sqlx::query("PRAGMA ignore_check_constraints = OFF")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    check_corrupt_layout(&verifier, &tokens, "sqlite").await;
    check_renamed(&verifier, &renamed, "sqlite").await;
}

#[tokio::test]
async fn corrupt_neighbours_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    let schema = stores::unique_name("probe");
    let store = stores::postgres_on(pool.clone(), &schema).await;
    let verifier = Verifier::builder(store).build();
    let tokens = insert_layout(&verifier).await;
    let renamed = insert_renamed(&verifier).await;
    let table = format!("{schema}.apitoken_tokens");
    for (text, stored_as) in RENAMED {
        sqlx::query(sql(format!("UPDATE {table} SET id = $1 WHERE id = $2")))
            .bind(*stored_as)
            .bind(*text)
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {table} DROP CONSTRAINT apitoken_tokens_secret_hash_check; \
         ALTER TABLE {table} ALTER COLUMN created_at DROP NOT NULL;"
    )))
    .execute(&pool)
    .await
    .unwrap();
    for (text, corrupt) in CORRUPT_LAYOUT {
        let Some(column) = corrupt else { continue };
        let value = match *column {
            "secret_hash" => "'\\x0102'::bytea",
            "scopes" => "'vps:read bad\\scope'",
            "metadata" => "'[1, 2]'::jsonb",
            "allowed_ips" => "'10.0.0.0/8 not-a-network'",
            "created_at" => "NULL",
            "owner" => "'team' || chr(1)",
            other => unreachable!("{other}"),
        };
        sqlx::query(sql(format!(
            "UPDATE {table} SET {column} = {value} WHERE id = '{text}'"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    check_corrupt_layout(&verifier, &tokens, "postgres").await;
    check_renamed(&verifier, &renamed, "postgres").await;
}

/// Sanctum rows 10..=90 by tens; corrupt: 20 (a hash that is not hex), 40 (a
/// `tokenable_type` with a control character: no valid owner), 60 (abilities that are not
/// JSON: by design a grant of nothing, not an error), 80 (created_at, on SQLite only: text that
/// is no time; PostgreSQL cannot hold one, so NULL there, which by design counts as long ago).
async fn check_sanctum_corrupt<P>(
    sanctum: &stores::Sanctum<P>,
    corrupt: impl AsyncFn(&str, &str, u64),
    created_at_corrupt: &str,
    sqlite: bool,
    what: &str,
) {
    let verifier = sanctum_verifier(sanctum.store.clone());
    let mut plains = HashMap::new();
    for n in (10..=90).step_by(10) {
        let (plain, hash) = stores::sanctum_plain_text("");
        verifier
            .store()
            .insert(
                record(TokenId::from_u64(n), SANCTUM_OWNER),
                SecretHash::from_hex(&hash).unwrap(),
            )
            .await
            .unwrap();
        plains.insert(n, plain);
    }
    corrupt("token", "'not a hash'", 20).await;
    corrupt("tokenable_type", "'App' || chr(1)", 40).await;
    corrupt("abilities", "'not json'", 60).await;
    corrupt("created_at", created_at_corrupt, 80).await;
    let store = verifier.store();
    // Asked for: an error where the row cannot be read.
    for n in [20, 40] {
        let err = store.get(&TokenId::from_u64(n)).await.unwrap_err();
        assert_eq!(
            err.kind(),
            StoreErrorKind::Corrupt,
            "{what}: row {n}: {err:?}"
        );
        let err = verifier
            .verify(&format!("{n}|{}", plains[&n]), &none())
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            AuthErrorKind::StoreUnavailable,
            "{what}: {n}: {err:?}"
        );
    }
    if sqlite {
        let err = store.get(&TokenId::from_u64(80)).await.unwrap_err();
        assert_eq!(
            err.kind(),
            StoreErrorKind::Corrupt,
            "{what}: row 80: {err:?}"
        );
    } else {
        let found = expect_hit(store, &TokenId::from_u64(80), what).await;
        assert_eq!(found.record.created_at, DateTime::UNIX_EPOCH, "{what}");
    }
    let sixty = expect_hit(store, &TokenId::from_u64(60), what).await;
    assert!(
        sixty.record.scopes.is_empty(),
        "{what}: unreadable abilities grant nothing"
    );
    for n in [10, 30, 50, 70, 90] {
        expect_hit(store, &TokenId::from_u64(n), what).await;
    }
    // Next to each: nothing, and the neighbours' plain texts under the missing ids refused.
    for missing in [11, 19, 21, 39, 41, 59, 61, 79, 81, 91, 0] {
        expect_miss(store, &TokenId::from_u64(missing), what).await;
        for (row, plain) in &plains {
            let token = format!("{missing}|{plain}");
            let what = format!("{what}: missing {missing} with row {row}'s plain text");
            expect_refused(&verifier, &token, RejectReason::UnknownToken, &what).await;
        }
    }
}

#[tokio::test]
async fn corrupt_neighbours_sanctum_sqlite() {
    let sanctum = stores::sanctum_sqlite().await;
    let (pool, table) = (sanctum.pool.clone(), sanctum.table.clone());
    let corrupt = async |column: &str, value: &str, row: u64| {
        let value = value.replace("chr(", "char(");
        sqlx::query(sql(format!(
            "UPDATE {table} SET {column} = {value} WHERE id = {row}"
        )))
        .execute(&pool)
        .await
        .unwrap();
    };
    check_sanctum_corrupt(&sanctum, corrupt, "'yesterday'", true, "sanctum on sqlite").await;
}

#[tokio::test]
async fn corrupt_neighbours_sanctum_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let sanctum = stores::sanctum_postgres(&url).await;
    let (pool, table) = (sanctum.pool.clone(), sanctum.table.clone());
    let corrupt = async |column: &str, value: &str, row: u64| {
        sqlx::query(sql(format!(
            "UPDATE \"{table}\" SET {column} = {value} WHERE id = {row}"
        )))
        .execute(&pool)
        .await
        .unwrap();
    };
    check_sanctum_corrupt(&sanctum, corrupt, "NULL", false, "sanctum on postgres").await;
}

/// Laravel's table with `id serial` (a 4-byte integer, as `increments('id')` makes it)
/// instead of `bigserial`: the store reads `id` as an `i64`, which sqlx refuses for an `int4`
/// column. Before 9305abf, a hit decoded the row and failed with `Corrupt` (every token
/// answered 503, fail closed and loud). Now `get` reads the row's id with
/// `read_int(..).is_ok_and(..)`, so a hit whose id cannot be read counts as "not that row".
/// The claim under test: a hit of a row that cannot be decoded is an error, never `Ok(None)`.
#[tokio::test]
async fn undecodable_id_column_is_an_error_sanctum_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let table = stores::unique_name("pat4");
    let ddl = stores::laravel_postgres_ddl(&table).replace(
        "\"id\" bigserial not null primary key",
        "\"id\" serial not null primary key",
    );
    assert!(ddl.contains("\"id\" serial"), "the DDL changed shape");
    sqlx::raw_sql(sql(ddl)).execute(&pool).await.unwrap();
    let store = SanctumStore::postgres(pool.clone())
        .table(&table)
        .unwrap()
        .build();
    let (plain, hash) = stores::sanctum_plain_text("");
    let token_id = TokenId::from_u64(7);
    store
        .insert(
            record(token_id, SANCTUM_OWNER),
            SecretHash::from_hex(&hash).unwrap(),
        )
        .await
        .unwrap();
    let answer = store.get(&token_id).await;
    let verifier = sanctum_verifier(store);
    let verified = verifier.verify(&format!("7|{plain}"), &none()).await;
    match answer {
        Err(err) => assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err:?}"),
        Ok(found) => panic!(
            "get(7) of a row whose int4 id cannot be read as i64 answered {:?} (verify: {:?}), \
             not a Corrupt error",
            found.map(|f| f.record.id),
            verified
                .map(|p| *p.token_id())
                .map_err(|e| (e.kind(), e.reason()))
        ),
    }
    let err = verified.unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable, "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Rows deleted while lookups run
// ---------------------------------------------------------------------------------------------

/// Stable rows `cNNNb`, churned rows `cNNNa` (deleted and inserted again by a writer); missing
/// ids `cNNN` (whose next row is a churned one) and `cNNNc`. While the writer runs, every
/// stable id is itself and every missing id is nothing: a neighbour vanishing between the
/// seek and the decode never turns into another row or an error.
async fn check_churn<S, D, I>(store: &S, delete: D, insert: I, numeric: bool, what: &str)
where
    S: TokenStore + Clone + Send + Sync + 'static,
    D: AsyncFn(&TokenId),
    I: AsyncFn(&TokenId),
{
    let n = 20u64;
    let (stable, churned, missing): (Vec<TokenId>, Vec<TokenId>, Vec<TokenId>) = if numeric {
        (
            (0..n).map(|i| TokenId::from_u64(100 + 4 * i + 2)).collect(),
            (0..n).map(|i| TokenId::from_u64(100 + 4 * i + 1)).collect(),
            (0..n)
                .flat_map(|i| [100 + 4 * i, 100 + 4 * i + 3])
                .map(TokenId::from_u64)
                .collect(),
        )
    } else {
        (
            (0..n).map(|i| id(&format!("c{i:03}b"))).collect(),
            (0..n).map(|i| id(&format!("c{i:03}a"))).collect(),
            (0..n)
                .flat_map(|i| [format!("c{i:03}"), format!("c{i:03}c")])
                .map(|t| id(&t))
                .collect(),
        )
    };
    for token_id in stable.iter().chain(&churned) {
        insert(token_id).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (oks, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut readers = Vec::new();
    for r in 0..2usize {
        let (store, stop, oks, errors) = (store.clone(), stop.clone(), oks.clone(), errors.clone());
        let (stable, missing) = (stable.clone(), missing.clone());
        let what = what.to_owned();
        readers.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                let (asked, held) = if i.is_multiple_of(2) {
                    (stable[(i / 2) % stable.len()], true)
                } else {
                    (missing[(i / 2) % missing.len()], false)
                };
                i += 1;
                match store.get(&asked).await {
                    Ok(Some(found)) => {
                        assert!(
                            held,
                            "{what}: missing {asked} answered row {}",
                            found.record.id
                        );
                        assert_eq!(found.record.id, asked, "{what}: asked {asked}");
                        assert_eq!(found.hash, hash_of(&asked), "{what}: {asked}'s hash");
                        oks.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => {
                        assert!(!held, "{what}: stable {asked} not found during churn");
                        oks.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        eprintln!("{what}: {asked}: {err:?}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // At least two rounds; then until the readers have answered 300 lookups or 1.5 s passed
    // (Sanctum's SQLite table is in rollback-journal mode: its writes are slow).
    let started = std::time::Instant::now();
    let mut round = 0;
    while round < 2
        || (oks.load(Ordering::Relaxed) < 300 && started.elapsed() < Duration::from_millis(1_500))
    {
        for token_id in churned.iter().skip(round % 2).step_by(2) {
            delete(token_id).await;
        }
        for token_id in churned.iter().skip(round % 2).step_by(2) {
            insert(token_id).await;
        }
        round += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    let (oks, errors) = (oks.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    eprintln!("{what}: {oks} lookups answered during {round} rounds of churn, {errors} failed");
    assert!(
        oks >= 50,
        "{what}: only {oks} lookups answered ({errors} failed)"
    );
    assert_eq!(errors, 0, "{what}: lookups failed during churn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_sqlite() {
    let store = stores::sqlite().await;
    let pool = store.pool().clone();
    let delete = async |token_id: &TokenId| {
        sqlx::query("DELETE FROM apitoken_tokens WHERE id = $1")
            .bind(token_id.as_str().to_owned())
            .execute(&pool)
            .await
            .unwrap();
    };
    let insert = async |token_id: &TokenId| {
        store
            .insert(record(*token_id, "team-1"), hash_of(token_id))
            .await
            .unwrap();
    };
    check_churn(&store, delete, insert, false, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    let schema = stores::unique_name("probe");
    let store = stores::postgres_on(pool.clone(), &schema).await;
    let delete = async |token_id: &TokenId| {
        sqlx::query(sql(format!(
            "DELETE FROM {schema}.apitoken_tokens WHERE id = $1"
        )))
        .bind(token_id.as_str().to_owned())
        .execute(&pool)
        .await
        .unwrap();
    };
    let insert = async |token_id: &TokenId| {
        store
            .insert(record(*token_id, "team-1"), hash_of(token_id))
            .await
            .unwrap();
    };
    check_churn(&store, delete, insert, false, "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_sanctum_sqlite() {
    // In WAL mode, as `SqliteStore::connect` opens its own: in rollback-journal mode (the
    // support pool's) readers mostly sleep in the busy handler while the writer churns.
    let path = std::env::temp_dir().join(format!("{}.db", stores::unique_name("probe_churn")));
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(stores::laravel_sqlite_ddl(
        "personal_access_tokens",
    )))
    .execute(&pool)
    .await
    .unwrap();
    let store = SanctumStore::sqlite(pool).build();
    let delete = async |token_id: &TokenId| {
        assert!(store.revoke(token_id, Utc::now()).await.unwrap());
    };
    let insert = async |token_id: &TokenId| {
        store
            .insert(record(*token_id, SANCTUM_OWNER), hash_of(token_id))
            .await
            .unwrap();
    };
    check_churn(&store, delete, insert, true, "sanctum on sqlite").await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_sanctum_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let sanctum = stores::sanctum_postgres(&url).await;
    let store = sanctum.store.clone();
    let delete = async |token_id: &TokenId| {
        assert!(store.revoke(token_id, Utc::now()).await.unwrap());
    };
    let insert = async |token_id: &TokenId| {
        store
            .insert(record(*token_id, SANCTUM_OWNER), hash_of(token_id))
            .await
            .unwrap();
    };
    check_churn(&sanctum.store, delete, insert, true, "sanctum on postgres").await;
}

// ---------------------------------------------------------------------------------------------
// A connection that cannot answer mid-lookup: fail closed
// ---------------------------------------------------------------------------------------------

/// A SQLite pool in rollback-journal mode with a short busy timeout: a reader meets another
/// connection's EXCLUSIVE lock and cannot answer.
async fn lockable_sqlite_pool(path: &std::path::Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Delete)
        .busy_timeout(Duration::from_millis(50));
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(3)
        .connect_with(options)
        .await
        .unwrap()
}

/// With the database locked, `get` of a held id, of a missing id between held ones and of
/// the token of either through the verifier must be errors: never `Ok(None)` for a row that
/// exists, never another row.
async fn check_locked<S: TokenStore>(
    verifier: &Verifier<S>,
    held: (&TokenId, &str),
    missing: (&TokenId, &str),
    what: &str,
) {
    let store = verifier.store();
    for (asked, exists) in [(held.0, true), (missing.0, false)] {
        match store.get(asked).await {
            Err(err) => assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{what}: {err:?}"),
            Ok(found) => panic!(
                "{what}: a locked database answered get({asked}) (exists: {exists}) with {:?}",
                found.map(|f| f.record.id)
            ),
        }
    }
    for token in [held.1, missing.1] {
        let err = verifier.verify(token, &none()).await.unwrap_err();
        assert_eq!(
            err.kind(),
            AuthErrorKind::StoreUnavailable,
            "{what}: {err:?}"
        );
    }
}

#[tokio::test]
async fn locked_database_fails_closed_sqlite() {
    let path = std::env::temp_dir().join(format!("{}.db", stores::unique_name("probe_lock")));
    let pool = lockable_sqlite_pool(&path).await;
    let store = SqliteStore::builder(pool.clone()).build();
    store.migrate().await.unwrap();
    let verifier = Verifier::builder(store).build();
    let (a, b, gap) = (id("llllllllll10"), id("llllllllll30"), id("llllllllll20"));
    let mut secrets = HashMap::new();
    for token_id in [a, b] {
        let (text, secret) = canonical_token(&token_id);
        let hash = verifier.hasher().hash(secret.as_bytes());
        verifier
            .store()
            .insert(record(token_id, "team-1"), hash)
            .await
            .unwrap();
        secrets.insert(token_id, (text, secret));
    }
    let gap_token = canonical_with(&gap, &secrets[&b].1);
    expect_refused(
        &verifier,
        &gap_token,
        RejectReason::UnknownToken,
        "unlocked",
    )
    .await;

    let mut locker = pool.acquire().await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *locker)
        .await
        .unwrap();
    check_locked(
        &verifier,
        (&b, &secrets[&b].0),
        (&gap, &gap_token),
        "sqlite",
    )
    .await;
    sqlx::query("COMMIT").execute(&mut *locker).await.unwrap();
    drop(locker);
    expect_accepted(&verifier, &secrets[&b].0, &b).await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn locked_database_fails_closed_sanctum_sqlite() {
    let path = std::env::temp_dir().join(format!("{}.db", stores::unique_name("probe_lock")));
    let pool = lockable_sqlite_pool(&path).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(stores::laravel_sqlite_ddl(
        "personal_access_tokens",
    )))
    .execute(&pool)
    .await
    .unwrap();
    let verifier = sanctum_verifier(SanctumStore::sqlite(pool.clone()).build());
    let (plain, hash) = stores::sanctum_plain_text("");
    verifier
        .store()
        .insert(
            record(TokenId::from_u64(30), SANCTUM_OWNER),
            SecretHash::from_hex(&hash).unwrap(),
        )
        .await
        .unwrap();
    let (held, gap) = (format!("30|{plain}"), format!("20|{plain}"));
    expect_refused(&verifier, &gap, RejectReason::UnknownToken, "unlocked").await;

    let mut locker = pool.acquire().await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let what = "sanctum on sqlite";
    check_locked(
        &verifier,
        (&TokenId::from_u64(30), &held),
        (&TokenId::from_u64(20), &gap),
        what,
    )
    .await;
    sqlx::query("COMMIT").execute(&mut *locker).await.unwrap();
    drop(locker);
    expect_accepted(&verifier, &held, &TokenId::from_u64(30)).await;
    let _ = std::fs::remove_file(&path);
}

/// Holds an ACCESS EXCLUSIVE lock on `table` from another session, starts `lookups` (they
/// block on the lock, mid-query), ends their backends, and returns what they answered.
async fn terminated_mid_lookup<T, F>(url: &str, table: &str, lookups: F) -> T
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let admin = sqlx::PgPool::connect(url).await.unwrap();
    let mut locker = admin.acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *locker).await.unwrap();
    sqlx::query(sql(format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")))
        .execute(&mut *locker)
        .await
        .unwrap();
    let running = tokio::spawn(lookups);
    // Wait for the lookups' backends to block on the lock, then end them.
    let unquoted = table.replace('"', "");
    let mut ended = 0;
    for _ in 0..100 {
        let waiting: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid() \
             AND replace(query, '\"', '') LIKE '%' || $1 || '%'",
        )
        .bind(&unquoted)
        .fetch_all(&admin)
        .await
        .unwrap();
        ended += waiting.len();
        if running.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answered = running.await.unwrap();
    sqlx::query("ROLLBACK").execute(&mut *locker).await.unwrap();
    assert!(ended >= 1, "no lookup was found waiting on the lock");
    answered
}

type Answers = Vec<(TokenId, bool, Result<Option<TokenId>, StoreErrorKind>)>;

async fn lookups_of<S: TokenStore + Send + Sync>(store: S, asked: Vec<(TokenId, bool)>) -> Answers {
    let mut answers = Vec::new();
    for (token_id, exists) in asked {
        let answer = store
            .get(&token_id)
            .await
            .map(|found| found.map(|f| f.record.id))
            .map_err(|e| e.kind());
        answers.push((token_id, exists, answer));
    }
    answers
}

fn check_answers(answers: &Answers, what: &str) {
    for (asked, exists, answer) in answers {
        match answer {
            Err(kind) => assert_eq!(*kind, StoreErrorKind::Unavailable, "{what}: {asked}"),
            Ok(found) => panic!(
                "{what}: get({asked}) (exists: {exists}) on a terminated connection answered \
                 {found:?}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connection_fails_closed_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    let schema = stores::unique_name("probe");
    let store = stores::postgres_on(pool, &schema).await;
    let (a, b) = (id("pppppppppp10"), id("pppppppppp30"));
    for token_id in [a, b] {
        store
            .insert(record(token_id, "team-1"), hash_of(&token_id))
            .await
            .unwrap();
    }
    let asked = vec![(b, true), (id("pppppppppp20"), false)];
    let table = format!("{schema}.apitoken_tokens");
    let answers = terminated_mid_lookup(&url, &table, lookups_of(store.clone(), asked)).await;
    check_answers(&answers, "postgres");
    // And the verifier: the neighbour's secret under the gap id, mid-lookup, is not a match.
    let verifier = Verifier::builder(store.clone()).build();
    let (token, secret) = canonical_token(&id("pppppppppp50"));
    verifier
        .store()
        .insert(
            record(id("pppppppppp50"), "team-1"),
            verifier.hasher().hash(secret.as_bytes()),
        )
        .await
        .unwrap();
    let gap = canonical_with(&id("pppppppppp40"), &secret);
    let v = verifier.clone();
    let (held, missing) = terminated_mid_lookup(&url, &table, async move {
        let held = v
            .verify(&token, &ScopeRequirement::none())
            .await
            .map(|p| *p.token_id());
        let missing = v
            .verify(&gap, &ScopeRequirement::none())
            .await
            .map(|p| *p.token_id());
        (held, missing)
    })
    .await;
    for answer in [held, missing] {
        let err = answer.expect_err("a terminated lookup accepted a token");
        assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable, "{err:?}");
    }
    // The pool recovers: both answer again.
    expect_hit(&store, &b, "postgres, after").await;
    expect_miss(&store, &id("pppppppppp20"), "postgres, after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connection_fails_closed_sanctum_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let sanctum = stores::sanctum_postgres(&url).await;
    for n in [10, 30] {
        let token_id = TokenId::from_u64(n);
        sanctum
            .store
            .insert(record(token_id, SANCTUM_OWNER), hash_of(&token_id))
            .await
            .unwrap();
    }
    let asked = vec![
        (TokenId::from_u64(30), true),
        (TokenId::from_u64(20), false),
    ];
    let table = format!("\"{}\"", sanctum.table);
    let answers =
        terminated_mid_lookup(&url, &table, lookups_of(sanctum.store.clone(), asked)).await;
    check_answers(&answers, "sanctum on postgres");
    expect_hit(&sanctum.store, &TokenId::from_u64(30), "after").await;
}

// ---------------------------------------------------------------------------------------------
// MemoryStore: sizes, mutations, concurrency
// ---------------------------------------------------------------------------------------------

/// Polls a future that the memory store's calls make to completion on this thread.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..1_000 {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("a memory-store future did not complete");
}

/// Stores of 0, 1, 2, 3 … 3,000 records (empty tables, tables of one, shards with several),
/// with and without capacity reserved: every held id is itself, every other id nothing, before
/// and after revocations, rotations and removals.
#[test]
fn memory_store_sizes_and_mutations() {
    let mut rng = Rng::new(0x5eed_0003);
    for n in [0usize, 1, 2, 3, 5, 64, 255, 256, 257, 1_000, 3_000] {
        for capacity in [0, n * 4] {
            let store = MemoryStore::with_capacity(capacity);
            let what = format!("memory, {n} records, capacity {capacity}");
            // Held: id -> its current hash. Some expire in the past with a marker, for removal.
            let mut held: HashMap<TokenId, SecretHash> = HashMap::new();
            let mut marked: Vec<TokenId> = Vec::new();
            while held.len() < n {
                let token_id = random_id(&mut rng);
                if held.contains_key(&token_id) {
                    continue;
                }
                let mut rec = record(token_id, "team-1");
                if held.len() % 7 == 3 {
                    rec.expires_at = Some(t0());
                    rec.metadata.insert("probe_gc".into(), true.into());
                    marked.push(token_id);
                }
                now(store.insert(rec, hash_of(&token_id))).unwrap();
                held.insert(token_id, hash_of(&token_id));
            }
            let check = |held: &HashMap<TokenId, SecretHash>, rng: &mut Rng, phase: &str| {
                for (token_id, hash) in held {
                    let found = now(store.get(token_id))
                        .unwrap()
                        .unwrap_or_else(|| panic!("{what}, {phase}: held {token_id} not found"));
                    assert_eq!(found.record.id, *token_id, "{what}, {phase}");
                    assert_eq!(found.hash, *hash, "{what}, {phase}: {token_id}'s hash");
                }
                let mut probes: Vec<TokenId> = (0..(3 * n + 64)).map(|_| random_id(rng)).collect();
                for token_id in held.keys().take(64) {
                    probes.extend(
                        around(token_id.as_str())
                            .iter()
                            .filter_map(|t| TokenId::new(t).ok()),
                    );
                }
                for probe in probes.iter().filter(|p| !held.contains_key(p)) {
                    if let Some(found) = now(store.get(probe)).unwrap() {
                        panic!(
                            "{what}, {phase}: asked for missing {probe}, got {}",
                            found.record.id
                        );
                    }
                }
            };
            check(&held, &mut rng, "inserted");
            assert_eq!(store.len(), n, "{what}");
            // Revoke every third, rotate every fifth (the new id joins; the old one stays,
            // revoked), then remove the expired ones that carry the marker.
            let ids: Vec<TokenId> = held.keys().copied().collect();
            for (i, token_id) in ids.iter().enumerate() {
                if i.is_multiple_of(3) {
                    now(store.revoke(token_id, t0())).unwrap();
                }
                if i % 5 == 1 {
                    let new_id = loop {
                        let candidate = random_id(&mut rng);
                        if !held.contains_key(&candidate) {
                            break candidate;
                        }
                    };
                    let rotated = now(store.rotate(
                        token_id,
                        Retire::RevokeAt(t0()),
                        record(new_id, "team-1"),
                        hash_of(&new_id),
                    ))
                    .unwrap();
                    // A revoked old token is not rotated (the store undoes the insert).
                    if rotated {
                        held.insert(new_id, hash_of(&new_id));
                    } else {
                        assert!(now(store.get(&new_id)).unwrap().is_none(), "{what}");
                    }
                }
            }
            check(&held, &mut rng, "revoked and rotated");
            assert_eq!(store.len(), held.len(), "{what}");
            let removed =
                now(store.remove_expired(t0() + TimeDelta::seconds(1), "probe_gc")).unwrap();
            assert_eq!(removed, marked.len(), "{what}");
            for token_id in &marked {
                held.remove(token_id);
            }
            assert_eq!(store.len(), held.len(), "{what}: {removed} removed");
            check(&held, &mut rng, "after removals");
        }
    }
}

/// Readers verify stable, unknown, revoked and wrong-secret tokens on four threads while two
/// writers insert, revoke and rotate other records (tables grow and rehash under the readers).
/// Every answer is the right one; nothing deadlocks (a watchdog waits at most 20 s).
#[test]
fn memory_store_concurrent_readers_and_writers() {
    let store = MemoryStore::new();
    let verifier = Verifier::builder(store).build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let owner = Owner::new("team-1").unwrap();
    let issue = |name: &str| {
        rt.block_on(verifier.issuer().issue(NewToken::new(name, owner.clone())))
            .unwrap()
    };
    let stable: Vec<(TokenId, String)> = (0..200)
        .map(|i| {
            let issued = issue(&format!("stable {i}"));
            (*issued.token_id(), issued.token.expose_secret().to_owned())
        })
        .collect();
    let revoked: Vec<(TokenId, String)> = (0..50)
        .map(|i| {
            let issued = issue(&format!("revoked {i}"));
            rt.block_on(verifier.store().revoke(issued.token_id(), t0()))
                .unwrap();
            (*issued.token_id(), issued.token.expose_secret().to_owned())
        })
        .collect();
    let stable = Arc::new(stable);
    let revoked = Arc::new(revoked);
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<u64, String>>();
    let mut handles = Vec::new();
    for r in 0..4u64 {
        let (verifier, stable, revoked, stop, done) = (
            verifier.clone(),
            stable.clone(),
            revoked.clone(),
            stop.clone(),
            done_tx.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut rng = Rng::new(0x1000 + r);
                let mut checked = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (token_id, token) = &stable[rng.below(stable.len())];
                    let principal = now(verifier.verify(token, &none()))
                        .unwrap_or_else(|e| panic!("stable {token_id} refused: {e:?}"));
                    assert_eq!(principal.token_id(), token_id);
                    // Unknown: ids of 12 base62 characters starting with `u`; writers use `w`.
                    let unknown = id(&format!("u{}", rng.text(BASE62, 11)));
                    let secret = TokenFormat::canonical()
                        .parse(token)
                        .unwrap()
                        .secret()
                        .to_owned();
                    let err = now(verifier.verify(&canonical_with(&unknown, &secret), &none()))
                        .unwrap_err();
                    assert_eq!(err.reason(), Some(RejectReason::UnknownToken), "{unknown}");
                    let (revoked_id, revoked_token) = &revoked[rng.below(revoked.len())];
                    let err = now(verifier.verify(revoked_token, &none())).unwrap_err();
                    assert_eq!(err.reason(), Some(RejectReason::Revoked), "{revoked_id}");
                    let wrong = canonical_token(token_id).0;
                    let err = now(verifier.verify(&wrong, &none())).unwrap_err();
                    assert_eq!(err.reason(), Some(RejectReason::WrongSecret), "{token_id}");
                    // The store directly, on ids the writers churn: never another record.
                    let probe = id(&format!("w{}", rng.text(b"0123", 3)));
                    if let Some(found) = now(verifier.store().get(&probe)).unwrap() {
                        assert_eq!(found.record.id, probe);
                    }
                    checked += 1;
                }
                checked
            }));
            let _ = done.send(result.map_err(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default()
            }));
        }));
    }
    for w in 0..2u64 {
        let (verifier, stop, done) = (verifier.clone(), stop.clone(), done_tx.clone());
        handles.push(std::thread::spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let store = verifier.store();
                let mut rng = Rng::new(0x2000 + w);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Ids `w` + three of `0123` (64 of them, shared by both writers) and
                    // `W<writer><counter>`, always new: tables keep growing.
                    let churn = id(&format!("w{}", rng.text(b"0123", 3)));
                    let fresh = id(&format!("W{w}x{n}"));
                    n += 1;
                    let _ = now(store.insert(record(churn, "team-2"), hash_of(&churn)));
                    now(store.insert(record(fresh, "team-2"), hash_of(&fresh))).unwrap();
                    if n.is_multiple_of(3) {
                        now(store.revoke(&churn, t0())).unwrap();
                    }
                    if n.is_multiple_of(5) {
                        let next = id(&format!("W{w}r{n}"));
                        let _ = now(store.rotate(
                            &fresh,
                            Retire::ExpireAt(t0()),
                            record(next, "team-2"),
                            hash_of(&next),
                        ))
                        .unwrap();
                    }
                    if n.is_multiple_of(64) {
                        let _ = now(store.revoke_owner(&Owner::new("team-2").unwrap(), t0()));
                    }
                }
                n
            }));
            let _ = done.send(result.map_err(|_| "writer panicked".to_owned()));
        }));
    }
    drop(done_tx);
    std::thread::sleep(Duration::from_millis(1_200));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for _ in 0..6 {
        match done_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(n)) => total += n,
            Ok(Err(panic)) => panic!("a thread failed: {panic}"),
            Err(_) => panic!("a thread did not finish within 20 s: deadlock?"),
        }
    }
    for handle in handles {
        handle.join().unwrap();
    }
    assert!(total > 100, "only {total} rounds ran");
}

// ---------------------------------------------------------------------------------------------
// Last use: refusals change nothing
// ---------------------------------------------------------------------------------------------

struct LastUse {
    verifier: Verifier<MemoryStore>,
    clock: Arc<ManualClock>,
    /// Accepted in the probes: token text by id.
    valid: Vec<(TokenId, String)>,
    revoked: (TokenId, String),
    expired: (TokenId, String),
    idle: (TokenId, String),
}

/// A verifier with a manual clock, a 30-day idle limit, `max_pending` and `flush_every`:
/// `valid` tokens (active), one revoked, one expired, one idle.
async fn last_use_setup(max_pending: usize, valid: usize, flush_every: Duration) -> LastUse {
    let clock = Arc::new(ManualClock::new(t0()));
    let verifier = Verifier::builder(MemoryStore::new())
        .clock(clock.clone() as Arc<dyn Clock>)
        .max_idle(TimeDelta::days(30))
        .last_used_max_pending(max_pending)
        .last_used_flush_interval(flush_every)
        .build();
    let owner = Owner::new("team-1").unwrap();
    let issue = async |new: NewToken| {
        let issued = verifier.issuer().issue(new).await.unwrap();
        (*issued.token_id(), issued.token.expose_secret().to_owned())
    };
    let idle = issue(NewToken::new("idle", owner.clone())).await;
    clock.advance(TimeDelta::days(31));
    let mut tokens = Vec::new();
    for i in 0..valid {
        tokens.push(issue(NewToken::new(format!("valid {i}"), owner.clone())).await);
    }
    let revoked = issue(NewToken::new("revoked", owner.clone())).await;
    verifier
        .store()
        .revoke(&revoked.0, clock.now())
        .await
        .unwrap();
    let expired =
        issue(NewToken::new("expired", owner.clone()).expires_in(TimeDelta::hours(1))).await;
    clock.advance(TimeDelta::hours(2));
    LastUse {
        verifier,
        clock,
        valid: tokens,
        revoked,
        expired,
        idle,
    }
}

impl LastUse {
    /// Every kind of refusal, `rounds` times over: unknown ids (some with a valid token's
    /// secret), each known id with a fresh secret, the revoked, expired and idle tokens, a bad
    /// checksum. Each refused for its own reason.
    async fn storm(&self, rounds: usize, seed: u64) {
        let mut rng = Rng::new(seed);
        let v = &self.verifier;
        let known: Vec<&(TokenId, String)> = self
            .valid
            .iter()
            .chain([&self.revoked, &self.expired, &self.idle])
            .collect();
        for _ in 0..rounds {
            let unknown = id(&format!("u{}", rng.text(BASE62, 11)));
            expect_refused(
                v,
                &canonical_token(&unknown).0,
                RejectReason::UnknownToken,
                "unknown",
            )
            .await;
            for (token_id, token) in &known {
                let secret = TokenFormat::canonical()
                    .parse(token)
                    .unwrap()
                    .secret()
                    .to_owned();
                let what = format!("{token_id}'s secret under {unknown}");
                expect_refused(
                    v,
                    &canonical_with(&unknown, &secret),
                    RejectReason::UnknownToken,
                    &what,
                )
                .await;
                let what = format!("{token_id} with a fresh secret");
                expect_refused(
                    v,
                    &canonical_token(token_id).0,
                    RejectReason::WrongSecret,
                    &what,
                )
                .await;
            }
            expect_refused(v, &self.revoked.1, RejectReason::Revoked, "revoked").await;
            expect_refused(v, &self.expired.1, RejectReason::Expired, "expired").await;
            expect_refused(v, &self.idle.1, RejectReason::Idle, "idle").await;
            let mut forged = self.valid[0].1.clone();
            let last = forged.pop().unwrap();
            forged.push(if last == 'A' { 'B' } else { 'A' });
            expect_refused(v, &forged, RejectReason::BadChecksum, "bad checksum").await;
        }
    }

    async fn last_used_at(&self, token_id: &TokenId) -> Option<DateTime<Utc>> {
        let found = self.verifier.store().get(token_id).await.unwrap().unwrap();
        found.record.last_used_at
    }

    /// The refused-only tokens never got a last use.
    async fn refused_have_none(&self) {
        for (token_id, _) in [&self.revoked, &self.expired, &self.idle] {
            assert_eq!(
                self.last_used_at(token_id).await,
                None,
                "refused {token_id}"
            );
        }
    }
}

#[tokio::test]
async fn refusals_alone_note_nothing() {
    let setup = last_use_setup(100, 3, MINUTE).await;
    let v = &setup.verifier;
    setup.storm(20, 1).await;
    assert_eq!(v.last_used_pending(), 0, "a refusal was noted");
    assert_eq!(v.last_used_dropped(), 0, "a refusal was counted as dropped");
    assert_eq!(v.flush_last_used().await.unwrap(), 0);
    for (token_id, _) in &setup.valid {
        assert_eq!(setup.last_used_at(token_id).await, None, "{token_id}");
    }
    setup.refused_have_none().await;
    // The idle token is still idle: no refusal of its id refreshed its last use.
    expect_refused(v, &setup.idle.1, RejectReason::Idle, "idle after the storm").await;
}

#[tokio::test]
async fn refusals_leave_a_noted_time_alone() {
    let setup = last_use_setup(100, 3, MINUTE).await;
    let v = &setup.verifier;
    let t1 = setup.clock.now();
    let (a, a_token) = &setup.valid[0];
    expect_accepted(v, a_token, a).await;
    assert_eq!(v.last_used_pending(), 1);
    // Later refusals, many on A's own id (the buffer's entry a touch reads is A's).
    setup.clock.advance(TimeDelta::minutes(5));
    setup.storm(20, 2).await;
    assert_eq!((v.last_used_pending(), v.last_used_dropped()), (1, 0));
    assert_eq!(v.flush_last_used().await.unwrap(), 1);
    assert_eq!(
        setup.last_used_at(a).await,
        Some(t1),
        "A's noted time moved"
    );
    for (token_id, _) in &setup.valid[1..] {
        assert_eq!(setup.last_used_at(token_id).await, None, "{token_id}");
    }
    setup.refused_have_none().await;
    // After the flush, the buffer is empty and stays so through refusals.
    setup.storm(5, 3).await;
    assert_eq!(v.last_used_pending(), 0);
    assert_eq!(v.flush_last_used().await.unwrap(), 0);
    // A new use moves A forward; refusals between do not.
    let t2 = setup.clock.now();
    expect_accepted(v, a_token, a).await;
    setup.clock.advance(TimeDelta::minutes(5));
    setup.storm(5, 4).await;
    assert_eq!(v.flush_last_used().await.unwrap(), 1);
    assert_eq!(setup.last_used_at(a).await, Some(t2));
}

#[tokio::test]
async fn refusals_on_a_full_buffer_drop_and_count_nothing() {
    let setup = last_use_setup(2, 3, MINUTE).await;
    let v = &setup.verifier;
    let t1 = setup.clock.now();
    let [(a, a_token), (b, b_token), (c, c_token)] = &setup.valid[..] else {
        unreachable!()
    };
    expect_accepted(v, a_token, a).await;
    expect_accepted(v, b_token, b).await;
    expect_accepted(v, c_token, c).await; // still verified; its note is dropped
    assert_eq!((v.last_used_pending(), v.last_used_dropped()), (2, 1));
    setup.clock.advance(TimeDelta::minutes(1));
    setup.storm(30, 5).await;
    assert_eq!(
        (v.last_used_pending(), v.last_used_dropped()),
        (2, 1),
        "refusals on a full buffer changed it"
    );
    assert_eq!(v.flush_last_used().await.unwrap(), 2);
    assert_eq!(setup.last_used_at(a).await, Some(t1));
    assert_eq!(setup.last_used_at(b).await, Some(t1));
    assert_eq!(setup.last_used_at(c).await, None, "C's note was dropped");
    setup.refused_have_none().await;
    setup.storm(10, 6).await;
    assert_eq!((v.last_used_pending(), v.last_used_dropped()), (0, 1));
    let t2 = setup.clock.now();
    expect_accepted(v, c_token, c).await;
    assert_eq!(v.flush_last_used().await.unwrap(), 1);
    assert_eq!(setup.last_used_at(c).await, Some(t2));
}

/// Refusals on two threads, accepted verifications and flushes interleaved, on a buffer that
/// holds every accepted token (no drop) and then on one that is full (drops from acceptances
/// only). At the end each accepted token's stored last use is the (fixed) clock's time, the
/// refused ones have none, and the counters say exactly what the acceptances did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_storm_interleaved_with_flushes() {
    for (max_pending, valid) in [(1_000, 40), (5, 12)] {
        let setup = Arc::new(last_use_setup(max_pending, valid, MINUTE).await);
        let t1 = setup.clock.now();
        let stop = Arc::new(AtomicBool::new(false));
        let mut storms = Vec::new();
        for s in 0..2 {
            let (setup, stop) = (setup.clone(), stop.clone());
            storms.push(tokio::spawn(async move {
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    setup.storm(1, 100 + s * 1_000 + rounds).await;
                    rounds += 1;
                    tokio::task::yield_now().await;
                }
                rounds
            }));
        }
        let v = &setup.verifier;
        let work = async {
            let mut written = 0;
            // Acceptances: the first `max_pending` tokens fit; in the full case the rest are
            // dropped (each once: a dropped note is not retried).
            let fits = valid.min(max_pending);
            for (token_id, token) in &setup.valid[..fits] {
                expect_accepted(v, token, token_id).await;
                written += v.flush_last_used().await.unwrap();
                expect_accepted(v, token, token_id).await;
                tokio::task::yield_now().await;
            }
            // Everything noted so far is flushed, except the last note of each token since
            // its flush; flush those, then fill the buffer and overflow it.
            written += v.flush_last_used().await.unwrap();
            for (token_id, token) in &setup.valid[..fits] {
                expect_accepted(v, token, token_id).await;
            }
            let dropped_before = v.last_used_dropped();
            for (token_id, token) in &setup.valid[fits..] {
                expect_accepted(v, token, token_id).await;
            }
            let overflow = (valid - fits) as u64;
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert_eq!(
                v.last_used_dropped() - dropped_before,
                overflow,
                "max_pending {max_pending}: drops not from acceptances alone"
            );
            assert_eq!(v.last_used_pending(), fits, "max_pending {max_pending}");
            written += v.flush_last_used().await.unwrap();
            written
        };
        let written = tokio::time::timeout(Duration::from_secs(20), work)
            .await
            .expect("deadlock: flushes and refusals did not finish");
        stop.store(true, Ordering::Relaxed);
        let mut rounds = 0;
        for storm in storms {
            rounds += tokio::time::timeout(Duration::from_secs(20), storm)
                .await
                .expect("a storm did not finish")
                .unwrap();
        }
        assert!(rounds >= 2, "the storms barely ran ({rounds} rounds)");
        let fits = valid.min(max_pending);
        assert!(
            written >= fits,
            "max_pending {max_pending}: {written} written"
        );
        assert_eq!(v.last_used_pending(), 0);
        assert_eq!(v.flush_last_used().await.unwrap(), 0);
        for (token_id, _) in &setup.valid[..fits] {
            assert_eq!(setup.last_used_at(token_id).await, Some(t1), "{token_id}");
        }
        for (token_id, _) in &setup.valid[fits..] {
            assert_eq!(
                setup.last_used_at(token_id).await,
                None,
                "dropped {token_id}"
            );
        }
        setup.refused_have_none().await;
        assert_eq!(v.last_used_dropped(), (valid - fits) as u64);
    }
}

/// The background flusher at its shortest interval, flushing while two tasks refuse tokens
/// and one accepts: at shutdown every accepted token's last use is stored, no refused one's,
/// and nothing was dropped or left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_flusher_and_refusal_storm() {
    let setup = Arc::new(last_use_setup(1_000, 10, Duration::from_millis(1)).await);
    let t1 = setup.clock.now();
    let flusher = setup.verifier.spawn_last_used_flusher();
    let stop = Arc::new(AtomicBool::new(false));
    let mut storms = Vec::new();
    for s in 0..2u64 {
        let (setup, stop) = (setup.clone(), stop.clone());
        storms.push(tokio::spawn(async move {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                setup.storm(1, 7_000 + s * 1_000 + rounds).await;
                rounds += 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    let work = async {
        for _ in 0..20 {
            for (token_id, token) in &setup.valid {
                expect_accepted(&setup.verifier, token, token_id).await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .expect("deadlock: acceptances did not finish");
    stop.store(true, Ordering::Relaxed);
    for storm in storms {
        tokio::time::timeout(Duration::from_secs(20), storm)
            .await
            .expect("a storm did not finish")
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(20), flusher.shutdown())
        .await
        .expect("the flusher did not shut down")
        .unwrap();
    let v = &setup.verifier;
    assert_eq!((v.last_used_pending(), v.last_used_dropped()), (0, 0));
    for (token_id, _) in &setup.valid {
        assert_eq!(setup.last_used_at(token_id).await, Some(t1), "{token_id}");
    }
    setup.refused_have_none().await;
}

/// The same on SQLite: a storm of refusals with ids next to the accepted token's row (each
/// lookup decodes that row) notes nothing for it or its neighbours, and the flush writes
/// exactly the accepted token's time.
#[tokio::test]
async fn refusals_next_to_rows_note_nothing_sqlite() {
    let clock = Arc::new(ManualClock::new(t0()));
    let verifier = Verifier::builder(stores::sqlite().await)
        .clock(clock.clone() as Arc<dyn Clock>)
        .build();
    let ids = ["nnnnnnnnnn10", "nnnnnnnnnn20", "nnnnnnnnnn30"].map(id);
    let mut tokens = HashMap::new();
    for token_id in ids {
        let (text, secret) = canonical_token(&token_id);
        let hash = verifier.hasher().hash(secret.as_bytes());
        let mut rec = record(token_id, "team-1");
        rec.created_at = clock.now();
        verifier.store().insert(rec, hash).await.unwrap();
        tokens.insert(token_id, (text, secret));
    }
    let t1 = clock.now();
    expect_accepted(&verifier, &tokens[&ids[1]].0, &ids[1]).await;
    clock.advance(TimeDelta::minutes(1));
    for gap in [
        "nnnnnnnnnn09",
        "nnnnnnnnnn19",
        "nnnnnnnnnn21",
        "nnnnnnnnnn29",
        "nnnnnnnnnn31",
    ] {
        for (_, secret) in tokens.values() {
            let token = canonical_with(&id(gap), secret);
            expect_refused(&verifier, &token, RejectReason::UnknownToken, gap).await;
        }
    }
    for token_id in ids {
        let wrong = canonical_token(&token_id).0;
        expect_refused(&verifier, &wrong, RejectReason::WrongSecret, "wrong").await;
    }
    assert_eq!(
        (verifier.last_used_pending(), verifier.last_used_dropped()),
        (1, 0)
    );
    assert_eq!(verifier.flush_last_used().await.unwrap(), 1);
    for token_id in ids {
        let stored = expect_hit(verifier.store(), &token_id, "sqlite").await;
        let expected = (token_id == ids[1]).then_some(t1);
        assert_eq!(stored.record.last_used_at, expected, "{token_id}");
    }
}
