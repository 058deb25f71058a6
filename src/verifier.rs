//! The verifier: token text in, [`Principal`] or [`AuthError`] out.
//!
//! The steps, in order (later steps run only if earlier ones pass):
//!
//! 1. **Parse** with each accepted [`TokenFormat`]: shape, id and checksum. No store access, so
//!    a made-up or mistyped token costs microseconds and no round trip.
//! 2. **Hash** the secret, always, before the lookup.
//! 3. **Look up** the record by id (or by hash, for formats without an id).
//! 4. **Compare** the hashes in constant time. An unknown id is compared against a dummy hash,
//!    so an unknown id and a wrong secret take the same path and the same time. Steps 2 to 4
//!    run for each format that parses the text, in order, until a secret matches, so one
//!    format cannot shadow another (see [`VerifierBuilder::also_accept`]).
//! 5. **Revoked?** then **expired?** (`expires_at <= now`, the optional maximum lifetime
//!    counted from `created_at`, and the optional maximum idle time counted from the last use).
//! 6. **Client address**: a token with an allowlist is refused from anywhere else (as an
//!    invalid token: no hint that it exists).
//! 7. **Scopes**: the [`ScopePolicy`] checks the [`ScopeRequirement`].
//! 8. **Last used**: noted in memory, never written on the request path. The notes are
//!    written in one batch per flush interval (one minute by default), by
//!    [`Verifier::flush_last_used`] or the task [`Verifier::spawn_last_used_flusher`] starts,
//!    so a hot token costs one store write per interval, not one per request; see
//!    [`last_used`](crate::last_used).
//!
//! Every outcome is an [`AuditEvent`]: a `tracing` event (token id, owner, client address and
//! reason, never the secret) and a call to the configured [`AuditSink`]. The precise reason is
//! also kept in the [`AuthError`].

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use subtle::ConstantTimeEq;

use crate::audit::{self, AuditEvent, AuditOutcome, AuditSink};
use crate::clock::{Clock, SystemClock};
use crate::error::{AuthError, RejectReason};
use crate::format::{FormatError, TokenFormat};
use crate::id::TokenId;
use crate::issuer::Issuer;
use crate::last_used::{DEFAULT_FLUSH_INTERVAL, DEFAULT_MAX_PENDING, LastUsedBuffer};
use crate::record::{Metadata, Owner, TokenRecord};
use crate::scope::{ScopePolicy, ScopeRequirement, ScopeSet};
use crate::secret::{SecretHash, SecretHasher};
use crate::store::TokenStore;

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
    policy: Arc<ScopePolicy>,
    max_lifetime: Option<TimeDelta>,
    max_idle: Option<TimeDelta>,
    /// `None` when no sink is configured.
    audit: Option<Arc<dyn AuditSink>>,
    /// `None` when last use is not tracked.
    last_used: Option<LastUsedBuffer>,
    /// Compared against when the id is unknown, so that path does the same work.
    dummy_hash: SecretHash,
    /// Which refusals become log lines.
    refusal_log: audit::RefusalLog,
    /// The most scopes and allowlist entries a token may be issued with.
    pub(crate) max_scopes: usize,
    pub(crate) max_allowed_ips: usize,
    /// Checks tokens with a JWT's shape, when configured.
    #[cfg(feature = "jwt")]
    jwt: Option<crate::jwt::JwtValidator>,
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
            .finish_non_exhaustive()
    }
}

impl<S: TokenStore> Verifier<S> {
    /// Starts configuring a verifier over `store`.
    pub fn builder(store: S) -> VerifierBuilder<S> {
        VerifierBuilder {
            store,
            formats: vec![TokenFormat::canonical()],
            hasher: SecretHasher::sha256(),
            clock: Arc::new(SystemClock),
            policy: ScopePolicy::strict(),
            max_lifetime: None,
            max_idle: None,
            audit: None,
            last_used: true,
            last_used_flush_interval: DEFAULT_FLUSH_INTERVAL,
            last_used_max_pending: DEFAULT_MAX_PENDING,
            max_scopes: crate::issuer::DEFAULT_MAX_SCOPES,
            max_allowed_ips: crate::issuer::DEFAULT_MAX_ALLOWED_IPS,
            #[cfg(feature = "jwt")]
            jwt: None,
        }
    }

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
    /// allowlists and audit events), and checks that it satisfies `required`. (The middleware
    /// runs the same steps, and emits the audit event after its rate limit.)
    pub async fn verify_request(
        &self,
        token: &str,
        required: &ScopeRequirement,
        info: &RequestInfo,
    ) -> Result<Principal, AuthError> {
        let verified = self.verify_unaudited(token, required, info).await;
        self.audit(verified)
    }

    /// [`verify_request`](Self::verify_request) without its audit event, which
    /// [`audit`](Self::audit) emits once the front end's admit step (a rate limit) has
    /// decided, so a request refused there is audited as refused, not accepted.
    pub(crate) async fn verify_unaudited(
        &self,
        token: &str,
        required: &ScopeRequirement,
        info: &RequestInfo,
    ) -> Unaudited {
        Unaudited {
            result: self.verify_unlogged(token, required, info).await,
            client_ip: info.client_ip,
        }
    }

    /// Emits the audit event of `verified` and returns its outcome.
    pub(crate) fn audit(&self, verified: Unaudited) -> Result<Principal, AuthError> {
        let Unaudited { result, client_ip } = verified;
        let inner = &*self.inner;
        // The event is built only for someone who reads it: a configured sink, or a `tracing`
        // subscriber that wants this level. Otherwise nothing is allocated and the clock is not
        // read again.
        let wanted = inner.audit.is_some() || audit::trace_enabled(result.is_ok());
        if !wanted {
            return result.map_err(|refused| refused.error);
        }
        let event = match &result {
            Ok(principal) => AuditEvent {
                at: inner.clock.now(),
                outcome: AuditOutcome::Accepted,
                token_id: Some(*principal.token_id()),
                owner: Some(principal.owner().clone()),
                client_ip,
            },
            Err(Refused { error, record }) => AuditEvent {
                at: inner.clock.now(),
                outcome: AuditOutcome::Refused {
                    kind: error.kind(),
                    reason: error.reason(),
                },
                token_id: error.token_id().copied(),
                owner: record.as_ref().map(|r| r.owner.clone()),
                client_ip,
            },
        };
        inner.refusal_log.trace(&event);
        if let Some(sink) = &inner.audit {
            sink.record(&event);
        }
        result.map_err(|refused| refused.error)
    }

    /// Reports a refusal that happened before any token reached the verifier (missing or
    /// malformed credentials), so audit logs see every refused request.
    pub(crate) fn audit_refusal(&self, err: &AuthError, client_ip: Option<IpAddr>) {
        let event = AuditEvent {
            at: self.inner.clock.now(),
            outcome: AuditOutcome::Refused {
                kind: err.kind(),
                reason: err.reason(),
            },
            token_id: None,
            owner: None,
            client_ip,
        };
        self.inner.refusal_log.trace(&event);
        if let Some(sink) = &self.inner.audit {
            sink.record(&event);
        }
    }

    /// Verifies `token` without a scope requirement; check scopes later with
    /// [`Principal::require`].
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify(token, &ScopeRequirement::none()).await
    }

    async fn verify_unlogged(
        &self,
        token: &str,
        required: &ScopeRequirement,
        info: &RequestInfo,
    ) -> Result<Principal, Refused> {
        let inner = &*self.inner;
        #[cfg(feature = "jwt")]
        if let Some(jwt) = &inner.jwt
            && crate::jwt::has_jwt_shape(token)
        {
            return self.verify_jwt(jwt, token, required);
        }
        let record = match self.lookup(token).await {
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
                _ if !record.allows(info.client_ip) => Some(RejectReason::AddressNotAllowed),
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
        if let Err(missing) = inner.policy.check(&record.scopes, required) {
            return Err(Refused {
                error: AuthError::insufficient_scope(missing, record.id),
                record: Some(record),
            });
        }

        if let Some(last_used) = &inner.last_used {
            // Memory only: written later by `flush_last_used`, never on this path.
            last_used.note(record.id, now);
        }

        Ok(Principal {
            // With an idle limit, it runs from this use, just noted.
            effective_expiry: if inner.max_idle.is_some() {
                inner.ends(&record).earliest()
            } else {
                ends.earliest()
            },
            record,
            policy: PolicyRef::of(&inner.policy),
            credential: CredentialKind::ApiKey,
        })
    }

    /// A JWT access token: checked by the validator against the verifier's clock, then the
    /// scopes as for an API key. No store access, so no revocation, lifetime, idle or
    /// allowlist checks, and no last-use note.
    #[cfg(feature = "jwt")]
    #[allow(clippy::result_large_err)] // `verify_unlogged`'s own result, returned as is.
    fn verify_jwt(
        &self,
        jwt: &crate::jwt::JwtValidator,
        token: &str,
        required: &ScopeRequirement,
    ) -> Result<Principal, Refused> {
        let inner = &*self.inner;
        let claims = jwt
            .validate(token, inner.clock.now())
            .map_err(Refused::early)?;
        let record = Arc::new(claims.to_record());
        if let Err(missing) = inner.policy.check(&record.scopes, required) {
            return Err(Refused {
                error: AuthError::insufficient_scope(missing, record.id),
                record: Some(record),
            });
        }
        Ok(Principal {
            effective_expiry: record.expires_at,
            record,
            policy: PolicyRef::of(&inner.policy),
            credential: CredentialKind::Jwt,
        })
    }

    /// Work on a refusal after the lookup comparable to what a valid token costs after it:
    /// a passing scope check (the requirement against its own scopes: no allocation, whatever
    /// the record holds) and the last-use note (a read of the same buffer shard), so a refused
    /// token is not measurably cheaper than an accepted one.
    fn balance_refusal(&self, id: Option<&TokenId>, required: &ScopeRequirement) {
        let scopes = std::hint::black_box(required.scopes());
        drop(std::hint::black_box(
            self.inner.policy.check(scopes, required),
        ));
        if let (Some(last_used), Some(id)) = (&self.inner.last_used, id) {
            std::hint::black_box(last_used.noted(id));
        }
    }

    /// The same for a refusal before the record's checks (unknown id, wrong secret), which
    /// also skips the clock read and the limits those checks compute.
    fn balance_early_refusal(
        &self,
        record: Option<&TokenRecord>,
        id: Option<&TokenId>,
        required: &ScopeRequirement,
    ) {
        std::hint::black_box(self.inner.clock.now());
        if let Some(record) = record {
            std::hint::black_box(self.inner.ends(record));
        }
        self.balance_refusal(id, required);
    }

    /// Finds the record `token` names. Each format that parses the text gets its own hash,
    /// lookup and constant-time compare, in the order the formats were added, until a secret
    /// matches: the first format that parses does not win on its own, so one format's shape
    /// cannot shadow another's (`tok` before `toklive`, DCT before a canonical token whose id
    /// is all digits). A token no format's record matches costs one hash, one lookup and one
    /// compare per format that parses its text, whether any record exists or not: that
    /// number depends on the text and the configuration only, and is at most the number of
    /// formats.
    async fn lookup(&self, token: &str) -> Result<Lookup, crate::store::StoreError> {
        let inner = &*self.inner;
        let mut best: Option<FormatError> = None;
        let mut first_miss: Option<(Option<TokenId>, Option<Arc<TokenRecord>>)> = None;
        for format in &inner.formats {
            let parsed = match format.parse(token) {
                Ok(parsed) => parsed,
                Err(err) => {
                    best = Some(more_telling(best, err));
                    continue;
                }
            };
            let presented = inner.hasher.hash(parsed.secret().as_bytes());
            let found = match parsed.id() {
                Some(id) => inner.store.get(id).await?,
                None => inner.store.find_by_hash(&presented).await?,
            };
            let expected = found.as_ref().map_or(&inner.dummy_hash, |s| &s.hash);
            let secret_matches: bool = presented.ct_eq(expected).into();
            if let Some(stored) = &found
                && secret_matches
            {
                return Ok(Lookup::Matched(Arc::clone(&stored.record)));
            }
            // The first record found is the one reported (its owner in the audit event), else
            // the first id presented.
            let report = match &first_miss {
                None => true,
                Some((_, None)) => found.is_some(),
                Some((_, Some(_))) => false,
            };
            if report {
                first_miss = Some((parsed.id().copied(), found.map(|s| s.record)));
            }
        }
        Ok(match first_miss {
            Some((presented_id, record)) => Lookup::Missed {
                record,
                presented_id,
            },
            None => Lookup::Malformed(match best.unwrap_or(FormatError::Empty) {
                FormatError::BadChecksum => RejectReason::BadChecksum,
                other => RejectReason::Malformed(other),
            }),
        })
    }

    /// The record `token` names if the token is genuine and active (not revoked, expired,
    /// too old or idle), ignoring client address and scopes; `None` otherwise. No audit event,
    /// no last-use note: OAuth revocation and introspection look at a token, they do not use
    /// it. The same steps as a verification (hash first, dummy compare on a miss).
    #[cfg(feature = "oauth")]
    pub(crate) async fn inspect(
        &self,
        token: &str,
    ) -> Result<Option<Arc<TokenRecord>>, crate::store::StoreError> {
        let inner = &*self.inner;
        Ok(match self.lookup(token).await? {
            Lookup::Matched(record) => {
                Some(record).filter(|r| inner.is_active(r, inner.clock.now()))
            }
            Lookup::Missed { .. } | Lookup::Malformed(_) => None,
        })
    }

    /// Whether `record` would pass every check but the secret, address and scopes now.
    #[cfg(feature = "oauth")]
    pub(crate) fn is_active(&self, record: &TokenRecord) -> bool {
        self.inner.is_active(record, self.inner.clock.now())
    }

    /// The hasher, for secrets kept outside the token store (OAuth refresh tokens and codes).
    #[cfg(feature = "oauth")]
    pub(crate) fn hasher(&self) -> &SecretHasher {
        &self.inner.hasher
    }

    /// The hash an unknown id is compared against.
    #[cfg(feature = "oauth")]
    pub(crate) fn dummy_hash(&self) -> &SecretHash {
        &self.inner.dummy_hash
    }

    /// The JWT validator, when one is configured: OAuth introspection checks the server's own
    /// JWT access tokens with it.
    #[cfg(all(feature = "oauth", feature = "jwt"))]
    pub(crate) fn jwt_validator(&self) -> Option<&crate::jwt::JwtValidator> {
        self.inner.jwt.as_ref()
    }

    /// Whether this verifier parses tokens of `format` (one of its formats equals it).
    #[cfg(feature = "oauth")]
    pub(crate) fn accepts(&self, format: &TokenFormat) -> bool {
        self.inner.formats.contains(format)
    }

    /// An [`Issuer`] that creates tokens in this verifier's first format, hashed with its
    /// hasher, in its store.
    pub fn issuer(&self) -> Issuer<S> {
        Issuer::new(Arc::clone(&self.inner))
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    pub(crate) fn last_used_buffer(&self) -> Option<&LastUsedBuffer> {
        self.inner.last_used.as_ref()
    }

    /// The current time by the verifier's clock; use it for store calls such as
    /// [`TokenStore::revoke`] so tests that move the clock see consistent times.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// The scope policy.
    pub fn scope_policy(&self) -> &ScopePolicy {
        &self.inner.policy
    }
}

/// The scope policy a [`Principal`] checks with: the default strict policy without a shared
/// counter (cloning an `Arc` on every verification makes every verifying thread write one
/// cache line), any other shared.
#[derive(Clone)]
enum PolicyRef {
    Strict,
    Shared(Arc<ScopePolicy>),
}

impl PolicyRef {
    fn of(policy: &Arc<ScopePolicy>) -> Self {
        if **policy == crate::scope::STRICT {
            Self::Strict
        } else {
            Self::Shared(Arc::clone(policy))
        }
    }
}

impl std::ops::Deref for PolicyRef {
    type Target = ScopePolicy;

    fn deref(&self) -> &ScopePolicy {
        match self {
            Self::Strict => &crate::scope::STRICT,
            Self::Shared(policy) => policy,
        }
    }
}

impl fmt::Debug for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        ScopePolicy::fmt(self, f)
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

/// A verification whose audit event is still to be emitted ([`Verifier::audit`]).
pub(crate) struct Unaudited {
    result: Result<Principal, Refused>,
    client_ip: Option<IpAddr>,
}

impl Unaudited {
    /// The principal, if the token was accepted so far.
    pub(crate) fn principal(&self) -> Option<&Principal> {
        self.result.as_ref().ok()
    }

    /// A step after the verifier refused the accepted token with `error` (the rate limit):
    /// the event becomes a refusal, with the token's owner.
    pub(crate) fn refuse(&mut self, error: AuthError) {
        let record = match &self.result {
            Ok(principal) => Some(Arc::clone(&principal.record)),
            Err(refused) => refused.record.clone(),
        };
        self.result = Err(Refused { error, record });
    }
}

/// What [`Verifier::lookup`] found for a token.
enum Lookup {
    /// A format's record whose hash matches the presented secret.
    Matched(Arc<TokenRecord>),
    /// At least one format parsed the text, and no record matched: the first record found
    /// (its secret did not match) with the id its format read, or no record and the first id.
    Missed {
        record: Option<Arc<TokenRecord>>,
        presented_id: Option<TokenId>,
    },
    /// No format parsed the text: the most telling reason.
    Malformed(RejectReason),
}

/// Which of two parse errors says more about a token no format accepted: a bad checksum
/// (the token had the shape of a format) over anything else, and anything over a wrong prefix.
fn more_telling(earlier: Option<FormatError>, later: FormatError) -> FormatError {
    match earlier {
        None => later,
        Some(FormatError::BadChecksum) => FormatError::BadChecksum,
        Some(FormatError::WrongPrefix) => later,
        Some(_) if later == FormatError::BadChecksum => later,
        Some(earlier) => earlier,
    }
}

/// Configures a [`Verifier`]. Made by [`Verifier::builder`].
#[must_use]
pub struct VerifierBuilder<S> {
    store: S,
    formats: Vec<TokenFormat>,
    hasher: SecretHasher,
    clock: Arc<dyn Clock>,
    policy: ScopePolicy,
    max_lifetime: Option<TimeDelta>,
    max_idle: Option<TimeDelta>,
    audit: Option<Arc<dyn AuditSink>>,
    last_used: bool,
    last_used_flush_interval: Duration,
    last_used_max_pending: usize,
    max_scopes: usize,
    max_allowed_ips: usize,
    #[cfg(feature = "jwt")]
    jwt: Option<crate::jwt::JwtValidator>,
}

impl<S> fmt::Debug for VerifierBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierBuilder")
            .field("formats", &self.formats)
            .field("hasher", &self.hasher)
            .field("policy", &self.policy)
            .field("max_lifetime", &self.max_lifetime)
            .field("max_idle", &self.max_idle)
            .field("last_used", &self.last_used)
            .field("last_used_flush_interval", &self.last_used_flush_interval)
            .field("last_used_max_pending", &self.last_used_max_pending)
            .finish_non_exhaustive()
    }
}

impl<S: TokenStore> VerifierBuilder<S> {
    /// The token format: tokens are issued in it and verified against it. Replaces any earlier
    /// formats. Default: [`TokenFormat::canonical`].
    pub fn format(mut self, format: TokenFormat) -> Self {
        self.formats = vec![format];
        self
    }

    /// Also accepts tokens in `format`: for a migration from one format to another, or to
    /// verify Sanctum or DCT tokens beside new ones. Formats are tried in the order added
    /// (the main one first). A text that several formats parse is looked up once per such
    /// format until one's record matches the secret, so neither shadows the other: with a
    /// `tok` prefix accepted before `toklive`, `toklive` tokens still verify. A token that
    /// matches no record costs one hash and one lookup for each format that parses it, never
    /// more than the number of formats (a format added twice counts once).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apitoken::{IdKind, MemoryStore, NewToken, Owner, TokenFormat, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let toklive = || TokenFormat::builder().prefix("toklive").id(IdKind::None).build();
    /// // Also parses every `toklive` token: "live" and 43 characters are 47 characters.
    /// let tok = TokenFormat::builder().prefix("tok").id(IdKind::None).accept_secret_lengths(43..=47).build()?;
    /// let store = Arc::new(MemoryStore::new());
    /// let issuing = Verifier::builder(Arc::clone(&store)).format(toklive()?).build();
    /// let issued = issuing.issuer().issue(NewToken::new("ci", Owner::new("team-1")?)).await?;
    ///
    /// // `tok` is tried first and its lookup misses; `toklive`'s then matches.
    /// let verifier = Verifier::builder(store).format(tok).also_accept(toklive()?).build();
    /// assert!(verifier.authenticate(issued.token.expose_secret()).await.is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn also_accept(mut self, format: TokenFormat) -> Self {
        self.formats.push(format);
        self
    }

    /// How secrets are hashed. Default: [`SecretHasher::sha256`]. It must be the hasher the
    /// stored hashes were made with.
    pub fn hasher(mut self, hasher: SecretHasher) -> Self {
        self.hasher = hasher;
        self
    }

    /// How granted scopes cover required ones. Default: [`ScopePolicy::strict`].
    pub fn scope_policy(mut self, policy: ScopePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Refuses tokens older than `lifetime` counted from `created_at`, whatever their own
    /// `expires_at` (as Sanctum's `expiration` setting). Default: no limit.
    pub fn max_lifetime(mut self, lifetime: TimeDelta) -> Self {
        self.max_lifetime = Some(lifetime);
        self
    }

    /// How often buffered last-use times are written to the store by the background flusher
    /// (feature `tokio`; see [`last_used`](crate::last_used)). Default: 60 seconds
    /// ([`DEFAULT_FLUSH_INTERVAL`]); at least one millisecond (shorter is raised to it).
    ///
    /// A longer interval means fewer writes, staler `last_used_at` values and more lost on a
    /// crash: at most one interval's worth.
    ///
    /// ```
    /// use std::time::Duration;
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// let verifier = Verifier::builder(MemoryStore::new())
    ///     .last_used_flush_interval(Duration::from_secs(300))
    ///     .build();
    /// assert_eq!(verifier.last_used_flush_interval(), Some(Duration::from_secs(300)));
    /// ```
    pub fn last_used_flush_interval(mut self, every: Duration) -> Self {
        self.last_used_flush_interval = every;
        self
    }

    /// How many distinct tokens may have a last-use time waiting between two flushes. Default:
    /// 100,000 ([`DEFAULT_MAX_PENDING`]), about 8 MB. When the buffer is full, verifications of
    /// further tokens still succeed but their last use is not recorded until the next flush
    /// makes room ([`Verifier::last_used_dropped`] counts them). Zero records nothing.
    ///
    /// ```
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// let verifier = Verifier::builder(MemoryStore::new())
    ///     .last_used_max_pending(1_000_000)
    ///     .build();
    /// ```
    pub fn last_used_max_pending(mut self, max: usize) -> Self {
        self.last_used_max_pending = max;
        self
    }

    /// Never records last use, whatever the other last-used settings: no buffer, no
    /// flushes, and the background flusher spawns no task. Cannot be combined with
    /// [`max_idle`](Self::max_idle), which counts from the last use
    /// ([`try_build`](Self::try_build) refuses it).
    ///
    /// ```
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// let verifier = Verifier::builder(MemoryStore::new()).disable_last_used().build();
    /// assert_eq!(verifier.last_used_pending(), 0);
    /// assert_eq!(verifier.last_used_flush_interval(), None);
    /// ```
    pub fn disable_last_used(mut self) -> Self {
        self.last_used = false;
        self
    }

    /// Refuses tokens not used for `idle` (counted from the last use, or from `created_at` for
    /// a token never used), as [`RejectReason::Idle`]. Default: no limit.
    ///
    /// The last use is the later of the stored `last_used_at` and a use noted in this process
    /// but not yet flushed. Uses on other replicas count once flushed, so the limit can be late
    /// by up to one flush interval (plus a cache's TTL): choose an idle time much longer than
    /// that (days, not minutes). Needs last use recorded: with
    /// [`disable_last_used`](Self::disable_last_used) or a `last_used_max_pending` of zero,
    /// [`try_build`](Self::try_build) refuses the configuration and `build` panics.
    ///
    /// ```
    /// use apitoken::{MemoryStore, Verifier};
    /// use chrono::TimeDelta;
    ///
    /// let verifier = Verifier::builder(MemoryStore::new())
    ///     .max_idle(TimeDelta::days(30))
    ///     .build();
    /// # let _ = verifier;
    /// ```
    pub fn max_idle(mut self, idle: TimeDelta) -> Self {
        self.max_idle = Some(idle);
        self
    }

    /// The most scopes a token may be issued with. Default: [`DEFAULT_MAX_SCOPES`] (100).
    /// [`Issuer::issue`] refuses more with [`IssueError::TooManyScopes`]: every verification
    /// checks a token's scopes and every cache entry holds them, so one token with a hundred
    /// thousand must not be possible by accident or by a caller's choice.
    ///
    /// [`DEFAULT_MAX_SCOPES`]: crate::DEFAULT_MAX_SCOPES
    /// [`IssueError::TooManyScopes`]: crate::IssueError::TooManyScopes
    ///
    /// ```
    /// use apitoken::{IssueError, MemoryStore, NewToken, Owner, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new()).max_scopes_per_token(2).build();
    /// let new = NewToken::new("ci", Owner::new("team-1")?).scopes(["a", "b", "c"])?;
    /// let refused = verifier.issuer().issue(new).await.unwrap_err();
    /// assert!(matches!(refused, IssueError::TooManyScopes { max: 2 }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn max_scopes_per_token(mut self, max: usize) -> Self {
        self.max_scopes = max;
        self
    }

    /// The most allowlist entries a token may be issued with. Default:
    /// [`DEFAULT_MAX_ALLOWED_IPS`] (100); more is [`IssueError::TooManyNetworks`]. A request
    /// from a restricted token is compared with each entry.
    ///
    /// [`DEFAULT_MAX_ALLOWED_IPS`]: crate::DEFAULT_MAX_ALLOWED_IPS
    /// [`IssueError::TooManyNetworks`]: crate::IssueError::TooManyNetworks
    pub fn max_allowed_ips_per_token(mut self, max: usize) -> Self {
        self.max_allowed_ips = max;
        self
    }

    /// Sends every [`AuditEvent`] to `sink`. Default: none (the `tracing` events are always
    /// emitted).
    pub fn audit(mut self, sink: impl AuditSink) -> Self {
        self.audit = Some(Arc::new(sink));
        self
    }

    /// The clock. Default: [`SystemClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Also accepts JWT access tokens checked by `validator` (feature `jwt`), on the same
    /// routes as API keys and with the same [`Principal`] ([`CredentialKind::Jwt`]). A token
    /// with a JWT's shape (three dot-separated segments, starting `eyJ`) goes to the
    /// validator only, and its `exp` and `nbf` are checked against this verifier's clock.
    /// The scope requirement and [`ScopePolicy`] apply as for API keys; the maximum lifetime,
    /// idle time, allowlists and last-use tracking do not (a JWT has no store record), and a
    /// JWT cannot be revoked before it expires. See [`jwt`](crate::jwt).
    ///
    /// ```
    /// use apitoken::jwt::{JwtKey, JwtValidator};
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// let validator = JwtValidator::builder("https://auth.example", "api")
    ///     .key(JwtKey::hs256(&[3u8; 32])?)
    ///     .build()?;
    /// let verifier = Verifier::builder(MemoryStore::new()).jwt(validator).build();
    /// # let _ = verifier;
    /// # Ok::<(), apitoken::jwt::JwtError>(())
    /// ```
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    pub fn jwt(mut self, validator: crate::jwt::JwtValidator) -> Self {
        self.jwt = Some(validator);
        self
    }

    /// Builds the verifier.
    ///
    /// # Panics
    ///
    /// On a configuration [`try_build`](Self::try_build) refuses: a [`max_idle`](Self::max_idle)
    /// with last use not recorded. Like a route conflict in axum, that is a programming
    /// error to see at start-up, not at the first request.
    pub fn build(self) -> Verifier<S> {
        self.try_build().unwrap_or_else(|err| panic!("{err}"))
    }

    /// Builds the verifier, or says why the configuration cannot work.
    ///
    /// ```
    /// use apitoken::{MemoryStore, Verifier, VerifierBuildError};
    /// use chrono::TimeDelta;
    ///
    /// // The idle time counts from the last use, which would never be recorded.
    /// let refused = Verifier::builder(MemoryStore::new())
    ///     .max_idle(TimeDelta::days(30))
    ///     .disable_last_used()
    ///     .try_build()
    ///     .unwrap_err();
    /// assert_eq!(refused, VerifierBuildError::IdleWithoutLastUse);
    /// ```
    pub fn try_build(self) -> Result<Verifier<S>, VerifierBuildError> {
        let records_last_use = self.last_used && self.last_used_max_pending > 0;
        if self.max_idle.is_some() && !records_last_use {
            return Err(VerifierBuildError::IdleWithoutLastUse);
        }
        let dummy_hash = self.hasher.hash(b"apitoken: no such token");
        // A format added twice would only look a failing token up twice.
        let mut formats: Vec<TokenFormat> = Vec::with_capacity(self.formats.len());
        for format in self.formats {
            if !formats.contains(&format) {
                formats.push(format);
            }
        }
        Ok(Verifier {
            inner: Arc::new(Inner {
                store: self.store,
                formats,
                hasher: self.hasher,
                clock: self.clock,
                policy: Arc::new(self.policy),
                max_lifetime: self.max_lifetime,
                max_idle: self.max_idle,
                audit: self.audit,
                last_used: self.last_used.then(|| {
                    LastUsedBuffer::new(self.last_used_flush_interval, self.last_used_max_pending)
                }),
                dummy_hash,
                refusal_log: audit::RefusalLog::default(),
                max_scopes: self.max_scopes,
                max_allowed_ips: self.max_allowed_ips,
                #[cfg(feature = "jwt")]
                jwt: self.jwt,
            }),
        })
    }
}

/// Why [`VerifierBuilder::try_build`] refused a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifierBuildError {
    /// [`max_idle`](VerifierBuilder::max_idle) counts from the last use, which is not recorded
    /// ([`disable_last_used`](VerifierBuilder::disable_last_used), or
    /// [`last_used_max_pending(0)`](VerifierBuilder::last_used_max_pending)): every token
    /// would expire that long after its creation however often it is used.
    #[error(
        "max_idle needs last use to be recorded, and it is not (disable_last_used or last_used_max_pending(0))"
    )]
    IdleWithoutLastUse,
}

/// What the verifier may know about a request besides its token.
///
/// ```
/// use apitoken::RequestInfo;
///
/// let info = RequestInfo::new().client_ip(Some("192.0.2.7".parse().unwrap()));
/// assert!(info.client_ip.is_some());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestInfo {
    /// The client's address, checked against a token's allowlist and reported in audit
    /// events. `None` when unknown: a token with an allowlist is then refused.
    pub client_ip: Option<IpAddr>,
}

impl RequestInfo {
    /// Nothing known.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the client address.
    #[must_use]
    pub fn client_ip(mut self, ip: Option<IpAddr>) -> Self {
        self.client_ip = ip;
        self
    }
}

/// An authenticated token: who it acts for and what it may do.
///
/// Handlers read it to make authorization decisions, for example comparing
/// [`owner`](Self::owner) with the owner of the resource being touched.
///
/// ```
/// use apitoken::{MemoryStore, NewToken, Owner, ScopeRequirement, Verifier};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let verifier = Verifier::builder(MemoryStore::new()).build();
/// let issued = verifier.issuer()
///     .issue(NewToken::new("monitoring", Owner::new("team-1")?).scopes(["vps:read"])?)
///     .await?;
/// let principal = verifier.authenticate(issued.token.expose_secret()).await?;
/// assert!(principal.require(&ScopeRequirement::all(["vps:read"])?).is_ok());
/// assert!(principal.require(&ScopeRequirement::all(["vps:write"])?).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Principal {
    record: Arc<TokenRecord>,
    policy: PolicyRef,
    effective_expiry: Option<DateTime<Utc>>,
    credential: CredentialKind,
}

/// How a [`Principal`] authenticated. Routes need not care; logs and audits may.
///
/// ```
/// use apitoken::{CredentialKind, MemoryStore, NewToken, Owner, Verifier};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let verifier = Verifier::builder(MemoryStore::new()).build();
/// let issued = verifier.issuer().issue(NewToken::new("ci", Owner::new("team-1")?)).await?;
/// let principal = verifier.authenticate(issued.token.expose_secret()).await?;
/// assert_eq!(principal.credential_kind(), CredentialKind::ApiKey);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CredentialKind {
    /// A token with a record in the store, in one of the verifier's [`TokenFormat`]s.
    ApiKey,
    /// A JWT access token checked by the verifier's JWT validator (feature `jwt`); its record
    /// is made from its claims.
    Jwt,
}

impl Principal {
    /// How the client authenticated: an API key or a JWT access token.
    pub fn credential_kind(&self) -> CredentialKind {
        self.credential
    }

    /// The token's id (a JWT's `jti`).
    pub fn token_id(&self) -> &TokenId {
        &self.record.id
    }

    /// Whom the token acts for (a JWT's `sub`).
    pub fn owner(&self) -> &Owner {
        &self.record.owner
    }

    /// The token's name (a JWT's `client_id`).
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// The scopes granted.
    pub fn scopes(&self) -> &ScopeSet {
        &self.record.scopes
    }

    /// The application's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.record.metadata
    }

    /// When the token expires, so a service can warn its clients (a `Deprecation` or
    /// `Sunset` header, say) ahead of time.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.record.expires_at
    }

    /// The whole record, as the store returned it before this verification: its
    /// `last_used_at` does not include this use, and lags by up to one flush interval (see
    /// [`last_used`](crate::last_used)).
    pub fn record(&self) -> &TokenRecord {
        &self.record
    }

    /// When the token stops working at the latest: the earliest of its own `expires_at`, the
    /// verifier's maximum lifetime, and its maximum idle time counted from this use. A token
    /// that mints others caps their expiry here, so none outlives its maker.
    pub fn effective_expiry(&self) -> Option<DateTime<Utc>> {
        self.effective_expiry
    }

    /// Whether this token may give `scopes` to another token without that token gaining
    /// anything it does not hold ([`ScopePolicy::can_delegate`]).
    pub fn can_delegate(&self, scopes: &ScopeSet) -> bool {
        scopes
            .iter()
            .all(|s| self.policy.can_delegate(&self.record.scopes, s.as_str()))
    }

    /// Checks a scope requirement under the verifier's [`ScopePolicy`].
    pub fn require(&self, required: &ScopeRequirement) -> Result<(), AuthError> {
        self.policy
            .check(&self.record.scopes, required)
            .map_err(|missing| AuthError::insufficient_scope(missing, self.record.id))
    }

    /// Whether the token holds `scope` under the verifier's [`ScopePolicy`].
    pub fn has_scope(&self, scope: &str) -> bool {
        self.policy.covers(&self.record.scopes, scope)
    }
}
