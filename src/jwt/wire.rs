//! The compact JWS on the wire: the header an issuer writes and a validator reads (`typ`,
//! `alg`, `kid`), the claims as JSON (`WireOut` signed, `WireIn` read, RFC 7519 NumericDate),
//! and the cheap shape checks that run before any cryptography.
//!
//! Uses token values only (and jsonwebtoken); nothing of the other plug-ins or of the front
//! ends.

use chrono::{DateTime, Utc};
use jsonwebtoken::errors::Error as JwsError;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::id::TokenId;
use crate::record::Owner;
use crate::scope::ScopeSet;

use super::claims::valid_client_id;
use super::{AccessClaims, JwtKey};

/// The longest JWT accepted or issued, in bytes. Longer than
/// [`MAX_TOKEN_LEN`](crate::format::MAX_TOKEN_LEN) because a JWT carries its claims; the
/// middleware allows this length for tokens that start as a JWT does (`eyJ`).
///
/// ```
/// assert_eq!(apitoken::jwt::MAX_JWT_LEN, 4096);
/// ```
pub const MAX_JWT_LEN: usize = 4096;

/// The `typ` header of an access token (RFC 9068 §2.1). A validator also accepts its long
/// form, `application/at+jwt`, in any case (RFC 7515 §4.1.9).
///
/// ```
/// assert_eq!(apitoken::jwt::ACCESS_TOKEN_TYPE, "at+jwt");
/// ```
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// The header an issuer writes for `key`: its algorithm, `typ: at+jwt`, and its `kid` when
/// it has one.
pub(super) fn header_for(key: &JwtKey) -> Header {
    let mut header = Header::new(key.algorithm().jsonwebtoken());
    header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
    header.kid = key.kid().map(str::to_owned);
    header
}

/// Signs `claims` under `header` with `key`: the compact JWS. `aud` is written as the one
/// string `audience`; `scope` is left out when there are no scopes.
pub(super) fn encode(
    header: &Header,
    claims: &AccessClaims,
    audience: &str,
    key: &EncodingKey,
) -> Result<String, JwsError> {
    let scope = claims.scopes.to_string();
    let wire = WireOut {
        iss: &claims.issuer,
        sub: claims.subject.as_str(),
        aud: audience,
        exp: claims.expires_at.timestamp(),
        iat: claims.issued_at.timestamp(),
        nbf: claims.not_before.unwrap_or(claims.issued_at).timestamp(),
        jti: claims.id.as_str(),
        client_id: &claims.client_id,
        scope: (!scope.is_empty()).then_some(scope.as_str()),
    };
    jsonwebtoken::encode(header, &wire, key)
}

/// The header of `token`, read without checking anything else.
pub(super) fn decode_header(token: &str) -> Result<Header, JwsError> {
    jsonwebtoken::decode_header(token)
}

/// Checks `token`'s signature with `key` under `validation` and reads its claims as signed.
pub(super) fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<WireIn, JwsError> {
    jsonwebtoken::decode::<WireIn>(token, key, validation).map(|data| data.claims)
}

/// Whether `token` starts as a JWT does (a base64url JSON object, `eyJ`) and has three
/// segments: the verifier's cheap test for which path a token takes.
pub(crate) fn has_jwt_shape(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

/// Three non-empty segments of base64url without padding.
pub(super) fn is_compact_jws(token: &str) -> bool {
    let mut segments = 0;
    for segment in token.split('.') {
        segments += 1;
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    segments == 3
}

/// `at+jwt` or `application/at+jwt`, in any case (media types are case-insensitive).
pub(super) fn is_access_token_type(typ: &str) -> bool {
    let short = typ
        .get(..12)
        .filter(|p| p.eq_ignore_ascii_case("application/"))
        .map_or(typ, |_| &typ[12..]);
    short.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE)
}

/// The claims as signed.
#[derive(Serialize)]
struct WireOut<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

/// The claims as read; unknown claims are ignored, a repeated claim is an error (serde).
#[derive(Deserialize)]
pub(super) struct WireIn {
    iss: String,
    sub: String,
    aud: OneOrMany,
    exp: NumericDate,
    iat: NumericDate,
    #[serde(default)]
    nbf: Option<NumericDate>,
    jti: String,
    client_id: String,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// RFC 7519's NumericDate: seconds, possibly with a fraction (dropped).
#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
pub(super) enum NumericDate {
    Whole(i64),
    Fraction(f64),
}

impl NumericDate {
    pub(super) fn to_utc(self) -> Option<DateTime<Utc>> {
        let seconds = match self {
            Self::Whole(s) => s,
            Self::Fraction(f) if f.is_finite() => f.floor() as i64,
            Self::Fraction(_) => return None,
        };
        DateTime::from_timestamp(seconds, 0)
    }
}

impl WireIn {
    /// The claims, if each is well-formed: `sub` an [`Owner`], `jti` a [`TokenId`], `scope`
    /// valid scopes, the dates in range.
    pub(super) fn into_claims(self) -> Option<AccessClaims> {
        if !valid_client_id(&self.client_id) {
            return None;
        }
        Some(AccessClaims {
            id: TokenId::new(&self.jti).ok()?,
            issuer: self.iss,
            subject: Owner::new(&self.sub).ok()?,
            audience: match self.aud {
                OneOrMany::One(aud) => vec![aud],
                OneOrMany::Many(auds) => auds,
            },
            client_id: self.client_id,
            scopes: ScopeSet::parse(self.scope.as_deref().unwrap_or("")).ok()?,
            issued_at: self.iat.to_utc()?,
            not_before: match self.nbf {
                Some(nbf) => Some(nbf.to_utc()?),
                None => None,
            },
            expires_at: self.exp.to_utc()?,
        })
    }
}
