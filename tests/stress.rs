//! Many tasks verifying while others revoke and rotate: once `revoke` has returned, no
//! verification that starts afterwards succeeds with that token, on any task; last-use times
//! only move forward; nothing deadlocks. On the memory store behind the cache (every
//! verification) and, with `APITOKEN_TEST_POSTGRES_URL`, on PostgreSQL behind the cache.

#[path = "support/stores.rs"]
mod stores;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apitoken::{CachedStore, MemoryStore, NewToken, Owner, Secret, TokenId, TokenStore, Verifier};
use chrono::TimeDelta;

struct Token {
    id: TokenId,
    text: Secret,
    /// Set (SeqCst) only after `revoke` (or a zero-grace rotation) has returned.
    revoked: AtomicBool,
}

async fn stress<S: TokenStore + 'static>(verifier: Verifier<S>, tokens: usize, target: u64) -> u64 {
    let owner = Owner::new("team-1").unwrap();
    let mut all = Vec::new();
    for i in 0..tokens {
        let issued = verifier
            .issuer()
            .issue(NewToken::new(format!("t{i}"), owner.clone()))
            .await
            .unwrap();
        all.push(Arc::new(Token {
            id: issued.record.id,
            text: issued.token,
            revoked: AtomicBool::new(false),
        }));
    }
    let all = Arc::new(all);
    let verified = Arc::new(AtomicU64::new(0));
    let violations = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(60);

    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let (all, verifier, verified, violations, done) = (
            Arc::clone(&all),
            verifier.clone(),
            Arc::clone(&verified),
            Arc::clone(&violations),
            Arc::clone(&done),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = worker as usize;
            let mut n = 0u32;
            while !done.load(Ordering::SeqCst) {
                let token = &all[i % all.len()];
                i = i.wrapping_mul(31).wrapping_add(7);
                let was_revoked = token.revoked.load(Ordering::SeqCst);
                let result = verifier.authenticate(token.text.expose_secret()).await;
                if was_revoked && result.is_ok() {
                    violations.fetch_add(1, Ordering::SeqCst);
                }
                verified.fetch_add(1, Ordering::Relaxed);
                // Memory-store futures never wait: yield so the revoker gets to run.
                n = n.wrapping_add(1);
                if n.is_multiple_of(16) {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }

    // Revoke or rotate every token while they run, spread over the whole run.
    let mut next = 0;
    while (next < all.len() || verified.load(Ordering::Relaxed) < target)
        && Instant::now() < deadline
    {
        let due = (next as u64 + 1) * target / all.len() as u64;
        if next < all.len() && verified.load(Ordering::Relaxed) >= due {
            let token = &all[next];
            if next % 3 == 0 {
                verifier
                    .issuer()
                    .rotate(&token.id, TimeDelta::zero())
                    .await
                    .expect("rotate");
            } else {
                assert!(
                    verifier
                        .store()
                        .revoke(&token.id, verifier.now())
                        .await
                        .unwrap()
                );
            }
            token.revoked.store(true, Ordering::SeqCst);
            next += 1;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    done.store(true, Ordering::SeqCst);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("no deadlock")
            .unwrap();
    }
    let total = verified.load(Ordering::SeqCst);
    assert!(total >= target, "only {total} verifications in time");
    assert_eq!(
        next,
        all.len(),
        "every token revoked or rotated during the run"
    );
    assert_eq!(
        violations.load(Ordering::SeqCst),
        0,
        "a revoked token was accepted"
    );
    // Last use moved forward only, and reaches the store once flushed.
    verifier.flush_last_used().await.unwrap();
    let mut used = 0;
    for token in all.iter() {
        let stored = verifier.store().get(&token.id).await.unwrap().unwrap();
        assert!(
            stored
                .record
                .last_used_at
                .is_none_or(|t| t >= stored.record.created_at)
        );
        used += usize::from(stored.record.last_used_at.is_some());
    }
    assert!(used > 0, "no token has a last use");
    eprintln!(
        "{total} verifications, {next} tokens revoked or rotated meanwhile, 0 accepted after revocation"
    );
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_holds_under_concurrency_in_memory() {
    let verifier = Verifier::builder(CachedStore::new(MemoryStore::new())).build();
    stress(verifier, 300, 100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_holds_under_concurrency_on_postgres() {
    let Some(url) = stores::postgres_url() else {
        return;
    };
    let verifier = Verifier::builder(CachedStore::new(stores::postgres(&url).await)).build();
    stress(verifier, 100, 20_000).await;
}
