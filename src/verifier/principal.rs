//! [`Principal`]: who an accepted token acts for; [`RequestInfo`]: what is known of the request.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::error::AuthError;
use crate::id::TokenId;
use crate::record::{Metadata, Owner, TokenRecord};
use crate::scope::{ScopePolicy, ScopeRequirement, ScopeSet};

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
    /// A token with a record in the store, in one of the verifier's [`TokenFormat`](crate::TokenFormat)s.
    ApiKey,
    /// A JWT access token checked by the JWT validator (feature `jwt`), one of the verifier's
    /// [`Authenticator`](crate::Authenticator)s; its record is made from its claims.
    Jwt,
    /// A credential another [`Authenticator`](crate::Authenticator) checked.
    Other,
}

impl Principal {
    pub(crate) fn new(
        effective_expiry: Option<DateTime<Utc>>,
        record: Arc<TokenRecord>,
        policy: PolicyRef,
        credential: CredentialKind,
    ) -> Self {
        Self {
            record,
            policy,
            effective_expiry,
            credential,
        }
    }

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

/// The scope policy a [`Principal`] checks with: the default strict policy without a shared
/// counter (cloning an `Arc` on every verification makes every verifying thread write one
/// cache line), any other shared.
#[derive(Clone)]
pub(crate) enum PolicyRef {
    Strict,
    Shared(Arc<ScopePolicy>),
}

impl PolicyRef {
    /// Made once, when the verifier is built; each principal gets a clone.
    pub(crate) fn of(policy: ScopePolicy) -> Self {
        if policy == crate::scope::STRICT {
            Self::Strict
        } else {
            Self::Shared(Arc::new(policy))
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
