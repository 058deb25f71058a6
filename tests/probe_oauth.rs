//! Review probes for the OAuth fixes: a replayed code revokes what the first redemption
//! issued however the requests interleave (PostgreSQL stores, cancelled redemptions, purge in
//! between, a JWT minter), access tokens keep the client key's rate limit, and a revoked
//! client key's access tokens (and what they mint) end by the access-token lifetime.
//!
//! Requests go straight to the router (`oneshot`), so a test can drop one mid-flight.

#[path = "support/stores.rs"]
mod stores;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use apitoken::management::TokenApi;
use apitoken::middleware::AuthLayer;
use apitoken::oauth::{
    AuthorizationServer, AuthorizationServerBuilder, BoxFuture, ClientRegistration, Consent,
    ConsentDecision, ConsentRequest, GrantStore, GrantType, MemoryGrantStore, PostgresGrantStore,
    access_token_format, s256_challenge,
};
use apitoken::rate_limit::{MemoryRateLimiter, RateLimit, RateLimitPolicy};
use apitoken::{
    ManualClock, MemoryStore, NewToken, Owner, Principal, SecretHash, StoreError, StoredToken,
    TokenId, TokenRecord, TokenStore, Verifier,
};
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::routing::get;
use chrono::{DateTime, TimeDelta, Utc};
use http::Request;
use http::request::Parts;
use serde_json::{Value, json};
use sqlx::{Connection, Row};
use tower::ServiceExt;

const API: &str = "/api/databases";
const REDIRECT: &str = "https://app.example/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const WAIT: Duration = Duration::from_secs(5);

/// Approves everything asked for the user named by `x-user`.
#[derive(Debug)]
struct AutoConsent;

impl Consent for AutoConsent {
    fn decide<'a>(
        &'a self,
        request: &'a Parts,
        ask: &'a ConsentRequest,
    ) -> BoxFuture<'a, ConsentDecision> {
        Box::pin(async move {
            let user = request
                .headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .expect("x-user");
            ConsentDecision::Approve {
                user: Owner::new(user).unwrap(),
                scopes: ask.scopes.clone(),
            }
        })
    }
}

// ---- a token store whose next insert stops at a gate, before or after it lands ----

struct Gate {
    armed: AtomicBool,
    after: AtomicBool,
    arrived: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            armed: AtomicBool::new(false),
            after: AtomicBool::new(false),
            arrived: tokio::sync::Notify::new(),
            release: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Gate {
    /// Stops the next insert before (`after = false`) or after it reaches the store.
    fn arm(&self, after: bool) {
        self.after.store(after, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    async fn arrived(&self) {
        tokio::time::timeout(WAIT, self.arrived.notified())
            .await
            .expect("an insert reached the gate");
    }

    fn release(&self) {
        self.release.add_permits(1);
    }

    async fn pass(&self) {
        self.arrived.notify_one();
        tokio::time::timeout(WAIT, self.release.acquire())
            .await
            .expect("the test released the gate")
            .unwrap()
            .forget();
    }
}

struct Gated<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S: TokenStore> TokenStore for Gated<S> {
    async fn insert(&self, record: TokenRecord, hash: SecretHash) -> Result<(), StoreError> {
        let stop = self.gate.armed.swap(false, Ordering::SeqCst);
        let after = self.gate.after.load(Ordering::SeqCst);
        if stop && !after {
            self.gate.pass().await;
        }
        let done = self.inner.insert(record, hash).await;
        if stop && after {
            self.gate.pass().await;
        }
        done
    }

    fn next_id(&self) -> impl Future<Output = Result<TokenId, StoreError>> + Send {
        self.inner.next_id()
    }

    fn get(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        self.inner.get(id)
    }

    fn find_by_hash(
        &self,
        hash: &SecretHash,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
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

// ---- the endpoints, in process ----

struct Env<S, G> {
    verifier: Verifier<S>,
    clock: Arc<ManualClock>,
    oauth: AuthorizationServer<S, G>,
    app: Router,
}

async fn whoami(principal: Principal) -> axum::Json<Value> {
    axum::Json(json!({ "owner": principal.owner().as_str() }))
}

fn env<S: TokenStore + 'static, G: GrantStore + 'static>(
    store: S,
    grants: G,
    layer: impl FnOnce(AuthLayer<S>) -> AuthLayer<S>,
    configure: impl FnOnce(AuthorizationServerBuilder<S, G>) -> AuthorizationServerBuilder<S, G>,
) -> Env<S, G> {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let verifier = Verifier::builder(store)
        .also_accept(access_token_format())
        .clock(clock.clone())
        .build();
    env_with(verifier, clock, grants, layer, configure)
}

fn env_with<S: TokenStore + 'static, G: GrantStore + 'static>(
    verifier: Verifier<S>,
    clock: Arc<ManualClock>,
    grants: G,
    layer: impl FnOnce(AuthLayer<S>) -> AuthLayer<S>,
    configure: impl FnOnce(AuthorizationServerBuilder<S, G>) -> AuthorizationServerBuilder<S, G>,
) -> Env<S, G> {
    let oauth =
        configure(AuthorizationServer::builder(verifier.clone(), grants).consent(AutoConsent))
            .build()
            .expect("a valid server");
    let app = Router::new()
        .route(API, get(whoami))
        .nest("/tokens", TokenApi::new(verifier.clone()).router())
        .layer(layer(AuthLayer::new(verifier.clone())))
        .nest("/oauth", oauth.router());
    Env {
        verifier,
        clock,
        oauth,
        app,
    }
}

#[derive(Clone)]
struct Client {
    id: String,
    secret: String,
}

fn form(fields: &[(&str, &str)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (key, value) in fields {
        out.append_pair(key, value);
    }
    out.finish()
}

async fn send(app: &Router, request: Request<Body>) -> (u16, Value) {
    let response = tokio::time::timeout(WAIT, app.clone().oneshot(request))
        .await
        .expect("a timely answer")
        .unwrap();
    let status = response.status().as_u16();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn token_request(client: &Client, fields: &[(&str, &str)]) -> Request<Body> {
    let mut all = vec![
        ("client_id", client.id.as_str()),
        ("client_secret", client.secret.as_str()),
    ];
    all.extend_from_slice(fields);
    Request::post("/oauth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form(&all)))
        .unwrap()
}

fn redeem_request(client: &Client, code: &str) -> Request<Body> {
    token_request(
        client,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
}

impl<S: TokenStore + 'static, G: GrantStore + 'static> Env<S, G> {
    async fn client(
        &self,
        owner: &str,
        scopes: &[&str],
        registration: ClientRegistration,
    ) -> Client {
        self.client_with(owner, scopes, registration.to_metadata())
            .await
    }

    async fn client_with(
        &self,
        owner: &str,
        scopes: &[&str],
        metadata: apitoken::Metadata,
    ) -> Client {
        let issued = self
            .verifier
            .issuer()
            .issue(
                NewToken::new("app", Owner::new(owner).unwrap())
                    .scopes(scopes)
                    .unwrap()
                    .metadata(metadata),
            )
            .await
            .unwrap();
        Client {
            id: issued.record.id.as_str().to_owned(),
            secret: issued.token.expose_secret().to_owned(),
        }
    }

    async fn code(&self, client: &Client, user: &str) -> String {
        let challenge = s256_challenge(VERIFIER);
        let query = form(&[
            ("response_type", "code"),
            ("client_id", &client.id),
            ("redirect_uri", REDIRECT),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("state", "s"),
        ]);
        let request = Request::get(format!("/oauth/authorize?{query}"))
            .header("x-user", user)
            .body(Body::empty())
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status().as_u16(), 302);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let query = location.split_once('?').unwrap().1;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .expect("a code")
    }

    async fn redeem(&self, client: &Client, code: &str) -> (u16, Value) {
        send(&self.app, redeem_request(client, code)).await
    }

    async fn api(&self, token: &str) -> u16 {
        let request = Request::get(API)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        send(&self.app, request).await.0
    }

    async fn live_tokens_of(&self, owner: &str) -> Vec<TokenRecord> {
        let now = self.verifier.now();
        self.verifier
            .store()
            .list_by_owner(&Owner::new(owner).unwrap())
            .await
            .unwrap()
            .into_iter()
            .filter(|r| !r.is_revoked() && !r.is_expired_at(now))
            .collect()
    }
}

fn field<'a>(json: &'a Value, key: &str) -> &'a str {
    json[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {json}"))
}

async fn postgres_pair(url: &str) -> (apitoken::PostgresStore, PostgresGrantStore) {
    let (tokens, grants, _) = postgres_pair_in(url).await;
    (tokens, grants)
}

/// The same, with the grant store's schema name.
async fn postgres_pair_in(url: &str) -> (apitoken::PostgresStore, PostgresGrantStore, String) {
    let tokens = stores::postgres(url).await;
    let schema = stores::unique_name("probe_g");
    let grants = PostgresGrantStore::with_schema(tokens.pool().clone(), &schema).unwrap();
    grants.migrate().await.unwrap();
    (tokens, grants, schema)
}

// ---- claim 1: a replayed code revokes what the first redemption issued ----

/// The replay lands while the first redemption's access token is being stored (before, or
/// just after, it reaches PostgreSQL), with both stores on PostgreSQL: neither request gets a
/// usable token.
async fn replay_during_mint_over_postgres(after: bool) {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let (tokens, grants) = postgres_pair(&url).await;
    let gate = Arc::new(Gate::default());
    let store = Gated {
        inner: tokens,
        gate: gate.clone(),
    };
    let e = env(store, grants, |l| l, |b| b);
    let client = e
        .client(
            "acct-1",
            &["db:read"],
            ClientRegistration::new().redirect_uri(REDIRECT),
        )
        .await;
    let code = e.code(&client, "user-7").await;
    gate.arm(after);
    let first = tokio::spawn(send_owned(e.app.clone(), redeem_request(&client, &code)));
    gate.arrived().await;
    let replay = e.redeem(&client, &code).await;
    gate.release();
    let first = first.await.unwrap();
    assert_eq!(
        (replay.0, replay.1["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    if first.0 == 200 {
        // Handed out after all: then the replay must have revoked it.
        assert_eq!(
            e.api(field(&first.1, "access_token")).await,
            401,
            "{first:?}"
        );
        let refresh = send(
            &e.app,
            token_request(
                &client,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", field(&first.1, "refresh_token")),
                ],
            ),
        )
        .await;
        assert_eq!(refresh.0, 400, "{refresh:?}");
    }
    assert!(
        e.live_tokens_of("user-7").await.is_empty(),
        "{:#?}",
        e.live_tokens_of("user-7").await
    );
}

async fn send_owned(app: Router, request: Request<Body>) -> (u16, Value) {
    send(&app, request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_postgres_a_replay_before_the_access_token_is_stored_leaves_nothing_usable() {
    replay_during_mint_over_postgres(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_postgres_a_replay_just_after_the_access_token_is_stored_leaves_nothing_usable() {
    replay_during_mint_over_postgres(true).await;
}

/// The first redemption is dropped (the client hung up) while its access token is being
/// stored: the code is spent and its family stored, nothing reached anyone, and a replay
/// finds the family and leaves nothing usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redemption_dropped_mid_mint_leaves_a_spent_code_and_nothing_usable() {
    let gate = Arc::new(Gate::default());
    let store = Gated {
        inner: MemoryStore::new(),
        gate: gate.clone(),
    };
    let e = env(store, MemoryGrantStore::new(), |l| l, |b| b);
    let client = e
        .client(
            "acct-1",
            &["db:read"],
            ClientRegistration::new().redirect_uri(REDIRECT),
        )
        .await;
    let code = e.code(&client, "user-7").await;
    gate.arm(true);
    let first = tokio::spawn(send_owned(e.app.clone(), redeem_request(&client, &code)));
    gate.arrived().await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    // The stored access token reached nobody, but it is live until the replay.
    let replay = e.redeem(&client, &code).await;
    assert_eq!(
        (replay.0, replay.1["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(
        e.live_tokens_of("user-7").await.is_empty(),
        "{:#?}",
        e.live_tokens_of("user-7").await
    );
}

/// On PostgreSQL, a redemption dropped while its transaction waits (another session holds the
/// code's row) commits nothing: the code is either unspent (a later redemption works) or
/// spent with its family (a later one revokes it). Never a half state, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_postgres_a_redemption_dropped_mid_transaction_is_all_or_nothing() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let (tokens, grants, codes) = postgres_pair_in(&url).await;
    let e = env(tokens, grants, |l| l, |b| b);
    let client = e
        .client(
            "acct-1",
            &["db:read"],
            ClientRegistration::new().redirect_uri(REDIRECT),
        )
        .await;
    let code = e.code(&client, "user-7").await;
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    let held = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {codes}.apitoken_oauth_codes WHERE used_at IS NULL FOR UPDATE"
    )))
    .fetch_all(&mut holder)
    .await
    .unwrap();
    assert!(!held.is_empty(), "the code row is ours to hold");
    let first = tokio::spawn(send_owned(e.app.clone(), redeem_request(&client, &code)));
    let deadline = Instant::now() + WAIT;
    loop {
        let n: i64 = sqlx::query(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%SET used_at%'",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap()
        .get(0);
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the redemption never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();

    let again = e.redeem(&client, &code).await;
    eprintln!("after the dropped redemption: {again:?}");
    match again.0 {
        200 => assert_eq!(e.api(field(&again.1, "access_token")).await, 200),
        400 => assert!(e.live_tokens_of("user-7").await.is_empty()),
        other => panic!("{other}: {again:?}"),
    }
}

/// `purge` between the redemption and the replay (the code not yet expired) keeps what the
/// replay needs, for a client without refresh tokens (a family with no refresh token) and
/// with them; on both grant stores.
async fn purge_between_redemption_and_replay<S: TokenStore + 'static, G: GrantStore + 'static>(
    e: Env<S, G>,
) {
    for registration in [
        ClientRegistration::new()
            .redirect_uri(REDIRECT)
            .grant_types([GrantType::AuthorizationCode]),
        ClientRegistration::new().redirect_uri(REDIRECT),
    ] {
        let client = e.client("acct-1", &["db:read"], registration).await;
        let code = e.code(&client, "user-7").await;
        let first = e.redeem(&client, &code).await;
        assert_eq!(first.0, 200, "{first:?}");
        let access = field(&first.1, "access_token").to_owned();
        e.clock.advance(TimeDelta::seconds(30));
        e.oauth.purge().await.unwrap();
        let replay = e.redeem(&client, &code).await;
        assert_eq!(replay.0, 400, "{replay:?}");
        assert_eq!(
            e.api(&access).await,
            401,
            "the replay revoked the access token"
        );
        // A code past its lifetime but not purged yet is still a replay.
        let code = e.code(&client, "user-9").await;
        let third = e.redeem(&client, &code).await;
        let third_access = field(&third.1, "access_token").to_owned();
        e.clock.advance(TimeDelta::minutes(5));
        assert_eq!(e.redeem(&client, &code).await.0, 400);
        assert_eq!(e.api(&third_access).await, 401, "expired code, replayed");
    }
}

#[tokio::test]
async fn purge_between_redemption_and_replay_keeps_the_family_in_memory() {
    purge_between_redemption_and_replay(env(
        MemoryStore::new(),
        MemoryGrantStore::new(),
        |l| l,
        |b| b,
    ))
    .await;
}

#[tokio::test]
async fn purge_between_redemption_and_replay_keeps_the_family_on_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let (tokens, grants) = postgres_pair(&url).await;
    purge_between_redemption_and_replay(env(tokens, grants, |l| l, |b| b)).await;
}

/// With a JWT minter, a replay cannot revoke the JWT (documented), but it must end the
/// family's refresh token; and a JWT is no client secret under the key's own id either.
#[tokio::test]
async fn with_a_jwt_minter_a_replay_ends_the_refresh_token() {
    use apitoken::jwt::{JwtIssuer, JwtKey, JwtValidator};

    let key = || JwtKey::hs256(b"hs256-test-secret-of-32-bytes!!!").unwrap();
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let verifier = Verifier::builder(MemoryStore::new())
        .also_accept(access_token_format())
        .clock(clock.clone())
        .jwt(
            JwtValidator::builder("https://iss", "https://aud")
                .key(key())
                .build()
                .unwrap(),
        )
        .build();
    let issuer = JwtIssuer::builder(key(), "https://iss", "https://aud")
        .clock(clock.clone())
        .build()
        .unwrap();
    let e = env_with(
        verifier,
        clock,
        MemoryGrantStore::new(),
        |l| l,
        |b| b.minter(issuer),
    );
    let client = e
        .client(
            "acct-1",
            &["db:read"],
            ClientRegistration::new().redirect_uri(REDIRECT),
        )
        .await;
    let code = e.code(&client, "user-7").await;
    let first = e.redeem(&client, &code).await;
    assert_eq!(first.0, 200, "{first:?}");
    let jwt = field(&first.1, "access_token").to_owned();
    let refresh_token = field(&first.1, "refresh_token").to_owned();
    assert_eq!(e.api(&jwt).await, 200);

    // A JWT as client secret, claiming the client key's id: no client.
    let as_secret = send(
        &e.app,
        token_request(
            &Client {
                id: client.id.clone(),
                secret: jwt.clone(),
            },
            &[("grant_type", "client_credentials")],
        ),
    )
    .await;
    assert_eq!(
        (as_secret.0, as_secret.1["error"].as_str()),
        (400, Some("invalid_client")),
        "{as_secret:?}"
    );

    assert_eq!(e.redeem(&client, &code).await.0, 400);
    let refreshed = send(
        &e.app,
        token_request(
            &client,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh_token),
            ],
        ),
    )
    .await;
    assert_eq!(
        (refreshed.0, refreshed.1["error"].as_str()),
        (400, Some("invalid_grant")),
        "the replay ended the refresh token"
    );
}

// ---- claim 5: access tokens keep the client key's rate limit ----

/// The client key may make one request an hour. Every access token it obtains carries that
/// limit, but under the default per-token key each starts with a fresh budget, and the token
/// endpoint spends none of the key's: the key buys as many requests as it likes. (The reason
/// given for refusing rate-limited JWTs, "each JWT would start with a fresh budget", applies
/// to opaque access tokens just the same.)
#[tokio::test]
async fn a_rate_limited_client_key_cannot_multiply_its_budget_through_access_tokens() {
    let limiter_clock = Arc::new(ManualClock::new(Utc::now()));
    let limiter = MemoryRateLimiter::with_clock(limiter_clock);
    let e = env(
        MemoryStore::new(),
        MemoryGrantStore::new(),
        |l| l.rate_limit(limiter, RateLimitPolicy::new(RateLimit::per_minute(100))),
        |b| b,
    );
    let mut metadata = ClientRegistration::new()
        .redirect_uri(REDIRECT)
        .to_metadata();
    metadata.insert(
        "rate_limit".into(),
        RateLimit::per_hour(1).to_metadata_value(),
    );
    let client = e.client_with("acct-1", &["db:read"], metadata).await;
    // The key itself: one request, then 429.
    assert_eq!(e.api(&client.secret).await, 200);
    assert_eq!(e.api(&client.secret).await, 429);

    let mut served = 0;
    for _ in 0..3 {
        let (status, grant) = send(
            &e.app,
            token_request(&client, &[("grant_type", "client_credentials")]),
        )
        .await;
        assert_eq!(status, 200, "{grant}");
        if e.api(field(&grant, "access_token")).await == 200 {
            served += 1;
        }
    }
    assert!(
        served == 0,
        "a key limited to 1 request an hour (already spent) got {served} more through \
         fresh access tokens"
    );
}

// ---- claim 8: a revoked client key's tokens end by the access-token lifetime ----

/// An access token of a client key holding `tokens:write` mints an API key and rotates a
/// long-lived one of the same owner through `TokenApi`; once the key is revoked and the
/// access-token lifetime has passed, none of it works.
#[tokio::test]
async fn what_a_revoked_client_keys_access_token_minted_ends_with_it() {
    let e = env(MemoryStore::new(), MemoryGrantStore::new(), |l| l, |b| b);
    let client = e
        .client(
            "acct-1",
            &["db:read", "tokens:write"],
            ClientRegistration::new().redirect_uri(REDIRECT),
        )
        .await;
    let long_lived = e
        .verifier
        .issuer()
        .issue(
            NewToken::new("ci", Owner::new("acct-1").unwrap())
                .scopes(["db:read"])
                .unwrap(),
        )
        .await
        .unwrap();
    let (_, grant) = send(
        &e.app,
        token_request(
            &client,
            &[
                ("grant_type", "client_credentials"),
                ("scope", "db:read tokens:write"),
            ],
        ),
    )
    .await;
    let access = field(&grant, "access_token").to_owned();
    let bearer = format!("Bearer {access}");
    let (status, made) = send(
        &e.app,
        Request::post("/tokens")
            .header("authorization", &bearer)
            .header("content-type", "application/json")
            .body(Body::from(r#"{"name":"made","scopes":["db:read"]}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let (status, rotated) = send(
        &e.app,
        Request::post(format!("/tokens/{}/rotate", long_lived.record.id))
            .header("authorization", &bearer)
            .header("content-type", "application/json")
            .body(Body::from(r#"{"grace_seconds":0}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{rotated}");

    let key: TokenId = client.id.parse().unwrap();
    assert!(
        e.verifier
            .store()
            .revoke(&key, e.verifier.now())
            .await
            .unwrap()
    );
    e.clock.advance(TimeDelta::minutes(60));
    for token in [&access, field(&made, "token"), field(&rotated, "token")] {
        assert_eq!(e.api(token).await, 401, "{token} outlived the bound");
    }
}
