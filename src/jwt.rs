//! JWT access tokens (feature `jwt`): short-lived, self-contained tokens that a
//! [`Verifier`](crate::Verifier) accepts beside API keys, yielding the same
//! [`Principal`](crate::Principal).
//!
//! - [`JwtKey`]: one key bound to one algorithm, HS256 (a secret of at least 256 bits) or
//!   EdDSA (Ed25519), with an optional key id (`kid`).
//! - [`JwtIssuer`]: signs access tokens (RFC 9068: header `typ: at+jwt`; claims `iss`, `sub`,
//!   `aud`, `exp`, `iat`, `nbf`, `jti`, `client_id`, `scope`), one hour by default.
//! - [`JwtValidator`]: checks them (RFC 8725): the algorithm must be the key's own, `none`
//!   never; `typ` must be `at+jwt`, so a refresh token or an ID token cannot stand in for an
//!   access token; `iss` and `aud` must match; `exp` is required and `nbf` honoured, with a
//!   leeway of 60 seconds by default and at most five minutes.
//! - [`VerifierBuilder::jwt`](crate::VerifierBuilder::jwt) plugs a validator into a verifier.
//!
//! A JWT costs no store access, and so cannot be revoked before it expires: the short lifetime
//! is the bound. See `docs/jwt.md`.
//!
//! ```
//! use apitoken::jwt::{AccessGrant, JwtIssuer, JwtKey};
//! use apitoken::{CredentialKind, MemoryStore, Owner, ScopeRequirement, Verifier};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let key = JwtKey::hs256(&[7u8; 32])?;
//! let issuer = JwtIssuer::builder(key, "https://auth.example.com", "https://api.example.com")
//!     .build()?;
//! let verifier = Verifier::builder(MemoryStore::new())
//!     .jwt(issuer.validator().build()?)
//!     .build();
//!
//! let grant = AccessGrant::new(Owner::new("team-1")?, "ci-runner")?.scopes(["vps:read"])?;
//! let issued = issuer.issue(&grant)?;
//! let principal = verifier
//!     .verify(issued.token.expose_secret(), &ScopeRequirement::all(["vps:read"])?)
//!     .await?;
//! assert_eq!(principal.owner().as_str(), "team-1");
//! assert_eq!(principal.name(), "ci-runner");
//! assert_eq!(principal.credential_kind(), CredentialKind::Jwt);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, SystemClock};
use crate::error::{AuthError, RejectReason};
use crate::format::FormatError;
use crate::id::TokenId;
use crate::name::MAX_NAME_LEN;
use crate::record::{Owner, TokenRecord};
use crate::scope::{InvalidScope, ScopeSet};
use crate::secret::{RandomnessUnavailable, Secret, random_base62};

/// `docs/jwt.md`, whose Rust examples run as doctests (one needs the `oauth` feature).
#[cfg(all(doctest, feature = "oauth"))]
#[doc = include_str!("../docs/jwt.md")]
struct JwtGuide;

/// The longest JWT accepted or issued, in bytes. Longer than
/// [`MAX_TOKEN_LEN`](crate::format::MAX_TOKEN_LEN) because a JWT carries its claims; the
/// middleware allows this length for tokens that start as a JWT does (`eyJ`).
///
/// ```
/// assert_eq!(apitoken::jwt::MAX_JWT_LEN, 4096);
/// ```
pub const MAX_JWT_LEN: usize = 4096;

/// The shortest HS256 key, in bytes: 256 bits (RFC 7518 §3.2, RFC 8725 §3.5).
///
/// ```
/// use apitoken::jwt::{JwtKey, MIN_HMAC_KEY_LEN};
/// assert!(JwtKey::hs256(&[1u8; MIN_HMAC_KEY_LEN]).is_ok());
/// assert!(JwtKey::hs256(&[1u8; MIN_HMAC_KEY_LEN - 1]).is_err());
/// ```
pub const MIN_HMAC_KEY_LEN: usize = 32;

/// The longest key id (`kid`).
///
/// ```
/// use apitoken::jwt::{JwtKey, MAX_KID_LEN};
/// assert!(JwtKey::hs256(&[1u8; 32])?.with_kid(&"k".repeat(MAX_KID_LEN + 1)).is_err());
/// # Ok::<(), apitoken::jwt::JwtError>(())
/// ```
pub const MAX_KID_LEN: usize = 128;

/// The longest issuer (`iss`) or audience (`aud`).
///
/// ```
/// use apitoken::jwt::{JwtValidator, MAX_URI_LEN};
/// assert!(JwtValidator::builder("x".repeat(MAX_URI_LEN + 1), "api").build().is_err());
/// ```
pub const MAX_URI_LEN: usize = 255;

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

/// The clock-skew allowance on `exp` and `nbf` unless configured: 60 seconds.
///
/// ```
/// assert_eq!(apitoken::jwt::DEFAULT_LEEWAY.as_secs(), 60);
/// ```
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// The largest leeway a validator accepts: five minutes ("a few minutes", RFC 8725 §3.10
/// and OWASP). A larger one is refused when the validator is built, not clamped.
///
/// ```
/// assert_eq!(apitoken::jwt::MAX_LEEWAY.as_secs(), 300);
/// ```
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// The `typ` header of an access token (RFC 9068 §2.1). A validator also accepts its long
/// form, `application/at+jwt`, in any case (RFC 7515 §4.1.9).
///
/// ```
/// assert_eq!(apitoken::jwt::ACCESS_TOKEN_TYPE, "at+jwt");
/// ```
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// How many random base62 characters a `jti` has: about 131 bits.
const JTI_LEN: usize = 22;

/// A JWT signature algorithm this crate signs and checks with. Each [`JwtKey`] has exactly
/// one.
///
/// ```
/// use apitoken::jwt::{JwtAlgorithm, JwtKey};
/// assert_eq!(JwtKey::hs256(&[1u8; 32])?.algorithm(), JwtAlgorithm::Hs256);
/// assert_eq!(JwtAlgorithm::EdDsa.as_str(), "EdDSA");
/// # Ok::<(), apitoken::jwt::JwtError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256, a shared secret of at least [`MIN_HMAC_KEY_LEN`] bytes.
    Hs256,
    /// Ed25519 signatures (RFC 8037): the issuer holds the private key, validators only the
    /// public one.
    EdDsa,
}

impl JwtAlgorithm {
    /// The `alg` header value: `HS256` or `EdDSA`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::EdDsa => "EdDSA",
        }
    }

    fn jsonwebtoken(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }
}

/// A signing or verifying key, bound to one [`JwtAlgorithm`], with an optional key id.
///
/// `Debug` shows the algorithm, the key id and whether it can sign; never key material.
///
/// ```
/// use apitoken::jwt::JwtKey;
///
/// let key = JwtKey::hs256(b"0123456789abcdef0123456789abcdef")?.with_kid("2026-11")?;
/// assert_eq!(key.kid(), Some("2026-11"));
/// assert!(key.can_sign());
/// assert!(!format!("{key:?}").contains("0123"));
/// assert!(JwtKey::hs256(b"too short").is_err());
/// # Ok::<(), apitoken::jwt::JwtError>(())
/// ```
#[derive(Clone)]
pub struct JwtKey {
    algorithm: JwtAlgorithm,
    kid: Option<String>,
    /// `None` for a public key: it only verifies.
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
}

impl JwtKey {
    /// An HS256 key from a secret of at least [`MIN_HMAC_KEY_LEN`] bytes (256 bits); shorter
    /// is refused ([`JwtError::KeyTooShort`]). Use random bytes from a CSPRNG, not a
    /// password. It signs and verifies.
    pub fn hs256(secret: &[u8]) -> Result<Self, JwtError> {
        if secret.len() < MIN_HMAC_KEY_LEN {
            return Err(JwtError::KeyTooShort);
        }
        Ok(Self {
            algorithm: JwtAlgorithm::Hs256,
            kid: None,
            signing: Some(EncodingKey::from_secret(secret)),
            verifying: DecodingKey::from_secret(secret),
        })
    }

    /// An Ed25519 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, as
    /// `openssl genpkey -algorithm ed25519` writes). It signs, and verifies with its public
    /// half.
    ///
    /// ```
    /// use apitoken::jwt::{JwtAlgorithm, JwtKey};
    ///
    /// let pem = "-----BEGIN PRIVATE KEY-----\n\
    ///            MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
    ///            -----END PRIVATE KEY-----\n";
    /// let key = JwtKey::ed25519_private_pem(pem)?;
    /// assert_eq!(key.algorithm(), JwtAlgorithm::EdDsa);
    /// assert!(key.can_sign());
    /// # Ok::<(), apitoken::jwt::JwtError>(())
    /// ```
    pub fn ed25519_private_pem(pem: &str) -> Result<Self, JwtError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|_| JwtError::InvalidKey)?;
        Self::ed25519_signing(&key)
    }

    /// An Ed25519 private key in PKCS#8 DER. It signs, and verifies with its public half.
    ///
    /// ```
    /// use apitoken::jwt::JwtKey;
    /// assert!(JwtKey::ed25519_private_der(&[0u8; 48]).is_err());
    /// ```
    pub fn ed25519_private_der(der: &[u8]) -> Result<Self, JwtError> {
        let key = SigningKey::from_pkcs8_der(der).map_err(|_| JwtError::InvalidKey)?;
        Self::ed25519_signing(&key)
    }

    /// An Ed25519 public key in SPKI PEM (`-----BEGIN PUBLIC KEY-----`, as
    /// `openssl pkey -pubout` writes). It only verifies.
    ///
    /// ```
    /// use apitoken::jwt::JwtKey;
    ///
    /// let pem = "-----BEGIN PUBLIC KEY-----\n\
    ///            MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
    ///            -----END PUBLIC KEY-----\n";
    /// let key = JwtKey::ed25519_public_pem(pem)?;
    /// assert!(!key.can_sign());
    /// # Ok::<(), apitoken::jwt::JwtError>(())
    /// ```
    pub fn ed25519_public_pem(pem: &str) -> Result<Self, JwtError> {
        let key = VerifyingKey::from_public_key_pem(pem).map_err(|_| JwtError::InvalidKey)?;
        Self::ed25519_verifying(&key)
    }

    /// An Ed25519 public key in SPKI DER. It only verifies.
    ///
    /// ```
    /// use apitoken::jwt::JwtKey;
    /// assert!(JwtKey::ed25519_public_der(&[0u8; 44]).is_err());
    /// ```
    pub fn ed25519_public_der(der: &[u8]) -> Result<Self, JwtError> {
        let key = VerifyingKey::from_public_key_der(der).map_err(|_| JwtError::InvalidKey)?;
        Self::ed25519_verifying(&key)
    }

    fn ed25519_signing(key: &SigningKey) -> Result<Self, JwtError> {
        // jsonwebtoken wants PKCS#8 DER; re-encoding a parsed key also normalises PEM input.
        let der = key.to_pkcs8_der().map_err(|_| JwtError::InvalidKey)?;
        Ok(Self {
            signing: Some(EncodingKey::from_ed_der(der.as_bytes())),
            ..Self::ed25519_verifying(&key.verifying_key())?
        })
    }

    fn ed25519_verifying(key: &VerifyingKey) -> Result<Self, JwtError> {
        // A small-order point would accept forged signatures for some messages.
        if key.is_weak() {
            return Err(JwtError::InvalidKey);
        }
        Ok(Self {
            algorithm: JwtAlgorithm::EdDsa,
            kid: None,
            signing: None,
            // jsonwebtoken's "DER" for Ed25519 is the raw 32-byte public key.
            verifying: DecodingKey::from_ed_der(key.as_bytes()),
        })
    }

    /// Names the key: the issuer writes `kid` into every header, and a validator with several
    /// keys picks the one a token names. 1 to [`MAX_KID_LEN`] visible ASCII characters.
    pub fn with_kid(mut self, kid: &str) -> Result<Self, JwtError> {
        if kid.is_empty() || kid.len() > MAX_KID_LEN || !kid.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(JwtError::InvalidKeyId);
        }
        self.kid = Some(kid.to_owned());
        Ok(self)
    }

    /// The one algorithm this key signs and verifies with.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// The key id, if named.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Whether the key can sign: HS256 keys and Ed25519 private keys can; Ed25519 public
    /// keys only verify.
    pub fn can_sign(&self) -> bool {
        self.signing.is_some()
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("can_sign", &self.can_sign())
            .finish_non_exhaustive()
    }
}

/// Why a JWT key, issuer or validator could not be made, or a token not issued. Never
/// includes key material or token text.
///
/// ```
/// use apitoken::jwt::{JwtError, JwtKey};
/// assert_eq!(JwtKey::hs256(b"short").unwrap_err(), JwtError::KeyTooShort);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// An HS256 key shorter than [`MIN_HMAC_KEY_LEN`] bytes.
    #[error("an HS256 key needs at least {MIN_HMAC_KEY_LEN} bytes (256 bits)")]
    KeyTooShort,
    /// The bytes are not an Ed25519 key in the expected encoding, or the key is weak.
    #[error("not a valid Ed25519 key in the expected encoding")]
    InvalidKey,
    /// A key id that is empty, too long or not visible ASCII.
    #[error("a key id is 1 to {MAX_KID_LEN} visible ASCII characters")]
    InvalidKeyId,
    /// An issuer was given a public key, which cannot sign.
    #[error("this key only verifies; signing needs the private key")]
    CannotSign,
    /// A validator without keys.
    #[error("a validator needs at least one key")]
    NoKeys,
    /// A validator with several keys where one has no key id, or two share one: a token
    /// could not say which key it was signed with.
    #[error("with several keys, each needs its own key id")]
    AmbiguousKeys,
    /// An issuer or audience that is empty, too long or has control characters.
    #[error("the issuer and the audience are 1 to {MAX_URI_LEN} bytes without control characters")]
    InvalidIssuerOrAudience,
    /// A leeway above [`MAX_LEEWAY`].
    #[error("the leeway is at most 300 seconds")]
    LeewayTooLong,
    /// A lifetime of zero or less, or above [`MAX_LIFETIME`].
    #[error("an access token lifetime is more than zero and at most one day")]
    InvalidLifetime,
    /// A client id that is empty, too long or has control characters.
    #[error("a client id is 1 to {MAX_NAME_LEN} characters without control characters")]
    InvalidClientId,
    /// The token would be longer than [`MAX_JWT_LEN`] (too many scopes).
    #[error("the token would be longer than {MAX_JWT_LEN} bytes")]
    TooLong,
    /// The operating system's random number generator failed (for the `jti`).
    #[error("the operating system's random number generator failed")]
    RandomnessUnavailable,
    /// The signature could not be made.
    #[error("signing the token failed")]
    Signing,
    /// A token endpoint asked for a token restricted to an IP allowlist, which a JWT cannot
    /// carry (feature `oauth`: the JWT minter refuses rather than drop the restriction).
    #[error("a JWT access token cannot carry an IP allowlist")]
    AllowlistUnsupported,
    /// A token endpoint asked for a token bound to its client key's per-token rate limit,
    /// which a JWT cannot carry (each JWT would start with a fresh budget): the JWT minter
    /// refuses rather than drop the limit.
    #[error("a JWT access token cannot carry a per-token rate limit")]
    RateLimitUnsupported,
}

impl From<RandomnessUnavailable> for JwtError {
    fn from(_: RandomnessUnavailable) -> Self {
        Self::RandomnessUnavailable
    }
}

fn valid_uri(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_URI_LEN && !text.chars().any(char::is_control)
}

fn valid_client_id(text: &str) -> bool {
    !text.is_empty() && text.chars().count() <= MAX_NAME_LEN && !text.chars().any(char::is_control)
}

/// Who an access token is for and what it may do: the input to [`JwtIssuer::issue`].
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

/// The claims of a valid access token: what [`JwtIssuer::issue`] signed, or what
/// [`JwtValidator::validate`] accepted.
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
            subject: grant.subject.clone(),
            audience: vec![self.audience.clone()],
            client_id: grant.client_id.clone(),
            scopes: grant.scopes.clone(),
            issued_at,
            not_before: Some(issued_at),
            expires_at,
        };
        let scope = claims.scopes.to_string();
        let wire = WireOut {
            iss: &claims.issuer,
            sub: claims.subject.as_str(),
            aud: &self.audience,
            exp: expires_at.timestamp(),
            iat: issued_at.timestamp(),
            nbf: issued_at.timestamp(),
            jti: claims.id.as_str(),
            client_id: &claims.client_id,
            scope: (!scope.is_empty()).then_some(scope.as_str()),
        };
        let text = jsonwebtoken::encode(&self.header, &wire, &self.signing)
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
        let signing = self.key.signing.clone().ok_or(JwtError::CannotSign)?;
        if !valid_uri(&self.issuer) || !valid_uri(&self.audience) {
            return Err(JwtError::InvalidIssuerOrAudience);
        }
        if self.lifetime <= TimeDelta::zero() || self.lifetime > MAX_LIFETIME {
            return Err(JwtError::InvalidLifetime);
        }
        let mut header = Header::new(self.key.algorithm.jsonwebtoken());
        header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
        header.kid = self.key.kid.clone();
        Ok(JwtIssuer {
            key: self.key,
            signing,
            header,
            issuer: self.issuer,
            audience: self.audience,
            lifetime: self.lifetime,
            clock: self.clock,
        })
    }
}

/// Checks access tokens. Made by [`JwtValidator::builder`]; plug it into a verifier with
/// [`VerifierBuilder::jwt`](crate::VerifierBuilder::jwt).
///
/// In order, a token is refused (as [`AuthErrorKind::InvalidToken`](crate::AuthErrorKind),
/// with the [`RejectReason`] in brackets) when:
///
/// 1. it is longer than [`MAX_JWT_LEN`], not three base64url segments, its header is not
///    JSON or names an algorithm this crate does not know (`none` included), or it has a
///    `crit` header (no extension is understood) [`MalformedJwt`](RejectReason::MalformedJwt);
/// 2. its `typ` is not `at+jwt` (a refresh token, an ID token, a plain `JWT`, or none)
///    [`WrongTokenType`](RejectReason::WrongTokenType);
/// 3. its `kid` names no key, or it has none and the validator has several keys
///    [`UnknownKey`](RejectReason::UnknownKey);
/// 4. its `alg` is not that key's algorithm [`WrongAlgorithm`](RejectReason::WrongAlgorithm);
/// 5. the signature does not verify [`BadSignature`](RejectReason::BadSignature);
/// 6. `iss` or `aud` is not this validator's [`WrongIssuer`](RejectReason::WrongIssuer),
///    [`WrongAudience`](RejectReason::WrongAudience), or a claim is missing or malformed
///    (`iss`, `sub`, `aud`, `exp`, `iat`, `jti`, `client_id` are required; `sub` must be an
///    [`Owner`], `jti` a [`TokenId`], `scope` valid scopes)
///    [`InvalidClaims`](RejectReason::InvalidClaims);
/// 7. `now` is at or past `exp` plus the leeway [`Expired`](RejectReason::Expired), or
///    before `nbf` minus the leeway [`NotYetValid`](RejectReason::NotYetValid).
///
/// From step 7 on, the error carries the token's `jti` as its token id.
///
/// ```
/// use apitoken::jwt::{JwtKey, JwtValidator};
/// use std::time::Duration;
///
/// let validator = JwtValidator::builder("https://auth.example", "api")
///     .key(JwtKey::hs256(&[3u8; 32])?.with_kid("2026-11")?)
///     .key(JwtKey::hs256(&[4u8; 32])?.with_kid("2026-10")?)
///     .leeway(Duration::from_secs(30))
///     .build()?;
/// assert_eq!(validator.leeway(), Duration::from_secs(30));
/// assert!(!format!("{validator:?}").contains("3, 3"));
/// # Ok::<(), apitoken::jwt::JwtError>(())
/// ```
#[derive(Clone)]
pub struct JwtValidator {
    keys: Vec<(JwtKey, Validation)>,
    issuer: String,
    audience: String,
    leeway: Duration,
}

impl fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtValidator")
            .field(
                "keys",
                &self.keys.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl JwtValidator {
    /// Starts configuring a validator that accepts tokens from `issuer` (`iss`, exactly) for
    /// `audience` (`aud`, which must contain it).
    pub fn builder(issuer: impl Into<String>, audience: impl Into<String>) -> JwtValidatorBuilder {
        JwtValidatorBuilder {
            keys: Vec::new(),
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: DEFAULT_LEEWAY,
        }
    }

    /// Checks `token` at `now` (see the type's documentation for what is checked) and returns
    /// its claims. Through a [`Verifier`](crate::Verifier), `now` is the verifier's clock.
    ///
    /// ```
    /// use apitoken::{AuthErrorKind, Owner, RejectReason};
    /// use apitoken::jwt::{AccessGrant, JwtIssuer, JwtKey};
    /// use chrono::{TimeDelta, Utc};
    ///
    /// let issuer = JwtIssuer::builder(JwtKey::hs256(&[3u8; 32])?, "https://auth.example", "api")
    ///     .build()?;
    /// let validator = issuer.validator().build()?;
    /// let issued = issuer.issue(&AccessGrant::new(Owner::new("team-1")?, "cli")?)?;
    /// let token = issued.token.expose_secret();
    ///
    /// assert_eq!(validator.validate(token, Utc::now())?.subject.as_str(), "team-1");
    /// let later = Utc::now() + TimeDelta::hours(2);
    /// let err = validator.validate(token, later).unwrap_err();
    /// assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    /// assert_eq!(err.reason(), Some(RejectReason::Expired));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn validate(&self, token: &str, now: DateTime<Utc>) -> Result<AccessClaims, AuthError> {
        self.check(token, now)
            .map_err(|(reason, id)| AuthError::invalid_token(reason, id))
    }

    fn check(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<AccessClaims, (RejectReason, Option<TokenId>)> {
        let refuse = |reason| (reason, None);
        if token.len() > MAX_JWT_LEN {
            return Err(refuse(RejectReason::Malformed(FormatError::TooLong)));
        }
        if !is_compact_jws(token) {
            return Err(refuse(RejectReason::MalformedJwt));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| refuse(RejectReason::MalformedJwt))?;
        if header.crit.is_some() {
            return Err(refuse(RejectReason::MalformedJwt));
        }
        if !header.typ.as_deref().is_some_and(is_access_token_type) {
            return Err(refuse(RejectReason::WrongTokenType));
        }
        let (key, validation) = self
            .key_for(header.kid.as_deref())
            .ok_or(refuse(RejectReason::UnknownKey))?;
        // One algorithm per key: checked here, before any cryptography, and again by
        // jsonwebtoken (the validation allows only this algorithm).
        if header.alg != key.algorithm.jsonwebtoken() {
            return Err(refuse(RejectReason::WrongAlgorithm));
        }
        let data = jsonwebtoken::decode::<WireIn>(token, &key.verifying, validation)
            .map_err(|err| refuse(classify(err.kind())))?;
        let claims = data
            .claims
            .into_claims()
            .ok_or(refuse(RejectReason::InvalidClaims))?;

        let leeway = TimeDelta::from_std(self.leeway).unwrap_or(TimeDelta::zero());
        let expired = claims
            .expires_at
            .checked_add_signed(leeway)
            .is_none_or(|end| end <= now);
        let early = claims.not_before.is_some_and(|nbf| {
            nbf.checked_sub_signed(leeway)
                .is_none_or(|start| start > now)
        });
        let reason = if expired {
            Some(RejectReason::Expired)
        } else if early {
            Some(RejectReason::NotYetValid)
        } else {
            None
        };
        match reason {
            Some(reason) => Err((reason, Some(claims.id))),
            None => Ok(claims),
        }
    }

    /// The key a token's `kid` names; without a `kid`, the only key.
    fn key_for(&self, kid: Option<&str>) -> Option<&(JwtKey, Validation)> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(k, _)| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    /// The accepted issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The required audience.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The clock-skew allowance on `exp` and `nbf`.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }
}

/// Configures a [`JwtValidator`]. Made by [`JwtValidator::builder`] or
/// [`JwtIssuer::validator`].
#[must_use]
#[derive(Debug)]
pub struct JwtValidatorBuilder {
    keys: Vec<JwtKey>,
    issuer: String,
    audience: String,
    leeway: Duration,
}

impl JwtValidatorBuilder {
    /// Accepts tokens signed with `key`, with its algorithm only. With more than one key,
    /// each needs its own key id ([`JwtKey::with_kid`]): add the new key and keep the old one
    /// until the tokens it signed have expired (see `docs/jwt.md`, key rotation).
    pub fn key(mut self, key: JwtKey) -> Self {
        self.keys.push(key);
        self
    }

    /// The allowance for clock skew between issuer and validator, on `exp` and `nbf`: at most
    /// [`MAX_LEEWAY`] (more is refused by [`build`](Self::build)). Default: [`DEFAULT_LEEWAY`],
    /// 60 seconds.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Builds the validator: refuses no keys, several keys without distinct key ids, an
    /// invalid issuer or audience, and a leeway above [`MAX_LEEWAY`].
    pub fn build(self) -> Result<JwtValidator, JwtError> {
        if self.keys.is_empty() {
            return Err(JwtError::NoKeys);
        }
        if self.keys.len() > 1 {
            let mut kids: Vec<Option<&str>> = self.keys.iter().map(JwtKey::kid).collect();
            kids.sort_unstable();
            kids.dedup();
            if kids.len() != self.keys.len() || kids.contains(&None) {
                return Err(JwtError::AmbiguousKeys);
            }
        }
        if !valid_uri(&self.issuer) || !valid_uri(&self.audience) {
            return Err(JwtError::InvalidIssuerOrAudience);
        }
        if self.leeway > MAX_LEEWAY {
            return Err(JwtError::LeewayTooLong);
        }
        let keys = self
            .keys
            .into_iter()
            .map(|key| {
                let validation = validation_for(&key, &self.issuer, &self.audience);
                (key, validation)
            })
            .collect();
        Ok(JwtValidator {
            keys,
            issuer: self.issuer,
            audience: self.audience,
            leeway: self.leeway,
        })
    }
}

/// jsonwebtoken's checks for `key`: its algorithm only, `iss` and `aud` required and
/// matched. Its time checks are off because it reads the system clock; the validator checks
/// `exp` and `nbf` against the verifier's [`Clock`] instead.
fn validation_for(key: &JwtKey, issuer: &str, audience: &str) -> Validation {
    let mut validation = Validation::new(key.algorithm.jsonwebtoken());
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.validate_aud = true;
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation
}

/// What a jsonwebtoken error means for the logs.
fn classify(kind: &ErrorKind) -> RejectReason {
    match kind {
        ErrorKind::InvalidSignature => RejectReason::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => RejectReason::WrongAlgorithm,
        ErrorKind::InvalidIssuer => RejectReason::WrongIssuer,
        ErrorKind::InvalidAudience => RejectReason::WrongAudience,
        // The header was read before, so a JSON or UTF-8 error is in the (signed) claims.
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => RejectReason::InvalidClaims,
        _ => RejectReason::MalformedJwt,
    }
}

/// Whether `token` starts as a JWT does (a base64url JSON object, `eyJ`) and has three
/// segments: the verifier's cheap test for which path a token takes.
pub(crate) fn has_jwt_shape(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

/// Three non-empty segments of base64url without padding.
fn is_compact_jws(token: &str) -> bool {
    let mut segments = 0;
    for segment in token.split('.') {
        segments += 1;
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    segments == 3
}

/// `at+jwt` or `application/at+jwt`, in any case (media types are case-insensitive).
fn is_access_token_type(typ: &str) -> bool {
    let short = typ
        .get(..12)
        .filter(|p| p.eq_ignore_ascii_case("application/"))
        .map_or(typ, |_| &typ[12..]);
    short.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE)
}

/// The claims as signed.
#[derive(Serialize)]
struct WireOut<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

/// The claims as read; unknown claims are ignored, a repeated claim is an error (serde).
#[derive(Deserialize)]
struct WireIn {
    iss: String,
    sub: String,
    aud: OneOrMany,
    exp: NumericDate,
    iat: NumericDate,
    #[serde(default)]
    nbf: Option<NumericDate>,
    jti: String,
    client_id: String,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// RFC 7519's NumericDate: seconds, possibly with a fraction (dropped).
#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
enum NumericDate {
    Whole(i64),
    Fraction(f64),
}

impl NumericDate {
    fn to_utc(self) -> Option<DateTime<Utc>> {
        let seconds = match self {
            Self::Whole(s) => s,
            Self::Fraction(f) if f.is_finite() => f.floor() as i64,
            Self::Fraction(_) => return None,
        };
        DateTime::from_timestamp(seconds, 0)
    }
}

impl WireIn {
    fn into_claims(self) -> Option<AccessClaims> {
        if !valid_client_id(&self.client_id) {
            return None;
        }
        Some(AccessClaims {
            id: TokenId::new(&self.jti).ok()?,
            issuer: self.iss,
            subject: Owner::new(&self.sub).ok()?,
            audience: match self.aud {
                OneOrMany::One(aud) => vec![aud],
                OneOrMany::Many(auds) => auds,
            },
            client_id: self.client_id,
            scopes: ScopeSet::parse(self.scope.as_deref().unwrap_or("")).ok()?,
            issued_at: self.iat.to_utc()?,
            not_before: match self.nbf {
                Some(nbf) => Some(nbf.to_utc()?),
                None => None,
            },
            expires_at: self.exp.to_utc()?,
        })
    }
}

/// A [`JwtIssuer`] mints the OAuth token endpoint's access tokens (features `jwt` and
/// `oauth`): plug it in with
/// [`AuthorizationServerBuilder::minter`](crate::oauth::AuthorizationServerBuilder::minter).
/// The endpoint chooses the `jti`, owner (`sub`), scopes, client (`client_id`) and times; the
/// issuer signs them ([`JwtIssuer::issue_as`]). A request with an IP allowlist (a client key
/// restricted to some networks, under client credentials) is refused, since a JWT cannot
/// carry one. Revoking the grant a JWT came from does not reach the JWT before its `exp`.
#[cfg(feature = "oauth")]
impl crate::oauth::AccessTokenMinter for JwtIssuer {
    fn mint(
        &self,
        request: crate::oauth::AccessTokenRequest,
    ) -> crate::oauth::BoxFuture<'_, Result<crate::oauth::MintedAccessToken, crate::oauth::MintError>>
    {
        use crate::oauth::{MintError, MintedAccessToken};
        let minted = (|| {
            if !request.allowed_ips.is_empty() {
                return Err(JwtError::AllowlistUnsupported);
            }
            if request.rate_limit.is_some() {
                return Err(JwtError::RateLimitUnsupported);
            }
            let grant = AccessGrant::new(request.owner, request.client_id.as_str())?
                .with_scope_set(request.scopes);
            let issued =
                self.issue_as(&grant, request.jti, request.issued_at, request.expires_at)?;
            let seconds = (issued.claims.expires_at - issued.claims.issued_at).num_seconds();
            Ok(MintedAccessToken::new(
                issued.token,
                u64::try_from(seconds).unwrap_or(0),
            ))
        })();
        Box::pin(std::future::ready(
            minted.map_err(|err| MintError::Failed(Box::new(err))),
        ))
    }

    fn self_contained(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_token_type_accepts_both_forms_in_any_case_and_nothing_else() {
        for ok in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/AT+jwt",
        ] {
            assert!(is_access_token_type(ok), "{ok}");
        }
        for bad in [
            "JWT",
            "rt+jwt",
            "application/jwt",
            "at+jwt ",
            "application/",
            "",
            "xapplication/at+jwt",
            "application/application/at+jwt",
        ] {
            assert!(!is_access_token_type(bad), "{bad}");
        }
    }

    #[test]
    fn compact_jws_shape() {
        assert!(is_compact_jws("eyJh.eyJi.c2ln"));
        assert!(is_compact_jws("eyJh.e-_i.c"));
        for bad in [
            "eyJh.eyJi.",
            "eyJh..c2ln",
            "eyJh.eyJi",
            "eyJh.eyJi.c2ln.x",
            "eyJh.eyJi.c2l=",
            "eyJh.ey+i.c2ln",
        ] {
            assert!(!is_compact_jws(bad), "{bad}");
        }
        assert!(has_jwt_shape("eyJh.eyJi.c2ln"));
        assert!(!has_jwt_shape("abc.eyJi.c2ln"));
        assert!(!has_jwt_shape("eyJh.eyJi"));
    }

    #[test]
    fn numeric_dates_accept_fractions_and_refuse_the_out_of_range() {
        let at = |n: NumericDate| n.to_utc().map(|d| d.timestamp());
        assert_eq!(at(NumericDate::Whole(1_700_000_000)), Some(1_700_000_000));
        assert_eq!(
            at(NumericDate::Fraction(1_700_000_000.9)),
            Some(1_700_000_000)
        );
        assert_eq!(at(NumericDate::Fraction(f64::NAN)), None);
        assert_eq!(at(NumericDate::Whole(i64::MAX)), None);
    }

    #[test]
    fn several_keys_need_distinct_kids() {
        let key = |kid: Option<&str>| {
            let key = JwtKey::hs256(&[9u8; 32]).unwrap();
            match kid {
                Some(kid) => key.with_kid(kid).unwrap(),
                None => key,
            }
        };
        let build = |keys: Vec<JwtKey>| {
            keys.into_iter()
                .fold(
                    JwtValidator::builder("iss", "aud"),
                    JwtValidatorBuilder::key,
                )
                .build()
                .map(|_| ())
        };
        assert_eq!(build(vec![]), Err(JwtError::NoKeys));
        assert_eq!(build(vec![key(None)]), Ok(()));
        assert_eq!(build(vec![key(Some("a")), key(Some("b"))]), Ok(()));
        assert_eq!(
            build(vec![key(Some("a")), key(Some("a"))]),
            Err(JwtError::AmbiguousKeys)
        );
        assert_eq!(
            build(vec![key(Some("a")), key(None)]),
            Err(JwtError::AmbiguousKeys)
        );
    }

    #[cfg(feature = "oauth")]
    #[tokio::test]
    async fn as_a_minter_it_signs_what_the_endpoint_decided_and_refuses_allowlists_and_limits() {
        use crate::oauth::{AccessTokenMinter, AccessTokenRequest, GrantType};

        let key = JwtKey::hs256(&[9u8; 32]).unwrap();
        let issuer = JwtIssuer::builder(key, "iss", "aud").build().unwrap();
        let validator = issuer.validator().build().unwrap();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut request = AccessTokenRequest {
            jti: TokenId::new("family-1-3").unwrap(),
            owner: Owner::new("acct-1").unwrap(),
            scopes: ScopeSet::parse("db:read").unwrap(),
            client_id: TokenId::new("client-7").unwrap(),
            grant_type: GrantType::ClientCredentials,
            issued_at: t0,
            expires_at: t0 + TimeDelta::minutes(20),
            allowed_ips: Vec::new(),
            rate_limit: None,
        };
        let minted = issuer.mint(request.clone()).await.unwrap();
        assert_eq!(minted.expires_in, 1200);
        let claims = validator
            .validate(minted.token.expose_secret(), t0)
            .unwrap();
        assert_eq!(claims.id.as_str(), "family-1-3");
        assert_eq!(claims.subject.as_str(), "acct-1");
        assert_eq!(claims.client_id, "client-7");
        assert_eq!(claims.scopes.to_string(), "db:read");
        assert_eq!(
            (claims.issued_at, claims.expires_at),
            (t0, request.expires_at)
        );

        let mut limited = request.clone();
        limited.rate_limit = Some(crate::rate_limit::RateLimit::per_hour(1));
        assert!(
            issuer.mint(limited).await.is_err(),
            "a JWT cannot keep a rate limit"
        );
        request.allowed_ips = vec!["192.0.2.0/24".parse().unwrap()];
        assert!(issuer.mint(request).await.is_err());
    }

    #[test]
    fn leeway_above_the_cap_is_refused_not_clamped() {
        let builder =
            || JwtValidator::builder("iss", "aud").key(JwtKey::hs256(&[9u8; 32]).unwrap());
        assert!(builder().leeway(MAX_LEEWAY).build().is_ok());
        assert_eq!(
            builder()
                .leeway(MAX_LEEWAY + Duration::from_secs(1))
                .build()
                .unwrap_err(),
            JwtError::LeewayTooLong
        );
    }

    #[test]
    fn issuer_refuses_public_keys_and_lifetimes_out_of_range() {
        let public = JwtKey::ed25519_public_pem(
            "-----BEGIN PUBLIC KEY-----\n\
             MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
             -----END PUBLIC KEY-----\n",
        )
        .unwrap();
        assert_eq!(
            JwtIssuer::builder(public, "iss", "aud")
                .build()
                .unwrap_err(),
            JwtError::CannotSign
        );
        let hs = || JwtKey::hs256(&[9u8; 32]).unwrap();
        for bad in [
            TimeDelta::zero(),
            TimeDelta::seconds(-1),
            MAX_LIFETIME + TimeDelta::seconds(1),
        ] {
            assert_eq!(
                JwtIssuer::builder(hs(), "iss", "aud")
                    .lifetime(bad)
                    .build()
                    .unwrap_err(),
                JwtError::InvalidLifetime
            );
        }
        assert_eq!(
            JwtIssuer::builder(hs(), "", "aud").build().unwrap_err(),
            JwtError::InvalidIssuerOrAudience
        );
        assert_eq!(
            JwtIssuer::builder(hs(), "iss", "a\nb").build().unwrap_err(),
            JwtError::InvalidIssuerOrAudience
        );
    }
}
