//! Tower middleware: authenticate every request, require scopes per route.
//!
//! [`AuthLayer`] reads the token ([`Credentials`]), runs the [`Verifier`](crate::Verifier),
//! and puts the [`Principal`](crate::Principal) into the request's extensions; a request it
//! refuses is answered by the [`Responder`] and never reaches the inner service.
//! [`RequireScopesLayer`] then checks a route's scopes against that principal. Both work with
//! any `http::Request<B>` / `http::Response<B>` service: axum, hyper, tonic. A refusal is an
//! `Ok` response; the inner service's errors pass through unchanged.
//!
//! | outcome | status | `WWW-Authenticate` (RFC 6750) |
//! |---|---|---|
//! | no credentials, or another scheme | 401 | `Bearer realm="api"` |
//! | malformed header (two `Authorization` lines, junk after the token…) | 400 | `…, error="invalid_request"` |
//! | unknown, wrong, revoked, expired or malformed token | 401 | `…, error="invalid_token"` |
//! | missing scope | 403 | `…, error="insufficient_scope", scope="…"` |
//! | token store down | 503 | none: fail closed |
//! | token over its rate limit ([`AuthLayer::rate_limit`]) | 429, `Retry-After`, `RateLimit-Policy`, `RateLimit` | none |
//! | token under its rate limit | the inner service's response, plus `RateLimit-Policy` and `RateLimit` | — |
//! | address that failed too often ([`AuthLayer::throttle_failures`]) | 429, `Retry-After` | none |
//!
//! See [`Credentials`] for exactly how each odd header is classified, [`JsonResponder`] for the
//! bodies, and `docs/middleware.md` for the reasoning.
//!
//! ```
//! use apitoken::middleware::{AuthLayer, Credentials, RequireScopesLayer};
//! use apitoken::{MemoryStore, NewToken, Owner, Principal, Verifier};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let verifier = Verifier::builder(MemoryStore::new()).build();
//! let token = verifier
//!     .issuer()
//!     .issue(NewToken::new("ci", Owner::new("team-1")?).scopes(["vps:read"])?)
//!     .await?
//!     .token;
//!
//! let service = ServiceBuilder::new()
//!     .layer(AuthLayer::new(verifier).credentials(Credentials::bearer().scheme("apk")?))
//!     .layer(RequireScopesLayer::by_method("vps")?)
//!     .service(service_fn(|request: Request<String>| async move {
//!         let principal = request.extensions().get::<Principal>().expect("set by AuthLayer");
//!         Ok::<_, std::convert::Infallible>(Response::new(format!("hello {}", principal.owner())))
//!     }));
//!
//! let get = Request::get("/api/v1/vps")
//!     .header("authorization", format!("apk {}", token.expose_secret()))
//!     .body(String::new())?;
//! let response = service.clone().oneshot(get).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.body(), "hello team-1");
//!
//! let post = Request::post("/api/v1/vps")
//!     .header("authorization", format!("Bearer {}", token.expose_secret()))
//!     .body(String::new())?;
//! let response = service.oneshot(post).await?;
//! assert_eq!(response.status(), StatusCode::FORBIDDEN);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

#[cfg(feature = "axum")]
mod axum;
mod client_addr;
mod credentials;
mod future;
mod layer;
mod require;
mod response;
mod service;

#[cfg(feature = "axum")]
pub use self::axum::Unauthenticated;
pub use crate::scheme::InvalidScheme;
pub use client_addr::{ClientIp, MAX_FORWARDED_HOPS, PeerAddr, TrustedProxies};
pub use credentials::Credentials;
pub use future::ResponseFuture;
pub use layer::AuthLayer;
pub use require::{RequireScopes, RequireScopesFuture, RequireScopesLayer};
pub use response::{GrpcResponder, InvalidRealm, JsonResponder, Responder};
pub use service::Auth;
