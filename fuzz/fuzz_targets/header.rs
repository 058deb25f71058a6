//! A request with arbitrary `Authorization` bytes through the real middleware: never panics,
//! always one of the documented statuses, the response never repeats the input, and it is a
//! 200 exactly when the header carries the issued token in the accepted grammar.
//!
//! The grammar, from `Credentials`' documentation (RFC 9110 §5.5, §11.4 and §11.1), written
//! again here without the crate's parser:
//!
//! ```text
//! value  = *OWS scheme 1*SP token *OWS     ; OWS = SP / HTAB, trimmed around the whole value
//! scheme = "Bearer" / "apk"                ; the configured schemes, ASCII case-insensitive
//! ```
//!
//! A tab between scheme and token, a tab or space inside or around the token other than at
//! the ends of the whole value, or anything but the exact token text is not a 200.
#![no_main]

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use apitoken::middleware::{AuthLayer, Credentials};
use apitoken::{MemoryStore, NewToken, Owner, Verifier};
use http::{HeaderValue, Request, Response};
use libfuzzer_sys::fuzz_target;
use tower::{Layer, Service};

/// Memory-store futures are ready when first polled.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn verifier() -> &'static (Verifier<MemoryStore>, String) {
    static VERIFIER: OnceLock<(Verifier<MemoryStore>, String)> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let verifier = Verifier::builder(MemoryStore::new())
            .disable_last_used()
            .build();
        let issued = now(verifier.issuer().issue(
            NewToken::new("fuzz", Owner::new("team-1").unwrap())
                .scopes(["vps:read"])
                .unwrap(),
        ))
        .unwrap();
        let token = issued.token.expose_secret().to_owned();
        (verifier, token)
    })
}

/// The schemes the layer below is configured with.
const SCHEMES: [&str; 2] = ["Bearer", "apk"];

/// Whether `value` is the grammar above around exactly `token`.
fn carries(value: &[u8], token: &str) -> bool {
    let ows = |b: &&u8| matches!(**b, b' ' | b'\t');
    let lead = value.iter().take_while(ows).count();
    let trail = value[lead..].iter().rev().take_while(ows).count();
    let value = &value[lead..value.len() - trail];
    let Some(head) = value.strip_suffix(token.as_bytes()) else {
        return false;
    };
    let gap = head.iter().rev().take_while(|b| **b == b' ').count();
    let scheme = &head[..head.len() - gap];
    gap >= 1
        && SCHEMES
            .iter()
            .any(|s| s.as_bytes().eq_ignore_ascii_case(scheme))
}

/// A header value near the grammar, from fuzz bytes: optional white space around it, a
/// scheme (configured or not) in mixed case, a gap of spaces and tabs, the token whole or
/// changed.
fn assemble(data: &[u8], token: &str) -> Vec<u8> {
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next().unwrap_or(0);
    let ows = |b: u8| if b & 1 == 0 { b' ' } else { b'\t' };
    let mut out = Vec::new();
    let lead = next();
    out.extend((0..lead % 3).map(|i| ows(lead >> (i + 2))));
    let scheme: &[u8] = match next() % 7 {
        0 | 1 => b"Bearer",
        2 | 3 => b"apk",
        4 => b"Basic",
        5 => b"Bearerx",
        _ => b"",
    };
    let case = next();
    out.extend(scheme.iter().enumerate().map(|(i, c)| {
        if (case >> (i % 8)) & 1 == 1 {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        }
    }));
    let gap = next();
    out.extend((0..gap % 4).map(|i| {
        if (gap >> (2 * i + 1)) & 3 == 3 {
            b'\t'
        } else {
            b' '
        }
    }));
    let mut text = token.as_bytes().to_vec();
    match next() % 6 {
        0..=2 => {}
        3 => {
            let at = usize::from(next()) % text.len();
            text[at] = next();
        }
        4 => text.truncate(usize::from(next()) % text.len()),
        _ => text.insert(usize::from(next()) % (text.len() + 1), next()),
    }
    out.extend(text);
    let trail = next();
    out.extend((0..trail % 3).map(|i| ows(trail >> (i + 2))));
    out
}

fuzz_target!(|data: &[u8]| {
    let (verifier, token) = verifier();
    // Most inputs are built around the real token, so the parser and store see it too.
    let value: Vec<u8> = match data.first() {
        Some(b) if b % 4 == 0 || b % 4 == 2 => [&data[1..], token.as_bytes()].concat(),
        Some(b) if b % 4 == 3 => assemble(&data[1..], token),
        _ => data.to_vec(),
    };
    let Ok(header) = HeaderValue::from_bytes(&value) else {
        return; // http refuses it: it can never reach the layer
    };
    let credentials = Credentials::bearer().scheme("apk").unwrap();
    let mut service = AuthLayer::new(verifier.clone())
        .credentials(credentials)
        .layer(tower::service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        }));
    let mut request = Request::new(String::new());
    request.headers_mut().insert("authorization", header);
    let response = now(service.call(request)).unwrap();
    let status = response.status().as_u16();
    assert!(
        matches!(status, 200 | 400 | 401 | 403 | 429 | 503),
        "{status}"
    );
    // The route needs no scope and nothing limits the rate: the issued token in the grammar
    // is a 200, and nothing else is.
    assert_eq!(
        status == 200,
        carries(&value, token),
        "{status} for {:?}",
        String::from_utf8_lossy(&value)
    );
    // Nothing from the request comes back: every body and challenge is one of the fixed ones.
    let body = response.body().as_str();
    assert!(
        matches!(
            body,
            "ok" | r#"{"message":"Unauthenticated."}"#
                | r#"{"message":"Bad request."}"#
                | r#"{"message":"This action is unauthorized."}"#
        ),
        "{body}"
    );
    if let Some(challenge) = response.headers().get("www-authenticate") {
        assert!(
            matches!(
                challenge.to_str().unwrap(),
                r#"Bearer realm="api""#
                    | r#"Bearer realm="api", error="invalid_request""#
                    | r#"Bearer realm="api", error="invalid_token""#
            ),
            "{challenge:?}"
        );
    }
});
