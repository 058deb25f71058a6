//! 10,000 verifications of one token cost one `UPDATE` per flush, counted by PostgreSQL
//! itself (a statement-level trigger), not by a wrapper. Needs `APITOKEN_TEST_POSTGRES_URL`.

#[path = "support/stores.rs"]
mod stores;

use apitoken::{NewToken, Owner, ScopeRequirement, TokenStore, Verifier};
use sqlx::AssertSqlSafe;

#[tokio::test]
async fn ten_thousand_verifications_cost_one_update_per_flush() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let pool = sqlx::PgPool::connect(&url).await.expect("PostgreSQL");
    let schema = stores::unique_name("lastused");
    let store = stores::postgres_on(pool.clone(), &schema).await;
    let counter = format!(
        "CREATE TABLE {schema}.update_count (n int NOT NULL); \
         INSERT INTO {schema}.update_count VALUES (0); \
         CREATE FUNCTION {schema}.count_update() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN UPDATE {schema}.update_count SET n = n + 1; RETURN NULL; END $$; \
         CREATE TRIGGER count_update AFTER UPDATE ON {schema}.apitoken_tokens \
         FOR EACH STATEMENT EXECUTE FUNCTION {schema}.count_update();"
    );
    sqlx::raw_sql(AssertSqlSafe(counter))
        .execute(&pool)
        .await
        .unwrap();
    let updates = || {
        let pool = pool.clone();
        let query = format!("SELECT n FROM {schema}.update_count");
        async move {
            let (n,): (i32,) = sqlx::query_as(AssertSqlSafe(query))
                .fetch_one(&pool)
                .await
                .unwrap();
            n
        }
    };

    let verifier = Verifier::builder(store).build();
    let issued = verifier
        .issuer()
        .issue(
            NewToken::new("hot", Owner::new("team-1").unwrap())
                .scopes(["vps:read"])
                .unwrap(),
        )
        .await
        .unwrap();
    let token = issued.token.expose_secret();
    let need = ScopeRequirement::all(["vps:read"]).unwrap();

    for round in 1..=2 {
        for _ in 0..10_000 {
            verifier.verify(token, &need).await.unwrap();
        }
        assert_eq!(updates().await, round - 1, "no write before the flush");
        assert_eq!(verifier.flush_last_used().await.unwrap(), 1);
        assert_eq!(
            updates().await,
            round,
            "one UPDATE for 10,000 verifications"
        );
        let stored = verifier
            .store()
            .get(&issued.record.id)
            .await
            .unwrap()
            .unwrap();
        assert!(stored.record.last_used_at.is_some());
    }
    // Nothing new to write: no statement at all.
    assert_eq!(verifier.flush_last_used().await.unwrap(), 0);
    assert_eq!(updates().await, 2);
}

/// A flush of the default buffer's worth (100,000 ids) to Laravel's table, on PostgreSQL and
/// on SQLite, in the chunks the flusher uses (`FLUSH_CHUNK`), each one statement: every chunk
/// well inside the 3 s deadline (it was one `UPDATE` per row in one transaction for the whole
/// batch, and failed at 3.06 s on PostgreSQL). Every row moves forward; a row already used
/// later is left alone.
#[tokio::test]
async fn a_full_buffer_flushes_to_laravels_table_within_the_deadline() {
    use chrono::{TimeDelta, TimeZone, Utc};
    const ROWS: i64 = 100_000;
    let at = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
    let later = "2026-12-01 00:00:00";
    let batch: Vec<(apitoken::TokenId, chrono::DateTime<Utc>)> = (1..=ROWS as u64)
        .map(|n| {
            (
                apitoken::TokenId::from_u64(n),
                at - TimeDelta::seconds(n as i64 % 7),
            )
        })
        .collect();

    let sqlite = stores::sanctum_sqlite().await;
    let fill = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) \
         INSERT INTO {t} (id, tokenable_type, tokenable_id, name, token, abilities, created_at) \
         SELECT i, 'App\\Models\\User', 1, 'n', printf('%064d', i), '[\"*\"]', '2026-01-01 00:00:00' FROM n",
        t = sqlite.table
    );
    sqlx::raw_sql(AssertSqlSafe(fill))
        .execute(&sqlite.pool)
        .await
        .unwrap();
    let set_later = format!(
        "UPDATE {} SET last_used_at = '{later}' WHERE id = 1",
        sqlite.table
    );
    sqlx::raw_sql(AssertSqlSafe(set_later))
        .execute(&sqlite.pool)
        .await
        .unwrap();
    let (total, slowest) = flush_in_chunks(&sqlite.store, &batch).await;
    eprintln!("Sanctum/SQLite: {ROWS} rows in {total:?}, slowest chunk {slowest:?}");
    let count = format!(
        "SELECT count(*) FROM {} WHERE last_used_at IS NOT NULL",
        sqlite.table
    );
    let (n,): (i64,) = sqlx::query_as(AssertSqlSafe(count))
        .fetch_one(&sqlite.pool)
        .await
        .unwrap();
    assert_eq!(n, ROWS);
    let first = format!("SELECT last_used_at FROM {} WHERE id = 1", sqlite.table);
    let (kept,): (String,) = sqlx::query_as(AssertSqlSafe(first))
        .fetch_one(&sqlite.pool)
        .await
        .unwrap();
    assert_eq!(kept, later, "forward only");

    let Some(url) = stores::postgres_url() else {
        return;
    };
    let pg = stores::sanctum_postgres(&url).await;
    let fill = format!(
        "INSERT INTO \"{t}\" (id, tokenable_type, tokenable_id, name, token, abilities, created_at) \
         SELECT i, 'App\\Models\\User', 1, 'n', lpad(i::text, 64, '0'), '[\"*\"]', '2026-01-01' \
         FROM generate_series(1, {ROWS}) AS i",
        t = pg.table
    );
    sqlx::raw_sql(AssertSqlSafe(fill))
        .execute(&pg.pool)
        .await
        .unwrap();
    let set_later = format!(
        "UPDATE \"{}\" SET last_used_at = '{later}' WHERE id = 1",
        pg.table
    );
    sqlx::raw_sql(AssertSqlSafe(set_later))
        .execute(&pg.pool)
        .await
        .unwrap();
    let (total, slowest) = flush_in_chunks(&pg.store, &batch).await;
    eprintln!("Sanctum/PostgreSQL: {ROWS} rows in {total:?}, slowest chunk {slowest:?}");
    let count = format!(
        "SELECT count(*) FROM \"{}\" WHERE last_used_at IS NOT NULL",
        pg.table
    );
    let (n,): (i64,) = sqlx::query_as(AssertSqlSafe(count))
        .fetch_one(&pg.pool)
        .await
        .unwrap();
    assert_eq!(n, ROWS);
    let first = format!(
        "SELECT last_used_at::text FROM \"{}\" WHERE id = 1",
        pg.table
    );
    let (kept,): (String,) = sqlx::query_as(AssertSqlSafe(first))
        .fetch_one(&pg.pool)
        .await
        .unwrap();
    assert_eq!(kept, later, "forward only");
}

/// Writes `batch` as the flusher does; the total time and the slowest chunk's.
async fn flush_in_chunks<S: TokenStore>(
    store: &S,
    batch: &[(apitoken::TokenId, chrono::DateTime<chrono::Utc>)],
) -> (std::time::Duration, std::time::Duration) {
    let started = std::time::Instant::now();
    let mut slowest = std::time::Duration::ZERO;
    for chunk in batch.chunks(apitoken::last_used::FLUSH_CHUNK) {
        let chunk_started = std::time::Instant::now();
        store
            .record_last_used_batch(chunk)
            .await
            .expect("each chunk within the deadline");
        slowest = slowest.max(chunk_started.elapsed());
    }
    (started.elapsed(), slowest)
}
