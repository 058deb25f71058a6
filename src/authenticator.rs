//! Authenticators: credential kinds with no record in the token store.
//!
//! The core's second extension point (the [`Policy`](crate::policy::Policy) is the first), in
//! the spirit of rustls's `ServerVerifier` with WebPKI as one implementation: the verifier asks
//! each configured [`Authenticator`], in order, whether it recognises a token's text; the first
//! that does checks it, and the token goes nowhere else (no store lookup). What it yields
//! becomes the same [`Principal`](crate::Principal) an API key does, so the scope requirement,
//! the [`ScopePolicy`](crate::ScopePolicy), the policies' `on_record` and `admit` steps and the
//! audit event all apply unchanged. JWT access tokens (`apitoken::jwt`, feature `jwt`) are
//! one implementation; a static service key or an mTLS identity would be others.
//!
//! This module is part of the core: it uses the token values (`record`) and the core's own
//! `error` and `verifier`, never a plug-in or a front end.
//!
//! # Example: a static key for one internal service
//!
//! ```
//! use apitoken::{
//!     Authenticated, Authenticator, AuthError, MemoryStore, Owner, RejectReason, ScopeRequirement,
//!     ScopeSet, TokenId, TokenRecord, Verifier,
//! };
//! use chrono::{DateTime, Utc};
//! use subtle::ConstantTimeEq;
//!
//! /// `svc_<key>`: one key, read from configuration, for the billing service.
//! struct ServiceKey {
//!     key: String,
//! }
//!
//! impl Authenticator for ServiceKey {
//!     fn recognises(&self, token: &str) -> bool {
//!         token.starts_with("svc_")
//!     }
//!
//!     fn max_token_len(&self) -> usize {
//!         4 + self.key.len()
//!     }
//!
//!     fn authenticate(&self, token: &str, now: DateTime<Utc>) -> Result<Authenticated, AuthError> {
//!         let presented = token.strip_prefix("svc_").unwrap_or_default();
//!         if !bool::from(presented.as_bytes().ct_eq(self.key.as_bytes())) {
//!             return Err(AuthError::invalid_token(RejectReason::WrongSecret, None));
//!         }
//!         let mut record = TokenRecord::new(
//!             TokenId::new("billing").expect("a valid id"),
//!             Owner::new("service:billing").expect("a valid owner"),
//!             "billing service",
//!             now,
//!         );
//!         record.scopes = ScopeSet::parse("invoices:read invoices:write").expect("valid scopes");
//!         Ok(Authenticated::new(record))
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let verifier = Verifier::builder(MemoryStore::new())
//!     .authenticator(ServiceKey { key: "k3y-from-the-vault-0123456789".into() })
//!     .build();
//! let principal = verifier
//!     .verify("svc_k3y-from-the-vault-0123456789", &ScopeRequirement::all(["invoices:read"])?)
//!     .await?;
//! assert_eq!(principal.owner().as_str(), "service:billing");
//! assert!(verifier.authenticate("svc_guess").await.is_err());
//! // Tokens it does not recognise go to the store as before.
//! assert!(verifier.authenticate("apk_not_a_service_key").await.is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::any::Any;

use chrono::{DateTime, Utc};

use crate::error::AuthError;
use crate::record::TokenRecord;
use crate::verifier::CredentialKind;

/// A credential kind the verifier checks without its store (a JWT, a static key).
///
/// `Any` is a supertrait so that [`Verifier::authenticator`](crate::Verifier::authenticator)
/// can hand a front end its concrete type back (OAuth introspection reads a JWT's claims).
///
/// Checking is synchronous: an authenticator has no store by definition, and a credential
/// that needs a round trip to check belongs in a [`TokenStore`](crate::TokenStore). It must
/// take the same time for a wrong credential as for a right one where the text is secret
/// (compare in constant time), and must not put the token's text in its errors.
pub trait Authenticator: Any + Send + Sync {
    /// Whether `token` is this authenticator's kind, by its shape alone (cheap; no
    /// cryptography). A recognised token is checked by this authenticator only.
    fn recognises(&self, token: &str) -> bool;

    /// The longest token text this authenticator accepts, in bytes. Front ends refuse longer
    /// credentials before reading them; the verifier's bound is the largest of its formats'
    /// and its authenticators'.
    fn max_token_len(&self) -> usize;

    /// Checks `token` at `now` (the verifier's clock), yielding the record it stands for, or
    /// why it is refused ([`AuthError::invalid_token`] with a reason of its own).
    fn authenticate(&self, token: &str, now: DateTime<Utc>) -> Result<Authenticated, AuthError>;
}

/// What an [`Authenticator`] yields: the record the credential stands for, made from what the
/// credential says (a JWT's claims), and its kind.
///
/// ```
/// use apitoken::{Authenticated, CredentialKind, Owner, TokenId, TokenRecord};
///
/// let record = TokenRecord::new(TokenId::new("k1")?, Owner::new("svc")?, "svc", chrono::Utc::now());
/// let authenticated = Authenticated::new(record);
/// assert_eq!(authenticated.kind(), CredentialKind::Other);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Authenticated {
    record: TokenRecord,
    kind: CredentialKind,
}

impl Authenticated {
    /// The credential stands for `record`; its kind is [`CredentialKind::Other`].
    pub fn new(record: TokenRecord) -> Self {
        Self {
            record,
            kind: CredentialKind::Other,
        }
    }

    /// Sets the credential kind the [`Principal`](crate::Principal) reports.
    #[must_use]
    pub fn kind_of(mut self, kind: CredentialKind) -> Self {
        self.kind = kind;
        self
    }

    /// The credential kind.
    pub fn kind(&self) -> CredentialKind {
        self.kind
    }

    /// The record.
    pub fn record(&self) -> &TokenRecord {
        &self.record
    }

    pub(crate) fn into_parts(self) -> (TokenRecord, CredentialKind) {
        (self.record, self.kind)
    }
}
