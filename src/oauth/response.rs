//! The endpoints' responses: RFC 6749 §5.2 errors and uncached JSON.

use ::axum::Json;
use ::axum::http::{HeaderValue, StatusCode, header};
use ::axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An RFC 6749 §5.2 error code (and the few other codes the endpoints use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    /// Introspection by a client without the introspection scope (403).
    InsufficientScope,
    /// A store is down: 503, fail closed.
    TemporarilyUnavailable,
    /// The client asks for tokens faster than its limit: 429 with `Retry-After`.
    SlowDown,
    /// Anything else that went wrong on our side: 500.
    ServerError,
}

impl ErrorCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InsufficientScope => "insufficient_scope",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::SlowDown => "slow_down",
            Self::ServerError => "server_error",
        }
    }
}

/// A refusal from the token, revocation or introspection endpoint. The description is a
/// fixed text: it never repeats anything from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OAuthError {
    pub(crate) code: ErrorCode,
    pub(crate) description: Option<&'static str>,
    /// The client authenticated (or tried to) with the Authorization header: `invalid_client`
    /// is then 401 with a `Basic` challenge (RFC 6749 §5.2).
    pub(crate) challenge: Option<&'static str>,
    /// For [`ErrorCode::SlowDown`]: when the client may ask again.
    pub(crate) retry_after: Option<std::time::Duration>,
}

impl OAuthError {
    pub(crate) fn new(code: ErrorCode, description: &'static str) -> Self {
        Self {
            code,
            description: Some(description),
            challenge: None,
            retry_after: None,
        }
    }

    pub(crate) fn unavailable() -> Self {
        Self {
            code: ErrorCode::TemporarilyUnavailable,
            description: None,
            challenge: None,
            retry_after: None,
        }
    }

    pub(crate) fn server_error() -> Self {
        Self {
            code: ErrorCode::ServerError,
            description: None,
            challenge: None,
            retry_after: None,
        }
    }

    /// Too many token requests from one client: 429, try again after `wait`.
    pub(crate) fn slow_down(wait: std::time::Duration) -> Self {
        Self {
            code: ErrorCode::SlowDown,
            description: Some("too many token requests; try again later"),
            challenge: None,
            retry_after: Some(wait),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::InvalidClient if self.challenge.is_some() => StatusCode::UNAUTHORIZED,
            ErrorCode::InsufficientScope => StatusCode::FORBIDDEN,
            ErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::SlowDown => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.code.as_str() });
        if let Some(description) = self.description {
            body["error_description"] = Value::from(description);
        }
        let mut response = no_store(self.status(), body);
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: never sooner than the limit allows.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if let (Some(challenge), StatusCode::UNAUTHORIZED) = (self.challenge, response.status()) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// JSON with `Cache-Control: no-store` and `Pragma: no-cache`: every response of the token,
/// revocation and introspection endpoints (RFC 6749 §5.1, RFC 7662 §2.2).
pub(crate) fn no_store(status: StatusCode, body: Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
