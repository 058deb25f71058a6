//! Secrets never reach logs or `Debug` output: every `tracing` event of a whole HTTP flow is
//! captured at TRACE level and searched for the token texts.

#[path = "../examples/quickstart.rs"]
#[allow(dead_code)]
mod quickstart;
mod support;

use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use apitoken::middleware::{AuthLayer, Credentials, RequireScopesLayer};
use apitoken::{
    AuthErrorKind, MemoryStore, NewToken, Owner, Principal, ScopeRequirement, TokenFormat, TokenId,
    Verifier,
};
use http::{Method, Request, Response, StatusCode};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tracing_subscriber::fmt::MakeWriter;

use support::{Client, Server, forbidden_strings, secret_part, token_id, with_one_char_changed};

/// Every formatted event, appended to one shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned")).into_owned()
    }
}

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn verifier() -> Verifier<MemoryStore> {
    Verifier::builder(MemoryStore::new())
        .format(quickstart::token_format())
        .build()
}

/// Asserts that `haystack` (described by `what`) contains none of `secrets`.
#[track_caller]
fn assert_no_secret(what: &str, haystack: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !haystack.contains(secret.as_str()),
            "{what} contains a secret ({} chars):\n{haystack}",
            secret.len()
        );
    }
}

/// The whole flow over HTTP; returns every secret text that was in play.
async fn run_flow() -> Vec<String> {
    let format = quickstart::token_format();
    let verifier = verifier();
    let bootstrap = quickstart::issue_bootstrap_token(&verifier)
        .await
        .expect("bootstrap")
        .expose_secret()
        .to_owned();
    let server = Server::start(quickstart::app(verifier)).await;
    let client = Client::new(&server);

    let mut secrets = forbidden_strings(&format, &bootstrap).to_vec();
    let mut mint = async |name: &str, scopes: &[&str]| {
        let body = json!({ "name": name, "scopes": scopes }).to_string();
        let reply = client
            .bearer(Method::POST, "/api/v1/tokens", &bootstrap, Some(&body))
            .await;
        assert_eq!(reply.status, 201, "{reply:#?}");
        let token = reply.json()["token"].as_str().expect("token").to_owned();
        secrets.extend(forbidden_strings(&format, &token));
        token
    };
    let ci = mint("ci", &["vps:read", "vps:write"]).await;
    let read_only = mint("read-only", &["vps:read"]).await;

    // Verified OK, through both schemes, and a write.
    for scheme in ["Bearer", "apk"] {
        let reply = client
            .call(
                Method::GET,
                "/api/v1/vps",
                Some(&format!("{scheme} {ci}")),
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{reply:#?}");
    }
    let created = client
        .bearer(
            Method::POST,
            "/api/v1/vps",
            &ci,
            Some(r#"{"name":"web-1"}"#),
        )
        .await;
    assert_eq!(created.status, 201);

    // Wrong secret (valid id and checksum), bad checksum, quoted.
    let wrong_secret = format
        .render(
            Some(&token_id(&format, &ci)),
            &secret_part(&format, &read_only),
        )
        .expect("rendered")
        .expose_secret()
        .to_owned();
    secrets.extend(forbidden_strings(&format, &wrong_secret));
    let bad_checksum = with_one_char_changed(&format, &ci);
    secrets.push(bad_checksum.clone());
    for token in [&wrong_secret, &bad_checksum, &format!("\"{ci}\"")] {
        let reply = client.bearer(Method::GET, "/api/v1/vps", token, None).await;
        assert_eq!(reply.status, 401, "{reply:#?}");
    }

    // Missing scope.
    let reply = client
        .bearer(
            Method::POST,
            "/api/v1/vps",
            &read_only,
            Some(r#"{"name":"x"}"#),
        )
        .await;
    assert_eq!(reply.status, 403, "{reply:#?}");

    // Malformed headers that carry real secrets.
    let two = client
        .request(Method::GET, "/api/v1/vps")
        .header("authorization", format!("Bearer {ci}"))
        .header("authorization", format!("Bearer {read_only}"));
    assert_eq!(client.send(two, None).await.status, 400);
    let junk = client
        .call(
            Method::GET,
            "/api/v1/vps",
            Some(&format!("Bearer {ci} {read_only}")),
            None,
        )
        .await;
    assert_eq!(junk.status, 400);

    // Revoked, then used.
    let path = format!("/api/v1/tokens/{}", token_id(&format, &ci));
    let revoke = client.bearer(Method::DELETE, &path, &bootstrap, None).await;
    assert_eq!(revoke.status, 204);
    let reply = client.bearer(Method::GET, "/api/v1/vps", &ci, None).await;
    assert_eq!(reply.status, 401);

    secrets
}

/// Serializes the tests of this file.
///
/// `tracing` caches each call site's interest process-wide. A call site first reached on
/// another test's thread while [`no_secret_reaches_the_logs`] installs its scoped subscriber
/// can cache "never" and drop that test's events (seen here: the "token refused" event went
/// missing intermittently), so the tests of this file never overlap.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn no_secret_reaches_the_logs() {
    let _serial = serial();
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_target(true)
        .with_writer(capture.clone())
        .finish();
    // One thread: the server, the client and the verifier all log through this subscriber.
    let runtime = current_thread_runtime();
    let secrets = {
        let _guard = tracing::subscriber::set_default(subscriber);
        runtime.block_on(run_flow())
    };
    drop(runtime);

    let logs = capture.text();
    assert!(
        logs.contains("token refused"),
        "the capture saw no refusal, so it proves nothing:\n{logs}"
    );
    // The refusals are logged with their reasons, so the capture saw the detailed events.
    for reason in ["WrongSecret", "BadChecksum", "Revoked"] {
        assert!(logs.contains(reason), "no {reason} event:\n{logs}");
    }
    assert_no_secret("the logs", &logs, &secrets);
}

#[test]
fn debug_output_never_shows_secrets() {
    let _serial = serial();
    current_thread_runtime().block_on(debug_checks());
}

async fn debug_checks() {
    let format: TokenFormat = quickstart::token_format();
    let verifier = verifier();
    let issued = verifier
        .issuer()
        .issue(
            NewToken::new("ci", Owner::new("team-1").expect("owner"))
                .scopes(["vps:read"])
                .expect("scopes"),
        )
        .await
        .expect("issued");
    let token = issued.token.expose_secret().to_owned();
    let mut secrets = forbidden_strings(&format, &token).to_vec();

    assert_no_secret("IssuedToken", &format!("{issued:?}"), &secrets);
    assert_no_secret("IssuedToken (pretty)", &format!("{issued:#?}"), &secrets);
    assert_no_secret("Secret", &format!("{:?}", issued.token), &secrets);
    assert_no_secret("Verifier", &format!("{verifier:?}"), &secrets);

    let layer = AuthLayer::new(verifier.clone())
        .credentials(Credentials::bearer().scheme("apk").expect("scheme"));
    assert_no_secret("AuthLayer", &format!("{layer:?}"), &secrets);

    // Errors of every kind, made from presented secrets.
    let wrong_secret = format
        .render(
            Some(&token_id(&format, &token)),
            &"Z".repeat(secret_part(&format, &token).len()),
        )
        .expect("rendered")
        .expose_secret()
        .to_owned();
    secrets.extend(forbidden_strings(&format, &wrong_secret));
    let unknown = format
        .generate(Some(&TokenId::new("AAAAAAAAAAAA").expect("id")))
        .expect("generated")
        .expose_secret()
        .to_owned();
    secrets.extend(forbidden_strings(&format, &unknown));
    let write = ScopeRequirement::all(["vps:write"]).expect("scope");
    let none = ScopeRequirement::none();
    let bad_checksum = with_one_char_changed(&format, &token);
    secrets.push(bad_checksum.clone());
    let cases = [
        (&token, &write, AuthErrorKind::InsufficientScope),
        (&wrong_secret, &none, AuthErrorKind::InvalidToken),
        (&unknown, &none, AuthErrorKind::InvalidToken),
        (&bad_checksum, &none, AuthErrorKind::InvalidToken),
    ];
    for (presented, required, kind) in cases {
        let error = verifier
            .verify(presented, required)
            .await
            .expect_err("refused");
        assert_eq!(error.kind(), kind);
        assert_no_secret("AuthError", &format!("{error:?}"), &secrets);
        assert_no_secret("AuthError (Display)", &error.to_string(), &secrets);
    }

    // The Principal and the request as the inner service sees them behind the layer.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = Arc::clone(&seen);
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(RequireScopesLayer::by_method("vps").expect("scope"))
        .service(service_fn(move |request: Request<String>| {
            let record = Arc::clone(&record);
            async move {
                let principal = request
                    .extensions()
                    .get::<Principal>()
                    .expect("set by AuthLayer");
                let mut seen = record.lock().expect("not poisoned");
                seen.push(format!("{principal:?}"));
                seen.push(format!("{principal:#?}"));
                seen.push(format!("{:?}", principal.record()));
                seen.push(format!("{request:?}"));
                seen.push(format!("{:?}", request.headers()));
                Ok::<_, Infallible>(Response::new(principal.owner().to_string()))
            }
        }));
    assert_no_secret("Auth service", &format!("{service:?}"), &secrets);
    for scheme in ["Bearer", "apk"] {
        let request = Request::get("/api/v1/vps")
            .header("authorization", format!("{scheme} {token}"))
            .body(String::new())
            .expect("request");
        let response = service.clone().oneshot(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), "team-1");
    }
    let seen = seen.lock().expect("not poisoned");
    assert_eq!(seen.len(), 10, "the inner service ran for both requests");
    assert!(seen[0].contains("team-1"), "a real Principal: {}", seen[0]);
    for text in seen.iter() {
        assert_no_secret("what the inner service sees", text, &secrets);
    }
}

#[test]
fn no_jwt_reaches_the_logs_or_errors() {
    let _serial = serial();
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(capture.clone())
        .finish();
    let runtime = current_thread_runtime();
    let (secrets, jti) = {
        let _guard = tracing::subscriber::set_default(subscriber);
        runtime.block_on(jwt_flow())
    };
    drop(runtime);

    let logs = capture.text();
    // The capture saw the accepted JWT (its jti is logged) and each refusal with its reason.
    assert!(logs.contains(&jti), "no accepted-token event:\n{logs}");
    for reason in ["bad_signature", "wrong_token_type", "Expired"] {
        assert!(logs.contains(reason), "no {reason} event:\n{logs}");
    }
    assert_no_secret("the logs", &logs, &secrets);
}

/// JWTs accepted and refused over HTTP and by the verifier; returns every JWT and signature
/// in play, and the accepted token's jti.
async fn jwt_flow() -> (Vec<String>, String) {
    use apitoken::ManualClock;
    use apitoken::jwt::{AccessGrant, JwtIssuer, JwtKey};
    use chrono::{TimeDelta, TimeZone, Utc};

    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap(),
    ));
    let key = JwtKey::hs256(b"hygiene-hmac-key-0123456789abcde")
        .expect("key")
        .with_kid("k1")
        .expect("kid");
    let issuer = JwtIssuer::builder(key, "https://auth.example", "api")
        .clock(clock.clone())
        .build()
        .expect("issuer");
    let verifier = Verifier::builder(MemoryStore::new())
        .format(quickstart::token_format())
        .clock(clock.clone())
        .jwt(issuer.validator().build().expect("validator"))
        .build();
    let server = Server::start(quickstart::app(verifier.clone())).await;
    let client = Client::new(&server);

    let grant = AccessGrant::new(Owner::new("team-1").expect("owner"), "ci")
        .expect("grant")
        .scopes(["vps:read"])
        .expect("scopes");
    let issued = issuer.issue(&grant).expect("issued");
    let token = issued.token.expose_secret().to_owned();
    let (signed, signature) = token.rsplit_once('.').expect("three segments");
    let mut flipped = signature.to_owned().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{signed}.{}", String::from_utf8(flipped).expect("ASCII"));
    let mut refresh_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    refresh_header.typ = Some("rt+jwt".into());
    refresh_header.kid = Some("k1".into());
    let payload: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&token).expect("claims");
    let refresh = jsonwebtoken::encode(
        &refresh_header,
        &payload,
        &jsonwebtoken::EncodingKey::from_secret(b"hygiene-hmac-key-0123456789abcde"),
    )
    .expect("signed");
    let mut secrets = Vec::new();
    for jwt in [&token, &tampered, &refresh] {
        secrets.push(jwt.clone());
        secrets.push(jwt.rsplit('.').next().expect("signature").to_owned());
    }

    let ok = client
        .bearer(Method::GET, "/api/v1/vps", &token, None)
        .await;
    assert_eq!(ok.status, 200, "{ok:#?}");
    let denied = client
        .bearer(
            Method::POST,
            "/api/v1/vps",
            &token,
            Some(r#"{"name":"web-1"}"#),
        )
        .await;
    assert_eq!(denied.status, 403, "{denied:#?}");
    for refused in [&tampered, &refresh] {
        let reply = client
            .bearer(Method::GET, "/api/v1/vps", refused, None)
            .await;
        assert_eq!(reply.status, 401, "{reply:#?}");
    }

    // Errors and the Principal, from the verifier directly.
    let principal = verifier.authenticate(&token).await.expect("valid");
    assert_no_secret("Principal", &format!("{principal:#?}"), &secrets);
    assert_no_secret("IssuedJwt", &format!("{issued:#?}"), &secrets);
    clock.advance(TimeDelta::hours(2));
    for presented in [&token, &tampered, &refresh] {
        let error = verifier.authenticate(presented).await.expect_err("refused");
        assert_eq!(error.kind(), AuthErrorKind::InvalidToken);
        assert_no_secret("AuthError", &format!("{error:?}"), &secrets);
        assert_no_secret("AuthError (Display)", &error.to_string(), &secrets);
    }
    let expired = client
        .bearer(Method::GET, "/api/v1/vps", &token, None)
        .await;
    assert_eq!(expired.status, 401, "{expired:#?}");
    (secrets, issued.claims.id.to_string())
}
