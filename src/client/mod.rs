//! The client side (feature `client`): send an API key with every request, and retry the
//! requests a server turns away for now.
//!
//! Two tower layers for any HTTP client that is a `Service<http::Request<B>>` (hyper-util's
//! `Client`, or any tower HTTP client):
//!
//! - [`AddApiKeyLayer`] adds an [`ApiKey`], given in code or read from an environment variable
//!   such as `DBAUDIT_API_KEY` ([`ApiKey::from_env`]), as `Authorization: Bearer <key>`, in
//!   another scheme (DCT's `apk`), or in a header of its own (`X-API-Key`). The header is
//!   built once and marked sensitive; `Debug` never shows the key.
//! - [`RetryLayer`] resends a request answered 429 or 503, after an exponential backoff with
//!   full jitter that waits at least as long as `Retry-After` asks (seconds or an HTTP-date),
//!   bounded in retries, by a deadline ([`Backoff`]) and by a retry budget shared by its
//!   clones ([`TpsBudget`]). Out of retries, time or budget, it returns the last 429 or 503
//!   as it came. A `POST`, `PATCH` or other non-idempotent request is resent after a 503 only
//!   if it carries an `Idempotency-Key`. Nothing else is retried by default.
//!
//! Put the key layer outside the retry layer, so the key is added once and each attempt
//! sends the same headers. `docs/client.md` has the whole story, with hyper-util's client.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//! use apitoken::client::{AddApiKeyLayer, ApiKey, Backoff, RetryLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // A server that rate-limits the first request and checks the key on every one.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let server = service_fn({
//!     let calls = Arc::clone(&calls);
//!     move |request: Request<String>| {
//!         assert_eq!(request.headers()["authorization"], "Bearer dbaudit_live_xxxxxxxx");
//!         let status = match calls.fetch_add(1, Ordering::SeqCst) {
//!             0 => StatusCode::TOO_MANY_REQUESTS,
//!             _ => StatusCode::OK,
//!         };
//!         let response = Response::builder().status(status).body(String::new());
//!         async move { response }
//!     }
//! });
//!
//! # let key = ApiKey::from_env_with("DBAUDIT_API_KEY", |_| Some("dbaudit_live_xxxxxxxx".into()))?;
//! # /*
//! let key = ApiKey::from_env("DBAUDIT_API_KEY")?;
//! # */
//! let client = ServiceBuilder::new()
//!     .layer(AddApiKeyLayer::new(key))
//!     .layer(RetryLayer::new().backoff(Backoff::new().with_base(Duration::from_millis(10))))
//!     .service(server);
//!
//! let response = client.oneshot(Request::new(String::new())).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod auth;
mod backoff;
mod key;
mod retry;

pub use auth::{AddApiKey, AddApiKeyLayer};
pub use backoff::Backoff;
pub use key::{ApiKey, ApiKeyError, ApiKeyErrorKind};
pub use retry::{Retry, RetryFuture, RetryLayer};
/// The retry budget's trait and tower's implementation, for [`RetryLayer::budget`].
pub use tower::retry::budget::{Budget, TpsBudget};

/// `docs/client.md`, whose Rust examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/client.md")]
struct ClientGuide;
