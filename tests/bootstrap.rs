//! `Issuer::issue_first`: of bootstraps started together (replicas each making the first
//! admin key at start-up), exactly one issues a token, on every store that supports it.

#[path = "support/stores.rs"]
mod stores;

use std::sync::Arc;

use apitoken::{CachedStore, MemoryStore, NewToken, Owner, StoreErrorKind, TokenStore, Verifier};

/// Eight bootstraps of one owner at once, released together by a barrier.
async fn exactly_one_wins<S: TokenStore + Clone + 'static>(store: S) {
    for round in 0..5 {
        let owner = Owner::new(&format!("admin-{round}")).unwrap();
        let verifier = Verifier::builder(store.clone()).disable_last_used().build();
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..8 {
            let verifier = verifier.clone();
            let barrier = Arc::clone(&barrier);
            let owner = owner.clone();
            tasks.spawn(async move {
                barrier.wait().await;
                verifier
                    .issuer()
                    .issue_first(NewToken::new(format!("bootstrap {n}"), owner))
                    .await
                    .expect("no store error")
            });
        }
        let issued: Vec<_> = tasks.join_all().await.into_iter().flatten().collect();
        assert_eq!(issued.len(), 1, "round {round}: winners");
        let listed = store.list_by_owner(&owner).await.unwrap();
        assert_eq!(
            listed.len(),
            1,
            "round {round}: nothing left behind by the losers"
        );
        assert_eq!(listed[0].id, issued[0].record.id);
        // Once the owner has a token, even a revoked one, there is no second first token.
        store
            .revoke(&listed[0].id, chrono::Utc::now())
            .await
            .unwrap();
        let again = verifier
            .issuer()
            .issue_first(NewToken::new("late", owner.clone()))
            .await
            .unwrap();
        assert!(again.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    exactly_one_wins(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_memory() {
    exactly_one_wins(Arc::new(CachedStore::new(MemoryStore::new()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    exactly_one_wins(stores::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    exactly_one_wins(stores::postgres(&url).await).await;
}

/// A store without an atomic first insert says so rather than race.
#[tokio::test]
async fn a_store_without_it_refuses_clearly() {
    #[derive(Clone)]
    struct Plain(Arc<MemoryStore>);
    impl TokenStore for Plain {
        fn insert(
            &self,
            record: apitoken::TokenRecord,
            hash: apitoken::SecretHash,
        ) -> impl std::future::Future<Output = Result<(), apitoken::StoreError>> + Send {
            self.0.insert(record, hash)
        }
        fn get(
            &self,
            id: &apitoken::TokenId,
        ) -> impl std::future::Future<
            Output = Result<Option<apitoken::StoredToken>, apitoken::StoreError>,
        > + Send {
            self.0.get(id)
        }
        fn find_by_hash(
            &self,
            hash: &apitoken::SecretHash,
        ) -> impl std::future::Future<
            Output = Result<Option<apitoken::StoredToken>, apitoken::StoreError>,
        > + Send {
            self.0.find_by_hash(hash)
        }
        fn list_by_owner(
            &self,
            owner: &Owner,
        ) -> impl std::future::Future<
            Output = Result<Vec<apitoken::TokenRecord>, apitoken::StoreError>,
        > + Send {
            self.0.list_by_owner(owner)
        }
        fn revoke(
            &self,
            id: &apitoken::TokenId,
            at: chrono::DateTime<chrono::Utc>,
        ) -> impl std::future::Future<Output = Result<bool, apitoken::StoreError>> + Send {
            self.0.revoke(id, at)
        }
        fn revoke_owner(
            &self,
            owner: &Owner,
            at: chrono::DateTime<chrono::Utc>,
        ) -> impl std::future::Future<Output = Result<usize, apitoken::StoreError>> + Send {
            self.0.revoke_owner(owner, at)
        }
        fn record_last_used(
            &self,
            id: &apitoken::TokenId,
            at: chrono::DateTime<chrono::Utc>,
        ) -> impl std::future::Future<Output = Result<(), apitoken::StoreError>> + Send {
            self.0.record_last_used(id, at)
        }
        fn rotate(
            &self,
            old: &apitoken::TokenId,
            retire: apitoken::Retire,
            new: apitoken::TokenRecord,
            hash: apitoken::SecretHash,
        ) -> impl std::future::Future<Output = Result<bool, apitoken::StoreError>> + Send {
            self.0.rotate(old, retire, new, hash)
        }
    }
    let verifier = Verifier::builder(Plain(Arc::default())).build();
    let err = verifier
        .issuer()
        .issue_first(NewToken::new("b", Owner::new("admin").unwrap()))
        .await
        .unwrap_err();
    match err {
        apitoken::IssueError::Store(err) => assert_eq!(err.kind(), StoreErrorKind::Unsupported),
        other => panic!("{other:?}"),
    }
}
