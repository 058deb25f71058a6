//! Per-token rate limits and failed-authentication throttling.
//!
//! Two independent mechanisms, both wired into [`AuthLayer`](crate::middleware::AuthLayer):
//!
//! - **Rate limits** ([`AuthLayer::rate_limit`](crate::middleware::AuthLayer::rate_limit)): a
//!   budget per token (or per owner), checked *after* a successful verification, so a request
//!   refused for any other reason (unknown, revoked, expired, missing scope) spends no budget,
//!   as in Unkey's order. The budget is a [`RateLimit`] from a [`RateLimitPolicy`], which a
//!   token can override in its metadata; it is kept by a [`RateLimiter`]:
//!   [`MemoryRateLimiter`] in process, or `RedisRateLimiter` (feature `redis`) shared by every
//!   replica. Every response to a request the limit applied to carries the IETF
//!   `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers-11), 200s
//!   included; a request over budget is answered 429 with `Retry-After` as well.
//! - **Throttling** ([`AuthLayer::throttle_failures`](crate::middleware::AuthLayer::throttle_failures)):
//!   a [`FailureThrottle`] counts failed authentications per client address; after too many
//!   in a window the address gets 429 before any header parsing, hashing or store lookup.
//!   It never keys on a token id, so nobody can lock someone else's token out.
//!
//! Both use GCRA or a fixed window on the crate's [`Clock`](crate::Clock); see
//! `docs/rate-limits.md` for the algorithms, headers and failure behaviour.

mod breaker;
mod memory;
mod policies;
#[cfg(feature = "redis")]
mod redis;
mod throttle;

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use breaker::{CircuitBreaker, DEFAULT_COOL_OFF, DEFAULT_FAILURES_TO_OPEN};
pub use memory::{DEFAULT_MAX_KEYS, MemoryRateLimiter};
pub(crate) use policies::RateLimitStep;
#[cfg(feature = "redis")]
pub use redis::RedisRateLimiter;
pub use throttle::{Attempt, FailureThrottle};

use crate::verifier::Principal;

/// `docs/rate-limits.md`, whose Rust examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/rate-limits.md")]
struct RateLimitsGuide;

/// The metadata key a token's own limit is read from: `{"requests": 100, "period_secs": 60}`,
/// with an optional `"burst"`. See [`RateLimitPolicy`].
pub const LIMIT_METADATA_KEY: &str = "rate_limit";

/// The old name of [`LIMIT_METADATA_KEY`].
#[deprecated(
    note = "renamed `LIMIT_METADATA_KEY`: two public constants shared the name `METADATA_KEY`"
)]
pub const METADATA_KEY: &str = LIMIT_METADATA_KEY;

/// The metadata key naming whose budget a token spends under a per-token policy: another
/// token's id, whose budget it shares (`{"rate_limit_budget": "Xq3c9TzA1b2C"}`). OAuth access
/// tokens name their client's key, so a client cannot multiply its budget by obtaining more
/// tokens. Ignored under [`RateLimitPolicy::per_owner`] and when it is not a valid id.
pub const BUDGET_METADATA_KEY: &str = "rate_limit_budget";

/// A budget: `requests` per `period` on average, with bursts of up to `burst` requests at once
/// (by default `burst == requests`).
///
/// Enforced with GCRA (the generic cell rate algorithm, a leaky bucket kept as one timestamp):
/// one request is allowed every `period / requests`, and up to `burst` may be taken ahead of
/// that schedule. Unlike a fixed window it has no boundary at which a client can send twice
/// its budget in an instant.
///
/// ```
/// use std::time::Duration;
/// use apitoken::rate_limit::RateLimit;
///
/// let limit = RateLimit::per_minute(100);
/// assert_eq!(limit.requests(), 100);
/// assert_eq!(limit.period(), Duration::from_secs(60));
/// assert_eq!(limit.burst(), 100);
/// assert_eq!(limit.with_burst(10).burst(), 10);
/// assert!(RateLimit::new(0, Duration::from_secs(1)).is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    requests: u32,
    period: Duration,
    burst: u32,
}

impl RateLimit {
    /// `requests` per `period`, bursts of `requests`. `None` when either is zero, or when
    /// `period / requests` is under a microsecond (the Redis backend's resolution).
    pub fn new(requests: u32, period: Duration) -> Option<Self> {
        if requests == 0 || period.is_zero() || period.as_micros() < u128::from(requests) {
            return None;
        }
        Some(Self {
            requests,
            period,
            burst: requests,
        })
    }

    /// `requests` per second (at least 1).
    pub fn per_second(requests: u32) -> Self {
        Self::fixed(requests, Duration::from_secs(1))
    }

    /// `requests` per minute (at least 1).
    pub fn per_minute(requests: u32) -> Self {
        Self::fixed(requests, Duration::from_secs(60))
    }

    /// `requests` per hour (at least 1).
    pub fn per_hour(requests: u32) -> Self {
        Self::fixed(requests, Duration::from_secs(3600))
    }

    /// `requests` (1 to 1,000,000) a minute in bursts of `burst` (at least 1), for constants.
    #[cfg_attr(not(feature = "oauth"), allow(dead_code))] // only the OAuth default uses it
    pub(crate) const fn const_per_minute(requests: u32, burst: u32) -> Self {
        assert!(requests >= 1 && requests <= 1_000_000 && burst >= 1);
        Self {
            requests,
            period: Duration::from_secs(60),
            burst,
        }
    }

    fn fixed(requests: u32, period: Duration) -> Self {
        // A second holds a million microseconds: no more than that per second is accepted.
        let requests = requests.clamp(1, 1_000_000);
        Self {
            requests,
            period,
            burst: requests,
        }
    }

    /// Allows bursts of up to `burst` requests (at least 1) instead of `requests`.
    #[must_use]
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }

    /// Requests per period.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The most requests allowed at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The time between two requests at the sustained rate: `period / requests`.
    pub fn interval(&self) -> Duration {
        self.period / self.requests
    }

    /// The token's own limit: its metadata's [`LIMIT_METADATA_KEY`] entry, if there is one and it
    /// is valid (an invalid one is ignored, and the policy's default applies).
    ///
    /// ```
    /// use apitoken::Metadata;
    /// use apitoken::rate_limit::RateLimit;
    ///
    /// let mut metadata = Metadata::new();
    /// assert_eq!(RateLimit::of_token(&metadata), None);
    /// metadata.insert("rate_limit".into(), RateLimit::per_hour(1).to_metadata_value());
    /// assert_eq!(RateLimit::of_token(&metadata), Some(RateLimit::per_hour(1)));
    /// ```
    pub fn of_token(metadata: &crate::Metadata) -> Option<Self> {
        metadata
            .get(LIMIT_METADATA_KEY)
            .and_then(limit_from_metadata)
    }

    /// The limit as a token's metadata entry reads it: `{"requests", "period_secs", "burst"}`.
    /// Periods are whole seconds there, so a fraction is rounded up (to at least a second):
    /// the limit read back is never looser than this one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::rate_limit::RateLimit;
    ///
    /// let limit = RateLimit::new(10, Duration::from_millis(1500)).unwrap();
    /// assert_eq!(limit.to_metadata_value()["period_secs"], 2);
    /// ```
    pub fn to_metadata_value(&self) -> serde_json::Value {
        let whole = self.period.as_secs();
        let seconds = if self.period.subsec_nanos() > 0 {
            whole.saturating_add(1)
        } else {
            whole
        };
        serde_json::json!({
            "requests": self.requests,
            "period_secs": seconds.max(1),
            "burst": self.burst,
        })
    }

    /// Whether this limit allows no more than `other`: a sustained rate and a burst each at
    /// most `other`'s. A token minted by one with limit `other` must have such a limit (least
    /// privilege).
    ///
    /// ```
    /// use apitoken::rate_limit::RateLimit;
    ///
    /// assert!(RateLimit::per_hour(1).is_within(&RateLimit::per_minute(1)));
    /// assert!(!RateLimit::per_minute(1).is_within(&RateLimit::per_hour(1)));
    /// assert!(!RateLimit::per_hour(60).is_within(&RateLimit::per_minute(1)), "a larger burst");
    /// ```
    pub fn is_within(&self, other: &RateLimit) -> bool {
        // requests / period <= other.requests / other.period, without division.
        let rate = u128::from(self.requests) * other.period.as_nanos();
        let other_rate = u128::from(other.requests) * self.period.as_nanos();
        rate <= other_rate && self.burst <= other.burst
    }
}

/// What a [`RateLimiter`] decided about one request.
///
/// ```
/// use std::time::Duration;
/// use apitoken::rate_limit::{RateLimit, RateLimitDecision};
///
/// let d = RateLimitDecision::denied(RateLimit::per_minute(1), Duration::from_secs(59), Duration::from_secs(59));
/// assert!(!d.is_allowed());
/// assert_eq!(d.remaining(), 0);
/// assert_eq!(d.retry_after(), Duration::from_secs(59));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitDecision {
    limit: RateLimit,
    allowed: bool,
    remaining: u32,
    retry_after: Duration,
    reset_after: Duration,
    window: Duration,
}

impl RateLimitDecision {
    /// The request is allowed; `remaining` more may be made at once, and the whole burst is
    /// available again after `reset_after`. The [`window`](Self::window) is `reset_after`:
    /// nothing is assumed about requests coming back before then (right for a fixed window).
    pub fn allowed(limit: RateLimit, remaining: u32, reset_after: Duration) -> Self {
        Self {
            limit,
            allowed: true,
            remaining,
            retry_after: Duration::ZERO,
            reset_after,
            window: reset_after,
        }
    }

    /// An allowed GCRA decision, whose budget comes back one request every
    /// [`interval`](RateLimit::interval): the window ends when the next one does,
    /// `reset_after − (burst − remaining − 1) × interval`. Both backends build their
    /// decisions here, so Redis and the in-process limiter report the same window.
    pub(crate) fn allowed_gcra(limit: RateLimit, remaining: u32, reset_after: Duration) -> Self {
        let still_out = limit.burst().saturating_sub(remaining).saturating_sub(1);
        let window = reset_after.saturating_sub(limit.interval().saturating_mul(still_out));
        Self {
            window,
            ..Self::allowed(limit, remaining, reset_after)
        }
    }

    /// The request is refused; one may be made after `retry_after`, the whole burst after
    /// `reset_after`.
    pub fn denied(limit: RateLimit, retry_after: Duration, reset_after: Duration) -> Self {
        Self {
            limit,
            allowed: false,
            remaining: 0,
            retry_after,
            reset_after,
            window: retry_after,
        }
    }

    /// Whether the request may go ahead.
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// The limit that was applied.
    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// How many more requests would be allowed right now.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// How long until the next request is allowed: zero when this one was.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// How long until the full burst is available again.
    pub fn reset_after(&self) -> Duration {
        self.reset_after
    }

    /// The effective window (the `t` of the `RateLimit` field): how long
    /// [`remaining`](Self::remaining) is all that may be made. For a refusal, `retry_after`;
    /// for an allowed request under GCRA, the time until one more request comes back.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use apitoken::ManualClock;
    /// use apitoken::rate_limit::{MemoryRateLimiter, RateLimit};
    ///
    /// // A clock that stands still, so the figures are exact.
    /// let limiter = MemoryRateLimiter::with_clock(Arc::new(ManualClock::new(chrono::Utc::now())));
    /// let limit = RateLimit::per_minute(3); // one back every 20 s
    /// let first = limiter.acquire_now("k", &limit);
    /// assert_eq!((first.remaining(), first.window()), (2, Duration::from_secs(20)));
    /// limiter.acquire_now("k", &limit);
    /// let third = limiter.acquire_now("k", &limit);
    /// assert_eq!(third.remaining(), 0);
    /// assert_eq!(third.reset_after(), Duration::from_secs(60));
    /// assert_eq!(third.window(), Duration::from_secs(20));
    /// let refused = limiter.acquire_now("k", &limit);
    /// assert_eq!(refused.window(), refused.retry_after());
    /// ```
    pub fn window(&self) -> Duration {
        self.window
    }
}

/// The GCRA step shared by the backends, in nanoseconds. `tat` is the stored theoretical
/// arrival time (`None` for a new key); returns the decision and, when allowed, the new `tat`.
/// The GCRA step backwards, for a refund: `tat` less one interval, or `None` (forget the key)
/// when that is already in the past, since a full budget needs no state.
pub(crate) fn gcra_refund(tat: i128, now: i128, limit: &RateLimit) -> Option<i128> {
    let back = tat - limit.interval().as_nanos() as i128;
    (back > now).then_some(back)
}

pub(crate) fn gcra(tat: Option<i128>, now: i128, limit: &RateLimit) -> (RateLimitDecision, i128) {
    let interval = limit.interval().as_nanos() as i128;
    let capacity = interval * i128::from(limit.burst());
    let tat = tat.map_or(now, |t| t.max(now));
    let new_tat = tat + interval;
    let allow_at = new_tat - capacity;
    let nanos = |n: i128| Duration::from_nanos(u64::try_from(n.max(0)).unwrap_or(u64::MAX));
    if now < allow_at {
        let decision = RateLimitDecision::denied(*limit, nanos(allow_at - now), nanos(tat - now));
        return (decision, tat);
    }
    let remaining = (capacity - (new_tat - now)) / interval;
    let remaining = u32::try_from(remaining.max(0)).unwrap_or(u32::MAX);
    let decision = RateLimitDecision::allowed_gcra(*limit, remaining, nanos(new_tat - now));
    (decision, new_tat)
}

/// A rate limiter backend could not answer (Redis down, timed out…). The middleware lets the
/// request through and logs a warning: see [`RateLimitPolicy`].
///
/// ```
/// use apitoken::rate_limit::RateLimitError;
///
/// let err = RateLimitError::new(std::io::Error::other("connection refused"));
/// assert_eq!(err.to_string(), "rate limiter unavailable");
/// ```
pub struct RateLimitError {
    source: Box<dyn StdError + Send + Sync>,
}

impl RateLimitError {
    /// Wraps the backend's own error.
    pub fn new(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

impl fmt::Debug for RateLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitError")
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for RateLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate limiter unavailable")
    }
}

impl StdError for RateLimitError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source as &(dyn StdError + 'static))
    }
}

/// Keeps one GCRA budget per key.
///
/// Methods return `impl Future + Send`, as [`TokenStore`](crate::TokenStore)'s do. Each call
/// spends one request from `key`'s budget under `limit` if the budget allows it, atomically:
/// two concurrent calls never both take the last request.
///
/// ```
/// use apitoken::rate_limit::{MemoryRateLimiter, RateLimit, RateLimiter};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let limiter = MemoryRateLimiter::new();
/// let limit = RateLimit::per_minute(2);
/// assert!(limiter.acquire("token:abc", &limit).await?.is_allowed());
/// assert!(limiter.acquire("token:abc", &limit).await?.is_allowed());
/// assert!(!limiter.acquire("token:abc", &limit).await?.is_allowed());
/// assert!(limiter.acquire("token:xyz", &limit).await?.is_allowed());
/// # Ok::<(), apitoken::rate_limit::RateLimitError>(())
/// # }).unwrap();
/// ```
pub trait RateLimiter: Send + Sync + 'static {
    /// Spends one request of `key`'s budget, or says how long to wait.
    fn acquire(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<RateLimitDecision, RateLimitError>> + Send;

    /// Gives back one request [`acquire`](Self::acquire) spent from `key`'s budget, for a
    /// request refused after it was admitted (a route's
    /// [`RequireScopesLayer`](crate::middleware::RequireScopesLayer) requirement, which the
    /// authentication layer cannot know in advance). Never more than was spent: a budget
    /// already refilled stays full. The default gives nothing back: a limiter without it is
    /// stricter, never looser.
    fn refund(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<(), RateLimitError>> + Send {
        let _ = (key, limit);
        std::future::ready(Ok(()))
    }
}

impl<L: RateLimiter> RateLimiter for Arc<L> {
    fn acquire(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<RateLimitDecision, RateLimitError>> + Send {
        (**self).acquire(key, limit)
    }

    fn refund(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> impl Future<Output = Result<(), RateLimitError>> + Send {
        (**self).refund(key, limit)
    }
}

type BoxedRefund<'a> = Pin<Box<dyn Future<Output = Result<(), RateLimitError>> + Send + 'a>>;

type BoxedDecision<'a> =
    Pin<Box<dyn Future<Output = Result<RateLimitDecision, RateLimitError>> + Send + 'a>>;

/// [`RateLimiter`] made object-safe, so the layer's type does not name the backend.
pub(crate) trait DynRateLimiter: Send + Sync {
    fn acquire_boxed<'a>(&'a self, key: &'a str, limit: &'a RateLimit) -> BoxedDecision<'a>;
    fn refund_boxed<'a>(&'a self, key: &'a str, limit: &'a RateLimit) -> BoxedRefund<'a>;
}

impl<L: RateLimiter> DynRateLimiter for L {
    fn acquire_boxed<'a>(&'a self, key: &'a str, limit: &'a RateLimit) -> BoxedDecision<'a> {
        Box::pin(self.acquire(key, limit))
    }

    fn refund_boxed<'a>(&'a self, key: &'a str, limit: &'a RateLimit) -> BoxedRefund<'a> {
        Box::pin(self.refund(key, limit))
    }
}

/// Whose budget a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RateLimitKey {
    /// Each token has its own budget (the default).
    #[default]
    Token,
    /// All tokens of one owner share a budget.
    Owner,
}

/// Which limit applies to a verified token, and whose budget it spends.
///
/// The limit is the policy's default unless the token's metadata has a [`LIMIT_METADATA_KEY`]
/// (`"rate_limit"`) object, `{"requests": 100, "period_secs": 60}` with an optional
/// `"burst"`, which replaces it for that token. A value that is not such an object is ignored
/// with a warning and the default applies: a typo never lifts a limit, nor refuses a request.
///
/// ```
/// use apitoken::rate_limit::{RateLimit, RateLimitPolicy};
///
/// let per_token = RateLimitPolicy::new(RateLimit::per_minute(100));
/// let per_owner = RateLimitPolicy::new(RateLimit::per_minute(1000)).per_owner();
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitPolicy {
    default: RateLimit,
    key: RateLimitKey,
    fail_closed: bool,
}

impl RateLimitPolicy {
    /// Every token gets `default` unless its metadata says otherwise; budgets are per token.
    pub fn new(default: RateLimit) -> Self {
        Self {
            default,
            key: RateLimitKey::Token,
            fail_closed: false,
        }
    }

    /// Refuses requests (503, as a store outage) while the limiter cannot answer, instead of
    /// letting them through. Default: let through (fail open), so a Redis outage cannot take
    /// the API down; a [`CircuitBreaker`] keeps a limit in process meanwhile, and is the
    /// better default for most. Choose this when an unlimited request is worse than a refused
    /// one (an expensive or billed endpoint).
    ///
    /// ```
    /// use apitoken::rate_limit::{RateLimit, RateLimitPolicy};
    /// let policy = RateLimitPolicy::new(RateLimit::per_minute(100)).fail_closed();
    /// assert!(policy.is_fail_closed());
    /// ```
    #[must_use]
    pub fn fail_closed(mut self) -> Self {
        self.fail_closed = true;
        self
    }

    /// Whether requests are refused while the limiter cannot answer.
    pub fn is_fail_closed(&self) -> bool {
        self.fail_closed
    }

    /// All tokens of an owner share one budget. The limit is still read from the presenting
    /// token's metadata, so give an owner's tokens the same override, or none.
    #[must_use]
    pub fn per_owner(mut self) -> Self {
        self.key = RateLimitKey::Owner;
        self
    }

    /// The default limit.
    pub fn default_limit(&self) -> &RateLimit {
        &self.default
    }

    /// Whose budget is spent.
    pub fn key(&self) -> RateLimitKey {
        self.key
    }

    /// The budget key and the limit for `principal`. Keys are `token:{id}` (the id named
    /// under [`BUDGET_METADATA_KEY`], if any, else the token's own) or `owner:{owner}`.
    ///
    /// ```
    /// use apitoken::rate_limit::{RateLimit, RateLimitPolicy};
    /// use apitoken::{MemoryStore, NewToken, Owner, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let mut metadata = apitoken::Metadata::new();
    /// metadata.insert("rate_limit".into(), serde_json::json!({"requests": 5, "period_secs": 1}));
    /// let issued = verifier
    ///     .issuer()
    ///     .issue(NewToken::new("ci", Owner::new("team-1")?).metadata(metadata))
    ///     .await?;
    /// let principal = verifier.authenticate(issued.token.expose_secret()).await?;
    ///
    /// let (key, limit) = RateLimitPolicy::new(RateLimit::per_minute(100)).resolve(&principal);
    /// assert_eq!(key, format!("token:{}", principal.token_id()));
    /// assert_eq!(limit, RateLimit::per_second(5));
    /// let (key, _) = RateLimitPolicy::new(RateLimit::per_minute(100)).per_owner().resolve(&principal);
    /// assert_eq!(key, "owner:team-1");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn resolve(&self, principal: &Principal) -> (String, RateLimit) {
        let key = match self.key {
            RateLimitKey::Token => {
                let shared = principal
                    .metadata()
                    .get(BUDGET_METADATA_KEY)
                    .and_then(serde_json::Value::as_str)
                    .and_then(|id| crate::TokenId::new(id).ok());
                match shared {
                    Some(id) => format!("token:{id}"),
                    None => format!("token:{}", principal.token_id()),
                }
            }
            RateLimitKey::Owner => format!("owner:{}", principal.owner()),
        };
        let limit = match principal.metadata().get(LIMIT_METADATA_KEY) {
            None => self.default,
            Some(value) => limit_from_metadata(value).unwrap_or_else(|| {
                tracing::warn!(
                    token_id = %principal.token_id(),
                    "ignoring an invalid rate_limit in token metadata; the default limit applies"
                );
                self.default
            }),
        };
        (key, limit)
    }
}

fn limit_from_metadata(value: &serde_json::Value) -> Option<RateLimit> {
    let object = value.as_object()?;
    let requests = u32::try_from(object.get("requests")?.as_u64()?).ok()?;
    let period = Duration::from_secs(object.get("period_secs")?.as_u64()?);
    let limit = RateLimit::new(requests, period)?;
    match object.get("burst") {
        None => Some(limit),
        Some(burst) => Some(limit.with_burst(u32::try_from(burst.as_u64()?).ok()?)),
    }
}

#[cfg(test)]
mod tests;
