//! Attack probes (review 13) on the "under load and attack" fixes: the failure throttle under
//! cancellation, the cache's single flight and invalidation races (memory and PostgreSQL),
//! the rate-limit circuit breaker's half-open probe, `X-Forwarded-For` hop limits, and the
//! per-token caps on rotation.

#[path = "support/stores.rs"]
mod stores;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use apitoken::middleware::{AuthLayer, PeerAddr, TrustedProxies};
use apitoken::rate_limit::{
    CircuitBreaker, FailureThrottle, MemoryRateLimiter, RateLimit, RateLimitDecision,
    RateLimitError, RateLimiter,
};
use apitoken::{
    CachedStore, ManualClock, MemoryStore, NewToken, Owner, PostgresStore, SecretHash,
    SecretHasher, StoreError, StoredToken, TokenFormat, TokenId, TokenRecord, TokenStore, Verifier,
};
use chrono::{DateTime, TimeDelta, Utc};
use http::{Request, Response};
use sqlx::Connection;
use tower::{Layer, ServiceExt, service_fn};

const WAIT: Duration = Duration::from_secs(10);

// ---- a store whose lookups can be held at a gate ----

/// Lookups (`get`, `find_by_hash`) counted; while `hold` is set, each one reads the wrapped
/// store first and then waits until `release` gives it a permit (`hold_forever`: never).
#[derive(Clone)]
struct HeldStore {
    inner: Arc<MemoryStore>,
    lookups: Arc<AtomicUsize>,
    hold: Arc<AtomicBool>,
    hold_forever: Arc<AtomicBool>,
    arrived: Arc<tokio::sync::Semaphore>,
    release: Arc<tokio::sync::Semaphore>,
}

impl Default for HeldStore {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            lookups: Arc::default(),
            hold: Arc::default(),
            hold_forever: Arc::default(),
            arrived: Arc::new(tokio::sync::Semaphore::new(0)),
            release: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }
}

impl HeldStore {
    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    async fn arrived(&self) {
        tokio::time::timeout(WAIT, self.arrived.acquire())
            .await
            .expect("a lookup reached the gate")
            .unwrap()
            .forget();
    }

    async fn held<T>(&self, answer: T) -> T {
        if self.hold_forever.load(Ordering::SeqCst) {
            self.arrived.add_permits(1);
            std::future::pending::<()>().await;
        }
        if self.hold.load(Ordering::SeqCst) {
            self.arrived.add_permits(1);
            tokio::time::timeout(WAIT, self.release.acquire())
                .await
                .expect("released")
                .unwrap()
                .forget();
        }
        answer
    }
}

impl TokenStore for HeldStore {
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
    async fn get(&self, id: &TokenId) -> Result<Option<StoredToken>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = self.inner.get(id).await;
        self.held(answer).await
    }
    async fn find_by_hash(&self, hash: &SecretHash) -> Result<Option<StoredToken>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = self.inner.find_by_hash(hash).await;
        self.held(answer).await
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

async fn insert_token(store: &impl TokenStore, owner: &str) -> TokenId {
    let id = store.next_id().await.unwrap();
    let record = TokenRecord::new(id, Owner::new(owner).unwrap(), "t", Utc::now());
    store
        .insert(record, SecretHasher::sha256().hash(id.as_str().as_bytes()))
        .await
        .unwrap();
    id
}

/// Lets every spawned task on this (current-thread) runtime run until it blocks.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

// ---- the failure throttle ----

type Svc = tower::util::BoxCloneService<Request<String>, Response<String>, Infallible>;

fn throttled_app(store: HeldStore, throttle: FailureThrottle) -> (Svc, Verifier<HeldStore>) {
    let verifier = Verifier::builder(store)
        .format(TokenFormat::dct())
        .disable_last_used()
        .build();
    let inner = service_fn(|_request: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    });
    let layer = AuthLayer::new(verifier.clone()).throttle_failures(throttle);
    (
        tower::util::BoxCloneService::new(layer.layer(inner)),
        verifier,
    )
}

fn request_from(peer: &str, token: &str) -> Request<String> {
    let mut request = Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .body(String::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(PeerAddr(SocketAddr::new(peer.parse().unwrap(), 40000)));
    request
}

/// Requests dropped while their lookup is in flight give their in-flight slots back (and
/// count as failures: a request given up half-way still cost a lookup). Once the failures'
/// window has passed, the address is let in again: it is not wedged at its concurrency cap.
#[tokio::test]
async fn dropped_attempts_do_not_leak_in_flight_slots() {
    let store = HeldStore::default();
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let throttle = FailureThrottle::new(5, Duration::from_secs(60)).clock(clock.clone());
    let (svc, _) = throttled_app(store.clone(), throttle.clone());
    store.hold_forever.store(true, Ordering::SeqCst);
    let peer = "203.0.113.20";
    let pending: Vec<_> = (0..5)
        .map(|n| {
            tokio::spawn(svc.clone().oneshot(request_from(
                peer,
                &format!("{}.{}", 10 + n, "x".repeat(64)),
            )))
        })
        .collect();
    for _ in 0..5 {
        store.arrived().await;
    }
    // A sixth is over the cap while five are in flight.
    let over = svc
        .clone()
        .oneshot(request_from(peer, &format!("99.{}", "x".repeat(64))))
        .await
        .unwrap();
    assert_eq!(over.status(), 429);
    for task in pending {
        task.abort();
        let _ = task.await;
    }
    assert_eq!(throttle.failures(peer.parse().unwrap()), 5);
    store.hold_forever.store(false, Ordering::SeqCst);
    clock.advance(TimeDelta::seconds(61));
    let after = svc
        .clone()
        .oneshot(request_from(peer, &format!("77.{}", "x".repeat(64))))
        .await
        .unwrap();
    assert_eq!(after.status(), 401, "slots were given back");
}

/// Claim: attempts count from their start, so a never-proven address with limit 5 makes 5
/// store lookups in its window however it sends. An attacker who hangs up on each forged
/// request once its lookup is under way (HTTP/2 RST_STREAM, a closed connection: the server
/// drops the request future) never has a failure counted, and keeps the store busy forever.
#[tokio::test]
async fn forged_tokens_cancelled_mid_lookup_still_count() {
    let store = HeldStore::default();
    let throttle = FailureThrottle::new(5, Duration::from_secs(60));
    let (svc, _) = throttled_app(store.clone(), throttle.clone());
    store.hold_forever.store(true, Ordering::SeqCst);
    let peer = "203.0.113.21";
    let mut refused = 0;
    for n in 0..500 {
        let mut call = Box::pin(svc.clone().oneshot(request_from(
            peer,
            &format!("{}.{}", 1000 + n, "x".repeat(64)),
        )));
        // Poll until the lookup is in the store (or the request is answered at once).
        let answered = tokio::select! {
            response = &mut call => Some(response.unwrap()),
            () = store.arrived() => None,
        };
        if let Some(response) = answered {
            assert_eq!(response.status(), 429);
            refused += 1;
        }
        drop(call); // the client hangs up
    }
    let lookups = store.lookups();
    eprintln!(
        "lookups: {lookups}, refused: {refused}, failures counted: {}",
        throttle.failures(peer.parse().unwrap())
    );
    assert!(
        lookups <= 5,
        "{lookups} store lookups from one unproven address"
    );
}

/// One success makes an address "proven": its concurrency is no longer capped. Documented,
/// but it means an attacker with one valid key of its own gets every forged token of a burst
/// looked up (here 200 lookups held in flight at once); the failures still count and shut it
/// out afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proven_address_burst_is_looked_up_whole_then_shut_out() {
    let store = HeldStore::default();
    let throttle = FailureThrottle::new(5, Duration::from_secs(60));
    let (svc, verifier) = throttled_app(store.clone(), throttle.clone());
    let own = verifier
        .issuer()
        .issue(NewToken::new("mine", Owner::new("attacker").unwrap()))
        .await
        .unwrap();
    let peer = "203.0.113.22";
    let ok = svc
        .clone()
        .oneshot(request_from(peer, own.token.expose_secret()))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let before = store.lookups();
    store.hold.store(true, Ordering::SeqCst);
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            tokio::spawn(svc.clone().oneshot(request_from(
                peer,
                &format!("{}.{}", 5000 + n, "x".repeat(64)),
            )))
        })
        .collect();
    for _ in 0..200 {
        store.arrived().await;
    }
    assert_eq!(
        store.lookups() - before,
        200,
        "all 200 forged tokens in flight"
    );
    store.hold.store(false, Ordering::SeqCst);
    store.release.add_permits(200);
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), 401);
    }
    assert_eq!(throttle.failures(peer.parse().unwrap()), 200);
    let after = svc
        .clone()
        .oneshot(request_from(peer, own.token.expose_secret()))
        .await
        .unwrap();
    assert_eq!(after.status(), 429, "its failures shut it out");
}

// ---- the cache ----

/// The leader of a single flight is cancelled while a follower waits: the follower takes the
/// lookup over and answers (no wedge), with one more store lookup.
#[tokio::test]
async fn a_cancelled_leader_does_not_wedge_its_followers() {
    let held = HeldStore::default();
    let cached = Arc::new(CachedStore::new(held.clone()));
    let id = insert_token(&*held.inner, "team-1").await;
    held.hold.store(true, Ordering::SeqCst);
    let leader = {
        let cached = Arc::clone(&cached);
        tokio::spawn(async move { cached.get(&id).await })
    };
    held.arrived().await;
    let followers: Vec<_> = (0..3)
        .map(|_| {
            let cached = Arc::clone(&cached);
            tokio::spawn(async move { cached.get(&id).await })
        })
        .collect();
    settle().await;
    assert_eq!(held.lookups(), 1, "the followers wait for the leader");
    held.hold.store(false, Ordering::SeqCst);
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    for follower in followers {
        let found = tokio::time::timeout(WAIT, follower)
            .await
            .expect("a follower is not wedged")
            .unwrap()
            .unwrap();
        assert!(found.is_some());
    }
    assert_eq!(held.lookups(), 2, "one follower took the lookup over");
}

/// A refill read before a revocation lands after the revocation's invalidation: neither the
/// cache nor a follower that joined after the revocation may see the old record.
#[tokio::test]
async fn a_refill_landing_after_a_revocation_does_not_resurrect_the_token() {
    let held = HeldStore::default();
    let cached = Arc::new(CachedStore::new(held.clone()));
    let id = insert_token(&*held.inner, "team-1").await;
    held.hold.store(true, Ordering::SeqCst);
    let stale = {
        let cached = Arc::clone(&cached);
        tokio::spawn(async move { cached.get(&id).await })
    };
    held.arrived().await; // it has read the record, not revoked yet
    cached.revoke(&id, Utc::now()).await.unwrap();
    let late = {
        let cached = Arc::clone(&cached);
        tokio::spawn(async move { cached.get(&id).await })
    };
    settle().await;
    held.hold.store(false, Ordering::SeqCst);
    held.release.add_permits(2);
    let _ = stale.await.unwrap().unwrap();
    let late = late.await.unwrap().unwrap().unwrap();
    assert!(late.record.is_revoked(), "a lookup after the revocation");
    let now = cached.get(&id).await.unwrap().unwrap();
    assert!(now.record.is_revoked(), "the cache");
    // By hash too.
    let by_hash = cached
        .find_by_hash(&SecretHasher::sha256().hash(id.as_str().as_bytes()))
        .await
        .unwrap()
        .unwrap();
    assert!(by_hash.record.is_revoked());
}

/// The same race on the owner's stripe (revoke-all) and on a hash lookup.
#[tokio::test]
async fn a_hash_refill_landing_after_a_revoke_all_does_not_resurrect_the_token() {
    let held = HeldStore::default();
    let cached = Arc::new(CachedStore::new(held.clone()));
    let id = insert_token(&*held.inner, "team-9").await;
    let hash = SecretHasher::sha256().hash(id.as_str().as_bytes());
    held.hold.store(true, Ordering::SeqCst);
    let stale = {
        let cached = Arc::clone(&cached);
        tokio::spawn(async move { cached.find_by_hash(&hash).await })
    };
    held.arrived().await;
    cached
        .revoke_owner(&Owner::new("team-9").unwrap(), Utc::now())
        .await
        .unwrap();
    held.hold.store(false, Ordering::SeqCst);
    held.release.add_permits(1);
    let _ = stale.await.unwrap().unwrap();
    assert!(
        cached
            .find_by_hash(&hash)
            .await
            .unwrap()
            .unwrap()
            .record
            .is_revoked()
    );
    assert!(cached.get(&id).await.unwrap().unwrap().record.is_revoked());
}

/// On PostgreSQL: a revoke through the cache that times out while the row is locked by
/// another session still commits once the lock goes (the statement was already sent). The
/// cache invalidated at the timeout; a lookup between the timeout and the commit refills it
/// with the unrevoked record, which is then served after the revocation committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_revoke_that_commits_after_its_timeout_is_not_lost_by_the_cache() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    let schema = stores::unique_name("probe_late");
    let store = PostgresStore::builder(pool)
        .schema(&schema)
        .unwrap()
        .query_timeout(Duration::from_millis(300))
        .build();
    store.migrate().await.unwrap();
    let cached = CachedStore::builder(store)
        .ttl(Duration::from_secs(60))
        .build();
    let id = insert_token(&cached, "team-1").await;
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {schema}.apitoken_tokens WHERE id = $1 FOR UPDATE"
    )))
    .bind(id.as_str())
    .fetch_one(&mut holder)
    .await
    .unwrap();
    let revoked = cached.revoke(&id, Utc::now()).await;
    assert!(revoked.is_err(), "timed out behind the lock: {revoked:?}");
    // Between the timeout and the commit: the cache asks the store, which says "active".
    assert!(!cached.get(&id).await.unwrap().unwrap().record.is_revoked());
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let current = cached.inner().get(&id).await.unwrap().unwrap();
        if current.record.is_revoked() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            eprintln!("not reproduced: the timed-out revoke never committed");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let served = cached.get(&id).await.unwrap().unwrap();
    assert!(
        served.record.is_revoked(),
        "the database has the revocation; the cache serves the token as active"
    );
}

// ---- the circuit breaker ----

/// A shared limiter that fails, hangs, or answers (through an in-process limiter).
#[derive(Default)]
struct Shared {
    mode: AtomicUsize, // 0 answer, 1 fail, 2 hang
    calls: AtomicUsize,
    inner: MemoryRateLimiter,
}

#[derive(Clone, Default)]
struct SharedLimiter(Arc<Shared>);

impl RateLimiter for SharedLimiter {
    fn acquire(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<RateLimitDecision, RateLimitError>> + Send {
        let state = Arc::clone(&self.0);
        let key = key.to_owned();
        let limit = *limit;
        async move {
            state.calls.fetch_add(1, Ordering::SeqCst);
            match state.mode.load(Ordering::SeqCst) {
                1 => Err(RateLimitError::new(std::io::Error::other("down"))),
                2 => std::future::pending().await,
                _ => Ok(state.inner.acquire_now(&key, &limit)),
            }
        }
    }
}

/// The half-open probe is cancelled (its request given up while the shared limiter hangs):
/// once the shared limiter answers again, a later probe must still be able to close the
/// breaker.
#[tokio::test]
async fn a_cancelled_probe_does_not_keep_the_breaker_open_forever() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let shared = SharedLimiter::default();
    let breaker = CircuitBreaker::new(shared.clone())
        .failures_to_open(3)
        .cool_off(Duration::from_secs(5))
        .clock(clock.clone());
    let limit = RateLimit::per_minute(1_000);
    shared.0.mode.store(1, Ordering::SeqCst);
    for _ in 0..3 {
        breaker.acquire("k", &limit).await.unwrap();
    }
    assert!(breaker.is_open());
    clock.advance(TimeDelta::seconds(5));
    shared.0.mode.store(2, Ordering::SeqCst);
    let probe = tokio::time::timeout(Duration::from_millis(50), breaker.acquire("k", &limit)).await;
    assert!(probe.is_err(), "the probe hung and was given up");
    let calls = shared.0.calls.load(Ordering::SeqCst);
    assert_eq!(calls, 4);
    // The limiter did not answer: a new cool-off starts, and the next requests skip it.
    assert!(
        breaker.is_open(),
        "a probe that never answered re-opens the breaker"
    );
    shared.0.mode.store(0, Ordering::SeqCst);
    clock.advance(TimeDelta::seconds(60));
    for _ in 0..10 {
        breaker.acquire("k", &limit).await.unwrap();
    }
    assert!(
        shared.0.calls.load(Ordering::SeqCst) > calls,
        "the shared limiter was never asked again"
    );
    assert!(!breaker.is_open());
}

/// Many concurrent failures open it once; while open, nothing reaches the shared limiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_failures_open_the_breaker_and_keep_the_limit() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let shared = SharedLimiter::default();
    let breaker = Arc::new(
        CircuitBreaker::new(shared.clone())
            .failures_to_open(3)
            .cool_off(Duration::from_secs(5))
            .clock(clock.clone()),
    );
    shared.0.mode.store(1, Ordering::SeqCst);
    let limit = RateLimit::per_minute(10);
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (breaker, barrier) = (Arc::clone(&breaker), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                breaker
                    .acquire("one-key", &limit)
                    .await
                    .unwrap()
                    .is_allowed()
            })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        allowed += usize::from(task.await.unwrap());
    }
    assert!(breaker.is_open());
    assert_eq!(allowed, 10, "the in-process fallback keeps the limit");
    let calls = shared.0.calls.load(Ordering::SeqCst);
    for _ in 0..100 {
        breaker.acquire("x", &limit).await.unwrap();
    }
    assert_eq!(shared.0.calls.load(Ordering::SeqCst), calls);
}

// ---- X-Forwarded-For ----

fn xff_request(values: &[&str]) -> Request<()> {
    let mut builder = Request::get("/");
    for value in values {
        builder = builder.header("x-forwarded-for", *value);
    }
    let mut request = builder.body(()).unwrap();
    request
        .extensions_mut()
        .insert(PeerAddr("10.0.0.1:5000".parse().unwrap()));
    request
}

#[test]
fn forwarded_hops_at_the_limit_and_past_it() {
    use apitoken::middleware::MAX_FORWARDED_HOPS;
    assert_eq!(MAX_FORWARDED_HOPS, 32);
    let proxies = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
    let chain = |trusted: usize| {
        let mut hops = vec!["203.0.113.5".to_owned()];
        hops.extend((0..trusted).map(|n| format!("10.0.1.{n}")));
        hops.join(", ")
    };
    // The client is hop 32 from the right: found. Hop 33: unknown.
    let at = chain(31);
    assert_eq!(
        proxies.client_ip(&xff_request(&[&at])),
        Some("203.0.113.5".parse().unwrap())
    );
    let past = chain(32);
    assert_eq!(proxies.client_ip(&xff_request(&[&past])), None);
    // Split over header lines: hops are counted across lines.
    let lines: Vec<String> = std::iter::once("203.0.113.5".to_owned())
        .chain((0..31).map(|n| format!("10.0.2.{n}")))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(
        proxies.client_ip(&xff_request(&refs)),
        Some("203.0.113.5".parse().unwrap())
    );
    let mut over = refs.clone();
    over.insert(0, "198.51.100.1");
    over[1] = "10.9.9.9";
    assert_eq!(proxies.client_ip(&xff_request(&over)), None);
    // Spaces are trimmed; an empty hop (a trailing comma, ",,") leaves the client unknown
    // rather than skipping to a forgeable hop further left.
    assert_eq!(
        proxies.client_ip(&xff_request(&["  203.0.113.5  ,   10.0.0.7   "])),
        Some("203.0.113.5".parse().unwrap())
    );
    assert_eq!(
        proxies.client_ip(&xff_request(&["203.0.113.5, 10.0.0.7,"])),
        None
    );
    assert_eq!(
        proxies.client_ip(&xff_request(&["198.51.100.1,,10.0.0.7"])),
        None
    );
    assert_eq!(proxies.client_ip(&xff_request(&[""])), None);
    // 64 KB of commas costs one hop.
    let commas = ",".repeat(64 * 1024);
    assert_eq!(proxies.client_ip(&xff_request(&[&commas])), None);
    // A long left part is never read.
    let long = format!("{}203.0.113.5", "9".repeat(60_000));
    assert_eq!(
        proxies.client_ip(&xff_request(&[&format!("{long}, 198.51.100.9")])),
        Some("198.51.100.9".parse().unwrap())
    );
}

// ---- caps ----

fn scopes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("s{i}:read")).collect()
}

#[tokio::test]
async fn scope_and_network_caps_at_exactly_100_and_101() {
    use apitoken::IssueError;
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let owner = || Owner::new("team-1").unwrap();
    let nets = |n: usize| {
        (0..n)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap())
            .collect::<Vec<ipnet::IpNet>>()
    };
    let full = verifier
        .issuer()
        .issue(
            NewToken::new("full", owner())
                .scopes(scopes(100))
                .unwrap()
                .allowed_ips(nets(100)),
        )
        .await
        .unwrap();
    assert_eq!(full.record.scopes.len(), 100);
    // Duplicates collapse: 150 entries naming 100 scopes are 100.
    let mut dup = scopes(100);
    dup.extend(scopes(50));
    assert!(
        verifier
            .issuer()
            .issue(NewToken::new("dup", owner()).scopes(dup).unwrap())
            .await
            .is_ok()
    );
    let err = verifier
        .issuer()
        .issue(NewToken::new("x", owner()).scopes(scopes(101)).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, IssueError::TooManyScopes { max: 100 }),
        "{err}"
    );
    let err = verifier
        .issuer()
        .issue(NewToken::new("x", owner()).allowed_ips(nets(101)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, IssueError::TooManyNetworks { max: 100 }),
        "{err}"
    );
    // A full token rotates (its successor has exactly what it had).
    let rotated = verifier
        .issuer()
        .rotate(&full.record.id, TimeDelta::zero())
        .await
        .unwrap();
    assert_eq!(rotated.record.scopes.len(), 100);
    assert_eq!(rotated.record.allowed_ips.len(), 100);
}

/// Claim: the caps hold on rotation too. A record over the cap (stored before the cap, or by
/// another writer) is rotated into a fresh token with all 150 scopes.
#[tokio::test]
async fn rotation_of_an_over_cap_record_is_refused() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let store = verifier.store();
    let id = store.next_id().await.unwrap();
    let mut record = TokenRecord::new(id, Owner::new("team-1").unwrap(), "old", Utc::now());
    record.scopes = apitoken::ScopeSet::parse(&scopes(150).join(" ")).unwrap();
    store
        .insert(record, SecretHasher::sha256().hash(b"whatever"))
        .await
        .unwrap();
    let rotated = verifier.issuer().rotate(&id, TimeDelta::zero()).await;
    assert!(
        matches!(rotated, Err(apitoken::IssueError::TooManyScopes { .. })),
        "rotated into {:?} scopes",
        rotated.map(|r| r.record.scopes.len())
    );
}
