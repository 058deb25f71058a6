//! A database that is down, slow or cut mid-request yields "store unavailable" (the
//! middleware's 503), never a verdict on the token, and the store recovers by itself when the
//! database returns. Buffered last-use times survive the outage and are written after it.
//!
//! The faults are real: the store talks to PostgreSQL through a TCP relay on loopback that the
//! test can stop (closing every connection and refusing new ones), start again on the same
//! port, and slow down (a delay added to every chunk it forwards). Every test but the first
//! needs `APITOKEN_TEST_POSTGRES_URL`.

#[path = "support/stores.rs"]
mod stores;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apitoken::middleware::AuthLayer;
use apitoken::{
    AuthErrorKind, CachedStore, ManualClock, NewToken, Owner, PostgresStore, ScopeRequirement,
    StoreErrorKind, TokenStore, Verifier,
};
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::routing::get;
use chrono::{DateTime, TimeDelta, Utc};
use http::{Request, StatusCode};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Relays loopback TCP connections to PostgreSQL until stopped, optionally slowed down.
struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    tasks: Option<JoinSet<()>>,
    faults: Arc<Faults>,
}

/// What the relay does to the traffic, shared with every connection it relays.
#[derive(Default)]
struct Faults {
    /// Microseconds each chunk from the store waits before it goes on to the database.
    to_server_us: AtomicU64,
    /// Microseconds each chunk from the database waits before it goes on to the store.
    to_client_us: AtomicU64,
    /// Chunks read but not yet written on (waiting out a delay, or being written).
    in_transit: AtomicUsize,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut relay = Self {
            addr,
            target,
            tasks: None,
            faults: Arc::default(),
        };
        relay.serve(listener);
        relay
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        let faults = Arc::clone(&self.faults);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let faults = Arc::clone(&faults);
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::join!(
                            pump(client_read, server_write, &faults, |f| &f.to_server_us),
                            pump(server_read, client_write, &faults, |f| &f.to_client_us),
                        );
                    }
                });
            }
            // `connections` is dropped with this task: aborting it closes every relayed socket.
        });
        self.tasks = Some(tasks);
    }

    /// Adds `delay` to every chunk in both directions from now on (a round trip then takes
    /// at least twice as long); `Duration::ZERO` removes it. Chunks already waiting finish
    /// their wait.
    fn set_delay(&self, delay: Duration) {
        self.set_delays(delay, delay);
    }

    /// Adds `to_server` to every chunk the store sends and `to_client` to every chunk the
    /// database answers.
    fn set_delays(&self, to_server: Duration, to_client: Duration) {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap();
        self.faults
            .to_server_us
            .store(micros(to_server), Ordering::SeqCst);
        self.faults
            .to_client_us
            .store(micros(to_client), Ordering::SeqCst);
    }

    /// Waits until every chunk the relay has read has been written on.
    async fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.faults.in_transit.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline, "relay never drained");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes every relayed connection and refuses new ones.
    async fn stop(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        // Chunks that were waiting died with their connections.
        self.faults.in_transit.store(0, Ordering::SeqCst);
    }

    /// Listens again on the same port.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the relay port");
        self.serve(listener);
    }
}

/// Copies `from` to `to`, each chunk after the delay `which` selects, until either side closes.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    faults: &Faults,
    which: fn(&Faults) -> &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        faults.in_transit.fetch_add(1, Ordering::SeqCst);
        let delay = which(faults).load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        let written = to.write_all(&buf[..n]).await;
        faults.in_transit.fetch_sub(1, Ordering::SeqCst);
        if written.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

fn target_of(url: &str) -> (PgConnectOptions, SocketAddr) {
    let options = PgConnectOptions::from_str(url).expect("a PostgreSQL URL");
    let host = match options.get_host() {
        "localhost" => "127.0.0.1".to_owned(),
        host => host.to_owned(),
    };
    let addr = format!("{host}:{}", options.get_port())
        .parse()
        .expect("the test database on an IP address");
    (options, addr)
}

/// A PostgreSQL store reached through a relay, and a direct pool to check rows with.
struct Rig {
    relay: Relay,
    store: PostgresStore,
    /// Straight to PostgreSQL, never through the relay.
    direct: PgPool,
    table: String,
}

/// `query_timeout` is the store's per-query deadline; the pool holds up to 8 connections and
/// waits up to 2 s for one (as `PostgresStore::connect_lazy` does), so the query deadline decides.
async fn rig(url: &str, query_timeout: Duration) -> Rig {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(2));
    rig_with(url, query_timeout, pool).await
}

async fn rig_with(url: &str, query_timeout: Duration, pool: PgPoolOptions) -> Rig {
    let (options, target) = target_of(url);
    let relay = Relay::start(target).await;
    let pool = pool.connect_lazy_with(options.clone().host("127.0.0.1").port(relay.addr.port()));
    let schema = stores::unique_name("outage");
    let store = PostgresStore::builder(pool)
        .schema(&schema)
        .unwrap()
        .query_timeout(query_timeout)
        .build();
    store.migrate().await.unwrap();
    let direct = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    Rig {
        relay,
        store,
        direct,
        table: format!("{schema}.apitoken_tokens"),
    }
}

impl Rig {
    /// Waits until no pooled connection is out: the pool pings each connection it gets back,
    /// and a delay set while that ping is under way would hold the connection up instead of
    /// the next statement.
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let pool = self.store.pool();
        while pool.num_idle() < pool.size() as usize {
            assert!(Instant::now() < deadline, "pool never settled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `last_used_at` of `id` as PostgreSQL has it, read past the relay.
    async fn last_used(&self, id: &apitoken::TokenId) -> Option<DateTime<Utc>> {
        let sql = format!("SELECT last_used_at FROM {} WHERE id = $1", self.table);
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_one(&self.direct)
            .await
            .unwrap()
    }

    /// Sets `last_used_at` of `id` past the relay, as another replica's flush would.
    async fn set_last_used(&self, id: &apitoken::TokenId, at: DateTime<Utc>) {
        let sql = format!("UPDATE {} SET last_used_at = $2 WHERE id = $1", self.table);
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .bind(at)
            .execute(&self.direct)
            .await
            .unwrap();
    }
}

/// Now, to the microsecond PostgreSQL keeps, so stored times compare equal.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

fn need() -> ScopeRequirement {
    ScopeRequirement::all(["vps:read"]).unwrap()
}

async fn issue<S: TokenStore>(verifier: &Verifier<S>, name: &str) -> apitoken::IssuedToken {
    verifier
        .issuer()
        .issue(
            NewToken::new(name, Owner::new("team-1").unwrap())
                .scopes(["vps:read"])
                .unwrap(),
        )
        .await
        .unwrap()
}

/// The real middleware over `verifier`, in front of a handler that answers "ok".
fn app<S: TokenStore + 'static>(verifier: Verifier<S>) -> Router {
    Router::new()
        .route("/v1/vps", get(|| async { "ok" }))
        .layer(AuthLayer::new(verifier).require(need()))
}

const UNAVAILABLE: &str = r#"{"message":"Service unavailable."}"#;

/// One request with `Bearer token`: its status, its body and how long it took. Fails the test
/// if no response comes within 10 s.
async fn call(app: &Router, token: &str) -> (StatusCode, String, Duration) {
    let request = Request::get("/v1/vps")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(request))
        .await
        .expect("a response within 10 s")
        .expect("the middleware never errors");
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 16).await.unwrap();
    let body = String::from_utf8(body.to_vec()).unwrap();
    (status, body, started.elapsed())
}

/// Calls until the answer is 200, asserting that every answer before it is a 503.
async fn until_200(app: &Router, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body, _) = call(app, token).await;
        if status == StatusCode::OK {
            return;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(Instant::now() < deadline, "no recovery within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A token of the canonical format with a valid checksum whose id no other store has: issued
/// into a throwaway memory store.
async fn unknown_token() -> String {
    let elsewhere = Verifier::builder(apitoken::MemoryStore::new()).build();
    issue(&elsewhere, "elsewhere")
        .await
        .token
        .expose_secret()
        .to_owned()
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_not_a_verdict() {
    // Nothing listens on port 1.
    let store = PostgresStore::connect_lazy("postgres://postgres@127.0.0.1:1/none").unwrap();
    let err = store
        .get(&apitoken::TokenId::from_u64(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    let verifier = Verifier::builder(store)
        .format(apitoken::TokenFormat::dct())
        .build();
    let err = verifier
        .authenticate("1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD4pflejgqjd0pfKtywlSWR9G0fIaWajuKcBT3")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable);
}

#[tokio::test]
async fn connect_connects_now_and_connect_lazy_at_the_first_query() {
    // Nothing listens on port 1: the eager constructor fails at once, naming no verdict.
    let err = PostgresStore::connect("postgres://postgres@127.0.0.1:1/none")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(PostgresStore::connect_lazy("postgres://postgres@127.0.0.1:1/none").is_ok());
    // A malformed URL fails both.
    assert!(PostgresStore::connect_lazy("postgres://app@127.0.0.1:notaport/app").is_err());
    assert!(
        PostgresStore::connect("postgres://app@127.0.0.1:notaport/app")
            .await
            .is_err()
    );
    let Some(url) = stores::postgres_url() else {
        return;
    };
    // A reachable database: the pool already holds a connection when `connect` returns.
    let store = PostgresStore::connect(&url).await.unwrap();
    assert!(store.pool().size() >= 1, "connect made no connection");
    let lazy = PostgresStore::connect_lazy(&url).unwrap();
    assert_eq!(lazy.pool().size(), 0, "connect_lazy connected early");
}

#[tokio::test]
async fn the_store_fails_closed_while_the_database_is_down_and_recovers_after() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let (options, target) = target_of(&url);
    let mut relay = Relay::start(target).await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(options.host("127.0.0.1").port(relay.addr.port()));
    let store = PostgresStore::builder(pool)
        .schema(&stores::unique_name("outage"))
        .unwrap()
        .query_timeout(Duration::from_secs(1))
        .build();
    store.migrate().await.unwrap();
    let verifier = Verifier::builder(store).build();
    let issued = verifier
        .issuer()
        .issue(
            NewToken::new("svc", Owner::new("team-1").unwrap())
                .scopes(["vps:read"])
                .unwrap(),
        )
        .await
        .unwrap();
    let token = issued.token.expose_secret();
    let need = ScopeRequirement::all(["vps:read"]).unwrap();
    verifier.verify(token, &need).await.expect("up: verified");

    relay.stop().await;
    let started = Instant::now();
    let err = verifier.verify(token, &need).await.unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    relay.restart().await;
    // The pool finds its connections dead and opens new ones; no restart of the store.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match verifier.verify(token, &need).await {
            Ok(_) => break,
            Err(err) => {
                assert_eq!(err.kind(), AuthErrorKind::StoreUnavailable, "{err:?}");
                assert!(
                    Instant::now() < deadline,
                    "no recovery within 10 s: {err:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_delay_below_the_deadline_is_200_above_it_503_in_time_and_removing_it_recovers() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let deadline = Duration::from_secs(1);
    let rig = rig(&url, deadline).await;
    let verifier = Verifier::builder(rig.store.clone()).build();
    let issued = issue(&verifier, "svc").await;
    let token = issued.token.expose_secret();
    let app = app(verifier);
    let (status, _, fast) = call(&app, token).await;
    assert_eq!(status, StatusCode::OK);

    // 50 ms each way: a round trip of at least 100 ms (the pool pings the connection before
    // handing it out, so a lookup takes two or three), inside the deadline.
    rig.relay.set_delay(Duration::from_millis(50));
    let (status, body, slow) = call(&app, token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        slow >= Duration::from_millis(100),
        "{slow:?} (undelayed {fast:?})"
    );
    assert!(slow < deadline, "{slow:?}");
    println!("200 in {fast:?} undelayed, {slow:?} with 50 ms each way");

    // 1.5 s each way: every answer is a 503, and it comes at the deadline, not after the
    // database. An unknown id is a 503 too, not a 401: the store could not say.
    rig.relay.set_delay(Duration::from_millis(1500));
    let unknown = unknown_token().await;
    let mut calls = JoinSet::new();
    for n in 0..6 {
        let app = app.clone();
        let text = if n % 2 == 0 {
            token.to_owned()
        } else {
            unknown.clone()
        };
        calls.spawn(async move { call(&app, &text).await });
    }
    while let Some(done) = calls.join_next().await {
        let (status, body, took) = done.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body, UNAVAILABLE);
        assert!(
            took >= deadline - Duration::from_millis(50)
                && took < deadline + Duration::from_millis(700),
            "answered after {took:?}, deadline {deadline:?}"
        );
        println!("503 in {took:?} with 1.5 s each way, deadline {deadline:?}");
    }

    // Delay removed: 200 again, same store, same pool, no restart.
    rig.relay.set_delay(Duration::ZERO);
    until_200(&app, token).await;
    let (status, _, _) = call(&app, &unknown).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_cut_with_requests_in_flight_answers_each_of_them_503() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let mut rig = rig(&url, Duration::from_secs(2)).await;
    let verifier = Verifier::builder(rig.store.clone()).build();
    let issued = issue(&verifier, "svc").await;
    let token = issued.token.expose_secret().to_owned();
    let unknown = unknown_token().await;
    let app = app(verifier);
    until_200(&app, &token).await;

    // Slow enough that every request below is waiting on PostgreSQL when the cut comes.
    rig.relay.set_delay(Duration::from_millis(300));
    let mut calls = JoinSet::new();
    for n in 0..8 {
        let app = app.clone();
        let text = if n % 2 == 0 {
            token.clone()
        } else {
            unknown.clone()
        };
        calls.spawn(async move { call(&app, &text).await });
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    rig.relay.stop().await;
    let mut answered = 0;
    while let Some(done) = calls.join_next().await {
        let (status, body, took) = done.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body, UNAVAILABLE);
        assert!(took < Duration::from_secs(3), "{took:?}");
        answered += 1;
    }
    assert_eq!(answered, 8);

    rig.relay.set_delay(Duration::ZERO);
    rig.relay.restart().await;
    until_200(&app, &token).await;
    assert_eq!(call(&app, &unknown).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn behind_the_cache_a_known_token_works_through_a_cut_for_its_ttl_and_nothing_else_does() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let mut rig = rig(&url, Duration::from_secs(1)).await;
    let ttl = Duration::from_millis(800);
    let store = CachedStore::builder(rig.store.clone())
        .ttl(ttl)
        .negative_ttl(ttl)
        .build();
    let verifier = Verifier::builder(store).build();
    let issued = issue(&verifier, "svc").await;
    let token = issued.token.expose_secret();
    let never_seen = unknown_token().await;
    let seen_missing = unknown_token().await;
    let app = app(verifier);
    // Both answers go into the cache: the record, and the miss.
    assert_eq!(call(&app, token).await.0, StatusCode::OK);
    assert_eq!(call(&app, &seen_missing).await.0, StatusCode::UNAUTHORIZED);
    let cached_at = Instant::now();

    rig.relay.stop().await;
    // Within the TTL the cache answers what it knows (the store said so less than a TTL ago;
    // revocation and expiry are still checked against the clock).
    let (status, body, _) = call(&app, token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = call(&app, &seen_missing).await;
    assert!(cached_at.elapsed() < ttl, "the test itself was too slow");
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a cached miss");
    // What it does not know is a 503, never a 401.
    let (status, body, _) = call(&app, &never_seen).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    // After the TTL nothing is known: 503 for both, not a stale 200 and not a 401.
    tokio::time::sleep(ttl.saturating_sub(cached_at.elapsed()) + Duration::from_millis(50)).await;
    for text in [token, seen_missing.as_str()] {
        let (status, body, _) = call(&app, text).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }

    rig.relay.restart().await;
    until_200(&app, token).await;
}

#[tokio::test]
async fn buffered_last_use_survives_a_cut_and_is_written_once_after_it_forward_only() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let mut rig = rig(&url, Duration::from_secs(1)).await;
    let t0 = t0();
    let clock = Arc::new(ManualClock::new(t0));
    // The cache lets verifications (and so last-use notes) go on during the cut.
    let store = CachedStore::builder(rig.store.clone())
        .ttl(Duration::from_secs(600))
        .build();
    let verifier = Verifier::builder(store).clock(clock.clone()).build();
    let a = issue(&verifier, "a").await;
    let b = issue(&verifier, "b").await;
    let need = need();

    clock.set(t0 + TimeDelta::seconds(1));
    verifier
        .verify(a.token.expose_secret(), &need)
        .await
        .unwrap();
    verifier
        .verify(b.token.expose_secret(), &need)
        .await
        .unwrap();
    assert_eq!(verifier.last_used_pending(), 2);

    rig.relay.stop().await;
    let err = verifier.flush_last_used().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err:?}");
    assert_eq!(
        verifier.last_used_pending(),
        2,
        "a failed flush keeps its notes"
    );
    // More uses during the cut, from the cache: a later time for a.
    clock.set(t0 + TimeDelta::seconds(2));
    verifier
        .verify(a.token.expose_secret(), &need)
        .await
        .unwrap();
    let err = verifier.flush_last_used().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err:?}");
    assert_eq!(verifier.last_used_pending(), 2);
    // Meanwhile another replica, still connected, wrote a later use of b.
    let b_elsewhere = t0 + TimeDelta::seconds(9);
    rig.set_last_used(&b.record.id, b_elsewhere).await;
    assert_eq!(
        rig.last_used(&a.record.id).await,
        None,
        "nothing written during the cut"
    );

    rig.relay.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let written = loop {
        match verifier.flush_last_used().await {
            Ok(written) => break written,
            Err(err) => {
                assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err:?}");
                assert!(Instant::now() < deadline, "no recovery within 10 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(written, 2, "both notes, once each");
    assert_eq!(verifier.last_used_pending(), 0);
    assert_eq!(
        rig.last_used(&a.record.id).await,
        Some(t0 + TimeDelta::seconds(2)),
        "the latest use noted during the cut"
    );
    assert_eq!(
        rig.last_used(&b.record.id).await,
        Some(b_elsewhere),
        "the older buffered time did not move the stored one back"
    );
    assert_eq!(verifier.flush_last_used().await.unwrap(), 0, "nothing left");
}

#[tokio::test]
async fn a_flush_that_times_out_mid_statement_keeps_its_notes_and_the_late_write_is_harmless() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let deadline = Duration::from_secs(1);
    // One connection, not pinged before use: once it has prepared the batch UPDATE, a flush
    // sends it in one go, so the delays decide exactly when PostgreSQL runs it.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_millis(500));
    let rig = rig_with(&url, deadline, pool).await;
    let t0 = t0();
    let clock = Arc::new(ManualClock::new(t0));
    let store = CachedStore::builder(rig.store.clone())
        .ttl(Duration::from_secs(600))
        .build();
    let verifier = Verifier::builder(store).clock(clock.clone()).build();
    let a = issue(&verifier, "a").await;
    let need = need();
    let at = |s| t0 + TimeDelta::seconds(s);
    let flush_until_ok = async || {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match verifier.flush_last_used().await {
                Ok(written) => return written,
                Err(err) => {
                    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err:?}");
                    assert!(Instant::now() < until, "no recovery within 10 s");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };

    clock.set(at(1));
    verifier
        .verify(a.token.expose_secret(), &need)
        .await
        .unwrap();
    assert_eq!(verifier.flush_last_used().await.unwrap(), 1);
    assert_eq!(rig.last_used(&a.record.id).await, Some(at(1)));

    // 1. The answer is late: PostgreSQL runs the UPDATE, the store gives up before the reply
    //    comes, and keeps the note. The retry rewrites the same time, which changes nothing.
    clock.set(at(2));
    verifier
        .verify(a.token.expose_secret(), &need)
        .await
        .unwrap(); // from the cache
    rig.settle().await;
    rig.relay
        .set_delays(Duration::ZERO, Duration::from_millis(1500));
    let started = Instant::now();
    let err = verifier.flush_last_used().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err:?}");
    assert!(started.elapsed() < deadline + Duration::from_millis(500));
    assert_eq!(
        verifier.last_used_pending(),
        1,
        "the timed-out batch is kept"
    );
    let until = Instant::now() + Duration::from_secs(5);
    while rig.last_used(&a.record.id).await != Some(at(2)) {
        assert!(
            Instant::now() < until,
            "PostgreSQL never ran the timed-out UPDATE"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.relay.set_delay(Duration::ZERO);
    assert_eq!(flush_until_ok().await, 1);
    assert_eq!(verifier.last_used_pending(), 0);
    assert_eq!(rig.last_used(&a.record.id).await, Some(at(2)));

    // 2. The request is late: the UPDATE reaches PostgreSQL after another replica has written
    //    a later use. It must not move last use back, and neither must the retry.
    clock.set(at(3));
    verifier
        .verify(a.token.expose_secret(), &need)
        .await
        .unwrap();
    rig.settle().await;
    rig.relay
        .set_delays(Duration::from_millis(1500), Duration::ZERO);
    let err = verifier.flush_last_used().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err:?}");
    assert_eq!(verifier.last_used_pending(), 1);
    rig.set_last_used(&a.record.id, at(9)).await;
    // Let the stale UPDATE reach PostgreSQL, then give it time to run.
    rig.relay.drain().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rig.last_used(&a.record.id).await, Some(at(9)));
    rig.relay.set_delay(Duration::ZERO);
    assert_eq!(flush_until_ok().await, 1);
    assert_eq!(
        rig.last_used(&a.record.id).await,
        Some(at(9)),
        "a late or retried older time never moves last use back"
    );
    assert_eq!(verifier.flush_last_used().await.unwrap(), 0, "nothing left");
}
