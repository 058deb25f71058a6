//! The verifier's error: a small public classification, and a precise reason for logs.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::format::FormatError;
use crate::id::TokenId;
use crate::rate_limit::RateLimitDecision;
use crate::scope::ScopeSet;
use crate::store::StoreError;

/// What a client is told: the class of an [`AuthError`].
///
/// The middleware maps these to responses: 401, 400, 401, 403, 503 and 429 in order. Every reason a
/// token can be refused for (unknown, wrong secret, revoked, expired, bad checksum) is one
/// kind, [`InvalidToken`](Self::InvalidToken), so a client cannot learn which (OWASP,
/// CWE-204).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthErrorKind {
    /// The request carried no credentials.
    MissingCredentials,
    /// The request's credentials were malformed as a request (for example two
    /// `Authorization` headers): RFC 6750's `invalid_request`.
    MalformedRequest,
    /// The token is not valid: RFC 6750's `invalid_token`.
    InvalidToken,
    /// The token is valid but lacks a required scope: RFC 6750's `insufficient_scope`.
    InsufficientScope,
    /// The token store could not answer. The request is refused (fail closed).
    StoreUnavailable,
    /// Too many requests: the token's rate limit is spent, or the client address failed to
    /// authenticate too often (see [`rate_limit`](crate::rate_limit)). HTTP 429.
    RateLimited,
}

/// Why a token was refused: for logs and metrics, never for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The text does not fit any accepted format.
    Malformed(FormatError),
    /// The text fits a format but its checksum is wrong. Rejected before any store access.
    BadChecksum,
    /// No record has this id (or, for id-less formats, this hash).
    UnknownToken,
    /// The record exists but the secret does not match.
    WrongSecret,
    /// The token was revoked.
    Revoked,
    /// The token's `expires_at` has passed (for a JWT: `exp` plus the leeway).
    Expired,
    /// The token is older than the verifier's maximum lifetime.
    LifetimeExceeded,
    /// The token was not used for longer than the verifier's maximum idle time.
    Idle,
    /// The request came from outside the token's allowed networks, or from an unknown
    /// address while the token has an allowlist.
    AddressNotAllowed,
    /// A JWT that is not a well-formed compact JWS: bad base64url or JSON, an unknown
    /// algorithm (`none` included), or a `crit` header.
    MalformedJwt,
    /// A JWT whose `typ` is not an access token's (`at+jwt`): a refresh token, an ID token, a
    /// plain `JWT`, or no `typ`.
    WrongTokenType,
    /// A JWT whose `kid` names no accepted key (or without a `kid` where several keys are
    /// accepted).
    UnknownKey,
    /// A JWT whose `alg` is not the algorithm of the key it names.
    WrongAlgorithm,
    /// A JWT whose signature does not verify.
    BadSignature,
    /// A JWT from another issuer (`iss`).
    WrongIssuer,
    /// A JWT for another audience (`aud`).
    WrongAudience,
    /// A JWT with a required claim missing or malformed.
    InvalidClaims,
    /// A JWT used before its `nbf`, beyond the leeway.
    NotYetValid,
}

/// Why a request was not authenticated or not authorized.
///
/// `Display` says only the [kind](Self::kind) ("invalid token"), so it is safe to show; `Debug`
/// adds the precise [reason](Self::reason) and the token id for logs. Neither ever includes a
/// secret.
///
/// ```
/// use apitoken::{AuthErrorKind, MemoryStore, ScopeRequirement, Verifier};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let verifier = Verifier::builder(MemoryStore::new()).build();
/// let err = verifier.verify("not-a-token", &ScopeRequirement::none()).await.unwrap_err();
/// assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
/// assert_eq!(err.to_string(), "invalid token");
/// # });
/// ```
pub struct AuthError {
    kind: AuthErrorKind,
    reason: Option<RejectReason>,
    token_id: Option<TokenId>,
    missing_scopes: Option<ScopeSet>,
    source: Option<StoreError>,
    /// Boxed: rare, and `AuthError` stays small for the `Result`s it travels in.
    limited: Option<Box<(Duration, Option<RateLimitDecision>)>>,
}

impl AuthError {
    fn new(kind: AuthErrorKind) -> Self {
        Self {
            kind,
            reason: None,
            token_id: None,
            missing_scopes: None,
            source: None,
            limited: None,
        }
    }

    /// No credentials were presented.
    pub fn missing_credentials() -> Self {
        Self::new(AuthErrorKind::MissingCredentials)
    }

    /// The credentials were malformed at the request level.
    pub fn malformed_request() -> Self {
        Self::new(AuthErrorKind::MalformedRequest)
    }

    /// The token was refused for `reason`; `token_id` is the id it presented, if any.
    pub fn invalid_token(reason: RejectReason, token_id: Option<TokenId>) -> Self {
        Self {
            reason: Some(reason),
            token_id,
            ..Self::new(AuthErrorKind::InvalidToken)
        }
    }

    /// The token `token_id` lacks `missing`.
    pub fn insufficient_scope(missing: ScopeSet, token_id: TokenId) -> Self {
        Self {
            missing_scopes: Some(missing),
            token_id: Some(token_id),
            ..Self::new(AuthErrorKind::InsufficientScope)
        }
    }

    /// The store failed with `source`.
    pub fn store_unavailable(source: StoreError) -> Self {
        Self {
            source: Some(source),
            ..Self::new(AuthErrorKind::StoreUnavailable)
        }
    }

    /// Too many requests: try again after `retry_after`. `decision` is the rate limiter's, for
    /// the `RateLimit` header fields (`None` for failed-authentication throttling, which
    /// advertises no budget); `token_id` is the token that spent its budget, if any.
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::{AuthError, AuthErrorKind};
    ///
    /// let err = AuthError::rate_limited(Duration::from_millis(1500), None, None);
    /// assert_eq!(err.kind(), AuthErrorKind::RateLimited);
    /// assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
    /// assert_eq!(err.to_string(), "too many requests");
    /// ```
    pub fn rate_limited(
        retry_after: Duration,
        decision: Option<RateLimitDecision>,
        token_id: Option<TokenId>,
    ) -> Self {
        Self {
            limited: Some(Box::new((retry_after, decision))),
            token_id,
            ..Self::new(AuthErrorKind::RateLimited)
        }
    }

    /// The class of error, which decides the response.
    pub fn kind(&self) -> AuthErrorKind {
        self.kind
    }

    /// Why an invalid token was refused. `None` for other kinds.
    pub fn reason(&self) -> Option<RejectReason> {
        self.reason
    }

    /// The id the refused token presented, when it had one. Ids are public; log them freely.
    pub fn token_id(&self) -> Option<&TokenId> {
        self.token_id.as_ref()
    }

    /// The required scopes the token lacked, for
    /// [`InsufficientScope`](AuthErrorKind::InsufficientScope).
    pub fn missing_scopes(&self) -> Option<&ScopeSet> {
        self.missing_scopes.as_ref()
    }

    /// How long to wait before trying again, for [`RateLimited`](AuthErrorKind::RateLimited).
    pub fn retry_after(&self) -> Option<Duration> {
        self.limited.as_ref().map(|l| l.0)
    }

    /// The rate limiter's decision (limit, remaining, reset), when a token's rate limit
    /// refused the request.
    pub fn rate_limit(&self) -> Option<&RateLimitDecision> {
        self.limited.as_ref().and_then(|l| l.1.as_ref())
    }
}

impl fmt::Debug for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("AuthError");
        out.field("kind", &self.kind);
        if let Some(reason) = &self.reason {
            out.field("reason", reason);
        }
        if let Some(id) = &self.token_id {
            out.field("token_id", id);
        }
        if let Some(missing) = &self.missing_scopes {
            out.field("missing_scopes", missing);
        }
        if let Some(source) = &self.source {
            out.field("source", source);
        }
        if let Some(limited) = &self.limited {
            out.field("retry_after", &limited.0);
        }
        out.finish()
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            AuthErrorKind::MissingCredentials => "missing credentials",
            AuthErrorKind::MalformedRequest => "malformed credentials",
            AuthErrorKind::InvalidToken => "invalid token",
            AuthErrorKind::InsufficientScope => "insufficient scope",
            AuthErrorKind::StoreUnavailable => "token store unavailable",
            AuthErrorKind::RateLimited => "too many requests",
        })
    }
}

impl StdError for AuthError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn StdError + 'static))
    }
}
