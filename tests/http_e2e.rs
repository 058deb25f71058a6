//! End-to-end tests of the tower middleware: the quickstart server on a loopback port, driven
//! over real TCP by hyper's client and by `curl`.

#[path = "../examples/quickstart.rs"]
#[allow(dead_code)]
mod quickstart;
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use apitoken::{
    Clock, ManualClock, MemoryStore, NewToken, Owner, SecretHasher, TokenFormat, TokenId,
    TokenStore, Verifier,
};
use chrono::{DateTime, TimeDelta, Utc};
use http::Method;
use serde_json::{Value, json};

use support::{
    BAD_REQUEST, BARE_CHALLENGE, Client, FlakyStore, INVALID_REQUEST, INVALID_TOKEN, Reply, Server,
    UNAUTHENTICATED, UNAUTHORIZED, UNAVAILABLE, curl, curl_available, secret_part, token_id,
    with_one_char_changed,
};

const VPS: &str = "/api/v1/vps";
const TOKENS: &str = "/api/v1/tokens";

/// The quickstart server over `verifier`, and the bootstrap token issued before it starts.
struct Fixture<S> {
    verifier: Verifier<S>,
    format: TokenFormat,
    bootstrap: String,
    client: Client,
    // Last: dropping it stops the server after the client is gone.
    server: Server,
}

async fn fixture_over<S: TokenStore + 'static>(verifier: Verifier<S>) -> Fixture<S> {
    let bootstrap = quickstart::issue_bootstrap_token(&verifier)
        .await
        .expect("bootstrap token")
        .expose_secret()
        .to_owned();
    let server = Server::start(quickstart::app(verifier.clone())).await;
    let client = Client::new(&server);
    Fixture {
        verifier,
        format: quickstart::token_format(),
        bootstrap,
        client,
        server,
    }
}

async fn fixture() -> Fixture<MemoryStore> {
    fixture_over(
        Verifier::builder(MemoryStore::new())
            .format(quickstart::token_format())
            .build(),
    )
    .await
}

/// A fixture whose verifier (and issuer, and so the server's token endpoint) reads `clock`.
async fn fixture_with_clock(clock: Arc<ManualClock>) -> Fixture<MemoryStore> {
    fixture_over(
        Verifier::builder(MemoryStore::new())
            .format(quickstart::token_format())
            .clock(clock)
            .build(),
    )
    .await
}

impl<S> Fixture<S> {
    /// `POST /api/v1/tokens` as `with`; returns the reply (not checked).
    async fn create_token(
        &self,
        with: &str,
        name: &str,
        scopes: &[&str],
        expires_at: Option<DateTime<Utc>>,
    ) -> Reply {
        let mut body = json!({ "name": name, "scopes": scopes });
        if let Some(at) = expires_at {
            body["expires_at"] = json!(at);
        }
        self.client
            .bearer(Method::POST, TOKENS, with, Some(&body.to_string()))
            .await
    }

    /// Creates a token over HTTP and returns its text; fails the test unless it is 201.
    async fn mint(&self, with: &str, name: &str, scopes: &[&str]) -> String {
        let reply = self.create_token(with, name, scopes, None).await;
        assert_eq!(reply.status, 201, "{reply:#?}");
        reply.json()["token"]
            .as_str()
            .expect("token in the response")
            .to_owned()
    }

    /// Issues a token directly (not over HTTP) for `owner`.
    async fn issue_direct(&self, owner: &str, scopes: &[&str]) -> String
    where
        S: TokenStore,
    {
        let new = NewToken::new("direct", Owner::new(owner).expect("owner"))
            .scopes(scopes)
            .expect("scopes");
        self.verifier
            .issuer()
            .issue(new)
            .await
            .expect("issued")
            .token
            .expose_secret()
            .to_owned()
    }

    async fn get_vps(&self, token: &str) -> Reply {
        self.client.bearer(Method::GET, VPS, token, None).await
    }
}

#[tokio::test]
async fn bearer_in_any_case_and_apk_are_accepted() {
    let f = fixture().await;
    // RFC 9110 §11.1: scheme names are case-insensitive; §11.4: `1*SP` before the token.
    for scheme in ["Bearer", "bearer", "BEARER", "apk", "APK", "Bearer   "] {
        let reply = f
            .client
            .call(
                Method::GET,
                VPS,
                Some(&format!("{scheme} {}", f.bootstrap)),
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{scheme}: {reply:#?}");
        assert_eq!(reply.body, "[]", "{scheme}");
        assert_eq!(reply.header("content-type"), "application/json");
        assert!(reply.headers.get("www-authenticate").is_none(), "{scheme}");
    }
}

#[tokio::test]
async fn no_credentials_or_another_scheme_get_a_bare_challenge() {
    let f = fixture().await;
    let none = f.client.call(Method::GET, VPS, None, None).await;
    none.assert_refusal(401, UNAUTHENTICATED, Some(BARE_CHALLENGE));

    let basic = f
        .client
        .call(Method::GET, VPS, Some("Basic dXNlcjpwYXNz"), None)
        .await;
    basic.assert_refusal(401, UNAUTHENTICATED, Some(BARE_CHALLENGE));

    // The token itself, but in a scheme the server does not accept: still no credentials.
    let token_scheme = f
        .client
        .call(
            Method::GET,
            VPS,
            Some(&format!("Token {}", f.bootstrap)),
            None,
        )
        .await;
    token_scheme.assert_refusal(401, UNAUTHENTICATED, Some(BARE_CHALLENGE));

    // Never from the query string (RFC 6750 §2.3, RFC 9700 §4.3.2).
    let query = f
        .client
        .call(
            Method::GET,
            &format!("{VPS}?access_token={}", f.bootstrap),
            None,
            None,
        )
        .await;
    query.assert_refusal(401, UNAUTHENTICATED, Some(BARE_CHALLENGE));

    // Writes are refused the same way, before the body is looked at.
    let post = f
        .client
        .call(Method::POST, VPS, None, Some(r#"{"name":"web-1"}"#))
        .await;
    post.assert_refusal(401, UNAUTHENTICATED, Some(BARE_CHALLENGE));
}

#[tokio::test]
async fn every_invalid_token_gets_the_same_401() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let f = fixture_with_clock(Arc::clone(&clock)).await;
    let format = &f.format;

    // Sanity: the bootstrap token works, so every refusal below is about the token.
    assert_eq!(f.get_vps(&f.bootstrap).await.status, 200);

    // Unknown: well formed, valid checksum, id nobody issued.
    let unknown = format
        .generate(Some(&TokenId::new("AAAAAAAAAAAA").expect("id")))
        .expect("generated")
        .expose_secret()
        .to_owned();

    // One character of the bootstrap token changed: the checksum no longer matches.
    let bad_checksum = with_one_char_changed(format, &f.bootstrap);
    assert_ne!(bad_checksum, f.bootstrap);

    // The bootstrap token's id with another secret and a valid checksum: wrong secret.
    let other_secret = secret_part(format, &f.mint(&f.bootstrap, "other", &[]).await);
    let wrong_secret = format
        .render(Some(&token_id(format, &f.bootstrap)), &other_secret)
        .expect("rendered")
        .expose_secret()
        .to_owned();

    // Revoked through the API, after checking that it worked.
    let revoked = f.mint(&f.bootstrap, "to-revoke", &["vps:read"]).await;
    assert_eq!(f.get_vps(&revoked).await.status, 200);
    let path = format!("{TOKENS}/{}", token_id(format, &revoked));
    let revoke = f
        .client
        .bearer(Method::DELETE, &path, &f.bootstrap, None)
        .await;
    assert_eq!(revoke.status, 204, "{revoke:#?}");

    // Expiring in 60 s by the server's clock; works until then, refused from that instant.
    let expires_at = clock.now() + TimeDelta::seconds(60);
    let created = f
        .create_token(&f.bootstrap, "short-lived", &["vps:read"], Some(expires_at))
        .await;
    assert_eq!(created.status, 201, "{created:#?}");
    let expired = created.json()["token"].as_str().expect("token").to_owned();
    clock.advance(TimeDelta::seconds(59));
    assert_eq!(f.get_vps(&expired).await.status, 200, "one second before");
    clock.advance(TimeDelta::seconds(1));

    let huge = "a".repeat(64 * 1024);
    let quoted = format!("\"{}\"", f.bootstrap);

    let cases = [
        ("unknown", unknown),
        ("bad checksum", bad_checksum),
        ("wrong secret", wrong_secret),
        ("revoked", revoked),
        ("expired", expired),
        ("64 KiB", huge),
        ("quoted", quoted),
        ("garbage", "abc".to_owned()),
    ];
    let mut first: Option<Reply> = None;
    for (what, token) in &cases {
        let reply = f.get_vps(token).await;
        assert_eq!(reply.status, 401, "{what}: {reply:#?}");
        reply.assert_refusal(401, UNAUTHENTICATED, Some(INVALID_TOKEN));
        if let Some(first) = &first {
            // No oracle: byte for byte the same answer, whatever the reason.
            assert_eq!(reply.body.as_bytes(), first.body.as_bytes(), "{what}");
            assert_eq!(
                reply.header("www-authenticate").as_bytes(),
                first.header("www-authenticate").as_bytes(),
                "{what}"
            );
            assert_eq!(reply.stable_headers(), first.stable_headers(), "{what}");
        } else {
            first = Some(reply);
        }
    }

    // And the valid token still works: nothing above broke it.
    assert_eq!(f.get_vps(&f.bootstrap).await.status, 200);
}

#[tokio::test]
async fn missing_scope_is_403_naming_the_scope() {
    let f = fixture().await;
    let read_only = f.mint(&f.bootstrap, "monitoring", &["vps:read"]).await;
    assert_eq!(f.get_vps(&read_only).await.status, 200);

    let expected = r#"Bearer realm="api", error="insufficient_scope", scope="vps:write""#;
    let post = f
        .client
        .bearer(Method::POST, VPS, &read_only, Some(r#"{"name":"web-1"}"#))
        .await;
    post.assert_refusal(403, UNAUTHORIZED, Some(expected));

    // The write really did not happen.
    assert_eq!(f.get_vps(&read_only).await.body, "[]");

    // The same scope protects DELETE, on an existing server.
    let created = f
        .client
        .bearer(Method::POST, VPS, &f.bootstrap, Some(r#"{"name":"web-1"}"#))
        .await;
    assert_eq!(created.status, 201, "{created:#?}");
    let id = created.json()["id"].as_u64().expect("id");
    let delete = f
        .client
        .bearer(Method::DELETE, &format!("{VPS}/{id}"), &read_only, None)
        .await;
    delete.assert_refusal(403, UNAUTHORIZED, Some(expected));
    let still_there = f
        .client
        .bearer(Method::GET, &format!("{VPS}/{id}"), &read_only, None)
        .await;
    assert_eq!(still_there.status, 200, "{still_there:#?}");
}

#[tokio::test]
async fn malformed_authorization_is_400_invalid_request() {
    let f = fixture().await;
    let bearer = format!("Bearer {}", f.bootstrap);

    // Two Authorization lines, even both valid: never "first one wins".
    for (first, second) in [
        (bearer.as_str(), bearer.as_str()),
        (bearer.as_str(), "Basic dXNlcjpwYXNz"),
        ("Bearer abc", bearer.as_str()),
    ] {
        let builder = f
            .client
            .request(Method::GET, VPS)
            .header("authorization", first)
            .header("authorization", second);
        let reply = f.client.send(builder, None).await;
        reply.assert_refusal(400, BAD_REQUEST, Some(INVALID_REQUEST));
    }

    let junk_after = format!("{bearer} junk");
    let tab_after_scheme = format!("Bearer\t{}", f.bootstrap);
    for value in [
        "Bearer",
        "bearer",
        "Bearer a b",
        junk_after.as_str(),
        tab_after_scheme.as_str(),
    ] {
        let reply = f.client.call(Method::GET, VPS, Some(value), None).await;
        assert_eq!(reply.status, 400, "{value:?}: {reply:#?}");
        reply.assert_refusal(400, BAD_REQUEST, Some(INVALID_REQUEST));
    }

    // RFC 9110 §5.5: bytes outside visible ASCII are refused, without a panic.
    let mut obs_text = format!("Bearer {}", f.bootstrap).into_bytes();
    obs_text.push(0xff);
    let builder = f.client.request(Method::GET, VPS).header(
        "authorization",
        http::HeaderValue::from_bytes(&obs_text).expect("obs-text is a valid header value"),
    );
    let reply = f.client.send(builder, None).await;
    reply.assert_refusal(400, BAD_REQUEST, Some(INVALID_REQUEST));

    // The server is still healthy.
    assert_eq!(f.get_vps(&f.bootstrap).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_own_principal() {
    let f = fixture().await;
    let team2 = f.issue_direct("team-2", &["vps:read", "vps:write"]).await;
    let mut expected = Vec::new();
    for (token, name) in [(&f.bootstrap, "web-1"), (&team2, "db-2")] {
        let body = json!({ "name": name }).to_string();
        let reply = f.client.bearer(Method::POST, VPS, token, Some(&body)).await;
        assert_eq!(reply.status, 201, "{reply:#?}");
        expected.push(json!([reply.json()]));
    }
    let invalid = with_one_char_changed(&f.format, &team2);

    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let client = f.client.clone();
            let (token, want) = match i % 3 {
                0 => (f.bootstrap.clone(), Some(expected[0].clone())),
                1 => (team2.clone(), Some(expected[1].clone())),
                _ => (invalid.clone(), None),
            };
            tokio::spawn(async move {
                let reply = client.bearer(Method::GET, VPS, &token, None).await;
                match want {
                    Some(want) => {
                        assert_eq!(reply.status, 200, "request {i}: {reply:#?}");
                        assert_eq!(reply.json(), want, "request {i}");
                    }
                    None => reply.assert_refusal(401, UNAUTHENTICATED, Some(INVALID_TOKEN)),
                }
            })
        })
        .collect();
    for task in tasks {
        support::within(task).await.expect("request task");
    }
}

#[tokio::test]
async fn store_outage_is_503_never_200_or_401() {
    let (store, down) = FlakyStore::new();
    let f = fixture_over(
        Verifier::builder(store)
            .format(quickstart::token_format())
            .build(),
    )
    .await;
    assert_eq!(f.get_vps(&f.bootstrap).await.status, 200);

    down.store(true, Ordering::SeqCst);
    let unknown = f
        .format
        .generate(Some(&TokenId::new("AAAAAAAAAAAA").expect("id")))
        .expect("generated")
        .expose_secret()
        .to_owned();
    for (what, token) in [("valid", &f.bootstrap), ("unknown", &unknown)] {
        let reply = f.get_vps(token).await;
        assert_eq!(reply.status, 503, "{what}: {reply:#?}");
        reply.assert_refusal(503, UNAVAILABLE, None);
    }
    // Writes fail closed too.
    let post = f
        .client
        .bearer(Method::POST, VPS, &f.bootstrap, Some(r#"{"name":"web-1"}"#))
        .await;
    post.assert_refusal(503, UNAVAILABLE, None);

    // A token with a bad checksum is refused before the store is asked: 401, not 503.
    let bad = with_one_char_changed(&f.format, &f.bootstrap);
    f.get_vps(&bad)
        .await
        .assert_refusal(401, UNAUTHENTICATED, Some(INVALID_TOKEN));
    // No credentials never needs the store either.
    f.client
        .call(Method::GET, VPS, None, None)
        .await
        .assert_refusal(401, UNAUTHENTICATED, Some(BARE_CHALLENGE));

    down.store(false, Ordering::SeqCst);
    let back = f.get_vps(&f.bootstrap).await;
    assert_eq!(back.status, 200, "{back:#?}");
    // Nothing was created while the store was down.
    assert_eq!(back.body, "[]");
}

#[tokio::test]
async fn another_tenant_cannot_see_or_touch_a_server() {
    let f = fixture().await;
    let created = f
        .client
        .bearer(Method::POST, VPS, &f.bootstrap, Some(r#"{"name":"web-1"}"#))
        .await;
    assert_eq!(created.status, 201, "{created:#?}");
    let vps = created.json();
    assert_eq!(vps["owner"], "team-1");
    assert_eq!(vps["name"], "web-1");
    let id = vps["id"].as_u64().expect("id");
    let path = format!("{VPS}/{id}");

    let team2 = f.issue_direct("team-2", &["vps:read", "vps:write"]).await;
    for method in [Method::GET, Method::DELETE] {
        let reply = f.client.bearer(method.clone(), &path, &team2, None).await;
        assert_eq!(reply.status, 403, "{method}: {reply:#?}");
        assert_eq!(reply.body, UNAUTHORIZED, "{method}");
        assert_eq!(reply.header("content-type"), "application/json");
    }
    let list = f.get_vps(&team2).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json(), json!([]));

    // team-2's own server is listed for team-2 only.
    let own = f
        .client
        .bearer(Method::POST, VPS, &team2, Some(r#"{"name":"db-2"}"#))
        .await;
    assert_eq!(own.status, 201, "{own:#?}");
    let list = f.get_vps(&team2).await.json();
    let owners: Vec<&Value> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|v| &v["owner"])
        .collect();
    assert_eq!(owners, [&json!("team-2")]);

    // team-1's server survived the DELETE and is still team-1's only one.
    let mine = f.get_vps(&f.bootstrap).await.json();
    assert_eq!(mine, json!([vps]));
    let show = f
        .client
        .bearer(Method::GET, &path, &f.bootstrap, None)
        .await;
    assert_eq!(show.status, 200);

    // team-2 cannot revoke team-1's token either, even with tokens:write.
    let team2_admin = f.issue_direct("team-2", &["tokens:write"]).await;
    let revoke = f
        .client
        .bearer(
            Method::DELETE,
            &format!("{TOKENS}/{}", token_id(&f.format, &f.bootstrap)),
            &team2_admin,
            None,
        )
        .await;
    assert_eq!(revoke.status, 404, "{revoke:#?}");
    assert_eq!(f.get_vps(&f.bootstrap).await.status, 200);
}

#[tokio::test]
async fn tokens_are_created_listed_without_secrets_and_revoked() {
    let f = fixture().await;
    let created = f
        .create_token(&f.bootstrap, "ci", &["vps:read"], None)
        .await;
    assert_eq!(created.status, 201, "{created:#?}");
    assert_eq!(created.header("cache-control"), "no-store");
    assert_eq!(created.header("content-type"), "application/json");
    let body = created.json();
    let ci = body["token"].as_str().expect("token").to_owned();
    assert_eq!(body["name"], "ci");
    assert_eq!(body["scopes"], json!(["vps:read"]));
    assert_eq!(body["expires_at"], Value::Null);
    let ci_id = token_id(&f.format, &ci);
    assert_eq!(body["id"], ci_id.as_str());
    assert!(ci.starts_with("demo_"), "{ci}");

    let used = f.get_vps(&ci).await;
    assert_eq!(used.status, 200, "{used:#?}");
    // Last use is buffered in memory; the quickstart's flusher writes it every second, this
    // fixture has none, so flush as the flusher would.
    f.verifier.flush_last_used().await.expect("flush last use");

    let list = f
        .client
        .bearer(Method::GET, TOKENS, &f.bootstrap, None)
        .await;
    assert_eq!(list.status, 200, "{list:#?}");
    for token in [&f.bootstrap, &ci] {
        let secret = secret_part(&f.format, token);
        let hash = SecretHasher::sha256().hash(secret.as_bytes()).to_hex();
        assert!(
            !list.body.contains(token.as_str()),
            "token in {}",
            list.body
        );
        assert!(!list.body.contains(&secret), "secret in {}", list.body);
        assert!(!list.body.contains(&hash), "hash in {}", list.body);
    }
    let entries = list.json();
    let entries = entries.as_array().expect("array");
    assert_eq!(entries.len(), 2, "{entries:#?}");
    for entry in entries {
        let mut keys: Vec<&str> = entry
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "allowed_ips",
                "created_at",
                "expires_at",
                "id",
                "last_used_at",
                "name",
                "scopes"
            ]
        );
        assert!(entry["created_at"].is_string(), "{entry}");
    }
    let ci_entry = entries
        .iter()
        .find(|e| e["id"] == ci_id.as_str())
        .expect("ci listed");
    assert_eq!(ci_entry["name"], "ci");
    assert_eq!(ci_entry["scopes"], json!(["vps:read"]));
    assert!(
        ci_entry["last_used_at"].is_string(),
        "used once: {ci_entry}"
    );
    assert_eq!(ci_entry["expires_at"], Value::Null);

    // A read-only token cannot mint anything (no tokens:write)...
    let escalate = f.create_token(&ci, "evil", &["vps:write"], None).await;
    escalate.assert_refusal(
        403,
        UNAUTHORIZED,
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="tokens:write""#),
    );
    // ...and a token that may mint cannot hand out more than it holds.
    let minter = f
        .mint(&f.bootstrap, "minter", &["tokens:write", "vps:read"])
        .await;
    for scopes in [
        &["vps:write"][..],
        &["vps:read", "vps:write"],
        &["tokens:read"],
    ] {
        let reply = f.create_token(&minter, "evil", scopes, None).await;
        assert_eq!(reply.status, 403, "{scopes:?}: {reply:#?}");
        assert_eq!(reply.body, UNAUTHORIZED, "{scopes:?}");
        assert!(!reply.body.contains("token\""), "no token minted");
    }
    // What it holds, it may hand out.
    let sub = f.mint(&minter, "sub", &["vps:read"]).await;
    assert_eq!(f.get_vps(&sub).await.status, 200);
    let sub_post = f
        .client
        .bearer(Method::POST, VPS, &sub, Some(r#"{"name":"x"}"#))
        .await;
    assert_eq!(sub_post.status, 403);

    // Revocation: gone from the list, and refused.
    let revoke = f
        .client
        .bearer(
            Method::DELETE,
            &format!("{TOKENS}/{ci_id}"),
            &f.bootstrap,
            None,
        )
        .await;
    assert_eq!(revoke.status, 204, "{revoke:#?}");
    let list = f
        .client
        .bearer(Method::GET, TOKENS, &f.bootstrap, None)
        .await;
    assert_eq!(list.status, 200);
    let listed = list.json();
    let ids: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert!(!ids.contains(&ci_id.as_str()), "{ids:?}");
    assert!(ids.contains(&token_id(&f.format, &f.bootstrap).as_str()));
    f.get_vps(&ci)
        .await
        .assert_refusal(401, UNAUTHENTICATED, Some(INVALID_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_the_same_answers() {
    if !curl_available() {
        return;
    }
    let f = fixture().await;
    let url = f.server.url(VPS);
    let read_only = f.mint(&f.bootstrap, "curl", &["vps:read"]).await;

    let ok = curl(
        url.clone(),
        vec![
            "-H".into(),
            format!("Authorization: Bearer {}", f.bootstrap),
        ],
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:#?}");
    assert_eq!(ok.body, "[]");
    assert_eq!(ok.header("content-type"), Some("application/json"));

    let anonymous = curl(url.clone(), vec![]).await;
    assert_eq!(anonymous.status, 401, "{anonymous:#?}");
    assert_eq!(anonymous.body, UNAUTHENTICATED);
    assert_eq!(anonymous.header("www-authenticate"), Some(BARE_CHALLENGE));
    assert_eq!(anonymous.header("content-type"), Some("application/json"));

    let forbidden = curl(
        url.clone(),
        vec![
            "-X".into(),
            "POST".into(),
            "-H".into(),
            format!("Authorization: Bearer {read_only}"),
            "-H".into(),
            "Content-Type: application/json".into(),
            "--data".into(),
            r#"{"name":"web-1"}"#.into(),
        ],
    )
    .await;
    assert_eq!(forbidden.status, 403, "{forbidden:#?}");
    assert_eq!(forbidden.body, UNAUTHORIZED);
    assert_eq!(
        forbidden.header("www-authenticate"),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="vps:write""#)
    );

    let invalid = curl(
        url,
        vec![
            "-H".into(),
            format!(
                "Authorization: Bearer {}",
                with_one_char_changed(&f.format, &f.bootstrap)
            ),
        ],
    )
    .await;
    assert_eq!(invalid.status, 401, "{invalid:#?}");
    assert_eq!(invalid.body, UNAUTHENTICATED);
    assert_eq!(invalid.header("www-authenticate"), Some(INVALID_TOKEN));
}

#[tokio::test]
async fn a_token_cannot_mint_a_token_that_outlives_it() {
    let f = fixture().await;
    let limit = Utc::now() + chrono::TimeDelta::hours(1);
    let short = f
        .create_token(
            &f.bootstrap,
            "short",
            &["tokens:write", "vps:read"],
            Some(limit),
        )
        .await;
    assert_eq!(short.status, 201, "{short:#?}");
    let short = short.json()["token"].as_str().unwrap().to_owned();

    // Asked for no expiry, or a later one: capped at the minting token's own.
    for wanted in [None, Some(limit + chrono::TimeDelta::days(365))] {
        let reply = f.create_token(&short, "child", &["vps:read"], wanted).await;
        assert_eq!(reply.status, 201, "{reply:#?}");
        let expires: DateTime<Utc> =
            serde_json::from_value(reply.json()["expires_at"].clone()).expect("an expiry");
        assert!(expires <= limit, "{expires} is after {limit}");
    }
    // An earlier expiry is kept as asked.
    let earlier = limit - chrono::TimeDelta::minutes(30);
    let reply = f
        .create_token(&short, "child", &["vps:read"], Some(earlier))
        .await;
    let expires: DateTime<Utc> =
        serde_json::from_value(reply.json()["expires_at"].clone()).unwrap();
    assert_eq!(expires, earlier);
}
