//! [`TokenFormatBuilder`]: a format in the standard layout, checked when it is built.

use std::ops::RangeInclusive;

use super::*;

/// Builds a [`TokenFormat`] in the standard layout `{prefix}{id}{separator}{secret}{checksum}`.
///
/// Starts from the canonical format; see [`TokenFormat::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct TokenFormatBuilder {
    pub(super) prefix: Option<String>,
    pub(super) id: IdKind,
    pub(super) separator: Separator,
    pub(super) checksum: Checksum,
    pub(super) secret_chars: usize,
    pub(super) accepted: Option<RangeInclusive<usize>>,
}

impl TokenFormatBuilder {
    /// A type prefix such as `dbaudit_live_` or `ghp_`: 1 to 32 ASCII letters, digits, `_` or
    /// `-`. It makes leaked tokens findable by secret scanners; end it with `_` so that a
    /// double-click still selects the whole token.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.to_owned());
        self
    }

    /// How the id is carried. Default: `IdKind::Random { len: 12 }`.
    pub fn id(mut self, id: IdKind) -> Self {
        self.id = id;
        self
    }

    /// The character between id and secret. Default: [`Separator::Dot`].
    pub fn separator(mut self, separator: Separator) -> Self {
        self.separator = separator;
        self
    }

    /// Whether tokens end in a checksum. Default: [`Checksum::Crc32Base62`].
    pub fn checksum(mut self, checksum: Checksum) -> Self {
        self.checksum = checksum;
        self
    }

    /// Entropy of generated secrets, at least 128 bits. Default: 256 bits (43 characters).
    pub fn secret_bits(mut self, bits: u32) -> Self {
        self.secret_chars = if bits < MIN_SECRET_BITS {
            0
        } else {
            chars_for_bits(bits)
        };
        self
    }

    /// Length of generated secrets in base62 characters (each carries 5.95 bits); at least 22.
    pub fn secret_chars(mut self, chars: usize) -> Self {
        self.secret_chars = chars;
        self
    }

    /// Secret lengths that parsing accepts, for tokens issued elsewhere or under an older
    /// setting. Must include the generated length. Default: exactly the generated length.
    pub fn accept_secret_lengths(mut self, lengths: RangeInclusive<usize>) -> Self {
        self.accepted = Some(lengths);
        self
    }

    /// Checks the settings and builds the format.
    pub fn build(self) -> Result<TokenFormat, FormatConfigError> {
        let prefix = self.prefix.as_deref().map(validate_prefix).transpose()?;
        if let IdKind::Random { len } = self.id
            && !(8..=MAX_ID_LEN).contains(&len)
        {
            return Err(FormatConfigError::InvalidIdLength);
        }
        if self.secret_chars < chars_for_bits(MIN_SECRET_BITS)
            || self.secret_chars > MAX_SECRET_CHARS
        {
            return Err(FormatConfigError::InvalidSecretSize);
        }
        let accepted = self
            .accepted
            .unwrap_or(self.secret_chars..=self.secret_chars);
        if !accepted.contains(&self.secret_chars)
            || *accepted.start() == 0
            || *accepted.end() > MAX_SECRET_CHARS
        {
            return Err(FormatConfigError::InvalidAcceptedLength);
        }
        if self.id == IdKind::None && prefix.is_none() && self.checksum == Checksum::None {
            return Err(FormatConfigError::AmbiguousIdLess);
        }
        Ok(TokenFormat {
            layout: Layout::Standard {
                id: self.id,
                separator: self.separator,
                checksum: self.checksum,
                secret_chars: self.secret_chars,
                accepted,
            },
            prefix,
        })
    }
}

pub(super) fn validate_prefix(prefix: &str) -> Result<Box<str>, FormatConfigError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(prefix.into())
    } else {
        Err(FormatConfigError::InvalidPrefix)
    }
}

/// Base62 characters needed for `bits` of entropy (log2 62 ≈ 5.954).
pub(super) fn chars_for_bits(bits: u32) -> usize {
    (f64::from(bits) / 62f64.log2()).ceil() as usize
}
