//! Issuing tokens: a new secret, shown once, stored only as its hash.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

use crate::format::{FormatError, GenerateError, TokenFormat};
use crate::id::TokenId;
use crate::name::{MAX_NAME_LEN, check_name};
use crate::record::{Metadata, Owner, TokenRecord};
use crate::scope::{InvalidScope, ScopeSet};
use crate::secret::SecretHash;
use crate::secret::{RandomnessUnavailable, Secret};
use crate::store::Retire;
use crate::store::{StoreError, TokenStore};
use crate::verifier::Inner;

/// The most scopes a token may be issued with, by default
/// ([`VerifierBuilder::max_scopes_per_token`](crate::VerifierBuilder::max_scopes_per_token)):
/// every verification checks them and every cache entry holds them.
pub const DEFAULT_MAX_SCOPES: usize = 100;

/// The most allowlist entries a token may be issued with, by default
/// ([`VerifierBuilder::max_allowed_ips_per_token`](crate::VerifierBuilder::max_allowed_ips_per_token)):
/// a request from a restricted token is compared with each.
pub const DEFAULT_MAX_ALLOWED_IPS: usize = 100;

/// Creates tokens. Get one from [`Verifier::issuer`](crate::Verifier::issuer), so that issuing
/// and verifying share one format, hasher (and pepper), clock and store.
///
/// ```
/// use apitoken::{MemoryStore, NewToken, Owner, Verifier};
/// use chrono::TimeDelta;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let issuer = Verifier::builder(MemoryStore::new()).build().issuer();
/// let issued = issuer
///     .issue(
///         NewToken::new("Billing Integration", Owner::new("acct-9")?)
///             .scopes(["account:read", "account:write"])?
///             .expires_in(TimeDelta::days(90)),
///     )
///     .await?;
/// // Show `issued.token` to its owner now; it cannot be recovered later.
/// assert!(issued.record.expires_at.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct Issuer<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Issuer<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> fmt::Debug for Issuer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("format", &self.inner.formats[0])
            .finish_non_exhaustive()
    }
}

impl<S: TokenStore> Issuer<S> {
    pub(crate) fn new(inner: Arc<Inner<S>>) -> Self {
        Self { inner }
    }

    /// Rotates the token `old` (Stripe's "roll key", Unkey's re-roll): issues a new token with
    /// the same name, owner, scopes, allowlist and metadata, and the same lifetime length
    /// counted from now, and retires `old` after `grace` (zero: revoked now). Clients switch to
    /// the new token within the grace period ("revoke old tokens after confirming new ones
    /// work"). In the SQL stores both happen in one transaction.
    ///
    /// ```
    /// use apitoken::{MemoryStore, NewToken, Owner, Verifier};
    /// use chrono::TimeDelta;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let issuer = verifier.issuer();
    /// let old = issuer.issue(NewToken::new("ci", Owner::new("team-1")?)).await?;
    /// let new = issuer.rotate(&old.record.id, TimeDelta::hours(24)).await?;
    /// // Both work for a day; then only the new one.
    /// assert!(verifier.authenticate(old.token.expose_secret()).await.is_ok());
    /// assert!(verifier.authenticate(new.token.expose_secret()).await.is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn rotate(&self, old: &TokenId, grace: TimeDelta) -> Result<IssuedToken, IssueError> {
        self.rotate_until(old, grace, None).await
    }

    /// [`rotate`](Self::rotate), with the new token expiring no later than `latest`: a token
    /// that rotates another passes its own [`Principal::effective_expiry`], so that the result
    /// cannot outlive it.
    ///
    /// [`Principal::effective_expiry`]: crate::Principal::effective_expiry
    pub async fn rotate_until(
        &self,
        old: &TokenId,
        grace: TimeDelta,
        latest: Option<DateTime<Utc>>,
    ) -> Result<IssuedToken, IssueError> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let current = inner
            .store
            .get(old)
            .await?
            // Refused tokens (revoked, expired, too old, idle too long) cannot be revived.
            .filter(|stored| inner.is_active(&stored.record, now))
            .ok_or(IssueError::NotFound)?;
        let current = &current.record;
        // A record stored before the caps (or by another tool) is not copied past them.
        self.check_caps(current.scopes.len(), current.allowed_ips.len())?;
        let (token, mut record, hash) = self
            .mint(None, current.owner.clone(), current.name.clone(), now)
            .await?;
        record.scopes = current.scopes.clone();
        record.metadata = current.metadata.clone();
        record.allowed_ips = current.allowed_ips.clone();
        let same_length = current
            .expires_at
            .and_then(|end| now.checked_add_signed(end - current.created_at));
        record.expires_at = match (same_length, latest) {
            (Some(own), Some(latest)) => Some(own.min(latest)),
            (own, latest) => own.or(latest),
        };
        if record.expires_at.is_some_and(|end| end <= now) {
            return Err(IssueError::ExpiryOutOfRange);
        }
        let retire = if grace <= TimeDelta::zero() {
            Retire::RevokeAt(now)
        } else {
            Retire::ExpireAt(
                now.checked_add_signed(grace)
                    .ok_or(IssueError::ExpiryOutOfRange)?,
            )
        };
        if !inner
            .store
            .rotate(old, retire, record.clone(), hash)
            .await?
        {
            return Err(IssueError::NotFound);
        }
        Ok(IssuedToken { token, record })
    }

    /// The per-token caps on scopes and allowlist entries.
    fn check_caps(&self, scopes: usize, networks: usize) -> Result<(), IssueError> {
        let inner = &*self.inner;
        if scopes > inner.max_scopes {
            return Err(IssueError::TooManyScopes {
                max: inner.max_scopes,
            });
        }
        if networks > inner.max_allowed_ips {
            return Err(IssueError::TooManyNetworks {
                max: inner.max_allowed_ips,
            });
        }
        Ok(())
    }

    /// Allocates an id (or takes `given`'s) and generates a token for it in the format
    /// (`given`'s, or the verifier's first): the text, a record without scopes, and the hash
    /// to store.
    async fn mint(
        &self,
        given: Option<(&TokenFormat, TokenId)>,
        owner: Owner,
        name: String,
        now: DateTime<Utc>,
    ) -> Result<(Secret, TokenRecord, SecretHash), IssueError> {
        let inner = &*self.inner;
        let (format, id) = match given {
            Some((format, id)) => (format, id),
            None => {
                let format = &inner.formats[0];
                let id = match format.random_id()? {
                    Some(id) => id,
                    None => inner.store.next_id().await?,
                };
                (format, id)
            }
        };
        let token = format.generate(Some(&id))?;
        // Hash exactly what the verifier will hash: parse the text just made.
        let parsed = format
            .parse(token.expose_secret())
            .map_err(|e| IssueError::Generate(GenerateError::Format(e)))?;
        let hash = inner.hasher.hash(parsed.secret().as_bytes());
        Ok((token, TokenRecord::new(id, owner, name, now), hash))
    }

    /// Issues a token: allocates an id, generates a secret, stores the record with the
    /// secret's hash, and returns the token text, once.
    pub async fn issue(&self, new: NewToken) -> Result<IssuedToken, IssueError> {
        issued(self.issue_with(None, new, Insert::Always).await)
    }

    /// Issues a token only if its owner has none yet (revoked and expired ones count): the
    /// first admin key of a deployment, made by whichever replica starts first. `Ok(None)` if
    /// the owner already has a token. Atomic in the store
    /// ([`TokenStore::insert_first`]): of replicas bootstrapping at once, exactly one gets
    /// the token, and the others `None`.
    ///
    /// ```
    /// use apitoken::{MemoryStore, NewToken, Owner, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let admin = || NewToken::new("bootstrap", Owner::new("admin").unwrap());
    /// let first = verifier.issuer().issue_first(admin().scopes(["admin"])?).await?;
    /// assert!(first.is_some());
    /// assert!(verifier.issuer().issue_first(admin()).await?.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn issue_first(&self, new: NewToken) -> Result<Option<IssuedToken>, IssueError> {
        self.issue_with(None, new, Insert::IfOwnerHasNone).await
    }

    /// [`issue`](Self::issue) in `format` with the id `id` instead of the verifier's first
    /// format and a fresh id: for a front end that chooses its tokens' ids (the OAuth
    /// endpoint's access tokens, whose id is their `jti`). The verifier must accept `format`
    /// ([`Verifier::accepts`](crate::Verifier::accepts)) for the token to verify.
    ///
    /// ```
    /// use apitoken::{IdKind, MemoryStore, NewToken, Owner, TokenFormat, TokenId, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let format = TokenFormat::builder().prefix("job").id(IdKind::Random { len: 16 }).build()?;
    /// let verifier = Verifier::builder(MemoryStore::new()).also_accept(format.clone()).build();
    /// let id = TokenId::new("Job0000000000042")?;
    /// let issued = verifier.issuer().issue_as(&format, id, NewToken::new("job", Owner::new("ci")?)).await?;
    /// assert_eq!(issued.record.id, id);
    /// assert!(verifier.authenticate(issued.token.expose_secret()).await.is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn issue_as(
        &self,
        format: &TokenFormat,
        id: TokenId,
        new: NewToken,
    ) -> Result<IssuedToken, IssueError> {
        issued(
            self.issue_with(Some((format, id)), new, Insert::Always)
                .await,
        )
    }

    async fn issue_with(
        &self,
        given: Option<(&TokenFormat, TokenId)>,
        new: NewToken,
        insert: Insert,
    ) -> Result<Option<IssuedToken>, IssueError> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        // `check_name` says which rule and which character; callers that want that call it.
        check_name(&new.name).map_err(|_| IssueError::InvalidName)?;
        let expires_at = match (new.expires_at, new.expires_in) {
            (Some(at), _) => Some(at),
            (None, Some(delta)) => Some(
                now.checked_add_signed(delta)
                    .ok_or(IssueError::ExpiryOutOfRange)?,
            ),
            (None, None) => None,
        };
        if expires_at.is_some_and(|at| at <= now) {
            return Err(IssueError::ExpiryOutOfRange);
        }
        self.check_caps(new.scopes.len(), new.allowed_ips.len())?;
        let (token, mut record, hash) = self.mint(given, new.owner, new.name, now).await?;
        record.scopes = new.scopes;
        record.expires_at = expires_at;
        record.metadata = new.metadata;
        record.allowed_ips = new.allowed_ips;
        match insert {
            Insert::Always => inner.store.insert(record.clone(), hash).await?,
            Insert::IfOwnerHasNone => {
                if !inner.store.insert_first(record.clone(), hash).await? {
                    return Ok(None);
                }
            }
        }
        Ok(Some(IssuedToken { token, record }))
    }
}

/// What an unconditional insert issued: always a token.
fn issued(result: Result<Option<IssuedToken>, IssueError>) -> Result<IssuedToken, IssueError> {
    match result? {
        Some(issued) => Ok(issued),
        None => unreachable!("an unconditional insert always issues"),
    }
}

/// How [`Issuer::issue_with`] stores the record.
enum Insert {
    Always,
    IfOwnerHasNone,
}

/// What to issue: name, owner, scopes, expiry and metadata.
///
/// A new token has no scopes unless given some: least privilege by default.
#[derive(Debug, Clone)]
#[must_use]
pub struct NewToken {
    name: String,
    owner: Owner,
    scopes: ScopeSet,
    expires_at: Option<DateTime<Utc>>,
    expires_in: Option<TimeDelta>,
    metadata: Metadata,
    allowed_ips: Vec<ipnet::IpNet>,
}

impl NewToken {
    /// A token named `name` acting for `owner`. The name is shown in token lists: 1 to 255
    /// characters, none of the invisible or reordering ones
    /// [`check_name`](crate::name::check_name) refuses; [`Issuer::issue`] checks it.
    pub fn new(name: impl Into<String>, owner: Owner) -> Self {
        Self {
            name: name.into(),
            owner,
            scopes: ScopeSet::new(),
            expires_at: None,
            expires_in: None,
            metadata: Metadata::new(),
            allowed_ips: Vec::new(),
        }
    }

    /// Grants these scopes, validating each.
    pub fn scopes<I, T>(mut self, scopes: I) -> Result<Self, InvalidScope>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.scopes = ScopeSet::try_from_iter(scopes)?;
        Ok(self)
    }

    /// Grants this set of scopes.
    pub fn scope_set(mut self, scopes: ScopeSet) -> Self {
        self.scopes = scopes;
        self
    }

    /// Expires at `at`, which must be in the future.
    pub fn expires_at(mut self, at: DateTime<Utc>) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Expires `delta` after issue. Ignored if [`expires_at`](Self::expires_at) is set.
    pub fn expires_in(mut self, delta: TimeDelta) -> Self {
        self.expires_in = Some(delta);
        self
    }

    /// Restricts the token to clients in these networks (seed 001's IP allowlisting). A
    /// request from elsewhere is refused as an invalid token.
    ///
    /// ```
    /// use apitoken::{NewToken, Owner};
    ///
    /// let new = NewToken::new("deploy", Owner::new("team-1")?)
    ///     .allowed_ips(["203.0.113.0/24".parse()?, "2001:db8::/32".parse()?]);
    /// # let _ = new;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn allowed_ips(mut self, networks: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        self.allowed_ips = networks.into_iter().collect();
        self
    }

    /// Attaches application data.
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// A newly issued token: the text to show once, and the stored record.
#[derive(Debug)]
#[non_exhaustive]
pub struct IssuedToken {
    /// The whole token text. Show it to its owner in this response only (with
    /// `Cache-Control: no-store`); it is not stored anywhere and cannot be shown again.
    pub token: Secret,
    /// The record as stored.
    pub record: TokenRecord,
}

impl IssuedToken {
    /// The new token's id: the same accessor a [`Principal`](crate::Principal) has
    /// ([`Principal::token_id`](crate::Principal::token_id)), so code that revokes, rotates
    /// or logs reads ids one way. The fields stay public for destructuring.
    ///
    /// ```
    /// use apitoken::{MemoryStore, NewToken, Owner, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let issued = verifier.issuer().issue(NewToken::new("ci", Owner::new("team-1")?)).await?;
    /// let principal = verifier.authenticate(issued.token.expose_secret()).await?;
    /// assert_eq!(issued.token_id(), principal.token_id());
    /// assert_eq!(issued.token_id(), &issued.record.id);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn token_id(&self) -> &TokenId {
        &self.record.id
    }
}

/// Why a token could not be issued. Nothing was stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The name is empty, longer than 255 characters, or has a control, format, line or
    /// paragraph separator character ([`check_name`](crate::name::check_name) says which).
    #[error(
        "a token name is 1 to {MAX_NAME_LEN} characters without control, format, line or paragraph separator characters"
    )]
    InvalidName,
    /// The expiry is not in the future.
    #[error("the expiry must be in the future")]
    ExpiryOutOfRange,
    /// More scopes than the verifier allows a token ([`DEFAULT_MAX_SCOPES`] by default).
    #[error("a token may have at most {max} scopes")]
    TooManyScopes {
        /// The limit.
        max: usize,
    },
    /// More allowlist entries than the verifier allows a token ([`DEFAULT_MAX_ALLOWED_IPS`]
    /// by default).
    #[error("a token may have at most {max} allowlist entries")]
    TooManyNetworks {
        /// The limit.
        max: usize,
    },
    /// The token to rotate does not exist, is revoked or has expired.
    #[error("no active token with this id")]
    NotFound,
    /// The store refused or failed.
    #[error("could not store the token")]
    Store(#[from] StoreError),
    /// The secret could not be generated.
    #[error("could not generate the token")]
    Generate(#[from] GenerateError),
}

impl From<RandomnessUnavailable> for IssueError {
    fn from(err: RandomnessUnavailable) -> Self {
        Self::Generate(GenerateError::Randomness(err))
    }
}

impl From<FormatError> for IssueError {
    fn from(err: FormatError) -> Self {
        Self::Generate(GenerateError::Format(err))
    }
}
