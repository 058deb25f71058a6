//! Probes against the pluggable verification pipeline (policies, authenticators, refunds, the
//! failure throttle, the last-use flusher): each test tries to break one documented claim
//! with hostile input, races (barriers, held store lookups), dropped futures or overload.
//!
//! Five of these found defects when they were written (a refund after a limiter that failed
//! open, no refund behind `CircuitBreaker`, no refund without a rate limit, a layer policy's
//! `on_record` never called, over-long text scanned); each now guards its fix.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apitoken::middleware::{AuthLayer, PeerAddr, RequireScopesLayer};
use apitoken::policy::{Admit, Admitted, Outcome, Pending, Policy};
use apitoken::rate_limit::{
    CircuitBreaker, FailureThrottle, MemoryRateLimiter, RateLimit, RateLimitDecision,
    RateLimitError, RateLimitPolicy, RateLimiter, RedisRateLimiter,
};
use apitoken::{
    AuditEvent, AuthError, AuthErrorKind, Authenticated, Authenticator, Clock, ManualClock,
    MemoryStore, Metadata, NewToken, Owner, Principal, RejectReason, RequestInfo, ScopeRequirement,
    SecretHash, StoreError, StoredToken, TokenFormat, TokenId, TokenRecord, TokenStore, Verifier,
};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use http::{Request, Response, StatusCode};
use support::within;
use tokio::sync::{Barrier, Semaphore};
use tower::{Layer, ServiceExt, service_fn};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// What a test can do to a [`ProbeStore`] and see of it.
#[derive(Default)]
struct Knobs {
    /// `get` and `find_by_hash` calls, counted when called.
    lookups: AtomicUsize,
    /// Lookups that reached the hold.
    arrived: AtomicUsize,
    /// While set, lookups wait for a permit of `permits`.
    hold: AtomicBool,
    permits: Permits,
    /// While set, lookups fail as a database that went away.
    fail: AtomicBool,
    /// While set, lookups never answer.
    hang: AtomicBool,
    /// Latency of each lookup, in milliseconds.
    latency_ms: AtomicUsize,
    /// `record_last_used` calls.
    last_used_writes: AtomicUsize,
    /// Set when the store is dropped (the verifier that owned it is gone).
    dropped: AtomicBool,
}

/// The permits held lookups wait for: none at first.
struct Permits(Semaphore);

impl Default for Permits {
    fn default() -> Self {
        Self(Semaphore::new(0))
    }
}

impl Knobs {
    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    async fn gate(&self) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("probe: injected outage"));
        }
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let ms = self.latency_ms.load(Ordering::SeqCst) as u64;
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if self.hold.load(Ordering::SeqCst) {
            self.arrived.fetch_add(1, Ordering::SeqCst);
            self.permits
                .0
                .acquire()
                .await
                .expect("the semaphore is never closed")
                .forget();
        }
        Ok(())
    }

    /// Waits (bounded) until `n` lookups are held.
    async fn wait_arrived(&self, n: usize) {
        within(async {
            while self.arrived.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    }
}

/// A [`MemoryStore`] that counts, holds, slows, fails or hangs its lookups.
struct ProbeStore {
    inner: MemoryStore,
    knobs: Arc<Knobs>,
}

impl ProbeStore {
    fn new() -> (Self, Arc<Knobs>) {
        let knobs = Arc::new(Knobs::default());
        (
            Self {
                inner: MemoryStore::new(),
                knobs: Arc::clone(&knobs),
            },
            knobs,
        )
    }
}

impl Drop for ProbeStore {
    fn drop(&mut self) {
        self.knobs.dropped.store(true, Ordering::SeqCst);
    }
}

impl TokenStore for ProbeStore {
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
        self.knobs.lookups.fetch_add(1, Ordering::SeqCst);
        let lookup = self.inner.get(id);
        async move {
            self.knobs.gate().await?;
            lookup.await
        }
    }

    fn find_by_hash(
        &self,
        hash: &SecretHash,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        self.knobs.lookups.fetch_add(1, Ordering::SeqCst);
        let lookup = self.inner.find_by_hash(hash);
        async move {
            self.knobs.gate().await?;
            lookup.await
        }
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
        self.knobs.last_used_writes.fetch_add(1, Ordering::SeqCst);
        self.inner.record_last_used(id, at)
    }
}

type Svc = tower::util::BoxCloneService<Request<String>, Response<String>, Infallible>;

async fn ok(_: Request<String>) -> Result<Response<String>, Infallible> {
    Ok(Response::new("ok".to_owned()))
}

/// The inner service answers 403 itself (an application decision, not a scope check).
async fn handler_forbids(_: Request<String>) -> Result<Response<String>, Infallible> {
    let mut response = Response::new("no".to_owned());
    *response.status_mut() = StatusCode::FORBIDDEN;
    Ok(response)
}

fn plain<S: TokenStore + 'static>(layer: AuthLayer<S>) -> Svc {
    tower::util::BoxCloneService::new(layer.layer(service_fn(ok)))
}

fn route<S: TokenStore + 'static>(layer: AuthLayer<S>, needs: &str) -> Svc {
    tower::util::BoxCloneService::new(
        layer.layer(
            RequireScopesLayer::all([needs])
                .expect("a valid scope")
                .layer(service_fn(ok)),
        ),
    )
}

const PEER: &str = "203.0.113.7";

fn request(peer: Option<&str>, authorization: Option<&str>) -> Request<String> {
    let mut builder = Request::get("/api/v1/vps");
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    let mut request = builder.body(String::new()).expect("request");
    if let Some(peer) = peer {
        let addr = SocketAddr::new(peer.parse().expect("address"), 40000);
        request.extensions_mut().insert(PeerAddr(addr));
    }
    request
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn call(service: &Svc, request: Request<String>) -> impl Future<Output = Response<String>> + Send {
    let service = service.clone();
    async move { within(service.oneshot(request)).await.expect("infallible") }
}

fn get(service: &Svc, token: &str) -> impl Future<Output = Response<String>> + Send {
    call(service, request(Some(PEER), Some(&bearer(token))))
}

async fn issue<S: TokenStore>(verifier: &Verifier<S>, scopes: &[&str]) -> String {
    let new = NewToken::new("ci", Owner::new("team-1").expect("owner"))
        .scopes(scopes.iter().copied())
        .expect("scopes");
    let issued = verifier.issuer().issue(new).await.expect("issued");
    issued.token.expose_secret().to_owned()
}

/// A token of the verifier's format whose id no store holds (issued by another verifier).
async fn forged() -> String {
    let other = Verifier::builder(MemoryStore::new()).build();
    issue(&other, &[]).await
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 2, 9, 0, 0).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

// ---------------------------------------------------------------------------------------------
// Claim 1: a request refused for scopes spends no budget; a refund never gives back more than
// was spent and cannot be triggered by a client.
// ---------------------------------------------------------------------------------------------

/// A burst of route refusals fired at once (a barrier) spends nothing in the end, and none of
/// them carries RateLimit fields; the budget is then exactly what it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_a_concurrent_burst_of_route_refusals_spends_nothing() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = issue(&verifier, &["vps:read"]).await;
    let limiter = Arc::new(MemoryRateLimiter::new());
    let layer = AuthLayer::new(verifier).rate_limit(
        Arc::clone(&limiter),
        RateLimitPolicy::new(RateLimit::per_hour(3)),
    );
    let writes = route(layer.clone(), "vps:write");
    let reads = plain(layer);

    let barrier = Arc::new(Barrier::new(24));
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let (writes, token, barrier) = (writes.clone(), token.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            get(&writes, &token).await
        }));
    }
    for task in tasks {
        let response = task.await.expect("no panic");
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.headers().get("ratelimit").is_none());
        assert!(response.headers().get("ratelimit-policy").is_none());
    }
    for _ in 0..3 {
        let response = get(&reads, &token).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("ratelimit").is_some());
    }
    assert_eq!(
        get(&reads, &token).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// A 403 the handler answers itself is not a scope refusal: it spends its budget.
#[tokio::test]
async fn p1_b_a_handlers_own_403_spends_budget() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = issue(&verifier, &["vps:read"]).await;
    let layer = AuthLayer::new(verifier).rate_limit(
        MemoryRateLimiter::new(),
        RateLimitPolicy::new(RateLimit::per_hour(2)),
    );
    let forbids: Svc = tower::util::BoxCloneService::new(
        layer.clone().layer(
            RequireScopesLayer::all(["vps:read"])
                .unwrap()
                .layer(service_fn(handler_forbids)),
        ),
    );
    for _ in 0..2 {
        let response = get(&forbids, &token).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        // The budget was spent: the fields say so.
        assert!(response.headers().get("ratelimit").is_some());
    }
    assert_eq!(
        get(&forbids, &token).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Nothing a client sends gives budget back: not headers that look like the RateLimit fields
/// or a refund, not a route without a scope check, not a method a `by_method` route allows.
#[tokio::test]
async fn p1_c_a_client_cannot_trigger_a_refund() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = issue(&verifier, &["vps:read", "vps:write"]).await;
    let layer = AuthLayer::new(verifier).rate_limit(
        MemoryRateLimiter::new(),
        RateLimitPolicy::new(RateLimit::per_hour(3)),
    );
    let open = plain(layer.clone());
    let by_method: Svc = tower::util::BoxCloneService::new(
        layer.layer(
            RequireScopesLayer::by_method("vps")
                .unwrap()
                .layer(service_fn(ok)),
        ),
    );
    let hostile = |service: &Svc| {
        let mut r = request(Some(PEER), Some(&bearer(&token)));
        for (name, value) in [
            ("ratelimit", "\"default\";r=100;t=1"),
            ("ratelimit-policy", "\"default\";q=100;w=60"),
            ("x-refund", "1"),
            ("x-route-refusal", "claimed"),
        ] {
            r.headers_mut().append(name, value.parse().unwrap());
        }
        let service = service.clone();
        async move { call(&service, r).await }
    };
    assert_eq!(hostile(&open).await.status(), StatusCode::OK);
    assert_eq!(hostile(&by_method).await.status(), StatusCode::OK);
    let mut post = request(Some(PEER), Some(&bearer(&token)));
    *post.method_mut() = http::Method::POST;
    assert_eq!(call(&by_method, post).await.status(), StatusCode::OK);
    assert_eq!(hostile(&open).await.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// A limiter that fails its acquisitions while told to, and otherwise is a frozen-clock
/// memory limiter whose refunds it counts.
#[derive(Clone)]
struct ScriptedLimiter {
    inner: MemoryRateLimiter,
    fail_acquire: Arc<AtomicBool>,
    refunds: Arc<AtomicUsize>,
}

impl ScriptedLimiter {
    fn new() -> Self {
        Self {
            inner: MemoryRateLimiter::with_clock(Arc::new(ManualClock::new(t0()))),
            fail_acquire: Arc::default(),
            refunds: Arc::default(),
        }
    }
}

impl RateLimiter for ScriptedLimiter {
    fn acquire(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<RateLimitDecision, RateLimitError>> + Send {
        let answer = if self.fail_acquire.load(Ordering::SeqCst) {
            Err(RateLimitError::new(std::io::Error::other(
                "probe: limiter down",
            )))
        } else {
            Ok(self.inner.acquire_now(key, limit))
        };
        std::future::ready(answer)
    }

    fn refund(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<(), RateLimitError>> + Send {
        self.refunds.fetch_add(1, Ordering::SeqCst);
        self.inner.refund_now(key, limit);
        std::future::ready(Ok(()))
    }
}

/// The limiter failed to answer (fail open: nothing was spent) for a request a route then
/// refused: its refund gives back a request another one spent, so the token gets more than
/// its budget.
#[tokio::test]
async fn p1_d_a_refund_after_a_failed_acquire_gives_back_nothing() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = issue(&verifier, &["vps:read"]).await;
    let limiter = ScriptedLimiter::new();
    let layer = AuthLayer::new(verifier).rate_limit(
        limiter.clone(),
        RateLimitPolicy::new(RateLimit::per_hour(2)),
    );
    let open = plain(layer.clone());
    let writes = route(layer, "vps:write");

    assert_eq!(get(&open, &token).await.status(), StatusCode::OK); // 1 of 2 spent
    limiter.fail_acquire.store(true, Ordering::SeqCst);
    assert_eq!(get(&writes, &token).await.status(), StatusCode::FORBIDDEN); // spent nothing
    limiter.fail_acquire.store(false, Ordering::SeqCst);
    assert_eq!(get(&open, &token).await.status(), StatusCode::OK); // 2 of 2 spent
    assert_eq!(
        get(&open, &token).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a budget of 2 allowed a third request: the refund gave back what it had not spent \
         ({} refunds)",
        limiter.refunds.load(Ordering::SeqCst)
    );
}

/// Refunds on a full bucket, and more refunds than spends, never raise a budget above its
/// size: in memory and in Redis.
#[tokio::test]
async fn p1_e_refunds_never_go_past_a_full_bucket() {
    let clock = Arc::new(ManualClock::new(t0()));
    let memory = MemoryRateLimiter::with_clock(clock.clone());
    let limit = RateLimit::per_hour(3);
    for _ in 0..5 {
        memory.refund_now("k", &limit);
    }
    assert!(memory.is_empty(), "a refund of nothing made a key");
    for _ in 0..3 {
        assert!(memory.acquire_now("k", &limit).is_allowed());
    }
    assert!(!memory.acquire_now("k", &limit).is_allowed());
    // Two back, five asked.
    for _ in 0..5 {
        memory.refund_now("k", &limit);
    }
    for _ in 0..3 {
        assert!(memory.acquire_now("k", &limit).is_allowed());
    }
    assert!(!memory.acquire_now("k", &limit).is_allowed());
    // Time passed and refilled one: a refund adds only what is missing.
    clock.advance(TimeDelta::minutes(20));
    memory.refund_now("k", &limit);
    memory.refund_now("k", &limit);
    memory.refund_now("k", &limit);
    for _ in 0..3 {
        assert!(memory.acquire_now("k", &limit).is_allowed());
    }
    assert!(!memory.acquire_now("k", &limit).is_allowed());

    let Ok(url) = std::env::var("APITOKEN_TEST_REDIS_URL") else {
        eprintln!("Redis part skipped: set APITOKEN_TEST_REDIS_URL");
        return;
    };
    let prefix = format!("apitoken-test:probe-policies:{}:", std::process::id());
    let redis = RedisRateLimiter::connect(&url)
        .await
        .expect("Redis")
        .prefix(&prefix);
    let key = "refund-floor";
    for _ in 0..5 {
        redis.refund(key, &limit).await.expect("refund");
    }
    for _ in 0..3 {
        assert!(redis.acquire(key, &limit).await.unwrap().is_allowed());
    }
    assert!(!redis.acquire(key, &limit).await.unwrap().is_allowed());
    for _ in 0..5 {
        redis.refund(key, &limit).await.expect("refund");
    }
    for _ in 0..3 {
        assert!(redis.acquire(key, &limit).await.unwrap().is_allowed());
    }
    assert!(!redis.acquire(key, &limit).await.unwrap().is_allowed());
}

/// Route refusals through the whole middleware spend nothing in Redis either, also when
/// fired at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_f_concurrent_route_refusals_spend_nothing_in_redis() {
    let Ok(url) = std::env::var("APITOKEN_TEST_REDIS_URL") else {
        eprintln!("skipped: set APITOKEN_TEST_REDIS_URL");
        return;
    };
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = issue(&verifier, &["vps:read"]).await;
    let prefix = format!("apitoken-test:probe-policies-burst:{}:", std::process::id());
    let limiter = RedisRateLimiter::connect(&url)
        .await
        .expect("Redis")
        .prefix(&prefix);
    let layer =
        AuthLayer::new(verifier).rate_limit(limiter, RateLimitPolicy::new(RateLimit::per_hour(2)));
    let writes = route(layer.clone(), "vps:write");
    let reads = plain(layer);
    let barrier = Arc::new(Barrier::new(16));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (writes, token, barrier) = (writes.clone(), token.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            get(&writes, &token).await.status()
        }));
    }
    // Some of the burst may see the budget another refusal holds for a round trip (429):
    // see p1_j. In the end, nothing is spent.
    for task in tasks {
        let status = task.await.unwrap();
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS,
            "{status}"
        );
    }
    for _ in 0..2 {
        assert_eq!(get(&reads, &token).await.status(), StatusCode::OK);
    }
    assert_eq!(
        get(&reads, &token).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// The breaker the rate-limit docs recommend around Redis: a route refusal behind it spends
/// no budget either.
#[tokio::test]
async fn p1_g_a_route_refusal_behind_a_circuit_breaker_spends_nothing() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = issue(&verifier, &["vps:read"]).await;
    let layer = AuthLayer::new(verifier).rate_limit(
        CircuitBreaker::new(MemoryRateLimiter::new()),
        RateLimitPolicy::new(RateLimit::per_hour(2)),
    );
    let writes = route(layer.clone(), "vps:write");
    let reads = plain(layer);
    for _ in 0..3 {
        assert_eq!(get(&writes, &token).await.status(), StatusCode::FORBIDDEN);
    }
    for _ in 0..2 {
        assert_eq!(get(&reads, &token).await.status(), StatusCode::OK);
    }
}

/// A quota of the application's, as a layer policy: spends in `admit`, gives back in `refund`.
#[derive(Default)]
struct Quota {
    spent: AtomicUsize,
    refunded: AtomicUsize,
}

/// The layer's handle on a shared [`Quota`].
struct QuotaPolicy(Arc<Quota>);

impl Policy for QuotaPolicy {
    fn admit<'a>(&'a self, _: &'a Principal, _: &'a RequestInfo) -> Admit<'a> {
        self.0.spent.fetch_add(1, Ordering::SeqCst);
        // The receipt: what was spent, which is what makes a refund due.
        Admit::Now(Ok(Admitted::new().with_detail(1_usize)))
    }

    fn refund<'a>(
        &'a self,
        _: &'a Principal,
        _: &'a RequestInfo,
        receipt: &'a Admitted,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>> {
        let spent = *receipt.detail::<usize>()?;
        self.0.refunded.fetch_add(spent, Ordering::SeqCst);
        None
    }
}

/// A request one admit step refuses (the layer's rate limit) gives back what an earlier one
/// (the verifier's quota) spent: a 429 costs no quota. And the quota is not asked back for a
/// request it never admitted.
#[tokio::test]
async fn p1_k_a_later_admit_refusal_refunds_the_earlier_spends() {
    let quota = Arc::new(Quota::default());
    let verifier = Verifier::builder(MemoryStore::new())
        .policy(QuotaPolicy(Arc::clone(&quota)))
        .build();
    let token = issue(&verifier, &["vps:read"]).await;
    let layer = AuthLayer::new(verifier).rate_limit(
        MemoryRateLimiter::new(),
        RateLimitPolicy::new(RateLimit::per_hour(1)),
    );
    let reads = plain(layer);
    assert_eq!(get(&reads, &token).await.status(), StatusCode::OK);
    assert_eq!(
        get(&reads, &token).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(quota.spent.load(Ordering::SeqCst), 2);
    assert_eq!(
        quota.refunded.load(Ordering::SeqCst),
        1,
        "the 429 gave its quota back"
    );
}

/// `Policy::refund` is documented as the way a route's scope refusal gives back what `admit`
/// spent; a layer without a rate limit never calls it.
#[tokio::test]
async fn p1_h_a_policys_refund_runs_without_a_rate_limit() {
    let quota = Arc::new(Quota::default());
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = issue(&verifier, &["vps:read"]).await;
    let layer = AuthLayer::new(verifier).policy(QuotaPolicy(Arc::clone(&quota)));
    let writes = route(layer, "vps:write");
    assert_eq!(get(&writes, &token).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(quota.spent.load(Ordering::SeqCst), 1);
    assert_eq!(
        quota.refunded.load(Ordering::SeqCst),
        1,
        "the route refused the request after admit spent; refund was never asked"
    );
}

/// With a rate limit, the same quota is refunded once per route refusal, never for requests
/// that were not refused by a route.
#[tokio::test]
async fn p1_i_a_policys_refund_runs_once_per_route_refusal() {
    let quota = Arc::new(Quota::default());
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = issue(&verifier, &["vps:read"]).await;
    let layer = AuthLayer::new(verifier)
        .rate_limit(
            MemoryRateLimiter::new(),
            RateLimitPolicy::new(RateLimit::per_hour(100)),
        )
        .policy(QuotaPolicy(Arc::clone(&quota)));
    let writes = route(layer.clone(), "vps:write");
    let reads = route(layer.clone(), "vps:read");
    // Two scope checks on one route, both refusing: still one refund.
    let twice: Svc = tower::util::BoxCloneService::new(
        layer.layer(
            RequireScopesLayer::all(["vps:read"]).unwrap().layer(
                RequireScopesLayer::all(["vps:write"])
                    .unwrap()
                    .layer(service_fn(ok)),
            ),
        ),
    );
    for _ in 0..3 {
        assert_eq!(get(&writes, &token).await.status(), StatusCode::FORBIDDEN);
        assert_eq!(get(&reads, &token).await.status(), StatusCode::OK);
        assert_eq!(get(&twice, &token).await.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(quota.spent.load(Ordering::SeqCst), 9);
    assert_eq!(quota.refunded.load(Ordering::SeqCst), 6);
}

/// A memory limiter whose refunds wait (bounded) until `n` acquisitions were made: the
/// interleaving a shared limiter's round trips produce under a burst, made certain.
#[derive(Clone)]
struct SlowRefunds {
    inner: MemoryRateLimiter,
    acquired: Arc<AtomicUsize>,
    n: usize,
}

impl RateLimiter for SlowRefunds {
    fn acquire(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<RateLimitDecision, RateLimitError>> + Send {
        self.acquired.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(self.inner.acquire_now(key, limit)))
    }

    fn refund(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<(), RateLimitError>> + Send {
        let (this, key, limit) = (self.clone(), key.to_owned(), *limit);
        async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while this.acquired.load(Ordering::SeqCst) < this.n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
            this.inner.refund_now(&key, &limit);
            Ok(())
        }
    }
}

/// Route refusals fired together hold one unit of budget each until their refunds land, so a
/// concurrent request of the same budget (here: another token of the same owner, with
/// `per_owner`) can be refused 429 though nothing of the budget is spent in the end: the
/// documented limitation (`RouteRefusal`'s rustdoc, `docs/rate-limits.md`). What a burst
/// holds is bounded by the requests in flight, and all of it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_j_a_burst_of_route_refusals_holds_budget_only_while_in_flight() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let low = issue(&verifier, &["vps:read"]).await;
    let high = issue(&verifier, &["vps:read", "vps:write"]).await;
    let burst = 4;
    let limiter = SlowRefunds {
        inner: MemoryRateLimiter::new(),
        acquired: Arc::default(),
        n: burst + 1,
    };
    let layer = AuthLayer::new(verifier).rate_limit(
        limiter.clone(),
        RateLimitPolicy::new(RateLimit::per_hour(4)).per_owner(),
    );
    let writes = route(layer.clone(), "vps:write");
    let mut tasks = Vec::new();
    for _ in 0..burst {
        let (writes, low) = (writes.clone(), low.clone());
        tasks.push(tokio::spawn(
            async move { get(&writes, &low).await.status() },
        ));
    }
    within(async {
        while limiter.acquired.load(Ordering::SeqCst) < burst {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    // While the burst holds the whole budget, a sibling may be refused for it.
    let sibling = get(&writes, &high).await.status();
    assert!(
        sibling == StatusCode::OK || sibling == StatusCode::TOO_MANY_REQUESTS,
        "{sibling}"
    );
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::FORBIDDEN);
    }
    // Once the refusals are answered, everything they held is back.
    let left = 4 - usize::from(sibling == StatusCode::OK);
    for _ in 0..left {
        assert_eq!(get(&writes, &high).await.status(), StatusCode::OK);
    }
    assert_eq!(
        get(&writes, &high).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

// ---------------------------------------------------------------------------------------------
// Claim 2: policy order.
// ---------------------------------------------------------------------------------------------

type Log = Arc<Mutex<Vec<String>>>;

/// Writes every point it is asked at into a shared log.
struct Recorder {
    name: &'static str,
    log: Log,
    refuse_on_record: bool,
}

impl Recorder {
    fn new(name: &'static str, log: &Log) -> Self {
        Self {
            name,
            log: Arc::clone(log),
            refuse_on_record: false,
        }
    }

    fn push(&self, point: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:{point}", self.name));
    }
}

impl Policy for Recorder {
    fn before_lookup(&self, _: &RequestInfo) -> Result<Pending, AuthError> {
        self.push("before_lookup");
        let (log, name) = (Arc::clone(&self.log), self.name);
        Ok(Pending::on_outcome(move |_| {
            log.lock().unwrap().push(format!("{name}:settle"));
        }))
    }

    fn on_record(&self, _: &TokenRecord, _: &RequestInfo) -> Result<(), AuthError> {
        self.push("on_record");
        if self.refuse_on_record {
            return Err(AuthError::invalid_token(
                RejectReason::Plugin(apitoken::PluginReason::new("probe_refusal")),
                None,
            ));
        }
        Ok(())
    }

    fn admit<'a>(&'a self, _: &'a Principal, _: &'a RequestInfo) -> Admit<'a> {
        self.push("admit");
        Admit::Now(Ok(Admitted::new()))
    }

    fn observe(&self, _: &Outcome<'_>) {
        self.push("observe");
    }
}

fn position(log: &[String], entry: &str) -> usize {
    log.iter()
        .position(|e| e == entry)
        .unwrap_or_else(|| panic!("{entry} missing from {log:?}"))
}

/// The verifier's policies run before the layer's at every point both run.
#[tokio::test]
async fn p2_a_the_verifiers_policies_run_before_the_layers() {
    let log: Log = Arc::default();
    let verifier = Verifier::builder(MemoryStore::new())
        .policy(Recorder::new("verifier", &log))
        .build();
    let token = issue(&verifier, &[]).await;
    let layer = AuthLayer::new(verifier)
        .throttle_failures(FailureThrottle::new(100, Duration::from_secs(60)))
        .policy(Recorder::new("layer", &log));
    assert_eq!(get(&plain(layer), &token).await.status(), StatusCode::OK);
    let log = log.lock().unwrap().clone();
    for point in ["before_lookup", "admit", "settle", "observe"] {
        assert!(
            position(&log, &format!("verifier:{point}"))
                < position(&log, &format!("layer:{point}")),
            "{point}: {log:?}"
        );
    }
    assert!(position(&log, "verifier:before_lookup") < position(&log, "verifier:on_record"));
    assert!(position(&log, "verifier:on_record") < position(&log, "verifier:admit"));
    assert!(position(&log, "verifier:admit") < position(&log, "verifier:observe"));
    // Each point once.
    for entry in &log {
        assert_eq!(log.iter().filter(|e| *e == entry).count(), 1, "{log:?}");
    }
}

/// A layer's policy that refuses a record in `on_record` is obeyed (the `Policy` docs: every
/// point has a default, a policy overrides the ones it needs; the layer's policies run after
/// the verifier's).
#[tokio::test]
async fn p2_b_a_layer_policys_on_record_refusal_is_obeyed() {
    let log: Log = Arc::default();
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = issue(&verifier, &[]).await;
    let mut refuser = Recorder::new("layer", &log);
    refuser.refuse_on_record = true;
    let layer = AuthLayer::new(verifier).policy(refuser);
    let status = get(&plain(layer), &token).await.status();
    let log = log.lock().unwrap().clone();
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the layer's on_record refusal was ignored; points asked: {log:?}"
    );
}

/// The allowlist runs first on the record: a token used from outside its networks is refused
/// before any other policy's `on_record` sees it (and before the rate limit spends).
#[tokio::test]
async fn p2_c_the_allowlist_runs_before_every_other_on_record() {
    let log: Log = Arc::default();
    let verifier = Verifier::builder(MemoryStore::new())
        .policy(Recorder::new("verifier", &log))
        .build();
    let new = NewToken::new("ci", Owner::new("team-1").unwrap())
        .allowed_ips(vec!["10.0.0.0/8".parse().unwrap()]);
    let token = verifier.issuer().issue(new).await.unwrap().token;
    let outside = RequestInfo::new().client_ip(Some(ip("192.0.2.1")));
    let refused = verifier
        .verify_request(token.expose_secret(), &ScopeRequirement::none(), &outside)
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), Some(RejectReason::AddressNotAllowed));
    let unknown = RequestInfo::new();
    let refused = verifier
        .verify_request(token.expose_secret(), &ScopeRequirement::none(), &unknown)
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), Some(RejectReason::AddressNotAllowed));
    assert!(
        !log.lock()
            .unwrap()
            .iter()
            .any(|e| e.ends_with(":on_record")),
        "{:?}",
        log.lock().unwrap()
    );
    let inside = RequestInfo::new().client_ip(Some(ip("10.1.2.3")));
    verifier
        .verify_request(token.expose_secret(), &ScopeRequirement::none(), &inside)
        .await
        .expect("accepted from inside");

    // Through the middleware with a rate limit of one: the refusals spent nothing.
    let limiter = Arc::new(MemoryRateLimiter::new());
    let layer = AuthLayer::new(verifier).rate_limit(
        Arc::clone(&limiter),
        RateLimitPolicy::new(RateLimit::per_hour(1)),
    );
    let service = plain(layer);
    for _ in 0..3 {
        let response = call(
            &service,
            request(Some("192.0.2.1"), Some(&bearer(token.expose_secret()))),
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let response = call(
        &service,
        request(Some("10.9.9.9"), Some(&bearer(token.expose_secret()))),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// Counts how often it is asked whether it recognises a text, and how often it authenticates.
struct CountingAuthenticator {
    recognised: Arc<AtomicUsize>,
    authenticated: Arc<AtomicUsize>,
    key: String,
}

impl CountingAuthenticator {
    const MAX: usize = 2048;

    fn new() -> (Self, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let recognised = Arc::new(AtomicUsize::new(0));
        let authenticated = Arc::new(AtomicUsize::new(0));
        (
            Self {
                recognised: Arc::clone(&recognised),
                authenticated: Arc::clone(&authenticated),
                key: format!("svc_{}", "k".repeat(1500)),
            },
            recognised,
            authenticated,
        )
    }
}

impl Authenticator for CountingAuthenticator {
    fn recognises(&self, token: &str) -> bool {
        self.recognised.fetch_add(1, Ordering::SeqCst);
        token.starts_with("svc_")
    }

    fn max_token_len(&self) -> usize {
        Self::MAX
    }

    fn authenticate(&self, token: &str, now: DateTime<Utc>) -> Result<Authenticated, AuthError> {
        self.authenticated.fetch_add(1, Ordering::SeqCst);
        if token != self.key {
            return Err(AuthError::invalid_token(RejectReason::WrongSecret, None));
        }
        Ok(Authenticated::new(TokenRecord::new(
            TokenId::new("svc").unwrap(),
            Owner::new("service:probe").unwrap(),
            "probe service",
            now,
        )))
    }
}

/// Once an address is throttled, its requests (valid tokens among them) reach no
/// authenticator, no store, no `on_record`, no admit: the refusal is first.
#[tokio::test]
async fn p2_d_a_throttled_request_reaches_nothing_behind_the_throttle() {
    let log: Log = Arc::default();
    let (store, knobs) = ProbeStore::new();
    let (authenticator, recognised, authenticated) = CountingAuthenticator::new();
    let key = authenticator.key.clone();
    let verifier = Verifier::builder(store)
        .authenticator(authenticator)
        .policy(Recorder::new("verifier", &log))
        .build();
    let token = issue(&verifier, &[]).await;
    let forged = forged().await;
    let throttle = FailureThrottle::new(2, Duration::from_secs(60));
    let layer = AuthLayer::new(verifier)
        .throttle_failures(throttle.clone())
        .policy(Recorder::new("layer", &log));
    let service = plain(layer);
    for _ in 0..2 {
        assert_eq!(
            get(&service, &forged).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(throttle.failures(ip(PEER)), 2);
    let (lookups, recognised_before) = (knobs.lookups(), recognised.load(Ordering::SeqCst));
    log.lock().unwrap().clear();
    for text in [
        token.as_str(),
        forged.as_str(),
        key.as_str(),
        "x".repeat(5000).as_str(),
    ] {
        for _ in 0..25 {
            let response = get(&service, text).await;
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert!(response.headers().get("retry-after").is_some());
        }
    }
    // Malformed headers too.
    let mut twice = request(Some(PEER), Some(&bearer(&token)));
    twice
        .headers_mut()
        .append("authorization", bearer(&token).parse().unwrap());
    assert_eq!(
        call(&service, twice).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    assert_eq!(
        knobs.lookups(),
        lookups,
        "a throttled request reached the store"
    );
    assert_eq!(
        recognised.load(Ordering::SeqCst),
        recognised_before,
        "an authenticator scanned it"
    );
    assert_eq!(authenticated.load(Ordering::SeqCst), 0);
    let log = log.lock().unwrap().clone();
    assert!(
        !log.iter().any(|e| e.ends_with(":on_record")
            || e.ends_with(":admit")
            || e == "layer:before_lookup"),
        "{log:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Claim 3: the throttle counts every failed attempt, once.
// ---------------------------------------------------------------------------------------------

/// Requests whose futures are dropped while their lookup is held (the client hung up) count
/// as failures: hanging up on every guess does not escape the throttle.
#[tokio::test]
async fn p3_a_dropped_futures_mid_lookup_count_as_failures() {
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store).build();
    let forged = forged().await;
    let throttle = FailureThrottle::new(3, Duration::from_secs(60));
    let service = plain(AuthLayer::new(verifier).throttle_failures(throttle.clone()));
    knobs.hold.store(true, Ordering::SeqCst);
    let mut abandoned = Vec::new();
    for _ in 0..3 {
        let service = service.clone();
        let forged = forged.clone();
        abandoned.push(tokio::spawn(async move { get(&service, &forged).await }));
    }
    knobs.wait_arrived(3).await;
    // While they are in flight, the address has no attempts left.
    let response = get(&service, &forged).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    for task in abandoned {
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
    }
    assert_eq!(throttle.failures(ip(PEER)), 3);
    let lookups = knobs.lookups();
    knobs.hold.store(false, Ordering::SeqCst);
    let response = get(&service, &forged).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(knobs.lookups(), lookups);
}

/// Malformed requests count: duplicate headers, a tab, bytes outside visible ASCII, a token
/// over the length bound, an empty token, quotes.
#[tokio::test]
async fn p3_b_malformed_requests_count_as_failures() {
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store).build();
    let token = issue(&verifier, &[]).await;
    let throttle = FailureThrottle::new(6, Duration::from_secs(60));
    let service = plain(AuthLayer::new(verifier).throttle_failures(throttle.clone()));

    let mut twice = request(Some(PEER), Some(&bearer(&token)));
    twice
        .headers_mut()
        .append("authorization", bearer(&token).parse().unwrap());
    assert_eq!(
        call(&service, twice).await.status(),
        StatusCode::BAD_REQUEST
    );
    let tab = http::HeaderValue::from_bytes(format!("Bearer\t{token}").as_bytes()).unwrap();
    let mut r = request(Some(PEER), None);
    r.headers_mut().insert("authorization", tab);
    assert_eq!(call(&service, r).await.status(), StatusCode::BAD_REQUEST);
    let high = http::HeaderValue::from_bytes(b"Bearer abc\xffdef").unwrap();
    let mut r = request(Some(PEER), None);
    r.headers_mut().insert("authorization", high);
    assert_eq!(call(&service, r).await.status(), StatusCode::BAD_REQUEST);
    let long = "a".repeat(600);
    assert_eq!(
        get(&service, &long).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = request(Some(PEER), Some("Bearer"));
    assert_eq!(call(&service, r).await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        get(&service, "\"quoted\"").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(throttle.failures(ip(PEER)), 6);
    assert_eq!(knobs.lookups(), 0, "none of these is worth a lookup");
    assert_eq!(
        get(&service, &token).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Neither missing credentials nor another scheme count.
    let other = "198.51.100.20";
    for _ in 0..20 {
        assert_eq!(
            call(&service, request(Some(other), None)).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&service, request(Some(other), Some("Basic dXNlcjpwYXNz")))
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(throttle.failures(ip(other)), 0);
}

/// A burst of forged tokens fired at once (a barrier) from an address that never
/// authenticated: at most `max_failures` reach the store, every one is counted, the rest are
/// 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p3_c_a_concurrent_burst_is_judged_as_it_starts() {
    let (store, knobs) = ProbeStore::new();
    knobs.latency_ms.store(20, Ordering::SeqCst);
    let verifier = Verifier::builder(store).build();
    let forged = forged().await;
    let throttle = FailureThrottle::new(5, Duration::from_secs(60));
    let service = plain(AuthLayer::new(verifier).throttle_failures(throttle.clone()));
    let n = 60;
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (service, barrier) = (service.clone(), Arc::clone(&barrier));
        // Half forged tokens, half malformed (over-long): both are guesses.
        let text = if i % 2 == 0 {
            forged.clone()
        } else {
            "z".repeat(700)
        };
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            get(&service, &text).await.status()
        }));
    }
    let mut refused = 0;
    let mut throttled = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::UNAUTHORIZED => refused += 1,
            StatusCode::TOO_MANY_REQUESTS => throttled += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        refused, 5,
        "{refused} guesses were judged, {throttled} throttled"
    );
    assert_eq!(throttled, n - 5);
    assert!(knobs.lookups() <= 5);
    assert_eq!(throttle.failures(ip(PEER)), 5);
}

/// A proven address's concurrency is not capped (documented), but every failure of a burst
/// it fires is still counted, and the address is throttled after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p3_d_a_proven_address_burst_counts_every_failure() {
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store).build();
    let token = issue(&verifier, &[]).await;
    let forged = forged().await;
    let throttle = FailureThrottle::new(5, Duration::from_secs(60));
    let service = plain(AuthLayer::new(verifier).throttle_failures(throttle.clone()));
    assert_eq!(get(&service, &token).await.status(), StatusCode::OK);
    knobs.hold.store(true, Ordering::SeqCst);
    let n = 30;
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (service, barrier, forged) = (service.clone(), Arc::clone(&barrier), forged.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            get(&service, &forged).await.status()
        }));
    }
    knobs.wait_arrived(n).await;
    knobs.hold.store(false, Ordering::SeqCst);
    knobs.permits.0.add_permits(n);
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(throttle.failures(ip(PEER)), n as u32);
    assert_eq!(
        get(&service, &token).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Successes, rate-limited successes, scope refusals (layer and route) and store outages are
/// not failures.
#[tokio::test]
async fn p3_e_what_is_not_a_guess_is_not_counted() {
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store).build();
    let token = issue(&verifier, &["vps:read"]).await;
    let throttle = FailureThrottle::new(1, Duration::from_secs(60));
    let base = AuthLayer::new(verifier)
        .throttle_failures(throttle.clone())
        .rate_limit(
            MemoryRateLimiter::with_clock(Arc::new(ManualClock::new(t0()))),
            RateLimitPolicy::new(RateLimit::per_hour(3)),
        );
    let open = plain(base.clone());
    let writes = route(base.clone(), "vps:write");
    let layer_writes = plain(base.require(ScopeRequirement::all(["vps:write"]).unwrap()));
    for _ in 0..5 {
        assert_eq!(get(&writes, &token).await.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            get(&layer_writes, &token).await.status(),
            StatusCode::FORBIDDEN
        );
    }
    for _ in 0..3 {
        assert_eq!(get(&open, &token).await.status(), StatusCode::OK);
    }
    for _ in 0..5 {
        assert_eq!(
            get(&open, &token).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        // Over budget, the route is never reached: still a rate-limit refusal, not a guess.
        assert_eq!(
            get(&writes, &token).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    knobs.fail.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(
            get(&open, &token).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    knobs.fail.store(false, Ordering::SeqCst);
    assert_eq!(throttle.failures(ip(PEER)), 0);
    // A first real guess is counted, and with a limit of one throttles.
    assert_eq!(
        get(&open, &forged().await).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(throttle.failures(ip(PEER)), 1);
    assert_eq!(
        get(&open, &token).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[derive(Default)]
struct Settles {
    settled: AtomicUsize,
    unsettled: AtomicUsize,
    observed: AtomicUsize,
}

struct SettleGuard {
    counts: Arc<Settles>,
    settled: bool,
}

impl Drop for SettleGuard {
    fn drop(&mut self) {
        if !self.settled {
            self.counts.unsettled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

struct SettleCounter(Arc<Settles>);

impl Policy for SettleCounter {
    fn before_lookup(&self, _: &RequestInfo) -> Result<Pending, AuthError> {
        let mut guard = SettleGuard {
            counts: Arc::clone(&self.0),
            settled: false,
        };
        Ok(Pending::on_outcome(move |_| {
            guard.settled = true;
            guard.counts.settled.fetch_add(1, Ordering::SeqCst);
        }))
    }

    fn observe(&self, _: &Outcome<'_>) {
        self.0.observed.fetch_add(1, Ordering::SeqCst);
    }
}

/// Every kind of request is settled exactly once and observed exactly once; an abandoned one
/// is never settled (its pending step is dropped).
#[tokio::test]
async fn p3_f_settlement_happens_exactly_once_per_request() {
    let counts = Arc::new(Settles::default());
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store).build();
    let token = issue(&verifier, &["vps:read"]).await;
    let base = AuthLayer::new(verifier)
        .rate_limit(
            MemoryRateLimiter::with_clock(Arc::new(ManualClock::new(t0()))),
            RateLimitPolicy::new(RateLimit::per_hour(2)),
        )
        .policy(SettleCounter(Arc::clone(&counts)));
    let open = plain(base.clone());
    let writes = route(base.clone(), "vps:write");
    let anonymous = plain(base.clone().allow_anonymous());
    let layer_writes = plain(base.require(ScopeRequirement::all(["vps:write"]).unwrap()));
    let forged = forged().await;

    let mut sent = 0;
    let mut expect = |status: StatusCode, got: StatusCode| {
        sent += 1;
        assert_eq!(got, status);
    };
    expect(StatusCode::OK, get(&open, &token).await.status());
    expect(StatusCode::FORBIDDEN, get(&writes, &token).await.status());
    expect(
        StatusCode::FORBIDDEN,
        get(&layer_writes, &token).await.status(),
    );
    expect(StatusCode::UNAUTHORIZED, get(&open, &forged).await.status());
    expect(
        StatusCode::UNAUTHORIZED,
        call(&open, request(Some(PEER), None)).await.status(),
    );
    expect(
        StatusCode::OK,
        call(&anonymous, request(Some(PEER), None)).await.status(),
    );
    expect(
        StatusCode::UNAUTHORIZED,
        get(&anonymous, &forged).await.status(),
    );
    expect(
        StatusCode::BAD_REQUEST,
        call(&open, request(Some(PEER), Some("Bearer")))
            .await
            .status(),
    );
    expect(StatusCode::OK, get(&open, &token).await.status());
    expect(
        StatusCode::TOO_MANY_REQUESTS,
        get(&open, &token).await.status(),
    );
    knobs.fail.store(true, Ordering::SeqCst);
    expect(
        StatusCode::SERVICE_UNAVAILABLE,
        get(&open, &token).await.status(),
    );
    knobs.fail.store(false, Ordering::SeqCst);
    expect(
        StatusCode::UNAUTHORIZED,
        call(&open, request(None, Some(&bearer(&forged))))
            .await
            .status(),
    );

    assert_eq!(counts.settled.load(Ordering::SeqCst), sent);
    assert_eq!(counts.observed.load(Ordering::SeqCst), sent);
    assert_eq!(counts.unsettled.load(Ordering::SeqCst), 0);

    knobs.hold.store(true, Ordering::SeqCst);
    let task = {
        let open = open.clone();
        let token = token.clone();
        tokio::spawn(async move { get(&open, &token).await })
    };
    knobs.wait_arrived(1).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(counts.settled.load(Ordering::SeqCst), sent);
    assert_eq!(counts.observed.load(Ordering::SeqCst), sent);
    assert_eq!(counts.unsettled.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// Claim 4: a 429 is not a use and gets Retry-After; no RateLimit fields on a refunded 403.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn p4_a_a_rate_limited_request_is_not_a_use() {
    let clock = Arc::new(ManualClock::new(t0()));
    let (store, _knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store).clock(clock.clone()).build();
    let new = NewToken::new("ci", Owner::new("team-1").unwrap());
    let issued = verifier.issuer().issue(new).await.unwrap();
    let token = issued.token.expose_secret().to_owned();
    let layer = AuthLayer::new(verifier.clone()).rate_limit(
        MemoryRateLimiter::with_clock(clock.clone()),
        RateLimitPolicy::new(RateLimit::per_hour(1)),
    );
    let service = plain(layer);
    assert_eq!(get(&service, &token).await.status(), StatusCode::OK);
    assert_eq!(verifier.flush_last_used().await.unwrap(), 1);
    clock.advance(TimeDelta::minutes(5));
    for _ in 0..3 {
        let response = get(&service, &token).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=3600).contains(&retry), "retry-after {retry}");
        assert!(response.headers().get("ratelimit").is_some());
    }
    assert_eq!(verifier.last_used_pending(), 0);
    assert_eq!(verifier.flush_last_used().await.unwrap(), 0);
    let stored = verifier
        .store()
        .get(&issued.record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.record.last_used_at, Some(t0()));
}

/// RateLimit fields: on a 200 and on a 429, never on a refunded route 403, also when the
/// 403 comes from a custom responder.
#[tokio::test]
async fn p4_b_no_ratelimit_fields_on_a_refunded_403() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = issue(&verifier, &["vps:read"]).await;
    let layer = AuthLayer::new(verifier).rate_limit(
        MemoryRateLimiter::new(),
        RateLimitPolicy::new(RateLimit::per_hour(5)),
    );
    let writes = route(layer.clone(), "vps:write");
    let reads = route(layer, "vps:read");
    let ok = get(&reads, &token).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers().get_all("ratelimit").iter().count(), 1);
    let refused = get(&writes, &token).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    for name in ["ratelimit", "ratelimit-policy"] {
        assert!(
            refused.headers().get(name).is_none(),
            "{name} on a refunded 403"
        );
    }
    assert!(refused.headers().get("www-authenticate").is_some());
}

// ---------------------------------------------------------------------------------------------
// Claim 5: length bounds.
// ---------------------------------------------------------------------------------------------

/// Over-long text is refused before any store access; an authenticator's longer bound applies
/// only to text it recognises.
#[tokio::test]
async fn p5_a_an_authenticators_bound_applies_only_to_its_own_text() {
    let (store, knobs) = ProbeStore::new();
    let (authenticator, _recognised, authenticated) = CountingAuthenticator::new();
    let key = authenticator.key.clone();
    let verifier = Verifier::builder(store)
        .authenticator(authenticator)
        .build();
    assert_eq!(verifier.max_token_len(), CountingAuthenticator::MAX);
    let service = plain(AuthLayer::new(verifier.clone()));

    // 1,500 bytes of a text the authenticator does not recognise: over the formats' 512.
    let foreign = format!("apk_{}", "a".repeat(1500));
    let response = get(&service, &foreign).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(knobs.lookups(), 0);
    let err = verifier.authenticate(&foreign).await.unwrap_err();
    assert_eq!(
        err.reason(),
        Some(RejectReason::Malformed(apitoken::FormatError::TooLong))
    );
    assert_eq!(knobs.lookups(), 0);

    // Its own 1,504-byte key works; 3,000 bytes of its shape are refused unread.
    assert_eq!(get(&service, &key).await.status(), StatusCode::OK);
    assert_eq!(authenticated.load(Ordering::SeqCst), 1);
    let long = format!("svc_{}", "k".repeat(3000));
    assert_eq!(
        get(&service, &long).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        authenticated.load(Ordering::SeqCst),
        1,
        "over its bound, yet authenticated"
    );
    assert_eq!(knobs.lookups(), 0);
}

/// Text longer than every bound (the verifier's `max_token_len`) is refused on its length
/// alone: not even an authenticator is asked whether it recognises it ("front ends refuse
/// longer credentials before reading them").
#[tokio::test]
async fn p5_b_text_over_every_bound_is_not_scanned() {
    let (store, knobs) = ProbeStore::new();
    let (authenticator, recognised, _) = CountingAuthenticator::new();
    let verifier = Verifier::builder(store)
        .authenticator(authenticator)
        .build();
    let service = plain(AuthLayer::new(verifier.clone()));
    let huge = format!("svc_{}", "k".repeat(60_000));
    assert_eq!(
        get(&service, &huge).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(knobs.lookups(), 0);
    assert_eq!(
        recognised.load(Ordering::SeqCst),
        0,
        "a 60 KB credential was scanned by an authenticator before its length was checked"
    );
}

/// The JWT validator's 4 KB bound is for JWT-shaped text only; with no validator, JWT-shaped
/// text has the formats' 512 bytes. None of it reaches the store.
#[tokio::test]
async fn p5_c_the_jwt_bound_is_for_jwts_only() {
    use apitoken::jwt::{JwtKey, JwtValidator, MAX_JWT_LEN};
    let (store, knobs) = ProbeStore::new();
    let validator = JwtValidator::builder("https://issuer.example", "api")
        .key(JwtKey::hs256(&[9u8; 32]).unwrap())
        .build()
        .unwrap();
    let with_jwt = Verifier::builder(store).jwt(validator).build();
    let jwt_service = plain(AuthLayer::new(with_jwt.clone()));
    let (bare_store, bare_knobs) = ProbeStore::new();
    let bare = Verifier::builder(bare_store).build();
    let bare_service = plain(AuthLayer::new(bare.clone()));

    let non_jwt = format!("apk_{}", "a".repeat(4000));
    let jwt_shaped = format!(
        "eyJ{}.{}.{}",
        "a".repeat(1000),
        "b".repeat(1000),
        "c".repeat(1000)
    );
    let too_long_jwt = format!("eyJ{}.{}.{}", "a".repeat(MAX_JWT_LEN), "b", "c");
    for service in [&jwt_service, &bare_service] {
        for text in [&non_jwt, &jwt_shaped, &too_long_jwt] {
            let response = get(service, text).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(
                response.headers()["www-authenticate"],
                r#"Bearer realm="api", error="invalid_token""#
            );
        }
    }
    for text in [&non_jwt, &too_long_jwt] {
        assert_eq!(
            with_jwt.authenticate(text).await.unwrap_err().kind(),
            AuthErrorKind::InvalidToken
        );
    }
    for text in [&non_jwt, &jwt_shaped, &too_long_jwt] {
        let err = bare.authenticate(text).await.unwrap_err();
        assert_eq!(
            err.reason(),
            Some(RejectReason::Malformed(apitoken::FormatError::TooLong))
        );
    }
    assert_eq!(
        with_jwt.max_len_of(non_jwt.as_bytes()),
        apitoken::format::MAX_TOKEN_LEN
    );
    assert_eq!(with_jwt.max_len_of(jwt_shaped.as_bytes()), MAX_JWT_LEN);
    assert_eq!(
        bare.max_len_of(jwt_shaped.as_bytes()),
        apitoken::format::MAX_TOKEN_LEN
    );
    assert_eq!(knobs.lookups(), 0);
    assert_eq!(bare_knobs.lookups(), 0);
}

// ---------------------------------------------------------------------------------------------
// Claim 6: the public lookups.
// ---------------------------------------------------------------------------------------------

/// `inspect` reports only genuine, active tokens: not a wrong secret on a known id, an
/// unknown id, a revoked, expired, too old or idle token; it looks the id up even on a miss,
/// and it is not a use (no audit event, no last-use note).
#[tokio::test]
async fn p6_a_inspect_reports_only_active_genuine_tokens() {
    let clock = Arc::new(ManualClock::new(t0()));
    let events: Arc<Mutex<Vec<AuditEvent>>> = Arc::default();
    let sink = Arc::clone(&events);
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store)
        .clock(clock.clone())
        .max_idle(TimeDelta::hours(1))
        .max_lifetime(TimeDelta::days(30))
        .audit(move |e: &AuditEvent| sink.lock().unwrap().push(e.clone()))
        .build();
    let owner = Owner::new("team-1").unwrap();
    let active = verifier
        .issuer()
        .issue(NewToken::new("a", owner.clone()))
        .await
        .unwrap();
    let revoked = verifier
        .issuer()
        .issue(NewToken::new("r", owner.clone()))
        .await
        .unwrap();
    let expiring = verifier
        .issuer()
        .issue(NewToken::new("e", owner.clone()).expires_in(TimeDelta::minutes(10)))
        .await
        .unwrap();
    verifier.revoke(&revoked.record.id).await.unwrap();

    // Same id, other secret: a store holding the id with another hash.
    let other_verifier = Verifier::builder(MemoryStore::new()).build();
    let twin = other_verifier
        .issuer()
        .issue(NewToken::new("t", owner.clone()))
        .await
        .unwrap();
    verifier
        .store()
        .insert(
            twin.record.clone(),
            verifier.hasher().hash(b"another secret"),
        )
        .await
        .unwrap();
    let unknown = forged().await;

    let before = events.lock().unwrap().len();
    let lookups = knobs.lookups();
    assert!(
        verifier
            .inspect(active.token.expose_secret())
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        verifier
            .inspect(twin.token.expose_secret())
            .await
            .unwrap()
            .is_none()
    );
    assert!(verifier.inspect(&unknown).await.unwrap().is_none());
    assert!(
        verifier
            .inspect(revoked.token.expose_secret())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        knobs.lookups() - lookups,
        4,
        "every genuine-looking token is looked up"
    );
    assert!(verifier.inspect("garbage").await.unwrap().is_none());
    assert_eq!(
        events.lock().unwrap().len(),
        before,
        "inspect emitted audit events"
    );
    assert_eq!(verifier.last_used_pending(), 0, "inspect counted as a use");

    clock.advance(TimeDelta::minutes(11));
    assert!(
        verifier
            .inspect(expiring.token.expose_secret())
            .await
            .unwrap()
            .is_none()
    );
    assert!(!verifier.is_active(&expiring.record));
    assert!(
        verifier
            .inspect(active.token.expose_secret())
            .await
            .unwrap()
            .is_some()
    );
    // Idle: an hour without use.
    clock.advance(TimeDelta::minutes(50));
    assert!(
        verifier
            .inspect(active.token.expose_secret())
            .await
            .unwrap()
            .is_none()
    );
    assert!(!verifier.is_active(&active.record));
    // A fresh token, used now (noted, not flushed), then past the lifetime.
    let used = verifier
        .issuer()
        .issue(NewToken::new("u", owner.clone()))
        .await
        .unwrap();
    clock.advance(TimeDelta::minutes(50));
    verifier
        .authenticate(used.token.expose_secret())
        .await
        .unwrap();
    clock.advance(TimeDelta::minutes(50));
    assert!(
        verifier.is_active(&used.record),
        "the noted use restarts the idle time"
    );
    assert!(
        verifier
            .inspect(used.token.expose_secret())
            .await
            .unwrap()
            .is_some()
    );
    clock.advance(TimeDelta::days(31));
    assert!(
        verifier
            .inspect(used.token.expose_secret())
            .await
            .unwrap()
            .is_none()
    );
    let mut revoked_record = revoked.record.clone();
    revoked_record.revoked_at = Some(clock.now() + TimeDelta::days(1));
    assert!(
        !verifier.is_active(&revoked_record),
        "revoked in the future is still revoked"
    );
}

/// `secret_matches`: only an equal hash with a stored one; no stored hash never matches,
/// whatever is presented.
#[tokio::test]
async fn p6_b_secret_matches_needs_an_equal_stored_hash() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let hasher = verifier.hasher();
    let stored = hasher.hash(b"s3cret");
    assert!(verifier.secret_matches(&hasher.hash(b"s3cret"), Some(&stored)));
    assert!(!verifier.secret_matches(&hasher.hash(b"s3creT"), Some(&stored)));
    assert!(!verifier.secret_matches(&hasher.hash(b""), Some(&stored)));
    for presented in [
        hasher.hash(b""),
        hasher.hash(b"s3cret"),
        SecretHash::from_hex(&"0".repeat(64)).unwrap(),
    ] {
        assert!(!verifier.secret_matches(&presented, None));
    }
    // Hashes differing in the first or the last byte only.
    let hex = stored.to_hex();
    for at in [0, 62] {
        let mut changed = hex.clone().into_bytes();
        changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
        let changed = SecretHash::from_hex(std::str::from_utf8(&changed).unwrap()).unwrap();
        assert!(!verifier.secret_matches(&changed, Some(&stored)));
    }
}

/// No secret in Debug or Display of what the pipeline hands out.
#[tokio::test]
async fn p6_c_no_secret_in_debug_or_display() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = issue(&verifier, &["vps:read"]).await;
    let format = TokenFormat::canonical();
    let forbidden = support::forbidden_strings(&format, &token);
    let hash_hex = verifier
        .hasher()
        .hash(support::secret_part(&format, &token).as_bytes())
        .to_hex();
    let mut texts = Vec::new();
    let principal = verifier.authenticate(&token).await.unwrap();
    texts.push(format!("{principal:?}"));
    let verification = verifier.begin(RequestInfo::new(), &[]).unwrap();
    texts.push(format!("{verification:?}"));
    let verified = verifier
        .finish(verification, &[], &token, &ScopeRequirement::none())
        .await
        .unwrap();
    texts.push(format!("{verified:?}"));
    let wrong = support::with_one_char_changed(&format, &token);
    for text in [wrong.as_str(), token.as_str()] {
        let err = verifier
            .verify(text, &ScopeRequirement::all(["vps:write"]).unwrap())
            .await
            .unwrap_err();
        texts.push(format!("{err} {err:?}"));
    }
    let record = verifier.inspect(&token).await.unwrap().unwrap();
    texts.push(format!("{record:?}"));
    texts.push(format!("{verifier:?}"));
    let layer = AuthLayer::new(verifier.clone());
    texts.push(format!("{layer:?}"));
    for text in &texts {
        for secret in forbidden.iter().chain([&hash_hex]) {
            assert!(!text.contains(secret.as_str()), "secret in {text}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Claim 7: the flusher.
// ---------------------------------------------------------------------------------------------

async fn stored_last_use<S: TokenStore>(
    verifier: &Verifier<S>,
    id: &TokenId,
) -> Option<DateTime<Utc>> {
    verifier
        .store()
        .get(id)
        .await
        .unwrap()
        .unwrap()
        .record
        .last_used_at
}

/// A dropped handle keeps flushing, tick after tick.
#[tokio::test]
async fn p7_a_a_dropped_handle_keeps_flushing() {
    let verifier = Verifier::builder(MemoryStore::new())
        .last_used_flush_interval(Duration::from_millis(20))
        .build();
    drop(verifier.spawn_last_used_flusher());
    for round in 0..3 {
        let issued = verifier
            .issuer()
            .issue(NewToken::new(
                format!("t{round}"),
                Owner::new("team-1").unwrap(),
            ))
            .await
            .unwrap();
        verifier
            .authenticate(issued.token.expose_secret())
            .await
            .unwrap();
        within(async {
            while stored_last_use(&verifier, &issued.record.id)
                .await
                .is_none()
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
    assert_eq!(verifier.last_used_pending(), 0);
}

/// `shutdown` writes everything noted before it was called, also while other tasks keep
/// authenticating; nothing noted is lost (what came after is still pending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p7_b_no_use_is_lost_under_concurrent_authenticate_and_shutdown() {
    let (store, _knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store)
        .last_used_flush_interval(Duration::from_millis(3))
        .build();
    let mut tokens = Vec::new();
    for i in 0..40 {
        let issued = verifier
            .issuer()
            .issue(NewToken::new(
                format!("t{i}"),
                Owner::new("team-1").unwrap(),
            ))
            .await
            .unwrap();
        tokens.push((issued.record.id, issued.token.expose_secret().to_owned()));
    }
    let flusher = verifier.spawn_last_used_flusher();
    let accepted: Arc<Mutex<Vec<TokenId>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (verifier, accepted, stop) =
            (verifier.clone(), Arc::clone(&accepted), Arc::clone(&stop));
        let mine: Vec<_> = tokens.iter().skip(w).step_by(4).cloned().collect();
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let (id, token) = &mine[i % mine.len()];
                verifier.authenticate(token).await.unwrap();
                accepted.lock().unwrap().push(*id);
                i += 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let before: Vec<TokenId> = accepted.lock().unwrap().clone();
    assert!(!before.is_empty());
    within(flusher.shutdown()).await.unwrap();
    for id in &before {
        assert!(
            stored_last_use(&verifier, id).await.is_some(),
            "a use accepted before shutdown was not written"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    verifier.flush_last_used().await.unwrap();
    let all: Vec<TokenId> = accepted.lock().unwrap().clone();
    for id in &all {
        assert!(stored_last_use(&verifier, id).await.is_some());
    }
    assert_eq!(verifier.last_used_pending(), 0);
}

/// A detached flusher does not keep the verifier alive: dropping the last verifier frees it
/// (and its store), and the task ends at its next tick.
#[tokio::test]
async fn p7_c_the_task_ends_when_the_verifier_is_dropped() {
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store)
        .last_used_flush_interval(Duration::from_millis(10))
        .build();
    let token = issue(&verifier, &[]).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    drop(verifier.spawn_last_used_flusher());
    assert_eq!(metrics.num_alive_tasks(), baseline + 1);
    verifier.authenticate(&token).await.unwrap();
    within(async {
        while knobs.last_used_writes.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    drop(verifier);
    assert!(
        knobs.dropped.load(Ordering::SeqCst),
        "the task kept the verifier alive"
    );
    within(async {
        while metrics.num_alive_tasks() > baseline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;

    // A kept handle keeps it alive instead, and its shutdown still writes.
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store).build();
    let token = issue(&verifier, &[]).await;
    let flusher = verifier.spawn_last_used_flusher();
    verifier.authenticate(&token).await.unwrap();
    drop(verifier);
    assert!(!knobs.dropped.load(Ordering::SeqCst));
    assert_eq!(within(flusher.shutdown()).await.unwrap(), 1);
    assert!(knobs.dropped.load(Ordering::SeqCst));
}

// ---------------------------------------------------------------------------------------------
// Claim 8: fail closed.
// ---------------------------------------------------------------------------------------------

/// A store that errors yields 503 or `StoreUnavailable`, never a principal; one that hangs
/// yields nothing until the caller's timeout.
#[tokio::test]
async fn p8_a_a_failing_or_hanging_store_never_yields_a_principal() {
    let (store, knobs) = ProbeStore::new();
    let verifier = Verifier::builder(store).build();
    let token = issue(&verifier, &[]).await;
    let throttle = FailureThrottle::new(3, Duration::from_secs(60));
    let service = plain(AuthLayer::new(verifier.clone()).throttle_failures(throttle.clone()));
    knobs.fail.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(
            get(&service, &token).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            verifier.authenticate(&token).await.unwrap_err().kind(),
            AuthErrorKind::StoreUnavailable
        );
        assert!(verifier.inspect(&token).await.is_err());
    }
    knobs.fail.store(false, Ordering::SeqCst);
    knobs.hang.store(true, Ordering::SeqCst);
    let short = Duration::from_millis(100);
    assert!(
        tokio::time::timeout(short, verifier.authenticate(&token))
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(short, verifier.inspect(&token))
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(
            short,
            service
                .clone()
                .oneshot(request(Some(PEER), Some(&bearer(&token))))
        )
        .await
        .is_err()
    );
    knobs.hang.store(false, Ordering::SeqCst);
    // The hung request given up by the timeout counted against the address (1 of 3).
    assert_eq!(throttle.failures(ip(PEER)), 1);
    assert_eq!(get(&service, &token).await.status(), StatusCode::OK);
}

/// Panics on a record whose metadata says so, at the point it is told.
struct Panics {
    at: &'static str,
}

fn boom(record: &TokenRecord) -> bool {
    record.metadata.get("boom") == Some(&true.into())
}

impl Policy for Panics {
    fn on_record(&self, record: &TokenRecord, _: &RequestInfo) -> Result<(), AuthError> {
        assert!(
            !(self.at == "on_record" && boom(record)),
            "probe: policy panics in on_record"
        );
        Ok(())
    }

    fn admit<'a>(&'a self, principal: &'a Principal, _: &'a RequestInfo) -> Admit<'a> {
        assert!(
            !(self.at == "admit" && boom(principal.record())),
            "probe: policy panics in admit"
        );
        Admit::Now(Ok(Admitted::new()))
    }
}

/// A policy that panics never lets a principal out: the panic propagates to the caller (the
/// request's task), and the verifier, limiter and throttle keep working for other requests
/// (no poisoned state).
#[tokio::test]
async fn p8_b_a_panicking_policy_never_yields_a_principal() {
    for at in ["on_record", "admit"] {
        let verifier = Verifier::builder(MemoryStore::new())
            .policy(Panics { at })
            .build();
        let mut metadata = Metadata::new();
        metadata.insert("boom".into(), true.into());
        let boom_token = verifier
            .issuer()
            .issue(NewToken::new("b", Owner::new("team-1").unwrap()).metadata(metadata))
            .await
            .unwrap()
            .token
            .expose_secret()
            .to_owned();
        let fine = issue(&verifier, &[]).await;

        let direct = {
            let verifier = verifier.clone();
            let boom_token = boom_token.clone();
            tokio::spawn(async move { verifier.authenticate(&boom_token).await })
        };
        assert!(direct.await.unwrap_err().is_panic(), "{at}");

        let throttle = FailureThrottle::new(100, Duration::from_secs(60));
        let service = plain(
            AuthLayer::new(verifier.clone())
                .throttle_failures(throttle.clone())
                .rate_limit(
                    MemoryRateLimiter::new(),
                    RateLimitPolicy::new(RateLimit::per_hour(100)),
                ),
        );
        for _ in 0..3 {
            let task = {
                let service = service.clone();
                let boom_token = boom_token.clone();
                tokio::spawn(async move { get(&service, &boom_token).await })
            };
            assert!(task.await.unwrap_err().is_panic(), "{at}");
        }
        eprintln!(
            "{at}: a panicking policy counted {} failures against the address",
            throttle.failures(ip(PEER))
        );
        for _ in 0..3 {
            assert_eq!(get(&service, &fine).await.status(), StatusCode::OK, "{at}");
            verifier.authenticate(&fine).await.unwrap();
        }
    }
}
