//! Why a JWT was refused: the [`RejectReason`]s of the JWT validator, for logs and metrics.
//!
//! The core's [`RejectReason`] keeps the reasons every credential shares (an expired JWT is
//! [`RejectReason::Expired`], one over [`MAX_JWT_LEN`](super::MAX_JWT_LEN) is
//! [`RejectReason::Malformed`]); those only a JWT can have are
//! [`RejectReason::Plugin`] values defined here, each named by its `snake_case`
//! [`PluginReason::name`]. They are constants, so they compare with `==` and work as `match`
//! patterns:
//!
//! ```
//! use apitoken::RejectReason;
//! use apitoken::jwt::reason::{self, BAD_SIGNATURE, WRONG_TOKEN_TYPE};
//!
//! fn label(reason: RejectReason) -> &'static str {
//!     match reason {
//!         BAD_SIGNATURE => "forged",
//!         WRONG_TOKEN_TYPE => "not an access token",
//!         RejectReason::Expired => "expired",
//!         RejectReason::Plugin(other) => other.name(),
//!         _ => "other",
//!     }
//! }
//! assert_eq!(label(reason::BAD_SIGNATURE), "forged");
//! assert_eq!(label(reason::NOT_YET_VALID), "not_yet_valid");
//! assert_eq!(label(RejectReason::Expired), "expired");
//! ```
//!
//! Uses the core (its error type) only; nothing of the other plug-ins or of the front ends.

use crate::error::{PluginReason, RejectReason};

/// A JWT that is not a well-formed compact JWS: bad base64url or JSON, an unknown algorithm
/// (`none` included), or a `crit` header. Named `malformed_jwt`.
pub const MALFORMED_JWT: RejectReason = RejectReason::Plugin(PluginReason::new("malformed_jwt"));

/// A JWT whose `typ` is not an access token's (`at+jwt`): a refresh token, an ID token, a
/// plain `JWT`, or no `typ`. Named `wrong_token_type`.
pub const WRONG_TOKEN_TYPE: RejectReason =
    RejectReason::Plugin(PluginReason::new("wrong_token_type"));

/// A JWT whose `kid` names no accepted key (or without a `kid` where several keys are
/// accepted). Named `unknown_key`.
pub const UNKNOWN_KEY: RejectReason = RejectReason::Plugin(PluginReason::new("unknown_key"));

/// A JWT whose `alg` is not the algorithm of the key it names. Named `wrong_algorithm`.
pub const WRONG_ALGORITHM: RejectReason =
    RejectReason::Plugin(PluginReason::new("wrong_algorithm"));

/// A JWT whose signature does not verify. Named `bad_signature`.
pub const BAD_SIGNATURE: RejectReason = RejectReason::Plugin(PluginReason::new("bad_signature"));

/// A JWT from another issuer (`iss`). Named `wrong_issuer`.
pub const WRONG_ISSUER: RejectReason = RejectReason::Plugin(PluginReason::new("wrong_issuer"));

/// A JWT for another audience (`aud`). Named `wrong_audience`.
pub const WRONG_AUDIENCE: RejectReason = RejectReason::Plugin(PluginReason::new("wrong_audience"));

/// A JWT with a required claim missing or malformed. Named `invalid_claims`.
pub const INVALID_CLAIMS: RejectReason = RejectReason::Plugin(PluginReason::new("invalid_claims"));

/// A JWT used before its `nbf`, beyond the leeway. Named `not_yet_valid`.
pub const NOT_YET_VALID: RejectReason = RejectReason::Plugin(PluginReason::new("not_yet_valid"));
