//! Per-token rate limits and failed-authentication throttling, through the real middleware
//! (`tower::ServiceExt::oneshot` with a `PeerAddr`), plus two Redis limiters sharing one
//! budget when `APITOKEN_TEST_REDIS_URL` is set.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use apitoken::middleware::{AuthLayer, PeerAddr};
use apitoken::rate_limit::{
    FailureThrottle, MemoryRateLimiter, RateLimit, RateLimitDecision, RateLimitError,
    RateLimitPolicy, RateLimiter, RedisRateLimiter,
};
use apitoken::{
    ManualClock, MemoryStore, Metadata, NewToken, Owner, ScopeRequirement, SecretHash, StoreError,
    StoredToken, TokenFormat, TokenId, TokenRecord, TokenStore, Verifier,
};
use chrono::{DateTime, TimeDelta, Utc};
use http::{Request, Response, StatusCode};
use support::within;
use tower::{Layer, ServiceExt, service_fn};

const TOO_MANY: &str = r#"{"message":"Too Many Attempts."}"#;
const REDIS_URL_VAR: &str = "APITOKEN_TEST_REDIS_URL";

/// A `MemoryStore` that counts the lookups made through it, and can make each take a while.
#[derive(Clone, Default)]
struct CountingStore {
    inner: Arc<MemoryStore>,
    lookups: Arc<AtomicUsize>,
    latency_ms: Arc<AtomicUsize>,
}

impl CountingStore {
    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    fn set_latency(&self, latency: Duration) {
        let ms = usize::try_from(latency.as_millis()).expect("a short latency");
        self.latency_ms.store(ms, Ordering::SeqCst);
    }
}

impl TokenStore for CountingStore {
    fn insert(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.insert(record, hash)
    }
    fn next_id(&self) -> impl Future<Output = Result<TokenId, StoreError>> + Send {
        self.inner.next_id()
    }
    fn get(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let latency = self.latency_ms.load(Ordering::SeqCst) as u64;
        let lookup = self.inner.get(id);
        async move {
            if latency > 0 {
                tokio::time::sleep(Duration::from_millis(latency)).await;
            }
            lookup.await
        }
    }
    fn find_by_hash(
        &self,
        hash: &SecretHash,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.find_by_hash(hash)
    }
    fn list_by_owner(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
        self.inner.list_by_owner(owner)
    }
    fn revoke(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.inner.revoke(id, at)
    }
    fn revoke_owner(
        &self,
        owner: &Owner,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        self.inner.revoke_owner(owner, at)
    }
    fn record_last_used(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.record_last_used(id, at)
    }
}

type Svc = tower::util::BoxCloneService<Request<String>, Response<String>, Infallible>;

fn app(layer: AuthLayer<CountingStore>) -> Svc {
    let inner = service_fn(|_request: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    });
    tower::util::BoxCloneService::new(layer.layer(inner))
}

/// One request from `peer` with `Authorization: Bearer {token}` (`None`: no header).
async fn send(service: &Svc, peer: Option<&str>, token: Option<&str>) -> Response<String> {
    let mut builder = Request::get("/api/v1/vps");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let mut request = builder.body(String::new()).expect("request");
    if let Some(peer) = peer {
        let addr = SocketAddr::new(peer.parse().expect("address"), 40000);
        request.extensions_mut().insert(PeerAddr(addr));
    }
    within(service.clone().oneshot(request))
        .await
        .expect("infallible")
}

fn header<'a>(response: &'a Response<String>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {response:?}"))
        .to_str()
        .expect("ASCII")
}

#[track_caller]
fn assert_429(response: &Response<String>, retry_after: &str) {
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "{response:?}"
    );
    assert_eq!(response.body(), TOO_MANY);
    assert_eq!(header(response, "retry-after"), retry_after);
    assert_eq!(header(response, "cache-control"), "no-store");
    assert_eq!(header(response, "content-type"), "application/json");
    assert!(response.headers().get("www-authenticate").is_none());
}

struct Setup {
    verifier: Verifier<CountingStore>,
    clock: Arc<ManualClock>,
    store: CountingStore,
}

fn setup(format: TokenFormat) -> Setup {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let store = CountingStore::default();
    let verifier = Verifier::builder(store.clone())
        .format(format)
        .clock(clock.clone())
        .disable_last_used()
        .build();
    Setup {
        verifier,
        clock,
        store,
    }
}

async fn issue(verifier: &Verifier<CountingStore>, new: NewToken) -> String {
    let issued = verifier.issuer().issue(new).await.expect("issued");
    issued.token.expose_secret().to_owned()
}

fn token(owner: &str) -> NewToken {
    NewToken::new("t", Owner::new(owner).expect("owner"))
}

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after_and_ratelimit_fields() {
    let s = setup(TokenFormat::canonical());
    let limiter = MemoryRateLimiter::with_clock(s.clock.clone());
    let policy = RateLimitPolicy::new(RateLimit::per_minute(2));
    let svc = app(AuthLayer::new(s.verifier.clone()).rate_limit(limiter, policy));
    let t = issue(&s.verifier, token("team-1")).await;

    assert_eq!(send(&svc, None, Some(&t)).await.status(), 200);
    assert_eq!(send(&svc, None, Some(&t)).await.status(), 200);
    let refused = send(&svc, None, Some(&t)).await;
    // 2 per minute: the next request is allowed 30 s on, the whole burst 60 s on.
    assert_429(&refused, "30");
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        r#""default";q=2;w=60"#
    );
    // The effective window is the wait: `Retry-After` names no time before its end.
    assert_eq!(header(&refused, "ratelimit"), r#""default";r=0;t=30"#);

    s.clock.advance(TimeDelta::milliseconds(10_500));
    assert_429(&send(&svc, None, Some(&t)).await, "20"); // 19.5 s, rounded up
    s.clock.advance(TimeDelta::milliseconds(19_500));
    assert_eq!(send(&svc, None, Some(&t)).await.status(), 200);
    assert_429(&send(&svc, None, Some(&t)).await, "30");
}

#[tokio::test]
async fn refused_requests_spend_no_budget() {
    let s = setup(TokenFormat::canonical());
    let limiter = MemoryRateLimiter::with_clock(s.clock.clone());
    let policy = RateLimitPolicy::new(RateLimit::per_minute(1)).per_owner();
    let layer = AuthLayer::new(s.verifier.clone())
        .require(ScopeRequirement::all(["vps:read"]).expect("scope"))
        .rate_limit(limiter, policy);
    let svc = app(layer);
    let good = issue(
        &s.verifier,
        token("team-1").scopes(["vps:read"]).expect("scopes"),
    )
    .await;
    let unscoped = issue(&s.verifier, token("team-1")).await;
    let revoked = issue(
        &s.verifier,
        token("team-1").scopes(["vps:read"]).expect("scopes"),
    )
    .await;
    let format = TokenFormat::canonical();
    let revoked_id = support::token_id(&format, &revoked);
    s.verifier
        .store()
        .revoke(&revoked_id, s.verifier.now())
        .await
        .expect("revoke");
    let wrong = support::with_one_char_changed(&format, &good);

    for _ in 0..5 {
        assert_eq!(send(&svc, None, Some(&unscoped)).await.status(), 403);
        assert_eq!(send(&svc, None, Some(&revoked)).await.status(), 401);
        assert_eq!(send(&svc, None, Some(&wrong)).await.status(), 401);
        assert_eq!(send(&svc, None, None).await.status(), 401);
    }
    // The owner's one request a minute is still there, and then spent.
    assert_eq!(send(&svc, None, Some(&good)).await.status(), 200);
    assert_429(&send(&svc, None, Some(&good)).await, "60");
}

#[tokio::test]
async fn per_owner_budgets_are_shared_by_the_owners_tokens() {
    let s = setup(TokenFormat::canonical());
    let limiter = MemoryRateLimiter::with_clock(s.clock.clone());
    let policy = RateLimitPolicy::new(RateLimit::per_minute(2)).per_owner();
    let svc = app(AuthLayer::new(s.verifier.clone()).rate_limit(limiter.clone(), policy));
    let a1 = issue(&s.verifier, token("team-a")).await;
    let a2 = issue(&s.verifier, token("team-a")).await;
    let b = issue(&s.verifier, token("team-b")).await;

    assert_eq!(send(&svc, None, Some(&a1)).await.status(), 200);
    assert_eq!(send(&svc, None, Some(&a2)).await.status(), 200);
    assert_eq!(send(&svc, None, Some(&a1)).await.status(), 429);
    assert_eq!(send(&svc, None, Some(&a2)).await.status(), 429);
    assert_eq!(send(&svc, None, Some(&b)).await.status(), 200);
    assert_eq!(limiter.len(), 2, "one budget per owner");

    // Per token (the default), the same two tokens have a budget each.
    let limiter = MemoryRateLimiter::with_clock(s.clock.clone());
    let policy = RateLimitPolicy::new(RateLimit::per_minute(1));
    let svc = app(AuthLayer::new(s.verifier.clone()).rate_limit(limiter, policy));
    assert_eq!(send(&svc, None, Some(&a1)).await.status(), 200);
    assert_eq!(send(&svc, None, Some(&a2)).await.status(), 200);
    assert_eq!(send(&svc, None, Some(&a1)).await.status(), 429);
}

#[tokio::test]
async fn metadata_overrides_the_default_limit() {
    let s = setup(TokenFormat::canonical());
    let limiter = MemoryRateLimiter::with_clock(s.clock.clone());
    let policy = RateLimitPolicy::new(RateLimit::per_minute(100));
    let svc = app(AuthLayer::new(s.verifier.clone()).rate_limit(limiter, policy));
    let mut strict = Metadata::new();
    strict.insert(
        "rate_limit".into(),
        serde_json::json!({"requests": 1, "period_secs": 10}),
    );
    let mut typo = Metadata::new();
    typo.insert("rate_limit".into(), serde_json::json!({"requests": "lots"}));
    let limited = issue(&s.verifier, token("o").metadata(strict)).await;
    let typoed = issue(&s.verifier, token("o").metadata(typo)).await;
    let plain = issue(&s.verifier, token("o")).await;

    assert_eq!(send(&svc, None, Some(&limited)).await.status(), 200);
    let refused = send(&svc, None, Some(&limited)).await;
    assert_429(&refused, "10");
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        r#""default";q=1;w=10"#
    );
    for _ in 0..10 {
        assert_eq!(send(&svc, None, Some(&plain)).await.status(), 200);
        // An invalid override is ignored: the default applies, not "unlimited", not 500.
        assert_eq!(send(&svc, None, Some(&typoed)).await.status(), 200);
    }
}

/// A limiter that is always down.
struct Down;

impl RateLimiter for Down {
    fn acquire(
        &self,
        _key: &str,
        _limit: &RateLimit,
    ) -> impl Future<Output = Result<RateLimitDecision, RateLimitError>> + Send {
        std::future::ready(Err(RateLimitError::new(std::io::Error::other("down"))))
    }
}

#[tokio::test]
async fn a_limiter_outage_fails_open() {
    let s = setup(TokenFormat::canonical());
    let policy = RateLimitPolicy::new(RateLimit::per_minute(1));
    let svc = app(AuthLayer::new(s.verifier.clone()).rate_limit(Down, policy));
    let t = issue(&s.verifier, token("o")).await;
    for _ in 0..3 {
        assert_eq!(send(&svc, None, Some(&t)).await.status(), 200);
    }
    // Authentication itself still fails closed.
    assert_eq!(send(&svc, None, Some("nope")).await.status(), 401);
}

#[tokio::test]
async fn a_limiter_outage_fails_closed_when_asked_or_keeps_a_limit_behind_a_breaker() {
    use apitoken::rate_limit::CircuitBreaker;

    let s = setup(TokenFormat::canonical());
    let t = issue(&s.verifier, token("o")).await;
    // Fail closed: 503, as a store outage, never an unlimited 200.
    let policy = RateLimitPolicy::new(RateLimit::per_minute(1)).fail_closed();
    let svc = app(AuthLayer::new(s.verifier.clone()).rate_limit(Down, policy));
    for _ in 0..3 {
        let refused = send(&svc, None, Some(&t)).await;
        assert_eq!(refused.status(), 503, "{refused:?}");
    }
    // Behind a breaker the in-process fallback keeps the limit: one a minute.
    let breaker =
        CircuitBreaker::with_fallback(Down, MemoryRateLimiter::with_clock(s.clock.clone()))
            .clock(s.clock.clone());
    let policy = RateLimitPolicy::new(RateLimit::per_minute(1));
    let svc = app(AuthLayer::new(s.verifier.clone()).rate_limit(breaker, policy));
    assert_eq!(send(&svc, None, Some(&t)).await.status(), 200);
    for _ in 0..5 {
        assert_429(&send(&svc, None, Some(&t)).await, "60");
    }
}

#[tokio::test]
async fn a_flood_of_bad_tokens_is_turned_away_before_the_store() {
    // DCT tokens have no checksum, so every wrong secret costs a store lookup.
    let format = TokenFormat::dct();
    let s = setup(format.clone());
    let throttle = FailureThrottle::new(5, Duration::from_secs(60)).clock(s.clock.clone());
    let svc = app(AuthLayer::new(s.verifier.clone()).throttle_failures(throttle));
    let victim = issue(&s.verifier, token("victim")).await;
    let id = support::token_id(&format, &victim);
    let guess = |n: usize| format!("{id}.{}", format!("{n:0>64}").replace('0', "x"));

    let attacker = "203.0.113.9";
    let before = s.store.lookups();
    for n in 0..5 {
        let r = send(&svc, Some(attacker), Some(&guess(n))).await;
        assert_eq!(r.status(), 401, "failure {n} is answered normally");
    }
    assert_eq!(s.store.lookups() - before, 5);
    for n in 5..200 {
        assert_429(&send(&svc, Some(attacker), Some(&guess(n))).await, "60");
    }
    // Even the right token: the address is turned away before anything is read.
    assert_429(&send(&svc, Some(attacker), Some(&victim)).await, "60");
    assert_eq!(s.store.lookups() - before, 5, "no lookups once throttled");

    // The owner of the hammered token id, from their own address, is not locked out; nor
    // is anyone else.
    assert_eq!(
        send(&svc, Some("198.51.100.7"), Some(&victim))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(&svc, Some("2001:db8::1"), Some(&victim))
            .await
            .status(),
        200
    );
    // Requests with no known address are neither counted nor turned away.
    for _ in 0..10 {
        assert_eq!(send(&svc, None, Some(&guess(1))).await.status(), 401);
    }
    assert_eq!(send(&svc, None, Some(&victim)).await.status(), 200);

    // The window ends 60 s after the first failure.
    s.clock.advance(TimeDelta::seconds(59));
    assert_429(&send(&svc, Some(attacker), Some(&guess(0))).await, "1");
    s.clock.advance(TimeDelta::seconds(1));
    assert_eq!(
        send(&svc, Some(attacker), Some(&victim)).await.status(),
        200
    );
    for n in 0..5 {
        assert_eq!(
            send(&svc, Some(attacker), Some(&guess(n))).await.status(),
            401
        );
    }
    assert_eq!(
        send(&svc, Some(attacker), Some(&guess(9))).await.status(),
        429
    );
}

/// Sends `tokens` from `peer` all at once; how many of each status came back.
async fn burst(
    svc: &Svc,
    peer: &str,
    tokens: Vec<String>,
) -> std::collections::BTreeMap<u16, usize> {
    let mut sends: Vec<_> = tokens
        .iter()
        .map(|t| Box::pin(send(svc, Some(peer), Some(t))))
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    let mut done = vec![false; sends.len()];
    // Every request is polled before any answers: all are in flight together.
    std::future::poll_fn(|cx| {
        for (finished, request) in done.iter_mut().zip(sends.iter_mut()) {
            if !*finished && let std::task::Poll::Ready(response) = request.as_mut().poll(cx) {
                *finished = true;
                *statuses.entry(response.status().as_u16()).or_insert(0) += 1;
            }
        }
        if done.iter().all(|d| *d) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    statuses
}

#[tokio::test]
async fn a_concurrent_burst_of_forged_tokens_is_judged_as_it_starts() {
    // DCT tokens have no checksum: as a canonical token with a valid checksum, every guess
    // would reach the store. Each lookup takes 5 ms, so all 500 are in flight together.
    let format = TokenFormat::dct();
    let s = setup(format.clone());
    let throttle = FailureThrottle::new(5, Duration::from_secs(60)).clock(s.clock.clone());
    let svc = app(AuthLayer::new(s.verifier.clone()).throttle_failures(throttle));
    let victim = issue(&s.verifier, token("victim")).await;
    s.store.set_latency(Duration::from_millis(5));
    let before = s.store.lookups();
    let guesses = (0..500)
        .map(|n| format!("{}.{}", 1000 + n, "x".repeat(64)))
        .collect();
    let statuses = burst(&svc, "203.0.113.9", guesses).await;
    assert_eq!(s.store.lookups() - before, 5, "{statuses:?}");
    assert_eq!(statuses.get(&401), Some(&5), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&495), "{statuses:?}");

    // An address that has authenticated is not capped in its concurrency: fifty requests at
    // once from a busy client all go through.
    let client = "198.51.100.7";
    assert_eq!(send(&svc, Some(client), Some(&victim)).await.status(), 200);
    let statuses = burst(&svc, client, vec![victim.clone(); 50]).await;
    assert_eq!(statuses, [(200, 50)].into(), "{statuses:?}");

    // An address that has not yet authenticated may have at most five lookups in flight:
    // the rest are told to come back in a second.
    let statuses = burst(&svc, "192.0.2.44", vec![victim.clone(); 50]).await;
    assert_eq!(statuses, [(200, 5), (429, 45)].into(), "{statuses:?}");
}

#[tokio::test]
async fn only_guessing_counts_as_failure() {
    let s = setup(TokenFormat::canonical());
    let throttle = FailureThrottle::new(2, Duration::from_secs(60)).clock(s.clock.clone());
    let layer = AuthLayer::new(s.verifier.clone())
        .require(ScopeRequirement::all(["vps:write"]).expect("scope"))
        .throttle_failures(throttle.clone());
    let svc = app(layer);
    let read_only = issue(&s.verifier, token("o").scopes(["vps:read"]).expect("s")).await;
    let ip = "192.0.2.50";
    for _ in 0..10 {
        assert_eq!(send(&svc, Some(ip), None).await.status(), 401); // missing credentials
        assert_eq!(send(&svc, Some(ip), Some(&read_only)).await.status(), 403);
    }
    assert_eq!(throttle.failures(ip.parse().expect("ip")), 0);

    // A malformed header (two tokens) and a made-up token both count.
    let mut request = Request::get("/").body(String::new()).expect("request");
    request
        .headers_mut()
        .append("authorization", "Bearer a".parse().expect("v"));
    request
        .headers_mut()
        .append("authorization", "Bearer b".parse().expect("v"));
    request
        .extensions_mut()
        .insert(PeerAddr(format!("{ip}:1").parse().expect("addr")));
    let r = within(svc.clone().oneshot(request))
        .await
        .expect("infallible");
    assert_eq!(r.status(), 400);
    assert_eq!(send(&svc, Some(ip), Some("made-up")).await.status(), 401);
    assert_eq!(throttle.failures(ip.parse().expect("ip")), 2);
    assert_429(&send(&svc, Some(ip), None).await, "60");
}

/// A key prefix no other test, nor another run of this one, uses.
fn unique_prefix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    format!("apitoken_test_rl_{}_{n}_{nanos}", std::process::id())
}

/// The Redis URL, or `None` after printing why the test is skipped.
fn redis_url() -> Option<String> {
    match std::env::var(REDIS_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: set {REDIS_URL_VAR} (for example redis://127.0.0.1:6379)");
            None
        }
    }
}

async fn redis_limiter(url: &str, prefix: &str) -> RedisRateLimiter {
    within(RedisRateLimiter::connect(url))
        .await
        .unwrap_or_else(|e| panic!("{REDIS_URL_VAR} is set but Redis is unreachable: {e:?}"))
        .prefix(prefix)
}

#[tokio::test]
async fn two_redis_limiters_share_one_budget() {
    let Some(url) = redis_url() else { return };
    let prefix = format!("{}:", unique_prefix());
    let a = redis_limiter(&url, &prefix).await;
    let b = redis_limiter(&url, &prefix).await;
    let limit = RateLimit::per_minute(3);

    let first = within(a.acquire("token:1", &limit)).await.expect("redis");
    assert!(first.is_allowed());
    assert_eq!(first.remaining(), 2);
    assert!(
        within(b.acquire("token:1", &limit))
            .await
            .expect("redis")
            .is_allowed()
    );
    assert!(
        within(a.acquire("token:1", &limit))
            .await
            .expect("redis")
            .is_allowed()
    );
    for limiter in [&a, &b] {
        let refused = within(limiter.acquire("token:1", &limit))
            .await
            .expect("redis");
        assert!(!refused.is_allowed());
        let wait = refused.retry_after();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(refused.reset_after() > Duration::from_secs(59));
    }
    // Another key, and the same key under another prefix, have budgets of their own.
    assert!(
        within(b.acquire("token:2", &limit))
            .await
            .expect("redis")
            .is_allowed()
    );
    let other = redis_limiter(&url, &format!("{prefix}other:")).await;
    assert!(
        within(other.acquire("token:1", &limit))
            .await
            .expect("redis")
            .is_allowed()
    );

    // A bucket refills, and an idle one holds one burst, not more.
    let quick = RateLimit::new(3, Duration::from_millis(300)).expect("limit");
    for _ in 0..3 {
        assert!(
            within(a.acquire("token:idle", &quick))
                .await
                .expect("redis")
                .is_allowed()
        );
    }
    assert!(
        !within(b.acquire("token:idle", &quick))
            .await
            .expect("redis")
            .is_allowed()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let refilled = within(b.acquire("token:idle", &quick))
        .await
        .expect("redis");
    assert!(refilled.is_allowed());
    assert_eq!(refilled.remaining(), 2);

    // Concurrent callers on both never take more than the burst.
    let limit = RateLimit::per_hour(10);
    let calls = (0..40).map(|i| {
        let limiter = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { limiter.acquire("token:race", &limit).await })
    });
    let mut allowed = 0;
    for call in calls {
        let decision = within(call).await.expect("task").expect("redis");
        allowed += usize::from(decision.is_allowed());
    }
    assert_eq!(allowed, 10);
}

#[tokio::test]
async fn two_replicas_on_one_redis_share_a_token_budget() {
    let Some(url) = redis_url() else { return };
    let prefix = format!("{}:", unique_prefix());
    let s = setup(TokenFormat::canonical());
    let policy = RateLimitPolicy::new(RateLimit::per_minute(2));
    let replica_a = app(AuthLayer::new(s.verifier.clone())
        .rate_limit(redis_limiter(&url, &prefix).await, policy.clone()));
    let replica_b =
        app(AuthLayer::new(s.verifier.clone())
            .rate_limit(redis_limiter(&url, &prefix).await, policy));
    let t = issue(&s.verifier, token("o")).await;

    assert_eq!(send(&replica_a, None, Some(&t)).await.status(), 200);
    assert_eq!(send(&replica_b, None, Some(&t)).await.status(), 200);
    let refused = send(&replica_a, None, Some(&t)).await;
    assert_429(&refused, "30");
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        r#""default";q=2;w=60"#
    );
    assert_eq!(send(&replica_b, None, Some(&t)).await.status(), 429);
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_hang() {
    // Port 1 on loopback: nothing listens there.
    let started = std::time::Instant::now();
    let result = within(RedisRateLimiter::connect("redis://127.0.0.1:1")).await;
    assert!(result.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------------
// RateLimit fields on every response of a limited request (draft-ietf-httpapi-ratelimit-headers-11)
// ---------------------------------------------------------------------------------------------

/// One member of an RFC 9651 List: a String bare item and its Integer parameters.
#[derive(Debug, PartialEq)]
struct SfMember {
    name: String,
    params: Vec<(String, i64)>,
}

/// A small, hand-written RFC 9651 check, independent of the crate's serializer: each line of
/// `name` is a List (§3.1) of Items whose bare item is a String (§3.3.3) and whose parameters
/// (§3.1.2) are Integers (§3.3.1). Panics on anything else. Lines are joined as one list.
fn sf_list(response: &Response<String>, name: &str) -> Vec<SfMember> {
    let mut members = Vec::new();
    for line in response.headers().get_all(name) {
        let line = line.to_str().expect("visible ASCII");
        for member in line.split(',') {
            // Optional whitespace around members (OWS: SP or HTAB).
            let member = member.trim_matches([' ', '\t']);
            let rest = member
                .strip_prefix('"')
                .unwrap_or_else(|| panic!("not a String item: {member:?}"));
            let end = rest.find('"').expect("an unterminated String");
            let text = &rest[..end];
            assert!(
                text.bytes()
                    .all(|b| (0x20..=0x7e).contains(&b) && b != b'\\'),
                "a String with escapes or controls: {text:?}"
            );
            let tail = &rest[end + 1..];
            assert!(
                tail.is_empty() || tail.starts_with(';'),
                "junk after the String: {tail:?}"
            );
            let mut params: Vec<(String, i64)> = Vec::new();
            for param in tail.split(';').skip(1) {
                let (key, value) = param.split_once('=').expect("an Integer parameter");
                let mut key_bytes = key.bytes();
                let first = key_bytes.next().expect("an empty key");
                assert!(first.is_ascii_lowercase() || first == b'*', "key {key:?}");
                assert!(
                    key_bytes.all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || matches!(b, b'_' | b'-' | b'.' | b'*')),
                    "key {key:?}"
                );
                let digits = value.strip_prefix('-').unwrap_or(value);
                assert!(
                    (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()),
                    "not an Integer: {value:?}"
                );
                assert!(
                    params.iter().all(|(k, _)| k != key),
                    "duplicate key {key:?}"
                );
                params.push((key.to_owned(), value.parse().expect("integer")));
            }
            members.push(SfMember {
                name: text.to_owned(),
                params,
            });
        }
    }
    members
}

fn member(name: &str, params: &[(&str, i64)]) -> SfMember {
    SfMember {
        name: name.to_owned(),
        params: params.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
    }
}

#[test]
fn the_structured_field_check_accepts_the_drafts_examples_and_refuses_others() {
    let with = |value: &str| {
        let mut response = Response::new(String::new());
        response
            .headers_mut()
            .insert("ratelimit", value.parse().expect("value"));
        response
    };
    assert_eq!(
        sf_list(
            &with(r#""permin";q=50;w=60, "perhr";q=1000;w=3600"#),
            "ratelimit"
        ),
        vec![
            member("permin", &[("q", 50), ("w", 60)]),
            member("perhr", &[("q", 1000), ("w", 3600)]),
        ]
    );
    for bad in [
        "default;r=1",
        r#""default";r=x"#,
        r#""default";R=1"#,
        r#""default"r=1"#,
        r#""default";r=1;r=2"#,
    ] {
        let caught = std::panic::catch_unwind(|| sf_list(&with(bad), "ratelimit"));
        assert!(caught.is_err(), "{bad} was accepted");
    }
}

#[tokio::test]
async fn every_response_under_a_limit_carries_the_ratelimit_fields_with_a_falling_count() {
    let s = setup(TokenFormat::canonical());
    let limiter = MemoryRateLimiter::with_clock(s.clock.clone());
    // Three a minute: one comes back every 20 s.
    let policy = RateLimitPolicy::new(RateLimit::per_minute(3));
    let svc = app(AuthLayer::new(s.verifier.clone()).rate_limit(limiter, policy));
    let t = issue(&s.verifier, token("team-1")).await;
    let policy_field = vec![member("default", &[("q", 3), ("w", 60)])];

    for remaining in [2, 1, 0] {
        let ok = send(&svc, None, Some(&t)).await;
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.body(), "ok", "the inner service's response");
        assert_eq!(sf_list(&ok, "ratelimit-policy"), policy_field);
        assert_eq!(
            sf_list(&ok, "ratelimit"),
            vec![member("default", &[("r", remaining), ("t", 20)])]
        );
        assert!(ok.headers().get("retry-after").is_none());
    }
    let refused = send(&svc, None, Some(&t)).await;
    assert_429(&refused, "20");
    assert_eq!(sf_list(&refused, "ratelimit-policy"), policy_field);
    assert_eq!(
        sf_list(&refused, "ratelimit"),
        vec![member("default", &[("r", 0), ("t", 20)])]
    );
    s.clock.advance(TimeDelta::seconds(20));
    let again = send(&svc, None, Some(&t)).await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        sf_list(&again, "ratelimit"),
        vec![member("default", &[("r", 0), ("t", 20)])]
    );
    // Nothing secret in the fields: neither the token nor its id.
    let id = support::token_id(&TokenFormat::canonical(), &t);
    for name in ["ratelimit", "ratelimit-policy"] {
        for value in again.headers().get_all(name) {
            let value = value.to_str().expect("ASCII");
            assert!(
                !value.contains(id.as_str()) && !value.contains(&t),
                "{value}"
            );
        }
    }
}

#[tokio::test]
async fn an_inner_services_own_ratelimit_fields_are_kept() {
    let s = setup(TokenFormat::canonical());
    let limiter = MemoryRateLimiter::with_clock(s.clock.clone());
    let layer = AuthLayer::new(s.verifier.clone())
        .rate_limit(limiter, RateLimitPolicy::new(RateLimit::per_minute(5)));
    let inner = service_fn(|_request: Request<String>| async {
        let mut response = Response::new("ok".to_owned());
        let headers = response.headers_mut();
        headers.insert(
            "ratelimit-policy",
            r#""search";q=10;w=1"#.parse().expect("value"),
        );
        headers.insert("ratelimit", r#""search";r=9;t=1"#.parse().expect("value"));
        Ok::<_, Infallible>(response)
    });
    let svc = tower::util::BoxCloneService::new(layer.layer(inner));
    let t = issue(&s.verifier, token("team-1")).await;
    let ok = send(&svc, None, Some(&t)).await;
    assert_eq!(
        sf_list(&ok, "ratelimit"),
        vec![
            member("search", &[("r", 9), ("t", 1)]),
            member("default", &[("r", 4), ("t", 12)]),
        ]
    );
    assert_eq!(sf_list(&ok, "ratelimit-policy").len(), 2);
}

#[tokio::test]
async fn a_route_without_a_limit_sends_no_ratelimit_fields() {
    let s = setup(TokenFormat::canonical());
    let svc = app(AuthLayer::new(s.verifier.clone()));
    let t = issue(&s.verifier, token("team-1")).await;
    let limited = app(AuthLayer::new(s.verifier.clone()).rate_limit(
        MemoryRateLimiter::with_clock(s.clock.clone()),
        RateLimitPolicy::new(RateLimit::per_minute(5)),
    ));
    for response in [
        send(&svc, None, Some(&t)).await,
        send(&svc, None, Some("made-up")).await,
        // Under a limit, a refusal before the limit applies spends nothing and says nothing.
        send(&limited, None, Some("made-up")).await,
        send(&limited, None, None).await,
    ] {
        assert!(
            response.headers().get("ratelimit").is_none(),
            "{response:?}"
        );
        assert!(
            response.headers().get("ratelimit-policy").is_none(),
            "{response:?}"
        );
    }
    // A limiter that cannot answer (fail open) gives no fields either: it decided nothing.
    let down = app(AuthLayer::new(s.verifier.clone())
        .rate_limit(Down, RateLimitPolicy::new(RateLimit::per_minute(5))));
    let ok = send(&down, None, Some(&t)).await;
    assert_eq!(ok.status(), 200);
    assert!(ok.headers().get("ratelimit").is_none());
}

#[tokio::test]
async fn a_rate_limited_request_is_audited_as_refused() {
    use apitoken::{AuditEvent, AuditOutcome, AuthErrorKind};
    use std::sync::Mutex;

    let clock = Arc::new(ManualClock::new(Utc::now()));
    let events: Arc<Mutex<Vec<AuditEvent>>> = Arc::default();
    let sink = Arc::clone(&events);
    let verifier = Verifier::builder(CountingStore::default())
        .clock(clock.clone())
        .disable_last_used()
        .audit(move |event: &AuditEvent| sink.lock().expect("lock").push(event.clone()))
        .build();
    let limiter = MemoryRateLimiter::with_clock(clock);
    let svc = app(AuthLayer::new(verifier.clone())
        .rate_limit(limiter, RateLimitPolicy::new(RateLimit::per_minute(1))));
    let t = issue(&verifier, token("team-1")).await;
    let id = support::token_id(&TokenFormat::canonical(), &t);

    assert_eq!(send(&svc, Some("192.0.2.7"), Some(&t)).await.status(), 200);
    assert_eq!(send(&svc, Some("192.0.2.7"), Some(&t)).await.status(), 429);
    let events = events.lock().expect("lock");
    assert_eq!(events.len(), 2, "one event a request: {events:?}");
    assert_eq!(events[0].outcome, AuditOutcome::Accepted);
    assert_eq!(
        events[1].outcome,
        AuditOutcome::Refused {
            kind: AuthErrorKind::RateLimited,
            reason: None
        }
    );
    assert_eq!(events[1].token_id, Some(id));
    assert_eq!(events[1].owner.as_ref().map(Owner::as_str), Some("team-1"));
    assert_eq!(events[1].client_ip, Some("192.0.2.7".parse().expect("ip")));
}

#[tokio::test]
async fn redis_and_the_in_process_limiter_report_the_same_budget() {
    let Some(url) = redis_url() else { return };
    let redis = redis_limiter(&url, &format!("{}:", unique_prefix())).await;
    let memory = MemoryRateLimiter::new();
    let limit = RateLimit::per_minute(3);
    // Whole seconds, as the fields carry them, rounded up.
    let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    for _ in 0..5 {
        let shared = within(redis.acquire("token:same", &limit))
            .await
            .expect("redis");
        let local = memory.acquire_now("token:same", &limit);
        assert_eq!(shared.is_allowed(), local.is_allowed());
        assert_eq!(shared.remaining(), local.remaining());
        assert_eq!(
            secs(shared.window()),
            secs(local.window()),
            "{shared:?} {local:?}"
        );
        assert_eq!(secs(shared.retry_after()), secs(local.retry_after()));
        assert_eq!(secs(shared.reset_after()), secs(local.reset_after()));
    }
}
