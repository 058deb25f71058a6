//! What an access token says: [`AccessGrant`] (what an issuer is asked to sign) and
//! [`AccessClaims`] (what a valid token carries, and the record a principal is made from).
//!
//! Uses token values only; nothing of the other plug-ins or of the front ends.

use chrono::{DateTime, Utc};

use crate::id::TokenId;
use crate::name::MAX_NAME_LEN;
use crate::record::{Owner, TokenRecord};
use crate::scope::{InvalidScope, ScopeSet};

use super::JwtError;

/// The longest issuer (`iss`) or audience (`aud`).
///
/// ```
/// use apitoken::jwt::{JwtValidator, MAX_URI_LEN};
/// assert!(JwtValidator::builder("x".repeat(MAX_URI_LEN + 1), "api").build().is_err());
/// ```
pub const MAX_URI_LEN: usize = 255;

/// Whether `text` is a valid issuer or audience: 1 to [`MAX_URI_LEN`] bytes without control
/// characters.
pub(super) fn valid_uri(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_URI_LEN && !text.chars().any(char::is_control)
}

/// Whether `text` is a valid client id: 1 to [`MAX_NAME_LEN`] characters without control
/// characters.
pub(super) fn valid_client_id(text: &str) -> bool {
    !text.is_empty() && text.chars().count() <= MAX_NAME_LEN && !text.chars().any(char::is_control)
}

/// Who an access token is for and what it may do: the input to
/// [`JwtIssuer::issue`](super::JwtIssuer::issue).
///
/// ```
/// use apitoken::Owner;
/// use apitoken::jwt::AccessGrant;
///
/// let grant = AccessGrant::new(Owner::new("team-1")?, "billing-service")?
///     .scopes(["invoices:read", "invoices:write"])?;
/// assert_eq!(grant.scope_set().len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AccessGrant {
    subject: Owner,
    client_id: String,
    scopes: ScopeSet,
}

impl AccessGrant {
    /// A grant for `subject` (the token's `sub`, the [`Principal`](crate::Principal)'s owner)
    /// through the OAuth client `client_id` (the principal's name), with no scopes yet. The
    /// client id is 1 to [`MAX_NAME_LEN`] characters without control characters.
    pub fn new(subject: Owner, client_id: impl Into<String>) -> Result<Self, JwtError> {
        let client_id = client_id.into();
        if !valid_client_id(&client_id) {
            return Err(JwtError::InvalidClientId);
        }
        Ok(Self {
            subject,
            client_id,
            scopes: ScopeSet::new(),
        })
    }

    /// Sets the scopes, validating each.
    pub fn scopes<I, T>(self, scopes: I) -> Result<Self, InvalidScope>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        Ok(self.with_scope_set(ScopeSet::try_from_iter(scopes)?))
    }

    /// Sets the scopes.
    ///
    /// ```
    /// use apitoken::{Owner, ScopeSet};
    /// use apitoken::jwt::AccessGrant;
    ///
    /// let grant = AccessGrant::new(Owner::new("team-1")?, "cli")?
    ///     .with_scope_set(ScopeSet::parse("vps:read vps:write")?);
    /// assert_eq!(grant.scope_set().to_string(), "vps:read vps:write");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_scope_set(mut self, scopes: ScopeSet) -> Self {
        self.scopes = scopes;
        self
    }

    /// The subject.
    pub fn subject(&self) -> &Owner {
        &self.subject
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The scopes.
    pub fn scope_set(&self) -> &ScopeSet {
        &self.scopes
    }
}

/// The claims of a valid access token: what [`JwtIssuer::issue`](super::JwtIssuer::issue)
/// signed, or what [`JwtValidator::validate`](super::JwtValidator::validate) accepted.
///
/// ```
/// use apitoken::Owner;
/// use apitoken::jwt::{AccessGrant, JwtIssuer, JwtKey};
///
/// let issuer = JwtIssuer::builder(JwtKey::hs256(&[3u8; 32])?, "https://auth.example", "api")
///     .build()?;
/// let issued = issuer.issue(&AccessGrant::new(Owner::new("team-1")?, "cli")?)?;
/// let claims = &issued.claims;
/// assert_eq!(claims.expires_at - claims.issued_at, chrono::TimeDelta::hours(1));
/// assert_eq!(claims.audience, ["api"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AccessClaims {
    /// `jti`: the token's unique id, the [`Principal`](crate::Principal)'s token id.
    pub id: TokenId,
    /// `iss`.
    pub issuer: String,
    /// `sub`: whom the token acts for.
    pub subject: Owner,
    /// `aud`: one or more audiences; a validator requires its own among them.
    pub audience: Vec<String>,
    /// `client_id`: the OAuth client the token was issued to.
    pub client_id: String,
    /// `scope`: what the token may do.
    pub scopes: ScopeSet,
    /// `iat`.
    pub issued_at: DateTime<Utc>,
    /// `nbf`, if present.
    pub not_before: Option<DateTime<Utc>>,
    /// `exp`.
    pub expires_at: DateTime<Utc>,
}

impl AccessClaims {
    /// The record a [`Principal`](crate::Principal) made from these claims carries: id from
    /// `jti`, owner from `sub`, name from `client_id`, the scopes, `created_at` from `iat` and
    /// `expires_at` from `exp`; no metadata, no allowlist, never used, never revoked.
    ///
    /// ```
    /// use apitoken::Owner;
    /// use apitoken::jwt::{AccessGrant, JwtIssuer, JwtKey};
    ///
    /// let issuer = JwtIssuer::builder(JwtKey::hs256(&[3u8; 32])?, "https://auth.example", "api")
    ///     .build()?;
    /// let issued = issuer.issue(&AccessGrant::new(Owner::new("team-1")?, "cli")?)?;
    /// let record = issued.claims.to_record();
    /// assert_eq!(record.id, issued.claims.id);
    /// assert_eq!(record.name, "cli");
    /// assert_eq!(record.expires_at, Some(issued.claims.expires_at));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_record(&self) -> TokenRecord {
        let mut record = TokenRecord::new(
            self.id,
            self.subject.clone(),
            self.client_id.clone(),
            self.issued_at,
        );
        record.scopes = self.scopes.clone();
        record.expires_at = Some(self.expires_at);
        record
    }
}
