//! Where a request carries its token: the `Authorization` header, or a custom header.

use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use crate::error::{AuthError, RejectReason};
use crate::format::FormatError;
#[cfg(test)]
use crate::format::MAX_TOKEN_LEN;
use crate::scheme::{InvalidScheme, MAX_SCHEME_LEN, is_valid_scheme};

/// Which headers carry credentials, and in which authentication schemes.
///
/// By default: `Authorization: Bearer <token>`. Scheme names compare case-insensitively (RFC
/// 9110 §11.1), so `bearer` and `BEARER` work too. Tokens are never read from the query string
/// (RFC 6750 §2.3, RFC 9700 §4.3.2).
///
/// ```
/// use apitoken::middleware::Credentials;
/// use http::HeaderName;
///
/// // Delphix DCT's `Authorization: apk 1.0p9P…` next to `Bearer`, and an `X-API-Key` header.
/// let credentials = Credentials::bearer()
///     .scheme("apk")?
///     .header(HeaderName::from_static("x-api-key"));
/// # let _ = credentials;
/// # Ok::<(), apitoken::middleware::InvalidScheme>(())
/// ```
///
/// # Outcomes
///
/// | request | outcome |
/// |---|---|
/// | no `Authorization`, no custom header | missing credentials (401, bare challenge) |
/// | `Authorization` in another scheme (`Basic …`) | missing credentials (401, bare challenge) |
/// | two `Authorization` lines, or both `Authorization` and the custom header, or two custom header lines | malformed request (400 `invalid_request`) |
/// | a configured scheme with no token, or a tab after the scheme | malformed request (400) |
/// | a space or tab inside the token (trailing junk, two tokens) | malformed request (400) |
/// | bytes outside visible ASCII (0x80–0xFF, controls) | malformed request (400) |
/// | a token longer than 512 bytes | invalid token (401 `invalid_token`), before any hashing |
/// | a token of visible ASCII that no format accepts (quoted, `%`, …) | invalid token (401) |
///
/// Leading and trailing spaces and tabs around the whole value are ignored (RFC 9110 §5.5);
/// any number of spaces may separate scheme and token (RFC 9110 §11.4: `1*SP`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Credentials {
    schemes: Vec<Box<str>>,
    header: Option<HeaderName>,
}

impl Default for Credentials {
    fn default() -> Self {
        Self::bearer()
    }
}

impl Credentials {
    /// `Authorization: Bearer <token>` (RFC 6750 §2.1).
    pub fn bearer() -> Self {
        Self {
            schemes: vec!["Bearer".into()],
            header: None,
        }
    }

    /// No `Authorization` scheme; only the header `name` (see [`header`](Self::header)).
    pub fn header_only(name: HeaderName) -> Self {
        Self {
            schemes: Vec::new(),
            header: Some(name),
        }
    }

    /// Also accepts `Authorization: <scheme> <token>`, such as DCT's `apk`.
    pub fn scheme(mut self, scheme: &str) -> Result<Self, InvalidScheme> {
        if !is_valid_scheme(scheme) {
            return Err(InvalidScheme);
        }
        if !self.accepts_scheme(scheme.as_bytes()) {
            self.schemes.push(scheme.into());
        }
        Ok(self)
    }

    /// Also accepts the token alone in the header `name`, such as `X-API-Key: <token>`.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = Some(name);
        self
    }

    /// The accepted `Authorization` schemes, in the order given.
    pub fn schemes(&self) -> impl Iterator<Item = &str> {
        self.schemes.iter().map(|s| &**s)
    }

    /// The custom header, if any.
    pub fn custom_header(&self) -> Option<&HeaderName> {
        self.header.as_ref()
    }

    fn accepts_scheme(&self, scheme: &[u8]) -> bool {
        self.schemes
            .iter()
            .any(|s| s.as_bytes().eq_ignore_ascii_case(scheme))
    }

    /// Where the token is, for reading it again from the same headers once the request has
    /// moved into the verifying future: which header, and the token's span in its value. No
    /// copy and no reference count: the future owns the request and reads the bytes there.
    /// `max_len` bounds a token by its text ([`Verifier::max_len_of`](crate::Verifier::max_len_of)).
    pub(crate) fn locate(
        &self,
        headers: &HeaderMap,
        max_len: &dyn Fn(&[u8]) -> usize,
    ) -> Result<Option<TokenSpan>, AuthError> {
        Ok(self.find(headers, max_len)?.map(|(custom, value, token)| {
            // The token is a subslice of the value's bytes: its offset is the distance between
            // the two starts.
            let start = token.as_ptr() as usize - value.as_bytes().as_ptr() as usize;
            TokenSpan {
                custom,
                start,
                end: start + token.len(),
            }
        }))
    }

    /// The token text, `Ok(None)` when the request has no credentials for us, or the error.
    #[cfg(test)]
    pub(crate) fn extract<'h>(&self, headers: &'h HeaderMap) -> Result<Option<&'h str>, AuthError> {
        Ok(self
            .find(headers, &|_| MAX_TOKEN_LEN)?
            .map(|(_, _, token)| token))
    }

    /// Whether the token is in the custom header (else `Authorization`), the header value
    /// that carries it, and the token in it.
    fn find<'h>(
        &self,
        headers: &'h HeaderMap,
        max_len: &dyn Fn(&[u8]) -> usize,
    ) -> Result<Option<(bool, &'h HeaderValue, &'h str)>, AuthError> {
        let mut from_authorization = None;
        if !self.schemes.is_empty() {
            let mut values = headers.get_all(AUTHORIZATION).iter();
            if let Some(value) = values.next() {
                if values.next().is_some() {
                    // RFC 9110 §5.3: Authorization is not a list; never "first one wins".
                    return Err(AuthError::malformed_request());
                }
                from_authorization = self
                    .parse_authorization(value.as_bytes(), max_len)?
                    .map(|token| (false, value, token));
            }
        }
        if let Some(name) = &self.header {
            let mut values = headers.get_all(name).iter();
            if let Some(value) = values.next() {
                if values.next().is_some() || from_authorization.is_some() {
                    // RFC 6750 §2: one transmission method per request.
                    return Err(AuthError::malformed_request());
                }
                return token_text(trim_ows(value.as_bytes()), max_len)
                    .map(|token| Some((true, value, token)));
            }
        }
        Ok(from_authorization)
    }

    fn parse_authorization<'h>(
        &self,
        value: &'h [u8],
        max_len: &dyn Fn(&[u8]) -> usize,
    ) -> Result<Option<&'h str>, AuthError> {
        let value = trim_ows(value);
        let scheme_end = value
            .iter()
            .take(MAX_SCHEME_LEN + 1)
            .position(|b| *b == b' ' || *b == b'\t');
        let Some(end) = scheme_end else {
            // A lone word: our scheme without a token is malformed; anything else is not ours.
            return if self.accepts_scheme(value) {
                Err(AuthError::malformed_request())
            } else {
                Ok(None)
            };
        };
        if !self.accepts_scheme(&value[..end]) {
            return Ok(None);
        }
        if value[end] == b'\t' {
            return Err(AuthError::malformed_request());
        }
        let rest = &value[end..];
        let start = rest.iter().position(|b| *b != b' ').unwrap_or(rest.len());
        token_text(&rest[start..], max_len).map(Some)
    }
}

/// A token found by [`Credentials::locate`]: checked once, read again without a second parse.
#[derive(Clone, Copy)]
pub(crate) struct TokenSpan {
    /// In the custom header, else in `Authorization`.
    custom: bool,
    start: usize,
    end: usize,
}

impl TokenSpan {
    /// The token in `headers`, which must be the headers `locate` read, unchanged (the
    /// request's, owned by the verifying future). Visible ASCII, as `locate` checked; empty if
    /// the header is gone or the bytes are not text, which no format accepts.
    pub(crate) fn token<'h>(&self, headers: &'h HeaderMap, credentials: &Credentials) -> &'h str {
        let value = if self.custom {
            credentials
                .header
                .as_ref()
                .and_then(|name| headers.get(name))
        } else {
            headers.get(AUTHORIZATION)
        };
        value
            .and_then(|value| value.as_bytes().get(self.start..self.end))
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for TokenSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSpan(<redacted>)")
    }
}

/// Checks the token part of a header: bounded, one token, visible ASCII.
fn token_text<'t>(token: &'t [u8], max_len: &dyn Fn(&[u8]) -> usize) -> Result<&'t str, AuthError> {
    if token.is_empty() {
        return Err(AuthError::malformed_request());
    }
    if token.len() > max_len(token) {
        // Refused on length alone: no scan, no hash, no store.
        return Err(AuthError::invalid_token(
            RejectReason::Malformed(FormatError::TooLong),
            None,
        ));
    }
    // No early exit: one pass the compiler can do sixteen bytes at a time.
    let visible = token
        .iter()
        .fold(true, |visible, b| visible & (0x21..=0x7e).contains(b));
    if !visible {
        return Err(AuthError::malformed_request());
    }
    std::str::from_utf8(token).map_err(|_| AuthError::malformed_request())
}

fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::AuthErrorKind;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn kind(
        credentials: &Credentials,
        pairs: &[(&str, &[u8])],
    ) -> Result<Option<String>, AuthErrorKind> {
        credentials
            .extract(&headers(pairs))
            .map(|t| t.map(str::to_owned))
            .map_err(|e| e.kind())
    }

    #[test]
    fn schemes_are_case_insensitive_and_configurable() {
        let c = Credentials::bearer().scheme("apk").unwrap();
        for value in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "apk abc",
            "APK abc",
            "Bearer    abc",
        ] {
            assert_eq!(
                kind(&c, &[("authorization", value.as_bytes())]),
                Ok(Some("abc".into())),
                "{value}"
            );
        }
        assert_eq!(
            kind(&Credentials::bearer(), &[("authorization", b"apk abc")]),
            Ok(None)
        );
        assert!(Credentials::bearer().scheme("a b").is_err());
        assert!(Credentials::bearer().scheme("").is_err());
    }

    #[test]
    fn outcomes_of_odd_headers() {
        let c = Credentials::bearer();
        let malformed = Err(AuthErrorKind::MalformedRequest);
        assert_eq!(kind(&c, &[]), Ok(None));
        assert_eq!(
            kind(&c, &[("authorization", b"Basic dXNlcjpwYXNz")]),
            Ok(None)
        );
        assert_eq!(kind(&c, &[("authorization", b"abc.def")]), Ok(None));
        assert_eq!(kind(&c, &[("authorization", b"Bearer")]), malformed);
        assert_eq!(kind(&c, &[("authorization", b"Bearer ")]), malformed);
        assert_eq!(kind(&c, &[("authorization", b"")]), Ok(None));
        assert_eq!(kind(&c, &[("authorization", b"Bearer\tabc")]), malformed);
        assert_eq!(kind(&c, &[("authorization", b"Bearer abc def")]), malformed);
        assert_eq!(
            kind(&c, &[("authorization", b"Bearer abc\tdef")]),
            malformed
        );
        assert_eq!(kind(&c, &[("authorization", b"Bearer ab\xffc")]), malformed);
        assert_eq!(
            kind(&c, &[("authorization", b"  Bearer abc \t")]),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            kind(&c, &[("authorization", b"Bearer \"abc\"")]),
            Ok(Some("\"abc\"".into()))
        );
        assert_eq!(
            kind(
                &c,
                &[
                    ("authorization", b"Bearer a"),
                    ("authorization", b"Bearer b")
                ]
            ),
            malformed
        );
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(
            kind(&c, &[("authorization", long.as_bytes())]),
            Err(AuthErrorKind::InvalidToken)
        );
        let ok = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN));
        assert!(kind(&c, &[("authorization", ok.as_bytes())]).is_ok());
    }

    #[test]
    fn a_token_is_bounded_by_the_length_its_text_allows() {
        // As `Verifier::max_len_of` answers with a JWT validator: longer for a JWT's shape.
        const LONGER: usize = 4096;
        let bound = |t: &[u8]| {
            if t.starts_with(b"eyJ") {
                LONGER
            } else {
                MAX_TOKEN_LEN
            }
        };
        let c = Credentials::bearer();
        let status = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", HeaderValue::from_str(value).unwrap());
            c.find(&headers, &bound)
                .map(|t| t.is_some())
                .map_err(|e| e.kind())
        };
        let jwt = |len: usize| format!("Bearer eyJ{}", "a".repeat(len - 3));
        assert_eq!(status(&jwt(LONGER)), Ok(true));
        assert_eq!(status(&jwt(LONGER + 1)), Err(AuthErrorKind::InvalidToken));
        let other = format!("Bearer x{}", "a".repeat(MAX_TOKEN_LEN));
        assert_eq!(status(&other), Err(AuthErrorKind::InvalidToken));
    }

    #[test]
    fn custom_header() {
        let name = HeaderName::from_static("x-api-key");
        let c = Credentials::bearer().header(name.clone());
        assert_eq!(kind(&c, &[("x-api-key", b"abc")]), Ok(Some("abc".into())));
        assert_eq!(kind(&c, &[("x-api-key", b" abc ")]), Ok(Some("abc".into())));
        assert_eq!(
            kind(&c, &[("x-api-key", b"")]),
            Err(AuthErrorKind::MalformedRequest)
        );
        assert_eq!(
            kind(&c, &[("x-api-key", b"a"), ("x-api-key", b"b")]),
            Err(AuthErrorKind::MalformedRequest)
        );
        assert_eq!(
            kind(&c, &[("x-api-key", b"a"), ("authorization", b"Bearer b")]),
            Err(AuthErrorKind::MalformedRequest)
        );
        // Another scheme in Authorization is not ours: the custom header is used.
        assert_eq!(
            kind(&c, &[("x-api-key", b"a"), ("authorization", b"Basic b")]),
            Ok(Some("a".into()))
        );
        let only = Credentials::header_only(name);
        assert_eq!(kind(&only, &[("authorization", b"Bearer b")]), Ok(None));
    }
}
