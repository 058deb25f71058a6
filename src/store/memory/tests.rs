//! The memory store's unit tests: inserts, lookups, the owner index and the stand-in of a miss.

use super::*;
use crate::secret::SecretHasher;
use crate::store::StoreErrorKind;
use chrono::TimeDelta;

fn block<F: Future>(f: F) -> F::Output {
    // Every MemoryStore future is `ready`: one poll finishes it.
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("MemoryStore future was not ready"),
    }
}

fn record(id: u64, owner: &str) -> TokenRecord {
    TokenRecord::new(
        TokenId::from_u64(id),
        Owner::new(owner).unwrap(),
        "t",
        Utc::now(),
    )
}

fn hash(n: u64) -> SecretHash {
    SecretHasher::sha256().hash(&n.to_le_bytes())
}

#[test]
fn a_miss_touches_one_of_the_stores_own_records_not_one_fixed_entry() {
    let empty = MemoryStore::new();
    let unknown = TokenId::from_u64(1_000_000);
    let shard = read(empty.id_shard(empty.id_hash(&unknown)));
    assert!(crate::store::nearest_entry(&shard, empty.id_hash(&unknown)).is_none());
    drop(shard);

    let store = MemoryStore::with_capacity(10_000);
    for id in 1..=10_000 {
        block(store.insert(record(id, "a"), hash(id))).unwrap();
    }
    let mut touched = HashSet::new();
    for n in 0..200 {
        let unknown = TokenId::from_u64(1_000_000 + n);
        let id_hash = store.id_hash(&unknown);
        let shard = read(store.id_shard(id_hash));
        let stand_in = crate::store::nearest_entry(&shard, id_hash)
            .expect("a shard of 39 records has one near");
        // A record the store holds, in the shard the id would be in.
        assert!((1..=10_000).contains(&stand_in.record.id.as_u64().unwrap()));
        assert!(
            shard
                .find(store.id_hash(&stand_in.record.id), |s| s.record.id
                    == stand_in.record.id)
                .is_some()
        );
        touched.insert(stand_in.record.id);
    }
    // Spread over the store, as hits are: not one warm entry.
    assert!(
        touched.len() > 150,
        "only {} distinct records",
        touched.len()
    );
    assert!(
        block(store.get(&TokenId::from_u64(1_000_000)))
            .unwrap()
            .is_none()
    );
}

#[test]
fn insert_rejects_duplicate_id_and_hash() {
    let store = MemoryStore::new();
    block(store.insert(record(1, "a"), hash(1))).unwrap();
    let dup_id = block(store.insert(record(1, "a"), hash(2))).unwrap_err();
    assert_eq!(dup_id.kind(), StoreErrorKind::Conflict);
    let dup_hash = block(store.insert(record(2, "a"), hash(1))).unwrap_err();
    assert_eq!(dup_hash.kind(), StoreErrorKind::Conflict);
    // The failed inserts left nothing behind.
    assert_eq!(store.len(), 1);
    assert!(block(store.get(&TokenId::from_u64(2))).unwrap().is_none());
    assert_eq!(
        block(store.list_by_owner(&Owner::new("a").unwrap()))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn records_with_equal_scopes_share_one_copy() {
    let store = MemoryStore::new();
    let scoped = |id: u64, scopes: &[&str]| TokenRecord {
        scopes: ScopeSet::try_from_iter(scopes).unwrap(),
        ..record(id, "a")
    };
    block(store.insert(scoped(1, &["vps:read", "vps:write"]), hash(1))).unwrap();
    block(store.insert(scoped(2, &["vps:write", "vps:read"]), hash(2))).unwrap();
    block(store.insert(scoped(3, &["vps:read"]), hash(3))).unwrap();
    let get = |id| {
        block(store.get(&TokenId::from_u64(id)))
            .unwrap()
            .unwrap()
            .record
    };
    assert!(get(1).scopes.is_shared_with(&get(2).scopes));
    assert!(!get(1).scopes.is_shared_with(&get(3).scopes));
    assert_eq!(
        get(3).scopes,
        ScopeSet::try_from_iter(["vps:read"]).unwrap()
    );
}

#[test]
fn find_by_hash_after_removal_and_listing_by_owner() {
    let store = MemoryStore::new();
    for id in 1..=3 {
        block(store.insert(record(id, "a"), hash(id))).unwrap();
    }
    store.remove_now(&TokenId::from_u64(2));
    assert!(block(store.find_by_hash(&hash(2))).unwrap().is_none());
    assert_eq!(
        block(store.find_by_hash(&hash(3)))
            .unwrap()
            .unwrap()
            .record
            .id,
        TokenId::from_u64(3)
    );
    let listed: Vec<TokenId> = block(store.list_by_owner(&Owner::new("a").unwrap()))
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&TokenId::from_u64(1)) && listed.contains(&TokenId::from_u64(3)));
    // The hash of a removed token can be issued again.
    block(store.insert(record(4, "a"), hash(2))).unwrap();
}

#[test]
fn next_id_skips_ids_in_use() {
    let store = MemoryStore::new();
    block(store.insert(record(1, "a"), hash(1))).unwrap();
    block(store.insert(record(2, "a"), hash(2))).unwrap();
    assert_eq!(block(store.next_id()).unwrap(), TokenId::from_u64(3));
    assert_eq!(block(store.next_id()).unwrap(), TokenId::from_u64(4));
}

#[test]
fn lookups_by_id_and_hash() {
    let store = MemoryStore::new();
    block(store.insert(record(7, "a"), hash(7))).unwrap();
    let by_id = block(store.get(&TokenId::from_u64(7))).unwrap().unwrap();
    let by_hash = block(store.find_by_hash(&hash(7))).unwrap().unwrap();
    assert_eq!(by_id.record, by_hash.record);
    assert_eq!(by_id.hash, hash(7));
    assert!(block(store.find_by_hash(&hash(8))).unwrap().is_none());
}

#[test]
fn revoke_is_once_and_owner_wide() {
    let store = MemoryStore::new();
    for (id, owner) in [(1, "a"), (2, "a"), (3, "b")] {
        block(store.insert(record(id, owner), hash(id))).unwrap();
    }
    let now = Utc::now();
    assert!(block(store.revoke(&TokenId::from_u64(1), now)).unwrap());
    assert!(!block(store.revoke(&TokenId::from_u64(1), now)).unwrap());
    assert!(!block(store.revoke(&TokenId::from_u64(99), now)).unwrap());
    assert_eq!(
        block(store.revoke_owner(&Owner::new("a").unwrap(), now)).unwrap(),
        1
    );
    let b = block(store.get(&TokenId::from_u64(3))).unwrap().unwrap();
    assert!(!b.record.is_revoked());
    let listed = block(store.list_by_owner(&Owner::new("a").unwrap())).unwrap();
    assert!(listed.iter().all(TokenRecord::is_revoked));
}

#[test]
fn last_used_moves_forward_only() {
    let store = MemoryStore::new();
    block(store.insert(record(1, "a"), hash(1))).unwrap();
    let id = TokenId::from_u64(1);
    let t = Utc::now();
    block(store.record_last_used(&id, t)).unwrap();
    block(store.record_last_used(&id, t - TimeDelta::seconds(5))).unwrap();
    let got = block(store.get(&id)).unwrap().unwrap();
    assert_eq!(got.record.last_used_at, Some(t));
    block(store.record_last_used(&TokenId::from_u64(2), t)).unwrap();
}

#[test]
fn readers_are_not_blocked_by_a_held_record() {
    // A record handed out to a reader stays valid after the store replaces it.
    let store = MemoryStore::new();
    block(store.insert(record(1, "a"), hash(1))).unwrap();
    let id = TokenId::from_u64(1);
    let before = block(store.get(&id)).unwrap().unwrap();
    block(store.revoke(&id, Utc::now())).unwrap();
    assert!(!before.record.is_revoked());
    assert!(block(store.get(&id)).unwrap().unwrap().record.is_revoked());
}
