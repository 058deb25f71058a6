//! Clients: their registration (in their API key's metadata) and their authentication at the
//! token, revocation and introspection endpoints (RFC 6749 §2.3.1).
//!
//! A client is an API key of this crate: `client_id` is the key's id, `client_secret` the
//! whole key text. The key is verified by the application's [`Verifier`], so a revoked,
//! expired or address-restricted key cannot authenticate, and a store outage fails closed.

use std::net::IpAddr;

use base64::Engine as _;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use serde_json::{Value, json};

use super::access::{ACCESS_TOKEN_METADATA_KEY, GrantType};
use super::endpoint::Form;
use super::response::{ErrorCode, OAuthError};
use crate::error::AuthErrorKind;
use crate::id::TokenId;
use crate::record::Metadata;
use crate::scope::ScopeRequirement;
use crate::store::TokenStore;
use crate::verifier::{CredentialKind, Principal, RequestInfo, Verifier};

/// The metadata key of a client's registration in its API key's record.
pub const CLIENT_METADATA_KEY: &str = "oauth_client";

/// The `WWW-Authenticate` challenge of a 401 `invalid_client`.
pub(crate) const BASIC_CHALLENGE: &str = "Basic realm=\"oauth\"";

/// What a client registered: its redirect URIs and the grants it may use. Kept in its API
/// key's metadata under [`CLIENT_METADATA_KEY`], so a client is registered when its key is
/// created and unregistered when the key is revoked.
///
/// A key without a registration may use every grant except `authorization_code`, which needs
/// at least one redirect URI.
///
/// ```
/// use apitoken::oauth::{ClientRegistration, GrantType};
/// use apitoken::{NewToken, Owner};
///
/// let registration = ClientRegistration::new()
///     .redirect_uri("https://app.example/callback")
///     .grant_types([GrantType::AuthorizationCode, GrantType::RefreshToken]);
/// let key = NewToken::new("reporting app", Owner::new("acct-1")?)
///     .scopes(["read:databases"])?
///     .metadata(registration.to_metadata());
/// # let _ = key;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientRegistration {
    /// Redirect URIs, each compared exactly (RFC 6749 §3.1.2, RFC 9700 §4.1.3).
    pub redirect_uris: Vec<String>,
    /// The grants the client may use; `None` for every grant.
    pub grant_types: Option<Vec<GrantType>>,
}

impl ClientRegistration {
    /// No redirect URIs, every grant.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a redirect URI.
    #[must_use]
    pub fn redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uris.push(uri.into());
        self
    }

    /// Allows only these grants.
    #[must_use]
    pub fn grant_types(mut self, grants: impl IntoIterator<Item = GrantType>) -> Self {
        self.grant_types = Some(grants.into_iter().collect());
        self
    }

    /// Whether the client may use `grant`.
    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types
            .as_ref()
            .is_none_or(|grants| grants.contains(&grant))
    }

    /// The registration as key metadata: `{"oauth_client": {"redirect_uris": [...],
    /// "grant_types": [...]}}`.
    pub fn to_metadata(&self) -> Metadata {
        let mut registration = json!({ "redirect_uris": self.redirect_uris });
        if let Some(grants) = &self.grant_types {
            registration["grant_types"] = grants.iter().map(|g| g.as_str()).collect();
        }
        let mut metadata = Metadata::new();
        metadata.insert(CLIENT_METADATA_KEY.to_owned(), registration);
        metadata
    }

    /// The registration in a key's metadata; an empty one if there is none. Entries that are
    /// not strings, and grant types this crate does not know, are ignored.
    pub fn from_metadata(metadata: &Metadata) -> Self {
        let Some(registration) = metadata.get(CLIENT_METADATA_KEY) else {
            return Self::new();
        };
        let strings = |key: &str| -> Vec<&str> {
            registration
                .get(key)
                .and_then(Value::as_array)
                .map(|items| items.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default()
        };
        Self {
            redirect_uris: strings("redirect_uris")
                .into_iter()
                .map(str::to_owned)
                .collect(),
            grant_types: registration.get("grant_types").map(|_| {
                strings("grant_types")
                    .into_iter()
                    .filter_map(GrantType::parse)
                    .collect()
            }),
        }
    }
}

/// A client that proved it holds its key.
#[derive(Debug, Clone)]
pub(crate) struct AuthenticatedClient {
    pub(crate) principal: Principal,
    pub(crate) registration: ClientRegistration,
}

impl AuthenticatedClient {
    pub(crate) fn id(&self) -> &TokenId {
        self.principal.token_id()
    }
}

/// Authenticates the client of a token, revocation or introspection request: HTTP Basic
/// (`client_secret_basic`) or `client_id` + `client_secret` in the body
/// (`client_secret_post`), never both.
pub(crate) async fn authenticate<S: TokenStore>(
    verifier: &Verifier<S>,
    headers: &HeaderMap,
    form: &Form,
    client_ip: Option<IpAddr>,
) -> Result<AuthenticatedClient, OAuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(OAuthError::new(
            ErrorCode::InvalidRequest,
            "more than one Authorization header",
        ));
    }
    let (id, secret, challenge) = match header {
        Some(value) => {
            if form.get("client_secret").is_some() {
                return Err(OAuthError::new(
                    ErrorCode::InvalidRequest,
                    "more than one client authentication method",
                ));
            }
            let (id, secret) = basic_credentials(value.as_bytes()).ok_or_else(|| {
                invalid_client(Some(BASIC_CHALLENGE), "client authentication failed")
            })?;
            if form.get("client_id").is_some_and(|body_id| body_id != id) {
                return Err(OAuthError::new(
                    ErrorCode::InvalidRequest,
                    "client_id differs from the authenticated client",
                ));
            }
            (id, secret, Some(BASIC_CHALLENGE))
        }
        None => match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => (id.to_owned(), secret.to_owned(), None),
            // No authentication at all: invite it, as a 401 with a challenge.
            _ => {
                return Err(invalid_client(
                    Some(BASIC_CHALLENGE),
                    "client authentication is required",
                ));
            }
        },
    };
    let refused = || invalid_client(challenge, "client authentication failed");
    let claimed: TokenId = id.parse().map_err(|_| refused())?;
    let info = RequestInfo::new().client_ip(client_ip);
    let principal = match verifier
        .verify_request(&secret, &ScopeRequirement::none(), &info)
        .await
    {
        Ok(principal) => principal,
        Err(err) if err.kind() == AuthErrorKind::StoreUnavailable => {
            return Err(OAuthError::unavailable());
        }
        Err(_) => return Err(refused()),
    };
    // The key must be the client it claims, and an API key: an access token (opaque or JWT)
    // is no client secret (it would mint itself successors forever). A JWT's record carries
    // no metadata, so its credential kind is what tells it apart.
    if principal.token_id() != &claimed
        || principal.credential_kind() != CredentialKind::ApiKey
        || is_oauth_token(principal.metadata())
    {
        return Err(refused());
    }
    let registration = ClientRegistration::from_metadata(principal.metadata());
    Ok(AuthenticatedClient {
        principal,
        registration,
    })
}

fn invalid_client(challenge: Option<&'static str>, description: &'static str) -> OAuthError {
    OAuthError {
        code: ErrorCode::InvalidClient,
        description: Some(description),
        challenge,
        retry_after: None,
    }
}

/// Whether a record is a token this module minted (not an API key).
pub(crate) fn is_oauth_token(metadata: &Metadata) -> bool {
    metadata.contains_key(ACCESS_TOKEN_METADATA_KEY)
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` → `(id, secret)` (RFC 6749 §2.3.1:
/// both parts form-urlencoded before base64).
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_start_matches(' '))
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// Decodes one `application/x-www-form-urlencoded` value (`+` is a space).
fn form_decode(text: &str) -> Option<String> {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let (id, secret) = basic_credentials(basic("a%2Bb:c+d%3Ae").as_bytes()).unwrap();
        assert_eq!(id, "a+b");
        assert_eq!(secret, "c d:e");
        let (id, _) = basic_credentials(b"basic YTpi").unwrap();
        assert_eq!(id, "a");
    }

    #[test]
    fn malformed_basic_credentials_are_refused() {
        assert!(basic_credentials(b"Bearer abc").is_none());
        assert!(basic_credentials(b"Basic !!!").is_none());
        assert!(basic_credentials(basic("no-colon").as_bytes()).is_none());
        assert!(basic_credentials(basic("a:%FF").as_bytes()).is_none());
    }

    #[test]
    fn registration_round_trips_through_metadata() {
        let registration = ClientRegistration::new()
            .redirect_uri("https://a.example/cb")
            .grant_types([GrantType::AuthorizationCode]);
        let back = ClientRegistration::from_metadata(&registration.to_metadata());
        assert_eq!(back, registration);
        assert!(back.allows(GrantType::AuthorizationCode));
        assert!(!back.allows(GrantType::ClientCredentials));
        assert!(
            ClientRegistration::from_metadata(&Metadata::new()).allows(GrantType::RefreshToken)
        );
    }
}
