//! Authentication scheme names (`Bearer`, `apk`): the RFC 9110 token grammar both sides check.
//!
//! A token-value module: it uses nothing of the crate, so the server side (`middleware`) and
//! the client side (`client`) share one definition without the client importing the server.

/// The longest authentication scheme name accepted.
pub(crate) const MAX_SCHEME_LEN: usize = 32;

/// A scheme name that is not an RFC 9110 token of at most 32 characters.
///
/// ```
/// use apitoken::middleware::Credentials;
///
/// assert!(Credentials::bearer().scheme("apk").is_ok());
/// assert!(Credentials::bearer().scheme("not a scheme").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an authentication scheme is 1 to {MAX_SCHEME_LEN} RFC 9110 token characters")]
#[non_exhaustive]
pub struct InvalidScheme;

/// Whether `scheme` is 1 to [`MAX_SCHEME_LEN`] RFC 9110 token characters. The client side
/// sends only schemes the server side would accept.
pub(crate) fn is_valid_scheme(scheme: &str) -> bool {
    !scheme.is_empty() && scheme.len() <= MAX_SCHEME_LEN && scheme.bytes().all(is_tchar)
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_rfc_9110_tokens_of_at_most_32_characters() {
        assert!(is_valid_scheme("Bearer"));
        assert!(is_valid_scheme("apk"));
        assert!(is_valid_scheme(&"a".repeat(32)));
        assert!(!is_valid_scheme(&"a".repeat(33)));
        assert!(!is_valid_scheme(""));
        assert!(!is_valid_scheme("two words"));
        assert!(!is_valid_scheme("a,b"));
        assert!(!is_valid_scheme("é"));
    }
}
