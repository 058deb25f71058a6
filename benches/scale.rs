//! The `verify/` and `middleware/` figures at realistic store sizes: 10,000 and 1,000,000
//! tokens, each visited in a shuffled order, with the floor over the same tokens. Its own
//! target, so building a million tokens never runs (nor leaves its heap) in `verify`'s.
//!
//! ```sh
//! cargo bench --bench scale              # both sizes (about a minute)
//! cargo bench --bench scale -- scale/10k # one size
//! ```

use std::hint::black_box;
use std::sync::Arc;

use apitoken::middleware::AuthLayer;
use apitoken::{MemoryStore, ScopeRequirement, TokenFormat, TokenStore, Verifier};
use axum::Router;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::StatusCode;
use tower::ServiceExt;

mod common;
use common::{Floor, config, hello, issue, now, request};

/// A fixed-seed shuffle (xorshift, Fisher-Yates): the same order every run, and no order the
/// hardware can predict.
fn shuffle<T>(items: &mut [T]) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

/// Cycles through `items`, one a call, so each verification meets a different record.
struct Cycle<'a> {
    items: &'a [String],
    next: usize,
}

impl<'a> Cycle<'a> {
    fn new(items: &'a [String]) -> Self {
        Self { items, next: 0 }
    }

    fn next(&mut self) -> &'a str {
        let item = &self.items[self.next];
        self.next = (self.next + 1) % self.items.len();
        item
    }
}

/// The `verify/` and `middleware/` figures over stores of realistic size: every token of the
/// store visited in a shuffled order (records no longer sit in the CPU's cache), and the floor
/// over the same tokens in the same order. Refusals visit as many distinct records: an
/// unknown id for each valid token, each valid token's id with another secret, and the
/// revoked tenth of the store. A refusal set smaller than the valid one would stay warmer in
/// the CPU's cache and look cheaper than it is.
fn bench_scale(c: &mut Criterion) {
    for (label, n) in [("10k", 10_000usize), ("1m", 1_000_000)] {
        let store = Arc::new(MemoryStore::with_capacity(n));
        let verifier = Verifier::builder(Arc::clone(&store)).build();
        let secrets = issue(&verifier, n);
        let floor = Floor::new(&secrets);
        let mut tokens: Vec<String> = secrets
            .iter()
            .map(|t| t.expose_secret().to_owned())
            .collect();
        drop(secrets);
        shuffle(&mut tokens);
        // The revoked tenth leaves the valid set; both stay shuffled.
        let revoked: Vec<String> = tokens.split_off(tokens.len() - n / 10);
        for token in &revoked {
            let id = *TokenFormat::canonical().parse(token).unwrap().id().unwrap();
            now(store.revoke(&id, verifier.now())).unwrap();
        }
        let canonical = TokenFormat::canonical();
        let wrong: Vec<String> = tokens
            .iter()
            .map(|token| {
                let id = canonical.parse(token).unwrap().id().copied();
                canonical
                    .generate(id.as_ref())
                    .unwrap()
                    .expose_secret()
                    .to_owned()
            })
            .collect();
        // Ids no record has: the issuer's ids count up from 1, these start with `zz`.
        let unknown: Vec<String> = (0..tokens.len())
            .map(|i| {
                let id = format!("zz{i:010}").parse().unwrap();
                canonical
                    .generate(Some(&id))
                    .unwrap()
                    .expose_secret()
                    .to_owned()
            })
            .collect();
        let need = ScopeRequirement::all(["vps:read"]).unwrap();
        let routes = || Router::new().route("/api/v1/vps", get(hello));
        let plain = routes().with_state(());
        let auth = routes()
            .layer(AuthLayer::new(verifier.clone()).require(need.clone()))
            .with_state(());

        let mut group = c.benchmark_group(format!("scale/{label}"));
        let mut cycle = Cycle::new(&tokens);
        group.bench_function("floor", |b| b.iter(|| floor.check(black_box(cycle.next()))));
        let mut cycle = Cycle::new(&tokens);
        group.bench_function("valid_with_scope", |b| {
            b.iter(|| now(verifier.verify(black_box(cycle.next()), &need)).unwrap())
        });
        for (name, set) in [
            ("unknown_id", &unknown),
            ("wrong_secret", &wrong),
            ("revoked", &revoked),
        ] {
            let mut cycle = Cycle::new(set);
            group.bench_function(name, |b| {
                b.iter(|| now(verifier.verify(black_box(cycle.next()), &need)).unwrap_err())
            });
        }
        for (name, router) in [("no_auth", &plain), ("auth_layer", &auth)] {
            let mut cycle = Cycle::new(&tokens);
            group.bench_function(name, |b| {
                b.iter(|| {
                    let request = request(black_box(cycle.next()));
                    let response = now(router.clone().oneshot(request)).unwrap();
                    debug_assert_eq!(response.status(), StatusCode::OK);
                    response.status()
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_scale
}
criterion_main!(benches);
