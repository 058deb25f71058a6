//! Attack probes (review 13) for refresh-token generations (c743e34): ids are
//! `{12-char family}{8 base62 digits}`, the store keeps three tokens per family, a forgotten older
//! generation presented by the family's own client revokes the family, anything else changes
//! nothing; concurrent refreshes; PostgreSQL rotations that fail or wait; legacy tokens;
//! `PostgresGrantStore::migrate` on upgraded tables.
//!
//! Requests go straight to the router (`oneshot`).

#[path = "support/stores.rs"]
mod stores;

use std::sync::Arc;
use std::time::Duration;

use apitoken::middleware::AuthLayer;
use apitoken::oauth::{
    AuthorizationServer, BoxFuture, ClientRegistration, Consent, ConsentDecision, ConsentRequest,
    GrantFamily, GrantStore, MemoryGrantStore, PostgresGrantStore, RefreshTokenRecord,
    access_token_format, refresh_token_format, s256_challenge,
};
use apitoken::{
    ManualClock, MemoryStore, NewToken, Owner, Principal, ScopeSet, SecretHasher, TokenId,
    TokenStore, Verifier,
};
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::routing::get;
use chrono::Utc;
use http::Request;
use http::request::Parts;
use serde_json::{Value, json};
use sqlx::Connection;
use tower::ServiceExt;

const API: &str = "/api/databases";
const REDIRECT: &str = "https://app.example/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct AutoConsent;

impl Consent for AutoConsent {
    fn decide<'a>(
        &'a self,
        _request: &'a Parts,
        ask: &'a ConsentRequest,
    ) -> BoxFuture<'a, ConsentDecision> {
        Box::pin(async move {
            ConsentDecision::Approve {
                user: Owner::new("user-7").unwrap(),
                scopes: ask.scopes.clone(),
            }
        })
    }
}

struct Env<G> {
    verifier: Verifier<MemoryStore>,
    oauth: AuthorizationServer<MemoryStore, G>,
    app: Router,
}

#[derive(Clone)]
struct Client {
    id: String,
    secret: String,
}

async fn whoami(principal: Principal) -> axum::Json<Value> {
    axum::Json(json!({ "owner": principal.owner().as_str() }))
}

fn env<G: GrantStore + 'static>(grants: G) -> Env<G> {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let verifier = Verifier::builder(MemoryStore::new())
        .also_accept(access_token_format())
        .clock(clock)
        .build();
    let oauth = AuthorizationServer::builder(verifier.clone(), grants)
        .consent(AutoConsent)
        .unlimited_token_requests()
        .build()
        .expect("a valid server");
    let app = Router::new()
        .route(API, get(whoami))
        .layer(AuthLayer::new(verifier.clone()))
        .nest("/oauth", oauth.router());
    Env {
        verifier,
        oauth,
        app,
    }
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

fn post(path: &str, client: &Client, fields: &[(&str, &str)]) -> Request<Body> {
    let mut all = vec![
        ("client_id", client.id.as_str()),
        ("client_secret", client.secret.as_str()),
    ];
    all.extend_from_slice(fields);
    Request::post(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form(&all)))
        .unwrap()
}

fn refresh_request(client: &Client, token: &str) -> Request<Body> {
    post(
        "/oauth/token",
        client,
        &[("grant_type", "refresh_token"), ("refresh_token", token)],
    )
}

impl<G: GrantStore + 'static> Env<G> {
    async fn client(&self, owner: &str, scopes: &[&str]) -> Client {
        let issued = self
            .verifier
            .issuer()
            .issue(
                NewToken::new("app", Owner::new(owner).unwrap())
                    .scopes(scopes)
                    .unwrap()
                    .metadata(
                        ClientRegistration::new()
                            .redirect_uri(REDIRECT)
                            .to_metadata(),
                    ),
            )
            .await
            .unwrap();
        Client {
            id: issued.record.id.as_str().to_owned(),
            secret: issued.token.expose_secret().to_owned(),
        }
    }

    /// Authorizes and redeems: the first access and refresh tokens.
    async fn grant(&self, client: &Client) -> (String, String) {
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
            .body(Body::empty())
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status().as_u16(), 302);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let code = form_urlencoded::parse(location.split_once('?').unwrap().1.as_bytes())
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        let (status, body) = send(
            &self.app,
            post(
                "/oauth/token",
                client,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", VERIFIER),
                ],
            ),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        (
            field(&body, "access_token").to_owned(),
            field(&body, "refresh_token").to_owned(),
        )
    }

    async fn refresh(&self, client: &Client, token: &str) -> (u16, Value) {
        send(&self.app, refresh_request(client, token)).await
    }

    /// Refreshes and expects a successor.
    async fn rotate(&self, client: &Client, token: &str) -> (String, String) {
        let (status, body) = self.refresh(client, token).await;
        assert_eq!(status, 200, "{body}");
        (
            field(&body, "access_token").to_owned(),
            field(&body, "refresh_token").to_owned(),
        )
    }

    async fn api(&self, token: &str) -> u16 {
        let request = Request::get(API)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        send(&self.app, request).await.0
    }

    async fn revoked(&self, family: &TokenId) -> bool {
        self.oauth
            .grants()
            .family(family)
            .await
            .unwrap()
            .expect("the family exists")
            .revoked_at
            .is_some()
    }

    async fn live_tokens_of(&self, owner: &str) -> usize {
        let now = self.verifier.now();
        self.verifier
            .store()
            .list_by_owner(&Owner::new(owner).unwrap())
            .await
            .unwrap()
            .into_iter()
            .filter(|r| !r.is_revoked() && !r.is_expired_at(now))
            .count()
    }
}

fn field<'a>(json: &'a Value, key: &str) -> &'a str {
    json[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {json}"))
}

/// The 20-character id of a refresh token's text.
fn id_of(token: &str) -> &str {
    &token[3..23]
}

fn family_of(token: &str) -> TokenId {
    token[3..15].parse().unwrap()
}

/// A well-formed refresh token (valid checksum, random secret) with the id `id`.
fn forged(id: &str) -> String {
    let id: TokenId = id.parse().unwrap();
    refresh_token_format()
        .generate(Some(&id))
        .unwrap()
        .expose_secret()
        .to_owned()
}

fn invalid_grant(reply: &(u16, Value)) -> bool {
    reply.0 == 400 && reply.1["error"] == "invalid_grant"
}

async fn postgres_grants(url: &str) -> (PostgresGrantStore, String) {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL unreachable: {e}"));
    let schema = stores::unique_name("probe_gen");
    let grants = PostgresGrantStore::with_schema(pool, &schema).unwrap();
    grants.migrate().await.unwrap();
    (grants, schema)
}

// ---- identity of generations ----

/// After three rotations the store holds generations 0 (the first), 2 and 3. Against
/// generation 0 (held), 1 (forgotten), 2 (replaced), 3 (current), 9 (never reached), `zzzzzzzz` (the largest) and
/// malformed ids: another client changes nothing, the family's client changes nothing with a
/// wrong secret for a held token or a generation not reached, and revokes the family with a
/// forgotten one.
async fn generations_are_judged_by_their_place<G: GrantStore + 'static>(grants: G) {
    let e = env(grants);
    let client = e.client("acct-1", &["db:read"]).await;
    let thief = e.client("acct-2", &["db:read"]).await;
    let (_, rt0) = e.grant(&client).await;
    let family = family_of(&rt0);
    let fam = family.as_str().to_owned();
    assert_eq!(&id_of(&rt0)[12..], "00000000");
    let (_, rt1) = e.rotate(&client, &rt0).await;
    let (_, rt2) = e.rotate(&client, &rt1).await;
    let (at3, rt3) = e.rotate(&client, &rt2).await;
    assert_eq!(&id_of(&rt3)[12..], "00000003");
    assert!(
        e.oauth
            .grants()
            .refresh_token(&id_of(&rt0).parse().unwrap())
            .await
            .unwrap()
            .is_some(),
        "generation 0 is kept"
    );

    // Another client: nothing, for every kind of token, on /token, /revoke and /introspect.
    for token in [
        rt0.clone(),
        rt1.clone(),
        rt2.clone(),
        forged(&format!("{fam}00000000")),
    ] {
        assert!(invalid_grant(&e.refresh(&thief, &token).await));
        let (status, _) = send(
            &e.app,
            post("/oauth/revoke", &thief, &[("token", token.as_str())]),
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            !e.revoked(&family).await,
            "another client revoked via {token}"
        );
    }

    // The family's own client, with ids it cannot have been given or a wrong secret for a
    // token still held: nothing.
    let harmless = [
        forged(&format!("{fam}00000009")),               // not reached
        forged(&format!("{fam}zzzzzzzz")),               // the largest generation
        forged(&format!("{fam}00000004")),               // the next, not issued yet
        forged(&format!("{fam}00000003")),               // current, wrong secret
        forged(&format!("{fam}00000002")),               // replaced, wrong secret
        forged(&format!("{fam}00000000")),               // first, wrong secret
        format!("rt_{fam}0000000_{}", "A".repeat(40)),   // 19 characters
        format!("rt_{fam}000000000_{}", "A".repeat(40)), // 21 characters
        rt0.replace('_', "-"),
        // Checksum broken: the last character changed (never to itself, or this would be rt0).
        format!(
            "{}{}",
            &rt0[..rt0.len() - 1],
            if rt0.ends_with('X') { 'Y' } else { 'X' }
        ),
    ];
    for token in &harmless {
        let reply = e.refresh(&client, token).await;
        assert!(invalid_grant(&reply), "{token}: {reply:?}");
        assert!(!e.revoked(&family).await, "revoked by {token}");
    }
    let (status, body) = send(
        &e.app,
        post(
            "/oauth/introspect",
            &client,
            &[("token", forged(&format!("{fam}00000000")).as_str())],
        ),
    )
    .await;
    // The client lacks oauth:introspect; whatever the answer, nothing is revoked.
    assert!(
        status == 200 || status == 401 || status == 403,
        "{status} {body}"
    );
    assert!(!e.revoked(&family).await);
    assert_eq!(e.api(&at3).await, 200);

    // A forgotten generation from the family's own client, secret unknowable: revoked, with
    // the access tokens.
    let reply = e.refresh(&client, &forged(&format!("{fam}00000001"))).await;
    assert!(invalid_grant(&reply), "{reply:?}");
    assert!(e.revoked(&family).await);
    assert_eq!(e.api(&at3).await, 401);
    assert!(invalid_grant(&e.refresh(&client, &rt3).await));
    // And again, on a revoked family: still just invalid_grant (no 5xx).
    assert!(invalid_grant(&e.refresh(&client, &rt0).await));
    let (status, _) = send(
        &e.app,
        post("/oauth/revoke", &client, &[("token", rt0.as_str())]),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn memory_generations_are_judged_by_their_place() {
    generations_are_judged_by_their_place(MemoryGrantStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_generations_are_judged_by_their_place() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let (grants, _) = postgres_grants(&url).await;
    generations_are_judged_by_their_place(grants).await;
}

/// Many rotations: always exactly three tokens of the family in the store (generation 0, the
/// one replaced, the current one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_family_holds_three_tokens_however_often_it_rotates() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let (grants, schema) = postgres_grants(&url).await;
    let e = env(grants);
    let client = e.client("acct-1", &["db:read"]).await;
    let (_, mut rt) = e.grant(&client).await;
    let family = family_of(&rt);
    for _ in 0..70 {
        rt = e.rotate(&client, &rt).await.1;
    }
    // 70 in base62 is "18".
    assert_eq!(&id_of(&rt)[12..], "00000018");
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let held: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.apitoken_oauth_refresh_tokens WHERE family = $1"
    )))
    .bind(family.as_str())
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(held, 3);
    let generation: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT generation FROM {schema}.apitoken_oauth_families WHERE id = $1"
    )))
    .bind(family.as_str())
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(generation, 70);
}

// ---- concurrency ----

/// Eight refreshes of one token at once: at most one answer carries a successor, and once
/// they are all answered nothing of the grant works (concurrent use is reuse).
async fn concurrent_refreshes_leave_nothing_usable<G: GrantStore + 'static>(grants: G) {
    let e = Arc::new(env(grants));
    let client = e.client("acct-1", &["db:read"]).await;
    let (_, rt0) = e.grant(&client).await;
    let (_, rt1) = e.rotate(&client, &rt0).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (e, client, rt1, barrier) =
                (Arc::clone(&e), client.clone(), rt1.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                e.refresh(&client, &rt1).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            200 => winners.push(body),
            400 => assert_eq!(body["error"], "invalid_grant"),
            other => panic!("{other} {body}"),
        }
    }
    assert!(winners.len() <= 1, "{winners:?}");
    for body in &winners {
        assert_eq!(e.api(field(body, "access_token")).await, 401);
        assert!(invalid_grant(
            &e.refresh(&client, field(body, "refresh_token")).await
        ));
    }
    assert!(e.revoked(&family_of(&rt1)).await);
    assert_eq!(e.live_tokens_of("user-7").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_concurrent_refreshes_leave_nothing_usable() {
    concurrent_refreshes_leave_nothing_usable(MemoryGrantStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_refreshes_leave_nothing_usable() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let (grants, _) = postgres_grants(&url).await;
    concurrent_refreshes_leave_nothing_usable(grants).await;
}

/// A refresh racing purges: the live family is never purged from under it, whatever order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_refreshes_racing_purges_keep_the_family() {
    let grants = Arc::new(MemoryGrantStore::new());
    let e = Arc::new(env(Arc::clone(&grants)));
    let client = e.client("acct-1", &["db:read"]).await;
    let (_, mut rt) = e.grant(&client).await;
    let family = family_of(&rt);
    for _ in 0..20 {
        let purger = {
            let e = Arc::clone(&e);
            tokio::spawn(async move { e.oauth.purge().await })
        };
        rt = e.rotate(&client, &rt).await.1;
        purger.await.unwrap().unwrap();
    }
    assert!(!e.revoked(&family).await);
    assert_eq!(grants.purge(Utc::now(), Utc::now()).await.unwrap(), 0);
}

async fn wait_for_lock_waiter(watcher: &mut sqlx::PgConnection, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%' || $1 || '%'",
        )
        .bind(needle)
        .fetch_one(&mut *watcher)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing waited");
        tokio::task::yield_now().await;
    }
}

/// On PostgreSQL, a refresh that waits on the family's row while another session revokes the
/// family: once the revocation commits, the refresh is invalid_grant and the access token it
/// minted meanwhile is withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_refresh_waiting_on_a_revocation_hands_out_nothing() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let (grants, schema) = postgres_grants(&url).await;
    let e = Arc::new(env(grants));
    let client = e.client("acct-1", &["db:read"]).await;
    let (at0, rt0) = e.grant(&client).await;
    let family = family_of(&rt0);
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {schema}.apitoken_oauth_families WHERE id = $1 FOR UPDATE"
    )))
    .bind(family.as_str())
    .fetch_one(&mut holder)
    .await
    .unwrap();
    let refresh = {
        let (e, client, rt0) = (Arc::clone(&e), client.clone(), rt0.clone());
        tokio::spawn(async move { e.refresh(&client, &rt0).await })
    };
    wait_for_lock_waiter(&mut watcher, "FOR UPDATE").await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.apitoken_oauth_families SET revoked_at = now() WHERE id = $1"
    )))
    .bind(family.as_str())
    .execute(&mut holder)
    .await
    .unwrap();
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    let reply = refresh.await.unwrap();
    assert!(invalid_grant(&reply), "{reply:?}");
    assert_eq!(e.api(&at0).await, 401, "the family's access token");
    assert_eq!(e.live_tokens_of("user-7").await, 0);
}

/// On PostgreSQL, a rotation whose last statement (the DELETE of older tokens) fails: 503, the
/// access token minted for it is withdrawn, and the old refresh token still works once the
/// database does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_rotation_failing_at_its_delete_changes_nothing() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let (grants, schema) = postgres_grants(&url).await;
    let e = env(grants);
    let client = e.client("acct-1", &["db:read"]).await;
    let (_, rt0) = e.grant(&client).await;
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'refused by probe'; END $$; \
         CREATE TRIGGER refuse BEFORE DELETE ON {schema}.apitoken_oauth_refresh_tokens \
         FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse();"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let reply = e.refresh(&client, &rt0).await;
    assert_eq!(reply.0, 503, "{reply:?}");
    assert_eq!(e.live_tokens_of("user-7").await, 1, "only the redemption's");
    assert!(!e.revoked(&family_of(&rt0)).await);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TRIGGER refuse ON {schema}.apitoken_oauth_refresh_tokens"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let (_, rt1) = e.rotate(&client, &rt0).await;
    assert_eq!(&id_of(&rt1)[12..], "00000001");
}

// ---- legacy tokens ----

/// A token from before generations (random 12-character id), rotated twice. Its id names no
/// family, so the store keeps it (it is generation 0); presented again by its own client, it
/// is a rotated token coming back, and revokes the family.
#[tokio::test]
async fn a_forgotten_legacy_token_still_revokes_its_family() {
    let grants = Arc::new(MemoryGrantStore::new());
    let e = env(Arc::clone(&grants));
    let client = e.client("acct-1", &["db:read"]).await;
    let legacy = apitoken::TokenFormat::builder()
        .prefix("rt_")
        .separator(apitoken::Separator::Underscore)
        .build()
        .unwrap();
    let id: TokenId = "LegacyTok123".parse().unwrap();
    let text = legacy.generate(Some(&id)).unwrap();
    let text = text.expose_secret().to_owned();
    let hash = SecretHasher::sha256().hash(legacy.parse(&text).unwrap().secret().as_bytes());
    let family_id: TokenId = "LegacyFam123".parse().unwrap();
    let family = GrantFamily::new(
        family_id,
        client.id.parse().unwrap(),
        Owner::new("user-7").unwrap(),
        ScopeSet::parse("db:read").unwrap(),
        e.verifier.now(),
    );
    grants
        .insert_family(
            family,
            RefreshTokenRecord::new(id, family_id, hash, e.verifier.now()),
        )
        .await
        .unwrap();
    let (_, rt1) = e.rotate(&client, &text).await;
    let (at2, _rt2) = e.rotate(&client, &rt1).await;
    assert!(
        grants.refresh_token(&id).await.unwrap().is_some(),
        "generation 0 is kept"
    );
    let reply = e.refresh(&client, &text).await;
    assert!(invalid_grant(&reply), "{reply:?}");
    assert!(
        e.revoked(&family_id).await,
        "the rotated legacy token came back and the family lives on"
    );
    assert_eq!(e.api(&at2).await, 401);
}

// ---- migrate ----

/// `migrate()` on tables that already have everything, while another session holds a
/// transaction open on them: with a reader it must not wait (the documented reason for
/// looking the columns up first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrate_on_upgraded_tables_does_not_wait_for_a_reader() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let (grants, schema) = postgres_grants(&url).await;
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.apitoken_oauth_refresh_tokens"
    )))
    .execute(&mut holder)
    .await
    .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(3), grants.migrate()).await;
    assert!(matches!(done, Ok(Ok(()))), "{done:?}");
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
}

/// The same with a writer (an open rotation, say): `CREATE INDEX IF NOT EXISTS` takes a
/// ShareLock on the table even when the index exists, so `migrate()` queues behind the writer
/// and every later writer queues behind `migrate()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrate_on_upgraded_tables_does_not_wait_for_a_writer() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let (grants, schema) = postgres_grants(&url).await;
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.apitoken_oauth_refresh_tokens SET used_at = now() WHERE false"
    )))
    .execute(&mut holder)
    .await
    .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(3), grants.migrate()).await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    assert!(matches!(done, Ok(Ok(()))), "{done:?}");
}
