//! Verification cost next to the floor: split, SHA-256, hash-map lookup, constant-time compare.
//!
//! ```sh
//! cargo bench --bench verify
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use apitoken::{
    MemoryStore, NewToken, Owner, ScopeRequirement, SecretHasher, TokenFormat, Verifier,
};
use criterion::{Criterion, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Runs a future that completes on its first poll, as every `MemoryStore` future does, so the
/// figures hold no executor overhead.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("future was not ready"),
    }
}

fn bench(c: &mut Criterion) {
    let store = Arc::new(MemoryStore::with_capacity(10_000));
    let verifier = Verifier::builder(Arc::clone(&store)).build();
    // The same tokens, without the in-memory last-use note: the note's cost is the difference.
    let no_last_used = Verifier::builder(store).disable_last_used().build();
    let issuer = verifier.issuer();
    let owner = Owner::new("team-1").unwrap();
    let mut tokens = Vec::new();
    for i in 0..10_000 {
        let new = NewToken::new(format!("token {i}"), owner.clone())
            .scopes(["vps:read", "vps:write"])
            .unwrap();
        tokens.push(now(issuer.issue(new)).unwrap().token);
    }
    let token = tokens[4_321].expose_secret().to_owned();
    let need = ScopeRequirement::all(["vps:read"]).unwrap();

    // The floor: the least any verifier must do for this token.
    let mut floor_map: HashMap<String, [u8; 32]> = HashMap::new();
    for t in &tokens {
        let (id, rest) = t.expose_secret().split_once('.').unwrap();
        floor_map.insert(id.to_owned(), Sha256::digest(&rest.as_bytes()[..43]).into());
    }

    let mut group = c.benchmark_group("verify");
    group.bench_function("floor", |b| {
        b.iter(|| {
            let (id, rest) = black_box(token.as_str()).split_once('.').unwrap();
            let hash: [u8; 32] = Sha256::digest(&rest.as_bytes()[..43]).into();
            let stored = floor_map.get(id).unwrap();
            bool::from(stored.ct_eq(&hash))
        })
    });
    group.bench_function("valid_with_scope", |b| {
        b.iter(|| now(verifier.verify(black_box(&token), &need)).unwrap())
    });
    group.bench_function("valid_without_last_used", |b| {
        b.iter(|| now(no_last_used.verify(black_box(&token), &need)).unwrap())
    });
    let unknown = TokenFormat::canonical()
        .generate(Some(&"ZZZZZZZZZZZZ".parse().unwrap()))
        .unwrap();
    group.bench_function("unknown_id", |b| {
        b.iter(|| now(verifier.verify(black_box(unknown.expose_secret()), &need)).unwrap_err())
    });
    let mut bad = token.clone();
    bad.pop();
    bad.push(if token.ends_with('A') { 'B' } else { 'A' });
    group.bench_function("bad_checksum", |b| {
        b.iter(|| now(verifier.verify(black_box(&bad), &need)).unwrap_err())
    });
    group.finish();

    let format = TokenFormat::canonical();
    c.bench_function("parse/canonical", |b| {
        b.iter(|| format.parse(black_box(&token)).unwrap().id().copied())
    });
    let hasher = SecretHasher::sha256();
    c.bench_function("hash/sha256_43", |b| {
        b.iter(|| hasher.hash(black_box(&token.as_bytes()[13..56])))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
