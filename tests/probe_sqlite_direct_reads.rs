//! Attack pass on the SQLite stores' direct reads (`src/store/sql/sqlite_reads.rs`, commit
//! c159589): which file they read, what they do on a lock, whether they answer what the pool
//! answers for hostile rows, whether every committed write is seen, the idle-connection cap,
//! the tokio budget, and secret hygiene.
//!
//! Technique: a fresh store answers its first lookup through the pool (and learns the file);
//! the same lookup a second time, with the pool's only connection held by the test, can only
//! be answered by the direct path. So `pool answer` vs `direct answer` of one store compares
//! the two paths on the very same row.
//!
//! Probes that break a documented claim are `#[ignore = "BROKEN: ..."]`.

#[path = "support/stores.rs"]
mod stores;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use apitoken::{
    NewToken, Owner, SanctumStore, ScopePolicy, ScopeRequirement, SecretHash, SecretHasher,
    SqliteStore, StoreError, StoreErrorKind, StoredToken, TokenFormat, TokenId, TokenStore,
    Verifier,
};
use sqlx::Connection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};

const ACQUIRE: Duration = Duration::from_millis(300);

fn file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}.db", stores::unique_name(name)))
}

fn remove(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// A pool of one connection, giving up on an acquire after [`ACQUIRE`].
async fn one_connection(options: SqliteConnectOptions) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE)
        .connect_with(options)
        .await
        .unwrap()
}

fn wal(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
}

fn rollback(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Delete)
}

async fn native(options: SqliteConnectOptions) -> (SqlitePool, SqliteStore) {
    let pool = one_connection(options).await;
    let store = SqliteStore::builder(pool.clone())
        .query_timeout(Duration::from_secs(2))
        .build();
    store.migrate().await.unwrap();
    (pool, store)
}

fn need() -> ScopeRequirement {
    ScopeRequirement::all(["vps:read"]).unwrap()
}

fn new_token(name: &str) -> NewToken {
    NewToken::new(name, Owner::new("App\\Models\\User:1").unwrap())
        .scopes(["vps:read"])
        .unwrap()
}

/// A lookup's answer, comparable across paths: the error kind, or the record and hash.
fn summary(answer: &Result<Option<StoredToken>, StoreError>) -> String {
    match answer {
        Ok(None) => "none".to_owned(),
        Ok(Some(t)) => format!("some {:?} hash={}", t.record, t.hash.to_hex()),
        Err(e) => format!("error {:?}", e.kind()),
    }
}

/// `get(id)` of a fresh store on `pool`: first through the pool (first lookup), then with the
/// pool's one connection held (so only the direct path can answer).
async fn both_paths_get(pool: &SqlitePool, id: &str) -> (String, String) {
    let store = SqliteStore::builder(pool.clone())
        .query_timeout(Duration::from_secs(2))
        .build();
    let id = TokenId::new(id).unwrap();
    let by_pool = summary(&store.get(&id).await);
    let held = pool.acquire().await.unwrap();
    let direct = summary(&store.get(&id).await);
    drop(held);
    (by_pool, direct)
}

async fn exec(pool: &SqlitePool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

const HASH_A: &str = "X'0101010101010101010101010101010101010101010101010101010101010101'";

fn row(id: &str, hash: &str, name: &str, created: &str) -> String {
    format!(
        "INSERT INTO apitoken_tokens (id, secret_hash, name, owner, scopes, metadata, \
         created_at, allowed_ips) VALUES ({id}, {hash}, {name}, 'o', '', '{{}}', {created}, '')"
    )
}

// ---------------------------------------------------------------------------------------
// Claim 4: the same answers as the pool path, hostile rows (SqliteStore)
// ---------------------------------------------------------------------------------------

/// Hostile rows the two paths must read alike: each Corrupt on both, or the same record.
#[tokio::test]
async fn hostile_native_rows_read_alike_on_both_paths() {
    let path = file("probe-hostile-native");
    let (pool, _) = native(wal(&path)).await;
    let hash = |n: u8| format!("X'{}'", format!("{n:02x}").repeat(32));
    let cases: Vec<(&str, String)> = vec![
        ("10", row("'10'", &hash(10), "'fine'", "1000000")),
        ("11", row("'11'", &hash(11), "X'41'", "1000000")), // BLOB name
        (
            "12",
            row("'12'", &hash(12), "CAST(X'FF' AS TEXT)", "1000000"),
        ), // bad UTF-8
        ("13", row("'13'", &hash(13), "'x'", "1.5")),       // REAL time
        ("14", row("'14'", &hash(14), "'x'", "'abc'")),     // TEXT time
        ("15", row("'15'", &hash(15), "'x'", "9223372036854775807")), // out of range
        ("16", row("'16'", &hash(16), "'x'", "-9223372036854775808")),
        ("17", row("'17'", &hash(17), "'x'", "X'00'")), // BLOB time
        ("18", row("'18'", &hash(18), "'x'", "9e999")), // +inf REAL
        // A multibyte TEXT hash of 32 characters (64 bytes).
        (
            "19",
            row("'19'", &format!("'{}'", "é".repeat(32)), "'x'", "1"),
        ),
        ("2", row("'2'", &hash(2), "''", "1")), // empty name
    ];
    for (_, sql) in &cases {
        exec(&pool, sql).await;
    }
    exec(
        &pool,
        &format!(
            "INSERT INTO apitoken_tokens (id, secret_hash, name, owner, scopes, metadata, \
             created_at, allowed_ips) VALUES \
             ('20', {}, 'x', 'o', '', '[1]', 1, ''), \
             ('21', {}, 'x', 'o', '', 'not json', 1, ''), \
             ('22', {}, 'x', 'o', 'bad scope!', '{{}}', 1, ''), \
             ('23', {}, 'x', 'o', '', '{{}}', 1, 'nonsense'), \
             ('24', {}, 'x', '', '', '{{}}', 1, ''), \
             ('25', {}, 'x', 'o', '', X'7B7D', 1, ''), \
             ('26', {}, 'x', 'o', '', '{{}}', 1, ''), \
             ('3', {}, 'x', 'o', '', '{{}}', 1, '')",
            hash(20),
            hash(21),
            hash(22),
            hash(23),
            hash(24),
            hash(25),
            hash(26),
            hash(3),
        ),
    )
    .await;
    // The revoked_at of 26 is a huge negative integer.
    exec(
        &pool,
        "UPDATE apitoken_tokens SET revoked_at = -9000000000000000000 WHERE id = '26'",
    )
    .await;
    let mut ids: Vec<&str> = cases.iter().map(|(id, _)| *id).collect();
    ids.extend(["20", "21", "22", "23", "24", "25", "26", "3"]);
    // Neighbours: ids nobody has, whose next row is one of the above.
    ids.extend(["0", "100", "1", "110", "29"]);
    let mut diverged = Vec::new();
    for id in ids {
        let (by_pool, direct) = both_paths_get(&pool, id).await;
        if by_pool != direct {
            diverged.push(format!("get({id}): pool {by_pool} / direct {direct}"));
        }
    }
    assert!(diverged.is_empty(), "{diverged:#?}");
    remove(&path);
}

/// An id column that is not text (a BLOB id sorts after every text id): an error on both.
#[tokio::test]
async fn an_unreadable_id_is_an_error_on_both_paths_and_a_corrupt_neighbour_is_none() {
    let path = file("probe-blob-id");
    let (pool, _) = native(wal(&path)).await;
    exec(&pool, &row("'5'", HASH_A, "'x'", "1.5")).await; // corrupt neighbour
    exec(
        &pool,
        &row(
            "CAST('9' AS BLOB)",
            "X'0202020202020202020202020202020202020202020202020202020202020202'",
            "'x'",
            "1",
        ),
    )
    .await;
    // '4' finds the corrupt '5': none; 'zz' finds the BLOB id: an error.
    let (p, d) = both_paths_get(&pool, "4").await;
    assert_eq!((p.as_str(), d.as_str()), ("none", "none"));
    let (p, d) = both_paths_get(&pool, "zz").await;
    assert_eq!(p, "error Corrupt");
    assert_eq!(d, "error Corrupt");
    let (p, d) = both_paths_get(&pool, "5").await;
    assert_eq!((p.as_str(), d.as_str()), ("error Corrupt", "error Corrupt"));
    remove(&path);
}

/// `secret_hash` is a `BLOB` column with no STRICT typing: a 32-character TEXT value passes
/// its CHECK. sqlx reads `Vec<u8>` from TEXT too (`bytes.rs`: compatible with Blob | Text), so
/// the pool answers the token; rusqlite's `Vec<u8>` takes only a BLOB, so the direct path
/// answers Corrupt (503) for the same row.
#[tokio::test]
async fn a_text_secret_hash_reads_alike_on_both_paths() {
    let path = file("probe-text-hash");
    let (pool, _) = native(wal(&path)).await;
    exec(
        &pool,
        &row("'7'", &format!("'{}'", "a".repeat(32)), "'x'", "1"),
    )
    .await;
    let (by_pool, direct) = both_paths_get(&pool, "7").await;
    assert!(by_pool.starts_with("some"), "{by_pool}");
    assert_eq!(by_pool, direct);
    remove(&path);
}

// ---------------------------------------------------------------------------------------
// Claim 4: Sanctum
// ---------------------------------------------------------------------------------------

/// A Laravel-like table without the NOT NULLs (an older or hand-made migration).
const LOOSE_SANCTUM: &str = "create table personal_access_tokens (id integer primary key \
    autoincrement, tokenable_type varchar, tokenable_id integer, name text, token varchar, \
    abilities text, last_used_at datetime, expires_at datetime, created_at datetime, \
    updated_at datetime)";

async fn sanctum_pool(path: &Path) -> SqlitePool {
    let pool = one_connection(wal(path)).await;
    exec(&pool, LOOSE_SANCTUM).await;
    pool
}

fn sanctum_store(pool: &SqlitePool) -> SanctumStore {
    SanctumStore::sqlite(pool.clone())
        .query_timeout(Duration::from_secs(2))
        .build()
}

async fn both_paths_sanctum_get(pool: &SqlitePool, id: u64) -> (String, String) {
    let store = sanctum_store(pool);
    let id = TokenId::from_u64(id);
    let by_pool = summary(&store.get(&id).await);
    let held = pool.acquire().await.unwrap();
    let direct = summary(&store.get(&id).await);
    drop(held);
    (by_pool, direct)
}

async fn both_paths_sanctum_hash(pool: &SqlitePool, hex: &str) -> (String, String) {
    let store = sanctum_store(pool);
    let hash = SecretHash::from_hex(hex).unwrap();
    let by_pool = summary(&store.find_by_hash(&hash).await);
    let held = pool.acquire().await.unwrap();
    let direct = summary(&store.find_by_hash(&hash).await);
    drop(held);
    (by_pool, direct)
}

fn sanctum_row(id: i64, tokenable_id: &str, token: &str, times: [&str; 3]) -> String {
    format!(
        "INSERT INTO personal_access_tokens (id, tokenable_type, tokenable_id, name, token, \
         abilities, last_used_at, expires_at, created_at) VALUES \
         ({id}, 'App\\Models\\User', {tokenable_id}, 'n', {token}, '[\"*\"]', {}, {}, {})",
        times[0], times[1], times[2]
    )
}

fn hex_token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// Sanctum time columns of every kind, hostile ones included, by id and by hash.
#[tokio::test]
async fn hostile_sanctum_times_read_alike_on_both_paths() {
    let path = file("probe-sanctum-times");
    let pool = sanctum_pool(&path).await;
    let cases: Vec<[&str; 3]> = vec![
        ["'2026-01-02 10:00:00'", "NULL", "'2026-01-01 00:00:00'"],
        [
            "'2026-01-02 10:00:00+02:00'",
            "'2026-01-02T10:00:00Z'",
            "NULL",
        ],
        ["1767225600", "NULL", "2461041.5"], // unix seconds, julian day
        ["9223372036854775807", "NULL", "NULL"], // seconds out of range
        ["-9223372036854775808", "NULL", "NULL"],
        ["9e999", "NULL", "NULL"],               // +inf
        ["-9e999", "NULL", "NULL"],              // -inf
        ["1e300", "NULL", "NULL"],               // finite, out of range
        ["X'00'", "NULL", "NULL"],               // BLOB
        ["'yesterday'", "NULL", "NULL"],         // text no parser reads
        ["CAST(X'FF' AS TEXT)", "NULL", "NULL"], // bad UTF-8 text
        ["''", "NULL", "NULL"],
        ["0.0", "NULL", "-0.0"],
        [
            "'2026-01-02 10:00:00.123456789'",
            "NULL",
            "'2026-13-40 99:00:00'",
        ],
    ];
    for (i, times) in cases.iter().enumerate() {
        let n = u8::try_from(i + 1).unwrap();
        exec(
            &pool,
            &sanctum_row(i64::from(n), "42", &format!("'{}'", hex_token(n)), *times),
        )
        .await;
    }
    let mut diverged = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let n = u8::try_from(i + 1).unwrap();
        let (p, d) = both_paths_sanctum_get(&pool, u64::from(n)).await;
        if p != d {
            diverged.push(format!("get({n}) {case:?}: pool {p} / direct {d}"));
        }
        let (p, d) = both_paths_sanctum_hash(&pool, &hex_token(n)).await;
        if p != d {
            diverged.push(format!("hash({n}) {case:?}: pool {p} / direct {d}"));
        }
    }
    assert!(diverged.is_empty(), "{diverged:#?}");
    remove(&path);
}

/// Other Sanctum columns with hostile values that both paths refuse or read alike.
#[tokio::test]
async fn hostile_sanctum_columns_read_alike_on_both_paths() {
    let path = file("probe-sanctum-columns");
    let pool = sanctum_pool(&path).await;
    let t = ["NULL", "NULL", "NULL"];
    let rows = [
        sanctum_row(1, "'uuid-9f'", &format!("'{}'", hex_token(1)), t), // text tokenable_id
        sanctum_row(2, "X'4142'", &format!("'{}'", hex_token(2)), t),   // BLOB tokenable_id
        sanctum_row(3, "CAST(X'FF' AS TEXT)", &format!("'{}'", hex_token(3)), t),
        sanctum_row(4, "42", "NULL", t),      // NULL token
        sanctum_row(5, "42", "'not hex'", t), // bad token
        sanctum_row(6, "42", &format!("X'{}'", hex_token(6)), t), // BLOB token
        sanctum_row(7, "4.5", &format!("'{}'", hex_token(7)), t), // REAL tokenable_id
        sanctum_row(8, "-1", &format!("'{}'", hex_token(8)), t),
        sanctum_row(9, "42", &format!("'{}'", hex_token(9).to_uppercase()), t),
    ];
    for sql in &rows {
        exec(&pool, sql).await;
    }
    exec(
        &pool,
        &format!(
            "INSERT INTO personal_access_tokens (id, tokenable_type, tokenable_id, name, token, \
             abilities) VALUES \
             (10, 'T', 1, 'n', '{}', 5), \
             (11, 'T', 1, 'n', '{}', X'5B5D'), \
             (12, 'T', 1, 'n', '{}', 'not json'), \
             (13, 'T', 1, 'n', '{}', NULL), \
             (14, X'54', 1, 'n', '{}', NULL), \
             (15, 'T', 1, X'6E', '{}', NULL), \
             (-5, 'T', 1, 'n', '{}', NULL), \
             (9223372036854775807, 'T', 1, 'n', '{}', NULL)",
            hex_token(10),
            hex_token(11),
            hex_token(12),
            hex_token(13),
            hex_token(14),
            hex_token(15),
            hex_token(16),
            hex_token(17),
        ),
    )
    .await;
    let mut diverged = Vec::new();
    for n in [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16] {
        let (p, d) = both_paths_sanctum_get(&pool, u64::from(n)).await;
        if p != d {
            diverged.push(format!("get({n}): pool {p} / direct {d}"));
        }
    }
    for n in [1u8, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17] {
        let (p, d) = both_paths_sanctum_hash(&pool, &hex_token(n)).await;
        if p != d {
            diverged.push(format!("hash({n}): pool {p} / direct {d}"));
        }
    }
    let (p, d) = both_paths_sanctum_get(&pool, 9_223_372_036_854_775_807).await;
    if p != d {
        diverged.push(format!("get(max): pool {p} / direct {d}"));
    }
    assert!(diverged.is_empty(), "{diverged:#?}");
    remove(&path);
}

/// NULL in a text column the table does not declare NOT NULL (`name`, `tokenable_type`,
/// `tokenable_id`). sqlx decodes a NULL as `String` without complaint (its `try_get` skips
/// the type check for NULL and `text_owned` of NULL is ""), so the pool answers a token
/// named "" (or owned by ":42"); rusqlite's `String` refuses NULL, so the direct path answers
/// Corrupt: 503 where the pool says 200.
#[tokio::test]
async fn null_text_columns_read_alike_on_both_paths() {
    let path = file("probe-sanctum-nulls");
    let pool = sanctum_pool(&path).await;
    exec(
        &pool,
        &format!(
            "INSERT INTO personal_access_tokens (id, tokenable_type, tokenable_id, name, token, \
             abilities) VALUES \
             (1, 'T', 1, NULL, '{}', NULL), \
             (2, NULL, 42, 'n', '{}', NULL), \
             (3, 'T', NULL, 'n', '{}', NULL)",
            hex_token(1),
            hex_token(2),
            hex_token(3),
        ),
    )
    .await;
    let mut diverged = Vec::new();
    for n in [1u8, 2, 3] {
        let (p, d) = both_paths_sanctum_get(&pool, u64::from(n)).await;
        if p != d {
            diverged.push(format!("get({n}): pool {p} / direct {d}"));
        }
        let (p, d) = both_paths_sanctum_hash(&pool, &hex_token(n)).await;
        if p != d {
            diverged.push(format!("hash({n}): pool {p} / direct {d}"));
        }
    }
    assert!(diverged.is_empty(), "{diverged:#?}");
    remove(&path);
}

// ---------------------------------------------------------------------------------------
// Claim 1: which file
// ---------------------------------------------------------------------------------------

/// A native store on `path` with one token issued and looked up once through the pool (so
/// the file is learnt), plus the token text.
async fn learnt_store(
    options: SqliteConnectOptions,
) -> (
    SqlitePool,
    SqliteStore,
    Verifier<SqliteStore>,
    TokenId,
    String,
) {
    let (pool, store) = native(options).await;
    let verifier = Verifier::builder(store.clone()).build();
    let issued = verifier.issuer().issue(new_token("t")).await.unwrap();
    let token = issued.token.expose_secret().to_owned();
    assert!(store.get(&issued.record.id).await.unwrap().is_some());
    (pool, store, verifier, issued.record.id, token)
}

/// A copy of the store's file, in rollback mode (so it never adopts the original's `-wal`),
/// renamed over the original: a restore from backup, or a deploy that ships the file;
/// removing the old `-wal` and `-shm` first when `fresh_wal` (as a restore of
/// `tokens.db*` would).
async fn replace_with_copy_and(pool: &SqlitePool, path: &Path, fresh_wal: bool) {
    let copy = PathBuf::from(format!("{}.copy", path.display()));
    let _ = std::fs::remove_file(&copy);
    exec(pool, &format!("VACUUM INTO '{}'", copy.display())).await;
    let c = rusqlite::Connection::open(&copy).unwrap();
    let _: String = c
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .unwrap();
    drop(c);
    if fresh_wal {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    std::fs::rename(&copy, path).unwrap();
}

/// The ways a file gets replaced under its name: rollback journal; WAL with the old `-wal`
/// and `-shm` removed too (a restore of `tokens.db*`). (WAL with the old `-wal` left in place
/// "works" only because the new file adopts the old WAL, which is its own corruption risk.)
fn replacement_modes(path: &Path) -> [(&'static str, SqliteConnectOptions, bool); 2] {
    [
        ("rollback", rollback(path), false),
        ("wal, fresh -wal", wal(path), true),
    ]
}

/// The file replaced under the same name while the pool's connection still has the old one
/// open, in rollback mode, and a direct lookup opening the new one: SQLite refuses the pool's
/// write on the moved file (`SQLITE_READONLY_DBMOVED`, PermissionDenied), so no committed
/// write goes unseen. (In WAL mode with the old `-wal`/`-shm` removed the pool's write
/// succeeds into its unlinked file, lost to every other connection: SQLite's own hazard,
/// documented in `docs/stores.md`, not something a reader can mend.)
#[tokio::test]
async fn a_replaced_file_refuses_the_pool_s_writes_rather_than_splitting() {
    let path = file("probe-replaced");
    let (_pool, store, verifier, id, token) = learnt_store(rollback(&path)).await;
    replace_with_copy_and(store.pool(), &path, false).await;
    match store.revoke(&id, verifier.now()).await {
        Err(e) => assert_eq!(e.kind(), StoreErrorKind::PermissionDenied),
        Ok(revoked) => {
            assert!(revoked);
            let got = store.get(&id).await.unwrap().unwrap();
            assert!(got.record.revoked_at.is_some(), "revocation unseen");
            assert!(verifier.verify(&token, &need()).await.is_err());
        }
    }
    remove(&path);
}

/// The other way round: the pool's connection is renewed (idle timeout, max lifetime, a
/// broken connection) after the file was replaced, while an idle direct connection still
/// has the old file open. The path is checked once a second (`RECHECK`): after that, the
/// old connections are closed and a committed revocation is seen.
#[tokio::test]
async fn a_renewed_pool_connection_is_followed_by_the_direct_reads() {
    let mut broken = Vec::new();
    for (mode, options, fresh_wal) in replacement_modes(&file("probe-renewed")) {
        let path = options.get_filename().to_owned();
        let (pool, store, verifier, id, token) = learnt_store(options).await;
        // A direct lookup: one idle direct connection on the file as it is now.
        let held = pool.acquire().await.unwrap();
        assert!(store.get(&id).await.unwrap().is_some());
        drop(held);
        replace_with_copy_and(&pool, &path, fresh_wal).await;
        // The pool's connection goes away, as after its idle timeout; the next one opens the
        // new file.
        drop(pool.acquire().await.unwrap().detach());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(store.revoke(&id, verifier.now()).await.unwrap());
        let got = store.get(&id).await.unwrap().unwrap();
        if got.record.revoked_at.is_none() {
            broken.push(format!(
                "{mode}: get() answers the token unrevoked after revoke() returned true"
            ));
        }
        if verifier.verify(&token, &need()).await.is_ok() {
            broken.push(format!("{mode}: the revoked token verifies"));
        }
        remove(&path);
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

/// The file deleted (with its `-wal` and `-shm`): the pool's connection still has it open;
/// the direct path cannot open the name, never creates it, and hands the lookup to the
/// pool, which answers.
#[tokio::test]
async fn a_deleted_file_is_not_recreated_and_the_pool_answers() {
    let path = file("probe-deleted");
    let (pool, store, verifier, id, token) = learnt_store(wal(&path)).await;
    remove(&path);
    assert!(store.get(&id).await.unwrap().is_some());
    verifier.verify(&token, &need()).await.unwrap();
    assert!(!path.exists(), "the direct path created the file");
    // It was the pool that answered: with its connection held, nothing can.
    let held = pool.acquire().await.unwrap();
    assert_eq!(
        store.get(&id).await.unwrap_err().kind(),
        StoreErrorKind::Unavailable
    );
    drop(held);
    assert!(!path.exists());
}

/// `sqlite::memory:`, `sqlite:` (a temporary database) and a named `mode=memory` database:
/// every lookup goes through the pool, and none reads a file.
#[tokio::test]
async fn memory_and_temporary_databases_never_use_the_direct_path() {
    use std::str::FromStr;
    for url in ["sqlite::memory:", "sqlite://?mode=memory", "sqlite:"] {
        let options = SqliteConnectOptions::from_str(url).unwrap();
        let (pool, store) = native(options).await;
        let verifier = Verifier::builder(store.clone()).build();
        let issued = verifier.issuer().issue(new_token("m")).await.unwrap();
        for _ in 0..3 {
            assert!(
                store.get(&issued.record.id).await.unwrap().is_some(),
                "{url}"
            );
        }
        let held = pool.acquire().await.unwrap();
        let err = store.get(&issued.record.id).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{url}");
        drop(held);
    }
}

/// `SqliteStore::connect("sqlite:<file>?mode=memory")` with a real file of that name that
/// holds a token: the memory database never answers from the file.
#[tokio::test]
async fn connect_with_mode_memory_never_reads_the_named_file() {
    let path = file("probe-connect-memory");
    let (_pool, _store, _v, id, _t) = learnt_store(wal(&path)).await;
    let memory = SqliteStore::connect(&format!("sqlite:{}?mode=memory", path.display()))
        .await
        .unwrap();
    memory.migrate().await.unwrap();
    for _ in 0..5 {
        assert!(memory.get(&id).await.unwrap().is_none());
    }
    let memory = SqliteStore::connect("sqlite::memory:").await.unwrap();
    memory.migrate().await.unwrap();
    for _ in 0..5 {
        assert!(memory.get(&id).await.unwrap().is_none());
    }
    remove(&path);
}

/// `mode=ro` and `immutable=1` pools: the direct path answers (pool held), and with
/// `mode=ro` another connection's write is seen by the next direct lookup.
#[tokio::test]
async fn read_only_and_immutable_pools_answer_directly() {
    use std::str::FromStr;
    let path = file("probe-ro");
    let (wpool, writer, verifier, id, _t) = learnt_store(wal(&path)).await;
    // Everything in the main file: `immutable=1` reads no WAL.
    exec(&wpool, "PRAGMA wal_checkpoint(TRUNCATE)").await;
    for query in ["mode=ro", "immutable=1"] {
        let url = format!("sqlite://{}?{query}", path.display());
        let pool = one_connection(SqliteConnectOptions::from_str(&url).unwrap()).await;
        let store = SqliteStore::builder(pool.clone()).build();
        assert!(store.get(&id).await.unwrap().is_some(), "{query}");
        let held = pool.acquire().await.unwrap();
        let got = store.get(&id).await;
        assert!(
            got.as_ref().is_ok_and(|t| t.is_some()),
            "{query}: {:?}",
            got.err()
        );
        drop(held);
    }
    let pool = one_connection(
        SqliteConnectOptions::from_str(&format!("sqlite://{}?mode=ro", path.display())).unwrap(),
    )
    .await;
    let store = SqliteStore::builder(pool.clone()).build();
    assert!(store.get(&id).await.unwrap().is_some());
    assert!(writer.revoke(&id, verifier.now()).await.unwrap());
    let held = pool.acquire().await.unwrap();
    assert!(
        store
            .get(&id)
            .await
            .unwrap()
            .unwrap()
            .record
            .revoked_at
            .is_some()
    );
    drop(held);
    remove(&path);
}

/// A relative path, then the process changes directory to one holding another file of that
/// name: the direct path keeps reading the pool's file (SQLite reports the full path).
/// `set_current_dir` is process-wide; nextest runs each test in its own process.
#[tokio::test]
async fn a_relative_path_survives_a_change_of_directory() {
    let base = std::env::temp_dir().join(stores::unique_name("probe-cwd"));
    let (one, two) = (base.join("one"), base.join("two"));
    std::fs::create_dir_all(&one).unwrap();
    std::fs::create_dir_all(&two).unwrap();
    let before = std::env::current_dir().unwrap();
    std::env::set_current_dir(&one).unwrap();
    let pool = one_connection(
        SqliteConnectOptions::new()
            .filename("tokens.db")
            .create_if_missing(true),
    )
    .await;
    let store = SqliteStore::builder(pool.clone()).build();
    store.migrate().await.unwrap();
    let issued = Verifier::builder(store.clone())
        .build()
        .issuer()
        .issue(new_token("one"))
        .await
        .unwrap();
    assert_eq!(
        store
            .get(&issued.record.id)
            .await
            .unwrap()
            .unwrap()
            .record
            .name,
        "one"
    );
    // In `two`, a file of the same name whose token of that id is named "two".
    {
        let (_, other) = native(wal(&two.join("tokens.db"))).await;
        let mut record = issued.record.clone();
        record.name = "two".to_owned();
        other
            .insert(record, SecretHash::from_bytes([9; 32]))
            .await
            .unwrap();
    }
    std::env::set_current_dir(&two).unwrap();
    let held = pool.acquire().await.unwrap();
    let got = store.get(&issued.record.id).await.unwrap().unwrap();
    drop(held);
    std::env::set_current_dir(before).unwrap();
    assert_eq!(got.record.name, "one");
    let _ = std::fs::remove_dir_all(&base);
}

// ---------------------------------------------------------------------------------------
// Claim 2: never waiting, never a wrong verdict on a lock
// ---------------------------------------------------------------------------------------

async fn writer_conn(options: &SqliteConnectOptions) -> SqliteConnection {
    SqliteConnection::connect_with(options).await.unwrap()
}

/// Rollback journal, a writer holding RESERVED with an uncommitted revocation: readers are
/// allowed, the direct path answers the committed state (pool held), then the revocation
/// once it commits.
#[tokio::test]
async fn rollback_mode_reserved_writer_is_read_past_then_seen_once_committed() {
    let path = file("probe-rollback-reserved");
    let (pool, store, verifier, id, _t) = learnt_store(rollback(&path)).await;
    let mut w = writer_conn(&rollback(&path)).await;
    sqlx::raw_sql("BEGIN IMMEDIATE; UPDATE apitoken_tokens SET revoked_at = 1")
        .execute(&mut w)
        .await
        .unwrap();
    let held = pool.acquire().await.unwrap();
    let got = store.get(&id).await.unwrap().unwrap();
    assert!(got.record.revoked_at.is_none(), "read an uncommitted write");
    drop(held);
    sqlx::raw_sql("COMMIT").execute(&mut w).await.unwrap();
    let held = pool.acquire().await.unwrap();
    assert!(
        store
            .get(&id)
            .await
            .unwrap()
            .unwrap()
            .record
            .revoked_at
            .is_some()
    );
    drop(held);
    drop(verifier);
    remove(&path);
}

/// Rollback journal, a writer holding EXCLUSIVE: the direct read is busy at once and goes to
/// the pool, which waits (its busy timeout) and answers what committed meanwhile; with the
/// pool held it is Unavailable, never a stale or made-up answer.
#[tokio::test]
async fn rollback_mode_exclusive_writer_sends_the_lookup_to_the_pool() {
    let path = file("probe-rollback-exclusive");
    let options = rollback(&path).busy_timeout(Duration::from_millis(1500));
    let (pool, store, _verifier, id, _t) = learnt_store(options.clone()).await;
    let mut w = writer_conn(&options).await;
    sqlx::raw_sql("BEGIN EXCLUSIVE; UPDATE apitoken_tokens SET revoked_at = 1")
        .execute(&mut w)
        .await
        .unwrap();
    // With the pool held: Unavailable (the direct path did not answer).
    let held = pool.acquire().await.unwrap();
    assert_eq!(
        store.get(&id).await.unwrap_err().kind(),
        StoreErrorKind::Unavailable
    );
    drop(held);
    // With the pool free: it waits, the writer commits, it answers the committed state.
    let commit = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::raw_sql("COMMIT").execute(&mut w).await.unwrap();
        w
    });
    let started = std::time::Instant::now();
    let got = store.get(&id).await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(got.record.revoked_at.is_some());
    drop(commit.await.unwrap());
    remove(&path);
}

/// WAL: a writer in a held transaction never shows through, and its commit is seen by the
/// next direct lookup.
#[tokio::test]
async fn wal_mode_held_writer_is_invisible_until_commit() {
    let path = file("probe-wal-held");
    let (pool, store, _v, id, _t) = learnt_store(wal(&path)).await;
    let mut w = writer_conn(&wal(&path)).await;
    sqlx::raw_sql("BEGIN IMMEDIATE; UPDATE apitoken_tokens SET revoked_at = 1")
        .execute(&mut w)
        .await
        .unwrap();
    let held = pool.acquire().await.unwrap();
    for _ in 0..10 {
        assert!(
            store
                .get(&id)
                .await
                .unwrap()
                .unwrap()
                .record
                .revoked_at
                .is_none()
        );
    }
    sqlx::raw_sql("COMMIT").execute(&mut w).await.unwrap();
    assert!(
        store
            .get(&id)
            .await
            .unwrap()
            .unwrap()
            .record
            .revoked_at
            .is_some()
    );
    drop(held);
    remove(&path);
}

/// The store's own pool in `locking_mode = EXCLUSIVE`: after its first write it keeps the
/// file locked, so every direct read is busy and goes back to the pool, which answers.
#[tokio::test]
async fn a_pool_in_exclusive_locking_mode_still_answers_every_lookup() {
    let path = file("probe-pool-exclusive");
    let options = wal(&path).locking_mode(sqlx::sqlite::SqliteLockingMode::Exclusive);
    let (_pool, store, verifier, id, token) = learnt_store(options).await;
    for _ in 0..5 {
        verifier.verify(&token, &need()).await.unwrap();
    }
    assert!(store.revoke(&id, verifier.now()).await.unwrap());
    assert!(
        store
            .get(&id)
            .await
            .unwrap()
            .unwrap()
            .record
            .revoked_at
            .is_some()
    );
    assert!(verifier.verify(&token, &need()).await.is_err());
    remove(&path);
}

// ---------------------------------------------------------------------------------------
// Claim 3: read only
// ---------------------------------------------------------------------------------------

/// Many direct lookups (hits, misses, by hash) leave the file byte for byte as it was, and
/// make no journal.
#[tokio::test]
async fn direct_lookups_change_nothing_on_disk() {
    let path = file("probe-read-only");
    let (pool, store, _v, id, _t) = learnt_store(rollback(&path)).await;
    let hash = store.get(&id).await.unwrap().unwrap().hash;
    let before = std::fs::read(&path).unwrap();
    let held = pool.acquire().await.unwrap();
    for n in 0..200u64 {
        assert!(store.get(&id).await.unwrap().is_some());
        assert!(
            store
                .get(&TokenId::from_u64(n + 100))
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.find_by_hash(&hash).await.unwrap().is_some());
    }
    drop(held);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(!PathBuf::from(format!("{}-journal", path.display())).exists());
    remove(&path);
}

// ---------------------------------------------------------------------------------------
// Claim 5: every committed write is seen
// ---------------------------------------------------------------------------------------

/// Revocations racing lookups on a 2-worker runtime: a lookup that starts after `revoke`
/// returned sees it, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_after_a_revocation_returns_sees_it() {
    let path = file("probe-race-revoke");
    let (_pool, store) = native(wal(&path)).await;
    let verifier = Verifier::builder(store.clone()).build();
    for round in 0..20 {
        let issued = verifier.issuer().issue(new_token("r")).await.unwrap();
        let id = issued.record.id;
        assert!(store.get(&id).await.unwrap().is_some());
        let done = Arc::new(AtomicBool::new(false));
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let reader = {
            let (store, done, barrier) = (store.clone(), done.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                loop {
                    let after = done.load(Ordering::SeqCst);
                    let got = store.get(&id).await.unwrap().unwrap();
                    if after {
                        assert!(got.record.revoked_at.is_some(), "round {round}");
                        return;
                    }
                }
            })
        };
        barrier.wait().await;
        assert!(store.revoke(&id, verifier.now()).await.unwrap());
        done.store(true, Ordering::SeqCst);
        reader.await.unwrap();
    }
    remove(&path);
}

/// Rotations racing lookups of the old token: after `rotate` returns, the old token is
/// retired (expiring at once) and the new one is found, on the direct path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_racing_lookups_is_seen_once_it_returns() {
    let path = file("probe-race-rotate");
    let (_pool, store) = native(wal(&path)).await;
    let verifier = Verifier::builder(store.clone()).build();
    let mut current = verifier.issuer().issue(new_token("r")).await.unwrap();
    verifier
        .verify(current.token.expose_secret(), &need())
        .await
        .unwrap();
    for _ in 0..10 {
        let old = current.record.id;
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let spinner = {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                for _ in 0..50 {
                    let _ = store.get(&old).await.unwrap();
                }
            })
        };
        barrier.wait().await;
        let next = verifier
            .issuer()
            .rotate(&old, chrono::TimeDelta::zero())
            .await
            .unwrap();
        let old_now = store.get(&old).await.unwrap().unwrap();
        assert!(
            old_now.record.revoked_at.is_some() || old_now.record.expires_at.is_some(),
            "the old token is not retired after rotate returned"
        );
        assert!(store.get(&next.record.id).await.unwrap().is_some());
        assert!(
            verifier
                .verify(current.token.expose_secret(), &need())
                .await
                .is_err()
        );
        verifier
            .verify(next.token.expose_secret(), &need())
            .await
            .unwrap();
        spinner.await.unwrap();
        current = next;
    }
    remove(&path);
}

/// Writes by another connection (rusqlite, outside sqlx) with WAL checkpoints (TRUNCATE)
/// running alongside: each committed write is seen by the next direct lookup.
#[tokio::test]
async fn writes_and_truncating_checkpoints_by_other_connections_are_seen() {
    let path = file("probe-checkpoint");
    let (pool, store, _v, id, _t) = learnt_store(wal(&path)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let checkpoints = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.busy_timeout(Duration::from_millis(50)).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                n += 1;
            }
            n
        })
    };
    let w = rusqlite::Connection::open(&path).unwrap();
    w.busy_timeout(Duration::from_secs(2)).unwrap();
    let held = pool.acquire().await.unwrap();
    for n in 1..=300i64 {
        w.execute(
            "UPDATE apitoken_tokens SET last_used_at = ?1 WHERE id = ?2",
            rusqlite::params![n, id.as_str()],
        )
        .unwrap();
        let got = store.get(&id).await.unwrap().unwrap();
        assert_eq!(
            got.record.last_used_at.map(|t| t.timestamp_micros()),
            Some(n),
            "write {n} not seen"
        );
    }
    drop(held);
    stop.store(true, Ordering::SeqCst);
    assert!(checkpoints.join().unwrap() > 0);
    remove(&path);
}

// ---------------------------------------------------------------------------------------
// Claim 6: at most 8 idle connections
// ---------------------------------------------------------------------------------------

fn open_fds_on(path: &Path) -> usize {
    let want = std::fs::canonicalize(path).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| *target == want)
        .count()
}

/// `threads` threads, each on its own current-thread runtime, each looking `id` up 100 times
/// at once.
fn storm(store: &SqliteStore, id: TokenId, threads: usize) {
    let barrier = Arc::new(std::sync::Barrier::new(threads));
    let answered = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (store, barrier, answered) = (store.clone(), barrier.clone(), answered.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                barrier.wait();
                for _ in 0..100 {
                    if rt.block_on(store.get(&id)).unwrap().is_some() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in handles {
        t.join().unwrap();
    }
    assert_eq!(answered.load(Ordering::Relaxed), threads * 100);
}

/// 16 threads looking up at once, then fewer: the store keeps at most 8 idle direct
/// connections, and what it closes is closed. Measured as descriptors on the file: the
/// pool's one, plus at most 8. In rollback mode, where an idle connection holds no lock, so
/// SQLite closes a closed connection's descriptor at once (in WAL mode every connection
/// holds a SHARED lock on the file while open, and SQLite parks the descriptors of closed
/// ones until the last connection of the process closes: see the next probe).
#[test]
fn at_most_eight_idle_direct_connections_are_kept() {
    let path = file("probe-idle-cap");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pool, store, verifier, id, _t) = rt.block_on(learnt_store(rollback(&path)));
    assert_eq!(open_fds_on(&path), 1, "the pool's connection");
    storm(&store, id, 16);
    let after_storm = open_fds_on(&path);
    storm(&store, id, 2);
    let after_small = open_fds_on(&path);
    drop(verifier);
    drop(store);
    let store_dropped = open_fds_on(&path);
    assert!(
        after_storm <= 9 && after_small <= 9 && store_dropped <= 1,
        "descriptors on the file: after 16 at once {after_storm}, after 2 at once \
         {after_small}, with every store dropped {store_dropped} (the pool's own: 1)"
    );
    drop(pool);
    remove(&path);
}

/// The same storm twice: descriptors left by closed direct connections are reused, not
/// accumulated (SQLite parks a closed connection's descriptor while another connection of
/// the process holds a lock on the file, and reuses it for the next open).
#[test]
fn closed_direct_connections_do_not_accumulate_descriptors() {
    let path = file("probe-idle-reuse");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pool, store, _v, id, _t) = rt.block_on(learnt_store(wal(&path)));
    storm(&store, id, 16);
    let first = open_fds_on(&path);
    for _ in 0..3 {
        storm(&store, id, 16);
    }
    let later = open_fds_on(&path);
    assert!(later <= 17, "{first} then {later} descriptors");
    drop(pool);
    remove(&path);
}

// ---------------------------------------------------------------------------------------
// Claim 7: the tokio budget
// ---------------------------------------------------------------------------------------

/// A task looking tokens up in a loop on a current-thread runtime lets another task run
/// within a few hundred lookups (tokio's budget is 128).
#[tokio::test]
async fn a_lookup_loop_yields_to_other_tasks() {
    let path = file("probe-budget");
    let (pool, store, _v, id, _t) = learnt_store(wal(&path)).await;
    let hash = store.get(&id).await.unwrap().unwrap().hash;
    let held = pool.acquire().await.unwrap();
    for by_hash in [false, true] {
        let ran = Arc::new(AtomicBool::new(false));
        let other = {
            let ran = ran.clone();
            tokio::spawn(async move { ran.store(true, Ordering::SeqCst) })
        };
        let mut lookups = 0;
        while !ran.load(Ordering::SeqCst) && lookups < 5_000 {
            let found = if by_hash {
                store.find_by_hash(&hash).await.unwrap()
            } else {
                store.get(&id).await.unwrap()
            };
            assert!(found.is_some());
            lookups += 1;
        }
        assert!(lookups < 1_000, "the other task waited {lookups} lookups");
        other.await.unwrap();
    }
    drop(held);
    remove(&path);
}

/// The same for Sanctum.
#[tokio::test]
async fn a_sanctum_lookup_loop_yields_to_other_tasks() {
    let path = file("probe-budget-sanctum");
    let pool = sanctum_pool(&path).await;
    exec(
        &pool,
        &sanctum_row(
            1,
            "42",
            &format!("'{}'", hex_token(1)),
            ["NULL", "NULL", "NULL"],
        ),
    )
    .await;
    let store = sanctum_store(&pool);
    let id = TokenId::from_u64(1);
    assert!(store.get(&id).await.unwrap().is_some());
    let held = pool.acquire().await.unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let other = {
        let ran = ran.clone();
        tokio::spawn(async move { ran.store(true, Ordering::SeqCst) })
    };
    let mut lookups = 0;
    while !ran.load(Ordering::SeqCst) && lookups < 5_000 {
        assert!(store.get(&id).await.unwrap().is_some());
        lookups += 1;
    }
    assert!(lookups < 1_000, "the other task waited {lookups} lookups");
    other.await.unwrap();
    drop(held);
    remove(&path);
}

// ---------------------------------------------------------------------------------------
// Claim 8: no secret in errors, Debug or logs
// ---------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A Sanctum row whose token hash is valid but whose time is corrupt, verified on the direct
/// path: neither the secret, nor its hash (hex or bytes), appears in the error's Display
/// chain, its Debug, or any log line (TRACE, every target).
#[tokio::test]
async fn corrupt_rows_on_the_direct_path_leak_no_secret() {
    use tracing_subscriber::util::SubscriberInitExt;
    let logs = Captured::default();
    let _guard = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .set_default();

    let path = file("probe-secrets");
    let pool = sanctum_pool(&path).await;
    let (plain, hex) = stores::sanctum_plain_text("");
    exec(
        &pool,
        &sanctum_row(1, "42", &format!("'{hex}'"), ["X'00'", "NULL", "NULL"]),
    )
    .await;
    exec(
        &pool,
        &sanctum_row(
            2,
            "42",
            &format!("'{}'", hex_token(2)),
            ["NULL", "NULL", "NULL"],
        ),
    )
    .await;
    let store = sanctum_store(&pool);
    let verifier = Verifier::builder(store.clone())
        .format(TokenFormat::sanctum())
        .hasher(SecretHasher::sha256())
        .scope_policy(ScopePolicy::sanctum())
        .build();
    // Learn the file on another row, then every lookup of row 1 is direct.
    assert!(store.get(&TokenId::from_u64(2)).await.unwrap().is_some());
    let held = pool.acquire().await.unwrap();
    let text = format!("1|{plain}");
    let auth = verifier.verify(&text, &need()).await.unwrap_err();
    let by_hash = store
        .find_by_hash(&SecretHash::from_hex(&hex).unwrap())
        .await
        .unwrap_err();
    let by_id = store.get(&TokenId::from_u64(1)).await.unwrap_err();
    drop(held);
    assert_eq!(by_id.kind(), StoreErrorKind::Corrupt);
    assert_eq!(by_hash.kind(), StoreErrorKind::Corrupt);
    let bytes = SecretHash::from_hex(&hex).unwrap().as_bytes().to_vec();
    let everything = format!(
        "{auth} {auth:?} {} {by_hash:?} {} {by_id:?} {:?} {}",
        stores::error_chain(&by_hash),
        stores::error_chain(&by_id),
        store,
        String::from_utf8_lossy(&logs.0.lock().unwrap()),
    );
    for secret in [
        plain.as_str(),
        hex.as_str(),
        &hex.to_uppercase(),
        &format!("{bytes:?}"),
    ] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked: {everything}"
        );
    }

    // The native store: a corrupt row whose secret hash is valid.
    let npath = file("probe-secrets-native");
    let (npool, _) = native(wal(&npath)).await;
    exec(&npool, &row("'1'", HASH_A, "'x'", "1.5")).await;
    exec(
        &npool,
        &row(
            "'2'",
            "X'0202020202020202020202020202020202020202020202020202020202020202'",
            "'x'",
            "1",
        ),
    )
    .await;
    let nstore = SqliteStore::builder(npool.clone()).build();
    assert!(nstore.get(&TokenId::from_u64(2)).await.unwrap().is_some());
    let held = npool.acquire().await.unwrap();
    let err = nstore.get(&TokenId::from_u64(1)).await.unwrap_err();
    let err2 = nstore
        .find_by_hash(&SecretHash::from_bytes([1; 32]))
        .await
        .unwrap_err();
    drop(held);
    let everything = format!(
        "{err:?} {} {err2:?} {} {nstore:?} {}",
        stores::error_chain(&err),
        stores::error_chain(&err2),
        String::from_utf8_lossy(&logs.0.lock().unwrap())
    );
    for secret in [
        "0101010101010101010101010101010101010101010101010101010101010101",
        &format!("{:?}", [1u8; 32]),
        &format!("{:?}", [1u8; 32].to_vec()),
    ] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked: {everything}"
        );
    }
    remove(&path);
    remove(&npath);
}
