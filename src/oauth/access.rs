//! Minting access tokens: the [`AccessTokenMinter`] trait and the opaque tokens this crate
//! issues into the application's [`TokenStore`].

use std::error::Error as StdError;
use std::fmt;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde_json::json;

use super::BoxFuture;
use crate::format::{Separator, TokenFormat};
use crate::id::TokenId;
use crate::issuer::{IssueError, NewToken};
use crate::rate_limit::RateLimit;
use crate::record::{Metadata, Owner};
use crate::scope::ScopeSet;
use crate::secret::Secret;
use crate::store::TokenStore;
use crate::verifier::Verifier;

/// The prefix of opaque access tokens.
pub const ACCESS_TOKEN_PREFIX: &str = "at_";

/// The metadata key under which an opaque access token's record notes its OAuth origin:
/// `{"oauth": {"kind": "access_token", "client_id": …, "grant_type": …}}`.
pub const ACCESS_TOKEN_METADATA_KEY: &str = "oauth";

/// The old name of [`ACCESS_TOKEN_METADATA_KEY`].
#[deprecated(
    note = "renamed `ACCESS_TOKEN_METADATA_KEY`: two public constants shared the name `METADATA_KEY`"
)]
pub const METADATA_KEY: &str = ACCESS_TOKEN_METADATA_KEY;

/// The format of opaque access tokens: `at_{12-character id}_{256-bit secret}{checksum}`.
///
/// Add it to the verifier with [`also_accept`](crate::VerifierBuilder::also_accept) so that
/// the ordinary [`AuthLayer`](crate::middleware::AuthLayer) accepts access tokens beside API
/// keys.
///
/// ```
/// use apitoken::oauth::access_token_format;
/// assert_eq!(access_token_format().prefix(), Some("at_"));
/// ```
pub fn access_token_format() -> TokenFormat {
    TokenFormat::builder()
        .prefix(ACCESS_TOKEN_PREFIX)
        .separator(Separator::Underscore)
        .build()
        .unwrap_or_else(|_| unreachable!("the access-token format is valid"))
}

/// How an access token was obtained (RFC 6749's grant types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrantType {
    /// `client_credentials` (RFC 6749 §4.4).
    ClientCredentials,
    /// `authorization_code` (RFC 6749 §4.1).
    AuthorizationCode,
    /// `refresh_token` (RFC 6749 §6).
    RefreshToken,
}

impl GrantType {
    /// The `grant_type` parameter's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
        }
    }

    /// The grant type named by a `grant_type` value, if this crate supports it.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "client_credentials" => Some(Self::ClientCredentials),
            "authorization_code" => Some(Self::AuthorizationCode),
            "refresh_token" => Some(Self::RefreshToken),
            _ => None,
        }
    }
}

impl fmt::Display for GrantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the endpoint asks a minter for: one access token.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AccessTokenRequest {
    /// The token's id, chosen by the endpoint (a JWT's `jti`). The endpoint revokes this id in
    /// the token store when the grant it came from is revoked.
    pub jti: TokenId,
    /// Whom the token acts for: the client's owner (client credentials) or the user.
    pub owner: Owner,
    /// The scopes granted, already narrowed to what the client (and the grant) hold.
    pub scopes: ScopeSet,
    /// The client the token is issued to (the id of its API key).
    pub client_id: TokenId,
    /// The grant it comes from.
    pub grant_type: GrantType,
    /// When it is issued.
    pub issued_at: DateTime<Utc>,
    /// When it expires: the configured lifetime, or earlier if the client's own key expires
    /// first.
    pub expires_at: DateTime<Utc>,
    /// Networks the token may be used from (the client key's allowlist, for client
    /// credentials); empty means anywhere. A minter that cannot enforce an allowlist must
    /// refuse a non-empty one.
    pub allowed_ips: Vec<IpNet>,
    /// The client key's own per-token rate limit, which the token must keep (never looser
    /// than its maker's); `None` when the key has none. A minter that cannot enforce a limit
    /// must refuse a request with one.
    pub rate_limit: Option<RateLimit>,
}

/// A minted access token.
#[derive(Debug)]
#[non_exhaustive]
pub struct MintedAccessToken {
    /// The token text, sent to the client once.
    pub token: Secret,
    /// Seconds until it expires (RFC 6749 §5.1 `expires_in`).
    pub expires_in: u64,
}

impl MintedAccessToken {
    /// A token and its remaining lifetime in seconds.
    pub fn new(token: Secret, expires_in: u64) -> Self {
        Self { token, expires_in }
    }
}

/// Why no access token was minted. The endpoint answers 503 for
/// [`Unavailable`](Self::Unavailable) and 500 otherwise; neither reveals the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// A store the minter needs could not answer.
    #[error("a store needed to mint the access token is unavailable")]
    Unavailable(#[source] Box<dyn StdError + Send + Sync>),
    /// Anything else (no randomness, a key missing, a request the minter cannot honour).
    #[error("the access token could not be minted")]
    Failed(#[source] Box<dyn StdError + Send + Sync>),
}

/// Turns a granted request into access-token text.
///
/// The endpoint decides everything (who, what scopes, how long, the id); a minter only
/// renders and, for opaque tokens, stores. [`OpaqueMinter`] is this crate's; a JWT minter
/// plugs in the same way. A trait object, since it runs once per grant, not per request.
///
/// ```
/// use apitoken::oauth::{AccessTokenMinter, AccessTokenRequest, BoxFuture, MintError, MintedAccessToken};
/// use apitoken::Secret;
///
/// /// Mints nothing usable: shows the shape of a minter.
/// #[derive(Debug)]
/// struct Fixed;
///
/// impl AccessTokenMinter for Fixed {
///     fn mint(&self, request: AccessTokenRequest) -> BoxFuture<'_, Result<MintedAccessToken, MintError>> {
///         Box::pin(async move {
///             let seconds = (request.expires_at - request.issued_at).num_seconds().max(0) as u64;
///             Ok(MintedAccessToken::new(Secret::new(format!("fixed-{}", request.jti)), seconds))
///         })
///     }
/// }
/// ```
pub trait AccessTokenMinter: Send + Sync + fmt::Debug + 'static {
    /// Mints the token `request` describes.
    fn mint(
        &self,
        request: AccessTokenRequest,
    ) -> BoxFuture<'_, Result<MintedAccessToken, MintError>>;

    /// Whether the tokens are checked without the token store (signed tokens such as JWTs).
    /// The server then needs a verifier with a JWT validator, which introspection checks them
    /// with; [`AuthorizationServerBuilder::build`](super::AuthorizationServerBuilder::build)
    /// refuses one without. Default: `false` (the tokens are records in the store).
    fn self_contained(&self) -> bool {
        false
    }
}

/// Opaque access tokens: records in the application's [`TokenStore`], issued in
/// [`access_token_format`] with the request's `jti` as id, revocable at once with the
/// store's `revoke`.
///
/// The record's owner, scopes, expiry and allowlist are the request's; its name is
/// `"OAuth access token"`, and its metadata notes `{"oauth": {"kind": "access_token",
/// "client_id": …, "grant_type": …}}`, the client key's `rate_limit` if it has one, and
/// `rate_limit_budget`: the client key's id, so the token spends the key's budget. The verifier turns it into an ordinary
/// [`Principal`](crate::Principal).
///
/// ```
/// use apitoken::oauth::{OpaqueMinter, access_token_format};
/// use apitoken::{MemoryStore, Verifier};
///
/// let verifier = Verifier::builder(MemoryStore::new())
///     .also_accept(access_token_format())
///     .build();
/// assert!(OpaqueMinter::new(verifier).is_ok());
/// // A verifier that would refuse the tokens is refused.
/// assert!(OpaqueMinter::new(Verifier::builder(MemoryStore::new()).build()).is_err());
/// ```
pub struct OpaqueMinter<S> {
    verifier: Verifier<S>,
    format: TokenFormat,
}

impl<S> fmt::Debug for OpaqueMinter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpaqueMinter")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// The verifier given to [`OpaqueMinter::new`] does not accept [`access_token_format`], so
/// the tokens it would mint could never be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the verifier does not accept the access-token format; add it with `also_accept(access_token_format())`"
)]
#[non_exhaustive]
pub struct FormatNotAccepted;

impl<S: TokenStore> OpaqueMinter<S> {
    /// A minter issuing into `verifier`'s store with its hasher and clock. The verifier must
    /// accept [`access_token_format`].
    pub fn new(verifier: Verifier<S>) -> Result<Self, FormatNotAccepted> {
        let format = access_token_format();
        if !verifier.accepts(&format) {
            return Err(FormatNotAccepted);
        }
        Ok(Self { verifier, format })
    }
}

/// The metadata an opaque access token's record carries.
pub(crate) fn access_metadata(client_id: &TokenId, grant: GrantType) -> Metadata {
    let mut metadata = Metadata::new();
    metadata.insert(
        ACCESS_TOKEN_METADATA_KEY.to_owned(),
        json!({ "kind": "access_token", "client_id": client_id.as_str(), "grant_type": grant.as_str() }),
    );
    metadata
}

/// The client an access token's record was issued to, if the record is an OAuth access token.
pub(crate) fn access_token_client(metadata: &Metadata) -> Option<&str> {
    let oauth = metadata.get(ACCESS_TOKEN_METADATA_KEY)?;
    if oauth.get("kind")?.as_str()? != "access_token" {
        return None;
    }
    oauth.get("client_id")?.as_str()
}

impl<S: TokenStore + 'static> AccessTokenMinter for OpaqueMinter<S> {
    fn mint(
        &self,
        request: AccessTokenRequest,
    ) -> BoxFuture<'_, Result<MintedAccessToken, MintError>> {
        Box::pin(async move {
            let mut metadata = access_metadata(&request.client_id, request.grant_type);
            // Its requests spend its client key's budget, not a fresh one of its own.
            metadata.insert(
                crate::rate_limit::BUDGET_METADATA_KEY.to_owned(),
                request.client_id.as_str().into(),
            );
            if let Some(limit) = request.rate_limit {
                metadata.insert(
                    crate::rate_limit::LIMIT_METADATA_KEY.to_owned(),
                    limit.to_metadata_value(),
                );
            }
            let new = NewToken::new("OAuth access token", request.owner)
                .scope_set(request.scopes)
                .expires_at(request.expires_at)
                .allowed_ips(request.allowed_ips)
                .metadata(metadata);
            let (issued_at, expires_at) = (request.issued_at, request.expires_at);
            let issued = self
                .verifier
                .issuer()
                .issue_as(&self.format, request.jti, new)
                .await
                .map_err(|err| match err {
                    IssueError::Store(store) => MintError::Unavailable(Box::new(store)),
                    other => MintError::Failed(Box::new(other)),
                })?;
            let seconds = (expires_at - issued_at).num_seconds();
            Ok(MintedAccessToken::new(
                issued.token,
                u64::try_from(seconds).unwrap_or(0),
            ))
        })
    }
}
