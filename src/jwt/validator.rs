//! [`JwtValidator`]: checks access tokens (RFC 8725) against its keys, issuer, audience and
//! leeway, and returns their claims or a refusal with a precise reason
//! ([`reason`](super::reason)).
//!
//! Uses the core (its error) and token values; nothing of the other plug-ins or of the front
//! ends.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;

use crate::error::{AuthError, RejectReason};
use crate::format::FormatError;
use crate::id::TokenId;

use super::claims::valid_uri;
use super::reason::{
    BAD_SIGNATURE, INVALID_CLAIMS, MALFORMED_JWT, NOT_YET_VALID, UNKNOWN_KEY, WRONG_ALGORITHM,
    WRONG_AUDIENCE, WRONG_ISSUER, WRONG_TOKEN_TYPE,
};
use super::wire::{self, MAX_JWT_LEN, is_access_token_type, is_compact_jws};
use super::{AccessClaims, JwtError, JwtKey};

/// The clock-skew allowance on `exp` and `nbf` unless configured: 60 seconds.
///
/// ```
/// assert_eq!(apitoken::jwt::DEFAULT_LEEWAY.as_secs(), 60);
/// ```
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// The largest leeway a validator accepts: five minutes ("a few minutes", RFC 8725 §3.10
/// and OWASP). A larger one is refused when the validator is built, not clamped.
///
/// ```
/// assert_eq!(apitoken::jwt::MAX_LEEWAY.as_secs(), 300);
/// ```
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Checks access tokens. Made by [`JwtValidator::builder`]; plug it into a verifier with
/// [`VerifierBuilder::jwt`](crate::VerifierBuilder::jwt).
///
/// In order, a token is refused (as [`AuthErrorKind::InvalidToken`](crate::AuthErrorKind),
/// with the [`RejectReason`] in brackets: the core's, or one of [`reason`](super::reason))
/// when:
///
/// 1. it is longer than [`MAX_JWT_LEN`] [`Malformed`](RejectReason::Malformed)`(TooLong)`;
///    it is not three base64url segments, its header is not JSON or names an algorithm this
///    crate does not know (`none` included), or it has a `crit` header (no extension is
///    understood) [`MALFORMED_JWT`];
/// 2. its `typ` is not `at+jwt` (a refresh token, an ID token, a plain `JWT`, or none)
///    [`WRONG_TOKEN_TYPE`];
/// 3. its `kid` names no key, or it has none and the validator has several keys
///    [`UNKNOWN_KEY`];
/// 4. its `alg` is not that key's algorithm [`WRONG_ALGORITHM`];
/// 5. the signature does not verify [`BAD_SIGNATURE`];
/// 6. `iss` or `aud` is not this validator's [`WRONG_ISSUER`], [`WRONG_AUDIENCE`], or a claim
///    is missing or malformed (`iss`, `sub`, `aud`, `exp`, `iat`, `jti`, `client_id` are
///    required; `sub` must be an [`Owner`](crate::Owner), `jti` a [`TokenId`], `scope` valid
///    scopes) [`INVALID_CLAIMS`];
/// 7. `now` is at or past `exp` plus the leeway [`Expired`](RejectReason::Expired), or
///    before `nbf` minus the leeway [`NOT_YET_VALID`].
///
/// From step 7 on, the error carries the token's `jti` as its token id.
///
/// ```
/// use apitoken::jwt::{JwtKey, JwtValidator};
/// use std::time::Duration;
///
/// let validator = JwtValidator::builder("https://auth.example", "api")
///     .key(JwtKey::hs256(&[3u8; 32])?.with_kid("2026-11")?)
///     .key(JwtKey::hs256(&[4u8; 32])?.with_kid("2026-10")?)
///     .leeway(Duration::from_secs(30))
///     .build()?;
/// assert_eq!(validator.leeway(), Duration::from_secs(30));
/// assert!(!format!("{validator:?}").contains("3, 3"));
/// # Ok::<(), apitoken::jwt::JwtError>(())
/// ```
#[derive(Clone)]
pub struct JwtValidator {
    keys: Vec<(JwtKey, Validation)>,
    issuer: String,
    audience: String,
    leeway: Duration,
}

impl fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtValidator")
            .field(
                "keys",
                &self.keys.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl JwtValidator {
    /// Starts configuring a validator that accepts tokens from `issuer` (`iss`, exactly) for
    /// `audience` (`aud`, which must contain it).
    pub fn builder(issuer: impl Into<String>, audience: impl Into<String>) -> JwtValidatorBuilder {
        JwtValidatorBuilder {
            keys: Vec::new(),
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: DEFAULT_LEEWAY,
        }
    }

    /// Checks `token` at `now` (see the type's documentation for what is checked) and returns
    /// its claims. Through a [`Verifier`](crate::Verifier), `now` is the verifier's clock.
    ///
    /// ```
    /// use apitoken::{AuthErrorKind, Owner, RejectReason};
    /// use apitoken::jwt::{AccessGrant, JwtIssuer, JwtKey};
    /// use chrono::{TimeDelta, Utc};
    ///
    /// let issuer = JwtIssuer::builder(JwtKey::hs256(&[3u8; 32])?, "https://auth.example", "api")
    ///     .build()?;
    /// let validator = issuer.validator().build()?;
    /// let issued = issuer.issue(&AccessGrant::new(Owner::new("team-1")?, "cli")?)?;
    /// let token = issued.token.expose_secret();
    ///
    /// assert_eq!(validator.validate(token, Utc::now())?.subject.as_str(), "team-1");
    /// let later = Utc::now() + TimeDelta::hours(2);
    /// let err = validator.validate(token, later).unwrap_err();
    /// assert_eq!(err.kind(), AuthErrorKind::InvalidToken);
    /// assert_eq!(err.reason(), Some(RejectReason::Expired));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn validate(&self, token: &str, now: DateTime<Utc>) -> Result<AccessClaims, AuthError> {
        self.check(token, now)
            .map_err(|(reason, id)| AuthError::invalid_token(reason, id))
    }

    fn check(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<AccessClaims, (RejectReason, Option<TokenId>)> {
        let refuse = |reason| (reason, None);
        if token.len() > MAX_JWT_LEN {
            return Err(refuse(RejectReason::Malformed(FormatError::TooLong)));
        }
        if !is_compact_jws(token) {
            return Err(refuse(MALFORMED_JWT));
        }
        let header = wire::decode_header(token).map_err(|_| refuse(MALFORMED_JWT))?;
        if header.crit.is_some() {
            return Err(refuse(MALFORMED_JWT));
        }
        if !header.typ.as_deref().is_some_and(is_access_token_type) {
            return Err(refuse(WRONG_TOKEN_TYPE));
        }
        let (key, validation) = self
            .key_for(header.kid.as_deref())
            .ok_or(refuse(UNKNOWN_KEY))?;
        // One algorithm per key: checked here, before any cryptography, and again by
        // jsonwebtoken (the validation allows only this algorithm).
        if header.alg != key.algorithm().jsonwebtoken() {
            return Err(refuse(WRONG_ALGORITHM));
        }
        let claims = wire::decode(token, key.verifying(), validation)
            .map_err(|err| refuse(classify(err.kind())))?
            .into_claims()
            .ok_or(refuse(INVALID_CLAIMS))?;

        let leeway = TimeDelta::from_std(self.leeway).unwrap_or(TimeDelta::zero());
        let expired = claims
            .expires_at
            .checked_add_signed(leeway)
            .is_none_or(|end| end <= now);
        let early = claims.not_before.is_some_and(|nbf| {
            nbf.checked_sub_signed(leeway)
                .is_none_or(|start| start > now)
        });
        let reason = if expired {
            Some(RejectReason::Expired)
        } else if early {
            Some(NOT_YET_VALID)
        } else {
            None
        };
        match reason {
            Some(reason) => Err((reason, Some(claims.id))),
            None => Ok(claims),
        }
    }

    /// The key a token's `kid` names; without a `kid`, the only key.
    fn key_for(&self, kid: Option<&str>) -> Option<&(JwtKey, Validation)> {
        match kid {
            Some(kid) => self.keys.iter().find(|(k, _)| k.kid() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    /// The accepted issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The required audience.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The clock-skew allowance on `exp` and `nbf`.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }
}

/// Configures a [`JwtValidator`]. Made by [`JwtValidator::builder`] or
/// [`JwtIssuer::validator`](super::JwtIssuer::validator).
#[must_use]
#[derive(Debug)]
pub struct JwtValidatorBuilder {
    keys: Vec<JwtKey>,
    issuer: String,
    audience: String,
    leeway: Duration,
}

impl JwtValidatorBuilder {
    /// Accepts tokens signed with `key`, with its algorithm only. With more than one key,
    /// each needs its own key id ([`JwtKey::with_kid`]): add the new key and keep the old one
    /// until the tokens it signed have expired (see `docs/jwt.md`, key rotation).
    pub fn key(mut self, key: JwtKey) -> Self {
        self.keys.push(key);
        self
    }

    /// The allowance for clock skew between issuer and validator, on `exp` and `nbf`: at most
    /// [`MAX_LEEWAY`] (more is refused by [`build`](Self::build)). Default: [`DEFAULT_LEEWAY`],
    /// 60 seconds.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Builds the validator: refuses no keys, several keys without distinct key ids, an
    /// invalid issuer or audience, and a leeway above [`MAX_LEEWAY`].
    pub fn build(self) -> Result<JwtValidator, JwtError> {
        if self.keys.is_empty() {
            return Err(JwtError::NoKeys);
        }
        if self.keys.len() > 1 {
            let mut kids: Vec<Option<&str>> = self.keys.iter().map(JwtKey::kid).collect();
            kids.sort_unstable();
            kids.dedup();
            if kids.len() != self.keys.len() || kids.contains(&None) {
                return Err(JwtError::AmbiguousKeys);
            }
        }
        if !valid_uri(&self.issuer) || !valid_uri(&self.audience) {
            return Err(JwtError::InvalidIssuerOrAudience);
        }
        if self.leeway > MAX_LEEWAY {
            return Err(JwtError::LeewayTooLong);
        }
        let keys = self
            .keys
            .into_iter()
            .map(|key| {
                let validation = validation_for(&key, &self.issuer, &self.audience);
                (key, validation)
            })
            .collect();
        Ok(JwtValidator {
            keys,
            issuer: self.issuer,
            audience: self.audience,
            leeway: self.leeway,
        })
    }
}

/// jsonwebtoken's checks for `key`: its algorithm only, `iss` and `aud` required and
/// matched. Its time checks are off because it reads the system clock; the validator checks
/// `exp` and `nbf` against the verifier's [`Clock`](crate::Clock) instead.
fn validation_for(key: &JwtKey, issuer: &str, audience: &str) -> Validation {
    let mut validation = Validation::new(key.algorithm().jsonwebtoken());
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.validate_aud = true;
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation
}

/// What a jsonwebtoken error means for the logs.
fn classify(kind: &ErrorKind) -> RejectReason {
    match kind {
        ErrorKind::InvalidSignature => BAD_SIGNATURE,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => WRONG_ALGORITHM,
        ErrorKind::InvalidIssuer => WRONG_ISSUER,
        ErrorKind::InvalidAudience => WRONG_AUDIENCE,
        // The header was read before, so a JSON or UTF-8 error is in the (signed) claims.
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => INVALID_CLAIMS,
        _ => MALFORMED_JWT,
    }
}
