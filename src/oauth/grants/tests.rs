//! Unit tests of the parent module.

use std::future::Future as _;

use chrono::{TimeDelta, TimeZone};

use super::*;
use crate::secret::SecretHasher;

fn id(text: &str) -> TokenId {
    text.parse().unwrap()
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn refresh(text: &str, at: DateTime<Utc>) -> RefreshTokenRecord {
    RefreshTokenRecord::new(
        id(text),
        id("fam"),
        SecretHasher::sha256().hash(text.as_bytes()),
        at,
    )
}

async fn store_with_family() -> MemoryGrantStore {
    let store = MemoryGrantStore::new();
    let family = GrantFamily::new(
        id("fam"),
        id("client"),
        Owner::new("user").unwrap(),
        ScopeSet::parse("db:read").unwrap(),
        now(),
    );
    store
        .insert_family(family, refresh("rt1", now()))
        .await
        .unwrap();
    store
}

#[tokio::test]
async fn rotation_uses_a_token_once_and_notes_the_access_token() {
    let store = store_with_family().await;
    let access = (id("at1"), now() + TimeDelta::hours(1));
    assert!(
        store
            .rotate_refresh(&id("rt1"), refresh("rt2", now()), access, now())
            .await
            .unwrap()
    );
    assert!(
        !store
            .rotate_refresh(&id("rt1"), refresh("rt3", now()), access, now())
            .await
            .unwrap()
    );
    assert!(store.refresh_token(&id("rt3")).await.unwrap().is_none());
    assert_eq!(
        store
            .refresh_token(&id("rt1"))
            .await
            .unwrap()
            .unwrap()
            .used_at,
        Some(now())
    );
    let family = store.family(&id("fam")).await.unwrap().unwrap();
    assert_eq!(family.access_tokens, vec![access]);
}

#[tokio::test]
async fn a_revoked_family_rotates_no_more() {
    let store = store_with_family().await;
    let revoked = store
        .revoke_family(&id("fam"), now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(now()));
    let access = (id("at1"), now() + TimeDelta::hours(1));
    assert!(
        !store
            .rotate_refresh(&id("rt1"), refresh("rt2", now()), access, now())
            .await
            .unwrap()
    );
    assert!(
        store
            .revoke_family(&id("nofam"), now())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn expired_access_tokens_are_forgotten_as_new_ones_are_noted() {
    let mut family = GrantFamily::new(
        id("f"),
        id("c"),
        Owner::new("u").unwrap(),
        ScopeSet::new(),
        now(),
    );
    family.add_access_token(id("a1"), now() + TimeDelta::hours(1), now());
    family.add_access_token(
        id("a2"),
        now() + TimeDelta::hours(2),
        now() + TimeDelta::hours(1),
    );
    assert_eq!(
        family.access_tokens,
        vec![(id("a2"), now() + TimeDelta::hours(2))]
    );
}

#[tokio::test]
async fn a_code_is_redeemed_once_and_stores_its_family() {
    let store = MemoryGrantStore::new();
    let code = AuthorizationCodeRecord {
        id: id("code"),
        hash: SecretHasher::sha256().hash(b"c"),
        client_id: id("client"),
        redirect_uri: "https://a.example/cb".into(),
        code_challenge: "x".repeat(43),
        owner: Owner::new("user").unwrap(),
        scopes: ScopeSet::new(),
        family: id("fam"),
        created_at: now(),
        expires_at: now() + TimeDelta::seconds(60),
        used_at: None,
    };
    store.insert_code(code.clone()).await.unwrap();
    assert!(store.insert_code(code).await.is_err());
    let family = |name: &str| {
        GrantFamily::new(
            id(name),
            id("client"),
            Owner::new("user").unwrap(),
            ScopeSet::new(),
            now(),
        )
    };
    assert!(
        store
            .redeem_code(&id("code"), now(), family("fam"), None)
            .await
            .unwrap()
    );
    assert!(store.family(&id("fam")).await.unwrap().is_some());
    assert!(
        !store
            .redeem_code(&id("code"), now(), family("fam2"), None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .redeem_code(&id("other"), now(), family("fam3"), None)
            .await
            .unwrap()
    );
    assert!(store.family(&id("fam2")).await.unwrap().is_none());
    assert!(store.family(&id("fam3")).await.unwrap().is_none());
}

#[tokio::test]
async fn purge_keeps_a_live_familys_rotated_tokens() {
    let store = store_with_family().await;
    let later = now() + TimeDelta::days(20);
    let access = (id("at1"), later + TimeDelta::hours(1));
    assert!(
        store
            .rotate_refresh(&id("rt1"), refresh("rt2", later), access, later)
            .await
            .unwrap()
    );
    // rt1 is older than the cut-off, but its family is alive: kept, so its reuse is seen.
    let cut = now() + TimeDelta::days(10);
    assert_eq!(store.purge(later, cut).await.unwrap(), 0);
    assert!(store.refresh_token(&id("rt1")).await.unwrap().is_some());
    // Once the newest token is past the cut-off, the family goes whole, but not while an
    // access token it issued still works (a replayed code or a reuse must reach it).
    let past = later + TimeDelta::seconds(1);
    assert_eq!(store.purge(later, past).await.unwrap(), 0);
    let removed = store
        .purge(later + TimeDelta::hours(1), past)
        .await
        .unwrap();
    assert_eq!(removed, 3);
    assert!(store.family(&id("fam")).await.unwrap().is_none());
}

#[tokio::test]
async fn purge_lets_go_of_the_lock_between_chunks() {
    let store = MemoryGrantStore::new();
    let total = 3 * PURGE_CHUNK + 5;
    for n in 0..total {
        let code = AuthorizationCodeRecord::new(
            TokenId::new(&format!("code{n}")).unwrap(),
            SecretHasher::sha256().hash(b"c"),
            id("client"),
            "https://a.example/cb".into(),
            "x".repeat(43),
            Owner::new("user").unwrap(),
            ScopeSet::new(),
            id("fam"),
            now(),
            now() + TimeDelta::seconds(60),
        );
        store.insert_code(code).await.unwrap();
    }
    let later = now() + TimeDelta::hours(1);
    let mut purge = std::pin::pin!(store.purge(later, later));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // The first poll does one chunk and yields, the lock free for others meanwhile.
    assert!(purge.as_mut().poll(&mut cx).is_pending());
    assert!(store.state.try_lock().is_some());
    let left = store.with(|s| s.codes.len());
    assert_eq!(left, total - PURGE_CHUNK);
    let removed = loop {
        if let std::task::Poll::Ready(removed) = purge.as_mut().poll(&mut cx) {
            break removed.unwrap();
        }
    };
    assert_eq!(removed, total);
    assert_eq!(store.with(|s| s.codes.len()), 0);
}

#[tokio::test]
async fn purge_chunks_resume_where_they_stopped_and_keep_the_living() {
    let store = MemoryGrantStore::new();
    // Live and dead families interleaved over several chunks.
    let total = 2 * PURGE_CHUNK + 7;
    for n in 0..total {
        let fam = TokenId::new(&format!("f{n:06}")).unwrap();
        let at = if n % 3 == 0 {
            now() + TimeDelta::days(30)
        } else {
            now()
        };
        let family = GrantFamily::new(fam, id("c"), Owner::new("u").unwrap(), ScopeSet::new(), at);
        let token = RefreshTokenRecord::new(
            TokenId::new(&format!("r{n:06}")).unwrap(),
            fam,
            SecretHasher::sha256().hash(b"r"),
            at,
        );
        store.insert_family(family, token).await.unwrap();
    }
    let cut = now() + TimeDelta::days(10);
    let removed = store.purge(cut, cut).await.unwrap();
    let live = (0..total).filter(|n| n % 3 == 0).count();
    assert_eq!(removed, 2 * (total - live));
    for n in 0..total {
        let fam = TokenId::new(&format!("f{n:06}")).unwrap();
        let kept = store.family(&fam).await.unwrap().is_some();
        assert_eq!(kept, n % 3 == 0, "family {n}");
    }
}
