//! Token ids: the public half of a token that names its record.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest id a [`TokenId`] holds: enough for a `u64` in decimal (20 digits) and for a
/// hyphenated UUID (36 characters).
pub const MAX_ID_LEN: usize = 40;

/// The id of a token record, as it appears in the token text (`1` in `1.0p9PMk…`).
///
/// An id is public: it may be logged, shown in a dashboard and used in URLs. It is 1 to
/// [`MAX_ID_LEN`] ASCII letters, digits, `-` or `_`. Formats restrict it further (the
/// [`Numeric`](crate::IdKind::Numeric) kind accepts only canonical decimal numbers).
///
/// The id is stored inline, so it is `Copy` and parsing one never allocates.
///
/// ```
/// use apitoken::TokenId;
///
/// let id: TokenId = "42".parse()?;
/// assert_eq!(id.as_str(), "42");
/// assert_eq!(id.as_u64(), Some(42));
/// assert!(TokenId::new("not an id").is_err());
/// # Ok::<(), apitoken::InvalidTokenId>(())
/// ```
// Aligned: it travels inside every verification's results and errors, and an unaligned
// 41-byte value is moved with overlapping unaligned loads that stall on the stores just
// before them (measured: a tenth of a verification's time, `docs/performance.md`).
#[derive(Clone, Copy)]
#[repr(align(8))]
pub struct TokenId {
    len: u8,
    bytes: [u8; MAX_ID_LEN],
}

/// The error returned when text is not a valid [`TokenId`].
///
/// It never repeats the rejected text, which may have been a secret pasted in the wrong field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid token id: expected 1 to {MAX_ID_LEN} ASCII letters, digits, '-' or '_'")]
#[non_exhaustive]
pub struct InvalidTokenId;

impl TokenId {
    /// Validates `text` as an id.
    pub fn new(text: &str) -> Result<Self, InvalidTokenId> {
        let raw = text.as_bytes();
        if raw.is_empty()
            || raw.len() > MAX_ID_LEN
            || !raw
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return Err(InvalidTokenId);
        }
        let mut bytes = [0u8; MAX_ID_LEN];
        bytes[..raw.len()].copy_from_slice(raw);
        Ok(Self {
            len: raw.len() as u8,
            bytes,
        })
    }

    /// An id from bytes the caller has already checked (1 to [`MAX_ID_LEN`] base62
    /// characters): the token parser, which validates while it scans.
    pub(crate) fn from_checked(raw: &[u8]) -> Self {
        debug_assert!(Self::new(std::str::from_utf8(raw).unwrap_or("!")).is_ok());
        let mut bytes = [0u8; MAX_ID_LEN];
        bytes[..raw.len()].copy_from_slice(raw);
        Self {
            len: raw.len() as u8,
            bytes,
        }
    }

    /// The id of a numeric record key, such as an SQL `bigint` primary key.
    ///
    /// ```
    /// assert_eq!(apitoken::TokenId::from_u64(7).as_str(), "7");
    /// ```
    pub fn from_u64(n: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = n;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let mut bytes = [0u8; MAX_ID_LEN];
        let len = digits.len() - at;
        bytes[..len].copy_from_slice(&digits[at..]);
        Self {
            len: len as u8,
            bytes,
        }
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever written into `bytes[..len]`.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }

    /// The id as a number, when it is the canonical decimal form of a `u64` (no sign, no leading
    /// zero). `"01"` and `"+1"` are ids of other kinds and return `None`.
    pub fn as_u64(&self) -> Option<u64> {
        let s = self.as_bytes();
        if s.len() > 1 && s[0] == b'0' {
            return None;
        }
        s.iter().try_fold(0u64, |acc, b| {
            let d = b.checked_sub(b'0').filter(|d| *d < 10)?;
            acc.checked_mul(10)?.checked_add(u64::from(d))
        })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl PartialEq for TokenId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for TokenId {}

impl Hash for TokenId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialOrd for TokenId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TokenId {
    /// Numeric ids order by value (`2` before `10`); other ids, and numeric against other, by
    /// their bytes.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self.as_u64(), other.as_u64()) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => self.as_bytes().cmp(other.as_bytes()),
        }
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TokenId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TokenId {
    type Err = InvalidTokenId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl From<u64> for TokenId {
    fn from(n: u64) -> Self {
        Self::from_u64(n)
    }
}

impl Serialize for TokenId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_id_alphabet_and_bounds_its_length() {
        assert!(TokenId::new("a").is_ok());
        assert!(TokenId::new("550e8400-e29b-41d4-a716-446655440000").is_ok());
        assert!(TokenId::new(&"x".repeat(MAX_ID_LEN)).is_ok());
        assert!(TokenId::new(&"x".repeat(MAX_ID_LEN + 1)).is_err());
        for bad in ["", " 1", "1 ", "a.b", "a|b", "１", "é", "a\0"] {
            assert!(TokenId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn numeric_value_is_canonical_decimal_only() {
        assert_eq!(TokenId::new("0").unwrap().as_u64(), Some(0));
        assert_eq!(
            TokenId::new("18446744073709551615").unwrap().as_u64(),
            Some(u64::MAX)
        );
        assert_eq!(TokenId::new("18446744073709551616").unwrap().as_u64(), None);
        assert_eq!(TokenId::new("01").unwrap().as_u64(), None);
        assert_eq!(TokenId::new("1a").unwrap().as_u64(), None);
        assert_eq!(TokenId::from_u64(0).as_str(), "0");
        assert_eq!(TokenId::from_u64(u64::MAX).as_str(), "18446744073709551615");
    }

    #[test]
    fn equality_ignores_unused_capacity_and_numeric_ids_sort_by_value() {
        assert_eq!(TokenId::new("12").unwrap(), TokenId::from_u64(12));
        assert!(TokenId::from_u64(2) < TokenId::from_u64(10));
    }

    #[test]
    fn serde_round_trip_validates() {
        let id = TokenId::new("abc-1").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"abc-1\"");
        assert_eq!(serde_json::from_str::<TokenId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<TokenId>("\"a b\"").is_err());
    }
}
