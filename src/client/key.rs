//! [`ApiKey`]: the key a client sends, where it comes from, and the header that carries it.

use std::ffi::OsString;
use std::fmt;

use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use zeroize::Zeroizing;

use crate::scheme::{InvalidScheme, is_valid_scheme};
use crate::secret::Secret;

/// An API key to send with every request, and the header that carries it.
///
/// By default the key goes in `Authorization: Bearer <key>` (RFC 6750 §2.1); [`scheme`](Self::scheme)
/// picks another scheme, such as Delphix DCT's `apk`, and [`header`](Self::header) a header of
/// its own, such as `X-API-Key: <key>`. The header value is built once, when the key is made
/// or its placement changed, and marked sensitive (`HeaderValue::set_sensitive`), so HTTP/2
/// never indexes it and loggers that honour the flag redact it.
///
/// The key is held as a [`Secret`]: `Debug` shows the header and the scheme, never the key.
/// Spaces, tabs and line breaks around the key (a key pasted or read from a file with its
/// newline) are removed; any other character outside visible ASCII, or a space inside the
/// key, is refused, since it could not travel as one header token.
///
/// ```
/// use apitoken::client::ApiKey;
/// use http::HeaderName;
///
/// let key = ApiKey::new("dbaudit_live_xxxxxxxxxxxxxxxx")?;
/// assert_eq!(key.header_name(), "authorization");
/// assert_eq!(key.auth_scheme(), Some("Bearer"));
/// assert!(!format!("{key:?}").contains("dbaudit_live"));
///
/// // Delphix DCT: `Authorization: apk 1.0p9P…`.
/// let dct = ApiKey::new("1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD4pflejgqjd0pfKtywlSWR9G0fIaWajuKcBT3")?
///     .scheme("apk")?;
/// assert_eq!(dct.auth_scheme(), Some("apk"));
///
/// // `X-API-Key: <key>`, no scheme.
/// let custom = ApiKey::new("dbaudit_live_xxxxxxxxxxxxxxxx")?
///     .header(HeaderName::from_static("x-api-key"));
/// assert_eq!(custom.header_name(), "x-api-key");
/// assert_eq!(custom.auth_scheme(), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ApiKey {
    key: Secret,
    /// `None` when the key goes alone in a header of its own.
    scheme: Option<Box<str>>,
    header: HeaderName,
    /// Built from the three fields above, sensitive.
    value: HeaderValue,
}

impl ApiKey {
    /// A key given in code (or read from a secret store), sent as `Authorization: Bearer <key>`.
    ///
    /// Fails when the key is empty or holds characters a header token cannot carry; the error
    /// never contains the key.
    ///
    /// ```
    /// use apitoken::client::{ApiKey, ApiKeyErrorKind};
    ///
    /// assert!(ApiKey::new("dbaudit_live_xxxxxxxx\n").is_ok()); // the newline is trimmed
    /// let error = ApiKey::new("two words").unwrap_err();
    /// assert_eq!(error.kind(), ApiKeyErrorKind::Invalid);
    /// assert!(!error.to_string().contains("words"));
    /// ```
    pub fn new(key: impl Into<String>) -> Result<Self, ApiKeyError> {
        Self::checked(Zeroizing::new(key.into()), None)
    }

    /// The key in the environment variable `variable` (the seed's SDKs read
    /// `DBAUDIT_API_KEY`), sent as `Authorization: Bearer <key>`.
    ///
    /// Fails when the variable is unset, empty, or does not hold a valid key. The error names
    /// the variable and never contains its value.
    ///
    /// ```
    /// use apitoken::client::{ApiKey, ApiKeyErrorKind};
    ///
    /// let error = ApiKey::from_env("APITOKEN_DOC_EXAMPLE_UNSET_KEY").unwrap_err();
    /// assert_eq!(error.kind(), ApiKeyErrorKind::Unset);
    /// assert_eq!(
    ///     error.to_string(),
    ///     "the environment variable APITOKEN_DOC_EXAMPLE_UNSET_KEY is not set"
    /// );
    /// ```
    pub fn from_env(variable: &str) -> Result<Self, ApiKeyError> {
        Self::from_env_with(variable, |name| std::env::var_os(name))
    }

    /// [`from_env`](Self::from_env) with the environment read through `lookup`, for tests and
    /// for configuration that is not the process environment.
    ///
    /// ```
    /// use std::ffi::OsString;
    /// use apitoken::client::{ApiKey, ApiKeyErrorKind};
    ///
    /// let key = ApiKey::from_env_with("DBAUDIT_API_KEY", |_| {
    ///     Some(OsString::from("dbaudit_live_xxxxxxxx"))
    /// })?;
    /// assert_eq!(key.auth_scheme(), Some("Bearer"));
    ///
    /// let error = ApiKey::from_env_with("DBAUDIT_API_KEY", |_| Some(OsString::new())).unwrap_err();
    /// assert_eq!(error.kind(), ApiKeyErrorKind::Empty);
    /// assert_eq!(error.variable(), Some("DBAUDIT_API_KEY"));
    /// # Ok::<(), apitoken::client::ApiKeyError>(())
    /// ```
    pub fn from_env_with(
        variable: &str,
        lookup: impl FnOnce(&str) -> Option<OsString>,
    ) -> Result<Self, ApiKeyError> {
        let error = |kind| ApiKeyError {
            kind,
            variable: Some(variable.into()),
        };
        let value = lookup(variable).ok_or_else(|| error(ApiKeyErrorKind::Unset))?;
        // `into_string` keeps the buffer on success; a value that is not Unicode is no key.
        let text = value
            .into_string()
            .map_err(|_| error(ApiKeyErrorKind::Invalid))?;
        Self::checked(Zeroizing::new(text), Some(variable))
    }

    /// Sends the key as `Authorization: <scheme> <key>`, such as DCT's `apk`. The scheme is
    /// 1 to 32 RFC 9110 token characters, as the server side ([`Credentials::scheme`]) accepts.
    ///
    /// [`Credentials::scheme`]: crate::middleware::Credentials::scheme
    ///
    /// ```
    /// use apitoken::client::ApiKey;
    ///
    /// let key = ApiKey::new("1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD4pflejgqjd0pfKtywlSWR9G0fIaWajuKcBT3")?;
    /// assert_eq!(key.clone().scheme("apk")?.auth_scheme(), Some("apk"));
    /// assert!(key.scheme("not a scheme").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn scheme(self, scheme: &str) -> Result<Self, InvalidScheme> {
        if !is_valid_scheme(scheme) {
            return Err(InvalidScheme);
        }
        Ok(Self::placed(self.key, Some(scheme.into()), AUTHORIZATION))
    }

    /// Sends the key alone in the header `name`, such as `X-API-Key: <key>`, with no scheme.
    ///
    /// ```
    /// use apitoken::client::ApiKey;
    /// use http::HeaderName;
    ///
    /// let key = ApiKey::new("dbaudit_live_xxxxxxxx")?.header(HeaderName::from_static("x-api-key"));
    /// assert_eq!(key.header_name(), "x-api-key");
    /// # Ok::<(), apitoken::client::ApiKeyError>(())
    /// ```
    pub fn header(self, name: HeaderName) -> Self {
        Self::placed(self.key, None, name)
    }

    /// The header that carries the key: `authorization` unless [`header`](Self::header) chose
    /// another.
    pub fn header_name(&self) -> &HeaderName {
        &self.header
    }

    /// The `Authorization` scheme (`Bearer` by default), or `None` when the key goes alone in
    /// a header of its own.
    pub fn auth_scheme(&self) -> Option<&str> {
        self.scheme.as_deref()
    }

    /// The key itself, as a [`Secret`].
    pub fn secret(&self) -> &Secret {
        &self.key
    }

    /// The header value, sensitive.
    pub(crate) fn header_value(&self) -> &HeaderValue {
        &self.value
    }

    fn checked(mut text: Zeroizing<String>, variable: Option<&str>) -> Result<Self, ApiKeyError> {
        let error = |kind| ApiKeyError {
            kind,
            variable: variable.map(Into::into),
        };
        let trimmed = text.trim_matches([' ', '\t', '\r', '\n']);
        if trimmed.is_empty() {
            return Err(error(ApiKeyErrorKind::Empty));
        }
        // Visible ASCII only (RFC 9110 §5.5 field content, without spaces): one header token.
        if !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(error(ApiKeyErrorKind::Invalid));
        }
        let key = if trimmed.len() == text.len() {
            // Moved, not copied: no stray copy of the key is left behind.
            Secret::new(std::mem::take(&mut *text))
        } else {
            Secret::new(trimmed.to_owned())
        };
        Ok(Self::placed(key, Some("Bearer".into()), AUTHORIZATION))
    }

    fn placed(key: Secret, scheme: Option<Box<str>>, header: HeaderName) -> Self {
        let text = Zeroizing::new(match &scheme {
            Some(scheme) => format!("{scheme} {}", key.expose_secret()),
            None => key.expose_secret().to_owned(),
        });
        let mut value = HeaderValue::from_str(&text)
            .expect("a checked scheme and key are visible ASCII, so a valid header value");
        value.set_sensitive(true);
        Self {
            key,
            scheme,
            header,
            value,
        }
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("header", &self.header)
            .field("scheme", &self.scheme)
            .field("key", &self.key)
            .finish()
    }
}

/// Why an [`ApiKey`] could not be made. Names the environment variable it came from, never
/// the value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiKeyError {
    kind: ApiKeyErrorKind,
    variable: Option<Box<str>>,
}

/// What was wrong with a key; see [`ApiKeyError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiKeyErrorKind {
    /// The environment variable is not set.
    Unset,
    /// The key is empty, or only whitespace.
    Empty,
    /// The key holds a character outside visible ASCII (a space inside it, a control
    /// character, non-ASCII text), or the environment variable is not Unicode.
    Invalid,
}

impl ApiKeyError {
    /// What was wrong.
    pub fn kind(&self) -> ApiKeyErrorKind {
        self.kind
    }

    /// The environment variable the key was read from, if it came from one.
    pub fn variable(&self) -> Option<&str> {
        self.variable.as_deref()
    }
}

impl fmt::Display for ApiKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.variable {
            Some(variable) => write!(f, "the environment variable {variable} ")?,
            None => f.write_str("the API key ")?,
        }
        f.write_str(match self.kind {
            ApiKeyErrorKind::Unset => "is not set",
            ApiKeyErrorKind::Empty => "is empty",
            ApiKeyErrorKind::Invalid => {
                "is not a valid API key: visible ASCII characters only, no spaces inside"
            }
        })
    }
}

impl std::error::Error for ApiKeyError {}
