//! Hostile and odd requests through the real middleware and the quickstart application, each
//! with the status and RFC 6750 error code it must get. None may panic, and no response may
//! carry anything the request sent: not in a header, not in the body.

#[path = "../examples/quickstart.rs"]
#[allow(dead_code)]
mod quickstart;

use std::sync::Arc;

use apitoken::{ManualClock, MemoryStore, NewToken, Owner, TokenFormat, TokenStore, Verifier};
use axum::body::{Body, to_bytes};
use chrono::{TimeDelta, TimeZone, Utc};
use http::{HeaderValue, Request};
use tower::ServiceExt;

const BARE: Option<&str> = Some(r#"Bearer realm="api""#);
const INVALID_REQUEST: Option<&str> = Some(r#"Bearer realm="api", error="invalid_request""#);
const INVALID_TOKEN: Option<&str> = Some(r#"Bearer realm="api", error="invalid_token""#);
const BODIES: [&str; 4] = [
    r#"{"message":"Unauthenticated."}"#,
    r#"{"message":"This action is unauthorized."}"#,
    r#"{"message":"Bad request."}"#,
    "[]",
];

/// One case: request headers (raw bytes), method, path, expected status and challenge.
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    status: u16,
    challenge: Option<&'static str>,
}

fn case(
    name: &'static str,
    headers: Vec<(&'static str, Vec<u8>)>,
    status: u16,
    challenge: Option<&'static str>,
) -> Case {
    Case {
        name,
        method: "GET",
        path: "/api/v1/vps".into(),
        headers,
        status,
        challenge,
    }
}

fn auth(value: impl AsRef<[u8]>) -> Vec<(&'static str, Vec<u8>)> {
    vec![("authorization", value.as_ref().to_vec())]
}

fn bearer(token: &str) -> Vec<(&'static str, Vec<u8>)> {
    auth(format!("Bearer {token}"))
}

#[tokio::test]
async fn hostile_requests_get_exact_answers_and_echo_nothing() {
    let t0 = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let verifier = Verifier::builder(MemoryStore::new())
        .format(quickstart::token_format())
        .clock(clock.clone())
        .build();
    let issue = |name: &'static str,
                 scopes: &'static [&'static str],
                 expires: Option<chrono::DateTime<Utc>>| {
        let verifier = verifier.clone();
        async move {
            let mut new = NewToken::new(name, Owner::new("team-1").unwrap())
                .scopes(scopes)
                .unwrap();
            if let Some(at) = expires {
                new = new.expires_at(at);
            }
            verifier.issuer().issue(new).await.unwrap()
        }
    };
    let good = issue("good", &["vps:read"], None).await;
    let t = good.token.expose_secret().to_owned();
    let revoked = issue("revoked", &["vps:read"], None).await;
    verifier
        .store()
        .revoke(&revoked.record.id, verifier.now())
        .await
        .unwrap();
    let expiring = issue("expiring", &["vps:read"], Some(t0 + TimeDelta::hours(1))).await;
    let upper = issue("upper", &["VPS:read"], None).await;
    let star = issue("star", &["vps:*"], None).await;
    let app = quickstart::app(verifier.clone());

    let (id, rest) = t.split_once('.').unwrap();
    let secret_and_sum = rest.to_owned();
    let mut wrong_sum = t.clone();
    let last = wrong_sum.pop().unwrap();
    wrong_sum.push(if last == 'A' { 'B' } else { 'A' });
    let big = "A".repeat(64 * 1024);
    let canonical_elsewhere = TokenFormat::canonical()
        .generate(Some(&"AbCdEfGh1234".parse().unwrap()))
        .unwrap();

    let mut cases = vec![
        case("scheme as written", bearer(&t), 200, None),
        case("scheme lowercase", auth(format!("bearer {t}")), 200, None),
        case("scheme uppercase", auth(format!("BEARER {t}")), 200, None),
        case("scheme mixed case", auth(format!("bEaReR {t}")), 200, None),
        case("DCT scheme", auth(format!("apk {t}")), 200, None),
        case("DCT scheme uppercase", auth(format!("APK {t}")), 200, None),
        case("two spaces", auth(format!("Bearer  {t}")), 200, None),
        case(
            "trailing whitespace",
            auth(format!("Bearer {t} \t")),
            200,
            None,
        ),
        case("no credentials", vec![], 401, BARE),
        case("empty Authorization", auth(""), 401, BARE),
        case("Basic scheme", auth("Basic dXNlcjpwYXNz"), 401, BARE),
        case("unknown scheme", auth(format!("Token {t}")), 401, BARE),
        case("token without scheme", auth(&t), 401, BARE),
        case(
            "overlong scheme",
            auth(format!("{} {t}", "B".repeat(100))),
            401,
            BARE,
        ),
        case(
            "X-API-Key not configured",
            vec![("x-api-key", t.clone().into_bytes())],
            401,
            BARE,
        ),
        case("scheme only", auth("Bearer"), 400, INVALID_REQUEST),
        case("scheme and space", auth("Bearer "), 400, INVALID_REQUEST),
        case(
            "tab after scheme",
            auth(format!("Bearer\t{t}")),
            400,
            INVALID_REQUEST,
        ),
        case(
            "trailing junk",
            auth(format!("Bearer {t} junk")),
            400,
            INVALID_REQUEST,
        ),
        case(
            "two tokens, comma",
            auth(format!("Bearer {t}, Bearer {t}")),
            400,
            INVALID_REQUEST,
        ),
        case(
            "tab inside",
            auth(format!("Bearer {id}\t{secret_and_sum}")),
            400,
            INVALID_REQUEST,
        ),
        case(
            "bytes 0x80-0xFF",
            auth(b"Bearer \x80\xff\xfe"),
            400,
            INVALID_REQUEST,
        ),
        case(
            "fullwidth letters",
            auth("Bearer ＤＥＭＯ"),
            400,
            INVALID_REQUEST,
        ),
        case(
            "Cyrillic look-alike",
            bearer(&t.replacen('o', "о", 1)),
            400,
            INVALID_REQUEST,
        ),
        case(
            "two Authorization headers",
            [bearer(&t), bearer(&t)].concat(),
            400,
            INVALID_REQUEST,
        ),
        case(
            "Authorization twice, one Basic",
            [bearer(&t), auth("Basic dXNlcjpwYXNz")].concat(),
            400,
            INVALID_REQUEST,
        ),
        case(
            "quoted token",
            bearer(&format!("\"{t}\"")),
            401,
            INVALID_TOKEN,
        ),
        case(
            "padding after token",
            bearer(&format!("{t}=")),
            401,
            INVALID_TOKEN,
        ),
        case(
            "= in the middle",
            bearer(&format!("{id}=.{secret_and_sum}")),
            401,
            INVALID_TOKEN,
        ),
        case(
            "percent-encoded",
            bearer(&format!("{t}%41")),
            401,
            INVALID_TOKEN,
        ),
        case("64 KiB token", bearer(&big), 401, INVALID_TOKEN),
        case(
            "truncated secret",
            bearer(&t[..t.len() - 1]),
            401,
            INVALID_TOKEN,
        ),
        case(
            "extended secret",
            bearer(&format!("{t}A")),
            401,
            INVALID_TOKEN,
        ),
        case(
            "empty secret",
            bearer(&format!("{id}.")),
            401,
            INVALID_TOKEN,
        ),
        case("id only", bearer(id), 401, INVALID_TOKEN),
        case(
            "id 01",
            bearer(&format!("demo_01.{secret_and_sum}")),
            401,
            INVALID_TOKEN,
        ),
        case(
            "id +1",
            bearer(&format!("demo_+1.{secret_and_sum}")),
            401,
            INVALID_TOKEN,
        ),
        case(
            "id -1",
            bearer(&format!("demo_-1.{secret_and_sum}")),
            401,
            INVALID_TOKEN,
        ),
        case(
            "id 0x1",
            bearer(&format!("demo_0x1.{secret_and_sum}")),
            401,
            INVALID_TOKEN,
        ),
        case(
            "id 1e0",
            bearer(&format!("demo_1e0.{secret_and_sum}")),
            401,
            INVALID_TOKEN,
        ),
        case(
            "id 2^64",
            bearer(&format!("demo_18446744073709551616.{secret_and_sum}")),
            401,
            INVALID_TOKEN,
        ),
        case(
            "SQL metacharacters",
            bearer("demo_'OR'1'='1'--"),
            401,
            INVALID_TOKEN,
        ),
        case(
            "SQL comment",
            bearer(&format!("{id};--.{secret_and_sum}")),
            401,
            INVALID_TOKEN,
        ),
        case(
            "wrong prefix",
            bearer(&t.replacen("demo_", "ghp_", 1)),
            401,
            INVALID_TOKEN,
        ),
        case(
            "no prefix",
            bearer(canonical_elsewhere.expose_secret()),
            401,
            INVALID_TOKEN,
        ),
        case("wrong checksum", bearer(&wrong_sum), 401, INVALID_TOKEN),
        case(
            "revoked",
            bearer(revoked.token.expose_secret()),
            401,
            INVALID_TOKEN,
        ),
        case(
            "Sanctum token",
            bearer("1|7TEwyZaQXMXRVBZV9USjWNRbXAbPv9BrgMJSLDCk345196d2"),
            401,
            INVALID_TOKEN,
        ),
        case(
            "DCT token",
            bearer("1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD4pflejgqjd0pfKtywlSWR9G0fIaWajuKcBT3"),
            401,
            INVALID_TOKEN,
        ),
        case(
            "scope in upper case",
            bearer(upper.token.expose_secret()),
            403,
            None,
        ),
        case(
            "vps:* is not a wildcard",
            bearer(star.token.expose_secret()),
            403,
            None,
        ),
    ];
    let mut write = case("read token writes", bearer(&t), 403, None);
    write.method = "POST";
    cases.push(write);
    let mut query = case("token in the query string", vec![], 401, BARE);
    query.path = format!("/api/v1/vps?access_token={t}");
    cases.push(query);

    // Expired at exactly now.
    clock.set(t0 + TimeDelta::hours(1));
    cases.push(case(
        "expired at exactly now",
        bearer(expiring.token.expose_secret()),
        401,
        INVALID_TOKEN,
    ));

    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let mut request = Request::builder().method(c.method).uri(&c.path);
        for (name, value) in &c.headers {
            request = request.header(*name, HeaderValue::from_bytes(value).expect("sendable"));
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .expect("never an error");
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let headers = format!("{:?}", response.headers());
        let body = String::from_utf8(
            to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        if status != c.status {
            failures.push(format!(
                "{}: status {status}, expected {}",
                c.name, c.status
            ));
        }
        let expected_challenge = match (c.status, c.challenge) {
            (403, _) => Some(r#"Bearer realm="api", error="insufficient_scope", scope="#),
            (_, other) => other,
        };
        match (expected_challenge, &challenge) {
            (None, None) => {}
            (Some(want), Some(got))
                if got.starts_with(want) && (c.status == 403 || got == want) => {}
            _ => failures.push(format!(
                "{}: challenge {challenge:?}, expected {expected_challenge:?}",
                c.name
            )),
        }
        if c.status != 200 && !BODIES.contains(&body.as_str()) {
            failures.push(format!("{}: unexpected body {body}", c.name));
        }
        // Nothing the request sent comes back.
        for (_, value) in &c.headers {
            let sent = String::from_utf8_lossy(value);
            // Pieces of six or more characters, other than the scheme names the challenge uses.
            let pieces = sent
                .split([' ', '\t', ','])
                .filter(|p| p.len() >= 6 && !p.eq_ignore_ascii_case("bearer"));
            for piece in pieces {
                if headers.contains(piece) || (c.status != 200 && body.contains(piece)) {
                    failures.push(format!("{}: response echoes request data", c.name));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn nul_cr_and_lf_cannot_be_sent_at_all() {
    // `http` refuses to build such a header, and hyper refuses to parse one, so no request
    // carrying them reaches the middleware.
    for bad in [
        &b"Bearer a\0b"[..],
        b"Bearer a\rb",
        b"Bearer a\nb",
        b"Bearer a\r\nX-Injected: 1",
    ] {
        assert!(HeaderValue::from_bytes(bad).is_err(), "{bad:?}");
    }
}
