//! [`JwtError`]: why a JWT key, issuer or validator could not be made, or a token not issued.
//!
//! Uses token values only; nothing of the other plug-ins or of the front ends.

use crate::name::MAX_NAME_LEN;
use crate::secret::RandomnessUnavailable;

use super::{MAX_JWT_LEN, MAX_KID_LEN, MAX_URI_LEN, MIN_HMAC_KEY_LEN};

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
    /// A leeway above [`MAX_LEEWAY`](super::MAX_LEEWAY).
    #[error("the leeway is at most 300 seconds")]
    LeewayTooLong,
    /// A lifetime of zero or less, or above [`MAX_LIFETIME`](super::MAX_LIFETIME).
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
