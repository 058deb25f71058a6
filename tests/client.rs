//! The client layers (feature `client`): the key on every request, and retries of 429 and 503,
//! against real HTTP servers on loopback ports (a scripted one, and the crate's own
//! `AuthLayer` with a rate limit), and against in-process services on Tokio's paused clock
//! where exact waits are asserted.

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::ffi::OsString;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use apitoken::client::{AddApiKeyLayer, ApiKey, ApiKeyErrorKind, Backoff, RetryLayer, TpsBudget};
use apitoken::middleware::AuthLayer;
use apitoken::rate_limit::{MemoryRateLimiter, RateLimit, RateLimitPolicy};
use apitoken::{ManualClock, MemoryStore, NewToken, Owner, Verifier};
use axum::extract::State;
use chrono::{TimeZone, Utc};
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

use support::{Reply, Server, within};

const KEY: &str = "dbaudit_live_4f9a1c7e2b8d6035f1e9a7c4b2d8e6f0";

// ---------------------------------------------------------------------------------------------
// A scripted server: answers from a list, then one answer forever; notes each request.

#[derive(Clone)]
struct Answer {
    status: StatusCode,
    headers: Vec<(HeaderName, String)>,
    body: &'static str,
}

fn answer(status: u16) -> Answer {
    Answer {
        status: StatusCode::from_u16(status).expect("a status"),
        headers: Vec::new(),
        body: "",
    }
}

impl Answer {
    fn header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: &'static str) -> Self {
        self.body = body;
        self
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    authorization: Vec<String>,
    api_key: Vec<String>,
}

struct Script {
    answers: Mutex<VecDeque<Answer>>,
    then: Answer,
    seen: Mutex<Vec<Seen>>,
}

impl Script {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("visible ASCII").to_owned())
        .collect()
}

async fn scripted(answers: Vec<Answer>, then: Answer) -> (Server, Arc<Script>) {
    let script = Arc::new(Script {
        answers: Mutex::new(answers.into()),
        then,
        seen: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .fallback(
            |State(script): State<Arc<Script>>, headers: HeaderMap| async move {
                script.seen.lock().unwrap().push(Seen {
                    at: Instant::now(),
                    authorization: values(&headers, "authorization"),
                    api_key: values(&headers, "x-api-key"),
                });
                let next = script.answers.lock().unwrap().pop_front();
                let answer = next.unwrap_or_else(|| script.then.clone());
                let mut response = Response::builder().status(answer.status);
                for (name, value) in &answer.headers {
                    response = response.header(name, value);
                }
                response
                    .body(axum::body::Body::from(answer.body))
                    .expect("a response")
            },
        )
        .with_state(Arc::clone(&script));
    (Server::start(app).await, script)
}

// ---------------------------------------------------------------------------------------------
// The client: hyper-util's, under the two layers.

type Body = Full<Bytes>;

fn hyper_client() -> HyperClient<HttpConnector, Body> {
    HyperClient::builder(TokioExecutor::new()).build_http()
}

fn client(
    key: ApiKey,
    retry: RetryLayer,
) -> impl Service<Request<Body>, Response = Response<Incoming>, Error: std::fmt::Debug> + Clone {
    ServiceBuilder::new()
        .layer(AddApiKeyLayer::new(key))
        .layer(retry)
        .service(hyper_client())
}

fn get(server: &Server) -> Request<Body> {
    Request::get(server.url("/v1/databases"))
        .body(Body::default())
        .expect("a request")
}

/// Sends `request` through `service` and reads the whole response.
async fn send<S>(service: S, request: Request<Body>) -> Reply
where
    S: Service<Request<Body>, Response = Response<Incoming>, Error: std::fmt::Debug>,
{
    within(async {
        let response = service.oneshot(request).await.expect("a response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("whole body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).expect("UTF-8 body"),
        }
    })
    .await
}

fn quick() -> Backoff {
    Backoff::new().with_base(Duration::from_millis(20))
}

fn bearer() -> ApiKey {
    ApiKey::new(KEY).expect("a valid key")
}

#[track_caller]
fn assert_bearer_each_time(seen: &[Seen]) {
    for request in seen {
        assert_eq!(request.authorization, [format!("Bearer {KEY}")]);
    }
}

// ---------------------------------------------------------------------------------------------
// Retries against a real server, in real time.

#[tokio::test]
async fn a_429_with_retry_after_then_200_returns_the_200_after_the_wait() {
    let (server, script) = scripted(
        vec![answer(429).header(RETRY_AFTER, "1").body("slow down")],
        answer(200).body("[]"),
    )
    .await;
    let started = Instant::now();
    let reply = send(client(bearer(), RetryLayer::new()), get(&server)).await;
    let took = started.elapsed();

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "[]");
    let seen = script.seen();
    assert_eq!(seen.len(), 2, "exactly two attempts");
    assert!(took >= Duration::from_secs(1), "waited {took:?}");
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "second attempt {gap:?} after the first"
    );
    assert_bearer_each_time(&seen);
}

#[tokio::test]
async fn a_503_then_200_returns_the_200() {
    let (server, script) = scripted(vec![answer(503)], answer(200).body("[]")).await;
    let reply = send(
        client(bearer(), RetryLayer::new().backoff(quick())),
        get(&server),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(script.seen().len(), 2);
    assert_bearer_each_time(&script.seen());
}

#[tokio::test]
async fn a_429_forever_is_returned_after_the_last_retry() {
    let (server, script) = scripted(
        vec![],
        answer(429).header(RETRY_AFTER, "0").body("slow down"),
    )
    .await;
    let retry = RetryLayer::new().backoff(quick().with_max_retries(2));
    let reply = send(client(bearer(), retry), get(&server)).await;

    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.body, "slow down", "the server's own 429, as it came");
    assert_eq!(reply.header("retry-after"), "0");
    assert_eq!(script.seen().len(), 3, "the first attempt and two retries");
    assert_bearer_each_time(&script.seen());
}

#[tokio::test]
async fn a_retry_after_past_the_budget_returns_the_429_without_waiting() {
    let (server, script) = scripted(vec![], answer(429).header(RETRY_AFTER, "3600")).await;
    // `send` fails the test after 10 s: an hour's wait, or the budget's 30 s, would not fit.
    let reply = send(client(bearer(), RetryLayer::new()), get(&server)).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), "3600");
    assert_eq!(script.seen().len(), 1);
}

#[tokio::test]
async fn a_retry_after_http_date_is_waited_for() {
    // Two seconds ahead, truncated to whole seconds by the format: at least one second ahead.
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
    let (server, script) = scripted(vec![answer(503).header(RETRY_AFTER, date)], answer(200)).await;
    let reply = send(client(bearer(), RetryLayer::new()), get(&server)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = script.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "second attempt {gap:?} after the first"
    );
}

#[tokio::test]
async fn other_refusals_and_errors_are_returned_at_once() {
    for status in [400, 401, 403, 404, 409, 500, 502, 504] {
        // Even with a Retry-After: only 429 and 503 are retried by default.
        let (server, script) = scripted(vec![], answer(status).header(RETRY_AFTER, "1")).await;
        let reply = send(client(bearer(), RetryLayer::new()), get(&server)).await;
        assert_eq!(reply.status.as_u16(), status);
        assert_eq!(script.seen().len(), 1, "{status} was retried");
    }
}

#[tokio::test]
async fn retry_statuses_replaces_the_set() {
    let (server, script) = scripted(vec![answer(502)], answer(200)).await;
    let retry = RetryLayer::new()
        .backoff(quick())
        .retry_statuses([StatusCode::BAD_GATEWAY]);
    let reply = send(client(bearer(), retry.clone()), get(&server)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(script.seen().len(), 2);

    // 503 is no longer in the set.
    let (server, script) = scripted(vec![answer(503)], answer(200)).await;
    let reply = send(client(bearer(), retry), get(&server)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(script.seen().len(), 1);
}

#[tokio::test]
async fn a_post_body_is_sent_again_whole() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().fallback({
        let (bodies, calls) = (Arc::clone(&bodies), Arc::clone(&calls));
        move |body: String| async move {
            bodies.lock().unwrap().push(body);
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::CREATED,
            }
        }
    });
    let server = Server::start(app).await;
    let request = Request::post(server.url("/v1/databases"))
        .header("content-type", "application/json")
        .body(Body::from(r#"{"name":"orders"}"#))
        .expect("a request");
    let reply = send(
        client(bearer(), RetryLayer::new().backoff(quick())),
        request,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(*bodies.lock().unwrap(), [r#"{"name":"orders"}"#; 2]);
}

/// A handler that carries the request out (counts it), then answers 503: an overloaded
/// server that gives up on its reply after acting.
async fn acts_then_503() -> (Server, Arc<AtomicUsize>) {
    let acted = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().fallback({
        let acted = Arc::clone(&acted);
        move || async move {
            acted.fetch_add(1, Ordering::SeqCst);
            StatusCode::SERVICE_UNAVAILABLE
        }
    });
    (Server::start(app).await, acted)
}

fn post(server: &Server) -> http::request::Builder {
    Request::post(server.url("/v1/databases")).header("content-type", "application/json")
}

#[tokio::test]
async fn a_post_answered_503_is_carried_out_once() {
    let (server, acted) = acts_then_503().await;
    let request = post(&server)
        .body(Body::from(r#"{"name":"orders"}"#))
        .expect("a request");
    let reply = send(
        client(bearer(), RetryLayer::new().backoff(quick())),
        request,
    )
    .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(acted.load(Ordering::SeqCst), 1, "the handler ran again");
}

#[tokio::test]
async fn a_post_with_an_idempotency_key_is_retried_on_503() {
    let (server, acted) = acts_then_503().await;
    let request = post(&server)
        .header("idempotency-key", "8e03978e-40d5-43e8-bc93-6894a57f9324")
        .body(Body::from(r#"{"name":"orders"}"#))
        .expect("a request");
    let reply = send(
        client(bearer(), RetryLayer::new().backoff(quick())),
        request,
    )
    .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        acted.load(Ordering::SeqCst),
        4,
        "the first attempt and 3 retries"
    );
}

// ---------------------------------------------------------------------------------------------
// Schemes and headers, against a real server.

#[tokio::test]
async fn the_apk_scheme_and_a_custom_header() {
    let (server, script) = scripted(vec![], answer(200)).await;
    let dct = bearer().scheme("apk").expect("a scheme");
    send(client(dct, RetryLayer::new()), get(&server)).await;
    let custom = bearer().header(HeaderName::from_static("x-api-key"));
    send(client(custom, RetryLayer::new()), get(&server)).await;

    let seen = script.seen();
    assert_eq!(seen[0].authorization, [format!("apk {KEY}")]);
    assert!(seen[0].api_key.is_empty());
    assert_eq!(seen[1].api_key, [KEY]);
    assert!(seen[1].authorization.is_empty(), "one credential only");
}

#[tokio::test]
async fn a_request_that_brings_its_own_authorization_keeps_it() {
    let (server, script) = scripted(vec![], answer(200)).await;
    let mut request = get(&server);
    request
        .headers_mut()
        .insert(AUTHORIZATION, "Bearer someone-else".parse().unwrap());
    send(client(bearer(), RetryLayer::new()), request).await;
    assert_eq!(script.seen()[0].authorization, ["Bearer someone-else"]);
}

// ---------------------------------------------------------------------------------------------
// Secrecy.

#[tokio::test]
async fn the_header_is_marked_sensitive() {
    let flags = Arc::new(Mutex::new(Vec::new()));
    let inner = service_fn({
        let flags = Arc::clone(&flags);
        move |request: Request<String>| {
            let value = request.headers().get(AUTHORIZATION).expect("a key");
            flags.lock().unwrap().push(value.is_sensitive());
            async { Ok::<_, Infallible>(Response::new(String::new())) }
        }
    });
    let mut service = ServiceBuilder::new()
        .layer(AddApiKeyLayer::new(bearer()))
        .service(inner);
    service
        .ready()
        .await
        .unwrap()
        .call(Request::new(String::new()))
        .await
        .unwrap();
    // The caller's own credential is marked too.
    let mut own = Request::new(String::new());
    own.headers_mut()
        .insert(AUTHORIZATION, "Bearer mine".parse().unwrap());
    service.ready().await.unwrap().call(own).await.unwrap();
    assert_eq!(*flags.lock().unwrap(), [true, true]);
}

#[test]
fn debug_never_shows_the_key() {
    let layer = AddApiKeyLayer::new(bearer().scheme("apk").unwrap());
    let inner = service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let service = tower::Layer::layer(&layer, inner);
    let texts = [
        format!("{:?}", bearer()),
        format!(
            "{:#?}",
            bearer().header(HeaderName::from_static("x-api-key"))
        ),
        format!("{layer:?}"),
        format!("{service:?}"),
        format!("{:?}", bearer().secret()),
        format!("{:?}", ApiKey::new(format!("{KEY} x")).unwrap_err()),
        ApiKey::new(format!("{KEY} x")).unwrap_err().to_string(),
    ];
    for text in &texts {
        assert!(!text.contains("4f9a1c7e"), "{text}");
    }
    assert!(
        texts[0].contains("Bearer") && texts[0].contains("REDACTED"),
        "{}",
        texts[0]
    );
    assert!(texts[2].contains("apk"), "{}", texts[2]);
}

// ---------------------------------------------------------------------------------------------
// Keys from the environment: through an injected lookup, and the real one for an unset name.

fn lookup(value: &'static str) -> impl FnOnce(&str) -> Option<OsString> {
    move |_| Some(OsString::from(value))
}

#[test]
fn from_env_reads_the_named_variable() {
    let mut asked = String::new();
    let key = ApiKey::from_env_with("DBAUDIT_API_KEY", |name| {
        asked = name.to_owned();
        Some(OsString::from(KEY))
    })
    .expect("a key");
    assert_eq!(asked, "DBAUDIT_API_KEY");
    assert_eq!(key.secret().expose_secret(), KEY);
    assert_eq!(key.header_name(), AUTHORIZATION);
    assert_eq!(key.auth_scheme(), Some("Bearer"));

    // A value with its newline (`$(cat key.txt)` keeps none, a file read whole does).
    let key = ApiKey::from_env_with("DBAUDIT_API_KEY", lookup("  dbaudit_live_abc\r\n")).unwrap();
    assert_eq!(key.secret().expose_secret(), "dbaudit_live_abc");
}

#[test]
fn from_env_names_the_variable_and_never_the_value() {
    let unset = ApiKey::from_env_with("DBAUDIT_API_KEY", |_| None).unwrap_err();
    assert_eq!(unset.kind(), ApiKeyErrorKind::Unset);
    assert_eq!(unset.variable(), Some("DBAUDIT_API_KEY"));
    assert_eq!(
        unset.to_string(),
        "the environment variable DBAUDIT_API_KEY is not set"
    );

    for empty in ["", " ", "\n"] {
        let error = ApiKey::from_env_with("DBAUDIT_API_KEY", lookup(empty)).unwrap_err();
        assert_eq!(error.kind(), ApiKeyErrorKind::Empty, "{empty:?}");
        assert_eq!(
            error.to_string(),
            "the environment variable DBAUDIT_API_KEY is empty"
        );
    }

    for invalid in [
        "dbaudit_live_secret1 dbaudit_live_secret2",
        "dbaudit_live_secret1\ndbaudit_live_secret2",
        "dbaudit_live_sécret",
        "dbaudit_live_secret\u{0}",
    ] {
        let error = ApiKey::from_env_with("DBAUDIT_API_KEY", lookup(invalid)).unwrap_err();
        assert_eq!(error.kind(), ApiKeyErrorKind::Invalid, "{invalid:?}");
        let text = format!("{error} {error:?}");
        assert!(text.contains("DBAUDIT_API_KEY"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        let error = ApiKey::from_env_with("DBAUDIT_API_KEY", |_| {
            Some(OsString::from_vec(b"dbaudit_live_\xff".to_vec()))
        })
        .unwrap_err();
        assert_eq!(error.kind(), ApiKeyErrorKind::Invalid);
    }
}

#[test]
fn from_env_reads_the_process_environment() {
    // A name no one sets; setting variables would race the other tests.
    let name = "APITOKEN_TEST_CLIENT_KEY_NEVER_SET_7F3A91";
    let error = ApiKey::from_env(name).unwrap_err();
    assert_eq!(error.kind(), ApiKeyErrorKind::Unset);
    assert_eq!(error.variable(), Some(name));
    // Cargo sets this one for the test process: a set variable, read for real.
    let key = ApiKey::from_env("CARGO_PKG_NAME").expect("cargo sets CARGO_PKG_NAME");
    assert_eq!(key.secret().expose_secret(), env!("CARGO_PKG_NAME"));
}

#[test]
fn schemes_the_server_side_would_refuse_are_refused() {
    for scheme in ["", "two words", "Bearer:", "é", &"x".repeat(33)] {
        assert!(bearer().scheme(scheme).is_err(), "{scheme:?}");
    }
    assert_eq!(
        bearer().scheme("Token").unwrap().auth_scheme(),
        Some("Token")
    );
}

// ---------------------------------------------------------------------------------------------
// Exact waits, on Tokio's paused clock, against in-process services.

/// A service that answers `answers(n)` to its `n`th call (from 0) and counts the calls.
fn counting(
    answers: impl Fn(usize) -> Response<String> + Clone + Send + 'static,
) -> (
    impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
    + Clone
    + Send,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = service_fn({
        let calls = Arc::clone(&calls);
        move |_: Request<String>| {
            let response = answers(calls.fetch_add(1, Ordering::SeqCst));
            async move { Ok::<_, Infallible>(response) }
        }
    });
    (service, calls)
}

fn status(status: u16, retry_after: Option<&str>) -> Response<String> {
    let mut response = Response::builder().status(status);
    if let Some(value) = retry_after {
        response = response.header(RETRY_AFTER, value);
    }
    response.body(String::new()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn waits_exactly_as_long_as_retry_after_asks() {
    let (inner, calls) = counting(|n| match n {
        0 => status(429, Some("7")),
        _ => status(200, None),
    });
    let started = tokio::time::Instant::now();
    let response = RetryLayer::new()
        .layer_service(inner)
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The first ceiling is 500 ms, so the jitter never beats the 7 s asked for.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(7) && waited < Duration::from_millis(7010),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_http_date_is_measured_on_the_layers_clock() {
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(now));
    let (inner, calls) = counting(|n| match n {
        0 => status(503, Some("Sun, 22 Nov 2026 10:00:05 GMT")),
        _ => status(200, None),
    });
    let started = tokio::time::Instant::now();
    let response = RetryLayer::new()
        .clock(clock)
        .layer_service(inner)
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_millis(5010),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_the_budget_is_not_started() {
    let (inner, calls) = counting(|_| status(429, Some("31")));
    let started = tokio::time::Instant::now();
    let response = RetryLayer::new()
        .layer_service(inner)
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "returned without sleeping"
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_counts_the_time_spent_in_requests() {
    // Each attempt takes 12 s; after the second (24 s in), a 7 s wait would end at 31 s.
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let calls = Arc::clone(&calls);
        move |_: Request<String>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(12)).await;
                Ok::<_, Infallible>(status(429, Some("5")))
            }
        }
    });
    let started = tokio::time::Instant::now();
    let response = RetryLayer::new()
        .layer_service(inner)
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // 12 s, wait 5 s, 12 s = 29 s; the next wait would end at 34 s.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(29) && took < Duration::from_secs(30),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_forever_takes_the_retries_within_the_default_bounds() {
    let (inner, calls) = counting(|_| status(429, None));
    let started = tokio::time::Instant::now();
    let response = RetryLayer::new()
        .layer_service(inner)
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "the first attempt and 3 retries"
    );
    // Ceilings 0.5 + 1 + 2 s.
    assert!(started.elapsed() <= Duration::from_millis(3500 + 10));
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_not_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let calls = Arc::clone(&calls);
        move |_: Request<String>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<Response<String>, _>(std::io::Error::other("connection reset")) }
        }
    });
    let error = RetryLayer::new()
        .layer_service(inner)
        .oneshot(Request::new(String::new()))
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "connection reset");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn zero_retries_sends_once() {
    let (inner, calls) = counting(|_| status(503, None));
    let response = RetryLayer::new()
        .backoff(Backoff::new().with_max_retries(0))
        .layer_service(inner)
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

fn request(method: &str) -> Request<String> {
    Request::builder()
        .method(method)
        .body(String::new())
        .expect("a request")
}

#[tokio::test(start_paused = true)]
async fn a_503_is_retried_for_idempotent_methods_only() {
    for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        let (inner, calls) = counting(|n| status(if n == 0 { 503 } else { 200 }, None));
        let response = RetryLayer::new()
            .layer_service(inner)
            .oneshot(request(method))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{method}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{method}");
    }
    // RFC 9110 §9.2.2 lists no other; QUERY, an extension method, is treated as unsafe too.
    for method in ["POST", "PATCH", "CONNECT", "PURGE", "QUERY"] {
        let (inner, calls) = counting(|n| status(if n == 0 { 503 } else { 200 }, None));
        let response = RetryLayer::new()
            .layer_service(inner)
            .oneshot(request(method))
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{method}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{method} was retried");
    }
}

#[tokio::test(start_paused = true)]
async fn a_post_is_retried_on_429_or_with_an_idempotency_key() {
    // 429: refused before acting, so a POST is resent.
    let (inner, calls) = counting(|n| status(if n == 0 { 429 } else { 201 }, None));
    let response = RetryLayer::new()
        .layer_service(inner)
        .oneshot(request("POST"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // With an Idempotency-Key, on every retried status: the default 503, a configured 502.
    for (answer, statuses) in [(503, None), (502, Some([StatusCode::BAD_GATEWAY]))] {
        let (inner, calls) = counting(move |n| status(if n == 0 { answer } else { 201 }, None));
        let mut layer = RetryLayer::new();
        if let Some(statuses) = statuses {
            layer = layer.retry_statuses(statuses);
        }
        let mut keyed = request("POST");
        keyed
            .headers_mut()
            .insert("idempotency-key", "8e03978e".parse().unwrap());
        let response = layer.layer_service(inner).oneshot(keyed).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{answer}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{answer}");
    }

    // Without the key, a configured 502 is not retried for a POST either.
    let (inner, calls) = counting(|n| status(if n == 0 { 502 } else { 201 }, None));
    let response = RetryLayer::new()
        .retry_statuses([StatusCode::BAD_GATEWAY])
        .layer_service(inner)
        .oneshot(request("POST"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Answers 503 with an `attempt` header (from 0): at once to the first `fast` calls, after
/// `slow` to the others.
fn slow_retries(
    fast: usize,
    slow: Duration,
) -> (
    impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
    + Clone
    + Send,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = service_fn({
        let calls = Arc::clone(&calls);
        move |_: Request<String>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n >= fast {
                    tokio::time::sleep(slow).await;
                }
                let mut response = status(503, None);
                response
                    .headers_mut()
                    .insert("attempt", n.to_string().parse().unwrap());
                Ok::<_, Infallible>(response)
            }
        }
    });
    (service, calls)
}

#[tokio::test(start_paused = true)]
async fn max_elapsed_is_a_deadline_for_the_retries() {
    // Retries that take 1 s each, then the same after one quick retry.
    for fast in [1, 2] {
        let (inner, calls) = slow_retries(fast, Duration::from_secs(1));
        // Waits of at most 100 ms, then 200 ms: the slow attempt starts before 500 ms.
        let backoff = Backoff::new()
            .with_base(Duration::from_millis(100))
            .with_max_elapsed(Duration::from_millis(500));
        let started = tokio::time::Instant::now();
        let response = RetryLayer::new()
            .backoff(backoff)
            .layer_service(inner)
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        let took = started.elapsed();
        // Not the 1.1 s or more it takes to hear from the slow retry: it is dropped...
        assert_eq!(
            took,
            Duration::from_millis(500),
            "returned {took:?} after start"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            fast + 1,
            "the slow retry was sent"
        );
        // ...and the last response received is returned.
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["attempt"], (fast - 1).to_string());
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_due_at_the_deadline_is_not_sent() {
    // Retry-After: 1 against max_elapsed 1 s: the wait ends at the deadline, with no time
    // left for the retry to answer, so it is not sent even to a server that answers at once.
    let (inner, calls) = counting(|n| {
        let mut response = status(503, Some("1"));
        response
            .headers_mut()
            .insert("attempt", n.to_string().parse().unwrap());
        response
    });
    let backoff = Backoff::new()
        .with_base(Duration::from_nanos(1))
        .with_max_elapsed(Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    let response = RetryLayer::new()
        .backoff(backoff)
        .layer_service(inner)
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(response.headers()["attempt"], "0");
}

#[tokio::test(start_paused = true)]
async fn the_first_attempt_is_not_cut_short() {
    let inner = service_fn(|_: Request<String>| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, Infallible>(status(503, None))
    });
    let started = tokio::time::Instant::now();
    let response = RetryLayer::new()
        .backoff(Backoff::new().with_max_elapsed(Duration::from_millis(500)))
        .layer_service(inner)
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    // Its own response, past the deadline, and no retry after it.
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

/// Sends `n` GETs, all at once, through clones of `layer` to a server that always answers
/// 503; the number of attempts the server saw.
async fn attempts_against_an_outage(layer: RetryLayer, n: usize) -> usize {
    let (inner, calls) = counting(|_| status(503, None));
    let service = layer
        .backoff(Backoff::new().with_base(Duration::from_millis(1)))
        .layer_service(inner);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let service = service.clone();
        tasks.spawn(service.oneshot(Request::new(String::new())));
    }
    while let Some(response) = tasks.join_next().await {
        assert_eq!(response.unwrap().unwrap().status(), 503);
    }
    calls.load(Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn a_retry_budget_bounds_the_load_of_an_outage() {
    // Without a budget, every request takes its 3 retries: 4 times the load.
    let unbudgeted = attempts_against_an_outage(RetryLayer::new().unbudgeted(), 100).await;
    assert_eq!(unbudgeted, 400);

    // TpsBudget::new(ttl 10 s, min_per_sec 1, retry_percent 0.1): each request deposits 1,
    // each retry withdraws 1 / 0.1 = 10, on top of a reserve of 1 × 10 s × 10 = 100. Within
    // one ttl, 100 requests buy (100 + 100) / 10 = 20 retries: 10 % of them, plus 10.
    let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 1, 0.1));
    let budgeted = attempts_against_an_outage(RetryLayer::new().budget(budget), 100).await;
    assert_eq!(budgeted, 100 + 10 + 10);
}

#[tokio::test(start_paused = true)]
async fn the_default_budget_is_shared_by_every_clone() {
    // One layer, cloned into 100 services sent one request each, in turn: its default budget
    // (10 % plus a reserve of 10) is spent once, not 100 times.
    let layer = RetryLayer::new().backoff(Backoff::new().with_base(Duration::from_millis(1)));
    let (inner, calls) = counting(|_| status(503, None));
    for _ in 0..100 {
        let response = layer
            .clone()
            .layer_service(inner.clone())
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 100 + 10 + 10);
}

/// `Layer::layer` under a name that does not clash with `ServiceBuilder::layer`.
trait LayerService<S>: tower::Layer<S> {
    fn layer_service(&self, inner: S) -> Self::Service {
        self.layer(inner)
    }
}

impl<L: tower::Layer<S>, S> LayerService<S> for L {}

// ---------------------------------------------------------------------------------------------
// End to end against the crate's own server side: a rate-limited token.

#[tokio::test]
async fn the_crates_own_rate_limit_is_waited_out() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let token = verifier
        .issuer()
        .issue(NewToken::new("sdk", Owner::new("team-1").unwrap()))
        .await
        .expect("a token")
        .token;
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let policy = RateLimitPolicy::new(RateLimit::new(1, Duration::from_secs(1)).unwrap());
    let app = axum::Router::new()
        .route("/v1/databases", axum::routing::get(|| async { "[]" }))
        .layer(AuthLayer::new(verifier).rate_limit(MemoryRateLimiter::new(), policy))
        .layer(axum::middleware::from_fn({
            let statuses = Arc::clone(&statuses);
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let statuses = Arc::clone(&statuses);
                async move {
                    let response = next.run(request).await;
                    let retry_after = response.headers().get(RETRY_AFTER).cloned();
                    statuses
                        .lock()
                        .unwrap()
                        .push((response.status(), retry_after));
                    response
                }
            }
        }));
    let server = Server::start(app).await;
    let key = ApiKey::new(token.expose_secret()).expect("an issued token is a valid key");
    let client = client(key, RetryLayer::new());

    // The first request spends the budget of one per second; the second is refused 429
    // with Retry-After: 1, waits, and is let through.
    assert_eq!(
        send(client.clone(), get(&server)).await.status,
        StatusCode::OK
    );
    let reply = send(client, get(&server)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "[]");
    let statuses = statuses.lock().unwrap().clone();
    let codes: Vec<_> = statuses.iter().map(|(s, _)| s.as_u16()).collect();
    assert_eq!(codes, [200, 429, 200]);
    assert_eq!(statuses[1].1.as_ref().unwrap(), "1");
}
