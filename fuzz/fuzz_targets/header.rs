//! A request with arbitrary `Authorization` bytes through the real middleware: never panics,
//! always one of the documented statuses, and the response never repeats the input.
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

fuzz_target!(|data: &[u8]| {
    let (verifier, token) = verifier();
    // Half the inputs are built around the real token, so the parser and store see it too.
    let value: Vec<u8> = match data.first() {
        Some(b) if b % 2 == 0 => [&data[1..], token.as_bytes()].concat(),
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
