//! Grant state kept outside the [`TokenStore`](crate::TokenStore): refresh-token families and
//! authorization codes.
//!
//! Refresh tokens and codes live here, not in the token store the [`Verifier`](crate::Verifier)
//! reads, so neither can ever verify as an access token or an API key. Both are stored only as
//! the hash of their secret.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::ops::Bound;

use parking_lot::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use crate::id::TokenId;
use crate::record::Owner;
use crate::scope::ScopeSet;
use crate::secret::SecretHash;
use crate::store::StoreError;

/// The grant a refresh-token family came from: every refresh token rotated from one
/// authorization, the scope that authorization granted, and the access tokens issued under it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GrantFamily {
    /// The family's id (not secret).
    pub id: TokenId,
    /// The client the grant was made to; only it may refresh.
    pub client_id: TokenId,
    /// Whom the tokens act for (the user who approved the grant).
    pub owner: Owner,
    /// The scope granted: no refresh token of the family carries more.
    pub scopes: ScopeSet,
    /// When the grant was made. An absolute refresh lifetime counts from here.
    pub created_at: DateTime<Utc>,
    /// When the family was revoked (reuse of a rotated token, a replayed code, RFC 7009).
    pub revoked_at: Option<DateTime<Utc>>,
    /// Access tokens issued under the grant that had not expired when the last one was added:
    /// `(id, expires_at)`. Revoking the family revokes these too.
    pub access_tokens: Vec<(TokenId, DateTime<Utc>)>,
    /// The generation of the family's newest refresh token: 0 for the first, one more at
    /// each rotation. A token of an older generation that the store no longer holds was
    /// rotated, so presenting it is reuse.
    pub generation: u64,
}

impl GrantFamily {
    /// A family with no access tokens yet, not revoked.
    pub fn new(
        id: TokenId,
        client_id: TokenId,
        owner: Owner,
        scopes: ScopeSet,
        created_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            client_id,
            owner,
            scopes,
            created_at,
            revoked_at: None,
            access_tokens: Vec::new(),
            generation: 0,
        }
    }

    /// Notes an access token issued under the grant, forgetting those expired by `now`.
    pub fn add_access_token(&mut self, id: TokenId, expires_at: DateTime<Utc>, now: DateTime<Utc>) {
        self.access_tokens.retain(|(_, end)| *end > now);
        self.access_tokens.push((id, expires_at));
    }
}

/// One refresh token: its hash, its family, and whether it has been used (rotated).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RefreshTokenRecord {
    /// The id in the token text (not secret).
    pub id: TokenId,
    /// The family it belongs to.
    pub family: TokenId,
    /// The hash of its secret.
    pub hash: SecretHash,
    /// When it was issued: the family's last use, for inactivity expiry.
    pub created_at: DateTime<Utc>,
    /// When it was exchanged for a successor. A used token presented again revokes its family.
    pub used_at: Option<DateTime<Utc>>,
    /// Its place in the family: 0 for the first token, one more than its predecessor's.
    pub generation: u64,
}

impl RefreshTokenRecord {
    /// An unused refresh token of generation 0.
    pub fn new(id: TokenId, family: TokenId, hash: SecretHash, created_at: DateTime<Utc>) -> Self {
        Self {
            id,
            family,
            hash,
            created_at,
            used_at: None,
            generation: 0,
        }
    }

    /// The same token with generation `generation`.
    ///
    /// ```
    /// use apitoken::oauth::RefreshTokenRecord;
    /// use apitoken::SecretHasher;
    /// use chrono::Utc;
    ///
    /// let hash = SecretHasher::sha256().hash(b"s");
    /// let record = RefreshTokenRecord::new("rt2".parse()?, "fam".parse()?, hash, Utc::now());
    /// assert_eq!(record.in_generation(1).generation, 1);
    /// # Ok::<(), apitoken::InvalidTokenId>(())
    /// ```
    pub fn in_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }
}

/// One authorization code (RFC 6749 §4.1.2), bound to its client, redirect URI and PKCE
/// challenge (RFC 7636).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AuthorizationCodeRecord {
    /// The id in the code text (not secret).
    pub id: TokenId,
    /// The hash of its secret.
    pub hash: SecretHash,
    /// The client it was issued to.
    pub client_id: TokenId,
    /// The redirect URI of the authorization request, compared exactly on redemption.
    pub redirect_uri: String,
    /// The S256 code challenge.
    pub code_challenge: String,
    /// The user who approved it.
    pub owner: Owner,
    /// The scopes the user approved.
    pub scopes: ScopeSet,
    /// The id the grant family will have once the code is redeemed, so a replayed code can
    /// revoke what it was exchanged for.
    pub family: TokenId,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it stops being redeemable (`expires_at == now` is expired).
    pub expires_at: DateTime<Utc>,
    /// When it was presented for redemption. Codes are single-use.
    pub used_at: Option<DateTime<Utc>>,
}

impl AuthorizationCodeRecord {
    /// An unused code, for stores that read codes back from their own storage.
    #[allow(clippy::too_many_arguments)] // one per column; a builder would only rename them
    pub fn new(
        id: TokenId,
        hash: SecretHash,
        client_id: TokenId,
        redirect_uri: String,
        code_challenge: String,
        owner: Owner,
        scopes: ScopeSet,
        family: TokenId,
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            hash,
            client_id,
            redirect_uri,
            code_challenge,
            owner,
            scopes,
            family,
            created_at,
            expires_at,
            used_at: None,
        }
    }
}

/// Storage for grant state: refresh-token families and authorization codes.
///
/// Like [`TokenStore`](crate::TokenStore), methods return `impl Future + Send`, an error means
/// the store could not answer (the endpoint fails closed with 503), and revoked or used
/// entries are still returned so the endpoint can react to reuse. [`rotate_refresh`] and
/// [`redeem_code`] must be atomic: of two concurrent calls for the same token or code, at
/// most one succeeds.
///
/// [`rotate_refresh`]: Self::rotate_refresh
/// [`redeem_code`]: Self::redeem_code
///
/// ```
/// use apitoken::oauth::{GrantFamily, GrantStore, MemoryGrantStore, RefreshTokenRecord};
/// use apitoken::{Owner, ScopeSet, SecretHasher, TokenId};
/// use chrono::{TimeDelta, Utc};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let grants = MemoryGrantStore::new();
/// let now = Utc::now();
/// let family = GrantFamily::new("fam1".parse()?, "client1".parse()?, Owner::new("u1")?, ScopeSet::parse("db:read")?, now);
/// let first = RefreshTokenRecord::new("rt1".parse()?, family.id, SecretHasher::sha256().hash(b"s1"), now);
/// grants.insert_family(family, first).await?;
///
/// let second = RefreshTokenRecord::new("rt2".parse()?, "fam1".parse()?, SecretHasher::sha256().hash(b"s2"), now);
/// let access = ("at1".parse()?, now + TimeDelta::hours(1));
/// assert!(grants.rotate_refresh(&"rt1".parse()?, second.clone(), access, now).await?);
/// // rt1 is used now: a second rotation from it fails.
/// assert!(!grants.rotate_refresh(&"rt1".parse()?, second, access, now).await?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub trait GrantStore: Send + Sync {
    /// Stores a new family with its first refresh token, as given (the family's
    /// [`generation`](GrantFamily::generation) is the token's).
    fn insert_family(
        &self,
        family: GrantFamily,
        first: RefreshTokenRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The family with this id, revoked ones included.
    fn family(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<GrantFamily>, StoreError>> + Send;

    /// The refresh token with this id, used ones included.
    fn refresh_token(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<RefreshTokenRecord>, StoreError>> + Send;

    /// Marks `old` used at `now`, stores `new` in the same family, sets the family's
    /// [`generation`](GrantFamily::generation) to `new`'s, notes the access token `access`
    /// (`(id, expires_at)`) in the family, and forgets the family's other refresh tokens
    /// except those of generation 0, all or nothing. Returns `false`, changing nothing, if
    /// `old` does not exist, is already used, or its family is revoked.
    ///
    /// A family so holds at most three refresh tokens however often it rotates: the current
    /// one, the one it replaced (whose reuse is checked against its hash), and its first.
    /// Other generations are recognised by the generation in their id. Generation 0 is kept
    /// because tokens issued before ids carried a generation are all generation 0 and their
    /// ids name no family: forgotten, their reuse could not be recognised.
    fn rotate_refresh(
        &self,
        old: &TokenId,
        new: RefreshTokenRecord,
        access: (TokenId, DateTime<Utc>),
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Revokes a family at `at` (its refresh tokens stop working). Returns the family as it
    /// is afterwards, so the caller can revoke its access tokens; `None` if there is none.
    fn revoke_family(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<GrantFamily>, StoreError>> + Send;

    /// Stores a new authorization code.
    fn insert_code(
        &self,
        code: AuthorizationCodeRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The code with this id, used ones included.
    fn code(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<AuthorizationCodeRecord>, StoreError>> + Send;

    /// Marks the code used at `at` and, in the same atomic step, stores `family`: what the
    /// redemption issues (the access token it is about to mint, noted in
    /// [`GrantFamily::access_tokens`], and the first refresh token `first`, if the client gets
    /// one). Returns `true` if this call used the code, `false`, changing nothing, if it was
    /// already used or does not exist.
    ///
    /// One step, so that a replayed code always finds the family of the first redemption and
    /// can revoke what it issued (RFC 6749 §4.1.2), however the two requests interleave. A
    /// redemption that fails its checks stores an empty, revoked family.
    fn redeem_code(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
        family: GrantFamily,
        first: Option<RefreshTokenRecord>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Forgets what can no longer do anything: codes expired at `now`, and families whose
    /// newest refresh token was issued before `refresh_before` (past the inactivity limit;
    /// a family without refresh tokens counts as such) and none of whose noted access tokens
    /// is still unexpired at `now`, with all their refresh tokens. Returns how many entries
    /// were removed. The default removes nothing.
    fn purge(
        &self,
        now: DateTime<Utc>,
        refresh_before: DateTime<Utc>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let _ = (now, refresh_before);
        std::future::ready(Ok(0))
    }
}

/// A shared grant store: the application and the server may hold the same one.
impl<G: GrantStore + ?Sized> GrantStore for std::sync::Arc<G> {
    fn insert_family(
        &self,
        family: GrantFamily,
        first: RefreshTokenRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).insert_family(family, first)
    }

    fn family(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<GrantFamily>, StoreError>> + Send {
        (**self).family(id)
    }

    fn refresh_token(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<RefreshTokenRecord>, StoreError>> + Send {
        (**self).refresh_token(id)
    }

    fn rotate_refresh(
        &self,
        old: &TokenId,
        new: RefreshTokenRecord,
        access: (TokenId, DateTime<Utc>),
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).rotate_refresh(old, new, access, now)
    }

    fn revoke_family(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<GrantFamily>, StoreError>> + Send {
        (**self).revoke_family(id, at)
    }

    fn insert_code(
        &self,
        code: AuthorizationCodeRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).insert_code(code)
    }

    fn code(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<AuthorizationCodeRecord>, StoreError>> + Send {
        (**self).code(id)
    }

    fn redeem_code(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
        family: GrantFamily,
        first: Option<RefreshTokenRecord>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).redeem_code(id, at, family, first)
    }

    fn purge(
        &self,
        now: DateTime<Utc>,
        refresh_before: DateTime<Utc>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        (**self).purge(now, refresh_before)
    }
}

/// A [`GrantStore`] in process memory, for tests and single-instance services. Everything is
/// lost on restart (clients then authorize again).
///
/// Each operation takes one lock for a few map lookups. [`purge`](GrantStore::purge) walks
/// the entries [`PURGE_CHUNK`] at a time, releasing the lock and yielding to the runtime
/// between chunks, so a purge of a million grants never holds up a token request for more
/// than one chunk's work.
///
/// ```
/// use apitoken::oauth::MemoryGrantStore;
/// let grants = MemoryGrantStore::new();
/// # let _ = grants;
/// ```
#[derive(Debug, Default)]
pub struct MemoryGrantStore {
    state: Mutex<State>,
}

/// How many entries [`MemoryGrantStore`]'s purge examines under one hold of its lock.
pub const PURGE_CHUNK: usize = 1024;

#[derive(Debug, Default)]
struct State {
    // Ordered maps, so a purge can resume after the last key it examined.
    families: BTreeMap<TokenId, FamilyEntry>,
    refresh: HashMap<TokenId, RefreshTokenRecord>,
    codes: BTreeMap<TokenId, AuthorizationCodeRecord>,
}

#[derive(Debug)]
struct FamilyEntry {
    family: GrantFamily,
    /// The ids of the family's refresh tokens in `refresh`: generation 0, the one replaced
    /// and the current one.
    tokens: Vec<TokenId>,
}

impl MemoryGrantStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A panic elsewhere while holding the lock leaves the maps consistent: every update
        // below checks first and writes last (parking_lot's lock does not poison).
        f(&mut self.state.lock())
    }

    /// [`with`](Self::with), then hands the lock straight to a waiting thread: between two
    /// purge chunks, a token request blocked on the lock goes first rather than losing the
    /// race to the purge's next chunk every time.
    fn with_then_hand_over<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock();
        let out = f(&mut state);
        MutexGuard::unlock_fair(state);
        out
    }

    /// Removes the entries of `map` after `after` that `dead` picks, examining at most
    /// [`PURGE_CHUNK`]; returns them and the key to resume after (`None` at the end).
    fn purge_chunk<V>(
        map: &mut BTreeMap<TokenId, V>,
        after: Option<TokenId>,
        mut dead: impl FnMut(&V) -> bool,
    ) -> (Vec<V>, Option<TokenId>) {
        let range = match after {
            Some(key) => map.range((Bound::Excluded(key), Bound::Unbounded)),
            None => map.range(..),
        };
        let mut examined = 0;
        let mut last = None;
        let mut doomed = Vec::new();
        for (key, value) in range.take(PURGE_CHUNK) {
            examined += 1;
            last = Some(*key);
            if dead(value) {
                doomed.push(*key);
            }
        }
        let gone = doomed.iter().filter_map(|key| map.remove(key)).collect();
        let next = if examined == PURGE_CHUNK { last } else { None };
        (gone, next)
    }
}

fn conflict() -> StoreError {
    StoreError::conflict("an entry with this id already exists")
}

impl GrantStore for MemoryGrantStore {
    fn insert_family(
        &self,
        family: GrantFamily,
        first: RefreshTokenRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(self.with(|s| {
            if s.families.contains_key(&family.id) || s.refresh.contains_key(&first.id) {
                return Err(conflict());
            }
            let tokens = vec![first.id];
            s.refresh.insert(first.id, first);
            s.families.insert(family.id, FamilyEntry { family, tokens });
            Ok(())
        }))
    }

    fn family(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<GrantFamily>, StoreError>> + Send {
        std::future::ready(Ok(
            self.with(|s| s.families.get(id).map(|e| e.family.clone()))
        ))
    }

    fn refresh_token(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<RefreshTokenRecord>, StoreError>> + Send {
        std::future::ready(Ok(self.with(|s| s.refresh.get(id).cloned())))
    }

    fn rotate_refresh(
        &self,
        old: &TokenId,
        new: RefreshTokenRecord,
        access: (TokenId, DateTime<Utc>),
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        std::future::ready(self.with(|s| {
            let Some(current) = s.refresh.get(old) else {
                return Ok(false);
            };
            let family_id = current.family;
            let family_live = s
                .families
                .get(&family_id)
                .is_some_and(|e| e.family.revoked_at.is_none());
            if current.used_at.is_some() || !family_live || new.family != family_id {
                return Ok(false);
            }
            if s.refresh.contains_key(&new.id) {
                return Err(conflict());
            }
            if let Some(current) = s.refresh.get_mut(old) {
                current.used_at = Some(now);
            }
            let Some(entry) = s.families.get_mut(&family_id) else {
                return Ok(false);
            };
            entry.family.add_access_token(access.0, access.1, now);
            entry.family.generation = new.generation;
            // The token just used, its successor, and generation 0 are kept.
            let mut kept = Vec::with_capacity(3);
            for id in std::mem::take(&mut entry.tokens) {
                let first = s.refresh.get(&id).is_some_and(|rt| rt.generation == 0);
                if id == *old || first {
                    kept.push(id);
                } else {
                    s.refresh.remove(&id);
                }
            }
            kept.push(new.id);
            entry.tokens = kept;
            s.refresh.insert(new.id, new);
            Ok(true)
        }))
    }

    fn revoke_family(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<GrantFamily>, StoreError>> + Send {
        std::future::ready(Ok(self.with(|s| {
            s.families.get_mut(id).map(|entry| {
                entry.family.revoked_at.get_or_insert(at);
                entry.family.clone()
            })
        })))
    }

    fn insert_code(
        &self,
        code: AuthorizationCodeRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(self.with(|s| {
            if s.codes.contains_key(&code.id) {
                return Err(conflict());
            }
            s.codes.insert(code.id, code);
            Ok(())
        }))
    }

    fn code(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<Option<AuthorizationCodeRecord>, StoreError>> + Send {
        std::future::ready(Ok(self.with(|s| s.codes.get(id).cloned())))
    }

    fn redeem_code(
        &self,
        id: &TokenId,
        at: DateTime<Utc>,
        family: GrantFamily,
        first: Option<RefreshTokenRecord>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        std::future::ready(self.with(|s| {
            if s.codes.get(id).is_none_or(|code| code.used_at.is_some()) {
                return Ok(false);
            }
            if s.families.contains_key(&family.id)
                || first
                    .as_ref()
                    .is_some_and(|rt| s.refresh.contains_key(&rt.id))
            {
                return Err(conflict());
            }
            if let Some(code) = s.codes.get_mut(id) {
                code.used_at = Some(at);
            }
            let mut tokens = Vec::new();
            if let Some(first) = first {
                tokens.push(first.id);
                s.refresh.insert(first.id, first);
            }
            s.families.insert(family.id, FamilyEntry { family, tokens });
            Ok(true)
        }))
    }

    async fn purge(
        &self,
        now: DateTime<Utc>,
        refresh_before: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        let mut after = None;
        loop {
            let next = self.with_then_hand_over(|s| {
                let (gone, next) =
                    Self::purge_chunk(&mut s.codes, after, |code| code.expires_at <= now);
                removed += gone.len();
                next
            });
            match next {
                Some(key) => after = Some(key),
                None => break,
            }
            tokio::task::yield_now().await;
        }
        let mut after = None;
        loop {
            let next = self.with_then_hand_over(|s| {
                let refresh = &s.refresh;
                // A family goes only when its newest token is past the limit, so the rotated
                // token of a live family is kept and its reuse still revokes the family. It
                // also stays while an access token it issued may still be used: a replayed
                // code must find it to revoke that token.
                let (gone, next) = Self::purge_chunk(&mut s.families, after, |entry| {
                    let newest = entry
                        .tokens
                        .iter()
                        .filter_map(|id| refresh.get(id))
                        .map(|rt| rt.created_at)
                        .max();
                    newest.is_none_or(|at| at < refresh_before)
                        && entry
                            .family
                            .access_tokens
                            .iter()
                            .all(|(_, end)| *end <= now)
                });
                for entry in gone {
                    removed += 1;
                    for id in entry.tokens {
                        removed += usize::from(s.refresh.remove(&id).is_some());
                    }
                }
                next
            });
            match next {
                Some(key) => after = Some(key),
                None => break,
            }
            tokio::task::yield_now().await;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests;
