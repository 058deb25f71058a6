//! One request through the steps: [`Verifier::begin`] (policies before lookup), then
//! [`Verifier::finish`] (authenticators or lookup, record checks, policies on the record,
//! scopes, admit, last use, audit, observe) or [`Verifier::refuse`].

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Ends, Principal, Refused, RequestInfo, Verifier, lookup::Lookup};
use crate::authenticator::Authenticator;
use crate::error::{AuthError, RejectReason};
use crate::policy::{AddressAllowlist, Admit, Admitted, Outcome, Pending, Policy};
use crate::record::TokenRecord;
use crate::scope::ScopeRequirement;
use crate::store::{StoreError, TokenStore};

use super::CredentialKind;

/// A request whose policies' [`before_lookup`](Policy::before_lookup) steps passed, made by
/// [`Verifier::begin`] and ended by [`Verifier::finish`] or [`Verifier::refuse`].
///
/// It owns what the policies left to be told the outcome, and borrows nothing, so a front end
/// can begin in its service's `call` and finish in the response future. Dropped unfinished
/// (the client went away), it tells the policies nothing; each [`Pending`] it holds is
/// dropped, and a policy that counts abandoned requests does so there (the failure throttle
/// counts one as a failure).
#[derive(Debug)]
#[must_use = "a verification is ended by `Verifier::finish` or `Verifier::refuse`"]
pub struct Verification {
    request: RequestInfo,
    pending: Vec<Pending>,
}

impl Verification {
    /// What is known of the request.
    pub fn request(&self) -> &RequestInfo {
        &self.request
    }
}

/// An accepted request: the [`Principal`], and what the admit steps want the front end to
/// know (a rate limiter's decision, for the `RateLimit` response fields).
#[derive(Debug)]
pub struct Verified {
    principal: Principal,
    receipts: Receipts,
}

/// Where [`Verifier::admit_now`] stopped.
enum AdmitNow<'a> {
    /// Every policy admitted the request without waiting.
    Admitted(Receipts),
    /// A policy waits, or refused: the rest is [`Verifier::admit_later`]'s.
    Waiting(AdmitRest<'a>),
}

/// The admit steps left after [`Verifier::admit_now`]: the policy it stopped at, that
/// policy's answer, and what the earlier ones spent.
struct AdmitRest<'a> {
    index: usize,
    answer: Admit<'a>,
    receipts: Receipts,
}

/// What the admit steps of one accepted request spent, by policy: what
/// [`Verifier::refund`] gives back if a later step refuses the request. Empty when no policy
/// spent anything (no rate limit, or a limiter that failed open), and then there is nothing
/// to refund.
#[derive(Debug, Default)]
pub struct Receipts(Vec<Admitted>);

impl Receipts {
    /// Keeps what the policy at `index` says it spent; an admission that spent nothing
    /// leaves nothing to refund.
    fn keep(&mut self, index: usize, mut admission: Admitted) {
        if !admission.is_empty() {
            admission.policy = index;
            self.0.push(admission);
        }
    }

    /// Whether no admit step spent anything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Verified {
    /// The principal.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The principal, and nothing else.
    #[inline]
    pub fn into_principal(self) -> Principal {
        self.principal
    }

    /// The principal and the admit steps' receipts, for a front end that may refuse the
    /// request later and must then [`refund`](Verifier::refund) it.
    pub fn into_parts(self) -> (Principal, Receipts) {
        (self.principal, self.receipts)
    }

    /// The first detail of type `T` an admit step attached ([`Admitted::with_detail`]).
    pub fn detail<T: std::any::Any>(&self) -> Option<&T> {
        self.receipts.0.iter().find_map(Admitted::detail)
    }
}

impl<S: TokenStore> Verifier<S> {
    /// Begins verifying one request: runs every policy's
    /// [`before_lookup`](Policy::before_lookup), the verifier's own and then `extra` (a front
    /// end's, such as the middleware's throttle). A refusal here is audited and observed, and
    /// returned; nothing has been parsed, hashed or looked up.
    ///
    /// For front ends; [`verify_request`](Self::verify_request) is `begin` then
    /// [`finish`](Self::finish) with no extra policies. Pass the same `extra` to `finish` or
    /// `refuse`.
    ///
    /// ```
    /// use apitoken::{MemoryStore, NewToken, Owner, RequestInfo, ScopeRequirement, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let token = verifier.issuer().issue(NewToken::new("ci", Owner::new("team-1")?)).await?.token;
    ///
    /// let info = RequestInfo::new().client_ip(Some("192.0.2.7".parse()?));
    /// let verification = verifier.begin(info, &[])?;
    /// // … read the credentials from the request; here they are at hand …
    /// let verified = verifier
    ///     .finish(verification, &[], token.expose_secret(), &ScopeRequirement::none())
    ///     .await?;
    /// assert_eq!(verified.principal().owner().as_str(), "team-1");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    #[inline(always)]
    pub fn begin(
        &self,
        request: RequestInfo,
        extra: &[Arc<dyn Policy>],
    ) -> Result<Verification, AuthError> {
        let mut verification = Verification {
            request,
            pending: Vec::new(),
        };
        if self.no_policies(extra) {
            return Ok(verification);
        }
        for policy in self.policies(extra) {
            match policy.before_lookup(&verification.request) {
                Ok(pending) if pending.is_none() => {}
                Ok(pending) => verification.pending.push(pending),
                Err(error) => {
                    self.audit_refused(&error, None, request.client_ip);
                    self.observe(verification, extra, &Outcome::refused(&error));
                    return Err(error);
                }
            }
        }
        Ok(verification)
    }

    /// Ends `verification` with a refusal that happened before any token reached the
    /// verifier (missing or malformed credentials): audited and observed, so audit logs and
    /// policies see every refused request. Returns `error`.
    ///
    /// ```
    /// use apitoken::{AuthError, AuthErrorKind, MemoryStore, RequestInfo, Verifier};
    ///
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let verification = verifier.begin(RequestInfo::new(), &[])?;
    /// let error = verifier.refuse(verification, &[], AuthError::missing_credentials());
    /// assert_eq!(error.kind(), AuthErrorKind::MissingCredentials);
    /// # Ok::<(), AuthError>(())
    /// ```
    pub fn refuse(
        &self,
        verification: Verification,
        extra: &[Arc<dyn Policy>],
        error: AuthError,
    ) -> AuthError {
        self.audit_refused(&error, None, verification.request.client_ip);
        self.observe(verification, extra, &Outcome::refused(&error));
        error
    }

    /// Ends `verification` of a request that carried no credentials, where the front end lets
    /// such requests through (the middleware's `allow_anonymous`): observed as
    /// [`Outcome::anonymous`], not audited (nothing was authenticated or refused).
    pub fn pass(&self, verification: Verification, extra: &[Arc<dyn Policy>]) {
        self.observe(verification, extra, &Outcome::anonymous());
    }

    /// Ends `verification` by verifying `token` against `required`: every step after the
    /// policies' `before_lookup` (the steps are listed in `docs/design.md`), with the verifier's policies and
    /// then `extra`. Audited and observed, whatever the outcome.
    pub async fn finish(
        &self,
        verification: Verification,
        extra: &[Arc<dyn Policy>],
        token: &str,
        required: &ScopeRequirement,
    ) -> Result<Verified, AuthError> {
        // The only await on the common path is the lookup: everything else runs in plain
        // functions, so this future stays small and its poll moves little (each value held
        // across an await is a field of it, copied whenever it is built or moved).
        let inner = &*self.inner;
        let checked = match inner.authenticators.iter().find(|a| a.recognises(token)) {
            Some(authenticator) => {
                self.authenticate_with(authenticator, extra, token, required, &verification.request)
            }
            None => {
                let looked_up = self.lookup(token).await;
                match self.check_lookup(extra, looked_up, required, &verification.request) {
                    Err(refused) if self.may_be_stale_idle(&refused) => {
                        // Rare, and boxed so that its state is not part of every verification.
                        Box::pin(self.look_up_again(extra, token, required, &verification.request))
                            .await
                    }
                    checked => checked,
                }
            }
        };
        let (principal, now) = match checked {
            Ok(accepted) => accepted,
            Err(refused) => return Err(self.end_refused(verification, extra, refused)),
        };
        // Last: a request refused for anything else spent nothing here.
        let request = &verification.request;
        let admitted = if self.no_policies(extra) {
            Ok(Receipts::default())
        } else {
            match self.admit_now(extra, &principal, request) {
                AdmitNow::Admitted(receipts) => Ok(receipts),
                // A policy that waits (a round trip to Redis) or a refusal after another policy
                // spent: rare, and boxed so that its state is not part of every verification.
                AdmitNow::Waiting(rest) => {
                    Box::pin(self.admit_later(extra, &principal, request, rest)).await
                }
            }
        };
        match admitted {
            Ok(receipts) => Ok(self.end_accepted(verification, extra, principal, now, receipts)),
            Err(error) => {
                self.audit_refused(&error, Some(principal.record()), request.client_ip);
                self.observe(
                    verification,
                    extra,
                    &Outcome::refused_after(&principal, &error),
                );
                Err(error)
            }
        }
    }

    /// Whether an idle refusal may rest on a record read before a flush: the flush wrote the
    /// last use to the store and took it out of the buffer between the store read and the
    /// idle check, so the check saw it in neither place.
    fn may_be_stale_idle(&self, refused: &Refused) -> bool {
        refused.error.reason() == Some(RejectReason::Idle) && self.inner.last_used.is_some()
    }

    /// The lookup and its checks once more, for an idle refusal that
    /// [`may_be_stale_idle`](Self::may_be_stale_idle): the buffer was asked before this store
    /// read, and a use leaves the buffer only once it is written, so this read holds any use
    /// the first check missed. The whole lookup, not only the record: the token may have been
    /// rotated or revoked meanwhile.
    async fn look_up_again(
        &self,
        extra: &[Arc<dyn Policy>],
        token: &str,
        required: &ScopeRequirement,
        request: &RequestInfo,
    ) -> Result<(Principal, DateTime<Utc>), Refused> {
        let looked_up = self.lookup(token).await;
        self.check_lookup(extra, looked_up, required, request)
    }

    /// The admit steps, as far as they decide without waiting.
    fn admit_now<'a>(
        &'a self,
        extra: &'a [Arc<dyn Policy>],
        principal: &'a Principal,
        request: &'a RequestInfo,
    ) -> AdmitNow<'a> {
        let mut receipts = Receipts::default();
        for (index, policy) in self.policies(extra).enumerate() {
            let answer = match policy.admit(principal, request) {
                Admit::Now(answer) => answer,
                later @ Admit::Later(_) => {
                    return AdmitNow::Waiting(AdmitRest {
                        index,
                        answer: later,
                        receipts,
                    });
                }
            };
            match answer {
                Ok(admission) => receipts.keep(index, admission),
                Err(error) => {
                    return AdmitNow::Waiting(AdmitRest {
                        index,
                        answer: Admit::Now(Err(error)),
                        receipts,
                    });
                }
            }
        }
        AdmitNow::Admitted(receipts)
    }

    /// The admit steps from the one [`admit_now`](Self::admit_now) stopped at: its answer
    /// awaited, the later policies asked, and on a refusal what earlier ones spent refunded.
    async fn admit_later<'a>(
        &'a self,
        extra: &'a [Arc<dyn Policy>],
        principal: &'a Principal,
        request: &'a RequestInfo,
        rest: AdmitRest<'a>,
    ) -> Result<Receipts, AuthError> {
        let AdmitRest {
            index: first,
            answer,
            mut receipts,
        } = rest;
        let mut answer = Some(answer);
        for (index, policy) in self.policies(extra).enumerate().skip(first) {
            // The first policy's answer was asked for already; ask it only once.
            let admit = match answer.take() {
                Some(admit) => admit,
                None => policy.admit(principal, request),
            };
            let answer = match admit {
                Admit::Now(answer) => answer,
                Admit::Later(future) => future.await,
            };
            match answer {
                Ok(admission) => receipts.keep(index, admission),
                Err(error) => {
                    // Refused after earlier policies spent: they give it back, so a request
                    // one limit refuses costs nothing under another.
                    self.refund(extra, principal, request, &receipts).await;
                    return Err(error);
                }
            }
        }
        Ok(receipts)
    }

    /// Ends an accepted request: last use noted, audited, observed.
    #[inline(always)]
    fn end_accepted(
        &self,
        verification: Verification,
        extra: &[Arc<dyn Policy>],
        principal: Principal,
        now: DateTime<Utc>,
        receipts: Receipts,
    ) -> Verified {
        if let Some(last_used) = &self.inner.last_used
            && principal.credential_kind() == CredentialKind::ApiKey
        {
            // Memory only: written later by `flush_last_used`, never on this path. The time
            // the record's limits were checked at: one clock read a verification.
            last_used.note(principal.record().id, now);
        }
        self.audit_accepted(&principal, verification.request.client_ip);
        self.observe(verification, extra, &Outcome::accepted(&principal));
        Verified {
            principal,
            receipts,
        }
    }

    /// Ends a request refused before the admit steps: audited, observed.
    #[inline(always)]
    fn end_refused(
        &self,
        verification: Verification,
        extra: &[Arc<dyn Policy>],
        refused: Refused,
    ) -> AuthError {
        let Refused { error, record } = refused;
        self.audit_refused(&error, record.as_deref(), verification.request.client_ip);
        self.observe(verification, extra, &Outcome::refused(&error));
        error
    }

    /// Gives back what the admit steps spent for `principal`'s request, which a later step
    /// refused (a route's [`RequireScopesLayer`](crate::middleware::RequireScopesLayer)):
    /// each policy that left a receipt is asked for its [`refund`](Policy::refund), with that
    /// receipt. Pass the same `extra` as to [`finish`](Self::finish), and each request's
    /// receipts once.
    pub async fn refund(
        &self,
        extra: &[Arc<dyn Policy>],
        principal: &Principal,
        request: &RequestInfo,
        receipts: &Receipts,
    ) {
        for receipt in &receipts.0 {
            let Some(policy) = self.policies(extra).nth(receipt.policy) else {
                continue;
            };
            if let Some(refund) = policy.refund(principal, request, receipt) {
                refund.await;
            }
        }
    }

    /// Whether no policy runs at all (a plain [`verify`](Self::verify) on a verifier with
    /// none of its own): every policy step is then skipped, not looped over.
    fn no_policies(&self, extra: &[Arc<dyn Policy>]) -> bool {
        self.inner.policies.is_empty() && extra.is_empty()
    }

    fn policies<'a>(
        &'a self,
        extra: &'a [Arc<dyn Policy>],
    ) -> impl Iterator<Item = &'a dyn Policy> {
        self.inner
            .policies
            .iter()
            .chain(extra)
            .map(|policy| &**policy)
    }

    #[inline(always)]
    fn observe(
        &self,
        verification: Verification,
        extra: &[Arc<dyn Policy>],
        outcome: &Outcome<'_>,
    ) {
        if !verification.pending.is_empty() {
            for pending in verification.pending {
                pending.settle(outcome);
            }
        }
        if !self.no_policies(extra) {
            for policy in self.policies(extra) {
                policy.observe(outcome);
            }
        }
    }

    /// The principal of a token `authenticator` recognised, checked up to and including
    /// scopes, and the time it was checked at.
    fn authenticate_with(
        &self,
        authenticator: &Arc<dyn Authenticator>,
        extra: &[Arc<dyn Policy>],
        token: &str,
        required: &ScopeRequirement,
        request: &RequestInfo,
    ) -> Result<(Principal, DateTime<Utc>), Refused> {
        let now = self.inner.clock.now();
        let (record, kind) = authenticator
            .authenticate(token, now)
            .map_err(Refused::early)?
            .into_parts();
        // It ends when it says; it has no lifetime or idle limit of the verifier's.
        let expiry = record.expires_at;
        self.admit_record(extra, Arc::new(record), expiry, kind, required, request)
            .map(|principal| (principal, now))
    }

    /// The principal of the record the lookup found, checked up to and including scopes,
    /// and the time it was checked at; no audit event, no last-use note.
    #[inline(always)]
    fn check_lookup(
        &self,
        extra: &[Arc<dyn Policy>],
        looked_up: Result<Lookup, StoreError>,
        required: &ScopeRequirement,
        request: &RequestInfo,
    ) -> Result<(Principal, DateTime<Utc>), Refused> {
        let inner = &*self.inner;
        let record = match looked_up {
            Ok(Lookup::Matched(record)) => record,
            Ok(Lookup::Missed {
                record: Some(record),
                presented_id,
            }) => {
                self.balance_early_refusal(Some(&record), presented_id.as_ref(), required);
                return Err(Refused {
                    error: AuthError::invalid_token(RejectReason::WrongSecret, presented_id),
                    record: Some(record),
                });
            }
            Ok(Lookup::Missed {
                record: None,
                presented_id,
            }) => {
                self.balance_early_refusal(None, presented_id.as_ref(), required);
                return Err(Refused::early(AuthError::invalid_token(
                    RejectReason::UnknownToken,
                    presented_id,
                )));
            }
            Ok(Lookup::Malformed(reason)) => {
                return Err(Refused::early(AuthError::invalid_token(reason, None)));
            }
            Err(err) => return Err(Refused::early(AuthError::store_unavailable(err))),
        };

        let now = inner.clock.now();
        let ends = inner.ends(&record);
        let reason = if record.is_revoked() {
            Some(RejectReason::Revoked)
        } else {
            match ends {
                Ends { own: Some(end), .. } if end <= now => Some(RejectReason::Expired),
                Ends {
                    lifetime: Some(end),
                    ..
                } if end <= now => Some(RejectReason::LifetimeExceeded),
                Ends {
                    idle: Some(end), ..
                } if end <= now => Some(RejectReason::Idle),
                _ => None,
            }
        };
        if let Some(reason) = reason {
            self.balance_refusal(Some(&record.id), required);
            return Err(Refused {
                error: AuthError::invalid_token(reason, Some(record.id)),
                record: Some(record),
            });
        }
        let expiry = store_expiry(inner, ends, now);
        self.admit_record(
            extra,
            record,
            expiry,
            CredentialKind::ApiKey,
            required,
            request,
        )
        .map(|principal| (principal, now))
    }

    /// The policies' `on_record` steps (the verifier's, the allowlist first, then `extra`)
    /// and the scope check, for a record from the store or an authenticator.
    #[inline(always)]
    fn admit_record(
        &self,
        extra: &[Arc<dyn Policy>],
        record: Arc<TokenRecord>,
        expiry: Option<DateTime<Utc>>,
        kind: CredentialKind,
        required: &ScopeRequirement,
        request: &RequestInfo,
    ) -> Result<Principal, Refused> {
        let inner = &*self.inner;
        // The allowlist first and always, outside the list: a forgotten line must not open a
        // restricted token, and a verifier with no other policy makes no dynamic call for it.
        let checked = AddressAllowlist.on_record(&record, request).and_then(|()| {
            self.policies(extra)
                .try_for_each(|policy| policy.on_record(&record, request))
        });
        if let Err(error) = checked {
            if kind == CredentialKind::ApiKey {
                self.balance_refusal(Some(&record.id), required);
            }
            return Err(Refused {
                error,
                record: Some(record),
            });
        }
        if let Err(missing) = inner.policy.check(&record.scopes, required) {
            return Err(Refused {
                error: AuthError::insufficient_scope(missing, record.id),
                record: Some(record),
            });
        }
        Ok(Principal::new(expiry, record, inner.policy.clone(), kind))
    }
}

/// A stored token's effective expiry: the earliest of its limits, where an idle limit runs
/// from this use (about to be noted) when it is accepted.
fn store_expiry<S>(
    inner: &super::Inner<S>,
    mut ends: Ends,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if let Some(idle) = inner.max_idle {
        ends.idle = now.checked_add_signed(idle);
    }
    ends.earliest()
}
