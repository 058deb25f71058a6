//! Secrets, their stored hashes, and how they are made.
//!
//! A token's secret is shown to its owner once and never stored: the store keeps a
//! [`SecretHash`], SHA-256 of the secret (or HMAC-SHA-256 under a server-side pepper, see
//! [`SecretHasher`]). Generated secrets have at least 128 bits of entropy, so a fast hash is the
//! right tool: NIST SP 800-63B §5.1.2.2 allows it for look-up secrets of 112 bits or more, and a
//! slow password hash would only cost every request (djangorestframework-api-key moved off one
//! for that reason).

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use rand::TryRng;
use rand::rngs::SysRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::base62::BASE62;

/// Secret text: a whole token as issued, or a credential read from configuration.
///
/// `Secret` has a redacted `Debug`, no `Display` and no `Serialize`, and wipes its memory when
/// dropped. The text is reachable only through [`expose_secret`](Self::expose_secret), so every
/// place that reveals it is easy to find in review.
///
/// ```
/// use apitoken::Secret;
///
/// let secret = Secret::new("1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD4pflejgqjd0pfKtywlSWR9G0fIaWajuKcBT3".into());
/// assert_eq!(format!("{secret:?}"), "Secret([REDACTED])");
/// assert!(secret.expose_secret().starts_with("1."));
/// ```
///
/// Equality is constant-time in the content (the length may show).
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps secret text. The `String` is moved, not copied, so no stray copy is left behind.
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }

    /// The secret text. Call this only where the secret must leave the process: in the one
    /// response that shows a new token, or in an outgoing `Authorization` header.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

/// The stored form of a secret: 32 bytes of SHA-256 or HMAC-SHA-256.
///
/// Equality is constant-time (`subtle`), so comparing a presented secret's hash with the stored
/// one does not reveal how many leading bytes matched. `Debug` does not print the bytes.
/// Serialized as 64 lowercase hex digits, the form Laravel Sanctum stores.
///
/// ```
/// use apitoken::{SecretHash, SecretHasher};
///
/// let hash = SecretHasher::sha256().hash(b"7TEwyZaQXMXRVBZV9USjWNRbXAbPv9BrgMJSLDCk345196d2");
/// let hex = hash.to_hex();
/// assert_eq!(hex.len(), 64);
/// assert_eq!(SecretHash::from_hex(&hex), Some(hash));
/// ```
#[derive(Clone, Copy, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    /// A hash from its 32 bytes, as read back from a store.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes, for a store to write.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 hex digits (either case). Returns `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let raw = hex.as_bytes();
        if raw.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(raw.chunks_exact(2)) {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            *byte = (hi * 16 + lo) as u8;
        }
        Some(Self(out))
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
        out
    }
}

impl PartialEq for SecretHash {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

// Consistent with the constant-time `PartialEq`: equal hashes have equal bytes.
impl std::hash::Hash for SecretHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl ConstantTimeEq for SecretHash {
    /// Constant time: the XOR of the two hashes is folded into one word with no branch on
    /// the data, and only that word goes through `subtle`'s comparison (one optimisation
    /// barrier instead of one per byte).
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        let word = |bytes: &[u8; 32], i: usize| {
            u64::from_le_bytes([
                bytes[i],
                bytes[i + 1],
                bytes[i + 2],
                bytes[i + 3],
                bytes[i + 4],
                bytes[i + 5],
                bytes[i + 6],
                bytes[i + 7],
            ])
        };
        let diff = (0..32)
            .step_by(8)
            .fold(0u64, |acc, i| acc | (word(&self.0, i) ^ word(&other.0, i)));
        diff.ct_eq(&0)
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

impl Serialize for SecretHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for SecretHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_hex(&text).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// How secrets are turned into [`SecretHash`]es: plain SHA-256, or HMAC-SHA-256 keyed with a
/// server-side pepper.
///
/// With a pepper, a copy of the database alone cannot be used to check guesses: the pepper lives
/// in the service's configuration, not beside the hashes. Configure it once, on the
/// [`Verifier`](crate::Verifier); the [`Issuer`](crate::Issuer) it hands out uses the same one.
/// Changing the pepper invalidates every stored hash.
///
/// ```
/// use apitoken::SecretHasher;
///
/// let plain = SecretHasher::sha256();
/// let peppered = SecretHasher::hmac_sha256(&[7u8; 32])?;
/// assert_ne!(plain.hash(b"secret"), peppered.hash(b"secret"));
/// assert!(SecretHasher::hmac_sha256(b"too short").is_err());
/// # Ok::<(), apitoken::PepperTooShort>(())
/// ```
#[derive(Clone, Default)]
pub struct SecretHasher(Algorithm);

#[derive(Clone, Default)]
enum Algorithm {
    #[default]
    Sha256,
    // The keyed state is computed once; each hash clones it instead of re-deriving the pads.
    // `hmac`'s `zeroize` feature wipes every copy on drop.
    HmacSha256(Arc<Hmac<Sha256>>),
}

/// The pepper given to [`SecretHasher::hmac_sha256`] is shorter than 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the pepper must be at least {MIN_PEPPER_LEN} bytes")]
#[non_exhaustive]
pub struct PepperTooShort;

/// The shortest pepper [`SecretHasher::hmac_sha256`] accepts: 256 bits, HMAC-SHA-256's full
/// strength.
pub const MIN_PEPPER_LEN: usize = 32;

impl SecretHasher {
    /// Plain SHA-256: what Laravel Sanctum stores, and the default.
    pub fn sha256() -> Self {
        Self(Algorithm::Sha256)
    }

    /// HMAC-SHA-256 keyed with `pepper`, which must be at least [`MIN_PEPPER_LEN`] bytes from a
    /// CSPRNG, kept out of the database.
    pub fn hmac_sha256(pepper: &[u8]) -> Result<Self, PepperTooShort> {
        if pepper.len() < MIN_PEPPER_LEN {
            return Err(PepperTooShort);
        }
        let mac = Hmac::<Sha256>::new_from_slice(pepper).map_err(|_| PepperTooShort)?;
        Ok(Self(Algorithm::HmacSha256(Arc::new(mac))))
    }

    /// Whether this hasher uses a pepper.
    pub fn is_peppered(&self) -> bool {
        matches!(self.0, Algorithm::HmacSha256(_))
    }

    /// Hashes a secret.
    pub fn hash(&self, secret: &[u8]) -> SecretHash {
        let bytes: [u8; 32] = match &self.0 {
            Algorithm::Sha256 => Sha256::digest(secret).into(),
            Algorithm::HmacSha256(keyed) => {
                let mut mac = Hmac::clone(keyed);
                mac.update(secret);
                mac.finalize().into_bytes().into()
            }
        };
        SecretHash(bytes)
    }
}

impl fmt::Debug for SecretHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Algorithm::Sha256 => f.write_str("SecretHasher::Sha256"),
            Algorithm::HmacSha256(_) => f.write_str("SecretHasher::HmacSha256([REDACTED])"),
        }
    }
}

/// The operating system's random number generator failed. Nothing was issued.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
#[non_exhaustive]
pub struct RandomnessUnavailable(#[source] rand::rngs::SysError);

/// `len` characters drawn uniformly from [`BASE62`] with the operating system's CSPRNG.
pub(crate) fn random_base62(len: usize) -> Result<Zeroizing<String>, RandomnessUnavailable> {
    let mut out = Zeroizing::new(String::with_capacity(len));
    let mut pool = Zeroizing::new([0u8; 64]);
    while out.len() < len {
        SysRng
            .try_fill_bytes(&mut pool[..])
            .map_err(RandomnessUnavailable)?;
        // 248 = 4 × 62: rejecting bytes at or above it keeps every character equally likely.
        for &byte in pool.iter().filter(|b| **b < 248) {
            out.push(char::from(BASE62[usize::from(byte % 62)]));
            if out.len() == len {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_a_known_vector() {
        // sha256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            SecretHasher::sha256().hash(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_6() {
        // RFC 4231 test case 6 (131-byte key of 0xaa).
        let hasher = SecretHasher::hmac_sha256(&[0xaa; 131]).unwrap();
        assert_eq!(
            hasher
                .hash(b"Test Using Larger Than Block-Size Key - Hash Key First")
                .to_hex(),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn nothing_secret_reaches_debug() {
        let secret = Secret::new("hunter2hunter2".into());
        assert!(!format!("{secret:?}").contains("hunter2"));
        let hasher = SecretHasher::hmac_sha256(b"pepperpepperpepperpepperpepperpe").unwrap();
        assert!(!format!("{hasher:?}").contains("pepper"));
        let hash = SecretHasher::sha256().hash(b"x");
        assert!(!format!("{hash:?}").contains(&hash.to_hex()[..8]));
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        let hash = SecretHasher::sha256().hash(b"x");
        assert_eq!(
            SecretHash::from_hex(&hash.to_hex().to_uppercase()),
            Some(hash)
        );
        assert_eq!(SecretHash::from_hex("00"), None);
        assert_eq!(SecretHash::from_hex(&"g".repeat(64)), None);
        assert_eq!(SecretHash::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn random_base62_has_the_length_and_alphabet_asked_for() {
        let a = random_base62(43).unwrap();
        let b = random_base62(43).unwrap();
        assert_eq!(a.len(), 43);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(*a, *b);
        assert_eq!(random_base62(200).unwrap().len(), 200);
    }

    #[test]
    fn random_base62_uses_the_whole_alphabet_evenly() {
        let text = random_base62(62 * 400).unwrap();
        let mut counts = [0u32; 62];
        for c in text.bytes() {
            counts[BASE62.iter().position(|a| *a == c).unwrap()] += 1;
        }
        // Expected 400 each; a biased generator (e.g. `byte % 62` without rejection) puts
        // ~25% more weight on the first 8 symbols.
        let first8: u32 = counts[..8].iter().sum();
        let last8: u32 = counts[54..].iter().sum();
        assert!(counts.iter().all(|&c| c > 250), "{counts:?}");
        assert!(first8 < last8 + 500, "{first8} vs {last8}");
    }

    #[test]
    fn secrets_are_equal_only_with_the_same_text() {
        let token = "1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD4pflejgqjd0pfKtywlSWR9G0fIaWajuKcBT3";
        assert_eq!(Secret::new(token.into()), Secret::new(token.into()));
        let last_changed = format!("{}4", &token[..token.len() - 1]);
        assert_ne!(Secret::new(token.into()), Secret::new(last_changed));
        assert_ne!(Secret::new(token.into()), Secret::new(token[1..].into()));
        assert_ne!(Secret::new(token.into()), Secret::new(String::new()));
    }

    #[test]
    fn hashes_differing_in_any_one_bit_are_unequal() {
        // Every bit of all 32 bytes takes part in the comparison, from either side.
        for base in [
            [0u8; 32],
            [0xff; 32],
            *SecretHasher::sha256().hash(b"x").as_bytes(),
        ] {
            let hash = SecretHash::from_bytes(base);
            assert_eq!(hash, SecretHash::from_bytes(base));
            for byte in 0..32 {
                for bit in 0..8 {
                    let mut other = base;
                    other[byte] ^= 1 << bit;
                    let other = SecretHash::from_bytes(other);
                    assert_ne!(hash, other, "byte {byte}, bit {bit}");
                    assert_ne!(other, hash, "byte {byte}, bit {bit}");
                    assert!(!bool::from(hash.ct_eq(&other)), "byte {byte}, bit {bit}");
                }
            }
        }
    }

    #[test]
    fn differences_in_several_places_do_not_cancel_out() {
        // The same difference in two (or four) of the 8-byte words is still a difference.
        let zero = SecretHash::from_bytes([0; 32]);
        for (i, j) in [(0, 8), (8, 16), (16, 24), (0, 24), (3, 11)] {
            let mut bytes = [0u8; 32];
            bytes[i] = 0x5a;
            bytes[j] = 0x5a;
            assert_ne!(zero, SecretHash::from_bytes(bytes), "bytes {i} and {j}");
        }
        let mut four = [0u8; 32];
        for i in [1, 9, 17, 25] {
            four[i] = 0x80;
        }
        assert_ne!(zero, SecretHash::from_bytes(four));
    }

    #[test]
    fn only_a_hmac_hasher_is_peppered() {
        assert!(!SecretHasher::sha256().is_peppered());
        assert!(!SecretHasher::default().is_peppered());
        assert!(
            SecretHasher::hmac_sha256(&[7; MIN_PEPPER_LEN])
                .unwrap()
                .is_peppered()
        );
    }

    #[test]
    fn random_base62_favours_no_symbol() {
        // Expected 2,000 of each (standard deviation about 44). Accepting one byte value too
        // many before reducing mod 62 gives one symbol 5 chances in 249 instead of 4 in 248,
        // about 2,490 of it.
        let text = random_base62(62 * 2000).unwrap();
        let mut counts = [0u32; 62];
        for c in text.bytes() {
            counts[BASE62.iter().position(|a| *a == c).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|&c| (1750..2250).contains(&c)),
            "{counts:?}"
        );
    }
}
