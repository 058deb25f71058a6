//! The token-management API mounted in an application: rotation over HTTP, revoke-all, and
//! least privilege on creation (scopes, lifetime, allowlist).

use apitoken::management::TokenApi;
use apitoken::middleware::{AuthLayer, PeerAddr};
use apitoken::{Clock as _, MemoryStore, NewToken, Owner, Verifier};
use axum::Router;
use axum::body::{Body, to_bytes};
use http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Api {
    verifier: Verifier<MemoryStore>,
    app: Router,
}

impl Api {
    fn new() -> Self {
        Self::over(Verifier::builder(MemoryStore::new()).build())
    }

    fn over(verifier: Verifier<MemoryStore>) -> Self {
        let app = Router::new()
            .nest("/tokens", TokenApi::new(verifier.clone()).router())
            .layer(AuthLayer::new(verifier.clone()));
        Self { verifier, app }
    }

    /// Issues a token of team-1 directly: its text and id.
    async fn issue(&self, new: NewToken) -> (String, String) {
        let issued = self.verifier.issuer().issue(new).await.unwrap();
        (
            issued.token.expose_secret().to_owned(),
            issued.record.id.as_str().to_owned(),
        )
    }

    async fn admin(&self, extra: &[&str]) -> String {
        let mut scopes = vec!["tokens:read", "tokens:write"];
        scopes.extend_from_slice(extra);
        let new = NewToken::new("admin", Owner::new("team-1").unwrap())
            .scopes(scopes)
            .unwrap();
        self.verifier
            .issuer()
            .issue(new)
            .await
            .unwrap()
            .token
            .expose_secret()
            .to_owned()
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let mut request = request
            .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr("192.0.2.10:5000".parse().unwrap()));
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

#[tokio::test]
async fn rotation_over_http_keeps_the_old_token_for_the_grace_period() {
    let api = Api::new();
    let admin = api.admin(&["vps:read"]).await;
    let (status, created) = api
        .call(
            "POST",
            "/tokens",
            &admin,
            Some(json!({"name": "ci", "scopes": ["vps:read"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let old = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();

    let (status, rotated) = api
        .call(
            "POST",
            &format!("/tokens/{id}/rotate"),
            &admin,
            Some(json!({"grace_seconds": 3600})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    let new = rotated["token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["name"], "ci");
    assert_eq!(rotated["scopes"], json!(["vps:read"]));
    assert!(
        api.verifier.authenticate(&old).await.is_ok(),
        "old works during the grace"
    );
    assert!(api.verifier.authenticate(&new).await.is_ok());

    // Rotating with no grace revokes at once.
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    let (status, newest) = api
        .call(
            "POST",
            &format!("/tokens/{new_id}/rotate"),
            &admin,
            Some(json!({"grace_seconds": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(api.verifier.authenticate(&new).await.is_err());
    assert!(
        api.verifier
            .authenticate(newest["token"].as_str().unwrap())
            .await
            .is_ok()
    );
    // Without a body, the default grace (a day) applies.
    let newest_id = newest["id"].as_str().unwrap().to_owned();
    let (status, _) = api
        .call("POST", &format!("/tokens/{newest_id}/rotate"), &admin, None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        api.verifier
            .authenticate(newest["token"].as_str().unwrap())
            .await
            .is_ok()
    );

    // Another team cannot rotate it, nor learn that it exists.
    let other = api
        .verifier
        .issuer()
        .issue(
            NewToken::new("x", Owner::new("team-2").unwrap())
                .scopes(["tokens:write"])
                .unwrap(),
        )
        .await
        .unwrap();
    let (status, _) = api
        .call(
            "POST",
            &format!("/tokens/{newest_id}/rotate"),
            other.token.expose_secret(),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn revoke_all_ends_every_token_of_the_team_only() {
    let api = Api::new();
    let admin = api.admin(&[]).await;
    let mut minted = Vec::new();
    for name in ["a", "b"] {
        let (_, body) = api
            .call("POST", "/tokens", &admin, Some(json!({"name": name})))
            .await;
        minted.push(body["token"].as_str().unwrap().to_owned());
    }
    let other = api
        .verifier
        .issuer()
        .issue(NewToken::new("other", Owner::new("team-2").unwrap()))
        .await
        .unwrap();
    let (status, body) = api.call("DELETE", "/tokens", &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["revoked"], 3, "two minted and the admin itself");
    for token in minted.iter().chain([&admin]) {
        assert!(api.verifier.authenticate(token).await.is_err());
    }
    assert!(
        api.verifier
            .authenticate(other.token.expose_secret())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn creation_never_escalates() {
    let api = Api::new();
    let admin = api.admin(&["vps:read"]).await;
    // Scopes the creator lacks.
    let (status, _) = api
        .call(
            "POST",
            "/tokens",
            &admin,
            Some(json!({"name": "x", "scopes": ["vps:write"]})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A restricted creator: the child inherits its allowlist, may narrow it, never widen it.
    let restricted = api
        .verifier
        .issuer()
        .issue(
            NewToken::new("office", Owner::new("team-1").unwrap())
                .scopes(["tokens:write", "tokens:read"])
                .unwrap()
                .allowed_ips(["192.0.2.0/24".parse().unwrap()]),
        )
        .await
        .unwrap();
    let r = restricted.token.expose_secret();
    let (status, child) = api
        .call("POST", "/tokens", r, Some(json!({"name": "child"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(child["allowed_ips"], json!(["192.0.2.0/24"]));
    let (status, _) = api
        .call(
            "POST",
            "/tokens",
            r,
            Some(json!({"name": "n", "allowed_ips": ["192.0.2.128/25"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = api
        .call(
            "POST",
            "/tokens",
            r,
            Some(json!({"name": "w", "allowed_ips": ["0.0.0.0/0"]})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Invalid input is a clear 4xx, not a 500.
    let (status, _) = api
        .call(
            "POST",
            "/tokens",
            &admin,
            Some(json!({"name": "x", "scopes": ["a b"]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = api
        .call("POST", "/tokens", &admin, Some(json!({"name": ""})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_weaker_token_cannot_rotate_a_stronger_one() {
    let api = Api::new();
    let admin = api.admin(&["vps:write", "billing:admin"]).await;
    let admin_id = admin.split_once('.').unwrap().0.to_owned();
    let weak = api
        .verifier
        .issuer()
        .issue(
            NewToken::new("weak", Owner::new("team-1").unwrap())
                .scopes(["tokens:write"])
                .unwrap(),
        )
        .await
        .unwrap();
    let (status, body) = api
        .call(
            "POST",
            &format!("/tokens/{admin_id}/rotate"),
            weak.token.expose_secret(),
            Some(json!({"grace_seconds": 3600})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.get("token").is_none());
    // The admin itself may rotate it.
    let (status, _) = api
        .call("POST", &format!("/tokens/{admin_id}/rotate"), &admin, None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn an_absurd_grace_period_is_a_clear_error_not_a_panic() {
    let api = Api::new();
    let admin = api.admin(&[]).await;
    let (_, created) = api
        .call("POST", "/tokens", &admin, Some(json!({"name": "ci"})))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    for grace in [i64::MAX, -1, 91 * 86_400] {
        let (status, _) = api
            .call(
                "POST",
                &format!("/tokens/{id}/rotate"),
                &admin,
                Some(json!({ "grace_seconds": grace })),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "grace {grace}");
    }
}

#[tokio::test]
async fn implications_cannot_be_used_to_escalate() {
    let verifier = Verifier::builder(MemoryStore::new())
        .scope_policy(
            apitoken::ScopePolicy::strict()
                .with_wildcards()
                .imply("org:admin", "*")
                .unwrap(),
        )
        .build();
    let app = Router::new()
        .nest("/tokens", TokenApi::new(verifier.clone()).router())
        .layer(AuthLayer::new(verifier.clone()));
    let api = Api { verifier, app };
    let holder = api.admin(&["org:*"]).await;
    // `org:*` covers the text `org:admin`, but `org:admin` implies `*`.
    let (status, _) = api
        .call(
            "POST",
            "/tokens",
            &holder,
            Some(json!({"name": "x", "scopes": ["org:admin"]})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .call(
            "POST",
            "/tokens",
            &holder,
            Some(json!({"name": "x", "scopes": ["org:read"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_minted_token_cannot_outlive_its_maker_under_a_maximum_lifetime() {
    let clock = std::sync::Arc::new(apitoken::ManualClock::new(chrono::Utc::now()));
    let verifier = Verifier::builder(MemoryStore::new())
        .clock(clock.clone())
        .max_lifetime(chrono::TimeDelta::days(30))
        .build();
    let app = Router::new()
        .nest("/tokens", TokenApi::new(verifier.clone()).router())
        .layer(AuthLayer::new(verifier.clone()));
    let api = Api { verifier, app };
    let maker = api.admin(&[]).await;
    let born = clock.now();
    clock.advance(chrono::TimeDelta::days(29));
    let (status, child) = api
        .call(
            "POST",
            "/tokens",
            &maker,
            Some(json!({"name": "child", "scopes": ["tokens:read"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(child["expires_at"].clone()).expect("capped");
    assert!(expires <= born + chrono::TimeDelta::days(30), "{expires}");
    clock.advance(chrono::TimeDelta::days(2));
    assert!(api.verifier.authenticate(&maker).await.is_err());
    assert!(
        api.verifier
            .authenticate(child["token"].as_str().unwrap())
            .await
            .is_err()
    );
}

/// A token with its own per-token rate limit of `requests` an hour.
fn limited(requests: u32) -> apitoken::Metadata {
    let mut metadata = apitoken::Metadata::new();
    metadata.insert(
        "rate_limit".into(),
        json!({"requests": requests, "period_secs": 3600}),
    );
    metadata
}

#[tokio::test]
async fn a_rate_limited_token_mints_and_rotates_only_tokens_as_limited() {
    use apitoken::rate_limit::{MemoryRateLimiter, RateLimit, RateLimitPolicy};

    let verifier = Verifier::builder(MemoryStore::new()).build();
    let whoami = axum::routing::get(|| async { "ok" });
    let app = Router::new()
        .route("/vps", whoami)
        .nest("/tokens", TokenApi::new(verifier.clone()).router())
        .layer(AuthLayer::new(verifier.clone()).rate_limit(
            MemoryRateLimiter::new(),
            RateLimitPolicy::new(RateLimit::per_minute(100)),
        ));
    let api = Api { verifier, app };
    let issue = |name: &str, scopes: &[&str], metadata: apitoken::Metadata| {
        let new = NewToken::new(name, Owner::new("team-1").unwrap())
            .scopes(scopes)
            .unwrap()
            .metadata(metadata);
        let issuer = api.verifier.issuer();
        async move { issuer.issue(new).await.unwrap() }
    };
    let maker = issue("maker", &["tokens:write", "vps:read"], limited(5)).await;
    let maker_text = maker.token.expose_secret();

    // What it mints keeps its limit: five an hour, not the layer's hundred a minute.
    let (status, body) = api
        .call(
            "POST",
            "/tokens",
            maker_text,
            Some(json!({"name": "child", "scopes": ["vps:read"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let child = body["token"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        assert_eq!(
            api.call("GET", "/vps", &child, None).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        api.call("GET", "/vps", &child, None).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    // It may not rotate a token without a limit of its own (the layer's default may be
    // anything), nor one allowed more than itself; one allowed less, it may.
    let free = issue("free", &["vps:read"], apitoken::Metadata::new()).await;
    let looser = issue("looser", &["vps:read"], limited(50)).await;
    let stricter = issue("stricter", &["vps:read"], limited(1)).await;
    for (target, expected) in [
        (&free, StatusCode::FORBIDDEN),
        (&looser, StatusCode::FORBIDDEN),
        (&stricter, StatusCode::CREATED),
    ] {
        let path = format!("/tokens/{}/rotate", target.record.id);
        let (status, body) = api.call("POST", &path, maker_text, None).await;
        assert_eq!(status, expected, "rotating {}: {body}", target.record.name);
    }
}

#[tokio::test]
async fn scopes_and_allowlists_per_token_are_capped() {
    use apitoken::{DEFAULT_MAX_ALLOWED_IPS, DEFAULT_MAX_SCOPES, IssueError};

    let verifier = Verifier::builder(MemoryStore::new()).build();
    let owner = || Owner::new("team-1").unwrap();
    let scopes = |n: usize| (0..n).map(|i| format!("s{i}:read")).collect::<Vec<_>>();
    let nets = |n: usize| {
        (0..n)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap())
            .collect::<Vec<ipnet::IpNet>>()
    };
    let issue = |new: NewToken| {
        let issuer = verifier.issuer();
        async move { issuer.issue(new).await }
    };
    assert_eq!((DEFAULT_MAX_SCOPES, DEFAULT_MAX_ALLOWED_IPS), (100, 100));
    let at_limit = NewToken::new("full", owner())
        .scopes(scopes(100))
        .unwrap()
        .allowed_ips(nets(100));
    assert!(issue(at_limit).await.is_ok());
    let err = issue(NewToken::new("x", owner()).scopes(scopes(101)).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, IssueError::TooManyScopes { max: 100 }),
        "{err}"
    );
    let err = issue(NewToken::new("x", owner()).allowed_ips(nets(101)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, IssueError::TooManyNetworks { max: 100 }),
        "{err}"
    );
    assert_eq!(
        verifier.store().len(),
        1,
        "nothing stored for a refused token"
    );

    // Through the API: a clear 422, in JSON.
    let verifier = Verifier::builder(MemoryStore::new())
        .max_allowed_ips_per_token(1)
        .build();
    let app = Router::new()
        .nest("/tokens", TokenApi::new(verifier.clone()).router())
        .layer(AuthLayer::new(verifier.clone()));
    let api = Api { verifier, app };
    let maker = api.admin(&[]).await;
    let (status, body) = api
        .call(
            "POST",
            "/tokens",
            &maker,
            Some(json!({"name": "wide", "allowed_ips": ["192.0.2.0/24", "198.51.100.0/24"]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body,
        json!({"message": "Too many scopes or allowlist entries."})
    );
}

fn team_1(name: &str) -> NewToken {
    NewToken::new(name, Owner::new("team-1").unwrap())
}

fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

#[tokio::test]
async fn rotation_never_widens_the_allowlist() {
    let api = Api::new();
    // Requests come from 192.0.2.10, inside the maker's own network.
    let (maker, _) = api
        .issue(
            team_1("office")
                .scopes(["tokens:write"])
                .unwrap()
                .allowed_ips(nets(&["192.0.2.0/24"])),
        )
        .await;
    // Targets without scopes, so only their allowlists can stand in the way.
    let cases: [(&str, &[&str], StatusCode); 6] = [
        ("unrestricted", &[], StatusCode::FORBIDDEN),
        ("wider", &["192.0.0.0/16"], StatusCode::FORBIDDEN),
        ("elsewhere", &["198.51.100.0/24"], StatusCode::FORBIDDEN),
        (
            "partly outside",
            &["192.0.2.0/25", "198.51.100.0/24"],
            StatusCode::FORBIDDEN,
        ),
        ("the same", &["192.0.2.0/24"], StatusCode::CREATED),
        (
            "narrower",
            &["192.0.2.0/25", "192.0.2.200/32"],
            StatusCode::CREATED,
        ),
    ];
    for (name, allowed, expected) in cases {
        let (target, id) = api.issue(team_1(name).allowed_ips(nets(allowed))).await;
        let (status, body) = api
            .call(
                "POST",
                &format!("/tokens/{id}/rotate"),
                &maker,
                Some(json!({"grace_seconds": 0})),
            )
            .await;
        assert_eq!(status, expected, "{name}: {body}");
        if expected == StatusCode::FORBIDDEN {
            assert!(body.get("token").is_none(), "{name}: {body}");
            // Refused means untouched: the target was not revoked by the attempt.
            let info = apitoken::RequestInfo::new().client_ip(
                allowed
                    .first()
                    .map(|net| net.parse::<ipnet::IpNet>().unwrap().addr()),
            );
            let still = api
                .verifier
                .verify_request(&target, &apitoken::ScopeRequirement::none(), &info)
                .await;
            assert!(still.is_ok(), "{name}: {:?}", still.err());
        } else {
            assert_eq!(body["allowed_ips"], json!(allowed), "{name}: {body}");
        }
    }
    // An unrestricted token may rotate the restricted and the unrestricted alike.
    let admin = api.admin(&[]).await;
    for allowed in [&[][..], &["192.0.0.0/16"][..]] {
        let (_, id) = api.issue(team_1("any").allowed_ips(nets(allowed))).await;
        let (status, body) = api
            .call("POST", &format!("/tokens/{id}/rotate"), &admin, None)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{allowed:?}: {body}");
        assert_eq!(body["allowed_ips"], json!(allowed));
    }
}

#[tokio::test]
async fn a_rotation_never_outlives_its_maker() {
    let start = chrono::Utc::now();
    let clock = std::sync::Arc::new(apitoken::ManualClock::new(start));
    let api = Api::over(
        Verifier::builder(MemoryStore::new())
            .clock(clock.clone())
            .build(),
    );
    let maker_ends = start + chrono::TimeDelta::days(1);
    let (maker, _) = api
        .issue(
            team_1("maker")
                .scopes(["tokens:write"])
                .unwrap()
                .expires_at(maker_ends),
        )
        .await;
    // One target never expires; the other would, rotated, live thirty days more.
    let (_, forever) = api.issue(team_1("forever")).await;
    let (_, month) = api
        .issue(team_1("month").expires_in(chrono::TimeDelta::days(30)))
        .await;
    clock.advance(chrono::TimeDelta::hours(1));
    let mut rotated = Vec::new();
    for id in [forever, month] {
        let (status, body) = api
            .call("POST", &format!("/tokens/{id}/rotate"), &maker, None)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let expires: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(body["expires_at"].clone()).expect("an expiry");
        assert!(expires <= maker_ends, "{expires} is after {maker_ends}");
        rotated.push(body["token"].as_str().unwrap().to_owned());
    }
    clock.set(maker_ends - chrono::TimeDelta::nanoseconds(1));
    for token in rotated.iter().chain([&maker]) {
        assert!(api.verifier.authenticate(token).await.is_ok());
    }
    clock.set(maker_ends);
    for token in rotated.iter().chain([&maker]) {
        let err = api.verifier.authenticate(token).await.unwrap_err();
        assert_eq!(err.reason(), Some(apitoken::RejectReason::Expired));
    }
}
