//! Authorization codes (RFC 6749 §4.1) with PKCE (RFC 7636, S256 only): issued single-use,
//! short-lived and hashed, bound to client, redirect URI and code challenge; redeemed here.

use ::axum::response::Response;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Shared;
use super::access::GrantType;
use super::client::AuthenticatedClient;
use super::endpoint::{Form, random_id, token_response};
use super::grants::{AuthorizationCodeRecord, GrantFamily, GrantStore};
use super::refresh;
use super::response::{ErrorCode, OAuthError};
use crate::format::{Separator, TokenFormat};
use crate::id::TokenId;
use crate::record::Owner;
use crate::scope::ScopeSet;
use crate::secret::Secret;
use crate::store::TokenStore;

/// The prefix of authorization codes.
pub const AUTHORIZATION_CODE_PREFIX: &str = "ac_";

fn code_format() -> TokenFormat {
    TokenFormat::builder()
        .prefix(AUTHORIZATION_CODE_PREFIX)
        .separator(Separator::Underscore)
        .build()
        .unwrap_or_else(|_| unreachable!("the code format is valid"))
}

/// The S256 code challenge of a PKCE code verifier: `BASE64URL(SHA-256(verifier))` without
/// padding (RFC 7636 §4.2). Clients send it with the authorization request.
///
/// ```
/// use apitoken::oauth::s256_challenge;
/// // RFC 7636 Appendix B.
/// assert_eq!(
///     s256_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
///     "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
/// );
/// ```
pub fn s256_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
pub(crate) fn is_code_verifier(text: &str) -> bool {
    (43..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An S256 challenge: 43 base64url characters (a SHA-256 digest, unpadded).
pub(crate) fn is_s256_challenge(text: &str) -> bool {
    text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Whether `verifier` hashes to `challenge`, compared in constant time.
fn verifier_matches(verifier: &str, challenge: &str) -> bool {
    s256_challenge(verifier)
        .as_bytes()
        .ct_eq(challenge.as_bytes())
        .into()
}

/// What an approved authorization request binds a code to.
pub(crate) struct CodeGrant {
    pub(crate) client_id: TokenId,
    pub(crate) redirect_uri: String,
    pub(crate) code_challenge: String,
    pub(crate) owner: Owner,
    pub(crate) scopes: ScopeSet,
}

/// Issues and stores a code; returns its text, for the redirect.
pub(crate) async fn issue<S: TokenStore, G: GrantStore>(
    shared: &Shared<S, G>,
    grant: CodeGrant,
) -> Result<Secret, OAuthError> {
    let format = code_format();
    let id = random_id(&format)?;
    let family = refresh::new_family_id()?;
    let text = format
        .generate(Some(&id))
        .map_err(|_| OAuthError::server_error())?;
    let parsed = format
        .parse(text.expose_secret())
        .map_err(|_| OAuthError::server_error())?;
    let now = shared.verifier.now();
    let record = AuthorizationCodeRecord {
        id,
        hash: shared.verifier.hasher().hash(parsed.secret().as_bytes()),
        client_id: grant.client_id,
        redirect_uri: grant.redirect_uri,
        code_challenge: grant.code_challenge,
        owner: grant.owner,
        scopes: grant.scopes,
        family,
        created_at: now,
        expires_at: now
            .checked_add_signed(shared.settings.code_lifetime)
            .ok_or_else(OAuthError::server_error)?,
        used_at: None,
    };
    shared
        .grants
        .insert_code(record)
        .await
        .map_err(|_| OAuthError::unavailable())?;
    Ok(text)
}

fn invalid_grant() -> OAuthError {
    OAuthError::new(
        ErrorCode::InvalidGrant,
        "the authorization code is invalid, expired or already used",
    )
}

/// The code `text` names if its secret matches; used and expired ones included.
async fn find<S: TokenStore, G: GrantStore>(
    shared: &Shared<S, G>,
    text: &str,
) -> Result<Option<AuthorizationCodeRecord>, OAuthError> {
    let format = code_format();
    let Some(parsed) = format.parse(text).ok() else {
        return Ok(None);
    };
    let Some(id) = parsed.id() else {
        return Ok(None);
    };
    let presented = shared.verifier.hasher().hash(parsed.secret().as_bytes());
    let stored = shared
        .grants
        .code(id)
        .await
        .map_err(|_| OAuthError::unavailable())?;
    let matches = shared
        .verifier
        .secret_matches(&presented, stored.as_ref().map(|c| &c.hash));
    Ok(stored.filter(|_| matches))
}

/// `grant_type=authorization_code` (RFC 6749 §4.1.3, RFC 7636 §4.5).
pub(crate) async fn code_grant<S: TokenStore + 'static, G: GrantStore + 'static>(
    shared: &Shared<S, G>,
    client: &AuthenticatedClient,
    form: &Form,
) -> Result<Response, OAuthError> {
    let (Some(text), Some(redirect_uri), Some(verifier)) = (
        form.get("code"),
        form.get("redirect_uri"),
        form.get("code_verifier"),
    ) else {
        return Err(OAuthError::new(
            ErrorCode::InvalidRequest,
            "code, redirect_uri and code_verifier are required",
        ));
    };
    if !is_code_verifier(verifier) {
        return Err(OAuthError::new(
            ErrorCode::InvalidRequest,
            "code_verifier must be 43 to 128 unreserved characters",
        ));
    }
    let code = find(shared, text).await?.ok_or_else(invalid_grant)?;
    if code.client_id != *client.id() {
        return Err(invalid_grant());
    }
    let now = shared.verifier.now();
    let genuine = code.expires_at > now
        && code.redirect_uri == redirect_uri
        && verifier_matches(verifier, &code.code_challenge);
    // What this redemption will issue is decided, and stored with the code's use in one step,
    // before anything is minted: a replay, however it interleaves, finds the family and
    // revokes what the first redemption gave (RFC 6749 §4.1.2).
    // The grant dates from the user's authorization (the code's issue), not its redemption:
    // `refresh_token_max_lifetime` counts from there.
    let mut family = GrantFamily::new(
        code.family,
        code.client_id,
        code.owner.clone(),
        code.scopes.clone(),
        code.created_at,
    );
    let mut issue = None;
    if genuine {
        let request = shared.access_request(
            client,
            code.owner.clone(),
            code.scopes.clone(),
            GrantType::AuthorizationCode,
            Vec::new(),
        )?;
        family.add_access_token(request.jti, request.expires_at, now);
        let refresh = if client.registration.allows(GrantType::RefreshToken) {
            Some(refresh::mint(shared.verifier.hasher(), family.id, 0, now)?)
        } else {
            None
        };
        issue = Some((request, refresh));
    } else {
        // Spent all the same, with nothing to revoke.
        family.revoked_at = Some(now);
    }
    let first = issue
        .as_ref()
        .and_then(|(_, refresh)| refresh.as_ref().map(|(_, record)| record.clone()));
    // Single use, whatever the outcome: a second presentation is a replay.
    let first_use = shared
        .grants
        .redeem_code(&code.id, now, family, first)
        .await
        .map_err(|_| OAuthError::unavailable())?;
    if !first_use {
        tracing::warn!(client = %client.id(), "authorization code replayed: grant revoked");
        shared.revoke_family(&code.family).await?;
        return Err(invalid_grant());
    }
    let Some((request, refresh)) = issue else {
        return Err(invalid_grant());
    };
    let jti = request.jti;
    let access = match shared.mint(request).await {
        Ok(access) => access,
        Err(err) => {
            // Nothing reaches the client: the refresh token stored with the code goes too.
            let _ = shared.grants.revoke_family(&code.family, now).await;
            return Err(err);
        }
    };
    // A replay that revoked the family while the token was being minted may have missed the
    // token (not stored yet): look again, and withdraw it if so.
    match shared.grants.family(&code.family).await {
        Ok(Some(family)) if family.revoked_at.is_none() => {}
        Ok(_) => {
            shared.discard_access(&jti).await;
            return Err(invalid_grant());
        }
        Err(_) => {
            shared.discard_access(&jti).await;
            return Err(OAuthError::unavailable());
        }
    }
    Ok(token_response(
        access,
        refresh.map(|(text, _)| text),
        &code.scopes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_syntax_follows_rfc_7636() {
        assert!(is_code_verifier(&"a".repeat(43)));
        assert!(is_code_verifier(&"-._~Az09".repeat(16)));
        assert!(!is_code_verifier(&"a".repeat(42)));
        assert!(!is_code_verifier(&"a".repeat(129)));
        assert!(!is_code_verifier(&format!("{}+", "a".repeat(43))));
    }

    #[test]
    fn challenge_must_be_s256_shaped_and_match() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = s256_challenge(verifier);
        assert!(is_s256_challenge(&challenge));
        assert!(verifier_matches(verifier, &challenge));
        // `plain` would send the verifier itself as the challenge: it does not match.
        assert!(!verifier_matches(verifier, verifier));
        assert!(!is_s256_challenge("short"));
    }
}
