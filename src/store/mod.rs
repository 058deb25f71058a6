//! Where token records live: the [`TokenStore`] trait and the stores this crate ships.
//!
//! # Why generic, not `dyn`
//!
//! `TokenStore`'s methods return `impl Future + Send`, so the [`Verifier`](crate::Verifier) is
//! generic over its store and a verification costs no boxed future and no virtual call. The
//! cost is that `TokenStore` is not object-safe; an application that must choose its store at
//! run time wraps the choices in an enum that implements `TokenStore`. Stores wrap stores (a
//! cache over a database) by holding the inner store as a type parameter: [`CachedStore`] wraps
//! any store this way.
//!
//! # Contract
//!
//! - `get` and `find_by_hash` return `Ok(None)` for a token that does not exist. An error means
//!   the store could not answer, and the verifier fails closed on it
//!   ([`AuthErrorKind::StoreUnavailable`](crate::AuthErrorKind::StoreUnavailable)).
//! - Revoked and expired tokens are still returned: the verifier decides, so the reason can be
//!   logged.
//! - `record_last_used` moves `last_used_at` forward only.
//! - A store never sees a plaintext secret; it stores the [`SecretHash`] it is given.
//!
//! # What lives where, and what it may use
//!
//! This file holds the trait, its errors and the types every store shares; `memory/` the
//! in-memory store; `cache/` the verification cache over any store; `sql/` the SQL stores
//! (what they share, and one file per database for what differs). Stores are the layer
//! above the token values: files under `store/` use the token values (`crate::{id, record,
//! scope, secret}`, and `format`, `base62`, `name`, `scheme`, `clock` if they need them) and
//! `crate::store`, never the verifier, the issuer, the errors of the core, the HTTP layer or
//! the plug-ins.

mod cache;
mod memory;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) mod sql;

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use cache::{CacheInvalidator, CachedStore, CachedStoreBuilder};
pub use memory::MemoryStore;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use sql::{
    InvalidIdentifier, NaiveTimeZone, SanctumStore, SanctumStoreBuilder, UnknownTimeZone,
};
#[cfg(feature = "postgres")]
pub use sql::{PostgresStore, PostgresStoreBuilder};
#[cfg(feature = "sqlite")]
pub use sql::{SqliteStore, SqliteStoreBuilder};

use crate::id::TokenId;
use crate::record::{Owner, TokenRecord};
use crate::secret::SecretHash;

/// The first entry of `table` at or after the bucket `hash` maps to, looking at most 64
/// buckets (a table is at least about 44 % full once it holds anything, so nearly always
/// within a few); `None` for a table with nothing there. For a miss to touch a real entry's
/// memory as a hit does: `MemoryStore`'s lookups and the verifier's last-use balance.
pub(crate) fn nearest_entry<T>(table: &hashbrown::HashTable<T>, hash: u64) -> Option<&T> {
    if table.is_empty() {
        return None;
    }
    // A power of two, so a mask, not a division, wraps the index: a division in this loop
    // made an unknown id 20 to 50 ns dearer than a wrong secret (`benches/timing.rs`).
    let mask = table.num_buckets() - 1;
    // The low bits pick the bucket, as in the table's own probe.
    let start = hash as usize & mask;
    (0..=mask.min(63)).find_map(|step| table.get_bucket((start + step) & mask))
}

/// A record and the hash of its secret, as a store returns them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoredToken {
    /// The record. Shared, so a store or cache can hand it out without copying.
    pub record: Arc<TokenRecord>,
    /// The stored hash of the secret.
    pub hash: SecretHash,
}

impl StoredToken {
    /// Pairs a record with its hash.
    pub fn new(record: impl Into<Arc<TokenRecord>>, hash: SecretHash) -> Self {
        Self {
            record: record.into(),
            hash,
        }
    }
}

/// Storage for token records.
///
/// See the [module documentation](self) for the contract every implementation keeps.
///
/// ```
/// use apitoken::{MemoryStore, Owner, SecretHasher, TokenId, TokenRecord, TokenStore};
/// use chrono::Utc;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let id = store.next_id().await?;
/// let record = TokenRecord::new(id, Owner::new("team-1")?, "CI", Utc::now());
/// store.insert(record, SecretHasher::sha256().hash(b"secret")).await?;
/// assert!(store.get(&id).await?.is_some());
/// assert!(store.revoke(&id, Utc::now()).await?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub trait TokenStore: Send + Sync {
    /// Stores a new record with the hash of its secret. Fails with
    /// [`StoreErrorKind::Conflict`] if the id or the hash is already present.
    fn insert(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores a new record only if its owner has no record yet (revoked and expired ones
    /// count), atomically against other `insert_first` calls and inserts for that owner: of
    /// replicas bootstrapping the same owner at once, exactly one gets `true`. Returns
    /// whether it stored the record. Used by
    /// [`Issuer::issue_first`](crate::Issuer::issue_first).
    ///
    /// The default refuses with [`StoreErrorKind::Unsupported`]: a check followed by an
    /// insert would let two bootstraps both win.
    fn insert_first(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = (record, hash);
        std::future::ready(Err(StoreError::unsupported(
            "this store cannot insert a first token atomically",
        )))
    }

    /// Allocates a fresh numeric id, for formats whose ids are
    /// [`IdKind::Numeric`](crate::IdKind::Numeric). Stores without a sequence keep the default,
    /// which answers [`StoreErrorKind::Unsupported`].
    fn next_id(&self) -> impl Future<Output = Result<TokenId, StoreError>> + Send {
        std::future::ready(Err(StoreError::unsupported(
            "this store does not allocate numeric ids",
        )))
    }

    /// The record with this id, revoked and expired ones included.
    fn get(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send;

    /// The record with this id as the backing store holds it now, past any cache: for a
    /// decision that must not rest on an answer cached before a revocation elsewhere (the
    /// management API's check that its caller was not revoked while it minted). Default:
    /// [`get`](Self::get); a caching wrapper asks the store it wraps.
    fn get_current(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        self.get(id)
    }

    /// The record whose secret has this hash, for formats that carry no id.
    fn find_by_hash(
        &self,
        hash: &SecretHash,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send;

    /// Every record of an owner, revoked ones included, oldest first.
    fn list_by_owner(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send;

    /// Revokes one token at `at`. Returns `true` if it existed and was not yet revoked.
    fn revoke(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Revokes every token of an owner that is not yet revoked. Returns how many.
    fn revoke_owner(
        &self,
        owner: &Owner,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Sets `last_used_at` to `at` unless it is already later. An unknown id is not an error.
    fn record_last_used(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces the active token `old` with `new` (stored with `hash`): `new` is inserted and
    /// `old` retired as `retire` says, both or neither. Returns `false`, storing nothing, if
    /// `old` does not exist or is revoked. The SQL stores do it in one transaction. The
    /// default answers [`StoreErrorKind::Unsupported`].
    fn rotate(
        &self,
        old: &TokenId,
        retire: Retire,
        new: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = (old, retire, new, hash);
        std::future::ready(Err(StoreError::unsupported(
            "this store does not rotate tokens",
        )))
    }

    /// [`record_last_used`](Self::record_last_used) for many tokens at once, as a buffered
    /// last-use tracker flushes them. The default makes one call per entry; SQL stores write
    /// the batch in one statement.
    fn record_last_used_batch(
        &self,
        batch: &[(TokenId, DateTime<Utc>)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            for (id, at) in batch {
                self.record_last_used(id, *at).await?;
            }
            Ok(())
        }
    }

    /// Deletes the records that expired at or before `before` and whose metadata has the
    /// top-level key `marker` (a plain name: letters, digits, `_`), returning how many went.
    /// OAuth uses it to forget expired access tokens (`marker` `"oauth"`), which are
    /// short-lived and many; API keys are never matched unless they carry the marker. The
    /// default deletes nothing and returns 0.
    fn remove_expired(
        &self,
        before: DateTime<Utc>,
        marker: &str,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let _ = (before, marker);
        std::future::ready(Ok(0))
    }
}

/// Whether `marker` is a plain name, as [`TokenStore::remove_expired`] takes.
pub(crate) fn is_plain_marker(marker: &str) -> bool {
    !marker.is_empty()
        && marker
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl<S: TokenStore + ?Sized> TokenStore for Arc<S> {
    fn insert(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).insert(record, hash)
    }

    fn insert_first(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).insert_first(record, hash)
    }

    fn next_id(&self) -> impl Future<Output = Result<TokenId, StoreError>> + Send {
        (**self).next_id()
    }

    fn get(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        (**self).get(id)
    }

    fn get_current(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        (**self).get_current(id)
    }

    fn find_by_hash(
        &self,
        hash: &SecretHash,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        (**self).find_by_hash(hash)
    }

    fn list_by_owner(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
        (**self).list_by_owner(owner)
    }

    fn revoke(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).revoke(id, at)
    }

    fn revoke_owner(
        &self,
        owner: &Owner,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        (**self).revoke_owner(owner, at)
    }

    fn record_last_used(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).record_last_used(id, at)
    }

    fn record_last_used_batch(
        &self,
        batch: &[(TokenId, DateTime<Utc>)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).record_last_used_batch(batch)
    }

    fn remove_expired(
        &self,
        before: DateTime<Utc>,
        marker: &str,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        (**self).remove_expired(before, marker)
    }

    fn rotate(
        &self,
        old: &TokenId,
        retire: Retire,
        new: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).rotate(old, retire, new, hash)
    }
}

/// How a rotated-out token stops working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retire {
    /// Revoked at this time: no grace period.
    RevokeAt(DateTime<Utc>),
    /// Valid until this time (or its own earlier `expires_at`), then expired: the grace
    /// period in which clients switch to the new token.
    ExpireAt(DateTime<Utc>),
}

impl Retire {
    /// `record` as retired.
    pub fn apply(self, record: &TokenRecord) -> TokenRecord {
        let mut retired = record.clone();
        match self {
            Retire::RevokeAt(at) => retired.revoked_at = Some(at),
            Retire::ExpireAt(at) => {
                retired.expires_at = Some(record.expires_at.map_or(at, |own| own.min(at)));
            }
        }
        retired
    }
}

/// A change another process made to a store, reported by a store's change feed (for example
/// `PostgresStore::spawn_change_listener`, feature `postgres`) so that caches can drop what
/// they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreChange {
    /// The token with this id was issued, revoked or deleted.
    Token(TokenId),
    /// Changes may have been missed (the feed reconnected): drop everything cached.
    Unknown,
}

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store could not be reached or did not answer in time. Verification fails closed.
    Unavailable,
    /// The id or secret hash of an inserted record already exists.
    Conflict,
    /// The store does not support this operation.
    Unsupported,
    /// The store answered with data that is not a valid record.
    Corrupt,
    /// The stored tables are not in a form this build can use: a newer schema version, or
    /// a table that was not made by this crate (a missing column, another type). Nothing was
    /// changed.
    Schema,
    /// The database refused for lack of a privilege (for example `CREATE` on the schema, or
    /// ownership of the table, which a migration needs).
    PermissionDenied,
    /// The store's configuration is wrong and retrying will not help: a malformed
    /// connection URL, credentials the database refuses, a database that does not exist.
    /// Verification fails closed on it as on any store error.
    Configuration,
}

/// An error from a [`TokenStore`]: a kind for callers to act on, and the store's own error as
/// the [`source`](StdError::source).
///
/// "Not found" is not an error: lookups return `Ok(None)`.
///
/// ```
/// use apitoken::{StoreError, StoreErrorKind};
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
/// let err = StoreError::unavailable(io);
/// assert_eq!(err.kind(), StoreErrorKind::Unavailable);
/// assert!(std::error::Error::source(&err).is_some());
/// ```
pub struct StoreError {
    kind: StoreErrorKind,
    message: &'static str,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl StoreError {
    /// The store could not answer; `source` is its own error.
    pub fn unavailable(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::with_source(
            StoreErrorKind::Unavailable,
            "token store unavailable",
            source,
        )
    }

    /// An inserted id or hash already exists.
    pub fn conflict(message: &'static str) -> Self {
        Self::new(StoreErrorKind::Conflict, message)
    }

    /// The operation is not supported by this store.
    pub fn unsupported(message: &'static str) -> Self {
        Self::new(StoreErrorKind::Unsupported, message)
    }

    /// The store returned data that is not a valid record; `source` says why.
    pub fn corrupt(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::with_source(
            StoreErrorKind::Corrupt,
            "token store returned an invalid record",
            source,
        )
    }

    /// An error of any kind with a fixed message.
    pub fn new(kind: StoreErrorKind, message: &'static str) -> Self {
        Self {
            kind,
            message,
            source: None,
        }
    }

    /// An error of any kind with a fixed message and the store's own error.
    pub fn with_source(
        kind: StoreErrorKind,
        message: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            kind,
            message,
            source: Some(source.into()),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
