//! The rate limit and the failure throttle as [`Policy`]s, the way the middleware runs them,
//! and [`RateLimitStep`]: a limiter with its policy.

use std::fmt;
use std::sync::Arc;

use super::{Attempt, DynRateLimiter, FailureThrottle, RateLimitDecision, RateLimitPolicy};
use crate::error::{AuthError, AuthErrorKind};
use crate::policy::{Admit, Admitted, Outcome, Pending, Policy};
use crate::verifier::{Principal, RequestInfo};

/// [`FailureThrottle`] at the `before_lookup` point: an address that failed too often is
/// turned away before its token is hashed, and every attempt is settled by its outcome.
impl Policy for FailureThrottle {
    fn before_lookup(&self, request: &RequestInfo) -> Result<Pending, AuthError> {
        let Some(ip) = request.client_ip else {
            self.note_unknown_client();
            return Ok(Pending::none());
        };
        match self.admit(ip) {
            Ok(attempt) => Ok(Pending::on_outcome(move |outcome| settle(attempt, outcome))),
            Err(wait) => {
                tracing::debug!(client_ip = %ip, "failed-authentication throttle");
                Err(AuthError::rate_limited(wait, None))
            }
        }
    }
}

/// Settles an attempt: credentials that authenticated prove the address (even if a rate limit
/// then refused the request); invalid tokens and malformed credentials count against it.
/// Missing credentials, missing scopes and outages are not an attacker guessing, and count as
/// neither. (An attempt dropped unsettled, with the request's future, counts as a failure.)
fn settle(attempt: Attempt, outcome: &Outcome<'_>) {
    if outcome.principal().is_some() {
        attempt.succeeded();
    } else if outcome.error().is_some_and(|error| {
        matches!(
            error.kind(),
            AuthErrorKind::InvalidToken | AuthErrorKind::MalformedRequest
        )
    }) {
        attempt.failed();
    } else {
        attempt.neither();
    }
}

/// A token's rate limit at the `admit` point: after scopes, so a request refused for anything
/// else spends no budget.
impl Policy for RateLimitStep {
    fn admit<'a>(&'a self, principal: &'a Principal, _: &'a RequestInfo) -> Admit<'a> {
        Admit::Later(Box::pin(async move {
            Ok(match self.check(principal).await? {
                Some(decision) => Admitted::new().with_detail(decision),
                None => Admitted::new(),
            })
        }))
    }

    fn refund<'a>(
        &'a self,
        principal: &'a Principal,
        _: &'a RequestInfo,
        receipt: &'a Admitted,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>> {
        // The decision is the proof of a spend: a limiter that failed open spent nothing.
        receipt.detail::<RateLimitDecision>()?;
        Some(Box::pin(self.give_back(principal)))
    }
}

impl crate::AuthError {
    /// The rate limiter's decision (limit, remaining, reset), when a token's rate limit
    /// refused the request.
    #[deprecated(
        note = "use `error.detail::<RateLimitDecision>()`: the core no longer names the rate limiter's type"
    )]
    pub fn rate_limit(&self) -> Option<&RateLimitDecision> {
        self.detail()
    }
}

/// A limiter and its policy, as the layer keeps them.
pub(crate) struct RateLimitStep {
    pub(crate) limiter: Arc<dyn DynRateLimiter>,
    pub(crate) policy: RateLimitPolicy,
    /// When the last "limiter unavailable" warning was logged (seconds since the epoch).
    pub(crate) last_warned: std::sync::atomic::AtomicI64,
}

/// At most one "limiter unavailable" warning per this many seconds, with a count of the
/// requests since the last one.
const OUTAGE_WARNING_EVERY_SECS: i64 = 10;

impl fmt::Debug for RateLimitStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitStep")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RateLimitStep {
    /// Gives back what [`check`](Self::check) spent for `principal`. A limiter error is
    /// logged and otherwise ignored: the budget is then stricter by one request, never looser.
    pub(crate) async fn give_back(&self, principal: &Principal) {
        let (key, limit) = self.policy.resolve(principal);
        if let Err(error) = self.limiter.refund_boxed(&key, &limit).await {
            tracing::debug!(?error, key, "rate limit refund failed");
        }
    }

    /// `Ok` when the request may go ahead (also when the limiter is down: fail open), the
    /// decision inside when there was one; `Err` with the refusal.
    pub(crate) async fn check(
        &self,
        principal: &Principal,
    ) -> Result<Option<RateLimitDecision>, crate::AuthError> {
        let (key, limit) = self.policy.resolve(principal);
        match self.limiter.acquire_boxed(&key, &limit).await {
            Ok(decision) if decision.is_allowed() => Ok(Some(decision)),
            Ok(decision) => {
                tracing::debug!(token_id = %principal.token_id(), key, "rate limited");
                Err(crate::AuthError::rate_limited(
                    decision.retry_after(),
                    Some(*principal.token_id()),
                )
                .with_detail(decision))
            }
            Err(error) => {
                let now = chrono::Utc::now().timestamp();
                let last = self.last_warned.load(std::sync::atomic::Ordering::Relaxed);
                if now - last >= OUTAGE_WARNING_EVERY_SECS
                    && self
                        .last_warned
                        .compare_exchange(
                            last,
                            now,
                            std::sync::atomic::Ordering::Relaxed,
                            std::sync::atomic::Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    tracing::warn!(
                        ?error,
                        fail_closed = self.policy.fail_closed,
                        "rate limiter unavailable (logged at most every 10 s)"
                    );
                }
                if self.policy.fail_closed {
                    return Err(crate::AuthError::store_unavailable(
                        crate::StoreError::unavailable(error),
                    ));
                }
                Ok(None)
            }
        }
    }
}
