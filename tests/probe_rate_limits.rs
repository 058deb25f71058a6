//! Review probes for "minted tokens keep their maker's per-token rate limit"
//! (`RateLimit::{of_token, to_metadata_value, is_within}`, `TokenApi` create and rotate) with
//! hostile metadata and extreme numbers, and for `VerifierBuilder::try_build`.

use std::time::Duration;

use apitoken::management::TokenApi;
use apitoken::middleware::AuthLayer;
use apitoken::rate_limit::{MemoryRateLimiter, RateLimit, RateLimitPolicy};
use apitoken::{ManualClock, MemoryStore, Metadata, NewToken, Owner, Verifier, VerifierBuildError};
use axum::Router;
use axum::body::{Body, to_bytes};
use chrono::{TimeDelta, Utc};
use http::Request;
use serde_json::{Value, json};
use tower::ServiceExt;

fn limit(requests: u32, period: Duration) -> RateLimit {
    RateLimit::new(requests, period).expect("a valid limit")
}

/// `is_within` never overflows or wraps, at the extremes of both fields.
#[test]
fn is_within_holds_at_the_extremes() {
    let huge = limit(u32::MAX, Duration::from_secs(u64::MAX)).with_burst(u32::MAX);
    let slow = limit(1, Duration::from_secs(u64::MAX));
    let fast = limit(1_000_000, Duration::from_secs(1));
    assert!(slow.is_within(&huge));
    assert!(!huge.is_within(&slow));
    assert!(slow.is_within(&slow));
    assert!(huge.is_within(&huge));
    assert!(!fast.is_within(&slow));
    assert!(slow.is_within(&fast));
    // Same rate, written two ways.
    assert!(limit(60, Duration::from_secs(60)).is_within(&RateLimit::per_second(1).with_burst(60)));
    // A rate one nanosecond's worth faster is not within.
    let a = limit(1, Duration::from_nanos(1_000_000_001));
    let b = limit(1, Duration::from_secs(1));
    assert!(a.is_within(&b));
    assert!(!b.is_within(&a));
}

/// Whatever limit is written to metadata reads back as one that allows no more: a copy may
/// be stricter, never looser. `to_metadata_value` drops sub-second remainders, so 10 per
/// 1.5 s reads back as 10 per second, and 1 per 500 ms as no limit at all (the default).
#[test]
fn a_limit_written_to_metadata_never_reads_back_looser() {
    let mut looser = Vec::new();
    for original in [
        RateLimit::per_hour(1),
        RateLimit::per_minute(7).with_burst(1),
        limit(10, Duration::from_millis(1500)),
        limit(1, Duration::from_millis(500)),
    ] {
        let mut metadata = Metadata::new();
        metadata.insert("rate_limit".into(), original.to_metadata_value());
        let copy = RateLimit::of_token(&metadata);
        if !copy.is_some_and(|copy| copy.is_within(&original)) {
            looser.push(format!(
                "{original:?} was written as {} and reads back as {copy:?}",
                original.to_metadata_value()
            ));
        }
    }
    assert!(looser.is_empty(), "{looser:#?}");
}

/// The in-process limiter with the most extreme limits metadata can hold: no panic.
#[test]
fn the_limiter_survives_extreme_limits() {
    let limiter = MemoryRateLimiter::new();
    for (i, l) in [
        limit(u32::MAX, Duration::from_secs(u64::MAX)).with_burst(u32::MAX),
        limit(1, Duration::from_secs(u64::MAX)).with_burst(u32::MAX),
        limit(1, Duration::from_secs(u64::MAX)),
        limit(1_000_000, Duration::from_secs(1)).with_burst(u32::MAX),
    ]
    .iter()
    .enumerate()
    {
        for _ in 0..3 {
            let _ = limiter.acquire_now(&format!("k{i}"), l);
        }
    }
}

struct Api {
    verifier: Verifier<MemoryStore>,
    app: Router,
    policy: RateLimitPolicy,
}

fn api() -> Api {
    let clock = std::sync::Arc::new(ManualClock::new(Utc::now()));
    let verifier = Verifier::builder(MemoryStore::new())
        .clock(clock.clone())
        .build();
    let policy = RateLimitPolicy::new(RateLimit::per_minute(100));
    let app = Router::new()
        .nest("/tokens", TokenApi::new(verifier.clone()).router())
        .layer(
            AuthLayer::new(verifier.clone())
                .rate_limit(MemoryRateLimiter::with_clock(clock), policy.clone()),
        );
    Api {
        verifier,
        app,
        policy,
    }
}

impl Api {
    async fn maker(&self, rate_limit: Option<Value>) -> String {
        let mut metadata = Metadata::new();
        if let Some(value) = rate_limit {
            metadata.insert("rate_limit".into(), value);
        }
        self.verifier
            .issuer()
            .issue(
                NewToken::new("maker", Owner::new("team-1").unwrap())
                    .scopes(["tokens:write", "tokens:read"])
                    .unwrap()
                    .metadata(metadata),
            )
            .await
            .unwrap()
            .token
            .expose_secret()
            .to_owned()
    }

    async fn post(&self, token: &str, path: &str, body: &str) -> (u16, Value) {
        let request = Request::post(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// The limit the layer applies to `token`.
    async fn effective(&self, token: &str) -> RateLimit {
        self.policy
            .resolve(&self.verifier.authenticate(token).await.unwrap())
            .1
    }
}

/// A maker with hostile `rate_limit` metadata (period 0, burst 0, huge numbers, wrong types,
/// null, negative, float, a string) creates a token through `TokenApi`: the new token's
/// effective limit allows no more than the maker's, and nothing answers 500.
#[tokio::test]
async fn hostile_rate_limit_metadata_never_makes_a_looser_copy() {
    let a = api();
    for hostile in [
        json!({"requests": 1, "period_secs": 3600, "burst": 0}),
        json!({"requests": 1, "period_secs": 0}),
        json!({"requests": 0, "period_secs": 60}),
        json!({"requests": 4_294_967_296u64, "period_secs": 60}),
        json!({"requests": 1, "period_secs": u64::MAX, "burst": u32::MAX}),
        json!({"requests": 1, "period_secs": 60, "burst": 4_294_967_296u64}),
        json!({"requests": 1, "period_secs": 60, "burst": -1}),
        json!({"requests": 1, "period_secs": 60, "burst": "5"}),
        json!({"requests": 1.0, "period_secs": 60}),
        json!({"requests": "1", "period_secs": 60}),
        json!({"requests": -1, "period_secs": 60}),
        json!({"period_secs": 60}),
        json!({"requests": 1, "period_secs": 1, "burst": null}),
        json!(null),
        json!("1/hour"),
        json!([1, 3600]),
        json!({"requests": 2_000_000, "period_secs": 1}),
    ] {
        let maker = a.maker(Some(hostile.clone())).await;
        let (status, made) = a.post(&maker, "/tokens", r#"{"name":"child"}"#).await;
        assert_eq!(status, 201, "{hostile}: {made}");
        let child = made["token"].as_str().unwrap();
        let (theirs, own) = (a.effective(child).await, a.effective(&maker).await);
        assert!(
            theirs.is_within(&own),
            "{hostile}: the maker is limited to {own:?}, its child to {theirs:?}"
        );
    }
}

/// A rate-limited caller rotates only tokens at least as limited as itself.
#[tokio::test]
async fn rotation_to_a_looser_or_odd_limit_is_refused() {
    let a = api();
    // Ten a second, bursts of twenty: roomy enough for this test's own requests.
    let own = json!({"requests": 600, "period_secs": 60, "burst": 20});
    let caller = a.maker(Some(own)).await;
    for (target, allowed) in [
        (None, false),
        (
            Some(json!({"requests": 600, "period_secs": 60, "burst": 20})),
            true,
        ),
        (
            Some(json!({"requests": 1, "period_secs": 60, "burst": 1})),
            true,
        ),
        (
            Some(json!({"requests": 1, "period_secs": 60, "burst": 21})),
            false,
        ),
        (
            Some(json!({"requests": 601, "period_secs": 60, "burst": 1})),
            false,
        ),
        (Some(json!({"requests": 10, "period_secs": 0})), false),
        (
            Some(json!({"requests": 10, "period_secs": 60, "burst": "1"})),
            false,
        ),
        (Some(json!(null)), false),
        (Some(json!({"requests": 1, "period_secs": u64::MAX})), true),
    ] {
        let mut metadata = Metadata::new();
        if let Some(value) = target.clone() {
            metadata.insert("rate_limit".into(), value);
        }
        let victim = a
            .verifier
            .issuer()
            .issue(NewToken::new("victim", Owner::new("team-1").unwrap()).metadata(metadata))
            .await
            .unwrap();
        let (status, body) = a
            .post(
                &caller,
                &format!("/tokens/{}/rotate", victim.record.id),
                r#"{"grace_seconds":0}"#,
            )
            .await;
        assert_eq!(
            status,
            if allowed { 201 } else { 403 },
            "target limit {target:?}: {body}"
        );
    }
}

/// `try_build` refuses `max_idle` without last use in any order of the calls, and accepts
/// it once last use is back on.
#[test]
fn idle_without_last_use_is_refused_whatever_the_order() {
    let refused = |b: apitoken::VerifierBuilder<MemoryStore>| b.try_build().err();
    let idle = TimeDelta::days(30);
    assert_eq!(
        refused(
            Verifier::builder(MemoryStore::new())
                .disable_last_used()
                .max_idle(idle)
        ),
        Some(VerifierBuildError::IdleWithoutLastUse)
    );
    assert_eq!(
        refused(
            Verifier::builder(MemoryStore::new())
                .max_idle(idle)
                .last_used_max_pending(0)
        ),
        Some(VerifierBuildError::IdleWithoutLastUse)
    );
    assert_eq!(
        refused(
            Verifier::builder(MemoryStore::new())
                .last_used_max_pending(0)
                .max_idle(idle)
                .last_used_max_pending(10)
        ),
        None
    );
    assert_eq!(
        refused(Verifier::builder(MemoryStore::new()).max_idle(idle)),
        None
    );
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Verifier::builder(MemoryStore::new())
            .max_idle(idle)
            .disable_last_used()
            .build()
    }));
    assert!(panicked.is_err());
}
