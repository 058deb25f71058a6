//! An OAuth 2.0 authorization server (feature `oauth`): short-lived opaque access tokens in
//! the application's own [`TokenStore`], rotating refresh tokens, and the token, revocation,
//! introspection and authorization endpoints as one axum [`Router`].
//!
//! | route | speaks | does |
//! |---|---|---|
//! | `POST /token` | RFC 6749 §3.2, §4.1.3, §4.4, §6 | `client_credentials`, `authorization_code` (PKCE S256 required), `refresh_token` (rotation, reuse revokes the family) |
//! | `POST /revoke` | RFC 7009 | revokes an access token, or a refresh token's whole family; 200 whatever the token |
//! | `POST /introspect` | RFC 7662 | for clients holding the introspection scope (default `oauth:introspect`); `{"active":false}` and nothing else for any token not active |
//! | `GET /authorize` | RFC 6749 §4.1.1, RFC 7636 | only with a [`Consent`]: the application's login and consent step, then a single-use code |
//!
//! **Clients are API keys.** `client_id` is a key's id and `client_secret` the whole key, sent
//! with HTTP Basic or in the form body (not both). The key's scopes bound every token issued
//! to the client; its metadata holds its [`ClientRegistration`] (redirect URIs, grants).
//!
//! **Access tokens are ordinary records.** The default [`OpaqueMinter`] issues each one into
//! the verifier's store in [`access_token_format`] (`at_…`), expiring after an hour (or when
//! the client's key does, if sooner), owned by the client's owner (client credentials) or the
//! user (authorization code). A verifier that also accepts that format turns it into the same
//! [`Principal`](crate::Principal) an API key gives, so one [`AuthLayer`] serves both.
//! Revoking one is the store's `revoke`. Another [`AccessTokenMinter`] (JWTs) can replace it.
//!
//! **Refresh tokens and codes are not tokens the verifier knows.** They live in a
//! [`GrantStore`] (`rt_…`, `ac_…`, hashed with the verifier's hasher), so neither ever passes
//! as an access token.
//!
//! ```
//! use apitoken::middleware::AuthLayer;
//! use apitoken::oauth::{AuthorizationServer, MemoryGrantStore, access_token_format};
//! use apitoken::{MemoryStore, Principal, Verifier};
//! use axum::{Router, routing::get};
//!
//! let verifier = Verifier::builder(MemoryStore::new())
//!     .also_accept(access_token_format())
//!     .build();
//! let oauth = AuthorizationServer::builder(verifier.clone(), MemoryGrantStore::new()).build()?;
//! let app: Router = Router::new()
//!     .route("/api/databases", get(|p: Principal| async move { p.owner().to_string() }))
//!     .layer(AuthLayer::new(verifier))
//!     .nest("/oauth", oauth.router());
//! # Ok::<(), apitoken::oauth::BuildError>(())
//! ```
//!
//! See `docs/oauth.md` for the flows with `curl`, and for when to use API keys, opaque
//! access tokens or JWTs.
//!
//! [`AuthLayer`]: crate::middleware::AuthLayer

mod access;
mod authorize;
mod client;
mod code;
mod consent;
mod endpoint;
mod grants;
#[cfg(feature = "jwt")]
mod jwt_minter;
#[cfg(feature = "postgres")]
mod postgres;
mod refresh;
mod response;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ::axum::Router;
use chrono::TimeDelta;

#[allow(deprecated)]
pub use access::METADATA_KEY;
pub use access::{
    ACCESS_TOKEN_METADATA_KEY, ACCESS_TOKEN_PREFIX, AccessTokenMinter, AccessTokenRequest,
    FormatNotAccepted, GrantType, MintError, MintedAccessToken, OpaqueMinter, access_token_format,
};
pub use client::{CLIENT_METADATA_KEY, ClientRegistration};
pub use code::{AUTHORIZATION_CODE_PREFIX, s256_challenge};
pub use consent::{Consent, ConsentDecision, ConsentRequest};
pub use grants::{
    AuthorizationCodeRecord, GrantFamily, GrantStore, MemoryGrantStore, PURGE_CHUNK,
    RefreshTokenRecord,
};
#[cfg(feature = "postgres")]
pub use postgres::PostgresGrantStore;
pub use refresh::{REFRESH_TOKEN_PREFIX, refresh_token_format};

use crate::middleware::TrustedProxies;
use crate::rate_limit::{MemoryRateLimiter, RateLimit, RateLimiter};
use crate::scope::{InvalidScope, ScopeRequirement};
use crate::store::TokenStore;
use crate::verifier::Verifier;

/// A boxed `Send` future, as the [`AccessTokenMinter`] and [`Consent`] traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long an access token lives by default: one hour.
pub const DEFAULT_ACCESS_TOKEN_LIFETIME: TimeDelta = TimeDelta::hours(1);

/// How long a refresh token may go unused by default before it expires: 30 days.
pub const DEFAULT_REFRESH_TOKEN_IDLE: TimeDelta = TimeDelta::days(30);

/// How long an authorization code may wait for redemption by default: 60 seconds.
pub const DEFAULT_CODE_LIFETIME: TimeDelta = TimeDelta::seconds(60);

/// The longest an authorization code may live (RFC 6749 §4.1.2: ten minutes at most).
pub const MAX_CODE_LIFETIME: TimeDelta = TimeDelta::minutes(10);

/// The scope a client's key must hold to use the introspection endpoint, by default.
pub const DEFAULT_INTROSPECTION_SCOPE: &str = "oauth:introspect";

/// Why [`AuthorizationServerBuilder::build`] refused a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The default [`OpaqueMinter`] needs a verifier that accepts [`access_token_format`].
    #[error(transparent)]
    FormatNotAccepted(#[from] FormatNotAccepted),
    /// The minter issues self-contained tokens (JWTs) but the verifier has no JWT validator,
    /// so introspection would call the server's own tokens inactive.
    #[error(
        "the minter issues JWTs but the verifier has no JWT validator to check them; add one with `VerifierBuilder::jwt`"
    )]
    NoJwtValidator,
}

/// The OAuth 2.0 endpoints over a [`Verifier`] (clients' keys, access tokens) and a
/// [`GrantStore`] (refresh tokens, codes). Cheap to clone. See the [module docs](self).
pub struct AuthorizationServer<S, G> {
    shared: Arc<Shared<S, G>>,
}

impl<S, G> Clone for AuthorizationServer<S, G> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, G: fmt::Debug> fmt::Debug for AuthorizationServer<S, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationServer")
            .field("grants", &self.shared.grants)
            .field("minter", &self.shared.minter)
            .field("consent", &self.shared.consent)
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

/// Everything the handlers share.
pub(crate) struct Shared<S, G> {
    pub(crate) verifier: Verifier<S>,
    pub(crate) grants: G,
    pub(crate) minter: Arc<dyn AccessTokenMinter>,
    pub(crate) consent: Option<Arc<dyn Consent>>,
    pub(crate) proxies: TrustedProxies,
    pub(crate) settings: Settings,
    /// Each client's budget of token requests, `None` when unlimited.
    pub(crate) token_limit: Option<TokenLimit>,
}

/// A limiter and the limit each client's token requests are held to.
pub(crate) struct TokenLimit {
    pub(crate) limiter: Arc<dyn crate::rate_limit::DynRateLimiter>,
    pub(crate) limit: RateLimit,
}

/// How many token requests a client may make by default: 60 a minute, in bursts of 20. A
/// client needs one an hour (the access-token lifetime); this leaves room for restarts and
/// many instances, and stops one key from minting tokens by the thousand.
pub const DEFAULT_TOKEN_REQUEST_LIMIT: RateLimit = RateLimit::const_per_minute(60, 20);

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) access_lifetime: TimeDelta,
    pub(crate) refresh_idle: TimeDelta,
    pub(crate) refresh_max_lifetime: Option<TimeDelta>,
    pub(crate) code_lifetime: TimeDelta,
    pub(crate) introspection: ScopeRequirement,
}

impl<S: TokenStore + 'static, G: GrantStore + 'static> AuthorizationServer<S, G> {
    /// Starts configuring the endpoints. `verifier` authenticates clients (their API keys)
    /// and is where opaque access tokens are issued; `grants` keeps refresh tokens and codes.
    pub fn builder(verifier: Verifier<S>, grants: G) -> AuthorizationServerBuilder<S, G> {
        AuthorizationServerBuilder {
            verifier,
            grants,
            minter: None,
            consent: None,
            proxies: TrustedProxies::none(),
            token_limit: Some((
                Arc::new(MemoryRateLimiter::new()) as Arc<dyn crate::rate_limit::DynRateLimiter>,
                DEFAULT_TOKEN_REQUEST_LIMIT,
            )),
            settings: Settings {
                access_lifetime: DEFAULT_ACCESS_TOKEN_LIFETIME,
                refresh_idle: DEFAULT_REFRESH_TOKEN_IDLE,
                refresh_max_lifetime: None,
                code_lifetime: DEFAULT_CODE_LIFETIME,
                introspection: ScopeRequirement::all([DEFAULT_INTROSPECTION_SCOPE])
                    .unwrap_or_default(),
            },
        }
    }

    /// The routes (`/token`, `/revoke`, `/introspect`, and `/authorize` when a [`Consent`] is
    /// configured), to `nest` under the application's own path. Mount them outside any
    /// [`AuthLayer`](crate::middleware::AuthLayer): clients authenticate here with their key
    /// as `client_secret`, not as a bearer token.
    pub fn router(&self) -> Router {
        endpoint::router(Arc::clone(&self.shared))
    }

    /// The grant store.
    pub fn grants(&self) -> &G {
        &self.shared.grants
    }

    /// Removes what can no longer be used: expired codes, families whose newest refresh
    /// token is past the inactivity limit, and expired access tokens in the token store
    /// ([`TokenStore::remove_expired`] with the [`ACCESS_TOKEN_METADATA_KEY`] marker). Returns how many
    /// entries went. [`spawn_purger`](Self::spawn_purger) runs it on a schedule.
    pub async fn purge(&self) -> Result<usize, crate::StoreError> {
        let now = self.shared.verifier.now();
        let refresh_before = now
            .checked_sub_signed(self.shared.settings.refresh_idle)
            .unwrap_or(now);
        let grants = self.shared.grants.purge(now, refresh_before).await?;
        let tokens = self
            .shared
            .verifier
            .store()
            .remove_expired(now, ACCESS_TOKEN_METADATA_KEY)
            .await?;
        Ok(grants + tokens)
    }

    /// Runs [`purge`](Self::purge) every `every` (at least a second) on the Tokio runtime,
    /// logging failures, until the task is aborted. One per service is enough; with several
    /// replicas each may run one (purges are idempotent).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use apitoken::oauth::{AuthorizationServer, MemoryGrantStore, access_token_format};
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let verifier = Verifier::builder(MemoryStore::new()).also_accept(access_token_format()).build();
    /// let server = AuthorizationServer::builder(verifier, MemoryGrantStore::new()).build()?;
    /// let purger = server.spawn_purger(Duration::from_secs(3600));
    /// # purger.abort();
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn_purger(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()>
    where
        S: Sync,
        G: Sync,
    {
        let server = self.clone();
        let every = every.max(std::time::Duration::from_secs(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match server.purge().await {
                    Ok(gone) => tracing::debug!(gone, "OAuth purge"),
                    Err(error) => tracing::warn!(?error, "OAuth purge failed; trying again later"),
                }
            }
        })
    }
}

/// Configures an [`AuthorizationServer`]. Made by [`AuthorizationServer::builder`].
#[must_use]
pub struct AuthorizationServerBuilder<S, G> {
    verifier: Verifier<S>,
    grants: G,
    minter: Option<Arc<dyn AccessTokenMinter>>,
    consent: Option<Arc<dyn Consent>>,
    proxies: TrustedProxies,
    token_limit: Option<(Arc<dyn crate::rate_limit::DynRateLimiter>, RateLimit)>,
    settings: Settings,
}

impl<S, G: fmt::Debug> fmt::Debug for AuthorizationServerBuilder<S, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationServerBuilder")
            .field("grants", &self.grants)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S: TokenStore + 'static, G: GrantStore + 'static> AuthorizationServerBuilder<S, G> {
    /// How long access tokens live. Default: [`DEFAULT_ACCESS_TOKEN_LIFETIME`] (one hour). A
    /// token never outlives the client key's expiry; a revoked key's tokens work until their
    /// own expiry, so this is also how long a revocation of the key takes to reach them. At
    /// least one second.
    pub fn access_token_lifetime(mut self, lifetime: TimeDelta) -> Self {
        self.settings.access_lifetime = lifetime.max(TimeDelta::seconds(1));
        self
    }

    /// How long a refresh token may go unused before it expires (RFC 9700 §4.14.2). Each
    /// refresh issues a new token, so this is the time a client may stay away. Default:
    /// [`DEFAULT_REFRESH_TOKEN_IDLE`] (30 days).
    pub fn refresh_token_idle(mut self, idle: TimeDelta) -> Self {
        self.settings.refresh_idle = idle.max(TimeDelta::seconds(1));
        self
    }

    /// How long a grant's refresh tokens work at most, counted from the authorization, however
    /// often they are used; then the user authorizes again. Default: no limit.
    pub fn refresh_token_max_lifetime(mut self, lifetime: TimeDelta) -> Self {
        self.settings.refresh_max_lifetime = Some(lifetime);
        self
    }

    /// How long an authorization code may wait for redemption. Default:
    /// [`DEFAULT_CODE_LIFETIME`] (60 s); at most [`MAX_CODE_LIFETIME`] (10 minutes), longer is
    /// lowered to it; at least one second.
    pub fn code_lifetime(mut self, lifetime: TimeDelta) -> Self {
        self.settings.code_lifetime = lifetime.clamp(TimeDelta::seconds(1), MAX_CODE_LIFETIME);
        self
    }

    /// The scope a client's key must hold to introspect tokens. Default:
    /// [`DEFAULT_INTROSPECTION_SCOPE`].
    pub fn introspection_scope(mut self, scope: &str) -> Result<Self, InvalidScope> {
        self.settings.introspection = ScopeRequirement::all([scope])?;
        Ok(self)
    }

    /// Mints access tokens with `minter` instead of [`OpaqueMinter`] (JWTs, say).
    pub fn minter(mut self, minter: impl AccessTokenMinter) -> Self {
        self.minter = Some(Arc::new(minter));
        self
    }

    /// Enables the authorization-code grant: `GET /authorize` asks `consent` who the user is
    /// and what they approve.
    pub fn consent(mut self, consent: impl Consent) -> Self {
        self.consent = Some(Arc::new(consent));
        self
    }

    /// Holds each client to `limit` token requests, counted by `limiter` under the key
    /// `oauth-token:{client_id}` once the client has authenticated; a request over it is 429
    /// `slow_down` with `Retry-After`. Default: [`DEFAULT_TOKEN_REQUEST_LIMIT`] in a
    /// [`MemoryRateLimiter`] (per replica; give a
    /// [`RedisRateLimiter`](crate::rate_limit::RedisRateLimiter) for one budget across them).
    ///
    /// ```
    /// use apitoken::oauth::{AuthorizationServer, MemoryGrantStore, access_token_format};
    /// use apitoken::rate_limit::{MemoryRateLimiter, RateLimit};
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// let verifier = Verifier::builder(MemoryStore::new()).also_accept(access_token_format()).build();
    /// let server = AuthorizationServer::builder(verifier, MemoryGrantStore::new())
    ///     .token_rate_limit(MemoryRateLimiter::new(), RateLimit::per_minute(10))
    ///     .build()?;
    /// # let _ = server;
    /// # Ok::<(), apitoken::oauth::BuildError>(())
    /// ```
    pub fn token_rate_limit(mut self, limiter: impl RateLimiter, limit: RateLimit) -> Self {
        self.token_limit = Some((Arc::new(limiter), limit));
        self
    }

    /// Lets clients request tokens as fast as they like (the token store still takes every
    /// access token they get). Not advised: one key could mint tokens by the thousand.
    pub fn unlimited_token_requests(mut self) -> Self {
        self.token_limit = None;
        self
    }

    /// Proxies whose forwarding header gives the client address (for client keys with an
    /// IP allowlist). Default: none; the address is the connection's peer (axum's
    /// `ConnectInfo`, or [`PeerAddr`](crate::middleware::PeerAddr)).
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.proxies = proxies;
        self
    }

    /// Builds the endpoints. Fails with the default [`OpaqueMinter`] when the verifier does
    /// not accept [`access_token_format`], and with a minter of
    /// [self-contained](AccessTokenMinter::self_contained) tokens (a
    /// [`JwtIssuer`](crate::jwt::JwtIssuer)) when the verifier has no JWT validator: the
    /// introspection endpoint (and the verifier's own routes) could not check them.
    pub fn build(self) -> Result<AuthorizationServer<S, G>, BuildError> {
        let minter: Arc<dyn AccessTokenMinter> = match self.minter {
            Some(minter) => minter,
            None => Arc::new(OpaqueMinter::new(self.verifier.clone())?),
        };
        #[cfg(feature = "jwt")]
        let validates_jwts = self
            .verifier
            .authenticator::<crate::jwt::JwtValidator>()
            .is_some();
        #[cfg(not(feature = "jwt"))]
        let validates_jwts = false;
        if minter.self_contained() && !validates_jwts {
            return Err(BuildError::NoJwtValidator);
        }
        Ok(AuthorizationServer {
            shared: Arc::new(Shared {
                verifier: self.verifier,
                grants: self.grants,
                minter,
                consent: self.consent,
                proxies: self.proxies,
                settings: self.settings,
                token_limit: self
                    .token_limit
                    .map(|(limiter, limit)| TokenLimit { limiter, limit }),
            }),
        })
    }
}
