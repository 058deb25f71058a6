//! JWT access tokens through the real middleware: the same route accepts API keys and JWTs
//! and yields the same `Principal`; every forged, misdirected, mistyped or stale JWT is a 401
//! `invalid_token` with its precise reason in the audit event.

#[path = "../examples/quickstart.rs"]
#[allow(dead_code)]
mod quickstart;
mod support;

use std::sync::{Arc, Mutex};

use apitoken::jwt::{
    self, AccessGrant, JwtAlgorithm, JwtError, JwtIssuer, JwtKey, JwtValidator,
    JwtValidatorBuilder, MAX_JWT_LEN,
};
use apitoken::middleware::{AuthLayer, RequireScopesLayer};
use apitoken::{
    AuditEvent, AuditOutcome, AuthErrorKind, ManualClock, MemoryStore, NewToken, Owner, Principal,
    RejectReason, ScopePolicy, ScopeRequirement, Verifier, VerifierBuilder,
};
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use http::Request;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tower::ServiceExt;

use support::{INVALID_TOKEN, Reply, UNAUTHENTICATED};

const ISS: &str = "https://auth.example.com";
const AUD: &str = "https://api.example.com";
const HS_SECRET: &[u8] = b"hs256-test-secret-of-32-bytes!!!";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap()
}

/// An Ed25519 key pair from a fixed seed: (private PKCS#8 PEM, public SPKI PEM, raw public).
fn ed25519(seed: u8) -> (String, String, [u8; 32]) {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let private = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    (private, public, key.verifying_key().to_bytes())
}

fn hs_key() -> JwtKey {
    JwtKey::hs256(HS_SECRET).unwrap().with_kid("hs-1").unwrap()
}

fn ed_private() -> JwtKey {
    JwtKey::ed25519_private_pem(&ed25519(1).0)
        .unwrap()
        .with_kid("ed-1")
        .unwrap()
}

fn ed_public() -> JwtKey {
    JwtKey::ed25519_public_pem(&ed25519(1).1)
        .unwrap()
        .with_kid("ed-1")
        .unwrap()
}

/// What a route sees of its caller.
async fn whoami(principal: Principal) -> axum::Json<Value> {
    axum::Json(json!({
        "token_id": principal.token_id().as_str(),
        "owner": principal.owner().as_str(),
        "name": principal.name(),
        "scopes": principal.scopes().to_string(),
        "expires_at": principal.expires_at(),
        "effective_expiry": principal.effective_expiry(),
        "kind": format!("{:?}", principal.credential_kind()),
    }))
}

/// `GET /vps` needs `vps:read`, `POST /vps` needs `vps:write`, behind one `AuthLayer`.
fn app(verifier: Verifier<MemoryStore>) -> Router {
    Router::new()
        .route("/vps", get(whoami).post(whoami))
        .route_layer(RequireScopesLayer::per_method(
            ScopeRequirement::all(["vps:read"]).unwrap(),
            ScopeRequirement::all(["vps:write"]).unwrap(),
        ))
        .layer(AuthLayer::new(verifier))
}

/// A verifier that accepts API keys and JWTs signed with `keys`, on a manual clock, with
/// every audit event kept.
struct Fixture {
    clock: Arc<ManualClock>,
    verifier: Verifier<MemoryStore>,
    events: Arc<Mutex<Vec<AuditEvent>>>,
}

impl Fixture {
    fn new(keys: Vec<JwtKey>) -> Self {
        Self::with(keys, |b| b, |b| b)
    }

    fn with(
        keys: Vec<JwtKey>,
        configure_validator: impl FnOnce(JwtValidatorBuilder) -> JwtValidatorBuilder,
        configure_verifier: impl FnOnce(VerifierBuilder<MemoryStore>) -> VerifierBuilder<MemoryStore>,
    ) -> Self {
        let clock = Arc::new(ManualClock::new(t0()));
        let events: Arc<Mutex<Vec<AuditEvent>>> = Arc::default();
        let sink = Arc::clone(&events);
        let validator = keys
            .into_iter()
            .fold(JwtValidator::builder(ISS, AUD), JwtValidatorBuilder::key);
        let verifier = configure_verifier(
            Verifier::builder(MemoryStore::new())
                .clock(clock.clone())
                .audit(move |e: &AuditEvent| sink.lock().unwrap().push(e.clone()))
                .jwt(configure_validator(validator).build().unwrap()),
        )
        .build();
        Self {
            clock,
            verifier,
            events,
        }
    }

    /// An issuer on this fixture's clock.
    fn issuer(&self, key: JwtKey) -> JwtIssuer {
        self.issuer_for(key, ISS, AUD)
    }

    fn issuer_for(&self, key: JwtKey, iss: &str, aud: &str) -> JwtIssuer {
        JwtIssuer::builder(key, iss, aud)
            .clock(self.clock.clone())
            .build()
            .unwrap()
    }

    async fn send(&self, method: &str, token: &str) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri("/vps")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let response = app(self.verifier.clone()).oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = to_bytes(body, usize::MAX).await.unwrap();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    async fn get(&self, token: &str) -> Reply {
        self.send("GET", token).await
    }

    /// The reason of the last refusal the audit sink saw.
    fn last_reason(&self) -> Option<RejectReason> {
        match self.events.lock().unwrap().last().map(|e| e.outcome) {
            Some(AuditOutcome::Refused { reason, .. }) => reason,
            other => panic!("last event is not a refusal: {other:?}"),
        }
    }

    /// Asserts that `token` is refused on `GET /vps` as an invalid token, for `reason`.
    async fn assert_refused(&self, token: &str, reason: RejectReason) {
        let reply = self.get(token).await;
        reply.assert_refusal(401, UNAUTHENTICATED, Some(INVALID_TOKEN));
        assert_eq!(self.last_reason(), Some(reason), "{reply:#?}");
    }

    async fn assert_accepted(&self, token: &str) {
        let reply = self.get(token).await;
        assert_eq!(
            reply.status,
            200,
            "{reply:#?} {:?}",
            self.events.lock().unwrap().last()
        );
    }
}

fn read_grant() -> AccessGrant {
    AccessGrant::new(Owner::new("team-1").unwrap(), "ci-runner")
        .unwrap()
        .scopes(["vps:read"])
        .unwrap()
}

/// Claims as the crate's issuer writes them, at `t0`, valid for an hour.
fn claims() -> Value {
    let t = t0().timestamp();
    json!({
        "iss": ISS, "sub": "team-1", "aud": AUD,
        "iat": t, "nbf": t, "exp": t + 3600,
        "jti": "crafted-1", "client_id": "crafted", "scope": "vps:read",
    })
}

fn header(alg: Algorithm, typ: Option<&str>, kid: Option<&str>) -> Header {
    let mut header = Header::new(alg);
    header.typ = typ.map(str::to_owned);
    header.kid = kid.map(str::to_owned);
    header
}

fn at_header(alg: Algorithm, kid: &str) -> Header {
    header(alg, Some("at+jwt"), Some(kid))
}

fn sign(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).unwrap()
}

fn hs_sign(header: &Header, claims: &Value) -> String {
    sign(header, claims, &EncodingKey::from_secret(HS_SECRET))
}

fn ed_sign(header: &Header, claims: &Value) -> String {
    sign(
        header,
        claims,
        &EncodingKey::from_ed_pem(ed25519(1).0.as_bytes()).unwrap(),
    )
}

/// Base64url JSON segments joined by dots, without signing.
fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

#[tokio::test]
async fn a_jwt_and_an_api_key_yield_the_same_principal_on_one_route() {
    let f = Fixture::new(vec![hs_key(), ed_public()]);
    let api_key = f
        .verifier
        .issuer()
        .issue(
            NewToken::new("ci-runner", Owner::new("team-1").unwrap())
                .scopes(["vps:read"])
                .unwrap(),
        )
        .await
        .unwrap();
    let by_key = f.get(api_key.token.expose_secret()).await;
    assert_eq!(by_key.status, 200, "{by_key:#?}");

    for issuer in [f.issuer(hs_key()), f.issuer(ed_private())] {
        let issued = issuer.issue(&read_grant()).unwrap();
        let by_jwt = f.get(issued.token.expose_secret()).await;
        assert_eq!(by_jwt.status, 200, "{by_jwt:#?}");
        let (key, jwt) = (by_key.json(), by_jwt.json());
        for field in ["owner", "name", "scopes"] {
            assert_eq!(key[field], jwt[field], "{field}");
        }
        assert_eq!(key["kind"], "ApiKey");
        assert_eq!(jwt["kind"], "Jwt");
        assert_eq!(jwt["token_id"], issued.claims.id.as_str());
        let exp = json!(t0() + TimeDelta::hours(1));
        assert_eq!(jwt["expires_at"], exp);
        assert_eq!(jwt["effective_expiry"], exp);
        assert!(
            matches!(
                f.events.lock().unwrap().last().map(|e| e.outcome),
                Some(AuditOutcome::Accepted)
            ),
            "an accepted JWT is audited"
        );
    }
}

#[tokio::test]
async fn insufficient_scope_is_the_same_403_for_a_jwt_as_for_an_api_key() {
    let f = Fixture::new(vec![hs_key()]);
    let api_key = f
        .verifier
        .issuer()
        .issue(
            NewToken::new("ci-runner", Owner::new("team-1").unwrap())
                .scopes(["vps:read"])
                .unwrap(),
        )
        .await
        .unwrap();
    let jwt = f.issuer(hs_key()).issue(&read_grant()).unwrap();

    let by_key = f.send("POST", api_key.token.expose_secret()).await;
    let by_jwt = f.send("POST", jwt.token.expose_secret()).await;
    assert_eq!(by_key.status, 403, "{by_key:#?}");
    assert_eq!(by_jwt.status, by_key.status);
    assert_eq!(by_jwt.body, by_key.body);
    assert_eq!(by_jwt.stable_headers(), by_key.stable_headers());
    assert_eq!(
        by_jwt.header("www-authenticate"),
        r#"Bearer realm="api", error="insufficient_scope", scope="vps:write""#
    );

    // The same refusal from the verifier itself, with the missing scope and the jti.
    let err = f
        .verifier
        .verify(
            jwt.token.expose_secret(),
            &ScopeRequirement::all(["vps:write"]).unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InsufficientScope);
    assert_eq!(err.token_id(), Some(&jwt.claims.id));
    assert!(err.missing_scopes().unwrap().contains("vps:write"));
}

#[tokio::test]
async fn the_verifiers_scope_policy_applies_to_jwts() {
    let f = Fixture::with(
        vec![hs_key()],
        |v| v,
        |b| b.scope_policy(ScopePolicy::strict().with_wildcards()),
    );
    let grant = AccessGrant::new(Owner::new("team-1").unwrap(), "ops")
        .unwrap()
        .scopes(["vps:*"])
        .unwrap();
    let token = f.issuer(hs_key()).issue(&grant).unwrap();
    assert_eq!(
        f.send("POST", token.token.expose_secret()).await.status,
        200
    );
}

#[tokio::test]
async fn a_hand_built_token_signed_right_is_accepted() {
    // The refusal tests below alter one thing each in tokens built this way.
    let f = Fixture::new(vec![hs_key(), ed_public()]);
    f.assert_accepted(&hs_sign(&at_header(Algorithm::HS256, "hs-1"), &claims()))
        .await;
    f.assert_accepted(&ed_sign(&at_header(Algorithm::EdDSA, "ed-1"), &claims()))
        .await;
    let mut aud_list = claims();
    aud_list["aud"] = json!(["https://other.example.com", AUD]);
    f.assert_accepted(&hs_sign(&at_header(Algorithm::HS256, "hs-1"), &aud_list))
        .await;
    // Without nbf or scope: both optional.
    let mut minimal = claims();
    minimal.as_object_mut().unwrap().remove("nbf");
    minimal.as_object_mut().unwrap().remove("scope");
    let reply = f
        .send(
            "GET",
            &hs_sign(&at_header(Algorithm::HS256, "hs-1"), &minimal),
        )
        .await;
    assert_eq!(reply.status, 403, "valid, but no vps:read: {reply:#?}");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let f = Fixture::new(vec![hs_key(), ed_public()]);
    for alg in ["none", "None", "NONE"] {
        for kid in [None, Some("hs-1")] {
            let mut h = json!({ "alg": alg, "typ": "at+jwt" });
            if let Some(kid) = kid {
                h["kid"] = json!(kid);
            }
            // An empty signature, and a real HS256 signature pasted on.
            f.assert_refused(&unsigned(&h, &claims(), ""), jwt::reason::MALFORMED_JWT)
                .await;
            let real = hs_sign(&at_header(Algorithm::HS256, "hs-1"), &claims());
            let signature = real.rsplit('.').next().unwrap();
            f.assert_refused(
                &unsigned(&h, &claims(), signature),
                jwt::reason::MALFORMED_JWT,
            )
            .await;
        }
    }
    // A validator with a single key and no kid refuses it too.
    let single = Fixture::new(vec![JwtKey::hs256(HS_SECRET).unwrap()]);
    single
        .assert_refused(
            &unsigned(&json!({"alg": "none", "typ": "at+jwt"}), &claims(), ""),
            jwt::reason::MALFORMED_JWT,
        )
        .await;
}

#[tokio::test]
async fn a_token_signed_with_a_wrong_key_is_refused() {
    let f = Fixture::new(vec![hs_key(), ed_public()]);
    let other_hs = EncodingKey::from_secret(b"another-secret-of-32-bytes-long!");
    f.assert_refused(
        &sign(&at_header(Algorithm::HS256, "hs-1"), &claims(), &other_hs),
        jwt::reason::BAD_SIGNATURE,
    )
    .await;
    let other_ed = EncodingKey::from_ed_pem(ed25519(2).0.as_bytes()).unwrap();
    f.assert_refused(
        &sign(&at_header(Algorithm::EdDSA, "ed-1"), &claims(), &other_ed),
        jwt::reason::BAD_SIGNATURE,
    )
    .await;
    // Through the crate's own issuer, with a key of the right name but other material.
    let impostor = JwtKey::hs256(b"another-secret-of-32-bytes-long!")
        .unwrap()
        .with_kid("hs-1")
        .unwrap();
    let token = f.issuer(impostor).issue(&read_grant()).unwrap();
    f.assert_refused(token.token.expose_secret(), jwt::reason::BAD_SIGNATURE)
        .await;
}

#[tokio::test]
async fn a_wrong_algorithm_is_refused_including_hs256_keyed_with_the_ed25519_public_key() {
    let (_, public_pem, public_raw) = ed25519(1);
    // EdDSA only: the classic confusion signs HS256 with the public key an attacker knows.
    let ed_only = Fixture::new(vec![ed_public()]);
    let unnamed_ed_only = Fixture::new(vec![JwtKey::ed25519_public_pem(&public_pem).unwrap()]);
    for public in [&public_raw[..], public_pem.as_bytes()] {
        let confused = EncodingKey::from_secret(public);
        let named = sign(&at_header(Algorithm::HS256, "ed-1"), &claims(), &confused);
        let unnamed = sign(
            &header(Algorithm::HS256, Some("at+jwt"), None),
            &claims(),
            &confused,
        );
        ed_only
            .assert_refused(&named, jwt::reason::WRONG_ALGORITHM)
            .await;
        unnamed_ed_only
            .assert_refused(&unnamed, jwt::reason::WRONG_ALGORITHM)
            .await;
    }
    // Both kinds of key accepted, but each only with its own algorithm.
    let both = Fixture::new(vec![hs_key(), ed_public()]);
    let confused = EncodingKey::from_secret(&public_raw);
    both.assert_refused(
        &sign(&at_header(Algorithm::HS256, "ed-1"), &claims(), &confused),
        jwt::reason::WRONG_ALGORITHM,
    )
    .await;
    both.assert_refused(
        &ed_sign(&at_header(Algorithm::EdDSA, "hs-1"), &claims()),
        jwt::reason::WRONG_ALGORITHM,
    )
    .await;

    // HS256 only: an EdDSA token, and HS384/HS512 with the right secret.
    let hs_only = Fixture::new(vec![hs_key()]);
    hs_only
        .assert_refused(
            &ed_sign(&at_header(Algorithm::EdDSA, "hs-1"), &claims()),
            jwt::reason::WRONG_ALGORITHM,
        )
        .await;
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        hs_only
            .assert_refused(
                &hs_sign(&at_header(alg, "hs-1"), &claims()),
                jwt::reason::WRONG_ALGORITHM,
            )
            .await;
    }
}

#[tokio::test]
async fn a_wrong_audience_or_issuer_is_refused() {
    let f = Fixture::new(vec![hs_key()]);
    let elsewhere = f.issuer_for(hs_key(), ISS, "https://other-api.example.com");
    f.assert_refused(
        elsewhere
            .issue(&read_grant())
            .unwrap()
            .token
            .expose_secret(),
        jwt::reason::WRONG_AUDIENCE,
    )
    .await;
    let foreign = f.issuer_for(hs_key(), "https://evil.example.com", AUD);
    f.assert_refused(
        foreign.issue(&read_grant()).unwrap().token.expose_secret(),
        jwt::reason::WRONG_ISSUER,
    )
    .await;
    let mut others = claims();
    others["aud"] = json!(["https://a.example.com", "https://b.example.com"]);
    f.assert_refused(
        &hs_sign(&at_header(Algorithm::HS256, "hs-1"), &others),
        jwt::reason::WRONG_AUDIENCE,
    )
    .await;
    // Near misses are misses.
    for (claim, value) in [("aud", format!("{AUD}/")), ("iss", ISS.to_uppercase())] {
        let mut near = claims();
        near[claim] = json!(value);
        let reply = f
            .get(&hs_sign(&at_header(Algorithm::HS256, "hs-1"), &near))
            .await;
        assert_eq!(reply.status, 401, "{claim}: {reply:#?}");
    }
}

#[tokio::test]
async fn expiry_is_refused_beyond_the_leeway_and_accepted_within_it() {
    let f = Fixture::new(vec![hs_key()]);
    let token = f.issuer(hs_key()).issue(&read_grant()).unwrap();
    let token = token.token.expose_secret();
    let exp = t0() + TimeDelta::hours(1);

    f.clock.set(exp + TimeDelta::seconds(59));
    f.assert_accepted(token).await;
    f.clock.set(exp + TimeDelta::seconds(60));
    f.assert_refused(token, RejectReason::Expired).await;
    f.clock.set(exp + TimeDelta::days(1));
    f.assert_refused(token, RejectReason::Expired).await;

    // With no leeway, `exp` itself is expired.
    let strict = Fixture::with(
        vec![hs_key()],
        |v| v.leeway(std::time::Duration::ZERO),
        |b| b,
    );
    let token = strict.issuer(hs_key()).issue(&read_grant()).unwrap();
    let token = token.token.expose_secret();
    strict.clock.set(exp - TimeDelta::seconds(1));
    strict.assert_accepted(token).await;
    strict.clock.set(exp);
    strict.assert_refused(token, RejectReason::Expired).await;
}

#[tokio::test]
async fn an_expired_jwt_is_refused_with_its_jti() {
    let f = Fixture::new(vec![hs_key()]);
    let issued = f.issuer(hs_key()).issue(&read_grant()).unwrap();
    f.clock.advance(TimeDelta::hours(2));
    let err = f
        .verifier
        .authenticate(issued.token.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    assert_eq!(err.reason(), Some(RejectReason::Expired));
    assert_eq!(err.token_id(), Some(&issued.claims.id));
    assert_eq!(err.to_string(), "invalid token");
}

#[tokio::test]
async fn nbf_in_the_future_beyond_the_leeway_is_refused() {
    let f = Fixture::new(vec![hs_key()]);
    let at = |nbf: i64| {
        let mut c = claims();
        c["nbf"] = json!(t0().timestamp() + nbf);
        hs_sign(&at_header(Algorithm::HS256, "hs-1"), &c)
    };
    f.assert_accepted(&at(60)).await;
    f.assert_refused(&at(61), jwt::reason::NOT_YET_VALID).await;
    f.assert_refused(&at(3000), jwt::reason::NOT_YET_VALID)
        .await;
    // Once the clock reaches it (less the leeway), the same token works.
    f.clock.set(t0() + TimeDelta::seconds(3000 - 60));
    f.assert_accepted(&at(3000)).await;
}

#[tokio::test]
async fn only_an_access_token_type_is_accepted() {
    let f = Fixture::new(vec![hs_key(), ed_public()]);
    for typ in [
        None,
        Some("JWT"),
        Some("jwt"),
        Some("rt+jwt"),
        Some("application/rt+jwt"),
        Some("refresh_token+jwt"),
        Some("id_token+jwt"),
        Some("application/jwt"),
        Some(""),
        Some("at+jwt; charset=utf-8"),
    ] {
        for (alg, kid) in [(Algorithm::HS256, "hs-1"), (Algorithm::EdDSA, "ed-1")] {
            let h = header(alg, typ, Some(kid));
            let token = match alg {
                Algorithm::HS256 => hs_sign(&h, &claims()),
                _ => ed_sign(&h, &claims()),
            };
            f.assert_refused(&token, jwt::reason::WRONG_TOKEN_TYPE)
                .await;
        }
    }
    for typ in ["at+jwt", "AT+JWT", "application/at+jwt"] {
        f.assert_accepted(&hs_sign(
            &header(Algorithm::HS256, Some(typ), Some("hs-1")),
            &claims(),
        ))
        .await;
    }
}

#[tokio::test]
async fn a_refresh_token_presented_as_an_access_token_is_refused() {
    // A refresh token signed with the very same key, claims otherwise valid.
    let f = Fixture::new(vec![hs_key()]);
    let refresh = hs_sign(
        &header(Algorithm::HS256, Some("rt+jwt"), Some("hs-1")),
        &claims(),
    );
    f.assert_refused(&refresh, jwt::reason::WRONG_TOKEN_TYPE)
        .await;
}

#[tokio::test]
async fn a_tampered_token_is_refused() {
    let f = Fixture::new(vec![hs_key(), ed_public()]);
    for token in [
        f.issuer(hs_key()).issue(&read_grant()).unwrap(),
        f.issuer(ed_private()).issue(&read_grant()).unwrap(),
    ] {
        let token = token.token.expose_secret();
        let parts: Vec<&str> = token.split('.').collect();
        let mut payload: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();

        // More scopes, another owner, a later expiry: the signature no longer matches.
        for (claim, value) in [
            ("scope", json!("vps:read vps:write")),
            ("sub", json!("team-2")),
            ("exp", json!(t0().timestamp() + 86_400)),
        ] {
            let original = payload[claim].clone();
            payload[claim] = value;
            let forged = format!(
                "{}.{}.{}",
                parts[0],
                B64.encode(payload.to_string()),
                parts[2]
            );
            f.assert_refused(&forged, jwt::reason::BAD_SIGNATURE).await;
            payload[claim] = original;
        }
        // A flipped signature byte.
        let mut signature = B64.decode(parts[2]).unwrap();
        signature[0] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], B64.encode(&signature));
        f.assert_refused(&flipped, jwt::reason::BAD_SIGNATURE).await;
        // Truncated: not a token at all.
        let reply = f.get(&token[..token.len() - 10]).await;
        assert_eq!(reply.status, 401);
    }
}

#[tokio::test]
async fn unknown_or_missing_key_ids_are_refused() {
    let f = Fixture::new(vec![hs_key(), ed_public()]);
    f.assert_refused(
        &hs_sign(&at_header(Algorithm::HS256, "hs-2"), &claims()),
        jwt::reason::UNKNOWN_KEY,
    )
    .await;
    // Several keys: a token must say which.
    f.assert_refused(
        &hs_sign(&header(Algorithm::HS256, Some("at+jwt"), None), &claims()),
        jwt::reason::UNKNOWN_KEY,
    )
    .await;
}

#[tokio::test]
async fn keys_rotate_by_kid() {
    let old = JwtKey::hs256(b"old-secret-0123456789abcdefghijk")
        .unwrap()
        .with_kid("2026-10")
        .unwrap();
    let new = JwtKey::hs256(b"new-secret-0123456789abcdefghijk")
        .unwrap()
        .with_kid("2026-11")
        .unwrap();
    let during = Fixture::new(vec![new.clone(), old.clone()]);
    let old_token = during.issuer(old.clone()).issue(&read_grant()).unwrap();
    let new_token = during.issuer(new.clone()).issue(&read_grant()).unwrap();
    during
        .assert_accepted(old_token.token.expose_secret())
        .await;
    during
        .assert_accepted(new_token.token.expose_secret())
        .await;

    let after = Fixture::new(vec![new]);
    after.assert_accepted(new_token.token.expose_secret()).await;
    after
        .assert_refused(old_token.token.expose_secret(), jwt::reason::UNKNOWN_KEY)
        .await;
}

#[tokio::test]
async fn missing_or_malformed_claims_are_refused() {
    let f = Fixture::new(vec![hs_key()]);
    let h = at_header(Algorithm::HS256, "hs-1");
    for claim in ["iss", "sub", "aud", "exp", "iat", "jti", "client_id"] {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(claim);
        f.assert_refused(&hs_sign(&h, &c), jwt::reason::INVALID_CLAIMS)
            .await;
    }
    for (claim, value) in [
        ("jti", json!("not a token id")),
        ("jti", json!("x".repeat(41))),
        ("sub", json!("")),
        ("sub", json!("team\n1")),
        ("client_id", json!("")),
        ("scope", json!("vps:read\tvps:write")),
        ("scope", json!(["vps:read"])),
        ("exp", json!("tomorrow")),
        ("exp", json!(1e300)),
        ("iss", json!([ISS])),
    ] {
        let mut c = claims();
        c[claim] = value.clone();
        let reply = f.get(&hs_sign(&h, &c)).await;
        reply.assert_refusal(401, UNAUTHENTICATED, Some(INVALID_TOKEN));
        assert_eq!(
            f.last_reason(),
            Some(jwt::reason::INVALID_CLAIMS),
            "{claim} = {value}"
        );
    }
}

#[tokio::test]
async fn a_critical_header_extension_is_refused() {
    let f = Fixture::new(vec![hs_key()]);
    let mut h = at_header(Algorithm::HS256, "hs-1");
    h.crit = Some(vec!["exp".into()]);
    f.assert_refused(&hs_sign(&h, &claims()), jwt::reason::MALFORMED_JWT)
        .await;
}

#[tokio::test]
async fn without_a_validator_a_jwt_is_just_a_malformed_token() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let issuer = JwtIssuer::builder(hs_key(), ISS, AUD).build().unwrap();
    let token = issuer.issue(&read_grant()).unwrap();
    let err = verifier
        .authenticate(token.token.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    assert!(matches!(err.reason(), Some(RejectReason::Malformed(_))));
}

#[tokio::test]
async fn a_long_jwt_passes_the_middleware_and_a_too_long_one_is_not_issued() {
    let f = Fixture::new(vec![hs_key()]);
    let issuer = f.issuer(hs_key());
    // Well past the 512 bytes other tokens may have.
    let many: Vec<String> = std::iter::once("vps:read".to_owned())
        .chain((0..60).map(|i| format!("project-{i:03}:read")))
        .collect();
    let grant = read_grant().scopes(&many).unwrap();
    let long = issuer.issue(&grant).unwrap();
    let text = long.token.expose_secret();
    assert!(
        text.len() > 1500 && text.len() <= MAX_JWT_LEN,
        "{}",
        text.len()
    );
    f.assert_accepted(text).await;

    let too_many: Vec<String> = (0..300).map(|i| format!("project-{i:03}:read")).collect();
    let grant = read_grant().scopes(&too_many).unwrap();
    assert_eq!(issuer.issue(&grant).unwrap_err(), JwtError::TooLong);

    // A JWT-shaped text above the bound is refused before any parsing.
    let huge = format!("eyJ{}.e.e", "a".repeat(MAX_JWT_LEN));
    let reply = f.get(&huge).await;
    reply.assert_refusal(401, UNAUTHENTICATED, Some(INVALID_TOKEN));
}

#[test]
fn keys_are_checked_at_construction() {
    assert_eq!(
        JwtKey::hs256(&HS_SECRET[..31]).unwrap_err(),
        JwtError::KeyTooShort
    );
    assert_eq!(JwtKey::hs256(&[]).unwrap_err(), JwtError::KeyTooShort);
    assert!(JwtKey::hs256(HS_SECRET).is_ok());
    let (private, public, _) = ed25519(1);
    // A private key where a public one is expected, and the reverse, and garbage.
    assert_eq!(
        JwtKey::ed25519_public_pem(&private).unwrap_err(),
        JwtError::InvalidKey
    );
    assert_eq!(
        JwtKey::ed25519_private_pem(&public).unwrap_err(),
        JwtError::InvalidKey
    );
    assert_eq!(
        JwtKey::ed25519_private_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .unwrap_err(),
        JwtError::InvalidKey
    );
    // DER works as PEM does.
    let der = SigningKey::from_bytes(&[1; 32]).to_pkcs8_der().unwrap();
    let from_der = JwtKey::ed25519_private_der(der.as_bytes()).unwrap();
    assert_eq!(from_der.algorithm(), JwtAlgorithm::EdDsa);
    assert!(from_der.can_sign());
    let spki = SigningKey::from_bytes(&[1; 32])
        .verifying_key()
        .to_public_key_der()
        .unwrap();
    assert!(
        !JwtKey::ed25519_public_der(spki.as_bytes())
            .unwrap()
            .can_sign()
    );
    for kid in ["", "with space", "tab\t", "é"] {
        assert_eq!(
            hs_key().with_kid(kid).unwrap_err(),
            JwtError::InvalidKeyId,
            "{kid:?}"
        );
    }
}

#[test]
fn an_ed25519_private_key_signs_what_its_public_key_verifies() {
    let issuer = JwtIssuer::builder(ed_private(), ISS, AUD).build().unwrap();
    let validator = JwtValidator::builder(ISS, AUD)
        .key(ed_public())
        .build()
        .unwrap();
    let issued = issuer.issue(&read_grant()).unwrap();
    let claims = validator
        .validate(issued.token.expose_secret(), Utc::now())
        .unwrap();
    assert_eq!(claims, issued.claims);
    assert_eq!(claims.audience, [AUD]);
    assert_eq!(claims.client_id, "ci-runner");
    // The header is RFC 9068's.
    let header = jsonwebtoken::decode_header(issued.token.expose_secret()).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some("ed-1"));
    // A fresh jti each time.
    let again = issuer.issue(&read_grant()).unwrap();
    assert_ne!(again.claims.id, issued.claims.id);
}

#[test]
fn debug_output_shows_no_key_material() {
    let (private_pem, _, _) = ed25519(1);
    let private_body: String = private_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let hs = hs_key();
    let ed = ed_private();
    let issuer = JwtIssuer::builder(hs.clone(), ISS, AUD).build().unwrap();
    let builder = JwtIssuer::builder(ed.clone(), ISS, AUD);
    let validator = issuer.validator().build().unwrap();
    let validator_builder = JwtValidator::builder(ISS, AUD).key(hs.clone());
    let secret_text = String::from_utf8_lossy(HS_SECRET).into_owned();
    // How a derived Debug would print the bytes.
    let hs_bytes = format!("{:?}", &HS_SECRET[..8]);
    let hs_bytes = hs_bytes.trim_end_matches(']');
    let seed_bytes = format!("{:?}", [1u8; 8]);
    let seed_bytes = seed_bytes.trim_end_matches(']');
    for shown in [
        format!("{hs:?}"),
        format!("{ed:?}"),
        format!("{issuer:?}"),
        format!("{builder:?}"),
        format!("{validator:?}"),
        format!("{validator_builder:?}"),
    ] {
        assert!(shown.contains("JwtKey"), "{shown}");
        for secret in [
            secret_text.as_str(),
            private_body.as_str(),
            hs_bytes,
            seed_bytes,
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}

#[tokio::test]
async fn a_jwt_manages_its_teams_tokens_and_what_it_mints_expires_with_it() {
    let f = Fixture::with(
        vec![hs_key()],
        |v| v,
        |b| b.format(quickstart::token_format()),
    );
    let grant = AccessGrant::new(Owner::new("team-1").unwrap(), "console")
        .unwrap()
        .scopes(["tokens:read", "tokens:write", "vps:read"])
        .unwrap();
    let jwt = f.issuer(hs_key()).issue(&grant).unwrap();
    let app = quickstart::app(f.verifier.clone());
    let call = |method: &str, path: String, token: String, body: Option<Value>| {
        let app = app.clone();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
            .unwrap();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
            (
                status,
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    let bearer = jwt.token.expose_secret().to_owned();

    // Create: the new API key works, and lives no longer than the JWT that made it.
    let (status, created) = call(
        "POST",
        "/api/v1/tokens".into(),
        bearer.clone(),
        Some(json!({"name": "from-jwt", "scopes": ["vps:read"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["expires_at"], json!(jwt.claims.expires_at));
    let minted = created["token"].as_str().unwrap().to_owned();
    let (status, _) = call("GET", "/api/v1/vps".into(), minted.clone(), None).await;
    assert_eq!(status, 200);

    // Rotate it: the successor is handed out, not revoked behind the caller's back.
    let id = created["id"].as_str().unwrap();
    let (status, rotated) = call(
        "POST",
        format!("/api/v1/tokens/{id}/rotate"),
        bearer.clone(),
        Some(json!({"grace_seconds": 0})),
    )
    .await;
    assert_eq!(status, 201, "{rotated}");
    let successor = rotated["token"].as_str().unwrap().to_owned();
    let (status, _) = call("GET", "/api/v1/vps".into(), successor, None).await;
    assert_eq!(status, 200);
    let (status, _) = call("GET", "/api/v1/vps".into(), minted, None).await;
    assert_eq!(status, 401, "the rotated token is retired");

    // Scopes it does not hold stay out of reach.
    let (status, _) = call(
        "POST",
        "/api/v1/tokens".into(),
        bearer,
        Some(json!({"name": "escalate", "scopes": ["vps:write"]})),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn the_oauth_token_endpoint_mints_jwts_that_the_same_layer_accepts() {
    use apitoken::oauth::{AuthorizationServer, ClientRegistration, MemoryGrantStore};

    let f = Fixture::new(vec![hs_key()]);
    let oauth = AuthorizationServer::builder(f.verifier.clone(), MemoryGrantStore::new())
        .minter(f.issuer(hs_key()))
        .build()
        .unwrap();
    let client_key = f
        .verifier
        .issuer()
        .issue(
            NewToken::new("reporting app", Owner::new("team-1").unwrap())
                .scopes(["vps:read", "vps:write"])
                .unwrap()
                .metadata(ClientRegistration::new().to_metadata()),
        )
        .await
        .unwrap();
    let client_id = client_key.record.id.as_str().to_owned();
    let router = app(f.verifier.clone()).nest("/oauth", oauth.router());

    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", &client_id)
        .append_pair("client_secret", client_key.token.expose_secret())
        .append_pair("scope", "vps:read")
        .finish();
    let request = Request::post("/oauth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let grant: Value =
        serde_json::from_slice(&to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(grant["expires_in"], 3600, "{grant}");
    let access = grant["access_token"].as_str().unwrap();
    assert!(access.starts_with("eyJ"), "{grant}");

    // The JWT reaches the route as a Principal for the client's owner, with the scope asked for.
    let reply = f.get(access).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    let who = reply.json();
    assert_eq!(who["kind"], "Jwt");
    assert_eq!(who["owner"], "team-1");
    assert_eq!(who["name"], client_id.as_str());
    assert_eq!(who["scopes"], "vps:read");
    assert_eq!(who["expires_at"], json!(t0() + TimeDelta::hours(1)));
    assert_eq!(f.send("POST", access).await.status, 403);
}

/// POSTs a form to the OAuth router; the status and the JSON body.
async fn oauth_post(router: &Router, path: &str, fields: &[(&str, &str)]) -> (u16, Value) {
    let mut body = form_urlencoded::Serializer::new(String::new());
    for (key, value) in fields {
        body.append_pair(key, value);
    }
    let request = Request::post(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body.finish()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_jwt_access_token_is_no_client_secret_and_introspects_as_active() {
    use apitoken::oauth::{AuthorizationServer, ClientRegistration, MemoryGrantStore};

    let f = Fixture::new(vec![hs_key()]);
    let oauth = AuthorizationServer::builder(f.verifier.clone(), MemoryGrantStore::new())
        .minter(f.issuer(hs_key()))
        .build()
        .unwrap();
    let client_key = f
        .verifier
        .issuer()
        .issue(
            NewToken::new("reporting app", Owner::new("team-1").unwrap())
                .scopes(["vps:read", "oauth:introspect"])
                .unwrap()
                .metadata(ClientRegistration::new().to_metadata()),
        )
        .await
        .unwrap();
    let client_id = client_key.record.id.as_str().to_owned();
    let secret = client_key.token.expose_secret().to_owned();
    let router = oauth.router();
    let (status, grant) = oauth_post(
        &router,
        "/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &client_id),
            ("client_secret", &secret),
            ("scope", "vps:read"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{grant}");
    let jwt = grant["access_token"].as_str().unwrap().to_owned();
    let jti = f
        .verifier
        .authenticate(&jwt)
        .await
        .unwrap()
        .token_id()
        .to_string();

    // The JWT, presented as a client secret under its own id, authenticates no client: it
    // would mint itself successors forever.
    let (status, body) = oauth_post(
        &router,
        "/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &jti),
            ("client_secret", &jwt),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client")),
        "{body}"
    );

    // Introspection describes the server's own JWT (RFC 7662), with its claims.
    let introspect = |token: String| {
        let (router, client_id, secret) = (router.clone(), client_id.clone(), secret.clone());
        async move {
            oauth_post(
                &router,
                "/introspect",
                &[
                    ("client_id", &client_id),
                    ("client_secret", &secret),
                    ("token", &token),
                ],
            )
            .await
        }
    };
    let (status, body) = introspect(jwt.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["jti"], jti.as_str());
    assert_eq!(body["client_id"], client_id.as_str());
    assert_eq!(body["sub"], "team-1");
    assert_eq!(body["scope"], "vps:read");
    assert_eq!(body["exp"], (t0() + TimeDelta::hours(1)).timestamp());
    // Tampered, or expired: inactive, and nothing else said.
    let mut tampered = jwt.clone();
    tampered.pop();
    tampered.push(if jwt.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(introspect(tampered).await, (200, json!({"active": false})));
    f.clock.advance(TimeDelta::hours(2));
    assert_eq!(introspect(jwt).await, (200, json!({"active": false})));
}

#[test]
fn a_jwt_minter_needs_a_verifier_that_validates_jwts() {
    use apitoken::oauth::{AuthorizationServer, BuildError, MemoryGrantStore, access_token_format};

    let verifier = Verifier::builder(MemoryStore::new())
        .also_accept(access_token_format())
        .build();
    let issuer = JwtIssuer::builder(hs_key(), ISS, AUD).build().unwrap();
    let refused = AuthorizationServer::builder(verifier, MemoryGrantStore::new())
        .minter(issuer)
        .build()
        .unwrap_err();
    assert_eq!(refused, BuildError::NoJwtValidator);
    assert!(
        refused.to_string().contains("VerifierBuilder::jwt"),
        "{refused}"
    );
}
