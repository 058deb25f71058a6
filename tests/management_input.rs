//! What the management API does with input it cannot use: unknown fields are refused (not
//! dropped), every error is JSON `{"message": …}` with the right status and without the
//! request's values, and an empty rotation body means the default grace.

use apitoken::management::{DEFAULT_ROTATION_GRACE, TokenApi};
use apitoken::middleware::{AuthLayer, PeerAddr};
use apitoken::{MemoryStore, NewToken, Owner, TokenId, TokenStore, Verifier};
use axum::Router;
use axum::body::{Body, to_bytes};
use chrono::{TimeDelta, Utc};
use http::{HeaderMap, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

struct Api {
    verifier: Verifier<MemoryStore>,
    app: Router,
    admin: String,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// Asserts `status`, a JSON content type and a `message`; returns the message.
    fn error(&self, status: StatusCode) -> String {
        self.error_in(status, "")
    }

    fn error_in(&self, status: StatusCode, case: &str) -> String {
        assert_eq!(self.status, status, "{case}: {}", self.text);
        assert_eq!(
            self.headers
                .get("content-type")
                .map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "{case}: {status}: {}",
            self.text
        );
        let body = self.json();
        let message = body["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{case}: {status} without a message: {}", self.text));
        assert!(!message.is_empty());
        message.to_owned()
    }
}

impl Api {
    async fn new() -> Self {
        let verifier = Verifier::builder(MemoryStore::new()).build();
        let app = Router::new()
            .nest("/tokens", TokenApi::new(verifier.clone()).router())
            .layer(AuthLayer::new(verifier.clone()));
        let admin = verifier
            .issuer()
            .issue(
                NewToken::new("admin", Owner::new("team-1").unwrap())
                    .scopes(["tokens:read", "tokens:write"])
                    .unwrap(),
            )
            .await
            .unwrap()
            .token
            .expose_secret()
            .to_owned();
        Self {
            verifier,
            app,
            admin,
        }
    }

    /// A request as sent, headers and bytes exactly: no content type unless given.
    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", self.admin));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let mut request = request.body(body.into()).unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr("192.0.2.10:5000".parse().unwrap()));
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        Answer {
            status,
            headers,
            text: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    async fn post_json(&self, path: &str, body: &str) -> Answer {
        self.send("POST", path, Some("application/json"), body.to_owned())
            .await
    }

    /// Creates a token through the API: its id and text.
    async fn create(&self, name: &str) -> (String, String) {
        let answer = self
            .post_json("/tokens", &format!(r#"{{"name":"{name}"}}"#))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
        let body = answer.json();
        (
            body["id"].as_str().unwrap().to_owned(),
            body["token"].as_str().unwrap().to_owned(),
        )
    }

    async fn names(&self) -> Vec<String> {
        let records = self
            .verifier
            .store()
            .list_by_owner(&Owner::new("team-1").unwrap())
            .await
            .unwrap();
        records.into_iter().map(|r| r.name).collect()
    }
}

#[tokio::test]
async fn an_unknown_field_is_refused_with_422_naming_it_not_silently_dropped() {
    let api = Api::new().await;
    // `expires_in` is not a field (`expires_at` is): it used to be ignored, and the token
    // issued without any expiry.
    let answer = api
        .post_json("/tokens", r#"{"name":"x","expires_in":3600}"#)
        .await;
    let message = answer.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("`expires_in`"), "{message}");
    assert!(
        message.contains("expires_at"),
        "names what is expected: {message}"
    );
    assert!(!message.contains("3600"), "a value echoed: {message}");
    assert_eq!(api.names().await, ["admin"], "nothing was issued");

    // Nor is a misspelt rotation field dropped: `grace` meant to revoke the old token now,
    // and the default (a day) applied instead.
    let (id, old) = api.create("ci").await;
    let answer = api
        .post_json(&format!("/tokens/{id}/rotate"), r#"{"grace":0}"#)
        .await;
    let message = answer.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("`grace`"), "{message}");
    assert!(api.verifier.authenticate(&old).await.is_ok(), "not rotated");
    assert_eq!(api.names().await, ["admin", "ci"]);

    // The unknown field's name is shown, its value never; a long or strange name is cut
    // and escaped.
    let answer = api
        .post_json(
            "/tokens",
            r#"{"name":"x","password":"hunter2-very-secret"}"#,
        )
        .await;
    let message = answer.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("`password`"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    let long = "k".repeat(500);
    let answer = api
        .post_json(
            "/tokens",
            &format!("{{\"name\":\"x\",\"a\u{202e}{long}\":1}}"),
        )
        .await;
    let message = answer.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!message.contains('\u{202e}'), "{message:?}");
    assert!(message.contains("\\u{202e}"), "{message:?}");
    assert!(message.len() < 300, "{} bytes", message.len());
}

#[tokio::test]
async fn every_input_error_is_json_with_a_message_and_the_right_status() {
    let api = Api::new().await;
    let (id, _) = api.create("ci").await;
    let rotate = format!("/tokens/{id}/rotate");
    let json = Some("application/json");
    let too_large = format!(r#"{{"name":"{}"}}"#, "x".repeat(3 << 20));
    let cases: Vec<(&str, &str, Option<&str>, String, StatusCode)> = vec![
        // Malformed JSON: 400.
        (
            "POST",
            "/tokens",
            json,
            r#"{"name":"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/tokens",
            json,
            r#"{"name":"x"} trailing"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/tokens",
            json,
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        ("POST", &rotate, json, "{".into(), StatusCode::BAD_REQUEST),
        // Too large: 413.
        (
            "POST",
            "/tokens",
            json,
            too_large.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "POST",
            &rotate,
            json,
            too_large,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        // Not JSON: 415, with or without a content type.
        (
            "POST",
            "/tokens",
            Some("text/plain"),
            r#"{"name":"x"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "POST",
            "/tokens",
            None,
            r#"{"name":"x"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "POST",
            &rotate,
            Some("application/x-www-form-urlencoded"),
            "grace_seconds=0".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "POST",
            &rotate,
            None,
            r#"{"grace_seconds":0}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        // Well-formed JSON that does not fit: 422.
        (
            "POST",
            "/tokens",
            json,
            "{}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/tokens",
            json,
            "[]".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/tokens",
            json,
            r#"{"name":5}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/tokens",
            json,
            r#"{"name":"x","scopes":"vps:read"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/tokens",
            json,
            r#"{"name":"x","expires_at":"tomorrow"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/tokens",
            json,
            r#"{"name":"x","allowed_ips":["10.0.0.0/33"]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/tokens",
            json,
            r#"{"name":"x","name":"y"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/tokens",
            json,
            r#"{"name":"x","expires_in":3600}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            &rotate,
            json,
            r#"{"grace_seconds":"soon"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            &rotate,
            json,
            r#"{"grace_seconds":-1}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // An id that is not even UTF-8, a path or a method the API does not have.
        (
            "POST",
            "/tokens/%FF/rotate",
            json,
            "{}".into(),
            StatusCode::NOT_FOUND,
        ),
        (
            "DELETE",
            "/tokens/%FF",
            None,
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "GET",
            "/tokens/a/b/c",
            None,
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "PUT",
            "/tokens",
            json,
            "{}".into(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, path, content_type, body, status) in cases {
        let shown: String = body.chars().take(60).collect();
        let answer = api.send(method, path, content_type, body).await;
        let message = answer.error_in(status, &format!("{method} {path} {content_type:?} {shown}"));
        // Values are never repeated; the fields named are the API's own.
        for value in ["tomorrow", "soon", "vps:read", "10.0.0.0/33", "trailing"] {
            assert!(
                !message.contains(value),
                "{method} {path} {shown}: {message}"
            );
        }
    }
    // The 405 still says what is allowed.
    let answer = api.send("PUT", "/tokens", None, "").await;
    let allow = answer
        .headers
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        allow.as_deref().is_some_and(|a| a.contains("POST")),
        "{allow:?}"
    );
    // Only the admin and "ci": nothing refused was issued.
    assert_eq!(api.names().await, ["admin", "ci"]);
}

#[tokio::test]
async fn an_empty_rotation_body_means_the_default_grace() {
    let api = Api::new().await;
    let bodies: [(&str, Option<&str>, &str); 5] = [
        ("no body, no content type", None, ""),
        (
            "Content-Length 0 with a JSON content type",
            Some("application/json"),
            "",
        ),
        (
            "an empty form post (curl -d '')",
            Some("application/x-www-form-urlencoded"),
            "",
        ),
        ("{}", Some("application/json"), "{}"),
        (
            "{} with whitespace",
            Some("application/json; charset=utf-8"),
            " { } \n",
        ),
    ];
    for (case, content_type, body) in bodies {
        let (id, old) = api.create("ci").await;
        let before = Utc::now();
        let answer = api
            .send(
                "POST",
                &format!("/tokens/{id}/rotate"),
                content_type,
                body.to_owned(),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{case}: {}",
            answer.text
        );
        assert!(answer.json()["token"].is_string(), "{case}");
        // The old token works for the default grace, then ends.
        assert!(api.verifier.authenticate(&old).await.is_ok(), "{case}");
        let record = api
            .verifier
            .store()
            .get(&id.parse::<TokenId>().unwrap())
            .await
            .unwrap()
            .unwrap()
            .record;
        let ends = record.expires_at.expect("the old token now expires");
        let grace = ends - before;
        assert!(
            grace >= DEFAULT_ROTATION_GRACE - TimeDelta::seconds(5)
                && grace <= DEFAULT_ROTATION_GRACE + TimeDelta::seconds(5),
            "{case}: grace {grace}"
        );
        assert!(record.revoked_at.is_none(), "{case}");
    }
}

#[tokio::test]
async fn a_name_with_a_bidi_override_is_refused_with_422_json() {
    let api = Api::new().await;
    for c in [
        '\u{202e}',
        '\u{2028}',
        '\u{2029}',
        '\u{200b}',
        '\u{feff}',
        '\u{2066}',
        '\u{ad}',
        '\u{e0041}',
    ] {
        let body = serde_json::json!({ "name": format!("deploy{c}gnp.exe") }).to_string();
        let answer = api.post_json("/tokens", &body).await;
        let message = answer.error(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(message.contains("name"), "{message}");
        assert!(
            !message.contains(c),
            "the raw character echoed: {message:?}"
        );
        assert!(!message.contains("gnp"), "the name echoed: {message:?}");
    }
    let answer = api
        .post_json("/tokens", r#"{"name":"Déploiement 部署 🚀"}"#)
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
    assert_eq!(api.names().await, ["admin", "Déploiement 部署 🚀"]);
}

#[tokio::test]
async fn names_stored_before_the_rule_are_listed_escaped_and_still_rotate() {
    let api = Api::new().await;
    // Written to the store directly, as an older version or another tool could have.
    let name = "deploy\u{202e}gnp.exe";
    let id = TokenId::new("Legacy000001").unwrap();
    let record = apitoken::TokenRecord::new(id, Owner::new("team-1").unwrap(), name, Utc::now());
    let hash = apitoken::SecretHasher::sha256().hash(b"legacy secret");
    api.verifier.store().insert(record, hash).await.unwrap();

    let answer = api.send("GET", "/tokens", None, "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert!(
        !answer.text.contains('\u{202e}'),
        "raw in the response: {}",
        answer.text
    );
    assert!(answer.text.contains("\\u202e"), "{}", answer.text);
    // The same JSON value: clients read the name as stored.
    let listed = answer.json();
    assert!(
        listed.as_array().unwrap().iter().any(|t| t["name"] == name),
        "{listed}"
    );

    // Rotation keeps the name it has (refusing it would strand the token).
    let answer = api
        .send("POST", &format!("/tokens/{id}/rotate"), None, "")
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
    assert!(!answer.text.contains('\u{202e}'), "{}", answer.text);
    assert_eq!(answer.json()["name"], name);
}
