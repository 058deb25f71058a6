//! Refresh tokens (RFC 6749 §6, RFC 9700 §4.14.2): one family per grant, a new token on every
//! use, and reuse of a used token revokes the whole family with its access tokens.

use ::axum::response::Response;
use chrono::{DateTime, Utc};

use super::Shared;
use super::access::GrantType;
use super::client::AuthenticatedClient;
use super::endpoint::{Form, requested_scopes, token_response};
use super::grants::{GrantFamily, GrantStore, RefreshTokenRecord};
use super::response::{ErrorCode, OAuthError};
use crate::format::{BASE62, IdKind, Separator, TokenFormat};
use crate::id::TokenId;
use crate::secret::{Secret, random_base62};
use crate::store::TokenStore;

/// The prefix of refresh tokens.
pub const REFRESH_TOKEN_PREFIX: &str = "rt_";

/// Characters of a refresh token's id that name its family.
const FAMILY_ID_LEN: usize = 12;
/// Characters of a refresh token's id that hold its generation (base62, fixed width).
const GENERATION_LEN: usize = 8;

/// The format of refresh tokens: `rt_{20-character id}_{256-bit secret}{checksum}`. The id
/// is the grant family's 12-character id followed by the token's generation in 8 base62
/// digits, so a token the store has forgotten still names its family (see
/// [`GrantStore::rotate_refresh`]). Never add it to a verifier: refresh tokens are not
/// access tokens, and live in the [`GrantStore`], not the token store.
///
/// ```
/// use apitoken::oauth::refresh_token_format;
/// assert_eq!(refresh_token_format().prefix(), Some("rt_"));
/// ```
pub fn refresh_token_format() -> TokenFormat {
    format_with_id(FAMILY_ID_LEN + GENERATION_LEN)
}

/// The format refresh tokens had before their id carried a generation (a random
/// 12-character id). Still accepted, so tokens issued then keep working.
fn legacy_refresh_token_format() -> TokenFormat {
    format_with_id(FAMILY_ID_LEN)
}

fn format_with_id(len: usize) -> TokenFormat {
    TokenFormat::builder()
        .prefix(REFRESH_TOKEN_PREFIX)
        .separator(Separator::Underscore)
        .id(IdKind::Random { len })
        .build()
        .unwrap_or_else(|_| unreachable!("the refresh-token format is valid"))
}

/// A new family id.
pub(crate) fn new_family_id() -> Result<TokenId, OAuthError> {
    let text = random_base62(FAMILY_ID_LEN).map_err(|_| OAuthError::server_error())?;
    TokenId::new(&text).map_err(|_| OAuthError::server_error())
}

/// The id of generation `generation` of `family`: `None` past 62^8 generations, or for a
/// family id not of this crate's making.
fn token_id(family: &TokenId, generation: u64) -> Option<TokenId> {
    if family.as_str().len() != FAMILY_ID_LEN {
        return None;
    }
    let mut digits = [0u8; GENERATION_LEN];
    let mut rest = generation;
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(rest % 62) as usize];
        rest /= 62;
    }
    if rest != 0 {
        return None;
    }
    let digits = std::str::from_utf8(&digits).ok()?;
    TokenId::new(&format!("{family}{digits}")).ok()
}

/// The family and generation a refresh token's id names.
fn split_id(id: &TokenId) -> Option<(TokenId, u64)> {
    let text = id.as_str();
    if text.len() != FAMILY_ID_LEN + GENERATION_LEN {
        return None;
    }
    let (family, digits) = text.split_at(FAMILY_ID_LEN);
    let generation = digits.bytes().try_fold(0u64, |n, b| {
        let digit = BASE62.iter().position(|c| *c == b)? as u64;
        n.checked_mul(62)?.checked_add(digit)
    })?;
    Some((TokenId::new(family).ok()?, generation))
}

/// A presented refresh token whose secret matched, with its family.
pub(crate) struct Found {
    pub(crate) record: RefreshTokenRecord,
    pub(crate) family: GrantFamily,
}

/// What a presented refresh token turned out to be.
pub(crate) enum Presented {
    /// A token the store holds, with a matching secret: used, revoked and expired ones
    /// included.
    Found(Found),
    /// A well-formed token of an existing family, of a generation older than the family's
    /// current one, that the store has forgotten: a rotated token presented again. Its
    /// secret can no longer be checked; only the family's client can get this far.
    Superseded(GrantFamily),
    /// Anything else (not an error: other token kinds too).
    Unknown,
}

/// What the refresh token `text` is.
pub(crate) async fn find<S: TokenStore, G: GrantStore>(
    shared: &Shared<S, G>,
    text: &str,
) -> Result<Presented, OAuthError> {
    let parsed = match refresh_token_format().parse(text) {
        Ok(parsed) => parsed,
        Err(_) => match legacy_refresh_token_format().parse(text) {
            Ok(parsed) => parsed,
            Err(_) => return Ok(Presented::Unknown),
        },
    };
    let Some(id) = parsed.id() else {
        return Ok(Presented::Unknown);
    };
    let presented = shared.verifier.hasher().hash(parsed.secret().as_bytes());
    let stored = shared
        .grants
        .refresh_token(id)
        .await
        .map_err(|_| OAuthError::unavailable())?;
    // Compared against a dummy on a miss, so an unknown id costs what a wrong secret does.
    let matches = shared
        .verifier
        .secret_matches(&presented, stored.as_ref().map(|r| &r.hash));
    let Some(stored) = stored else {
        return superseded(shared, id).await;
    };
    if !matches {
        return Ok(Presented::Unknown);
    }
    let family = shared
        .grants
        .family(&stored.family)
        .await
        .map_err(|_| OAuthError::unavailable())?;
    Ok(match family {
        Some(family) => Presented::Found(Found {
            record: stored,
            family,
        }),
        None => Presented::Unknown,
    })
}

/// An id the store does not hold: a forgotten older generation of a family it does hold, or
/// nothing.
async fn superseded<S: TokenStore, G: GrantStore>(
    shared: &Shared<S, G>,
    id: &TokenId,
) -> Result<Presented, OAuthError> {
    let Some((family_id, generation)) = split_id(id) else {
        return Ok(Presented::Unknown);
    };
    let family = shared
        .grants
        .family(&family_id)
        .await
        .map_err(|_| OAuthError::unavailable())?;
    Ok(match family {
        Some(family) if generation < family.generation => Presented::Superseded(family),
        _ => Presented::Unknown,
    })
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

/// Generation `generation` of `family`'s refresh token: its text and its record.
pub(crate) fn mint(
    shared_hasher: &crate::SecretHasher,
    family: TokenId,
    generation: u64,
    now: DateTime<Utc>,
) -> Result<(Secret, RefreshTokenRecord), OAuthError> {
    let format = refresh_token_format();
    let id = token_id(&family, generation).ok_or_else(OAuthError::server_error)?;
    let text = format
        .generate(Some(&id))
        .map_err(|_| OAuthError::server_error())?;
    let parsed = format
        .parse(text.expose_secret())
        .map_err(|_| OAuthError::server_error())?;
    let hash = shared_hasher.hash(parsed.secret().as_bytes());
    let record = RefreshTokenRecord::new(id, family, hash, now).in_generation(generation);
    Ok((text, record))
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
    let found = match find(shared, text).await? {
        Presented::Found(found) => found,
        Presented::Superseded(family) => {
            if family.client_id == *client.id() && family.revoked_at.is_none() {
                tracing::warn!(family = %family.id, client = %client.id(), "superseded refresh token presented: grant revoked");
                shared.revoke_family(&family.id).await?;
            }
            return Err(invalid_grant());
        }
        Presented::Unknown => return Err(invalid_grant()),
    };
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
    let (refresh_text, successor) = mint(
        shared.verifier.hasher(),
        found.family.id,
        found.record.generation.saturating_add(1),
        now,
    )?;
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
