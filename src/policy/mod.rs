//! Policies: checks that run at fixed points of every verification.
//!
//! A [`Policy`] is the core's first extension point (the [`Authenticator`](crate::Authenticator)
//! is the other), in the spirit of tower-http's `ValidateRequest`: a small trait whose methods
//! all have defaults, so an implementation overrides only the points it cares about. The points,
//! in the order a request meets them:
//!
//! | point | runs | used by |
//! |---|---|---|
//! | [`before_lookup`](Policy::before_lookup) | before the token is parsed, hashed or looked up | the failure throttle |
//! | [`on_record`](Policy::on_record) | on the record, after secret, revocation and expiry, before scopes | the IP allowlist ([`AddressAllowlist`]) |
//! | [`admit`](Policy::admit) | after scopes pass; may be async | the rate limiter, quotas |
//! | [`observe`](Policy::observe) | once per request, on its outcome | failure counting, metrics |
//!
//! A refusal at any point is an ordinary [`AuthError`]; a policy that has more to say to the
//! front end (a rate limiter's decision, for the `RateLimit` header fields) attaches it with
//! [`AuthError::with_detail`] or [`Admitted::with_detail`], and the core never names its type.
//!
//! Policies come from two places: the verifier's own
//! ([`VerifierBuilder::policy`](crate::VerifierBuilder::policy), for every verification) and a
//! front end's (the middleware's rate limit and throttle, for its requests only). The
//! verifier's run first. [`AddressAllowlist`] is always the verifier's first policy.
//!
//! This module is part of the core: it uses the token values (`record`, `scope`, `id`) and
//! the core's own types (`error`, `verifier`), never a plug-in or a front end.
//!
//! # Example: a policy that refuses tokens outside office hours
//!
//! ```
//! use apitoken::policy::Policy;
//! use apitoken::{
//!     AuthError, AuthErrorKind, Clock, ManualClock, MemoryStore, NewToken, Owner, PluginReason,
//!     RejectReason, RequestInfo, TokenRecord, Verifier,
//! };
//! use chrono::{Timelike, Utc, TimeZone};
//! use std::sync::Arc;
//!
//! /// Tokens whose metadata says `"office_hours": true` work from 08:00 to 18:00 UTC only.
//! struct OfficeHours {
//!     clock: Arc<dyn Clock>,
//! }
//!
//! const OUTSIDE_OFFICE_HOURS: RejectReason =
//!     RejectReason::Plugin(PluginReason::new("outside_office_hours"));
//!
//! impl Policy for OfficeHours {
//!     fn on_record(&self, record: &TokenRecord, _: &RequestInfo) -> Result<(), AuthError> {
//!         let restricted = record.metadata.get("office_hours") == Some(&true.into());
//!         let hour = self.clock.now().hour();
//!         if restricted && !(8..18).contains(&hour) {
//!             // An invalid token to the client, a precise reason in the logs.
//!             return Err(AuthError::invalid_token(OUTSIDE_OFFICE_HOURS, Some(record.id)));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 12, 2, 9, 0, 0).unwrap()));
//! let verifier = Verifier::builder(MemoryStore::new())
//!     .clock(clock.clone())
//!     .policy(OfficeHours { clock: clock.clone() })
//!     .build();
//! let mut metadata = apitoken::Metadata::new();
//! metadata.insert("office_hours".into(), true.into());
//! let new = NewToken::new("ci", Owner::new("team-1")?).metadata(metadata);
//! let token = verifier.issuer().issue(new).await?.token;
//!
//! assert!(verifier.authenticate(token.expose_secret()).await.is_ok());
//! clock.advance(chrono::TimeDelta::hours(10)); // 19:00
//! let refused = verifier.authenticate(token.expose_secret()).await.unwrap_err();
//! assert_eq!(refused.kind(), AuthErrorKind::InvalidToken);
//! assert_eq!(refused.reason(), Some(OUTSIDE_OFFICE_HOURS));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod allowlist;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

pub use allowlist::AddressAllowlist;

use crate::error::AuthError;
use crate::record::TokenRecord;
use crate::verifier::{Principal, RequestInfo};

/// A check at fixed points of verification. Every method has a default that lets the request
/// through, so a policy overrides only the points it needs. See the [module](self) for the
/// points and an example.
///
/// Policies are shared by every request (`Send + Sync`) and must not block: `before_lookup`,
/// `on_record` and `observe` run inline on the request's task; work that waits on a network
/// belongs in [`admit`](Self::admit), which may return a future.
pub trait Policy: Send + Sync + 'static {
    /// Before the token is parsed, hashed or looked up, with what is known of the request
    /// (its client address). A refusal here costs no hashing and no store access: where a
    /// flood of forged tokens is turned away.
    ///
    /// The [`Pending`] returned is told the request's [`Outcome`] when it ends; one dropped
    /// without being told (the request's future was dropped, the client hung up) is simply
    /// dropped, so a policy that must count an abandoned request counts it in its `Drop`.
    fn before_lookup(&self, request: &RequestInfo) -> Result<Pending, AuthError> {
        let _ = request;
        Ok(Pending::none())
    }

    /// On the record the token named, once the secret matched and the token is neither
    /// revoked nor expired, before scopes are checked. Also runs for credentials an
    /// [`Authenticator`](crate::Authenticator) checked, on the record it made.
    ///
    /// Refuse with [`AuthError::invalid_token`] and a reason of your own
    /// ([`RejectReason::Plugin`](crate::RejectReason::Plugin)) for a token that must not work
    /// here: the client learns only that its token is invalid.
    fn on_record(&self, record: &TokenRecord, request: &RequestInfo) -> Result<(), AuthError> {
        let _ = (record, request);
        Ok(())
    }

    /// After every other check passed, scopes included: the last step before the request is
    /// accepted, so a request refused for any other reason never spends what `admit` counts
    /// (a rate limit's budget, a quota). May wait ([`Admit::Later`]); a policy that answers
    /// at once returns [`Admit::Now`] and costs no allocation.
    fn admit<'a>(&'a self, principal: &'a Principal, request: &'a RequestInfo) -> Admit<'a> {
        let _ = (principal, request);
        Admit::Now(Ok(Admitted::new()))
    }

    /// Gives back what [`admit`](Self::admit) spent for a request refused after it was
    /// admitted: by a later policy's `admit` (another limit said no), or by a route's own
    /// scope requirement ([`RequireScopesLayer`](crate::middleware::RequireScopesLayer)),
    /// which is only known once the request has passed the authentication layer.
    ///
    /// Called only with the receipt this policy's `admit` returned for this request, and only
    /// when that receipt carries a detail ([`Admitted::with_detail`]): a policy that spent
    /// something says so by attaching what it spent, and one that let a request through
    /// without spending (a limiter that was down and failed open) attaches nothing and is
    /// never asked to give back. `None` (the default) when there is nothing to give back.
    fn refund<'a>(
        &'a self,
        principal: &'a Principal,
        request: &'a RequestInfo,
        receipt: &'a Admitted,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>> {
        let _ = (principal, request, receipt);
        None
    }

    /// Every request that passed [`before_lookup`](Self::before_lookup) ends here once, with
    /// its outcome. For counting and metrics; it cannot change the outcome.
    fn observe(&self, outcome: &Outcome<'_>) {
        let _ = outcome;
    }
}

/// What [`Policy::admit`] answers: at once, or after waiting.
#[non_exhaustive]
pub enum Admit<'a> {
    /// Decided without waiting.
    Now(Result<Admitted, AuthError>),
    /// Decided by a future (a round trip to Redis).
    Later(Pin<Box<dyn Future<Output = Result<Admitted, AuthError>> + Send + 'a>>),
}

impl fmt::Debug for Admit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Now(result) => f.debug_tuple("Now").field(result).finish(),
            Self::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// A request [`Policy::admit`] let through, with what it wants the front end to know.
///
/// ```
/// use apitoken::policy::Admitted;
///
/// let admitted = Admitted::new().with_detail(41_u32);
/// assert_eq!(admitted.detail::<u32>(), Some(&41));
/// ```
#[derive(Default)]
pub struct Admitted {
    detail: Option<Box<dyn Any + Send + Sync>>,
    /// Which policy, in the verifier's order (its own, then the front end's), returned it.
    pub(crate) policy: usize,
}

impl Admitted {
    /// Let through, nothing to add.
    pub fn new() -> Self {
        Self::default()
    }

    /// Let through, with `detail` for the front end (a rate limiter's decision, for the
    /// `RateLimit` fields of the response). It must not hold a secret.
    #[must_use]
    pub fn with_detail<T: Any + Send + Sync>(mut self, detail: T) -> Self {
        self.detail = Some(Box::new(detail));
        self
    }

    /// The detail of type `T`, if there is one.
    pub fn detail<T: Any>(&self) -> Option<&T> {
        self.detail.as_ref().and_then(|d| d.downcast_ref())
    }

    /// Whether there is nothing to tell the front end (kept out of the list, unallocated).
    pub(crate) fn is_empty(&self) -> bool {
        self.detail.is_none()
    }
}

impl fmt::Debug for Admitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admitted")
            .field("detail", &self.detail.is_some())
            .finish()
    }
}

/// How a request ended, as [`Policy::observe`] and a [`Pending`] see it.
///
/// ```
/// use apitoken::policy::Outcome;
/// use apitoken::AuthError;
///
/// let error = AuthError::missing_credentials();
/// let outcome = Outcome::refused(&error);
/// assert!(outcome.principal().is_none());
/// assert_eq!(outcome.error().map(|e| e.kind()), Some(error.kind()));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    principal: Option<&'a Principal>,
    error: Option<&'a AuthError>,
}

impl<'a> Outcome<'a> {
    /// Accepted as `principal`.
    pub fn accepted(principal: &'a Principal) -> Self {
        Self {
            principal: Some(principal),
            error: None,
        }
    }

    /// Refused with `error` before any principal was made.
    pub fn refused(error: &'a AuthError) -> Self {
        Self {
            principal: None,
            error: Some(error),
        }
    }

    /// Authenticated as `principal`, then refused with `error` by an
    /// [`admit`](Policy::admit) step.
    pub fn refused_after(principal: &'a Principal, error: &'a AuthError) -> Self {
        Self {
            principal: Some(principal),
            error: Some(error),
        }
    }

    /// Let through without credentials, where the front end allows anonymous requests:
    /// neither accepted as anyone nor refused.
    pub fn anonymous() -> Self {
        Self {
            principal: None,
            error: None,
        }
    }

    /// The principal the credentials authenticated as (scopes included), whether or not an
    /// admit step then refused the request.
    pub fn principal(&self) -> Option<&'a Principal> {
        self.principal
    }

    /// Why the request was refused; `None` when it was accepted.
    pub fn error(&self) -> Option<&'a AuthError> {
        self.error
    }

    /// Whether the request was let through (accepted, or anonymous).
    pub fn is_accepted(&self) -> bool {
        self.error.is_none()
    }
}

/// What [`Policy::before_lookup`] leaves to be told the request's outcome.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use apitoken::policy::{Outcome, Pending};
/// use apitoken::AuthError;
///
/// let refusals = Arc::new(AtomicUsize::new(0));
/// let counter = Arc::clone(&refusals);
/// let pending = Pending::on_outcome(move |outcome| {
///     if !outcome.is_accepted() {
///         counter.fetch_add(1, Ordering::Relaxed);
///     }
/// });
/// pending.settle(&Outcome::refused(&AuthError::missing_credentials()));
/// assert_eq!(refusals.load(Ordering::Relaxed), 1);
/// ```
#[must_use = "a pending policy step is told the outcome by `settle`; dropping it tells nothing"]
pub struct Pending {
    settle: Option<Settle>,
}

type Settle = Box<dyn FnOnce(&Outcome<'_>) + Send>;

impl Pending {
    /// Nothing to be told.
    pub fn none() -> Self {
        Self { settle: None }
    }

    /// Calls `settle` with the outcome. (A value that must act when the request is abandoned
    /// acts in its `Drop`; the closure owns it and is dropped unused then.)
    pub fn on_outcome(settle: impl FnOnce(&Outcome<'_>) + Send + 'static) -> Self {
        Self {
            settle: Some(Box::new(settle)),
        }
    }

    /// Tells the outcome.
    pub fn settle(self, outcome: &Outcome<'_>) {
        if let Some(settle) = self.settle {
            settle(outcome);
        }
    }

    pub(crate) fn is_none(&self) -> bool {
        self.settle.is_none()
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("waiting", &self.settle.is_some())
            .finish()
    }
}
