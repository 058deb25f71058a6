//! The client side: an SDK-style client that sends its API key and waits out rate limits.
//!
//! ```sh
//! cargo run --example client
//! ```
//!
//! Starts a rate-limited API on a loopback port (one request per second per key, the crate's
//! own `AuthLayer`), then calls it three times in a row through hyper-util's client under
//! `AddApiKeyLayer` and `RetryLayer`. The second and third calls are answered 429 with
//! `Retry-After: 1` first; the client waits and retries, and each call ends 200.
//!
//! The key comes from `DBAUDIT_API_KEY`, as the seed's SDKs read it. Unset, the example issues
//! one from its own server. A key this server did not issue is answered 401, which is not
//! retried: `DBAUDIT_API_KEY=dbaudit_live_x cargo run --example client`.

use std::time::{Duration, Instant};

use apitoken::client::{AddApiKeyLayer, ApiKey, ApiKeyErrorKind, RetryLayer};
use apitoken::middleware::AuthLayer;
use apitoken::rate_limit::{MemoryRateLimiter, RateLimit, RateLimitPolicy};
use apitoken::{MemoryStore, NewToken, Owner, Separator, TokenFormat, Verifier};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};

const VARIABLE: &str = "DBAUDIT_API_KEY";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Shows the retry layer's decisions: `retrying status=429 retry=1 wait_ms=1000`.
    tracing_subscriber::fmt()
        .with_env_filter("apitoken::client=debug")
        .with_target(false)
        .init();

    // The server: DB Audit-style keys, one request per second per key.
    let format = TokenFormat::builder()
        .prefix("dbaudit_live_")
        .separator(Separator::Underscore)
        .build()?;
    let verifier = Verifier::builder(MemoryStore::new()).format(format).build();
    let limit = RateLimit::new(1, Duration::from_secs(1)).expect("a valid limit");
    let app = axum::Router::new()
        .route("/v1/databases", axum::routing::get(|| async { "[]" }))
        .layer(
            AuthLayer::new(verifier.clone())
                .rate_limit(MemoryRateLimiter::new(), RateLimitPolicy::new(limit)),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}/v1/databases", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // The key: from the environment, or issued here for this run.
    let key = match ApiKey::from_env(VARIABLE) {
        Ok(key) => {
            println!("using the key in {VARIABLE}");
            key
        }
        Err(error) if error.kind() == ApiKeyErrorKind::Unset => {
            let issued = verifier
                .issuer()
                .issue(NewToken::new("client example", Owner::new("team-1")?))
                .await?;
            println!("{VARIABLE} is not set: issued a key for this run");
            ApiKey::new(issued.token.expose_secret())?
        }
        // Names the variable, never its value.
        Err(error) => return Err(error.to_string().into()),
    };

    // The client: the key outside, so every attempt carries it; retries inside.
    let client = ServiceBuilder::new()
        .layer(AddApiKeyLayer::new(key))
        .layer(RetryLayer::new())
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());

    for _ in 0..3 {
        let started = Instant::now();
        let request = http::Request::get(&url).body(Empty::new())?;
        // Bounded twice: the retry budget is 30 s, and this whole call 40 s.
        let response =
            tokio::time::timeout(Duration::from_secs(40), client.clone().oneshot(request))
                .await??;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "GET {url} -> {status} {} in {} ms",
            String::from_utf8_lossy(&body),
            started.elapsed().as_millis()
        );
    }

    server.abort();
    Ok(())
}
