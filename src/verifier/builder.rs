//! [`VerifierBuilder`]: a verifier's configuration, checked when it is built.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;

use super::{Inner, Verifier};
use crate::audit::{self, AuditSink};
use crate::authenticator::Authenticator;
use crate::clock::Clock;
use crate::format::TokenFormat;
use crate::id::TokenId;
use crate::last_used::{DEFAULT_FLUSH_INTERVAL, LastUsedBuffer};
use crate::policy::Policy;
use crate::record::{Owner, TokenRecord};
use crate::scope::ScopePolicy;
use crate::secret::SecretHasher;
use crate::store::TokenStore;

impl<S: TokenStore> Verifier<S> {
    /// Starts configuring a verifier over `store`.
    pub fn builder(store: S) -> VerifierBuilder<S> {
        VerifierBuilder {
            store,
            formats: vec![TokenFormat::canonical()],
            hasher: SecretHasher::sha256(),
            clock: Arc::new(crate::clock::SystemClock),
            policy: ScopePolicy::strict(),
            max_lifetime: None,
            max_idle: None,
            audit: None,
            last_used: true,
            last_used_flush_interval: DEFAULT_FLUSH_INTERVAL,
            last_used_max_pending: crate::last_used::DEFAULT_MAX_PENDING,
            max_scopes: crate::issuer::DEFAULT_MAX_SCOPES,
            max_allowed_ips: crate::issuer::DEFAULT_MAX_ALLOWED_IPS,
            policies: Vec::new(),
            authenticators: Vec::new(),
        }
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
    policies: Vec<Arc<dyn Policy>>,
    authenticators: Vec<Arc<dyn Authenticator>>,
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
            .field("policies", &self.policies.len())
            .field("authenticators", &self.authenticators.len())
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
    /// 100,000 ([`DEFAULT_MAX_PENDING`](crate::last_used::DEFAULT_MAX_PENDING)), about 8 MB. When the buffer is full, verifications of
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
    /// a token never used), as [`RejectReason::Idle`](crate::RejectReason::Idle). Default: no limit.
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
    /// [`Issuer::issue`](crate::Issuer::issue) refuses more with [`IssueError::TooManyScopes`]: every verification
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

    /// Sends every [`AuditEvent`](crate::AuditEvent) to `sink`. Default: none (the `tracing` events are always
    /// emitted).
    pub fn audit(mut self, sink: impl AuditSink) -> Self {
        self.audit = Some(Arc::new(sink));
        self
    }

    /// The clock. Default: [`SystemClock`](crate::SystemClock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Adds a [`Policy`]: a check at fixed points of every verification (before the lookup,
    /// on the record, an admit step after scopes, and on the outcome). Policies run in the
    /// order added, after the built-in [`AddressAllowlist`](crate::policy::AddressAllowlist).
    /// See [`policy`](crate::policy)
    /// for the points and an example.
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.policies.push(Arc::new(policy));
        self
    }

    /// Adds an [`Authenticator`]: a credential kind with no store record (a JWT validator, a
    /// static service key). A token an authenticator recognises goes to it only; other tokens
    /// are parsed by the formats and looked up in the store as before. Authenticators are
    /// asked in the order added. See [`authenticator`](crate::authenticator) for an example.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.authenticators.push(Arc::new(authenticator));
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
        let max_token_len = self
            .authenticators
            .iter()
            .map(|a| a.max_token_len())
            .fold(crate::format::MAX_TOKEN_LEN, usize::max);
        // The allowlist is not in this list: the pipeline calls it first on every record,
        // statically, so a verifier with no policies of its own runs no policy loop at all.
        let policies = self.policies;
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
                policy: super::PolicyRef::of(self.policy),
                max_lifetime: self.max_lifetime,
                max_idle: self.max_idle,
                audit: self.audit,
                last_used: self.last_used.then(|| {
                    LastUsedBuffer::new(self.last_used_flush_interval, self.last_used_max_pending)
                }),
                dummy_hash,
                stand_in: TokenRecord::new(
                    TokenId::from_u64(0),
                    Owner::new("apitoken: no such token").expect("a valid owner"),
                    "",
                    chrono::DateTime::UNIX_EPOCH,
                ),
                refusal_log: audit::RefusalLog::default(),
                max_scopes: self.max_scopes,
                max_allowed_ips: self.max_allowed_ips,
                max_token_len,
                policies,
                authenticators: self.authenticators,
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
