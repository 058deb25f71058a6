#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms,
    clippy::unwrap_used,
    clippy::dbg_macro,
    clippy::todo
)]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod audit;
pub mod authenticator;
mod base62;
#[cfg(feature = "client")]
pub mod client;
mod clock;
mod error;
#[cfg(feature = "tokio")]
mod flusher;
pub mod format;
mod id;
mod issuer;
#[cfg(feature = "jwt")]
pub mod jwt;
pub mod last_used;
#[cfg(feature = "axum")]
pub mod management;
pub mod middleware;
pub mod name;
#[cfg(feature = "oauth")]
pub mod oauth;
pub mod policy;
pub mod rate_limit;
mod record;
mod scheme;
pub mod scope;
mod secret;
pub mod store;
mod verifier;

pub use audit::{
    AuditEvent, AuditOutcome, AuditSink, REFUSAL_LOG_LINES_PER_SECOND, REFUSAL_LOG_WINDOW_SECS,
};
pub use authenticator::{Authenticated, Authenticator};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{AuthError, AuthErrorKind, PluginReason, RejectReason};
#[cfg(feature = "tokio")]
pub use flusher::LastUsedFlusher;
pub use format::{
    Checksum, FormatConfigError, FormatError, GenerateError, IdKind, ParsedToken, Separator,
    TokenFormat, TokenFormatBuilder,
};
pub use id::{InvalidTokenId, MAX_ID_LEN, TokenId};
pub use issuer::{
    DEFAULT_MAX_ALLOWED_IPS, DEFAULT_MAX_SCOPES, IssueError, IssuedToken, Issuer, NewToken,
};
pub use name::{InvalidName, MAX_NAME_LEN};
pub use policy::Policy;
pub use record::{InvalidOwner, MAX_OWNER_LEN, Metadata, Owner, TokenRecord};
pub use scope::{InvalidScope, Scope, ScopePolicy, ScopeRequirement, ScopeSet};
pub use secret::{
    MIN_PEPPER_LEN, PepperTooShort, RandomnessUnavailable, Secret, SecretHash, SecretHasher,
};
#[cfg(feature = "postgres")]
pub use store::PostgresStore;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use store::SanctumStore;
#[cfg(feature = "sqlite")]
pub use store::SqliteStore;
pub use store::{
    CacheInvalidator, CachedStore, CachedStoreBuilder, MemoryStore, Retire, StoreChange,
    StoreError, StoreErrorKind, StoredToken, TokenStore,
};
pub use verifier::{
    CredentialKind, Principal, Receipts, RequestInfo, Verification, Verified, Verifier,
    VerifierBuildError, VerifierBuilder, WeakVerifier,
};
