//! Revocation through the verifier: the store's `revoke` and `revoke_owner` at the verifier's
//! time, so callers need neither the `TokenStore` trait in scope nor a clock of their own.
//! Part of the core; uses only the store and token values.

use crate::id::TokenId;
use crate::record::Owner;
use crate::store::{StoreError, TokenStore};

use super::Verifier;

impl<S: TokenStore> Verifier<S> {
    /// Revokes the token `id` now (by the verifier's clock), as Sanctum's `$token->delete()`.
    /// `Ok(true)` if it existed and was not yet revoked; `Ok(false)` for an unknown or already
    /// revoked id, so revoking twice is harmless. The next verification refuses it
    /// (`RejectReason::Revoked`); with a [`CachedStore`](crate::CachedStore) in front, at once
    /// on this instance and within the cache's TTL on others without an invalidation feed.
    ///
    /// ```
    /// use apitoken::{AuthErrorKind, MemoryStore, NewToken, Owner, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let issued = verifier.issuer().issue(NewToken::new("ci", Owner::new("team-1")?)).await?;
    ///
    /// assert!(verifier.revoke(&issued.record.id).await?);
    /// assert!(!verifier.revoke(&issued.record.id).await?, "already revoked");
    /// let refused = verifier.authenticate(issued.token.expose_secret()).await.unwrap_err();
    /// assert_eq!(refused.kind(), AuthErrorKind::InvalidToken);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn revoke(&self, id: &TokenId) -> Result<bool, StoreError> {
        self.store().revoke(id, self.now()).await
    }

    /// Revokes every token of `owner` that is not yet revoked, now, as Sanctum's
    /// `$user->tokens()->delete()`: what to do when a user leaves or an account is
    /// compromised. Returns how many it revoked.
    ///
    /// ```
    /// use apitoken::{MemoryStore, NewToken, Owner, Verifier};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let verifier = Verifier::builder(MemoryStore::new()).build();
    /// let alice = Owner::new("user:alice")?;
    /// let laptop = verifier.issuer().issue(NewToken::new("laptop", alice.clone())).await?;
    /// let ci = verifier.issuer().issue(NewToken::new("ci", alice.clone())).await?;
    /// let bob = verifier.issuer().issue(NewToken::new("ci", Owner::new("user:bob")?)).await?;
    ///
    /// assert_eq!(verifier.revoke_owner(&alice).await?, 2);
    /// assert!(verifier.authenticate(laptop.token.expose_secret()).await.is_err());
    /// assert!(verifier.authenticate(ci.token.expose_secret()).await.is_err());
    /// assert!(verifier.authenticate(bob.token.expose_secret()).await.is_ok());
    /// assert_eq!(verifier.revoke_owner(&alice).await?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn revoke_owner(&self, owner: &Owner) -> Result<usize, StoreError> {
        self.store().revoke_owner(owner, self.now()).await
    }
}
