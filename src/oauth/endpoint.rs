//! The routes: the token endpoint's dispatch and the client-credentials grant, revocation
//! (RFC 7009) and introspection (RFC 7662). The refresh and code grants are in `refresh.rs`
//! and `code.rs`, the authorization endpoint in `authorize.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use ::axum::Router;
use ::axum::body::Body;
use ::axum::extract::{Request, State};
use ::axum::http::{HeaderValue, StatusCode, header};
use ::axum::response::{IntoResponse, Response};
use ::axum::routing::{get, post};
use chrono::{DateTime, Utc};
use http::HeaderMap;
use ipnet::IpNet;
use serde_json::{Value, json};

use super::access::{AccessTokenRequest, GrantType, MintError, access_token_client};
use super::client::{self, AuthenticatedClient};
use super::refresh;
use super::response::{ErrorCode, OAuthError, no_store};
use super::{GrantStore, Shared, authorize, code};
use crate::format::TokenFormat;
use crate::id::TokenId;
use crate::rate_limit::RateLimit;
use crate::record::Owner;
use crate::scope::ScopeSet;
use crate::secret::Secret;
use crate::store::TokenStore;

/// The largest form body read: a token request is a few hundred bytes.
const MAX_FORM_BYTES: usize = 16 * 1024;

pub(crate) fn router<S: TokenStore + 'static, G: GrantStore + 'static>(
    shared: Arc<Shared<S, G>>,
) -> Router {
    let mut router = Router::new()
        .route("/token", post(token::<S, G>))
        .route("/revoke", post(revoke::<S, G>))
        .route("/introspect", post(introspect::<S, G>));
    if shared.consent.is_some() {
        router = router.route("/authorize", get(authorize::authorize::<S, G>));
    }
    router.with_state(shared)
}

type Server<S, G> = State<Arc<Shared<S, G>>>;

/// An `application/x-www-form-urlencoded` body. Each parameter at most once (RFC 6749 §3.2);
/// a parameter without a value counts as absent (§3.1).
#[derive(Default)]
pub(crate) struct Form(HashMap<String, String>);

/// Names only: values include client secrets, codes and tokens.
impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Form {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Parses urlencoded pairs; `None` if a parameter repeats.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        let mut pairs = HashMap::new();
        for (key, value) in form_urlencoded::parse(bytes) {
            if pairs.contains_key(key.as_ref()) {
                return None;
            }
            pairs.insert(key.into_owned(), value.into_owned());
        }
        pairs.retain(|_, value: &mut String| !value.is_empty());
        Some(Self(pairs))
    }

    async fn read(headers: &HeaderMap, body: Body) -> Result<Self, OAuthError> {
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|media| {
                media
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(OAuthError::new(
                ErrorCode::InvalidRequest,
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let bytes = ::axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| OAuthError::new(ErrorCode::InvalidRequest, "unreadable body"))?;
        Self::parse(&bytes)
            .ok_or_else(|| OAuthError::new(ErrorCode::InvalidRequest, "a parameter is repeated"))
    }
}

/// A request's form and authenticated client.
struct ClientRequest {
    form: Form,
    client: AuthenticatedClient,
}

impl<S: TokenStore + 'static, G: GrantStore + 'static> Shared<S, G> {
    /// Reads the form and authenticates the client; `before_auth` checks the form first.
    async fn client_request(
        &self,
        request: Request,
        before_auth: impl FnOnce(&Form) -> Result<(), OAuthError>,
    ) -> Result<ClientRequest, OAuthError> {
        let client_ip = self.proxies.client_ip(&request);
        let (parts, body) = request.into_parts();
        let form = Form::read(&parts.headers, body).await?;
        before_auth(&form)?;
        let client = client::authenticate(&self.verifier, &parts.headers, &form, client_ip).await?;
        Ok(ClientRequest { form, client })
    }

    /// Mints an access token for `client` acting for `owner`. Returns its id and expiry (to
    /// note in a grant family) and the token.
    pub(crate) async fn mint_access(
        &self,
        client: &AuthenticatedClient,
        owner: Owner,
        scopes: ScopeSet,
        grant_type: GrantType,
        allowed_ips: Vec<IpNet>,
    ) -> Result<(TokenId, DateTime<Utc>, super::MintedAccessToken), OAuthError> {
        let request = self.access_request(client, owner, scopes, grant_type, allowed_ips)?;
        let (jti, expires_at) = (request.jti, request.expires_at);
        Ok((jti, expires_at, self.mint(request).await?))
    }

    /// What an access token for `client` acting for `owner` will be: its id chosen, its
    /// expiry and limits set, nothing stored yet.
    pub(crate) fn access_request(
        &self,
        client: &AuthenticatedClient,
        owner: Owner,
        scopes: ScopeSet,
        grant_type: GrantType,
        allowed_ips: Vec<IpNet>,
    ) -> Result<AccessTokenRequest, OAuthError> {
        let now = self.verifier.now();
        let lifetime_end = now
            .checked_add_signed(self.settings.access_lifetime)
            .ok_or_else(OAuthError::server_error)?;
        // Never longer than the client's own key works.
        let expires_at = client
            .principal
            .effective_expiry()
            .map_or(lifetime_end, |end| end.min(lifetime_end));
        Ok(AccessTokenRequest {
            jti: random_id(&super::access_token_format())?,
            owner,
            scopes,
            client_id: *client.id(),
            grant_type,
            issued_at: now,
            expires_at,
            allowed_ips,
            rate_limit: RateLimit::of_token(client.principal.metadata()),
        })
    }

    /// Mints the token `request` describes.
    pub(crate) async fn mint(
        &self,
        request: AccessTokenRequest,
    ) -> Result<super::MintedAccessToken, OAuthError> {
        self.minter.mint(request).await.map_err(|err| {
            tracing::warn!(error = %err, "access token not minted");
            match err {
                MintError::Unavailable(_) => OAuthError::unavailable(),
                _ => OAuthError::server_error(),
            }
        })
    }

    /// Spends one of the client's token requests; 429 `slow_down` when none is left. A
    /// limiter that cannot answer lets the request through (the access token it yields still
    /// spends the client key's own rate-limit budget).
    async fn spend_token_request(&self, client: &AuthenticatedClient) -> Result<(), OAuthError> {
        let Some(limit) = &self.token_limit else {
            return Ok(());
        };
        let key = format!("oauth-token:{}", client.id());
        match limit.limiter.acquire_boxed(&key, &limit.limit).await {
            Ok(decision) if decision.is_allowed() => Ok(()),
            Ok(decision) => {
                tracing::debug!(client = %client.id(), "token requests rate limited");
                Err(OAuthError::slow_down(decision.retry_after()))
            }
            Err(error) => {
                tracing::warn!(
                    ?error,
                    "token request limiter unavailable; request let through"
                );
                Ok(())
            }
        }
    }

    /// Revokes an access token issued by this server, ignoring failure: used when a response
    /// is refused after the token was minted, so it never reaches anyone anyway.
    pub(crate) async fn discard_access(&self, id: &TokenId) {
        let _ = self.verifier.revoke(id).await;
    }

    /// Revokes a grant family: its refresh tokens and the access tokens issued under it.
    pub(crate) async fn revoke_family(&self, family: &TokenId) -> Result<(), OAuthError> {
        let now = self.verifier.now();
        let revoked = self
            .grants
            .revoke_family(family, now)
            .await
            .map_err(|_| OAuthError::unavailable())?;
        if let Some(family) = revoked {
            for (id, expires_at) in &family.access_tokens {
                if *expires_at > now {
                    self.verifier
                        .store()
                        .revoke(id, now)
                        .await
                        .map_err(|_| OAuthError::unavailable())?;
                }
            }
        }
        Ok(())
    }
}

/// A fresh random id in `format`'s id kind.
pub(crate) fn random_id(format: &TokenFormat) -> Result<TokenId, OAuthError> {
    match format.random_id() {
        Ok(Some(id)) => Ok(id),
        _ => Err(OAuthError::server_error()),
    }
}

/// Scopes requested with `scope`, each within what `holds` allows (`invalid_scope`
/// otherwise); `default` when none are requested.
pub(crate) fn requested_scopes(
    scope: Option<&str>,
    default: &ScopeSet,
    holds: impl Fn(&str) -> bool,
) -> Result<ScopeSet, OAuthError> {
    let refused = || {
        OAuthError::new(
            ErrorCode::InvalidScope,
            "the requested scope is invalid or exceeds what was granted",
        )
    };
    let Some(text) = scope else {
        return Ok(default.clone());
    };
    let scopes = ScopeSet::parse(text).map_err(|_| refused())?;
    if scopes.iter().all(|s| holds(s.as_str())) {
        Ok(scopes)
    } else {
        Err(refused())
    }
}

/// RFC 6749 §5.1's successful response.
pub(crate) fn token_response(
    access: super::MintedAccessToken,
    refresh: Option<Secret>,
    scopes: &ScopeSet,
) -> Response {
    let mut body = json!({
        "access_token": access.token.expose_secret(),
        "token_type": "Bearer",
        "expires_in": access.expires_in,
        "scope": scopes.to_string(),
    });
    if let Some(refresh) = refresh {
        body["refresh_token"] = Value::from(refresh.expose_secret());
    }
    no_store(StatusCode::OK, body)
}

async fn token<S: TokenStore + 'static, G: GrantStore + 'static>(
    State(shared): Server<S, G>,
    request: Request,
) -> Response {
    token_grant(&shared, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn token_grant<S: TokenStore + 'static, G: GrantStore + 'static>(
    shared: &Shared<S, G>,
    request: Request,
) -> Result<Response, OAuthError> {
    let ClientRequest { form, client } = shared
        .client_request(request, |form| match form.get("grant_type") {
            Some(_) => Ok(()),
            None => Err(OAuthError::new(
                ErrorCode::InvalidRequest,
                "grant_type is required",
            )),
        })
        .await?;
    let grant = form
        .get("grant_type")
        .and_then(GrantType::parse)
        .ok_or_else(|| {
            OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                "the grant type is not supported",
            )
        })?;
    if !client.registration.allows(grant) {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "the client may not use this grant type",
        ));
    }
    shared.spend_token_request(&client).await?;
    match grant {
        GrantType::ClientCredentials => client_credentials(shared, &client, &form).await,
        GrantType::RefreshToken => refresh::refresh_grant(shared, &client, &form).await,
        GrantType::AuthorizationCode => code::code_grant(shared, &client, &form).await,
    }
}

/// RFC 6749 §4.4: a token for the client itself, with at most the scopes of its key, and no
/// refresh token (§4.4.3).
async fn client_credentials<S: TokenStore + 'static, G: GrantStore + 'static>(
    shared: &Shared<S, G>,
    client: &AuthenticatedClient,
    form: &Form,
) -> Result<Response, OAuthError> {
    let principal = &client.principal;
    let policy = shared.verifier.scope_policy();
    let scopes = requested_scopes(form.get("scope"), principal.scopes(), |scope| {
        policy.can_delegate(principal.scopes(), scope)
    })?;
    let (_, _, access) = shared
        .mint_access(
            client,
            principal.owner().clone(),
            scopes.clone(),
            GrantType::ClientCredentials,
            principal.record().allowed_ips.clone(),
        )
        .await?;
    Ok(token_response(access, None, &scopes))
}

/// RFC 7009: 200 whatever the token was; only the client's own tokens are revoked.
async fn revoke<S: TokenStore + 'static, G: GrantStore + 'static>(
    State(shared): Server<S, G>,
    request: Request,
) -> Response {
    match revoke_token(&shared, request).await {
        Ok(()) => {
            let mut response = StatusCode::OK.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(err) => err.into_response(),
    }
}

async fn revoke_token<S: TokenStore + 'static, G: GrantStore + 'static>(
    shared: &Shared<S, G>,
    request: Request,
) -> Result<(), OAuthError> {
    let ClientRequest { form, client } = shared.client_request(request, require_token).await?;
    let token = form.get("token").unwrap_or_default();
    // The hint is only a hint (RFC 7009 §2.1): the token's prefix says what it is.
    let family = match refresh::find(shared, token).await? {
        refresh::Presented::Found(found) => Some(found.family),
        // A rotated token the store has forgotten: revoking it revokes its grant, as
        // revoking a rotated token it still holds does.
        refresh::Presented::Superseded(family) => Some(family),
        refresh::Presented::Unknown => None,
    };
    if let Some(family) = family {
        if family.client_id == *client.id() {
            shared.revoke_family(&family.id).await?;
        }
        return Ok(());
    }
    let record = shared
        .verifier
        .inspect(token)
        .await
        .map_err(|_| OAuthError::unavailable())?;
    if let Some(record) = record
        && access_token_client(&record.metadata) == Some(client.id().as_str())
    {
        shared
            .verifier
            .store()
            .revoke(&record.id, shared.verifier.now())
            .await
            .map_err(|_| OAuthError::unavailable())?;
    }
    Ok(())
}

fn require_token(form: &Form) -> Result<(), OAuthError> {
    match form.get("token") {
        Some(_) => Ok(()),
        None => Err(OAuthError::new(
            ErrorCode::InvalidRequest,
            "token is required",
        )),
    }
}

/// RFC 7662, for clients whose key holds the introspection scope.
async fn introspect<S: TokenStore + 'static, G: GrantStore + 'static>(
    State(shared): Server<S, G>,
    request: Request,
) -> Response {
    match introspect_token(&shared, request).await {
        Ok(body) => no_store(StatusCode::OK, body),
        Err(err) => err.into_response(),
    }
}

async fn introspect_token<S: TokenStore + 'static, G: GrantStore + 'static>(
    shared: &Shared<S, G>,
    request: Request,
) -> Result<Value, OAuthError> {
    let ClientRequest { form, client } = shared.client_request(request, require_token).await?;
    if client
        .principal
        .require(&shared.settings.introspection)
        .is_err()
    {
        return Err(OAuthError::new(
            ErrorCode::InsufficientScope,
            "the client may not introspect tokens",
        ));
    }
    let token = form.get("token").unwrap_or_default();
    let inactive = json!({ "active": false });
    let found = match refresh::find(shared, token).await? {
        refresh::Presented::Found(found) => Some(found),
        refresh::Presented::Superseded(_) => return Ok(inactive),
        refresh::Presented::Unknown => None,
    };
    if let Some(found) = found {
        return Ok(match refresh::active_until(shared, &found) {
            Some(exp) => json!({
                "active": true,
                "scope": found.family.scopes.to_string(),
                "client_id": found.family.client_id.as_str(),
                "sub": found.family.owner.as_str(),
                "iat": found.record.created_at.timestamp(),
                "exp": exp.timestamp(),
                "token_type": "refresh_token",
            }),
            None => inactive,
        });
    }
    #[cfg(feature = "jwt")]
    if let Some(validator) = shared.verifier.authenticator::<crate::jwt::JwtValidator>()
        && crate::jwt::has_jwt_shape(token)
    {
        // The server's own JWT access tokens: valid by signature and claims, not by a record.
        return Ok(match validator.validate(token, shared.verifier.now()) {
            Ok(claims) => json!({
                "active": true,
                "scope": claims.scopes.to_string(),
                "client_id": claims.client_id,
                "sub": claims.subject.as_str(),
                "iat": claims.issued_at.timestamp(),
                "exp": claims.expires_at.timestamp(),
                "iss": claims.issuer,
                "aud": claims.audience,
                "token_type": "Bearer",
                "jti": claims.id.as_str(),
            }),
            Err(_) => inactive,
        });
    }
    let record = shared
        .verifier
        .inspect(token)
        .await
        .map_err(|_| OAuthError::unavailable())?;
    let Some(record) = record else {
        return Ok(inactive);
    };
    let Some(client_id) = access_token_client(&record.metadata) else {
        // An API key, not an OAuth token: not this endpoint's to describe.
        return Ok(inactive);
    };
    let mut body = json!({
        "active": true,
        "scope": record.scopes.to_string(),
        "client_id": client_id,
        "sub": record.owner.as_str(),
        "iat": record.created_at.timestamp(),
        "token_type": "Bearer",
        "jti": record.id.as_str(),
    });
    if let Some(exp) = record.expires_at {
        body["exp"] = Value::from(exp.timestamp());
    }
    Ok(body)
}
