//! Refresh tokens (RFC 6749 §6, RFC 9700 §4.14.2): one family per grant, a new token on every
//! use, and reuse of a used token revokes the whole family with its access tokens.

use ::axum::response::Response;
use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;

use super::Shared;
use super::access::GrantType;
use super::client::AuthenticatedClient;
use super::endpoint::{Form, random_id, requested_scopes, token_response};
use super::grants::{GrantFamily, GrantStore, RefreshTokenRecord};
use super::response::{ErrorCode, OAuthError};
use crate::format::{Separator, TokenFormat};
use crate::id::TokenId;
use crate::secret::Secret;
use crate::store::TokenStore;

/// The prefix of refresh tokens.
pub const REFRESH_TOKEN_PREFIX: &str = "rt_";

/// The format of refresh tokens: `rt_{12-character id}_{256-bit secret}{checksum}`. Never add
/// it to a verifier: refresh tokens are not access tokens, and live in the
/// [`GrantStore`], not the token store.
///
/// ```
/// use apitoken::oauth::refresh_token_format;
/// assert_eq!(refresh_token_format().prefix(), Some("rt_"));
/// ```
pub fn refresh_token_format() -> TokenFormat {
    TokenFormat::builder()
        .prefix(REFRESH_TOKEN_PREFIX)
        .separator(Separator::Underscore)
        .build()
        .unwrap_or_else(|_| unreachable!("the refresh-token format is valid"))
}

/// A presented refresh token whose secret matched, with its family.
pub(crate) struct Found {
    pub(crate) record: RefreshTokenRecord,
    pub(crate) family: GrantFamily,
}

/// The refresh token `text` names, if it is one and its secret matches; used, revoked and
/// expired ones included. `None` for anything else (not an error: other token kinds too).
pub(crate) async fn find<S: TokenStore, G: GrantStore>(
    shared: &Shared<S, G>,
    text: &str,
) -> Result<Option<Found>, OAuthError> {
    let Ok(parsed) = refresh_token_format().parse(text) else {
        return Ok(None);
    };
    let Some(id) = parsed.id() else {
        return Ok(None);
    };
    let presented = shared.verifier.hasher().hash(parsed.secret().as_bytes());
    let stored = shared
        .grants
        .refresh_token(id)
        .await
        .map_err(|_| OAuthError::unavailable())?;
    // Compared against a dummy on a miss, so an unknown id costs what a wrong secret does.
    let expected = stored
        .as_ref()
        .map_or(shared.verifier.dummy_hash(), |r| &r.hash);
    let matches: bool = presented.ct_eq(expected).into();
    let Some(record) = stored.filter(|_| matches) else {
        return Ok(None);
    };
    let family = shared
        .grants
        .family(&record.family)
        .await
        .map_err(|_| OAuthError::unavailable())?;
    Ok(family.map(|family| Found { record, family }))
}

/// When `found` stops working, if it works now: unused, family not revoked, within the
/// inactivity limit and the grant's maximum lifetime.
pub(crate) fn active_until<S: TokenStore, G>(
    shared: &Shared<S, G>,
    found: &Found,
) -> Option<DateTime<Utc>> {
    if found.record.used_at.is_some() || found.family.revoked_at.is_some() {
        return None;
    }
    let settings = &shared.settings;
    let idle_end = found
        .record
        .created_at
        .checked_add_signed(settings.refresh_idle)?;
    let end = match settings.refresh_max_lifetime {
        Some(max) => idle_end.min(found.family.created_at.checked_add_signed(max)?),
        None => idle_end,
    };
    (end > shared.verifier.now()).then_some(end)
}

/// A new refresh token of `family`: its text and its record.
pub(crate) fn mint(
    shared_hasher: &crate::SecretHasher,
    family: TokenId,
    now: DateTime<Utc>,
) -> Result<(Secret, RefreshTokenRecord), OAuthError> {
    let format = refresh_token_format();
    let id = random_id(&format)?;
    let text = format
        .generate(Some(&id))
        .map_err(|_| OAuthError::server_error())?;
    let parsed = format
        .parse(text.expose_secret())
        .map_err(|_| OAuthError::server_error())?;
    let hash = shared_hasher.hash(parsed.secret().as_bytes());
    Ok((text, RefreshTokenRecord::new(id, family, hash, now)))
}

fn invalid_grant() -> OAuthError {
    OAuthError::new(
        ErrorCode::InvalidGrant,
        "the refresh token is invalid, expired or revoked",
    )
}

/// `grant_type=refresh_token`.
pub(crate) async fn refresh_grant<S: TokenStore + 'static, G: GrantStore + 'static>(
    shared: &Shared<S, G>,
    client: &AuthenticatedClient,
    form: &Form,
) -> Result<Response, OAuthError> {
    let text = form
        .get("refresh_token")
        .ok_or_else(|| OAuthError::new(ErrorCode::InvalidRequest, "refresh_token is required"))?;
    let found = find(shared, text).await?.ok_or_else(invalid_grant)?;
    // Bound to its client (RFC 6749 §6); another client learns nothing and changes nothing.
    if found.family.client_id != *client.id() {
        return Err(invalid_grant());
    }
    if found.record.used_at.is_some() && found.family.revoked_at.is_none() {
        // A rotated token came back: one of the two holders is not the client (RFC 9700
        // §4.14.2). Revoke everything the grant produced.
        tracing::warn!(family = %found.family.id, client = %client.id(), "refresh token reuse: grant revoked");
        shared.revoke_family(&found.family.id).await?;
        return Err(invalid_grant());
    }
    if active_until(shared, &found).is_none() {
        return Err(invalid_grant());
    }
    let policy = shared.verifier.scope_policy();
    let granted = &found.family.scopes;
    let scopes = requested_scopes(form.get("scope"), granted, |scope| {
        policy.can_delegate(granted, scope)
    })?;
    let (jti, expires_at, access) = shared
        .mint_access(
            client,
            found.family.owner.clone(),
            scopes.clone(),
            GrantType::RefreshToken,
            Vec::new(),
        )
        .await?;
    let now = shared.verifier.now();
    let (refresh_text, successor) = mint(shared.verifier.hasher(), found.family.id, now)?;
    // Minted first, rotated second: a store failure leaves the old refresh token usable.
    match shared
        .grants
        .rotate_refresh(&found.record.id, successor, (jti, expires_at), now)
        .await
    {
        Ok(true) => Ok(token_response(access, Some(refresh_text), &scopes)),
        Ok(false) => {
            // Used (or revoked) by a concurrent request since we looked: reuse.
            shared.discard_access(&jti).await;
            shared.revoke_family(&found.family.id).await?;
            Err(invalid_grant())
        }
        Err(_) => {
            shared.discard_access(&jti).await;
            Err(OAuthError::unavailable())
        }
    }
}
