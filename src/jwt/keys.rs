//! JWT keys: [`JwtKey`], one key bound to one [`JwtAlgorithm`] (HS256 or EdDSA), with an
//! optional key id, read from raw secrets or PKCS#8 / SPKI PEM and DER.
//!
//! Uses nothing of the crate outside `jwt/` (the key material is jsonwebtoken's and
//! ed25519-dalek's); nothing of the core's verifier, of the other plug-ins or of the front ends.

use std::fmt;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use super::JwtError;

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

    /// The same algorithm as jsonwebtoken names it.
    pub(super) fn jsonwebtoken(self) -> Algorithm {
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

    /// The key material that signs, unless this is a public key.
    pub(super) fn signing(&self) -> Option<&EncodingKey> {
        self.signing.as_ref()
    }

    /// The key material that verifies.
    pub(super) fn verifying(&self) -> &DecodingKey {
        &self.verifying
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
