//! The verifier's error: a small public classification, and a precise reason for logs.

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::format::FormatError;
use crate::id::TokenId;
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
///
/// The core's reasons are its variants; a plug-in adds its own as [`Plugin`](Self::Plugin)
/// constants. Every reason, a plug-in's too, works as a `match` pattern (the derived
/// `PartialEq` and `Eq` make the type structurally matchable):
///
/// ```
/// use apitoken::{PluginReason, RejectReason};
///
/// const OUTSIDE_OFFICE_HOURS: RejectReason =
///     RejectReason::Plugin(PluginReason::new("outside_office_hours"));
///
/// fn is_the_clock(reason: RejectReason) -> bool {
///     matches!(reason, OUTSIDE_OFFICE_HOURS | RejectReason::Expired)
/// }
/// assert!(is_the_clock(OUTSIDE_OFFICE_HOURS));
/// assert!(!is_the_clock(RejectReason::Revoked));
/// ```
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
    /// A reason of a plug-in's own: a [`Policy`](crate::Policy) or an
    /// [`Authenticator`](crate::Authenticator) names it, and the core need not know it (the
    /// JWT validator's, feature `jwt`, are the constants of `apitoken::jwt::reason`, such as
    /// `BAD_SIGNATURE`). Define one as a `const`: it compares with `==` and matches as a
    /// pattern.
    Plugin(PluginReason),
}

/// A refusal reason a plug-in defines: a short, stable, `snake_case` name such as
/// `"office_hours"`, safe for logs and metric labels (never a secret, never user input).
///
/// ```
/// use apitoken::{PluginReason, RejectReason};
///
/// const OUTSIDE_OFFICE_HOURS: RejectReason =
///     RejectReason::Plugin(PluginReason::new("outside_office_hours"));
/// let RejectReason::Plugin(reason) = OUTSIDE_OFFICE_HOURS else { unreachable!() };
/// assert_eq!(reason.name(), "outside_office_hours");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PluginReason(&'static str);

impl PluginReason {
    /// A reason named `name`.
    pub const fn new(name: &'static str) -> Self {
        Self(name)
    }

    /// Its name.
    pub const fn name(&self) -> &'static str {
        self.0
    }
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
    /// Boxed: rare, and `AuthError` stays small for the `Result`s it travels in.
    extra: Option<Box<Extra>>,
}

/// The rarer parts of an [`AuthError`].
#[derive(Default)]
struct Extra {
    missing_scopes: Option<ScopeSet>,
    source: Option<StoreError>,
    retry_after: Option<Duration>,
    /// A plug-in's own detail (a rate limiter's decision), which the core does not name.
    detail: Option<Box<dyn Any + Send + Sync>>,
}

impl AuthError {
    fn new(kind: AuthErrorKind) -> Self {
        Self {
            kind,
            reason: None,
            token_id: None,
            extra: None,
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
            extra: Some(Box::new(Extra {
                missing_scopes: Some(missing),
                ..Extra::default()
            })),
            token_id: Some(token_id),
            ..Self::new(AuthErrorKind::InsufficientScope)
        }
    }

    /// The store failed with `source`.
    pub fn store_unavailable(source: StoreError) -> Self {
        Self {
            extra: Some(Box::new(Extra {
                source: Some(source),
                ..Extra::default()
            })),
            ..Self::new(AuthErrorKind::StoreUnavailable)
        }
    }

    /// Too many requests: try again after `retry_after`; `token_id` is the token that spent
    /// its budget, if any. A rate limiter attaches its decision with
    /// [`with_detail`](Self::with_detail), for the `RateLimit` header fields.
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::{AuthError, AuthErrorKind};
    ///
    /// let err = AuthError::rate_limited(Duration::from_millis(1500), None);
    /// assert_eq!(err.kind(), AuthErrorKind::RateLimited);
    /// assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
    /// assert_eq!(err.to_string(), "too many requests");
    /// ```
    pub fn rate_limited(retry_after: Duration, token_id: Option<TokenId>) -> Self {
        Self {
            extra: Some(Box::new(Extra {
                retry_after: Some(retry_after),
                ..Extra::default()
            })),
            token_id,
            ..Self::new(AuthErrorKind::RateLimited)
        }
    }

    /// Attaches a plug-in's own detail, which front ends read back with
    /// [`detail`](Self::detail): how a policy's refusal carries what only it and the front end
    /// know (a rate limiter's decision), without the core naming its type. One detail per
    /// error; a second replaces the first. It must not hold a secret (`Debug` never shows it,
    /// but a front end may).
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::AuthError;
    ///
    /// #[derive(Debug, PartialEq)]
    /// struct Quota { used: u64 }
    ///
    /// let err = AuthError::rate_limited(Duration::from_secs(60), None).with_detail(Quota { used: 10 });
    /// assert_eq!(err.detail::<Quota>(), Some(&Quota { used: 10 }));
    /// assert_eq!(err.detail::<String>(), None);
    /// ```
    #[must_use]
    pub fn with_detail<T: Any + Send + Sync>(mut self, detail: T) -> Self {
        self.extra.get_or_insert_with(Box::default).detail = Some(Box::new(detail));
        self
    }

    /// The plug-in detail of type `T`, if one was attached ([`with_detail`](Self::with_detail)).
    pub fn detail<T: Any>(&self) -> Option<&T> {
        self.extra
            .as_ref()
            .and_then(|extra| extra.detail.as_ref())
            .and_then(|detail| detail.downcast_ref())
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
        self.extra.as_ref()?.missing_scopes.as_ref()
    }

    /// How long to wait before trying again, for [`RateLimited`](AuthErrorKind::RateLimited).
    pub fn retry_after(&self) -> Option<Duration> {
        self.extra.as_ref().and_then(|extra| extra.retry_after)
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
        if let Some(missing) = self.missing_scopes() {
            out.field("missing_scopes", missing);
        }
        if let Some(source) = self.extra.as_ref().and_then(|e| e.source.as_ref()) {
            out.field("source", source);
        }
        if let Some(retry_after) = self.retry_after() {
            out.field("retry_after", &retry_after);
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
        self.extra
            .as_ref()?
            .source
            .as_ref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
