//! Turning an [`AuthError`] into an HTTP response.

use std::sync::Arc;
use std::time::Duration;

use http::header::{
    CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};

use crate::error::{AuthError, AuthErrorKind};
use crate::rate_limit::RateLimitDecision;

/// Makes the response for a refused request. The layers call it; applications replace it to
/// answer in their own shape (RFC 9457 problem+json, gRPC status…) without re-implementing
/// the layers.
///
/// `B` is the response body type of the wrapped service.
///
/// ```
/// use apitoken::middleware::Responder;
/// use apitoken::{AuthError, AuthErrorKind};
/// use http::{Response, StatusCode};
///
/// /// Bare status codes with empty bodies.
/// #[derive(Clone)]
/// struct StatusOnly;
///
/// impl<B: Default> Responder<B> for StatusOnly {
///     fn respond(&self, error: &AuthError) -> Response<B> {
///         let status = match error.kind() {
///             AuthErrorKind::InsufficientScope => StatusCode::FORBIDDEN,
///             AuthErrorKind::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
///             AuthErrorKind::MalformedRequest => StatusCode::BAD_REQUEST,
///             _ => StatusCode::UNAUTHORIZED,
///         };
///         let mut response = Response::new(B::default());
///         *response.status_mut() = status;
///         response
///     }
/// }
/// ```
pub trait Responder<B>: Clone + Send + Sync + 'static {
    /// The response for `error`.
    fn respond(&self, error: &AuthError) -> Response<B>;
}

/// The default responder: the DanubeData seed's JSON bodies and RFC 6750 challenges.
///
/// | kind | status | body | `WWW-Authenticate` |
/// |---|---|---|---|
/// | missing credentials | 401 | `{"message":"Unauthenticated."}` | `Bearer realm="api"` |
/// | malformed request | 400 | `{"message":"Bad request."}` | `Bearer realm="api", error="invalid_request"` |
/// | invalid token | 401 | `{"message":"Unauthenticated."}` | `Bearer realm="api", error="invalid_token"` |
/// | insufficient scope | 403 | `{"message":"This action is unauthorized."}` | `Bearer realm="api", error="insufficient_scope", scope="vps:write"` |
/// | store unavailable | 503 | `{"message":"Service unavailable."}` | none |
/// | rate limited, or throttled | 429 | `{"message":"Too Many Attempts."}` | none |
///
/// A 429 carries `Retry-After` in whole seconds (rounded up, at least 1). One from a token's
/// rate limit also carries the IETF RateLimit fields
/// (draft-ietf-httpapi-ratelimit-headers-11), for example
/// `RateLimit-Policy: "default";q=100;w=60` and `RateLimit: "default";r=0;t=12`, `t` equal to
/// `Retry-After`; a throttled address gets only `Retry-After`. (`AuthLayer` adds the same
/// fields to every other response of a rate-limited request, 200s included.)
///
/// Every response has `Content-Type: application/json` and `Cache-Control: no-store`. The
/// challenge holds only the configured realm, fixed error codes and the route's required
/// scopes (the missing ones): never anything from the request.
///
/// ```
/// use apitoken::middleware::{JsonResponder, Responder};
/// use apitoken::AuthError;
///
/// let responder = JsonResponder::new().realm("danubedata")?;
/// let response: http::Response<String> = responder.respond(&AuthError::missing_credentials());
/// assert_eq!(response.status(), 401);
/// assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"danubedata\"");
/// assert_eq!(response.body(), r#"{"message":"Unauthenticated."}"#);
/// # Ok::<(), apitoken::middleware::InvalidRealm>(())
/// ```
#[derive(Debug, Clone)]
pub struct JsonResponder {
    /// `Bearer realm="…"`, precomputed, and shared: the layer clones its responder into
    /// every verifying request's future, where a `String` was an allocation a request.
    challenge: Arc<str>,
}

/// A realm with characters that cannot appear in a quoted challenge attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a realm is 1 to 64 visible ASCII characters other than '\"' and '\\'")]
#[non_exhaustive]
pub struct InvalidRealm;

impl Default for JsonResponder {
    fn default() -> Self {
        Self::new()
    }
}

const UNAUTHENTICATED: &str = r#"{"message":"Unauthenticated."}"#;
const UNAUTHORIZED: &str = r#"{"message":"This action is unauthorized."}"#;
const BAD_REQUEST: &str = r#"{"message":"Bad request."}"#;
const UNAVAILABLE: &str = r#"{"message":"Service unavailable."}"#;
const TOO_MANY: &str = r#"{"message":"Too Many Attempts."}"#;

/// Whole seconds, rounded up, at least 1: `Retry-After` and the `t` parameter.
fn ceil_secs(duration: Duration) -> u64 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    secs.max(1)
}

/// `Retry-After`, and the RateLimit fields when the error carries a decision.
fn rate_limit_headers(headers: &mut HeaderMap, error: &AuthError) {
    if let Some(wait) = error.retry_after() {
        headers.insert(RETRY_AFTER, HeaderValue::from(ceil_secs(wait)));
    }
    if let Some(decision) = error.detail::<RateLimitDecision>() {
        append_rate_limit_fields(headers, decision);
    }
}

/// Appends `RateLimit-Policy` and `RateLimit` for `decision`, in the structured-field form of
/// draft-ietf-httpapi-ratelimit-headers-11: `"default";q=<requests>;w=<period s>` and
/// `"default";r=<remaining>;t=<window s>`. Appended, not inserted: both are lists (RFC 9651
/// §3.1), so an inner service's own policies stay. No `pk`: it would only restate which
/// token the client sent.
pub(crate) fn append_rate_limit_fields(headers: &mut HeaderMap, decision: &RateLimitDecision) {
    let limit = decision.limit();
    let policy = format!(
        r#""default";q={};w={}"#,
        limit.requests(),
        ceil_secs(limit.period())
    );
    // On a refusal the window is the wait, so `Retry-After` never names a time before the
    // window's end (draft -11 §6).
    let state = format!(
        r#""default";r={};t={}"#,
        decision.remaining(),
        ceil_secs(decision.window())
    );
    if let (Ok(policy), Ok(state)) = (
        HeaderValue::from_str(&policy),
        HeaderValue::from_str(&state),
    ) {
        headers.append(RATELIMIT_POLICY, policy);
        headers.append(RATELIMIT, state);
    }
}

const RATELIMIT_POLICY: http::header::HeaderName =
    http::header::HeaderName::from_static("ratelimit-policy");
const RATELIMIT: http::header::HeaderName = http::header::HeaderName::from_static("ratelimit");

impl JsonResponder {
    /// The default responder, with realm `api`.
    pub fn new() -> Self {
        Self {
            challenge: Arc::from(r#"Bearer realm="api""#),
        }
    }

    /// Sets the realm of the `WWW-Authenticate` challenge.
    pub fn realm(self, realm: &str) -> Result<Self, InvalidRealm> {
        let valid = !realm.is_empty()
            && realm.len() <= 64
            && realm
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\');
        if !valid {
            return Err(InvalidRealm);
        }
        Ok(Self {
            challenge: Arc::from(format!(r#"Bearer realm="{realm}""#)),
        })
    }

    fn challenge(&self, error: &AuthError) -> Option<String> {
        let code = match error.kind() {
            AuthErrorKind::MissingCredentials => return Some(self.challenge.to_string()),
            AuthErrorKind::MalformedRequest => "invalid_request",
            AuthErrorKind::InvalidToken => "invalid_token",
            AuthErrorKind::InsufficientScope => "insufficient_scope",
            _ => return None,
        };
        let mut value = format!(r#"{}, error="{code}""#, self.challenge);
        // Scope text is RFC 6749 §3.3 characters: no '"' or '\' can break out of the quotes.
        if let Some(missing) = error.missing_scopes().filter(|m| !m.is_empty()) {
            value.push_str(&format!(r#", scope="{missing}""#));
        }
        Some(value)
    }
}

impl<B: From<&'static str>> Responder<B> for JsonResponder {
    fn respond(&self, error: &AuthError) -> Response<B> {
        let (status, body) = match error.kind() {
            AuthErrorKind::MalformedRequest => (StatusCode::BAD_REQUEST, BAD_REQUEST),
            AuthErrorKind::InsufficientScope => (StatusCode::FORBIDDEN, UNAUTHORIZED),
            AuthErrorKind::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
            AuthErrorKind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, TOO_MANY),
            // Missing credentials, invalid token, and any kind added later: refuse.
            _ => (StatusCode::UNAUTHORIZED, UNAUTHENTICATED),
        };
        let mut response = Response::new(B::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        rate_limit_headers(headers, error);
        if let Some(challenge) = self.challenge(error)
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            headers.insert(WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// A responder for gRPC services (tonic): a trailers-only response, HTTP 200 with
/// `grpc-status` 16 (`UNAUTHENTICATED`) for missing and invalid credentials, 7
/// (`PERMISSION_DENIED`) for a missing scope, 3 (`INVALID_ARGUMENT`) for a malformed request,
/// 14 (`UNAVAILABLE`) when the store is down and 8 (`RESOURCE_EXHAUSTED`) when rate limited or
/// throttled, with a fixed `grpc-message` and an empty body. A rate-limited response also
/// carries `retry-after` (whole seconds) and the RateLimit fields, as HTTP headers in the
/// trailers-only response.
///
/// ```
/// use apitoken::middleware::{GrpcResponder, Responder};
/// use apitoken::AuthError;
///
/// let response: http::Response<String> = GrpcResponder.respond(&AuthError::missing_credentials());
/// assert_eq!(response.status(), 200);
/// assert_eq!(response.headers()["grpc-status"], "16");
/// assert_eq!(response.headers()["content-type"], "application/grpc");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcResponder;

impl<B: Default> Responder<B> for GrpcResponder {
    fn respond(&self, error: &AuthError) -> Response<B> {
        let (code, text) = match error.kind() {
            AuthErrorKind::MalformedRequest => ("3", "malformed credentials"),
            AuthErrorKind::InsufficientScope => ("7", "insufficient scope"),
            AuthErrorKind::StoreUnavailable => ("14", "token store unavailable"),
            AuthErrorKind::RateLimited => ("8", "too many requests"),
            _ => ("16", "unauthenticated"),
        };
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from_static(code));
        headers.insert("grpc-message", HeaderValue::from_static(text));
        rate_limit_headers(headers, error);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RejectReason;
    use crate::id::TokenId;
    use crate::scope::ScopeSet;

    fn respond(error: AuthError) -> Response<String> {
        JsonResponder::new().respond(&error)
    }

    #[test]
    fn statuses_bodies_and_challenges() {
        let r = respond(AuthError::missing_credentials());
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], r#"Bearer realm="api""#);
        assert_eq!(r.body(), UNAUTHENTICATED);

        let r = respond(AuthError::malformed_request());
        assert_eq!(r.status(), 400);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="api", error="invalid_request""#
        );

        let r = respond(AuthError::invalid_token(RejectReason::Revoked, None));
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="api", error="invalid_token""#
        );
        assert_eq!(r.body(), UNAUTHENTICATED);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");

        let missing = ScopeSet::parse("vps:write storage:delete").unwrap();
        let r = respond(AuthError::insufficient_scope(missing, TokenId::from_u64(1)));
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="api", error="insufficient_scope", scope="storage:delete vps:write""#
        );
        assert_eq!(r.body(), UNAUTHORIZED);

        let store = crate::store::StoreError::unavailable("down");
        let r = respond(AuthError::store_unavailable(store));
        assert_eq!(r.status(), 503);
        assert!(r.headers().get(WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn every_invalid_token_reason_gets_the_same_response() {
        let reasons = [
            RejectReason::UnknownToken,
            RejectReason::WrongSecret,
            RejectReason::Revoked,
            RejectReason::Expired,
            RejectReason::LifetimeExceeded,
            RejectReason::BadChecksum,
        ];
        let first = respond(AuthError::invalid_token(reasons[0], None));
        for reason in reasons {
            let r = respond(AuthError::invalid_token(reason, Some(TokenId::from_u64(9))));
            assert_eq!(r.status(), first.status());
            assert_eq!(r.headers(), first.headers());
            assert_eq!(r.body(), first.body());
        }
    }

    #[test]
    fn grpc_codes() {
        let code = |e: AuthError| {
            let r: Response<String> = GrpcResponder.respond(&e);
            assert_eq!(r.status(), 200);
            r.headers()["grpc-status"].to_str().unwrap().to_owned()
        };
        assert_eq!(code(AuthError::missing_credentials()), "16");
        assert_eq!(
            code(AuthError::invalid_token(RejectReason::Revoked, None)),
            "16"
        );
        assert_eq!(code(AuthError::malformed_request()), "3");
        let missing = ScopeSet::parse("a").unwrap();
        assert_eq!(
            code(AuthError::insufficient_scope(missing, TokenId::from_u64(1))),
            "7"
        );
        let store = crate::store::StoreError::unavailable("down");
        assert_eq!(code(AuthError::store_unavailable(store)), "14");
        let wait = Duration::from_secs(3);
        assert_eq!(code(AuthError::rate_limited(wait, None)), "8");
    }

    #[test]
    fn too_many_requests() {
        use crate::rate_limit::{RateLimit, RateLimitDecision};
        let limit = RateLimit::per_minute(100);
        let wait = Duration::from_millis(11_200);
        let decision = RateLimitDecision::denied(limit, wait, Duration::from_secs(60));
        let r = respond(AuthError::rate_limited(wait, None).with_detail(decision));
        assert_eq!(r.status(), 429);
        assert_eq!(r.body(), TOO_MANY);
        assert_eq!(r.headers()[RETRY_AFTER], "12");
        assert_eq!(r.headers()["ratelimit-policy"], r#""default";q=100;w=60"#);
        // `t` is the wait, as `Retry-After` (draft -11 §6).
        assert_eq!(r.headers()["ratelimit"], r#""default";r=0;t=12"#);
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert!(r.headers().get(WWW_AUTHENTICATE).is_none());

        // Throttling: Retry-After only, and never 0.
        let r = respond(AuthError::rate_limited(Duration::from_millis(1), None));
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        assert!(r.headers().get("ratelimit").is_none());
        assert!(r.headers().get("ratelimit-policy").is_none());
        assert_eq!(ceil_secs(Duration::ZERO), 1);
        assert_eq!(ceil_secs(Duration::from_secs(5)), 5);
        assert_eq!(ceil_secs(Duration::from_nanos(5_000_000_001)), 6);
    }

    #[test]
    fn realm_is_validated() {
        assert!(JsonResponder::new().realm("a\"b").is_err());
        assert!(JsonResponder::new().realm("a\\b").is_err());
        assert!(JsonResponder::new().realm("").is_err());
        assert!(JsonResponder::new().realm("a\nb").is_err());
        assert!(JsonResponder::new().realm("DanubeData API").is_ok());
    }
}
