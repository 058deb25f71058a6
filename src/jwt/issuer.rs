//! [`JwtIssuer`]: signs access tokens (RFC 9068) for an [`AccessGrant`], with a fresh `jti`
//! or with the id and times a token endpoint chose ([`JwtIssuer::issue_as`]).
//!
//! Uses token values only (the clock, ids, secrets); nothing of the other plug-ins or of the
//! front ends.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use jsonwebtoken::{EncodingKey, Header};

use crate::clock::{Clock, SystemClock};
use crate::id::TokenId;
use crate::secret::{Secret, random_base62};

use super::claims::valid_uri;
use super::wire::{self, MAX_JWT_LEN};
use super::{AccessClaims, AccessGrant, JwtError, JwtKey, JwtValidator, JwtValidatorBuilder};

/// An access token's lifetime unless configured: one hour.
///
/// ```
/// assert_eq!(apitoken::jwt::DEFAULT_LIFETIME, chrono::TimeDelta::hours(1));
/// ```
pub const DEFAULT_LIFETIME: TimeDelta = TimeDelta::hours(1);

/// The longest lifetime an issuer accepts: one day. JWTs cannot be revoked, so a long-lived
/// one is an API key without the revocation.
///
/// ```
/// assert_eq!(apitoken::jwt::MAX_LIFETIME, chrono::TimeDelta::days(1));
/// ```
pub const MAX_LIFETIME: TimeDelta = TimeDelta::days(1);

/// How many random base62 characters a `jti` has: about 131 bits.
const JTI_LEN: usize = 22;

/// A token just issued: its text (show it once) and its claims.
///
/// ```
/// use apitoken::Owner;
/// use apitoken::jwt::{AccessGrant, JwtIssuer, JwtKey};
///
/// let issuer = JwtIssuer::builder(JwtKey::hs256(&[3u8; 32])?, "https://auth.example", "api")
///     .build()?;
/// let issued = issuer.issue(&AccessGrant::new(Owner::new("team-1")?, "cli")?)?;
/// assert!(issued.token.expose_secret().starts_with("eyJ"));
/// assert_eq!(format!("{:?}", issued.token), "Secret([REDACTED])");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IssuedJwt {
    /// The compact JWS. A bearer credential until it expires: never log it.
    pub token: Secret,
    /// What it says.
    pub claims: AccessClaims,
}

/// Signs access tokens. Made by [`JwtIssuer::builder`].
///
/// ```
/// use apitoken::Owner;
/// use apitoken::jwt::{AccessGrant, JwtIssuer, JwtKey};
/// use chrono::TimeDelta;
///
/// let issuer = JwtIssuer::builder(JwtKey::hs256(&[3u8; 32])?, "https://auth.example", "api")
///     .lifetime(TimeDelta::minutes(15))
///     .build()?;
/// assert_eq!(issuer.lifetime(), TimeDelta::minutes(15));
/// let issued = issuer.issue(&AccessGrant::new(Owner::new("team-1")?, "cli")?.scopes(["vps:read"])?)?;
/// assert_eq!(issued.claims.scopes.to_string(), "vps:read");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct JwtIssuer {
    key: JwtKey,
    signing: EncodingKey,
    header: Header,
    issuer: String,
    audience: String,
    lifetime: TimeDelta,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for JwtIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtIssuer")
            .field("key", &self.key)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl JwtIssuer {
    /// Starts configuring an issuer that signs with `key` (which must be able to sign) as
    /// `issuer` (`iss`, usually the authorization server's URL) for `audience` (`aud`, the
    /// resource server's identifier).
    pub fn builder(
        key: JwtKey,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> JwtIssuerBuilder {
        JwtIssuerBuilder {
            key,
            issuer: issuer.into(),
            audience: audience.into(),
            lifetime: DEFAULT_LIFETIME,
            clock: Arc::new(SystemClock),
        }
    }

    /// Signs an access token for `grant`, valid from now (by the issuer's clock) for the
    /// issuer's lifetime, with a fresh random `jti`.
    pub fn issue(&self, grant: &AccessGrant) -> Result<IssuedJwt, JwtError> {
        let issued_at = self.clock.now();
        let expires_at = issued_at
            .checked_add_signed(self.lifetime)
            .ok_or(JwtError::InvalidLifetime)?;
        let id = TokenId::new(&random_base62(JTI_LEN)?).map_err(|_| JwtError::Signing)?;
        self.issue_as(grant, id, issued_at, expires_at)
    }

    /// Signs an access token for `grant` with an id and times chosen by the caller (a token
    /// endpoint that tracks its tokens' ids): `jti` is `id`, `iat` and `nbf` are `issued_at`,
    /// `exp` is `expires_at`, in whole seconds. The issuer's own lifetime is not used, but the
    /// token's must be more than zero and at most [`MAX_LIFETIME`].
    ///
    /// ```
    /// use apitoken::{Owner, TokenId};
    /// use apitoken::jwt::{AccessGrant, JwtIssuer, JwtKey};
    /// use chrono::{TimeDelta, TimeZone, Utc};
    ///
    /// let issuer = JwtIssuer::builder(JwtKey::hs256(&[3u8; 32])?, "https://auth.example", "api")
    ///     .build()?;
    /// let grant = AccessGrant::new(Owner::new("team-1")?, "cli")?;
    /// let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    /// let id = TokenId::new("grant-7-token-3")?;
    /// let issued = issuer.issue_as(&grant, id, t0, t0 + TimeDelta::minutes(5))?;
    /// assert_eq!(issued.claims.id, id);
    /// assert_eq!(issued.claims.expires_at, t0 + TimeDelta::minutes(5));
    /// assert!(issuer.issue_as(&grant, id, t0, t0 + TimeDelta::days(2)).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn issue_as(
        &self,
        grant: &AccessGrant,
        id: TokenId,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<IssuedJwt, JwtError> {
        // Whole seconds: NumericDate is in seconds, and the claims returned must be what the
        // token says.
        let whole = |t: DateTime<Utc>| DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t);
        let (issued_at, expires_at) = (whole(issued_at), whole(expires_at));
        let lifetime = expires_at - issued_at;
        if lifetime <= TimeDelta::zero() || lifetime > MAX_LIFETIME {
            return Err(JwtError::InvalidLifetime);
        }
        let claims = AccessClaims {
            id,
            issuer: self.issuer.clone(),
            subject: grant.subject().clone(),
            audience: vec![self.audience.clone()],
            client_id: grant.client_id().to_owned(),
            scopes: grant.scope_set().clone(),
            issued_at,
            not_before: Some(issued_at),
            expires_at,
        };
        let text = wire::encode(&self.header, &claims, &self.audience, &self.signing)
            .map_err(|_| JwtError::Signing)?;
        if text.len() > MAX_JWT_LEN {
            return Err(JwtError::TooLong);
        }
        Ok(IssuedJwt {
            token: Secret::new(text),
            claims,
        })
    }

    /// How long the tokens it issues are valid.
    pub fn lifetime(&self) -> TimeDelta {
        self.lifetime
    }

    /// A validator builder for this issuer's tokens: same key, issuer and audience. Add older
    /// keys (rotation) or change the leeway before building it.
    ///
    /// ```
    /// use apitoken::jwt::{JwtIssuer, JwtKey};
    ///
    /// let issuer = JwtIssuer::builder(JwtKey::hs256(&[3u8; 32])?, "https://auth.example", "api")
    ///     .build()?;
    /// let validator = issuer.validator().build()?;
    /// assert_eq!(validator.audience(), "api");
    /// # Ok::<(), apitoken::jwt::JwtError>(())
    /// ```
    pub fn validator(&self) -> JwtValidatorBuilder {
        JwtValidator::builder(self.issuer.clone(), self.audience.clone()).key(self.key.clone())
    }
}

/// Configures a [`JwtIssuer`]. Made by [`JwtIssuer::builder`].
#[must_use]
pub struct JwtIssuerBuilder {
    key: JwtKey,
    issuer: String,
    audience: String,
    lifetime: TimeDelta,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for JwtIssuerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtIssuerBuilder")
            .field("key", &self.key)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl JwtIssuerBuilder {
    /// How long tokens are valid: more than zero, at most [`MAX_LIFETIME`]. Default:
    /// [`DEFAULT_LIFETIME`], one hour.
    pub fn lifetime(mut self, lifetime: TimeDelta) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The clock `iat`, `nbf` and `exp` are taken from. Default: [`SystemClock`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apitoken::{ManualClock, Owner};
    /// use apitoken::jwt::{AccessGrant, JwtIssuer, JwtKey};
    /// use chrono::{TimeZone, Utc};
    ///
    /// let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    /// let issuer = JwtIssuer::builder(JwtKey::hs256(&[3u8; 32])?, "https://auth.example", "api")
    ///     .clock(Arc::new(ManualClock::new(t0)))
    ///     .build()?;
    /// let issued = issuer.issue(&AccessGrant::new(Owner::new("team-1")?, "cli")?)?;
    /// assert_eq!(issued.claims.issued_at, t0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the issuer: refuses a key that cannot sign, an invalid issuer or audience and a
    /// lifetime out of range.
    pub fn build(self) -> Result<JwtIssuer, JwtError> {
        let signing = self.key.signing().cloned().ok_or(JwtError::CannotSign)?;
        if !valid_uri(&self.issuer) || !valid_uri(&self.audience) {
            return Err(JwtError::InvalidIssuerOrAudience);
        }
        if self.lifetime <= TimeDelta::zero() || self.lifetime > MAX_LIFETIME {
            return Err(JwtError::InvalidLifetime);
        }
        Ok(JwtIssuer {
            header: wire::header_for(&self.key),
            key: self.key,
            signing,
            issuer: self.issuer,
            audience: self.audience,
            lifetime: self.lifetime,
            clock: self.clock,
        })
    }
}
