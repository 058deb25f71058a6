//! The rate limit and the failure throttle as [`Policy`]s, the way the middleware runs them.

use super::{Attempt, FailureThrottle, RateLimitStep};
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
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>> {
        Some(Box::pin(self.give_back(principal)))
    }
}
