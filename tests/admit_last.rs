//! The admit step (the rate limit) really runs last: a request refused for its scopes, by the
//! layer's own requirement or by a route's `RequireScopesLayer`, spends no rate-limit budget.

use std::convert::Infallible;
use std::sync::Arc;

use apitoken::middleware::{AuthLayer, RequireScopesLayer};
use apitoken::rate_limit::{MemoryRateLimiter, RateLimit, RateLimitPolicy, RedisRateLimiter};
use apitoken::{MemoryStore, NewToken, Owner, ScopeRequirement, Verifier};
use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt, service_fn};

async fn ok(_: Request<String>) -> Result<Response<String>, Infallible> {
    Ok(Response::new("ok".to_owned()))
}

fn get(token: &str) -> Request<String> {
    Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .body(String::new())
        .unwrap()
}

async fn token_with(verifier: &Verifier<MemoryStore>, scopes: &[&str]) -> String {
    let new = NewToken::new("ci", Owner::new("team-1").unwrap())
        .scopes(scopes.iter().copied())
        .unwrap();
    let issued = verifier.issuer().issue(new).await.unwrap();
    issued.token.expose_secret().to_owned()
}

#[tokio::test]
async fn a_route_refusing_for_scopes_spends_no_budget() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = token_with(&verifier, &["vps:read"]).await;
    let limiter = Arc::new(MemoryRateLimiter::new());
    let layer = AuthLayer::new(verifier).rate_limit(
        Arc::clone(&limiter),
        RateLimitPolicy::new(RateLimit::per_minute(2)),
    );
    let writes = layer.clone().layer(
        RequireScopesLayer::all(["vps:write"])
            .unwrap()
            .layer(service_fn(ok)),
    );
    let reads = layer.layer(
        RequireScopesLayer::all(["vps:read"])
            .unwrap()
            .layer(service_fn(ok)),
    );

    for _ in 0..5 {
        let response = writes.clone().oneshot(get(&token)).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        // No budget fields on an answer whose budget was given back.
        assert!(response.headers().get("ratelimit").is_none());
    }
    // The whole budget of two is still there, and no more.
    for _ in 0..2 {
        let response = reads.clone().oneshot(get(&token)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = reads.clone().oneshot(get(&token)).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_layers_own_requirement_refuses_before_the_budget_is_spent() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = token_with(&verifier, &["vps:read"]).await;
    let limiter = Arc::new(MemoryRateLimiter::new());
    let policy = RateLimitPolicy::new(RateLimit::per_minute(2));
    let writes = AuthLayer::new(verifier.clone())
        .require(ScopeRequirement::all(["vps:write"]).unwrap())
        .rate_limit(Arc::clone(&limiter), policy.clone())
        .layer(service_fn(ok));
    let reads = AuthLayer::new(verifier)
        .rate_limit(Arc::clone(&limiter), policy)
        .layer(service_fn(ok));

    for _ in 0..5 {
        let response = writes.clone().oneshot(get(&token)).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    for _ in 0..2 {
        assert_eq!(
            reads.clone().oneshot(get(&token)).await.unwrap().status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        reads.clone().oneshot(get(&token)).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_route_refusal_gives_the_budget_back_in_redis_too() {
    let Ok(url) = std::env::var("APITOKEN_TEST_REDIS_URL") else {
        eprintln!("skipped: set APITOKEN_TEST_REDIS_URL to run this test");
        return;
    };
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = token_with(&verifier, &["vps:read"]).await;
    let prefix = format!("apitoken-test:admit-last:{}:", std::process::id());
    let limiter = RedisRateLimiter::connect(&url)
        .await
        .unwrap()
        .prefix(&prefix);
    let layer = AuthLayer::new(verifier)
        .rate_limit(limiter, RateLimitPolicy::new(RateLimit::per_minute(2)));
    let writes = layer.clone().layer(
        RequireScopesLayer::all(["vps:write"])
            .unwrap()
            .layer(service_fn(ok)),
    );
    let reads = layer.layer(service_fn(ok));

    for _ in 0..4 {
        let response = writes.clone().oneshot(get(&token)).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    for _ in 0..2 {
        assert_eq!(
            reads.clone().oneshot(get(&token)).await.unwrap().status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        reads.clone().oneshot(get(&token)).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[test]
fn a_refund_never_gives_more_than_was_spent() {
    let limiter = MemoryRateLimiter::new();
    let limit = RateLimit::per_minute(2);
    // Nothing spent: a refund adds nothing beyond the budget.
    limiter.refund_now("k", &limit);
    limiter.refund_now("k", &limit);
    assert!(limiter.acquire_now("k", &limit).is_allowed());
    assert!(limiter.acquire_now("k", &limit).is_allowed());
    assert!(!limiter.acquire_now("k", &limit).is_allowed());
    // One back, then it is spent again.
    limiter.refund_now("k", &limit);
    assert!(limiter.acquire_now("k", &limit).is_allowed());
    assert!(!limiter.acquire_now("k", &limit).is_allowed());
}
