//! A token row between the driver and the record: [`TokenColumns`], its values as read, and
//! [`Key`], what a single-row lookup is by. Shared by the pool's reads (`tokens.rs`) and the
//! direct reads of SQLite (`sqlite.rs`). Uses the token values and `crate::store` only.

use chrono::{DateTime, Utc};

use super::{Driver, Query};
use crate::id::TokenId;
use crate::record::TokenRecord;
use crate::secret::SecretHash;
use crate::store::{StoreError, StoreErrorKind, StoredToken};

/// What a single-row lookup is by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Key<'a> {
    /// `TokenTable::get`: the row with this id, read as [`super::row_or_next`] says.
    Id(&'a TokenId),
    /// `TokenTable::find_by_hash`: the row with this secret hash.
    Hash(&'a SecretHash),
}

impl Key<'_> {
    /// Binds the key to the pool's query.
    pub(crate) fn bind<DB: Driver>(self, query: Query<DB>) -> Query<DB> {
        match self {
            Key::Id(id) => DB::text(query, id.as_str()),
            Key::Hash(hash) => DB::bytes(query, hash.as_bytes()),
        }
    }
}

/// A token row's values as a driver read them, before they are checked.
#[derive(Debug)]
pub(crate) struct TokenColumns {
    pub(crate) id: String,
    pub(crate) secret_hash: Vec<u8>,
    pub(crate) name: String,
    pub(crate) owner: String,
    pub(crate) scopes: String,
    pub(crate) metadata: serde_json::Value,
    pub(crate) created_at: Option<DateTime<Utc>>,
    pub(crate) last_used_at: Option<DateTime<Utc>>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    pub(crate) revoked_at: Option<DateTime<Utc>>,
    pub(crate) allowed_ips: String,
}

impl TokenColumns {
    /// The stored token, every value checked; a value no token can have is
    /// [`StoreErrorKind::Corrupt`].
    pub(crate) fn check(self) -> Result<StoredToken, StoreError> {
        let created_at = self.created_at.ok_or_else(|| {
            StoreError::new(StoreErrorKind::Corrupt, "a stored token has no created_at")
        })?;
        let mut record = TokenRecord::new(
            super::token_id(&self.id)?,
            super::owner(&self.owner)?,
            self.name,
            created_at,
        );
        record.scopes = super::scopes(&self.scopes)?;
        record.metadata = super::metadata(self.metadata)?;
        record.last_used_at = self.last_used_at;
        record.expires_at = self.expires_at;
        record.revoked_at = self.revoked_at;
        record.allowed_ips = super::networks(&self.allowed_ips)?;
        let hash = super::secret_hash(&self.secret_hash)?;
        Ok(StoredToken::new(record, hash))
    }
}
