//! Is verification's time independent of what the token gets wrong? A dudect-style
//! statistical test (Reparaz, Balasch, Verbauwhede: "Dude, is my code constant time?", 2017).
//!
//! Method:
//!
//! - A [`MemoryStore`] holds `--tokens` tokens (1,000 by default); last-use tracking is on, as
//!   in production. Each measurement times one `Verifier::verify` call with
//!   [`std::time::Instant`], run to completion without an executor.
//! - Five classes of input, one prepared per token: the valid token; an unknown id (a
//!   well-formed token, valid checksum, whose id the store does not have); the known id with
//!   a random wrong secret; the right secret with its first character changed; the right
//!   secret with its last character changed. Every wrong token has a valid checksum, so it
//!   reaches the store and the hash comparison.
//! - The class and the token of each measurement are drawn at random, so drift (frequency
//!   scaling, other processes, caches warming) falls on every class alike. Each input is
//!   copied into the same buffer before it is timed, so no class has a luckier address. The
//!   first 10 % of the measurements are a warm-up and are discarded.
//! - For each pair of classes, Welch's t statistic on the raw times and on the times cropped
//!   at the 99th, 95th, 90th, 75th and 50th percentile of the pair's pooled times (cropping
//!   removes the long tail that interrupts and preemption add). |t| < 4.5 is dudect's
//!   threshold: no leak detected at this sample size. Above it the pair is reported as a leak,
//!   with the difference of the means.
//!
//! The pairs: (A) unknown id against known id with a wrong secret, (B) wrong first character
//! against wrong last character, (C) valid against wrong secret (informational: a valid token
//! does more work after the comparison, and the verdict differs anyway).
//!
//! ```sh
//! cargo bench --bench timing                           # 400,000 measurements
//! cargo bench --bench timing -- --samples 2000000      # more power
//! APITOKEN_TIMING_SAMPLES=1000000 cargo bench --bench timing
//! cargo bench --bench timing -- --strict               # exit 1 if pair A or B leaks
//! ```
//!
//! Under `cargo test --benches` (no `--bench` argument) it makes 2,000 measurements on 100
//! tokens, to check that it runs; those figures mean nothing.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::hint::black_box;
use std::pin::pin;
use std::process::ExitCode;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use apitoken::{MemoryStore, NewToken, Owner, ScopeRequirement, TokenFormat, Verifier};

/// dudect's threshold on |t|.
const THRESHOLD: f64 = 4.5;

/// Runs a future that needs no I/O to finish, as every `MemoryStore` future does, by polling
/// it with a no-op waker: no executor in the measured time.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// SplitMix64: fast, and good enough to pick classes; not for secrets.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Self(RandomState::new().hash_one(Instant::now()))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy)]
enum Class {
    Valid,
    UnknownId,
    WrongSecret,
    FirstChar,
    LastChar,
}

const CLASSES: [Class; 5] = [
    Class::Valid,
    Class::UnknownId,
    Class::WrongSecret,
    Class::FirstChar,
    Class::LastChar,
];

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Valid => "valid",
            Class::UnknownId => "unknown id",
            Class::WrongSecret => "wrong secret",
            Class::FirstChar => "wrong first char",
            Class::LastChar => "wrong last char",
        }
    }
}

struct Options {
    samples: usize,
    tokens: usize,
    strict: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|a| a == "--bench");
    let mut options = Options {
        samples: if benching { 400_000 } else { 2_000 },
        tokens: if benching { 1_000 } else { 100 },
        strict: false,
    };
    if let Ok(n) = std::env::var("APITOKEN_TIMING_SAMPLES") {
        options.samples = n.parse().expect("APITOKEN_TIMING_SAMPLES is a count");
    }
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--samples" => {
                options.samples = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--samples N");
            }
            "--tokens" => {
                options.tokens = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--tokens N");
            }
            "--strict" => options.strict = true,
            _ => {} // `--bench` and whatever else cargo passes
        }
    }
    assert!(options.samples >= 100 && options.tokens >= 1);
    options
}

/// `token`'s secret with the character at `at` changed, re-rendered with a valid checksum.
fn change_secret(format: &TokenFormat, token: &str, at: usize) -> String {
    let parsed = format.parse(token).unwrap();
    let mut secret = parsed.secret().as_bytes().to_vec();
    let at = at.min(secret.len() - 1);
    secret[at] = if secret[at] == b'A' { b'B' } else { b'A' };
    let secret = String::from_utf8(secret).unwrap();
    format
        .render(parsed.id(), &secret)
        .unwrap()
        .expose_secret()
        .to_owned()
}

/// The inputs, `[class][token]`.
fn inputs(verifier: &Verifier<MemoryStore>, tokens: usize) -> Vec<Vec<String>> {
    let format = TokenFormat::canonical();
    let elsewhere = Verifier::builder(MemoryStore::new()).build();
    let owner = Owner::new("team-1").unwrap();
    let new = |i: usize| {
        NewToken::new(format!("token-{i:06}"), owner.clone())
            .scopes(["vps:read", "vps:write"])
            .unwrap()
    };
    let mut by_class = vec![Vec::with_capacity(tokens); CLASSES.len()];
    for i in 0..tokens {
        let issued = now(verifier.issuer().issue(new(i))).unwrap();
        let token = issued.token.expose_secret();
        let unknown = now(elsewhere.issuer().issue(new(i))).unwrap();
        let random = format.generate(Some(&issued.record.id)).unwrap();
        for (slot, class) in CLASSES.iter().enumerate() {
            by_class[slot].push(match class {
                Class::Valid => token.to_owned(),
                Class::UnknownId => unknown.token.expose_secret().to_owned(),
                Class::WrongSecret => random.expose_secret().to_owned(),
                Class::FirstChar => change_secret(&format, token, 0),
                Class::LastChar => change_secret(&format, token, usize::MAX),
            });
        }
    }
    by_class
}

/// Mean and variance (Welford), and Welch's t between two sets.
#[derive(Default, Clone, Copy)]
struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
}

impl Moments {
    fn push(&mut self, x: f64) {
        self.n += 1.0;
        let delta = x - self.mean;
        self.mean += delta / self.n;
        self.m2 += delta * (x - self.mean);
    }

    fn variance(&self) -> f64 {
        if self.n < 2.0 {
            0.0
        } else {
            self.m2 / (self.n - 1.0)
        }
    }

    fn welch_t(&self, other: &Self) -> f64 {
        let se = (self.variance() / self.n + other.variance() / other.n).sqrt();
        if se == 0.0 {
            0.0
        } else {
            (self.mean - other.mean) / se
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at]
}

fn main() -> ExitCode {
    let options = options();
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let inputs = inputs(&verifier, options.tokens);
    let need = ScopeRequirement::all(["vps:read"]).unwrap();
    let mut rng = Rng::new();

    // (class, nanoseconds) per measurement.
    let warm_up = options.samples / 10;
    let mut times: Vec<(usize, u64)> = Vec::with_capacity(options.samples);
    // Every input is verified from this one buffer, so no class gets a luckier address
    // (cache-line splits, alignment) than another.
    let mut slot = String::with_capacity(256);
    for n in 0..warm_up + options.samples {
        let class = rng.below(CLASSES.len());
        slot.clear();
        slot.push_str(&inputs[class][rng.below(options.tokens)]);
        let input = slot.as_str();
        let started = Instant::now();
        let verdict = now(verifier.verify(black_box(input), &need));
        let took = started.elapsed();
        black_box(verdict.is_ok());
        if n >= warm_up {
            times.push((class, took.as_nanos() as u64));
        }
    }

    println!(
        "dudect-style timing test: {} measurements of Verifier::verify on a MemoryStore of {} \
         tokens, last use on",
        options.samples, options.tokens
    );
    println!();
    println!("| class | n | mean ns | median ns |");
    println!("|---|---:|---:|---:|");
    for (slot, class) in CLASSES.iter().enumerate() {
        let mut own: Vec<u64> = times
            .iter()
            .filter(|(c, _)| *c == slot)
            .map(|(_, t)| *t)
            .collect();
        own.sort_unstable();
        let mean = own.iter().sum::<u64>() as f64 / own.len().max(1) as f64;
        println!(
            "| {} | {} | {mean:.1} | {} |",
            class.name(),
            own.len(),
            own.get(own.len() / 2).copied().unwrap_or(0)
        );
    }

    let pairs = [
        (
            "A",
            Class::UnknownId as usize,
            Class::WrongSecret as usize,
            true,
        ),
        (
            "B",
            Class::FirstChar as usize,
            Class::LastChar as usize,
            true,
        ),
        (
            "C",
            Class::Valid as usize,
            Class::WrongSecret as usize,
            false,
        ),
    ];
    let crops: [(&str, f64); 6] = [
        ("none", 1.0),
        ("p99", 0.99),
        ("p95", 0.95),
        ("p90", 0.90),
        ("p75", 0.75),
        ("p50", 0.50),
    ];
    println!();
    println!("| pair | classes | crop | mean ns | mean ns | difference ns | \\|t\\| | result |");
    println!("|---|---|---|---:|---:|---:|---:|---|");
    let mut leaked = false;
    for (label, a, b, decisive) in pairs {
        let mut pooled: Vec<u64> = times
            .iter()
            .filter(|(c, _)| *c == a || *c == b)
            .map(|(_, t)| *t)
            .collect();
        pooled.sort_unstable();
        for (crop, p) in crops {
            let limit = if p >= 1.0 {
                u64::MAX
            } else {
                percentile(&pooled, p)
            };
            let (mut ma, mut mb) = (Moments::default(), Moments::default());
            for &(class, t) in &times {
                if t > limit {
                    continue;
                }
                if class == a {
                    ma.push(t as f64);
                } else if class == b {
                    mb.push(t as f64);
                }
            }
            let t = ma.welch_t(&mb).abs();
            let result = if t < THRESHOLD {
                "no difference detected".to_owned()
            } else if decisive {
                leaked = true;
                format!("LEAK: {:+.1} ns", ma.mean - mb.mean)
            } else {
                "differs (expected)".to_owned()
            };
            println!(
                "| {label} | {} vs {} | {crop} | {:.1} | {:.1} | {:+.1} | {t:.2} | {result} |",
                CLASSES[a].name(),
                CLASSES[b].name(),
                ma.mean,
                mb.mean,
                ma.mean - mb.mean,
            );
        }
    }
    println!();
    println!(
        "|t| < {THRESHOLD}: no difference detected at this sample size (dudect's threshold). \
         Pairs A and B decide; C is informational."
    );
    if options.strict && leaked {
        println!("strict: pair A or B shows a leak");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
