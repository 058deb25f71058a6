//! JWT access tokens (feature `jwt`): short-lived, self-contained tokens that a
//! [`Verifier`](crate::Verifier) accepts beside API keys, yielding the same
//! [`Principal`](crate::Principal).
//!
//! - [`JwtKey`]: one key bound to one algorithm, HS256 (a secret of at least 256 bits) or
//!   EdDSA (Ed25519), with an optional key id (`kid`).
//! - [`JwtIssuer`]: signs access tokens (RFC 9068: header `typ: at+jwt`; claims `iss`, `sub`,
//!   `aud`, `exp`, `iat`, `nbf`, `jti`, `client_id`, `scope`), one hour by default.
//! - [`JwtValidator`]: checks them (RFC 8725): the algorithm must be the key's own, `none`
//!   never; `typ` must be `at+jwt`, so a refresh token or an ID token cannot stand in for an
//!   access token; `iss` and `aud` must match; `exp` is required and `nbf` honoured, with a
//!   leeway of 60 seconds by default and at most five minutes.
//! - [`VerifierBuilder::jwt`](crate::VerifierBuilder::jwt) plugs a validator into a verifier.
//! - [`reason`]: why a JWT was refused, for logs and metrics ([`reason::BAD_SIGNATURE`] and
//!   the others, each a [`RejectReason`](crate::RejectReason)).
//!
//! A JWT costs no store access, and so cannot be revoked before it expires: the short lifetime
//! is the bound. See `docs/jwt.md`.
//!
//! ```
//! use apitoken::jwt::{AccessGrant, JwtIssuer, JwtKey};
//! use apitoken::{CredentialKind, MemoryStore, Owner, ScopeRequirement, Verifier};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let key = JwtKey::hs256(&[7u8; 32])?;
//! let issuer = JwtIssuer::builder(key, "https://auth.example.com", "https://api.example.com")
//!     .build()?;
//! let verifier = Verifier::builder(MemoryStore::new())
//!     .jwt(issuer.validator().build()?)
//!     .build();
//!
//! let grant = AccessGrant::new(Owner::new("team-1")?, "ci-runner")?.scopes(["vps:read"])?;
//! let issued = issuer.issue(&grant)?;
//! let principal = verifier
//!     .verify(issued.token.expose_secret(), &ScopeRequirement::all(["vps:read"])?)
//!     .await?;
//! assert_eq!(principal.owner().as_str(), "team-1");
//! assert_eq!(principal.name(), "ci-runner");
//! assert_eq!(principal.credential_kind(), CredentialKind::Jwt);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! A plug-in: uses the core (error, the authenticator trait, the verifier's builder), the
//! store trait and token values, nothing of the front ends or of the other plug-ins (the OAuth
//! token endpoint's JWT minter is the `oauth` front end's, behind both features). Its files:
//!
//! | file | holds |
//! |---|---|
//! | `keys.rs` | [`JwtKey`], [`JwtAlgorithm`] |
//! | `claims.rs` | [`AccessGrant`], [`AccessClaims`] |
//! | `wire.rs` | the compact JWS: header, claims as JSON, shape checks |
//! | `issuer.rs` | [`JwtIssuer`], [`IssuedJwt`] |
//! | `validator.rs` | [`JwtValidator`] |
//! | `authenticator.rs` | the validator as an [`Authenticator`](crate::Authenticator); `VerifierBuilder::jwt` |
//! | `reason.rs` | the refusal reasons |
//! | `error.rs` | [`JwtError`] |

/// `docs/jwt.md`, whose Rust examples run as doctests (one needs the `oauth` feature).
#[cfg(all(doctest, feature = "oauth"))]
#[doc = include_str!("../../docs/jwt.md")]
struct JwtGuide;

mod authenticator;
mod claims;
mod error;
mod issuer;
mod keys;
pub mod reason;
#[cfg(test)]
mod tests;
mod validator;
mod wire;

pub use claims::{AccessClaims, AccessGrant, MAX_URI_LEN};
pub use error::JwtError;
pub use issuer::{DEFAULT_LIFETIME, IssuedJwt, JwtIssuer, JwtIssuerBuilder, MAX_LIFETIME};
pub use keys::{JwtAlgorithm, JwtKey, MAX_KID_LEN, MIN_HMAC_KEY_LEN};
pub use validator::{DEFAULT_LEEWAY, JwtValidator, JwtValidatorBuilder, MAX_LEEWAY};
pub use wire::{ACCESS_TOKEN_TYPE, MAX_JWT_LEN};

pub(crate) use wire::has_jwt_shape;
