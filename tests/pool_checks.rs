//! The stores' own pools check a connection on acquire only after it sat unused
//! (`PostgresStore::pool_options`): a connection the database dropped while it was in
//! recent use is found by the query on it. That query must fail closed (503, never an
//! invalid token), and the pool must recover on its own within a few requests.

#[path = "support/stores.rs"]
mod stores;

use apitoken::{AuthErrorKind, NewToken, Owner, PostgresStore, ScopeRequirement, Verifier};
use stores::{postgres_url, unique_name};

/// A verifier on its own pool, a token it verified, and a way to end every backend of that
/// pool from another session, as a database restart would.
struct Setup {
    verifier: Verifier<PostgresStore>,
    token: apitoken::Secret,
    app: String,
    admin: PostgresStore,
}

async fn setup(url: &str) -> Setup {
    let app = unique_name("pool_check");
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = PostgresStore::connect(&format!("{url}{sep}application_name={app}"))
        .await
        .unwrap();
    let store = PostgresStore::builder(store.pool().clone())
        .schema(&unique_name("t"))
        .unwrap()
        .build();
    store.migrate().await.unwrap();
    let verifier = Verifier::builder(store).build();
    let token = verifier
        .issuer()
        .issue(NewToken::new("ci", Owner::new("team-1").unwrap()))
        .await
        .unwrap()
        .token;
    verifier
        .verify(token.expose_secret(), &ScopeRequirement::none())
        .await
        .unwrap();
    let admin = PostgresStore::connect(url).await.unwrap();
    Setup {
        verifier,
        token,
        app,
        admin,
    }
}

impl Setup {
    /// Ends every backend of the verifier's pool; how many there were.
    async fn end_backends(&self) -> usize {
        let ended: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&self.app)
        .fetch_all(self.admin.pool())
        .await
        .unwrap();
        assert!(!ended.is_empty(), "no backend of the pool was found");
        ended.len()
    }

    /// Verifies until accepted (at most 12 times): how many answers were "unavailable"
    /// first. Any other refusal fails the test.
    async fn unavailable_before_accepted(&self) -> usize {
        for unavailable in 0..12 {
            match self
                .verifier
                .verify(self.token.expose_secret(), &ScopeRequirement::none())
                .await
            {
                Ok(principal) => {
                    assert_eq!(principal.owner().as_str(), "team-1");
                    return unavailable;
                }
                Err(err) => assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable, "{err:?}"),
            }
        }
        panic!("the pool did not recover after 12 requests");
    }
}

#[tokio::test]
async fn a_connection_dropped_while_in_use_fails_closed_and_the_pool_recovers() {
    let Some(url) = postgres_url() else { return };
    let setup = setup(&url).await;
    let ended = setup.end_backends().await;
    // At most one request per ended connection, each refused as unavailable.
    let unavailable = setup.unavailable_before_accepted().await;
    assert!(
        unavailable <= ended,
        "{unavailable} unavailable, {ended} backends ended"
    );
    eprintln!("{ended} backends ended; {unavailable} requests unavailable before one passed");
}

#[tokio::test]
async fn a_connection_dropped_while_unused_is_found_by_the_pool_first() {
    let Some(url) = postgres_url() else { return };
    let setup = setup(&url).await;
    setup.end_backends().await;
    // Unused past the check's threshold (1 s): the pool pings before handing it out, finds
    // it dead, and opens another, so no request fails.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    assert_eq!(setup.unavailable_before_accepted().await, 0);
}
