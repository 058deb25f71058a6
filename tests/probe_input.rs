//! attack14 probes: token names (every refused class, boundaries) and management API input.

use apitoken::management::TokenApi;
use apitoken::middleware::{AuthLayer, PeerAddr};
use apitoken::name::{EscapedName, MAX_NAME_LEN, check_name, escape_json, is_refused_in_name};
use apitoken::{IssueError, MemoryStore, NewToken, Owner, Verifier};
use axum::Router;
use axum::body::{Body, to_bytes};
use http::{Request, StatusCode};
use tower::ServiceExt;

/// Claim 4: a character of each refused class (incl. astral Cf, Unicode 12+ Cf, C1) is
/// refused at issue; combining marks, surrogate-adjacent and private-use are kept.
#[tokio::test]
async fn probe_every_refused_class_is_refused_at_issue() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let refused = [
        '\u{0}',
        '\u{1b}',
        '\u{7f}',
        '\u{85}',
        '\u{9f}', // Cc
        '\u{ad}',
        '\u{600}',
        '\u{61c}',
        '\u{6dd}',
        '\u{70f}',
        '\u{180e}',
        '\u{200b}',
        '\u{200e}',
        '\u{202e}',
        '\u{2060}',
        '\u{2066}',
        '\u{2069}',
        '\u{206f}',
        '\u{feff}',
        '\u{fff9}',
        '\u{fffb}',
        '\u{110bd}',
        '\u{13430}',
        '\u{1bca0}',
        '\u{1d173}',
        '\u{e0001}',
        '\u{e0041}',
        '\u{e007f}', // Cf
        '\u{2028}',  // Zl
        '\u{2029}',  // Zp
    ];
    for c in refused {
        assert!(is_refused_in_name(c), "U+{:04X}", u32::from(c));
        let name = format!("a{c}b");
        let issued = verifier
            .issuer()
            .issue(NewToken::new(name.as_str(), Owner::new("o").unwrap()))
            .await;
        assert!(
            matches!(issued, Err(IssueError::InvalidName)),
            "U+{:04X}: {issued:?}",
            u32::from(c)
        );
        // Escaped for display, and the JSON escape parses back to the same value.
        assert!(!EscapedName::new(&name).to_string().contains(c));
        let json = serde_json::to_string(&serde_json::json!({ "name": name })).unwrap();
        let escaped = escape_json(&json);
        assert!(!escaped.contains(c), "U+{:04X}", u32::from(c));
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back["name"], name.as_str());
    }
    for ok in [
        "e\u{301}",         // combining acute
        "\u{d7ff}\u{e000}", // around the surrogates, private use
        "\u{fffd}",
        "\u{10ffff}",
        "a b\u{a0}c", // no-break space is Zs
        "部署 🚀",
    ] {
        assert!(check_name(ok).is_ok(), "{ok:?}");
        verifier
            .issuer()
            .issue(NewToken::new(ok, Owner::new("o").unwrap()))
            .await
            .unwrap_or_else(|e| panic!("{ok:?}: {e:?}"));
    }
}

/// Claim 4: the length limit counts characters, with 4-byte characters at the boundary.
#[test]
fn probe_name_length_boundaries_multibyte() {
    for c in ['a', 'é', '部', '𝕏'] {
        let at = c.to_string().repeat(MAX_NAME_LEN);
        assert!(check_name(&at).is_ok(), "{c}: {MAX_NAME_LEN} chars");
        let over = c.to_string().repeat(MAX_NAME_LEN + 1);
        assert!(check_name(&over).is_err(), "{c}: one more");
    }
    // 64 and 65 characters too (the brief's boundary).
    assert!(check_name(&"𝕏".repeat(64)).is_ok());
    assert!(check_name(&"𝕏".repeat(65)).is_ok());
    assert!(check_name("").is_err());
}

/// Claim 4: escape_json over a name that already holds backslashes and text that looks like
/// escapes parses back to the same value.
#[test]
fn probe_escape_json_round_trips_tricky_names() {
    for name in [
        "\\u202e\u{202e}",
        "\\\u{202e}\\",
        "\"\u{2028}\"",
        "\u{e0041}\u{e0042}",
        "tab\tnl\ncr\r\u{85}",
    ] {
        let json = serde_json::to_string(&serde_json::json!({ "n": name, name: 1 })).unwrap();
        let escaped = escape_json(&json);
        assert!(
            !escaped
                .chars()
                .any(|c| is_refused_in_name(c) && !matches!(c, '\t' | '\n' | '\r'))
        );
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back["n"], name);
        assert_eq!(back[name], 1);
    }
}

async fn api() -> (Router, String) {
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
    (app, admin)
}

async fn post(app: &Router, admin: &str, path: &str, body: String) -> (StatusCode, String) {
    let mut request = Request::builder()
        .method("POST")
        .uri(path)
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    request
        .extensions_mut()
        .insert(PeerAddr("192.0.2.10:5000".parse().unwrap()));
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// Claim 5: secret-looking values never come back, whatever the error; every error is
/// `{"message"}`; names decoded from JSON escapes are escaped too.
#[tokio::test]
async fn probe_management_errors_never_echo_values() {
    let (app, admin) = api().await;
    const S: &str = "sk_live_TOPSECRET42";
    let cases = [
        format!(r#"{{"name":"x","zz":"{S}"}}"#),
        format!(r#"{{"name":"x","zz":{{"deep":"{S}"}}}}"#),
        format!(r#"{{"name":"x","scopes":"{S}"}}"#),
        format!(r#"{{"name":"x","scopes":[1,"{S}",{{"{S}":1}}]}}"#),
        format!(r#"{{"name":{{"{S}":1}}}}"#),
        format!(r#"{{"name":["{S}"]}}"#),
        format!(r#"{{"name":"x","expires_at":"{S}"}}"#),
        format!(r#"{{"name":"x","allowed_ips":["{S}"]}}"#),
        format!(r#"{{"name":"x","allowed_ips":"{S}"}}"#),
        format!(r#"{{"name":"x","name":"{S}"}}"#),
        format!(r#"{{"name":"x","expires_at":{S}}}"#),
        format!(r#"["{S}"]"#),
        format!(r#""{S}""#),
        format!(r#"{{"name":"x{S}"#),
        format!(r#"{{"name":"\u001b[31m{S}"}}"#),
    ];
    for body in cases {
        let (status, text) = post(&app, &admin, "/tokens", body.clone()).await;
        assert!(status.is_client_error(), "{body}: {status} {text}");
        let value: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{body}: not JSON: {text}"));
        let message = value["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}: {text}"));
        assert!(!message.contains("TOPSECRET"), "{body}: {status} {message}");
        assert!(!text.contains("TOPSECRET"), "{body}: {text}");
    }
    // An unknown field whose name arrives as JSON escapes of an ESC and a tag character.
    let (status, text) = post(
        &app,
        &admin,
        "/tokens",
        r#"{"name":"x","a\u001b[2J\udb40\udc41":1}"#.to_owned(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let message = value["message"].as_str().unwrap();
    assert!(!message.chars().any(is_refused_in_name), "{message:?}");
    // A huge field name is cut.
    let huge = "k".repeat(200_000);
    let (status, text) = post(
        &app,
        &admin,
        "/tokens",
        format!(r#"{{"name":"x","{huge}":1}}"#),
    )
    .await;
    assert!(status.is_client_error(), "{status}");
    assert!(text.len() < 500, "{} bytes", text.len());
}

/// Claim 5: rotation body edge cases: empty, `{}`, null grace, out-of-range grace.
#[tokio::test]
async fn probe_rotation_bodies() {
    let (app, admin) = api().await;
    let (_, created) = post(&app, &admin, "/tokens", r#"{"name":"ci"}"#.to_owned()).await;
    let mut id = serde_json::from_str::<serde_json::Value>(&created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (body, ok) in [
        ("", true),
        ("{}", true),
        (r#"{"grace_seconds":null}"#, true),
        (r#"{"grace_seconds":9223372036854775807}"#, false),
        (r#"{"grace_seconds":-1}"#, false),
        (r#"{"grace_seconds":1e400}"#, false),
        (r#"{"grace_seconds":"1"}"#, false),
    ] {
        let (status, text) = post(
            &app,
            &admin,
            &format!("/tokens/{id}/rotate"),
            body.to_owned(),
        )
        .await;
        if ok {
            assert_eq!(status, StatusCode::CREATED, "{body}: {text}");
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            // Each rotation makes a new id; rotate the newest next.
            id = value["id"].as_str().unwrap().to_owned();
        } else {
            assert!(status.is_client_error(), "{body}: {status} {text}");
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(value["message"].is_string(), "{body}: {text}");
        }
    }
}
