//! The JWT validator as an [`Authenticator`]: JWT access tokens beside API keys, through the
//! core's extension point rather than a branch in the verifier; and
//! [`VerifierBuilder::jwt`], which plugs one in.
//!
//! Uses the core (the authenticator trait, the verifier's builder, its error), the store trait
//! (the builder's bound) and token values; nothing of the other plug-ins or of the front ends.

use chrono::{DateTime, Utc};

use crate::authenticator::{Authenticated, Authenticator};
use crate::error::AuthError;
use crate::store::TokenStore;
use crate::verifier::{CredentialKind, VerifierBuilder};

use super::{JwtValidator, MAX_JWT_LEN, has_jwt_shape};

/// A token with a JWT's shape (three dot-separated segments, starting `eyJ`) goes to the
/// validator only; its `exp` and `nbf` are checked against the verifier's clock.
impl Authenticator for JwtValidator {
    fn recognises(&self, token: &str) -> bool {
        has_jwt_shape(token)
    }

    fn max_token_len(&self) -> usize {
        MAX_JWT_LEN
    }

    fn authenticate(&self, token: &str, now: DateTime<Utc>) -> Result<Authenticated, AuthError> {
        let claims = self.validate(token, now)?;
        Ok(Authenticated::new(claims.to_record()).kind_of(CredentialKind::Jwt))
    }
}

impl<S: TokenStore> VerifierBuilder<S> {
    /// Also accepts JWT access tokens checked by `validator` (feature `jwt`), on the same
    /// routes as API keys and with the same [`Principal`](crate::Principal)
    /// ([`CredentialKind::Jwt`]): [`authenticator(validator)`](Self::authenticator). A token
    /// with a JWT's shape (three dot-separated segments, starting `eyJ`) goes to the
    /// validator only, and its `exp` and `nbf` are checked against this verifier's clock.
    /// The scope requirement, [`ScopePolicy`](crate::ScopePolicy) and policies apply as for
    /// API keys; the maximum lifetime, idle time and last-use tracking do not (a JWT has no
    /// store record), and a JWT cannot be revoked before it expires. See
    /// [`jwt`](crate::jwt).
    ///
    /// ```
    /// use apitoken::jwt::{JwtKey, JwtValidator};
    /// use apitoken::{MemoryStore, Verifier};
    ///
    /// let validator = JwtValidator::builder("https://auth.example", "api")
    ///     .key(JwtKey::hs256(&[3u8; 32])?)
    ///     .build()?;
    /// let verifier = Verifier::builder(MemoryStore::new()).jwt(validator).build();
    /// assert!(verifier.authenticator::<JwtValidator>().is_some());
    /// # Ok::<(), apitoken::jwt::JwtError>(())
    /// ```
    pub fn jwt(self, validator: JwtValidator) -> Self {
        self.authenticator(validator)
    }
}
