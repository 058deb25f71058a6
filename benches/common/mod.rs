//! What both benchmark targets use: a no-executor poll, the criterion settings, token
//! issuing, the floor and the request of the middleware figures.

// Each target uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use apitoken::{NewToken, Owner, Secret, TokenStore, Verifier};
use axum::body::Body;
use criterion::Criterion;
use http::Request;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Runs a future that needs no I/O to finish, as every `MemoryStore` future and an axum router
/// over one are, without an executor: it is polled until ready with a no-op waker, so the
/// figures hold no executor overhead.
pub fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
        .configure_from_args()
}

/// Tokens with two scopes and a 16-character name, issued into `verifier`'s store.
pub fn issue<S: TokenStore>(verifier: &Verifier<S>, n: usize) -> Vec<Secret> {
    let issuer = verifier.issuer();
    let owner = Owner::new("team-1").unwrap();
    (0..n)
        .map(|i| {
            let new = NewToken::new(format!("token-{i:010}"), owner.clone())
                .scopes(["vps:read", "vps:write"])
                .unwrap();
            now(issuer.issue(new)).unwrap().token
        })
        .collect()
}

/// The floor's map: id text to SHA-256 of the secret.
pub struct Floor(HashMap<String, [u8; 32]>);

impl Floor {
    pub fn new(tokens: &[Secret]) -> Self {
        let mut map = HashMap::new();
        for t in tokens {
            let (id, rest) = t.expose_secret().split_once('.').unwrap();
            map.insert(id.to_owned(), Sha256::digest(&rest.as_bytes()[..43]).into());
        }
        Self(map)
    }

    pub fn check(&self, token: &str) -> bool {
        let (id, rest) = token.split_once('.').unwrap();
        let hash: [u8; 32] = Sha256::digest(&rest.as_bytes()[..43]).into();
        let stored = self.0.get(id).unwrap();
        bool::from(stored.ct_eq(&hash))
    }

    pub fn bench(&self, c: &mut Criterion, token: &str) {
        c.bench_function("floor", |b| b.iter(|| self.check(black_box(token))));
    }
}

pub async fn hello() -> &'static str {
    "hello"
}

pub fn request(token: &str) -> Request<Body> {
    Request::builder()
        .uri("/api/v1/vps")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}
