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
