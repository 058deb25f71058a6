//! The verifier: token text in, [`Principal`] or [`AuthError`] out. The heart of the core.
//!
//! The steps, in order (later steps run only if earlier ones pass):
//!
//! 1. **Policies, before lookup** ([`Policy::before_lookup`]): the failure throttle turns a
//!    flooding address away here, before any hashing.
//! 2. **Authenticators**: a token one of them recognises (a JWT) is checked by it alone, with
//!    no store; its record goes on to step 7.
//! 3. **Parse** with each accepted [`TokenFormat`]: shape, id and checksum. No store access, so
//!    a made-up or mistyped token costs microseconds and no round trip.
//! 4. **Hash** the secret, always, before the lookup.
//! 5. **Look up** the record by id (or by hash, for formats without an id), and **compare** the
//!    hashes in constant time. An unknown id is compared against a dummy hash, so an unknown id
//!    and a wrong secret take the same path and the same time. Steps 3 to 5 run for each format
//!    that parses the text, in order, until a secret matches, so one format cannot shadow
//!    another (see [`VerifierBuilder::also_accept`]).
//! 6. **Revoked?** then **expired?** (`expires_at <= now`, the optional maximum lifetime
//!    counted from `created_at`, and the optional maximum idle time counted from the last use).
//! 7. **Policies, on the record** ([`Policy::on_record`]): the [`AddressAllowlist`] refuses a
//!    token with an allowlist from anywhere else (as an invalid token: no hint that it exists).
//! 8. **Scopes**: the [`ScopePolicy`] checks the [`ScopeRequirement`].
//! 9. **Policies, admit** ([`Policy::admit`]): the rate limit, last, so a request refused for
//!    anything else spends no budget.
//! 10. **Last used**: noted in memory, never written on the request path. The notes are
//!     written in one batch per flush interval (one minute by default), by
//!     [`Verifier::flush_last_used`] or the task `Verifier::spawn_last_used_flusher` starts
//!     (feature `tokio`), so a hot token costs one store write per interval, not one per
//!     request; see [`last_used`](crate::last_used).
//! 11. **Audit and observe**: every outcome is an [`AuditEvent`] (a `tracing` event with token
//!     id, owner, client address and reason, never the secret, and a call to the configured
//!     [`AuditSink`]), and every policy's [`Policy::observe`] sees it.
//!
//! The verifier is core: it uses the token values, the store trait and the other core modules
//! (`error`, `audit`, `clock`, `issuer`, `last_used`, `policy`, `authenticator`), and nothing
//! of the plug-ins or front ends; no `#[cfg(feature)]` in it. Front ends drive the steps with
//! [`Verifier::begin`] and [`Verifier::finish`].

mod builder;
mod lookup;
mod pipeline;
mod principal;
mod revocation;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use subtle::ConstantTimeEq;

pub use builder::{VerifierBuildError, VerifierBuilder};
pub use pipeline::{Receipts, Verification, Verified};
pub(crate) use principal::PolicyRef;
pub use principal::{CredentialKind, Principal, RequestInfo};

use crate::audit::{self, AuditEvent, AuditOutcome, AuditSink};
use crate::authenticator::Authenticator;
use crate::clock::Clock;
use crate::error::AuthError;
use crate::format::TokenFormat;
use crate::issuer::Issuer;
use crate::last_used::LastUsedBuffer;
#[cfg(doc)]
use crate::policy::AddressAllowlist;
use crate::policy::Policy;
use crate::record::TokenRecord;
use crate::scope::{ScopePolicy, ScopeRequirement};
use crate::secret::{SecretHash, SecretHasher};
use crate::store::{StoreError, TokenStore};

/// Checks tokens against a [`TokenStore`].
///
/// Cheap to clone (one `Arc`); share one per service. Build one with
/// [`Verifier::builder`].
///
/// ```
/// use apitoken::{MemoryStore, NewToken, Owner, ScopeRequirement, Verifier, AuthErrorKind};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let verifier = Verifier::builder(MemoryStore::new()).build();
/// let issued = verifier
///     .issuer()
///     .issue(NewToken::new("CI", Owner::new("team-1")?).scopes(["vps:read"])?)
///     .await?;
/// let token = issued.token.expose_secret();
///
/// let principal = verifier.verify(token, &ScopeRequirement::all(["vps:read"])?).await?;
/// assert_eq!(principal.name(), "CI");
///
/// let err = verifier.verify(token, &ScopeRequirement::all(["vps:write"])?).await.unwrap_err();
/// assert_eq!(err.kind(), AuthErrorKind::InsufficientScope);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct Verifier<S> {
    inner: Arc<Inner<S>>,
}

pub(crate) struct Inner<S> {
    pub(crate) store: S,
    /// Never empty; the first is the one tokens are issued in.
    pub(crate) formats: Vec<TokenFormat>,
    pub(crate) hasher: SecretHasher,
    pub(crate) clock: Arc<dyn Clock>,
    /// Decided once here: which kind each principal's copy is.
    policy: PolicyRef,
    max_lifetime: Option<TimeDelta>,
    max_idle: Option<TimeDelta>,
    /// `None` when no sink is configured.
    audit: Option<Arc<dyn AuditSink>>,
    /// `None` when last use is not tracked.
    last_used: Option<LastUsedBuffer>,
    /// Compared against when the id is unknown, so that path does the same work.
    dummy_hash: SecretHash,
    /// What an unknown id's refusal runs the record checks' reads on.
    stand_in: TokenRecord,
    /// Which refusals become log lines.
    refusal_log: audit::RefusalLog,
    /// The most scopes and allowlist entries a token may be issued with.
    pub(crate) max_scopes: usize,
    pub(crate) max_allowed_ips: usize,
    /// The longest token any format or authenticator accepts.
    max_token_len: usize,
    /// The builder's, in order. The [`AddressAllowlist`] is not among them: it runs first on
    /// every record, called directly (`admit_record`).
    policies: Vec<Arc<dyn Policy>>,
    authenticators: Vec<Arc<dyn Authenticator>>,
}

/// When a record's limits run out; `None` for a limit that does not apply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ends {
    /// Its own `expires_at`.
    own: Option<DateTime<Utc>>,
    /// `created_at` plus the maximum lifetime.
    lifetime: Option<DateTime<Utc>>,
    /// The last use (flushed or only noted) plus the maximum idle time.
    idle: Option<DateTime<Utc>>,
}

impl Ends {
    pub(crate) fn earliest(self) -> Option<DateTime<Utc>> {
        [self.own, self.lifetime, self.idle]
            .into_iter()
            .flatten()
            .min()
    }
}

impl<S> Inner<S> {
    /// Every limit of `record`. A limit past the end of time never runs out.
    pub(crate) fn ends(&self, record: &TokenRecord) -> Ends {
        let idle = self.max_idle.and_then(|max_idle| {
            let noted = self.last_used.as_ref().and_then(|b| b.noted(&record.id));
            let last = record.last_used_at.max(noted).unwrap_or(record.created_at);
            last.checked_add_signed(max_idle)
        });
        Ends {
            own: record.expires_at,
            lifetime: self
                .max_lifetime
                .and_then(|max| record.created_at.checked_add_signed(max)),
            idle,
        }
    }

    /// Whether `record` would pass every check but the secret, address and scopes at `now`.
    pub(crate) fn is_active(&self, record: &TokenRecord, now: DateTime<Utc>) -> bool {
        !record.is_revoked() && self.ends(record).earliest().is_none_or(|end| end > now)
    }
}

/// A hold on a verifier that does not keep it alive, as [`std::sync::Weak`] is to an `Arc`:
/// for background work that should end once the application has dropped its verifier (the
/// last-use flusher holds one). Made by [`Verifier::downgrade`].
///
/// ```
/// use apitoken::{MemoryStore, Verifier};
///
/// let verifier = Verifier::builder(MemoryStore::new()).build();
/// let weak = verifier.downgrade();
/// assert!(weak.upgrade().is_some());
/// drop(verifier);
/// assert!(weak.upgrade().is_none());
/// ```
pub struct WeakVerifier<S>(std::sync::Weak<Inner<S>>);

impl<S> WeakVerifier<S> {
    /// The verifier, while any clone of it is alive.
    pub fn upgrade(&self) -> Option<Verifier<S>> {
        self.0.upgrade().map(|inner| Verifier { inner })
    }

    /// How many holds keep the verifier alive: its clones, and the issuers made from it.
    /// Zero once it is gone. (The last-use flusher abandons a hung write when its own hold is
    /// the only one left.)
    ///
    /// ```
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let weak = verifier.downgrade();
    /// let issuer = verifier.issuer();
    /// assert_eq!(weak.holders(), 2);
    /// drop(verifier);
    /// assert_eq!(weak.holders(), 1, "the issuer holds it");
    /// drop(issuer);
    /// assert_eq!(weak.holders(), 0);
    /// assert!(weak.upgrade().is_none());
    /// ```
    pub fn holders(&self) -> usize {
        self.0.strong_count()
    }
}

impl<S> Clone for WeakVerifier<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S> fmt::Debug for WeakVerifier<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakVerifier")
            .field("alive", &(self.0.strong_count() > 0))
            .finish()
    }
}

impl<S> Verifier<S> {
    /// A [`WeakVerifier`]: a hold that does not keep this verifier (its store, its buffers)
    /// alive.
    pub fn downgrade(&self) -> WeakVerifier<S> {
        WeakVerifier(Arc::downgrade(&self.inner))
    }
}

impl<S> Clone for Verifier<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> fmt::Debug for Verifier<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("formats", &self.inner.formats)
            .field("hasher", &self.inner.hasher)
            .field("policy", &self.inner.policy)
            .field("max_lifetime", &self.inner.max_lifetime)
            .field("max_idle", &self.inner.max_idle)
            .field("last_used", &self.inner.last_used)
            .field("policies", &self.inner.policies.len())
            .field("authenticators", &self.inner.authenticators.len())
            .finish_non_exhaustive()
    }
}

impl<S: TokenStore> Verifier<S> {
    /// Verifies `token` and checks that it satisfies `required`.
    pub async fn verify(
        &self,
        token: &str,
        required: &ScopeRequirement,
    ) -> Result<Principal, AuthError> {
        self.verify_request(token, required, &RequestInfo::default())
            .await
    }

    /// Verifies `token` for a request described by `info` (its client address, for
    /// allowlists and audit events), and checks that it satisfies `required`: every step of
    /// `docs/design.md` lists, with the verifier's own policies. (The middleware runs the same
    /// steps through [`begin`](Self::begin) and [`finish`](Self::finish), with its rate limit
    /// and throttle as further policies.)
    pub async fn verify_request(
        &self,
        token: &str,
        required: &ScopeRequirement,
        info: &RequestInfo,
    ) -> Result<Principal, AuthError> {
        let verification = self.begin(*info, &[])?;
        self.finish(verification, &[], token, required)
            .await
            .map(Verified::into_principal)
    }

    /// Verifies `token` without a scope requirement; check scopes later with
    /// [`Principal::require`].
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify(token, &ScopeRequirement::none()).await
    }

    /// Emits the audit event of a request refused with `error`, whose record (if the token
    /// named one) is `record`.
    fn audit_refused(
        &self,
        error: &AuthError,
        record: Option<&TokenRecord>,
        client_ip: Option<IpAddr>,
    ) {
        let inner = &*self.inner;
        // Built only for someone who reads it: a configured sink, or a `tracing` subscriber
        // that wants this level. Otherwise nothing is allocated and the clock is not read.
        if inner.audit.is_none() && !audit::trace_enabled(false) {
            return;
        }
        self.emit(AuditEvent {
            at: inner.clock.now(),
            outcome: AuditOutcome::Refused {
                kind: error.kind(),
                reason: error.reason(),
            },
            token_id: error.token_id().copied(),
            owner: record.map(|r| r.owner.clone()),
            client_ip,
        });
    }

    /// Emits the audit event of an accepted request.
    #[inline]
    fn audit_accepted(&self, principal: &Principal, client_ip: Option<IpAddr>) {
        let inner = &*self.inner;
        if inner.audit.is_none() && !audit::trace_enabled(true) {
            return;
        }
        self.emit(AuditEvent {
            at: inner.clock.now(),
            outcome: AuditOutcome::Accepted,
            token_id: Some(*principal.token_id()),
            owner: Some(principal.owner().clone()),
            client_ip,
        });
    }

    fn emit(&self, event: AuditEvent) {
        self.inner.refusal_log.trace(&event);
        if let Some(sink) = &self.inner.audit {
            sink.record(&event);
        }
    }

    /// The record `token` names if the token is genuine and active (not revoked, expired,
    /// too old or idle), ignoring client address, policies and scopes; `None` otherwise. For
    /// a front end that looks at a token without using it (OAuth revocation and
    /// introspection): no audit event, no last-use note, no policy. The same steps as a
    /// verification up to the expiry checks (hash first, dummy compare on a miss). Tokens an
    /// [`Authenticator`] recognises are not looked at (`None`): they have no record.
    ///
    /// ```
    /// use apitoken::{MemoryStore, NewToken, Owner, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let issued = verifier.issuer().issue(NewToken::new("ci", Owner::new("team-1")?)).await?;
    /// let record = verifier.inspect(issued.token.expose_secret()).await?.expect("active");
    /// assert_eq!(record.id, issued.record.id);
    /// assert!(verifier.inspect("not-a-token").await?.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn inspect(&self, token: &str) -> Result<Option<Arc<TokenRecord>>, StoreError> {
        let inner = &*self.inner;
        if inner.authenticators.iter().any(|a| a.recognises(token)) {
            return Ok(None);
        }
        Ok(match self.lookup(token).await? {
            lookup::Lookup::Matched(record) => {
                Some(record).filter(|r| inner.is_active(r, inner.clock.now()))
            }
            lookup::Lookup::Missed { .. } | lookup::Lookup::Malformed(_) => None,
        })
    }

    /// An [`Issuer`] that creates tokens in this verifier's first format, hashed with its
    /// hasher, in its store.
    pub fn issuer(&self) -> Issuer<S> {
        Issuer::new(Arc::clone(&self.inner))
    }
}

impl<S> Verifier<S> {
    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    pub(crate) fn last_used_buffer(&self) -> Option<&LastUsedBuffer> {
        self.inner.last_used.as_ref()
    }

    /// The current time by the verifier's clock: what [`revoke`](Self::revoke) and
    /// [`revoke_owner`](Self::revoke_owner) use, and what to compare a record's times with
    /// (expiry, last use), so tests that move the clock see consistent times.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// The scope policy.
    pub fn scope_policy(&self) -> &ScopePolicy {
        &self.inner.policy
    }

    /// Whether `record` would pass every check but the secret, address, policies and scopes
    /// now: not revoked, not expired, within the maximum lifetime and idle time.
    ///
    /// ```
    /// use apitoken::{MemoryStore, NewToken, Owner, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let issued = verifier.issuer().issue(NewToken::new("ci", Owner::new("team-1")?)).await?;
    /// assert!(verifier.is_active(&issued.record));
    /// let mut revoked = issued.record.clone();
    /// revoked.revoked_at = Some(verifier.now());
    /// assert!(!verifier.is_active(&revoked));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn is_active(&self, record: &TokenRecord) -> bool {
        self.inner.is_active(record, self.inner.clock.now())
    }

    /// The hasher: for secrets a front end keeps outside the token store (OAuth refresh
    /// tokens and codes), hashed the same way, pepper included.
    pub fn hasher(&self) -> &SecretHasher {
        &self.inner.hasher
    }

    /// Whether the `presented` hash matches the `stored` one, compared in constant time;
    /// with no stored hash (an unknown id), the comparison is made against a dummy hash, so
    /// a miss costs what a wrong secret does. For a front end's own secrets (OAuth refresh
    /// tokens and codes).
    ///
    /// ```
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let stored = verifier.hasher().hash(b"s3cret");
    /// assert!(verifier.secret_matches(&verifier.hasher().hash(b"s3cret"), Some(&stored)));
    /// assert!(!verifier.secret_matches(&verifier.hasher().hash(b"guess"), Some(&stored)));
    /// assert!(!verifier.secret_matches(&stored, None));
    /// ```
    pub fn secret_matches(&self, presented: &SecretHash, stored: Option<&SecretHash>) -> bool {
        let expected = stored.unwrap_or(&self.inner.dummy_hash);
        let equal: bool = presented.ct_eq(expected).into();
        equal && stored.is_some()
    }

    /// Whether this verifier parses tokens of `format` (one of its formats equals it).
    pub fn accepts(&self, format: &TokenFormat) -> bool {
        self.inner.formats.contains(format)
    }

    /// The configured [`Authenticator`] of type `A`, if there is one: how a front end reaches
    /// the concrete authenticator it configured (OAuth introspection reads a JWT's claims
    /// through the JWT validator).
    pub fn authenticator<A: Authenticator>(&self) -> Option<&A> {
        self.inner.authenticators.iter().find_map(|a| {
            let any: &dyn std::any::Any = &**a;
            any.downcast_ref::<A>()
        })
    }

    /// The longest credential this verifier can accept, in bytes: the largest of its
    /// formats' bound ([`MAX_TOKEN_LEN`](crate::format::MAX_TOKEN_LEN)) and its
    /// authenticators' ([`Authenticator::max_token_len`]). Front ends refuse longer
    /// credentials before reading them.
    pub fn max_token_len(&self) -> usize {
        self.inner.max_token_len
    }

    /// The longest `token` may be, judged by its text: an authenticator's bound when one
    /// recognises it (a JWT carries its claims, so it may be longer), else the formats'
    /// [`MAX_TOKEN_LEN`](crate::format::MAX_TOKEN_LEN). Front ends refuse a longer credential
    /// on its length alone, before any hashing.
    ///
    /// ```
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// assert_eq!(verifier.max_len_of(b"anything"), apitoken::format::MAX_TOKEN_LEN);
    /// ```
    pub fn max_len_of(&self, token: &[u8]) -> usize {
        let formats = crate::format::MAX_TOKEN_LEN;
        // Longer than every bound: refused on its length, without reading it.
        if self.inner.authenticators.is_empty() || token.len() > self.max_token_len() {
            return formats;
        }
        let Ok(text) = std::str::from_utf8(token) else {
            return formats;
        };
        self.inner
            .authenticators
            .iter()
            .filter(|a| a.recognises(text))
            .map(|a| a.max_token_len())
            .fold(formats, usize::max)
    }
}

/// A refusal, with the record the token named when one was found (for the audit event's
/// owner, read only when an event is emitted).
struct Refused {
    error: AuthError,
    record: Option<Arc<TokenRecord>>,
}

impl Refused {
    fn early(error: AuthError) -> Self {
        Self {
            error,
            record: None,
        }
    }
}
