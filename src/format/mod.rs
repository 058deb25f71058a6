//! Token formats: how a token's text is laid out, parsed and generated.
//!
//! One [`TokenFormat`] describes one layout. The presets cover every format in the seed
//! documents; [`TokenFormat::builder`] makes others:
//!
//! | preset | example | id | checksum |
//! |---|---|---|---|
//! | [`canonical`](TokenFormat::canonical) | `q7Xa0LmB2pZe.<43 base62><6 base62>` | 12 random base62 | CRC-32, base62 |
//! | [`dct`](TokenFormat::dct) | `1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD…` (Delphix DCT) | decimal | none |
//! | [`sanctum`](TokenFormat::sanctum) | `1\|7TEwyZaQXMXRVBZV9USjWNRbXAbPv9BrgMJSLDCk345196d2` | decimal, optional | CRC-32, hex |
//!
//! Parsing checks the shape and the checksum and touches no store, so a mistyped or invented
//! token is rejected for the cost of a CRC. Parsing never panics, never allocates, and looks at
//! no more than [`MAX_TOKEN_LEN`] bytes. See `docs/formats.md` for the grammar of each.
//!
//! ```
//! use apitoken::TokenFormat;
//!
//! let dct = TokenFormat::dct();
//! let parsed = dct.parse("1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD4pflejgqjd0pfKtywlSWR9G0fIaWajuKcBT3")?;
//! assert_eq!(parsed.id().map(|id| id.as_str()), Some("1"));
//!
//! let sanctum = TokenFormat::sanctum();
//! let parsed = sanctum.parse("1|7TEwyZaQXMXRVBZV9USjWNRbXAbPv9BrgMJSLDCk345196d2")?;
//! assert_eq!(parsed.id().and_then(|id| id.as_u64()), Some(1));
//! # Ok::<(), apitoken::FormatError>(())
//! ```

mod builder;
mod checksum;
mod scan;

use std::fmt;
use std::ops::RangeInclusive;

use crate::id::{MAX_ID_LEN, TokenId};
use crate::secret::{RandomnessUnavailable, Secret, random_base62};

pub use crate::base62::BASE62;
pub use builder::TokenFormatBuilder;
use builder::{chars_for_bits, validate_prefix};
use scan::{classify, is_base62};

/// The longest token text any format parses. Longer input is rejected before anything else is
/// looked at, so hostile input costs a length check.
pub const MAX_TOKEN_LEN: usize = 512;

/// The longest type prefix a format may have.
pub const MAX_PREFIX_LEN: usize = 32;

/// The fewest bits of entropy a format may generate (RFC 6749 §10.10: a guess must succeed
/// with probability at most 2^-128).
pub const MIN_SECRET_BITS: u32 = 128;

const MAX_SECRET_CHARS: usize = 256;
const SANCTUM_ENTROPY_LEN: usize = 40;

/// How a format carries the id of the token's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdKind {
    /// A decimal `u64` in canonical form: ASCII digits only, no sign, no leading zero (`0`
    /// itself is allowed), at most 20 digits, at most `u64::MAX`. Delphix DCT and Laravel
    /// Sanctum use these; the store allocates them ([`TokenStore::next_id`]).
    ///
    /// [`TokenStore::next_id`]: crate::TokenStore::next_id
    Numeric,
    /// Exactly `len` base62 characters, generated at random when a token is issued, so ids
    /// reveal nothing about how many tokens exist and need no coordination between replicas.
    Random {
        /// Length in characters, 8 to [`MAX_ID_LEN`].
        len: usize,
    },
    /// The text carries no id; the store finds the record by the secret's hash (as Sanctum
    /// does for a token without `|`, and as GitHub-style `ghp_…` tokens work).
    None,
}

/// The character between the id and the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Separator {
    /// `.`, as Delphix DCT uses and this crate's canonical form. Valid RFC 6750 `b64token`.
    Dot,
    /// `|`, as Laravel Sanctum uses. **Not** valid RFC 6750 `b64token` syntax; accepted
    /// because Sanctum's tokens are in wide use. Clients must send it unescaped.
    Pipe,
    /// `_`, so that a double-click selects the whole token.
    Underscore,
}

impl Separator {
    const fn byte(self) -> u8 {
        match self {
            Separator::Dot => b'.',
            Separator::Pipe => b'|',
            Separator::Underscore => b'_',
        }
    }
}

/// Whether a format ends in a checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Checksum {
    /// No checksum.
    None,
    /// Six base62 characters encoding the CRC-32 (IEEE) of all text before them (prefix, id,
    /// separator and secret), in the style of GitHub's tokens.
    Crc32Base62,
}

/// Why token text was rejected by a [`TokenFormat`].
///
/// No variant carries any part of the rejected text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The text is empty.
    #[error("token is empty")]
    Empty,
    /// The text is longer than [`MAX_TOKEN_LEN`].
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// The text has a character no token of this format contains (whitespace, control
    /// characters, non-ASCII, quotes…).
    #[error("token contains a character outside its format")]
    InvalidCharacter,
    /// The text does not start with the format's type prefix.
    #[error("token does not have the expected prefix")]
    WrongPrefix,
    /// The format needs an id and the separator is missing.
    #[error("token has no id separator")]
    MissingSeparator,
    /// The id is not valid for the format.
    #[error("token id is malformed")]
    InvalidId,
    /// The secret has the wrong length or characters.
    #[error("token secret is malformed")]
    InvalidSecret,
    /// The checksum does not match: the token was mistyped, truncated or made up.
    #[error("token checksum does not match")]
    BadChecksum,
}

/// A [`TokenFormatBuilder`] setting is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatConfigError {
    /// The prefix is empty, longer than [`MAX_PREFIX_LEN`], or has characters other than ASCII
    /// letters, digits, `_` and `-`.
    #[error("a prefix is 1 to {MAX_PREFIX_LEN} ASCII letters, digits, '_' or '-'")]
    InvalidPrefix,
    /// A random id length outside 8 to [`MAX_ID_LEN`].
    #[error("a random id is 8 to {MAX_ID_LEN} characters")]
    InvalidIdLength,
    /// Fewer than [`MIN_SECRET_BITS`] bits of entropy, or more than 256 characters.
    #[error("a secret has at least {MIN_SECRET_BITS} bits and at most 256 characters")]
    InvalidSecretSize,
    /// The accepted secret lengths do not include the generated length, or exceed 256.
    #[error("the accepted secret lengths must include the generated length")]
    InvalidAcceptedLength,
    /// An id-less format without a prefix or a checksum cannot tell its tokens from any
    /// other text.
    #[error("an id-less format needs a prefix or a checksum")]
    AmbiguousIdLess,
}

/// A token format: the layout used to generate tokens and to parse presented ones.
///
/// Cheap to clone. See the [module documentation](self) for the presets.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenFormat {
    layout: Layout,
    prefix: Option<Box<str>>,
}

#[derive(Clone, PartialEq, Eq)]
enum Layout {
    /// `{prefix}{id}{sep}{secret}{checksum}`; the secret alone is hashed.
    Standard {
        id: IdKind,
        separator: Separator,
        checksum: Checksum,
        secret_chars: usize,
        accepted: RangeInclusive<usize>,
    },
    /// Laravel Sanctum: `[{id}|]{prefix}{40 alnum}[{crc32b hex}]`; everything after `|` is
    /// hashed, as Sanctum stores it.
    Sanctum,
}

impl TokenFormat {
    /// This crate's canonical format: a 12-character random id, `.`, a 256-bit secret (43
    /// base62 characters) and a 6-character checksum, 62 characters in all.
    ///
    /// ```
    /// use apitoken::TokenFormat;
    /// let token = TokenFormat::canonical().generate(Some(&"q7Xa0LmB2pZe".parse()?))?;
    /// assert_eq!(token.expose_secret().len(), 12 + 1 + 43 + 6);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn canonical() -> Self {
        Self::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("the default builder is valid"))
    }

    /// Delphix DCT's format: `{decimal id}.{secret}`, no prefix, no checksum.
    ///
    /// Generates 64-character secrets (381 bits), as DCT does; accepts secrets of 16 to 256
    /// base62 characters.
    pub fn dct() -> Self {
        Self::builder()
            .id(IdKind::Numeric)
            .checksum(Checksum::None)
            .secret_chars(64)
            .accept_secret_lengths(16..=MAX_SECRET_CHARS)
            .build()
            .unwrap_or_else(|_| unreachable!("the DCT preset is valid"))
    }

    /// Laravel Sanctum's format, exactly as Sanctum 3 and 4 issue it:
    /// `{id}|{40 letters and digits}{crc32b of those 40, 8 lowercase hex}`.
    ///
    /// Parsing also accepts what Sanctum accepts: a token without `id|` (found by its hash) and
    /// Sanctum 2's tokens without the checksum. A present checksum is verified (Sanctum itself
    /// never checks it). The id must be canonical decimal: Sanctum's `find("01")` would find
    /// record 1, this parser refuses it. The hashed part is everything after the `|`.
    pub fn sanctum() -> Self {
        Self {
            layout: Layout::Sanctum,
            prefix: None,
        }
    }

    /// Sanctum's format with its `token_prefix` setting (`config('sanctum.token_prefix')`),
    /// which Sanctum puts after the `|`: `{id}|{prefix}{40}{crc32b}`.
    ///
    /// Tokens issued before the prefix was configured still parse.
    pub fn sanctum_with_prefix(prefix: &str) -> Result<Self, FormatConfigError> {
        Ok(Self {
            layout: Layout::Sanctum,
            prefix: Some(validate_prefix(prefix)?),
        })
    }

    /// A builder that starts from [`canonical`](Self::canonical).
    ///
    /// ```
    /// use apitoken::{Checksum, IdKind, TokenFormat};
    ///
    /// // DB Audit's style: `dbaudit_live_<id>_<secret><checksum>`, selectable by double-click.
    /// let format = TokenFormat::builder()
    ///     .prefix("dbaudit_live_")
    ///     .separator(apitoken::Separator::Underscore)
    ///     .build()?;
    /// let token = format.generate(Some(&"AbCdEfGh1234".parse()?))?;
    /// assert!(token.expose_secret().starts_with("dbaudit_live_AbCdEfGh1234_"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder() -> TokenFormatBuilder {
        TokenFormatBuilder {
            prefix: None,
            id: IdKind::Random { len: 12 },
            separator: Separator::Dot,
            checksum: Checksum::Crc32Base62,
            secret_chars: chars_for_bits(256),
            accepted: None,
        }
    }

    /// The type prefix, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// How this format carries ids. Sanctum's format reports [`IdKind::Numeric`].
    pub fn id_kind(&self) -> IdKind {
        match &self.layout {
            Layout::Standard { id, .. } => *id,
            Layout::Sanctum => IdKind::Numeric,
        }
    }

    /// Whether every token of this format is valid RFC 6750 `b64token` syntax (false only for
    /// `|`-separated formats).
    pub fn is_b64token(&self) -> bool {
        match &self.layout {
            Layout::Standard { separator, .. } => *separator != Separator::Pipe,
            Layout::Sanctum => false,
        }
    }

    /// Parses token text. Checks length, characters, prefix, id and checksum; does no I/O.
    pub fn parse<'a>(&self, text: &'a str) -> Result<ParsedToken<'a>, FormatError> {
        let raw = text.as_bytes();
        if raw.is_empty() {
            return Err(FormatError::Empty);
        }
        if raw.len() > MAX_TOKEN_LEN {
            return Err(FormatError::TooLong);
        }
        // One pass rejects whitespace, controls, quotes and every non-ASCII byte, so later
        // steps may slice by byte without meeting a char boundary. It also counts the bytes
        // outside base62, which spares a valid token a second pass over its secret.
        let (invalid, outside_base62) = classify(raw);
        if invalid {
            return Err(FormatError::InvalidCharacter);
        }
        match &self.layout {
            Layout::Standard {
                id,
                separator,
                checksum,
                accepted,
                ..
            } => self.parse_standard(text, outside_base62, *id, *separator, *checksum, accepted),
            Layout::Sanctum => self.parse_sanctum(text),
        }
    }

    fn parse_standard<'a>(
        &self,
        text: &'a str,
        outside_base62: usize,
        id_kind: IdKind,
        separator: Separator,
        checksum: Checksum,
        accepted: &RangeInclusive<usize>,
    ) -> Result<ParsedToken<'a>, FormatError> {
        let rest = match self.prefix.as_deref() {
            Some(prefix) => text.strip_prefix(prefix).ok_or(FormatError::WrongPrefix)?,
            None => text,
        };
        // When every byte outside base62 is in the prefix or is the separator (which is not
        // base62), the id and the secret are base62 without looking at them again.
        let expected_outside = self
            .prefix
            .as_deref()
            .map_or(0, |p| classify(p.as_bytes()).1)
            + usize::from(id_kind != IdKind::None);
        let clean = outside_base62 == expected_outside;
        let (id, body) = match id_kind {
            IdKind::None => (None, rest),
            IdKind::Numeric | IdKind::Random { .. } => {
                let at = rest
                    .bytes()
                    .position(|b| b == separator.byte())
                    .ok_or(FormatError::MissingSeparator)?;
                let id = parse_id(&rest[..at], id_kind, clean)?;
                (Some(id), &rest[at + 1..])
            }
        };
        let secret = match checksum {
            Checksum::None => body,
            Checksum::Crc32Base62 => {
                let split = body
                    .len()
                    .checked_sub(checksum::BASE62_LEN)
                    .ok_or(FormatError::InvalidSecret)?;
                let (secret, sum) = body.split_at(split);
                let covered = &text[..text.len() - checksum::BASE62_LEN];
                if checksum::crc32_base62(covered.as_bytes()) != sum.as_bytes() {
                    return Err(FormatError::BadChecksum);
                }
                secret
            }
        };
        let base62 = clean || is_base62(secret);
        if !accepted.contains(&secret.len()) || !base62 {
            return Err(FormatError::InvalidSecret);
        }
        Ok(ParsedToken { id, secret })
    }

    fn parse_sanctum<'a>(&self, text: &'a str) -> Result<ParsedToken<'a>, FormatError> {
        let (id, hashed) = match text.bytes().position(|b| b == b'|') {
            Some(at) => (
                Some(parse_id(&text[..at], IdKind::Numeric, false)?),
                &text[at + 1..],
            ),
            None => (None, text),
        };
        // A body with the configured prefix is read as prefixed; tokens issued before the
        // prefix was configured have none, so the whole body is tried as well.
        let prefixed = self
            .prefix
            .as_deref()
            .and_then(|prefix| hashed.strip_prefix(prefix))
            .map(sanctum_body_ok);
        match prefixed {
            Some(Ok(())) => {}
            Some(Err(prefixed_err)) => sanctum_body_ok(hashed).map_err(|_| prefixed_err)?,
            None => sanctum_body_ok(hashed)?,
        }
        Ok(ParsedToken { id, secret: hashed })
    }

    /// Renders a token from an id and secret text, checking both against the format.
    ///
    /// For Sanctum's format, `secret` is the 40 random characters; the prefix and checksum are
    /// added. Most callers want [`generate`](Self::generate), which makes the secret too.
    ///
    /// ```
    /// use apitoken::TokenFormat;
    ///
    /// let id = "1".parse()?;
    /// let token = TokenFormat::sanctum().render(Some(&id), "7TEwyZaQXMXRVBZV9USjWNRbXAbPv9BrgMJSLDCk")?;
    /// assert_eq!(token.expose_secret(), "1|7TEwyZaQXMXRVBZV9USjWNRbXAbPv9BrgMJSLDCk345196d2");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn render(&self, id: Option<&TokenId>, secret: &str) -> Result<Secret, FormatError> {
        let prefix = self.prefix.as_deref().unwrap_or("");
        let mut out = String::with_capacity(MAX_TOKEN_LEN);
        match &self.layout {
            Layout::Standard {
                id: id_kind,
                separator,
                checksum,
                accepted,
                ..
            } => {
                if !accepted.contains(&secret.len()) || !is_base62(secret) {
                    return Err(FormatError::InvalidSecret);
                }
                out.push_str(prefix);
                match (id_kind, id) {
                    (IdKind::None, _) => {}
                    (kind, Some(id)) => {
                        parse_id(id.as_str(), *kind, false)?;
                        out.push_str(id.as_str());
                        out.push(char::from(separator.byte()));
                    }
                    (_, None) => return Err(FormatError::InvalidId),
                }
                out.push_str(secret);
                if *checksum == Checksum::Crc32Base62 {
                    let sum = checksum::crc32_base62(out.as_bytes());
                    out.extend(sum.iter().map(|b| char::from(*b)));
                }
            }
            Layout::Sanctum => {
                if secret.len() != SANCTUM_ENTROPY_LEN || !is_base62(secret) {
                    return Err(FormatError::InvalidSecret);
                }
                if let Some(id) = id {
                    parse_id(id.as_str(), IdKind::Numeric, false)?;
                    out.push_str(id.as_str());
                    out.push('|');
                }
                out.push_str(prefix);
                out.push_str(secret);
                let sum = checksum::crc32_hex(secret.as_bytes());
                out.extend(sum.iter().map(|b| char::from(*b)));
            }
        }
        if out.len() > MAX_TOKEN_LEN {
            return Err(FormatError::TooLong);
        }
        Ok(Secret::new(out))
    }

    /// Generates a new token for the record `id` with a fresh secret from the operating
    /// system's CSPRNG. Pass `None` only for an id-less format (or a bare Sanctum token).
    ///
    /// The result is the whole token text, to be shown to its owner once. Parse it with
    /// [`parse`](Self::parse) to get the part to hash.
    pub fn generate(&self, id: Option<&TokenId>) -> Result<Secret, GenerateError> {
        let len = match &self.layout {
            Layout::Standard { secret_chars, .. } => *secret_chars,
            Layout::Sanctum => SANCTUM_ENTROPY_LEN,
        };
        let secret = random_base62(len)?;
        Ok(self.render(id, &secret)?)
    }

    /// A random id for this format's [`IdKind::Random`], or a 16-character one for a format
    /// whose text carries no id (the record still needs a key). `None` for numeric ids,
    /// which the store allocates.
    pub(crate) fn random_id(&self) -> Result<Option<TokenId>, RandomnessUnavailable> {
        let len = match self.id_kind() {
            IdKind::Random { len } => len,
            IdKind::None => 16,
            IdKind::Numeric => return Ok(None),
        };
        let text = random_base62(len)?;
        Ok(TokenId::new(&text).ok())
    }
}

impl Default for TokenFormat {
    fn default() -> Self {
        Self::canonical()
    }
}

impl fmt::Debug for TokenFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("TokenFormat");
        out.field("prefix", &self.prefix);
        match &self.layout {
            Layout::Standard {
                id,
                separator,
                checksum,
                secret_chars,
                accepted,
            } => out
                .field("id", id)
                .field("separator", separator)
                .field("checksum", checksum)
                .field("secret_chars", secret_chars)
                .field("accepted_secret_lengths", accepted),
            Layout::Sanctum => out.field("layout", &"sanctum"),
        };
        out.finish()
    }
}

/// Token generation failed. Nothing was issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// The operating system's random number generator failed.
    #[error(transparent)]
    Randomness(#[from] RandomnessUnavailable),
    /// The id does not fit the format.
    #[error("the id does not fit the token format")]
    Format(#[from] FormatError),
}

/// A token split into its parts. Borrows the text it was parsed from.
///
/// `Debug` shows the id and hides the secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedToken<'a> {
    id: Option<TokenId>,
    secret: &'a str,
}

impl<'a> ParsedToken<'a> {
    /// The record id, or `None` for a format that carries none (look the record up by hash).
    pub fn id(&self) -> Option<&TokenId> {
        self.id.as_ref()
    }

    /// The part of the text that is hashed and compared with the stored hash: the random
    /// secret, or for Sanctum everything after the `|`.
    pub fn secret(&self) -> &'a str {
        self.secret
    }
}

impl fmt::Debug for ParsedToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedToken")
            .field("id", &self.id)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

/// `text` as an id of `kind`; `base62` when the caller already knows every byte of it is.
fn parse_id(text: &str, kind: IdKind, base62: bool) -> Result<TokenId, FormatError> {
    let raw = text.as_bytes();
    let ok = match kind {
        // Canonical decimal of a u64: no sign, no leading zero, nothing above u64::MAX (such
        // as 2^64, also 20 digits).
        IdKind::Numeric => {
            !raw.is_empty()
                && raw.len() <= 20
                && (raw.len() == 1 || raw[0] != b'0')
                && raw
                    .iter()
                    .try_fold(0u64, |n, b| {
                        let digit = b.wrapping_sub(b'0');
                        (digit <= 9)
                            .then_some(n)?
                            .checked_mul(10)?
                            .checked_add(u64::from(digit))
                    })
                    .is_some()
        }
        IdKind::Random { len } => {
            raw.len() == len && len <= MAX_ID_LEN && (base62 || is_base62(text))
        }
        IdKind::None => false,
    };
    if !ok {
        return Err(FormatError::InvalidId);
    }
    Ok(TokenId::from_checked(raw))
}

fn sanctum_body_ok(body: &str) -> Result<(), FormatError> {
    if body.len() == SANCTUM_ENTROPY_LEN {
        return if is_base62(body) {
            Ok(())
        } else {
            Err(FormatError::InvalidSecret)
        };
    }
    if body.len() != SANCTUM_ENTROPY_LEN + checksum::HEX_LEN {
        return Err(FormatError::InvalidSecret);
    }
    let (entropy, sum) = body.split_at(SANCTUM_ENTROPY_LEN);
    if !is_base62(entropy) {
        return Err(FormatError::InvalidSecret);
    }
    if checksum::crc32_hex(entropy.as_bytes()) != sum.as_bytes() {
        return Err(FormatError::BadChecksum);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
