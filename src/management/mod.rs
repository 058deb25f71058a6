//! A token-management API to mount in an axum application: create, list, rotate and revoke
//! the caller's own team's tokens.

mod input;

use std::sync::Arc;

use ::axum::extract::rejection::PathRejection;
use ::axum::extract::{Path, State};
use ::axum::http::{HeaderValue, StatusCode, header};
use ::axum::response::{IntoResponse, Response};
use ::axum::routing::{get, post};
use ::axum::{Json, Router};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::id::TokenId;
use crate::issuer::{IssueError, IssuedToken, NewToken};
use crate::middleware::RequireScopesLayer;
use crate::name::{InvalidName, MAX_NAME_LEN, check_name, escape_json};
use crate::rate_limit::{self, RateLimit};
use crate::record::{Metadata, TokenRecord};
use crate::scope::{InvalidScope, ScopeRequirement, ScopeSet};
use crate::store::{StoreErrorKind, TokenStore};
use crate::verifier::{CredentialKind, Principal, Verifier};
use input::{JsonBody, JsonOrEmpty};

/// The default grace period of a rotation when the request names none: a day for clients to
/// switch to the new token.
pub const DEFAULT_ROTATION_GRACE: TimeDelta = TimeDelta::days(1);

/// Token-management routes for the caller's own team (feature `axum`).
///
/// Mount the router under any path, inside an [`AuthLayer`](crate::middleware::AuthLayer):
///
/// | route | scope | does |
/// |---|---|---|
/// | `GET /` | read | lists the team's active tokens: id, name, scopes, allowlist, created, last used, expiry; never a secret or hash |
/// | `POST /` `{"name", "scopes", "expires_at"?, "allowed_ips"?}` | write | 201 with the token text, once, `Cache-Control: no-store` |
/// | `POST /{id}/rotate` `{"grace_seconds"?}` | write | 201 with the new token; the old one works for the grace period (default a day; 0 revokes it now) |
/// | `DELETE /{id}` | write | 204; revoked at once |
/// | `DELETE /` | write | revokes every token of the team (an employee left): `{"revoked": n}` |
///
/// Least privilege on creation and rotation: a token can hand out only scopes it holds itself,
/// with everything they imply under the verifier's policy
/// ([`Principal::can_delegate`](crate::Principal::can_delegate)); only for its own owner; no
/// later than its own [effective expiry](crate::Principal::effective_expiry); and no wider
/// than its own IP allowlist; and with its own per-token rate limit, if it has one. Rotating a
/// token hands out a working copy of it, so the same
/// rules decide who may rotate which token. Another team's token ids answer 404, so they cannot
/// be probed. Scopes default to `tokens:read` / `tokens:write`.
///
/// Every error is JSON, `{"message": "…"}`, as the seeds' `"Unauthenticated."`: 400 for
/// malformed JSON, 413 for a body over axum's limit (`DefaultBodyLimit`, 2 MB), 415 for a body
/// that is not `application/json`, 422 for JSON that does not fit (a missing, mistyped or
/// unknown field: unknown fields are refused, not ignored), 404 for unknown paths and ids, 405
/// for other methods. A message may name a field, never repeat a value. An empty rotation body
/// (none at all, or `{}`) means the default grace. Names in responses are JSON with the
/// characters [`check_name`] refuses written as `\uXXXX` escapes:
/// the same value, safe to print.
///
/// ```
/// use apitoken::management::TokenApi;
/// use apitoken::middleware::AuthLayer;
/// use apitoken::{MemoryStore, Verifier};
/// use axum::Router;
///
/// let verifier = Verifier::builder(MemoryStore::new()).build();
/// let app: Router = Router::new()
///     .nest("/api/v1/tokens", TokenApi::new(verifier.clone()).router())
///     .layer(AuthLayer::new(verifier));
/// ```
#[derive(Debug)]
pub struct TokenApi<S> {
    verifier: Verifier<S>,
    read: ScopeRequirement,
    write: ScopeRequirement,
}

impl<S: TokenStore + 'static> TokenApi<S> {
    /// The API over `verifier`'s store and issuer, guarded by `tokens:read` / `tokens:write`.
    pub fn new(verifier: Verifier<S>) -> Self {
        Self {
            verifier,
            read: scope("tokens:read"),
            write: scope("tokens:write"),
        }
    }

    /// Other scopes to guard reading and writing.
    pub fn scopes(mut self, read: &str, write: &str) -> Result<Self, InvalidScope> {
        self.read = ScopeRequirement::all([read])?;
        self.write = ScopeRequirement::all([write])?;
        Ok(self)
    }

    /// The routes, ready to `nest` under the application's own path.
    pub fn router(self) -> Router {
        let state = Arc::new(self.verifier);
        let reads = Router::new()
            .route("/", get(list::<S>))
            .route_layer(RequireScopesLayer::new(self.read));
        let writes = Router::new()
            .route("/", post(create::<S>).delete(revoke_all::<S>))
            .route("/{id}", ::axum::routing::delete(revoke::<S>))
            .route("/{id}/rotate", post(rotate::<S>))
            .route_layer(RequireScopesLayer::new(self.write));
        // axum's own 404 and 405 have empty bodies: the API answers in JSON throughout.
        reads
            .merge(writes)
            .method_not_allowed_fallback(method_not_allowed)
            .fallback(not_found_route)
            .with_state(state)
    }
}

fn scope(text: &'static str) -> ScopeRequirement {
    ScopeRequirement::all([text]).unwrap_or_default()
}

type Shared<S> = State<Arc<Verifier<S>>>;

fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "message": text }))).into_response()
}

fn unavailable() -> Response {
    message(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable.")
}

fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "Not found.")
}

async fn not_found_route() -> Response {
    not_found()
}

async fn method_not_allowed() -> Response {
    message(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.")
}

/// `value` as JSON, with the characters names may not hold escaped: names stored before the
/// rule (or by other writers) must not reach a terminal raw.
fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(text) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            escape_json(&text).into_owned(),
        )
            .into_response(),
        Err(_) => message(StatusCode::INTERNAL_SERVER_ERROR, "Server error."),
    }
}

/// A newly issued token, once, uncached (RFC 6749 §5.1).
fn issued(token: IssuedToken) -> Response {
    let body = json!({
        "id": token.record.id,
        "name": token.record.name,
        "token": token.token.expose_secret(),
        "scopes": token.record.scopes,
        "allowed_ips": token.record.allowed_ips,
        "created_at": token.record.created_at,
        "expires_at": token.record.expires_at,
    });
    let mut response = json_response(StatusCode::CREATED, &body);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Hands out a token just issued, unless the caller was revoked while it was being issued:
/// then the new token is revoked too and the caller gets 401. The caller always belongs to the
/// new token's owner, so an owner-wide revocation racing a create or a rotation revokes the
/// caller, and this check catches it ("revoke all" must mean all).
async fn settle<S: TokenStore>(
    verifier: &Verifier<S>,
    principal: &Principal,
    check_caller: bool,
    token: IssuedToken,
) -> Response {
    // A JWT caller has no record to check again, and no revocation reaches it before its
    // `exp`; what it mints expires by then anyway (its effective expiry).
    if !check_caller || principal.credential_kind() == CredentialKind::Jwt {
        return issued(token);
    }
    let store = verifier.store();
    // Past any cache: a caller revoked on another replica may still be cached here.
    let verdict = match store.get_current(principal.token_id()).await {
        Ok(Some(stored)) if !stored.record.is_revoked() => return issued(token),
        Ok(_) => message(StatusCode::UNAUTHORIZED, "Unauthenticated."),
        Err(_) => unavailable(),
    };
    // The revoke must stick; if even this fails, the caller still gets no token.
    let _ = store.revoke(&token.record.id, verifier.now()).await;
    verdict
}

/// What a token list shows.
#[derive(Serialize)]
struct TokenView<'a> {
    id: TokenId,
    name: &'a str,
    scopes: &'a ScopeSet,
    allowed_ips: &'a [ipnet::IpNet],
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
}

impl<'a> From<&'a TokenRecord> for TokenView<'a> {
    fn from(record: &'a TokenRecord) -> Self {
        Self {
            id: record.id,
            name: &record.name,
            scopes: &record.scopes,
            allowed_ips: &record.allowed_ips,
            created_at: record.created_at,
            last_used_at: record.last_used_at,
            expires_at: record.expires_at,
        }
    }
}

async fn list<S: TokenStore>(State(verifier): Shared<S>, principal: Principal) -> Response {
    let now = verifier.now();
    match verifier.store().list_by_owner(principal.owner()).await {
        Ok(records) => {
            let active: Vec<TokenView<'_>> = records
                .iter()
                .filter(|r| !r.is_revoked() && !r.is_expired_at(now))
                .map(TokenView::from)
                .collect();
            json_response(StatusCode::OK, &active)
        }
        Err(_) => unavailable(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    allowed_ips: Vec<ipnet::IpNet>,
}

async fn create<S: TokenStore>(
    State(verifier): Shared<S>,
    principal: Principal,
    JsonBody(body): JsonBody<Create>,
) -> Response {
    let Ok(requested) = ScopeRequirement::all(&body.scopes) else {
        return message(StatusCode::UNPROCESSABLE_ENTITY, "Invalid scope.");
    };
    // A token hands out only what it holds, implications included: no privilege escalation.
    if !principal.can_delegate(requested.scopes()) {
        return message(StatusCode::FORBIDDEN, "This action is unauthorized.");
    }
    // Nor can it outlive itself (its own expiry, the maximum lifetime or idle time).
    let expires_at = match (body.expires_at, principal.effective_expiry()) {
        (Some(wanted), Some(limit)) => Some(wanted.min(limit)),
        (wanted, limit) => wanted.or(limit),
    };
    // Nor reach from wider than it may: a restricted token mints restricted tokens.
    let allowed_ips = if body.allowed_ips.is_empty() {
        principal.record().allowed_ips.clone()
    } else if within(&body.allowed_ips, &principal.record().allowed_ips) {
        body.allowed_ips
    } else {
        return message(StatusCode::FORBIDDEN, "This action is unauthorized.");
    };
    // Nor spend faster than it may: the maker's own rate limit goes with what it mints.
    let mut metadata = Metadata::new();
    if let Some(limit) = RateLimit::of_token(principal.metadata()) {
        metadata.insert(
            rate_limit::LIMIT_METADATA_KEY.to_owned(),
            limit.to_metadata_value(),
        );
    }
    // The issuer refuses the same names; this says which rule, and which character.
    let name_problem = check_name(&body.name).err();
    let mut new = NewToken::new(body.name, principal.owner().clone())
        .scope_set(requested.scopes().clone())
        .allowed_ips(allowed_ips)
        .metadata(metadata);
    if let Some(at) = expires_at {
        new = new.expires_at(at);
    }
    match verifier.issuer().issue(new).await {
        Ok(token) => settle(&verifier, &principal, true, token).await,
        Err(IssueError::InvalidName) => invalid_name(name_problem),
        Err(IssueError::ExpiryOutOfRange) => message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The expiry must be in the future.",
        ),
        Err(IssueError::TooManyScopes { .. } | IssueError::TooManyNetworks { .. }) => message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Too many scopes or allowlist entries.",
        ),
        Err(_) => unavailable(),
    }
}

/// The 422 for a refused name: the rule, and the character as a code point, never the name.
fn invalid_name(problem: Option<InvalidName>) -> Response {
    let text = match problem {
        Some(InvalidName::Character(c)) => format!(
            "The name may not contain U+{:04X}: control, format, line and paragraph separator characters are refused.",
            u32::from(c)
        ),
        _ => format!("The name must be 1 to {MAX_NAME_LEN} characters."),
    };
    message(StatusCode::UNPROCESSABLE_ENTITY, &text)
}

/// Whether `nets` reach no further than `limit` (an empty `limit` is everywhere).
fn within(nets: &[ipnet::IpNet], limit: &[ipnet::IpNet]) -> bool {
    limit.is_empty()
        || nets
            .iter()
            .all(|net| limit.iter().any(|own| own.contains(net)))
}

/// The longest grace period a rotation may ask for.
pub const MAX_ROTATION_GRACE: TimeDelta = TimeDelta::days(90);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotate {
    grace_seconds: Option<i64>,
}

/// The caller's team's token `id`, or the response to give instead.
async fn own_token<S: TokenStore>(
    verifier: &Verifier<S>,
    principal: &Principal,
    id: &str,
) -> Result<Arc<TokenRecord>, Response> {
    let id = TokenId::new(id).map_err(|_| not_found())?;
    match verifier.store().get(&id).await {
        Ok(Some(stored)) if stored.record.owner == *principal.owner() => Ok(stored.record),
        // Another team's token is "not found": its existence is not revealed.
        Ok(_) => Err(not_found()),
        Err(_) => Err(unavailable()),
    }
}

async fn rotate<S: TokenStore>(
    State(verifier): Shared<S>,
    principal: Principal,
    id: Result<Path<String>, PathRejection>,
    JsonOrEmpty(body): JsonOrEmpty<Rotate>,
) -> Response {
    // An id that is not even text (`%FF`) names no token.
    let Ok(Path(id)) = id else {
        return not_found();
    };
    let target = match own_token(&verifier, &principal, &id).await {
        Ok(record) => record,
        Err(response) => return response,
    };
    // Rotating hands the caller a working copy of the target: only a caller that could have
    // created the target may rotate it.
    let own_ips = &principal.record().allowed_ips;
    let wider = if target.allowed_ips.is_empty() {
        !own_ips.is_empty()
    } else {
        !within(&target.allowed_ips, own_ips)
    };
    // A rate-limited caller may not hand itself a copy of a token with a looser limit (or
    // with none, which is the layer's default and may be anything).
    let faster = RateLimit::of_token(principal.metadata()).is_some_and(|own| {
        RateLimit::of_token(&target.metadata).is_none_or(|theirs| !theirs.is_within(&own))
    });
    if !principal.can_delegate(&target.scopes) || wider || faster {
        return message(StatusCode::FORBIDDEN, "This action is unauthorized.");
    }
    let grace = match body.grace_seconds {
        None => DEFAULT_ROTATION_GRACE,
        Some(seconds) => match TimeDelta::try_seconds(seconds) {
            Some(grace) if grace >= TimeDelta::zero() && grace <= MAX_ROTATION_GRACE => grace,
            _ => {
                return message(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "The grace period must be 0 to 7776000 seconds.",
                );
            }
        },
    };
    let latest = principal.effective_expiry();
    match verifier
        .issuer()
        .rotate_until(&target.id, grace, latest)
        .await
    {
        // A token rotated with no grace is revoked by the rotation itself; only then is the
        // caller not checked again.
        Ok(token) => {
            let rotated_self = target.id == *principal.token_id() && grace.is_zero();
            settle(&verifier, &principal, !rotated_self, token).await
        }
        Err(IssueError::NotFound) => not_found(),
        Err(IssueError::Store(err)) if err.kind() == StoreErrorKind::Unsupported => message(
            StatusCode::NOT_IMPLEMENTED,
            "This token store does not rotate tokens.",
        ),
        Err(_) => unavailable(),
    }
}

async fn revoke<S: TokenStore>(
    State(verifier): Shared<S>,
    principal: Principal,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(id)) = id else {
        return not_found();
    };
    let id = match own_token(&verifier, &principal, &id).await {
        Ok(record) => record.id,
        Err(response) => return response,
    };
    match verifier.revoke(&id).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => unavailable(),
    }
}

async fn revoke_all<S: TokenStore>(State(verifier): Shared<S>, principal: Principal) -> Response {
    match verifier.revoke_owner(principal.owner()).await {
        Ok(n) => Json(json!({ "revoked": n })).into_response(),
        Err(_) => unavailable(),
    }
}
