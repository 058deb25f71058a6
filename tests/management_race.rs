//! "Revoke all" means all: a token being minted while its team's tokens are revoked does not
//! survive, even when the revocation lands between the caller's verification and the insert.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use apitoken::management::TokenApi;
use apitoken::middleware::AuthLayer;
use apitoken::{
    MemoryStore, NewToken, Owner, SecretHash, StoreError, StoredToken, TokenId, TokenRecord,
    TokenStore, Verifier,
};
use axum::Router;
use axum::body::Body;
use chrono::{DateTime, Utc};
use http::{Request, StatusCode};
use tokio::sync::Notify;
use tower::ServiceExt;

/// A store whose next insert stops half-way until the test lets it go on.
#[derive(Default)]
struct Gate {
    inner: MemoryStore,
    armed: AtomicBool,
    reached: Notify,
    release: Notify,
}

impl TokenStore for Gate {
    async fn insert(&self, record: TokenRecord, hash: SecretHash) -> Result<(), StoreError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            self.release.notified().await;
        }
        self.inner.insert(record, hash).await
    }
    fn next_id(&self) -> impl Future<Output = Result<TokenId, StoreError>> + Send {
        self.inner.next_id()
    }
    fn get(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        self.inner.get(id)
    }
    fn find_by_hash(
        &self,
        hash: &SecretHash,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
        self.inner.find_by_hash(hash)
    }
    fn list_by_owner(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
        self.inner.list_by_owner(owner)
    }
    fn revoke(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.inner.revoke(id, at)
    }
    fn revoke_owner(
        &self,
        owner: &Owner,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        self.inner.revoke_owner(owner, at)
    }
    fn record_last_used(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.record_last_used(id, at)
    }
}

#[tokio::test]
async fn a_token_minted_during_revoke_all_does_not_survive() {
    let gate = Arc::new(Gate::default());
    let verifier = Verifier::builder(Arc::clone(&gate)).build();
    let team = Owner::new("team-1").unwrap();
    let stolen = verifier
        .issuer()
        .issue(
            NewToken::new("stolen", team.clone())
                .scopes(["tokens:write"])
                .unwrap(),
        )
        .await
        .unwrap();
    let app = Router::new()
        .nest("/tokens", TokenApi::new(verifier.clone()).router())
        .layer(AuthLayer::new(verifier.clone()));

    gate.armed.store(true, Ordering::SeqCst);
    let request = Request::post("/tokens")
        .header(
            "authorization",
            format!("Bearer {}", stolen.token.expose_secret()),
        )
        .header("content-type", "application/json")
        .body(Body::from(r#"{"name":"backdoor"}"#))
        .unwrap();
    let create = tokio::spawn(app.oneshot(request));
    gate.reached.notified().await;
    // The admin revokes everything of the team while the insert is in flight.
    assert_eq!(
        verifier
            .store()
            .revoke_owner(&team, verifier.now())
            .await
            .unwrap(),
        1
    );
    gate.release.notify_one();

    let response = create.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let records = verifier.store().list_by_owner(&team).await.unwrap();
    assert_eq!(
        records.len(),
        2,
        "the stolen token and the one minted with it"
    );
    assert!(records.iter().all(TokenRecord::is_revoked), "{records:#?}");
}
