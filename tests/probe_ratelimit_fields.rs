//! attack14 probes of the RateLimit fields (draft-ietf-httpapi-ratelimit-headers-11).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use apitoken::middleware::AuthLayer;
use apitoken::rate_limit::{MemoryRateLimiter, RateLimit, RateLimitPolicy};
use apitoken::{ManualClock, MemoryStore, NewToken, Owner, Verifier};
use chrono::{TimeDelta, Utc};
use http::{Request, Response};
use tower::{Layer, ServiceExt, service_fn};

type Svc = tower::util::BoxCloneService<Request<String>, Response<String>, Infallible>;

async fn send(svc: &Svc, token: &str) -> Response<String> {
    let request = Request::get("/x")
        .header("authorization", format!("Bearer {token}"))
        .body(String::new())
        .unwrap();
    svc.clone().oneshot(request).await.unwrap()
}

fn field<'a>(r: &'a Response<String>, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

fn t_of(ratelimit: &str) -> u64 {
    ratelimit
        .split(';')
        .find_map(|p| p.strip_prefix("t="))
        .unwrap()
        .parse()
        .unwrap()
}

/// Claim 7: on every limited response (200s and 429s) the fields are there; on a 429 `t`
/// equals Retry-After at fractional waits too; the fields name no token id or owner; a
/// route without a limit has none.
#[tokio::test]
async fn probe_ratelimit_fields_at_fractional_waits() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let verifier = Verifier::builder(MemoryStore::new())
        .clock(clock.clone())
        .disable_last_used()
        .build();
    let issued = verifier
        .issuer()
        .issue(NewToken::new("t", Owner::new("team-secret-owner").unwrap()))
        .await
        .unwrap();
    let token = issued.token.expose_secret().to_owned();
    let id = issued.record.id.to_string();
    let inner = service_fn(|_r: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    });
    let limiter = MemoryRateLimiter::with_clock(clock.clone());
    let limited: Svc = tower::util::BoxCloneService::new(
        AuthLayer::new(verifier.clone())
            .rate_limit(limiter, RateLimitPolicy::new(RateLimit::per_minute(3)))
            .layer(inner),
    );
    let unlimited: Svc =
        tower::util::BoxCloneService::new(AuthLayer::new(verifier.clone()).layer(inner));
    for step_ms in [0i64, 333, 4_999, 10_001, 19_999, 7, 1] {
        clock.advance(TimeDelta::milliseconds(step_ms));
        let r = send(&limited, &token).await;
        let rl = field(&r, "ratelimit").unwrap_or_else(|| panic!("no RateLimit: {r:?}"));
        let policy = field(&r, "ratelimit-policy").expect("policy");
        for text in [rl, policy] {
            assert!(
                !text.contains(&id) && !text.contains("team-secret"),
                "{text}"
            );
        }
        if r.status() == 429 {
            let retry: u64 = field(&r, "retry-after").unwrap().parse().unwrap();
            assert_eq!(t_of(rl), retry, "{rl} vs Retry-After {retry}");
            assert!(rl.contains("r=0"), "{rl}");
        } else {
            assert_eq!(r.status(), 200);
        }
        let u = send(&unlimited, &token).await;
        assert_eq!(u.status(), 200);
        assert!(field(&u, "ratelimit").is_none() && field(&u, "ratelimit-policy").is_none());
    }
    // Burst spent: several 429s in a row, each t == Retry-After.
    for _ in 0..5 {
        let r = send(&limited, &token).await;
        if r.status() == 429 {
            let retry: u64 = field(&r, "retry-after").unwrap().parse().unwrap();
            assert_eq!(t_of(field(&r, "ratelimit").unwrap()), retry);
        }
        clock.advance(TimeDelta::from_std(Duration::from_millis(1_250)).unwrap());
    }
}
