//! Token names: what a name may hold, and how to show one that holds more.
//!
//! A name is shown in token lists, to people deciding which token to revoke. Characters that
//! change how the text around them is drawn, or that are not drawn at all, would let a name
//! show something other than what it holds: `"deploy\u{202e}gnp.exe"` shows as
//! `deployexe.png`. So [`check_name`] refuses them, and [`EscapedName`] and [`escape_json`]
//! show them as escapes where a name stored before the rule (or written to a store by other
//! means) is printed.
//!
//! The refused characters ([`is_refused_in_name`]) are those of the Unicode general
//! categories
//!
//! - `Cc`, control characters (as before): newlines, tabs, terminal escapes;
//! - `Cf`, format characters: the bidirectional controls (U+061C, U+200E, U+200F,
//!   U+202A–U+202E, U+2066–U+2069), the zero-width space, joiner and non-joiner
//!   (U+200B–U+200D), the soft hyphen (U+00AD), the word joiner and invisible operators
//!   (U+2060–U+2064), U+FEFF, the interlinear annotation characters (U+FFF9–U+FFFB) and the
//!   tag characters (U+E0001, U+E0020–U+E007F), among others;
//! - `Zl` and `Zp`, the line and paragraph separators U+2028 and U+2029.
//!
//! The zero-width joiner (U+200D) is refused too, although emoji sequences (woman, U+200D, laptop
//! for a technologist) are made with it: between letters it is invisible (`ad\u{200d}min` shows as `admin`), and
//! telling an emoji sequence from a hidden joiner would take emoji-sequence rules this check
//! does not carry. So are the zero-width non-joiner (U+200C), which some Persian and Indic
//! spellings use, and the Arabic letter mark. Emoji without a joiner, variation selectors
//! (U+FE0F is a mark, `Mn`), regional-indicator flags and letters of every script,
//! right-to-left ones included, are accepted.
//!
//! ```
//! use apitoken::name::{EscapedName, check_name};
//!
//! assert!(check_name("Déploiement 部署 🚀").is_ok());
//! let err = check_name("deploy\u{202e}gnp.exe").unwrap_err();
//! assert_eq!(err.to_string(), "a token name may not contain U+202E (control, format, line or paragraph separator characters)");
//! assert_eq!(EscapedName::new("deploy\u{202e}gnp.exe").to_string(), r"deploy\u{202e}gnp.exe");
//! ```

use std::borrow::Cow;
use std::fmt::{self, Write as _};

// The general category comes from `unicode-properties` (unicode-rs, no dependencies, a table
// searched by bisection), already in the tree through sqlx's `stringprep`: Cf alone has about
// 170 characters in 21 ranges that grow with each Unicode version, too many to copy by hand.
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// The longest token name accepted, in characters.
pub const MAX_NAME_LEN: usize = 255;

/// Why a text is not a valid token name. Shows at most the offending character's code point,
/// never the name.
///
/// ```
/// use apitoken::name::{InvalidName, check_name};
///
/// assert_eq!(check_name(""), Err(InvalidName::Length));
/// assert_eq!(check_name("a\u{2028}b"), Err(InvalidName::Character('\u{2028}')));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidName {
    /// Empty, or longer than [`MAX_NAME_LEN`] characters.
    #[error("a token name is 1 to {MAX_NAME_LEN} characters")]
    Length,
    /// Holds a character [`is_refused_in_name`]; the first one.
    #[error(
        "a token name may not contain U+{:04X} (control, format, line or paragraph separator characters)",
        u32::from(*.0)
    )]
    Character(char),
}

/// Checks `name` as a token name: 1 to [`MAX_NAME_LEN`] characters, none of them
/// [refused](is_refused_in_name). The issuer runs this on every new token.
///
/// ```
/// use apitoken::name::check_name;
///
/// assert!(check_name("CI/CD Pipeline").is_ok());
/// assert!(check_name("in\u{200b}visible").is_err());
/// ```
pub fn check_name(name: &str) -> Result<(), InvalidName> {
    if let Some(c) = name.chars().find(|&c| is_refused_in_name(c)) {
        return Err(InvalidName::Character(c));
    }
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(InvalidName::Length);
    }
    Ok(())
}

/// Whether `c` is refused in token names: a control (`Cc`), format (`Cf`), line separator
/// (`Zl`) or paragraph separator (`Zp`) character. See the [module](self) for why.
///
/// ```
/// use apitoken::name::is_refused_in_name;
///
/// assert!(is_refused_in_name('\u{202e}'));
/// assert!(!is_refused_in_name('é'));
/// ```
pub fn is_refused_in_name(c: char) -> bool {
    // ASCII first: nearly every name is ASCII, and only its controls are refused there.
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// A name to print: each [refused](is_refused_in_name) character shown as a Rust-style escape
/// (`\u{202e}`), everything else as it is. For names in tables and logs, including names a
/// store holds from before the rule or from other writers.
///
/// A backslash is shown as it is, so a name that holds the text `\u{202e}` looks like one
/// that holds the character; it cannot hide or reorder anything, which is what this prevents.
///
/// ```
/// use apitoken::name::EscapedName;
///
/// assert_eq!(EscapedName::new("two\u{2028}lines").to_string(), r"two\u{2028}lines");
/// assert_eq!(EscapedName::new("部署").to_string(), "部署");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct EscapedName<'a>(&'a str);

impl<'a> EscapedName<'a> {
    /// `name`, to be shown escaped.
    pub fn new(name: &'a str) -> Self {
        Self(name)
    }
}

impl fmt::Display for EscapedName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if is_refused_in_name(c) {
                write!(f, "\\u{{{:x}}}", u32::from(c))?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Serialized JSON with each [refused](is_refused_in_name) character written as a `\uXXXX`
/// escape, except the whitespace between JSON's tokens (tab, newline, carriage return): the
/// same JSON value, safe to print to a terminal or a log. JSON requires escapes only for
/// U+0000–U+001F in strings, which serializers write; DEL, the C1 controls (U+0080–U+009F)
/// and the format and separator characters they pass through raw.
///
/// Outside its strings JSON has nothing but ASCII printable characters and that whitespace, so
/// every other refused character is inside a string, where an escape stands for it exactly.
///
/// ```
/// use apitoken::name::escape_json;
///
/// let json = serde_json::to_string(&serde_json::json!({ "name": "deploy\u{202e}gnp.exe" }))?;
/// let escaped = escape_json(&json);
/// assert_eq!(escaped, r#"{"name":"deploy\u202egnp.exe"}"#);
/// let back: serde_json::Value = serde_json::from_str(&escaped)?;
/// assert_eq!(back["name"], "deploy\u{202e}gnp.exe");
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn escape_json(json: &str) -> Cow<'_, str> {
    let escaped = |c: char| is_refused_in_name(c) && !matches!(c, '\t' | '\n' | '\r');
    if !json.chars().any(escaped) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if escaped(c) {
            // Characters past U+FFFF (the tag characters) as a UTF-16 surrogate pair.
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refused_set_is_cc_cf_zl_zp() {
        for c in [
            '\0',
            '\n',
            '\u{7f}',
            '\u{85}',
            '\u{ad}',
            '\u{61c}',
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{200e}',
            '\u{200f}',
            '\u{2028}',
            '\u{2029}',
            '\u{202a}',
            '\u{202e}',
            '\u{2060}',
            '\u{2064}',
            '\u{2066}',
            '\u{2069}',
            '\u{206f}',
            '\u{feff}',
            '\u{fff9}',
            '\u{fffb}',
            '\u{e0001}',
            '\u{e0020}',
            '\u{e007f}',
        ] {
            assert!(is_refused_in_name(c), "{c:?}");
        }
        for c in [
            ' ', 'a', '~', 'é', '部', 'ن', '\u{a0}', '\u{301}', '\u{fe0f}', '🚀', '🇫', '\u{3000}',
        ] {
            assert!(!is_refused_in_name(c), "{c:?}");
        }
    }

    #[test]
    fn errors_name_the_code_point_not_the_name() {
        let err = check_name("deploy\u{202e}gnp.exe").unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("U+202E"), "{shown}");
        assert!(
            !shown.contains('\u{202e}') && !shown.contains("gnp"),
            "{shown}"
        );
        assert_eq!(
            check_name("\u{e0061}").unwrap_err().to_string(),
            "a token name may not contain U+E0061 (control, format, line or paragraph separator characters)"
        );
        assert_eq!(check_name(&"x".repeat(256)), Err(InvalidName::Length));
        assert!(check_name(&"é".repeat(255)).is_ok());
    }

    #[test]
    fn json_escapes_round_trip_past_the_basic_plane() {
        let name = "tag\u{e0061}\u{2029}\\\u{202e}\u{9b}\n\u{1b}\u{7f}";
        let json = serde_json::to_string_pretty(&[name]).unwrap();
        let escaped = escape_json(&json);
        assert!(
            !escaped.chars().any(|c| c != '\n' && is_refused_in_name(c)),
            "{escaped:?}"
        );
        assert!(escaped.contains(r"\udb40\udc61"), "{escaped}");
        let back: [String; 1] = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back, [name]);
        assert!(matches!(escape_json("[\"部署\"]"), Cow::Borrowed(_)));
    }
}
