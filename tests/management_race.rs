//! "Revoke all" means all: a token being minted while its team's tokens are revoked does not
//! survive, even when the revocation lands between the caller's verification and the insert,
//! or (on PostgreSQL) when the revoke-all is held open while the insert commits.

#[path = "support/stores.rs"]
mod stores;
mod support;

use std::time::{Duration, Instant};

use apitoken::management::TokenApi;
use apitoken::middleware::AuthLayer;
use apitoken::{NewToken, Owner, TokenRecord, TokenStore, Verifier};
use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use sqlx::{Connection, Row};
use tower::ServiceExt;

#[tokio::test]
async fn a_token_minted_during_revoke_all_does_not_survive() {
    let store = support::GatedStore::default();
    let gate = store.gate();
    let verifier = Verifier::builder(store).build();
    let team = Owner::new("team-1").unwrap();
    let stolen = verifier
        .issuer()
        .issue(
            NewToken::new("stolen", team.clone())
                .scopes(["tokens:write"])
                .unwrap(),
        )
        .await
        .unwrap();
    let app = Router::new()
        .nest("/tokens", TokenApi::new(verifier.clone()).router())
        .layer(AuthLayer::new(verifier.clone()));

    gate.arm();
    let request = Request::post("/tokens")
        .header(
            "authorization",
            format!("Bearer {}", stolen.token.expose_secret()),
        )
        .header("content-type", "application/json")
        .body(Body::from(r#"{"name":"backdoor"}"#))
        .unwrap();
    let create = tokio::spawn(app.oneshot(request));
    gate.arrived().await;
    // The admin revokes everything of the team while the insert is in flight.
    assert_eq!(
        verifier
            .store()
            .revoke_owner(&team, verifier.now())
            .await
            .unwrap(),
        1
    );
    gate.release();

    let response = create.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let records = verifier.store().list_by_owner(&team).await.unwrap();
    assert_eq!(
        records.len(),
        2,
        "the stolen token and the one minted with it"
    );
    assert!(records.iter().all(TokenRecord::is_revoked), "{records:#?}");
}

/// Polls `query` (one integer) on `conn` until it is at least 1 or `done` says to stop;
/// bounded by a deadline.
async fn wait_for(
    conn: &mut sqlx::PgConnection,
    query: &'static str,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = sqlx::query(query)
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get(0);
        if n >= 1 || done() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {query}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_create_racing_a_revoke_all_held_open_does_not_survive() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let schema = stores::unique_name("race");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .connect(&url)
        .await
        .expect("PostgreSQL");
    let verifier = Verifier::builder(stores::postgres_on(pool, &schema).await).build();
    let team = Owner::new("team-1").unwrap();
    let stolen = verifier
        .issuer()
        .issue(
            NewToken::new("stolen", team.clone())
                .scopes(["tokens:write"])
                .unwrap(),
        )
        .await
        .unwrap();
    let app = Router::new()
        .nest("/tokens", TokenApi::new(verifier.clone()).router())
        .layer(AuthLayer::new(verifier.clone()));

    // Another session holds the stolen token's row, so the revoke-all's UPDATE, once it
    // runs, waits with its snapshot already taken: a revoke-all held open.
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM {schema}.apitoken_tokens WHERE id = $1 FOR UPDATE"
    )))
    .bind(stolen.record.id.as_str())
    .fetch_one(&mut holder)
    .await
    .unwrap();
    let revoke_all = tokio::spawn({
        let verifier = verifier.clone();
        let team = team.clone();
        async move { verifier.store().revoke_owner(&team, verifier.now()).await }
    });
    wait_for(
        &mut watcher,
        "SELECT count(*) FROM pg_stat_activity \
         WHERE wait_event_type = 'Lock' AND wait_event = 'transactionid' \
         AND query LIKE '%revoked_at%'",
        || false,
    )
    .await;

    // The team's own token creates another while the revoke-all is open.
    let request = Request::post("/tokens")
        .header(
            "authorization",
            format!("Bearer {}", stolen.token.expose_secret()),
        )
        .header("content-type", "application/json")
        .body(Body::from(r#"{"name":"backdoor"}"#))
        .unwrap();
    let create = tokio::spawn(app.oneshot(request));
    // Either the insert waits for the revoke-all (the owner lock), or it went through.
    wait_for(
        &mut watcher,
        "SELECT count(*) FROM pg_stat_activity \
         WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'",
        || create.is_finished(),
    )
    .await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();

    let revoked = revoke_all.await.unwrap().unwrap();
    let response = create.await.unwrap().unwrap();
    assert_eq!(
        revoked, 1,
        "only the stolen token existed when the revoke-all ran"
    );
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let records = verifier.store().list_by_owner(&team).await.unwrap();
    assert_eq!(
        records.len(),
        2,
        "the stolen token and the one minted with it"
    );
    assert!(records.iter().all(TokenRecord::is_revoked), "{records:#?}");
}

/// `POST /tokens/{id}/rotate` with `grace_seconds`, by `caller`.
fn rotate_request(caller: &str, target: &apitoken::TokenId, grace: i64) -> Request<Body> {
    Request::post(format!("/tokens/{target}/rotate"))
        .header("authorization", format!("Bearer {caller}"))
        .header("content-type", "application/json")
        .body(Body::from(format!(r#"{{"grace_seconds":{grace}}}"#)))
        .unwrap()
}

#[tokio::test]
async fn a_rotation_by_a_caller_revoked_meanwhile_does_not_survive_and_a_self_rotation_needs_no_recheck()
 {
    let store = support::GatedStore::default();
    let gate = store.gate();
    let verifier = Verifier::builder(store).build();
    let team = Owner::new("team-1").unwrap();
    let issue = |name: &str| {
        let issuer = verifier.issuer();
        let new = NewToken::new(name, team.clone())
            .scopes(["tokens:write"])
            .unwrap();
        async move { issuer.issue(new).await.unwrap() }
    };
    let app = Router::new()
        .nest("/tokens", TokenApi::new(verifier.clone()).router())
        .layer(AuthLayer::new(verifier.clone()));

    // A token rotating itself with no grace is revoked by the rotation itself: that is no
    // reason to withhold the new token.
    let own = issue("own").await;
    let response = app
        .clone()
        .oneshot(rotate_request(own.token.expose_secret(), &own.record.id, 0))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    // Another token rotated with no grace while the caller is revoked mid-rotation: the
    // caller is checked again, and what it minted does not survive it.
    let caller = issue("caller").await;
    let target = issue("target").await;
    gate.arm();
    let rotate = tokio::spawn(app.clone().oneshot(rotate_request(
        caller.token.expose_secret(),
        &target.record.id,
        0,
    )));
    gate.arrived().await;
    assert!(
        verifier
            .store()
            .revoke(&caller.record.id, verifier.now())
            .await
            .unwrap()
    );
    gate.release();
    let response = rotate.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let records = verifier.store().list_by_owner(&team).await.unwrap();
    let live: Vec<&str> = records
        .iter()
        .filter(|r| !r.is_revoked())
        .map(|r| r.name.as_str())
        .collect();
    // Only the self-rotated token's successor is left.
    assert_eq!(live, ["own"], "{records:#?}");
}

#[tokio::test]
async fn a_store_that_cannot_rotate_answers_501() {
    let (store, _) = support::FlakyStore::new();
    let verifier = Verifier::builder(store).build();
    let token = verifier
        .issuer()
        .issue(
            NewToken::new("t", Owner::new("team-1").unwrap())
                .scopes(["tokens:write"])
                .unwrap(),
        )
        .await
        .unwrap();
    let app = Router::new()
        .nest("/tokens", TokenApi::new(verifier.clone()).router())
        .layer(AuthLayer::new(verifier.clone()));
    let response = app
        .oneshot(rotate_request(
            token.token.expose_secret(),
            &token.record.id,
            60,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    assert_eq!(
        &body[..],
        br#"{"message":"This token store does not rotate tokens."}"#
    );
}

#[tokio::test]
async fn a_store_outage_during_a_rotation_answers_503_not_501() {
    let store = support::GatedStore::default();
    let gate = store.gate();
    let verifier = Verifier::builder(store).build();
    let token = verifier
        .issuer()
        .issue(
            NewToken::new("t", Owner::new("team-1").unwrap())
                .scopes(["tokens:write"])
                .unwrap(),
        )
        .await
        .unwrap();
    let app = Router::new()
        .nest("/tokens", TokenApi::new(verifier.clone()).router())
        .layer(AuthLayer::new(verifier.clone()));
    gate.fail_next_rotate();
    let response = app
        .oneshot(rotate_request(
            token.token.expose_secret(),
            &token.record.id,
            60,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}
