//! [`token_store_on_table!`]: the [`TokenStore`](crate::store::TokenStore) implementation of
//! a public SQL store, each call handed to its `TokenTable` (`tokens.rs`). Uses
//! `crate::store` only.

/// Implements [`TokenStore`](crate::store::TokenStore) for a public store whose `table`
/// field is a `TokenTable`, handing every call to it.
macro_rules! token_store_on_table {
    ($store:ty) => {
        impl $crate::store::TokenStore for $store {
            fn insert(
                &self,
                record: $crate::record::TokenRecord,
                hash: $crate::secret::SecretHash,
            ) -> impl ::std::future::Future<Output = Result<(), $crate::store::StoreError>> + Send
            {
                self.table.insert(record, hash)
            }

            fn insert_first(
                &self,
                record: $crate::record::TokenRecord,
                hash: $crate::secret::SecretHash,
            ) -> impl ::std::future::Future<Output = Result<bool, $crate::store::StoreError>> + Send
            {
                self.table.insert_first(record, hash)
            }

            fn next_id(
                &self,
            ) -> impl ::std::future::Future<
                Output = Result<$crate::id::TokenId, $crate::store::StoreError>,
            > + Send {
                self.table.next_id()
            }

            fn get(
                &self,
                id: &$crate::id::TokenId,
            ) -> impl ::std::future::Future<
                Output = Result<Option<$crate::store::StoredToken>, $crate::store::StoreError>,
            > + Send {
                self.table.get(id)
            }

            fn find_by_hash(
                &self,
                hash: &$crate::secret::SecretHash,
            ) -> impl ::std::future::Future<
                Output = Result<Option<$crate::store::StoredToken>, $crate::store::StoreError>,
            > + Send {
                self.table.find_by_hash(hash)
            }

            fn list_by_owner(
                &self,
                owner: &$crate::record::Owner,
            ) -> impl ::std::future::Future<
                Output = Result<Vec<$crate::record::TokenRecord>, $crate::store::StoreError>,
            > + Send {
                self.table.list_by_owner(owner)
            }

            fn revoke(
                &self,
                id: &$crate::id::TokenId,
                at: ::chrono::DateTime<::chrono::Utc>,
            ) -> impl ::std::future::Future<Output = Result<bool, $crate::store::StoreError>> + Send
            {
                self.table.revoke(id, at)
            }

            fn revoke_owner(
                &self,
                owner: &$crate::record::Owner,
                at: ::chrono::DateTime<::chrono::Utc>,
            ) -> impl ::std::future::Future<Output = Result<usize, $crate::store::StoreError>> + Send
            {
                self.table.revoke_owner(owner, at)
            }

            fn record_last_used(
                &self,
                id: &$crate::id::TokenId,
                at: ::chrono::DateTime<::chrono::Utc>,
            ) -> impl ::std::future::Future<Output = Result<(), $crate::store::StoreError>> + Send
            {
                self.table.record_last_used(id, at)
            }

            fn rotate(
                &self,
                old: &$crate::id::TokenId,
                retire: $crate::store::Retire,
                new: $crate::record::TokenRecord,
                hash: $crate::secret::SecretHash,
            ) -> impl ::std::future::Future<Output = Result<bool, $crate::store::StoreError>> + Send
            {
                self.table.rotate(old, retire, new, hash)
            }

            fn record_last_used_batch(
                &self,
                batch: &[($crate::id::TokenId, ::chrono::DateTime<::chrono::Utc>)],
            ) -> impl ::std::future::Future<Output = Result<(), $crate::store::StoreError>> + Send
            {
                self.table.record_last_used_batch(batch)
            }

            fn remove_expired(
                &self,
                before: ::chrono::DateTime<::chrono::Utc>,
                marker: &str,
            ) -> impl ::std::future::Future<Output = Result<usize, $crate::store::StoreError>> + Send
            {
                self.table.remove_expired(before, marker)
            }
        }
    };
}
pub(crate) use token_store_on_table;
