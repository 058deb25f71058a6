//! A revocation through the cache holds even when the caller gives up half-way: the store
//! commits, the request's future is dropped (a client disconnected, a timeout fired), and the
//! cache must still not serve the revoked token.

use std::future::Future;
use std::time::Duration;

use apitoken::{
    CachedStore, MemoryStore, NewToken, Owner, RejectReason, SecretHash, StoreError, StoredToken,
    TokenId, TokenRecord, TokenStore, Verifier,
};
use chrono::{DateTime, Utc};

/// A store whose revocations commit and then never return.
#[derive(Default)]
struct CommitsThenHangs(MemoryStore);

impl TokenStore for CommitsThenHangs {
    fn insert(
        &self,
        record: TokenRecord,
        hash: SecretHash,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.0.insert(record, hash)
    }
    fn get(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        self.0.get(id)
    }
    fn find_by_hash(
        &self,
        hash: &SecretHash,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        self.0.find_by_hash(hash)
    }
    fn list_by_owner(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
        self.0.list_by_owner(owner)
    }
    async fn revoke(&self, id: &TokenId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        self.0.revoke(id, at).await?;
        std::future::pending().await
    }
    async fn revoke_owner(&self, owner: &Owner, at: DateTime<Utc>) -> Result<usize, StoreError> {
        self.0.revoke_owner(owner, at).await?;
        std::future::pending().await
    }
    fn record_last_used(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.0.record_last_used(id, at)
    }
}

#[tokio::test]
async fn an_abandoned_revoke_still_empties_the_cache() {
    let store = CachedStore::builder(CommitsThenHangs::default())
        .ttl(Duration::from_secs(600))
        .build();
    let verifier = Verifier::builder(store).build();
    let owner = Owner::new("team-1").unwrap();
    let one = verifier
        .issuer()
        .issue(NewToken::new("a", owner.clone()))
        .await
        .unwrap();
    let two = verifier
        .issuer()
        .issue(NewToken::new("b", owner.clone()))
        .await
        .unwrap();
    for token in [&one.token, &two.token] {
        verifier.authenticate(token.expose_secret()).await.unwrap(); // cached
    }

    let abandoned = tokio::time::timeout(
        Duration::from_millis(50),
        verifier.store().revoke(&one.record.id, verifier.now()),
    )
    .await;
    assert!(abandoned.is_err(), "the revoke was given up");
    let err = verifier
        .authenticate(one.token.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Revoked));

    let abandoned = tokio::time::timeout(
        Duration::from_millis(50),
        verifier.store().revoke_owner(&owner, verifier.now()),
    )
    .await;
    assert!(abandoned.is_err());
    let err = verifier
        .authenticate(two.token.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Revoked));
}
