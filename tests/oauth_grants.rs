//! The `GrantStore` contract, kept by `MemoryGrantStore` and `PostgresGrantStore` alike:
//! round trips, single-use rotation and codes (also under concurrency), family revocation and
//! purge. The PostgreSQL half needs `APITOKEN_TEST_POSTGRES_URL` and prints "skipped"
//! without it.

#[path = "support/stores.rs"]
mod stores;

use std::sync::Arc;

use apitoken::oauth::{
    AuthorizationCodeRecord, GrantFamily, GrantStore, MemoryGrantStore, PostgresGrantStore,
    RefreshTokenRecord,
};
use apitoken::{Owner, ScopeSet, SecretHasher, TokenId};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

use stores::{postgres_url, unique_name};

fn id(text: &str) -> TokenId {
    text.parse().unwrap()
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn refresh(text: &str, family: &str, at: DateTime<Utc>) -> RefreshTokenRecord {
    RefreshTokenRecord::new(
        id(text),
        id(family),
        SecretHasher::sha256().hash(text.as_bytes()),
        at,
    )
}

fn family(name: &str) -> GrantFamily {
    GrantFamily::new(
        id(name),
        id("client1"),
        Owner::new("user-7").unwrap(),
        ScopeSet::parse("db:read db:write").unwrap(),
        now(),
    )
}

fn code(name: &str) -> AuthorizationCodeRecord {
    AuthorizationCodeRecord::new(
        id(name),
        SecretHasher::sha256().hash(name.as_bytes()),
        id("client1"),
        "https://app.example/callback".to_owned(),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".to_owned(),
        Owner::new("user-7").unwrap(),
        ScopeSet::parse("db:read").unwrap(),
        id("fam9"),
        now(),
        now() + TimeDelta::seconds(60),
    )
}

/// Everything a `GrantStore` promises, on a fresh, empty store.
async fn contract<G: GrantStore + 'static>(store: Arc<G>) {
    let hour = TimeDelta::hours(1);

    // Round trips.
    store
        .insert_family(family("fam1"), refresh("rt1", "fam1", now()))
        .await
        .unwrap();
    assert_eq!(
        store.family(&id("fam1")).await.unwrap(),
        Some(family("fam1"))
    );
    assert_eq!(
        store.refresh_token(&id("rt1")).await.unwrap(),
        Some(refresh("rt1", "fam1", now()))
    );
    assert!(store.family(&id("nofam")).await.unwrap().is_none());
    assert!(store.refresh_token(&id("nort")).await.unwrap().is_none());
    // Ids are unique.
    assert!(
        store
            .insert_family(family("fam1"), refresh("rt9", "fam1", now()))
            .await
            .is_err()
    );

    // Rotation: once per token, noting the access token.
    let at1 = (id("at1"), now() + hour);
    assert!(
        store
            .rotate_refresh(
                &id("rt1"),
                refresh("rt2", "fam1", now()).in_generation(1),
                at1,
                now()
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .rotate_refresh(&id("rt1"), refresh("rt3", "fam1", now()), at1, now())
            .await
            .unwrap()
    );
    assert_eq!(
        store.family(&id("fam1")).await.unwrap().unwrap().generation,
        1,
        "the family's generation is its newest token's"
    );
    assert_eq!(
        store
            .refresh_token(&id("rt2"))
            .await
            .unwrap()
            .unwrap()
            .generation,
        1
    );
    assert!(store.refresh_token(&id("rt3")).await.unwrap().is_none());
    assert_eq!(
        store
            .refresh_token(&id("rt1"))
            .await
            .unwrap()
            .unwrap()
            .used_at,
        Some(now())
    );
    assert_eq!(
        store
            .family(&id("fam1"))
            .await
            .unwrap()
            .unwrap()
            .access_tokens,
        vec![at1]
    );
    // A token cannot be rotated into another family, nor an unknown one at all.
    assert!(
        !store
            .rotate_refresh(&id("rt2"), refresh("rt4", "fam0", now()), at1, now())
            .await
            .unwrap()
    );
    assert!(
        !store
            .rotate_refresh(&id("nort"), refresh("rt4", "fam1", now()), at1, now())
            .await
            .unwrap()
    );

    // Concurrent rotations of one token: exactly one wins.
    let later = now() + TimeDelta::minutes(30);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..8 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let new = refresh(&format!("race{n}"), "fam1", later).in_generation(2);
            store
                .rotate_refresh(
                    &id("rt2"),
                    new,
                    (id(&format!("atr{n}")), later + hour),
                    later,
                )
                .await
        });
    }
    let wins = tasks
        .join_all()
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(wins, 1);
    // The winner's access token is noted beside the first, which has not expired yet.
    let noted = store
        .family(&id("fam1"))
        .await
        .unwrap()
        .unwrap()
        .access_tokens;
    assert_eq!(noted.len(), 2, "{noted:?}");
    // A family holds its first token, its current one and the one it replaced, no more.
    assert!(store.refresh_token(&id("rt1")).await.unwrap().is_some());
    assert!(store.refresh_token(&id("rt2")).await.unwrap().is_some());
    let mut winner = None;
    for n in 0..8 {
        let name = format!("race{n}");
        if store.refresh_token(&id(&name)).await.unwrap().is_some() {
            assert!(winner.replace(name).is_none(), "two winners");
        }
    }
    let winner = winner.expect("one winner");
    assert_eq!(
        store.family(&id("fam1")).await.unwrap().unwrap().generation,
        2
    );
    assert!(
        store
            .rotate_refresh(
                &id(&winner),
                refresh("rt4", "fam1", later).in_generation(3),
                (id("at4"), later + hour),
                later
            )
            .await
            .unwrap()
    );
    assert!(
        store.refresh_token(&id("rt2")).await.unwrap().is_none(),
        "generation 1 is forgotten at generation 3"
    );
    assert!(store.refresh_token(&id("rt1")).await.unwrap().is_some());
    assert!(store.refresh_token(&id(&winner)).await.unwrap().is_some());
    let noted = store
        .family(&id("fam1"))
        .await
        .unwrap()
        .unwrap()
        .access_tokens;
    assert_eq!(noted.len(), 3, "{noted:?}");

    // Revocation: returns the family with its access tokens; a revoked family rotates no more.
    let revoked = store
        .revoke_family(&id("fam1"), later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(later));
    assert_eq!(revoked.access_tokens, noted);
    // Revoking again keeps the first time.
    let again = store
        .revoke_family(&id("fam1"), later + hour)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.revoked_at, Some(later));
    assert!(
        store
            .revoke_family(&id("nofam"), later)
            .await
            .unwrap()
            .is_none()
    );

    // Codes: round trip, unique, used once (also under concurrency).
    store.insert_code(code("code1")).await.unwrap();
    assert_eq!(store.code(&id("code1")).await.unwrap(), Some(code("code1")));
    assert!(store.insert_code(code("code1")).await.is_err());
    // Eight redemptions at once, each bringing its own first refresh token: one wins, and
    // the family it stored is the only one, with only its refresh token.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..8 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let mut issued = family("famc");
            issued.add_access_token(id("atc"), now() + hour, now());
            let first = refresh(&format!("rc{n}"), "famc", now());
            let won = store
                .redeem_code(&id("code1"), now(), issued, Some(first))
                .await
                .unwrap();
            (n, won)
        });
    }
    let winners: Vec<_> = tasks
        .join_all()
        .await
        .into_iter()
        .filter(|(_, won)| *won)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(
        store.code(&id("code1")).await.unwrap().unwrap().used_at,
        Some(now())
    );
    let stored = store.family(&id("famc")).await.unwrap().unwrap();
    assert_eq!(stored.access_tokens, vec![(id("atc"), now() + hour)]);
    for n in 0..8 {
        let kept = store.refresh_token(&id(&format!("rc{n}"))).await.unwrap();
        assert_eq!(kept.is_some(), n == winners[0], "rc{n}");
    }
    // A used or unknown code stores nothing.
    assert!(
        !store
            .redeem_code(&id("code1"), now(), family("famd"), None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .redeem_code(&id("nocode"), now(), family("famd"), None)
            .await
            .unwrap()
    );
    assert!(store.family(&id("famd")).await.unwrap().is_none());
    // A redemption without a refresh token (a client without that grant) still stores the
    // family, so a replay can revoke its access token.
    let mut code2 = code("code2");
    code2.family = id("famx");
    store.insert_code(code2).await.unwrap();
    let mut issued = family("famx");
    let day20 = now() + TimeDelta::days(20);
    issued.add_access_token(id("atx"), day20 + hour, now());
    assert!(
        store
            .redeem_code(&id("code2"), now(), issued, None)
            .await
            .unwrap()
    );
    let revoked = store
        .revoke_family(&id("famx"), now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.access_tokens, vec![(id("atx"), day20 + hour)]);

    // Purge: expired codes go; a family goes only with its newest refresh token.
    store
        .insert_family(family("fam2"), refresh("old2", "fam2", now()))
        .await
        .unwrap();
    assert!(
        store
            .rotate_refresh(
                &id("old2"),
                refresh("new2", "fam2", day20),
                (id("at2"), day20 + hour),
                day20
            )
            .await
            .unwrap()
    );
    let cut = now() + TimeDelta::days(10);
    // code1 and code2 expired; fam1's tokens are all older than the cut: code1, code2, fam1
    // and its three tokens (rt1, the race's winner, rt4), famc and its one refresh token
    // (its access token expired long ago). famx has no refresh token, but its access token
    // is still live on day 20: it stays.
    assert_eq!(store.purge(day20, cut).await.unwrap(), 8);
    assert!(
        store.family(&id("famx")).await.unwrap().is_some(),
        "a family whose access token is live stays for a replay to revoke"
    );
    assert!(store.family(&id("famc")).await.unwrap().is_none());
    assert_eq!(store.purge(day20 + hour, cut).await.unwrap(), 1);
    assert!(
        store.refresh_token(&id("old2")).await.unwrap().is_some(),
        "a live family keeps its rotated tokens"
    );
    assert!(store.family(&id("fam1")).await.unwrap().is_none());
    assert!(store.code(&id("code1")).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_grant_store_keeps_the_contract() {
    contract(Arc::new(MemoryGrantStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_grant_store_keeps_the_contract() {
    let Some(url) = postgres_url() else { return };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .expect("APITOKEN_TEST_POSTGRES_URL is set but PostgreSQL is unreachable");
    let store = PostgresGrantStore::with_schema(pool, &unique_name("g")).expect("schema name");
    store.migrate().await.expect("migrate");
    // Twice: migrations are idempotent.
    store.migrate().await.expect("migrate again");
    contract(Arc::new(store)).await;
}

/// Tables as `migrate` made them before refresh tokens had generations (schema version 1, the
/// first released, which recorded no version): `migrate` adds the
/// column, what they held reads back as generation 0 and rotates on, and a second `migrate`
/// does not wait behind an open reader (it changes nothing, so it locks nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_grant_tables_from_before_generations_are_upgraded_in_place() {
    let Some(url) = postgres_url() else { return };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("APITOKEN_TEST_POSTGRES_URL is set but PostgreSQL is unreachable");
    let schema = unique_name("g");
    let old_ddl = format!(
        "CREATE SCHEMA {schema}; \
         CREATE TABLE {schema}.apitoken_oauth_families ( \
             id TEXT COLLATE \"C\" PRIMARY KEY, client_id TEXT COLLATE \"C\" NOT NULL, \
             owner TEXT COLLATE \"C\" NOT NULL, scopes TEXT NOT NULL, \
             created_at TIMESTAMPTZ NOT NULL, revoked_at TIMESTAMPTZ, \
             access_tokens JSONB NOT NULL DEFAULT '[]'); \
         CREATE TABLE {schema}.apitoken_oauth_refresh_tokens ( \
             id TEXT COLLATE \"C\" PRIMARY KEY, family TEXT COLLATE \"C\" NOT NULL, \
             secret_hash BYTEA NOT NULL, created_at TIMESTAMPTZ NOT NULL, used_at TIMESTAMPTZ); \
         CREATE TABLE {schema}.apitoken_oauth_codes ( \
             id TEXT COLLATE \"C\" PRIMARY KEY, secret_hash BYTEA NOT NULL, \
             client_id TEXT COLLATE \"C\" NOT NULL, redirect_uri TEXT NOT NULL, \
             code_challenge TEXT NOT NULL, owner TEXT COLLATE \"C\" NOT NULL, \
             scopes TEXT NOT NULL, family TEXT COLLATE \"C\" NOT NULL, \
             created_at TIMESTAMPTZ NOT NULL, expires_at TIMESTAMPTZ NOT NULL, \
             used_at TIMESTAMPTZ); \
         INSERT INTO {schema}.apitoken_oauth_families (id, client_id, owner, scopes, created_at) \
             VALUES ('fam1', 'client', 'user', 'db:read', '2026-01-01T00:00:00Z'); \
         INSERT INTO {schema}.apitoken_oauth_refresh_tokens (id, family, secret_hash, created_at) \
             VALUES ('rt1', 'fam1', '\\x{}', '2026-01-01T00:00:00Z');",
        "ab".repeat(32)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(old_ddl))
        .execute(&pool)
        .await
        .unwrap();
    let store = PostgresGrantStore::with_schema(pool.clone(), &schema).unwrap();
    store.migrate().await.expect("upgrade");
    let family = store.family(&id("fam1")).await.unwrap().unwrap();
    assert_eq!(family.generation, 0);
    assert_eq!(
        store
            .refresh_token(&id("rt1"))
            .await
            .unwrap()
            .unwrap()
            .generation,
        0
    );
    let next = refresh("rt2", "fam1", now()).in_generation(1);
    assert!(
        store
            .rotate_refresh(&id("rt1"), next, (id("at1"), now()), now())
            .await
            .unwrap()
    );
    assert_eq!(
        store.family(&id("fam1")).await.unwrap().unwrap().generation,
        1
    );

    // A report holds a read lock on both tables; migrating again must not queue behind it.
    let mut reader = pool.begin().await.unwrap();
    for table in ["apitoken_oauth_families", "apitoken_oauth_refresh_tokens"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {schema}.{table}"
        )))
        .execute(&mut *reader)
        .await
        .unwrap();
    }
    let again = tokio::time::timeout(std::time::Duration::from_secs(5), store.migrate()).await;
    assert!(matches!(again, Ok(Ok(()))), "{again:?}");
    reader.rollback().await.unwrap();
}
