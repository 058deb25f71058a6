//! The SQL stores look a token up with a query that returns its row or, on a miss, the next
//! row after it (`row_or_next` in `src/store/sql/mod.rs`), so a miss costs what a hit does.
//! That row must never stand in for the one asked for: every store here answers each id with
//! its own record and every id it does not hold with "no such token", next to rows on either
//! side, past both ends, in an empty table, and next to a corrupt row.
//!
//! PostgreSQL runs when `APITOKEN_TEST_POSTGRES_URL` is set (`.ci/run` sets it); otherwise
//! those tests print "skipped: …" and pass.

#[path = "support/stores.rs"]
mod stores;

use apitoken::{
    MemoryStore, Owner, SecretHasher, StoreErrorKind, TokenId, TokenRecord, TokenStore,
};
use chrono::{TimeZone, Utc};

fn record(id: TokenId, owner: &str) -> TokenRecord {
    let at = Utc.timestamp_opt(1_780_000_000, 0).unwrap();
    TokenRecord::new(id, Owner::new(owner).unwrap(), format!("token {id}"), at)
}

fn hash_of(id: &TokenId) -> apitoken::SecretHash {
    SecretHasher::sha256().hash(format!("secret of {id}").as_bytes())
}

/// `held` inserted (each found as itself), then every id of `missing` refused: before, between
/// and after the held ones. Checked on the empty store first.
async fn check<S: TokenStore>(store: &S, owner: &str, held: &[TokenId], missing: &[TokenId]) {
    for id in held.iter().chain(missing) {
        assert!(
            store.get(id).await.unwrap().is_none(),
            "empty store found {id}"
        );
    }
    for id in held {
        store.insert(record(*id, owner), hash_of(id)).await.unwrap();
    }
    for id in held {
        let found = store.get(id).await.unwrap().expect("a held id");
        assert_eq!(found.record.id, *id, "asked for {id}, got another row");
        assert_eq!(
            found.hash,
            hash_of(id),
            "{id} came back with another's hash"
        );
    }
    for id in missing {
        let found = store.get(id).await.unwrap();
        assert!(
            found.is_none(),
            "asked for {id}, which no row has, and got {:?}",
            found.map(|f| f.record.id)
        );
    }
}

/// Text ids: neighbours on either side, past both ends, and ids that differ from a held one
/// only in letter case or length (a case-insensitive or padding comparison would find them).
fn text_ids() -> (Vec<TokenId>, Vec<TokenId>) {
    let id = |text: &str| text.parse::<TokenId>().unwrap();
    let held = vec![id("mmmm0001"), id("mmmm0003"), id("mmmm0005")];
    let missing = vec![
        id("0000"),
        id("mmmm0000"),
        id("mmmm0002"),
        id("mmmm0004"),
        id("mmmm0006"),
        id("MMMM0003"),
        id("mmmm00030"),
        id("mmmm000"),
        id("zzzzzzzzzzzz"),
    ];
    (held, missing)
}

/// Sanctum's row numbers: the same, as numbers.
fn numeric_ids() -> (Vec<TokenId>, Vec<TokenId>) {
    let held = [11u64, 13, 15].map(TokenId::from_u64).to_vec();
    let missing = [1u64, 10, 12, 14, 16, 9_000_000_000]
        .map(TokenId::from_u64)
        .to_vec();
    (held, missing)
}

#[tokio::test]
async fn memory_store_answers_each_id_with_its_own_row() {
    let (held, missing) = text_ids();
    check(&MemoryStore::new(), "team-1", &held, &missing).await;
}

#[tokio::test]
async fn sqlite_store_answers_each_id_with_its_own_row() {
    let (held, missing) = text_ids();
    check(&stores::sqlite().await, "team-1", &held, &missing).await;
}

#[tokio::test]
async fn postgres_store_answers_each_id_with_its_own_row() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let (held, missing) = text_ids();
    check(&stores::postgres(&url).await, "team-1", &held, &missing).await;
}

#[tokio::test]
async fn sanctum_on_sqlite_answers_each_id_with_its_own_row() {
    let (held, missing) = numeric_ids();
    let sanctum = stores::sanctum_sqlite().await;
    check(&sanctum.store, "App\\Models\\User:1", &held, &missing).await;
}

#[tokio::test]
async fn sanctum_on_postgres_answers_each_id_with_its_own_row() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let (held, missing) = numeric_ids();
    let sanctum = stores::sanctum_postgres(&url).await;
    check(&sanctum.store, "App\\Models\\User:1", &held, &missing).await;
}

/// A corrupt row is an error when it is asked for, and nothing at all when it is only the
/// neighbour of an id no row has: a miss must not fail because of another token's row.
#[tokio::test]
async fn a_corrupt_neighbour_is_not_an_error() {
    let sanctum = stores::sanctum_sqlite().await;
    let table = &sanctum.table;
    for (id, token) in [(5, "not a hash"), (7, &"ab".repeat(32)[..])] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (id, tokenable_type, tokenable_id, name, token, abilities, \
             created_at, updated_at) VALUES (?1, 'App\\Models\\User', 1, 'n', ?2, '[\"*\"]', \
             '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        )))
        .bind(id)
        .bind(token)
        .execute(&sanctum.pool)
        .await
        .unwrap();
    }
    let store = &sanctum.store;
    let err = store.get(&TokenId::from_u64(5)).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err:?}");
    // The row after 4 is the corrupt 5, after 6 the sound 7; nothing comes after 8.
    for miss in [4, 6, 8] {
        let found = store.get(&TokenId::from_u64(miss)).await;
        assert!(
            matches!(found, Ok(None)),
            "{miss}: {:?}",
            found.map(|f| f.map(|f| f.record.id))
        );
    }
    let seven = store.get(&TokenId::from_u64(7)).await.unwrap().unwrap();
    assert_eq!(seven.record.id, TokenId::from_u64(7));
}
