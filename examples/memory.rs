//! Bytes per token in the memory store, counted by a counting global allocator.
//!
//! ```sh
//! cargo run --release --example memory              # 1,000,000 tokens
//! cargo run --release --example memory -- 100000    # fewer
//! ```
//!
//! Each token has two scopes and a 16-character name; owners are shared by 1,000 tokens each.
//! Prints `bytes_per_token <n>`: the heap bytes the store holds after the inserts, divided by
//! the number of tokens (the tokens' text, returned to the caller, is dropped first).

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::task::{Context, Poll, Waker};

use apitoken::{MemoryStore, NewToken, Owner, Verifier};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("MemoryStore futures are ready at once"),
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(1_000_000, |a| a.parse().expect("a token count"));
    let owners: Vec<Owner> = (0..n.div_ceil(1_000))
        .map(|i| Owner::new(&format!("team-{i}")).unwrap())
        .collect();
    let before = LIVE.load(Ordering::Relaxed);
    // Grown as tokens arrive, as an application's store would be (no capacity given).
    let verifier = Verifier::builder(MemoryStore::new())
        .disable_last_used()
        .build();
    let issuer = verifier.issuer();
    for i in 0..n {
        let new = NewToken::new(format!("token-{i:010}"), owners[i / 1_000].clone())
            .scopes(["vps:read", "vps:write"])
            .unwrap();
        drop(now(issuer.issue(new)).unwrap());
    }
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(verifier.store().len(), n);
    let per_token = (after - before) as f64 / n as f64;
    println!("tokens {n}");
    println!("store_bytes {}", after - before);
    println!("bytes_per_token {per_token:.0}");
}
