//! Is verification's time independent of what the token gets wrong? A dudect-style
//! statistical test (Reparaz, Balasch, Verbauwhede: "Dude, is my code constant time?", 2017).
//!
//! Method:
//!
//! - A [`MemoryStore`] holds `--tokens` tokens (10,000 by default); last-use tracking is on, as
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
//! Pair B changes the secret *text*, so the two hashes differ everywhere and it cannot see how
//! the hashes are compared. Pair (D) times the comparison itself: `SecretHash::ct_eq` of a
//! stored hash against one differing only in its first byte, and against one differing only
//! in its last byte, [`COMPARE_BATCH`] comparisons per measurement so that a few cycles per
//! comparison add up to far more than the clock's resolution. An early-exit comparison makes
//! the first-byte class measurably faster.
//!
//! Before anything is measured every input's verdict is checked (the valid token is accepted;
//! an unknown id is refused as an unknown token; the three wrong secrets as a wrong secret;
//! both altered hashes compare unequal), and every measured verdict is checked again: a wrong
//! verdict means the classes are not what they claim, the figures mean nothing, and the
//! process exits with status 1 whatever the options.
//!
//! ```sh
//! cargo bench --bench timing                           # 400,000 measurements
//! cargo bench --bench timing -- --samples 2000000      # more power
//! APITOKEN_TIMING_SAMPLES=1000000 cargo bench --bench timing
//! cargo bench --bench timing -- --strict               # exit 1 if pair A, B or D leaks
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

use apitoken::{
    MemoryStore, NewToken, Owner, RejectReason, ScopeRequirement, SecretHash, SecretHasher,
    TokenFormat, Verifier,
};
use subtle::ConstantTimeEq;

/// dudect's threshold on |t|.
const THRESHOLD: f64 = 4.5;

/// Hash comparisons per measurement of pair D.
const COMPARE_BATCH: usize = 32;

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
    /// The verdict every input of the class must get: `None` for accepted, else the reason.
    fn expected(self) -> Option<RejectReason> {
        match self {
            Class::Valid => None,
            Class::UnknownId => Some(RejectReason::UnknownToken),
            Class::WrongSecret | Class::FirstChar | Class::LastChar => {
                Some(RejectReason::WrongSecret)
            }
        }
    }

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
        tokens: if benching { 10_000 } else { 100 },
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

/// Checks every input's verdict; returns what is wrong.
fn check_verdicts(
    verifier: &Verifier<MemoryStore>,
    inputs: &[Vec<String>],
    need: &ScopeRequirement,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for (slot, class) in CLASSES.iter().enumerate() {
        for (i, input) in inputs[slot].iter().enumerate() {
            let verdict = now(verifier.verify(input, need));
            let right = match (class.expected(), &verdict) {
                (None, Ok(_)) => true,
                (Some(reason), Err(err)) => err.reason() == Some(reason),
                _ => false,
            };
            if !right {
                wrong.push(format!(
                    "{} input {i}: expected {}, got {:?}",
                    class.name(),
                    class
                        .expected()
                        .map_or("acceptance".to_owned(), |r| format!("refusal as {r:?}")),
                    verdict.map(|_| "accepted").map_err(|e| e.reason()),
                ));
            }
        }
    }
    wrong
}

/// Pair D's classes: a hash differing from the stored one in its first byte, and one
/// differing in its last byte.
const COMPARE_CLASSES: [&str; 2] = ["hash differs in byte 0", "hash differs in byte 31"];

/// The stored hash and pair D's two inputs, checked: both compare unequal, the stored hash
/// equals itself.
fn compare_inputs() -> Result<(SecretHash, [SecretHash; 2]), String> {
    let stored = SecretHasher::sha256().hash(b"apitoken timing: the stored secret");
    let changed = |at: usize| {
        let mut bytes = *stored.as_bytes();
        bytes[at] ^= 0x01;
        SecretHash::from_bytes(bytes)
    };
    let inputs = [changed(0), changed(31)];
    if !bool::from(stored.ct_eq(&SecretHash::from_bytes(*stored.as_bytes()))) {
        return Err("the stored hash does not equal a copy of itself".to_owned());
    }
    for (input, name) in inputs.iter().zip(COMPARE_CLASSES) {
        if bool::from(stored.ct_eq(input)) || stored == *input {
            return Err(format!("{name}: compares equal to the stored hash"));
        }
    }
    Ok((stored, inputs))
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

/// The crops each pair is judged at.
const CROPS: [(&str, f64); 6] = [
    ("none", 1.0),
    ("p99", 0.99),
    ("p95", 0.95),
    ("p90", 0.90),
    ("p75", 0.75),
    ("p50", 0.50),
];

/// Prints one pair's rows (Welch's t at every crop) from `(class, nanoseconds)` measurements;
/// returns whether a decisive pair shows a difference.
fn judge(
    label: &str,
    names: (&str, &str),
    (a, b): (usize, usize),
    decisive: bool,
    times: &[(usize, u64)],
) -> bool {
    let mut pooled: Vec<u64> = times
        .iter()
        .filter(|(c, _)| *c == a || *c == b)
        .map(|(_, t)| *t)
        .collect();
    pooled.sort_unstable();
    let mut leaked = false;
    for (crop, p) in CROPS {
        let limit = if p >= 1.0 {
            u64::MAX
        } else {
            percentile(&pooled, p)
        };
        let (mut ma, mut mb) = (Moments::default(), Moments::default());
        for &(class, t) in times {
            if t > limit {
                continue;
            }
            if class == a {
                ma.push(t as f64);
            } else if class == b {
                mb.push(t as f64);
            }
        }
        // A crop that leaves one class empty has separated the two completely.
        let t = if ma.n == 0.0 || mb.n == 0.0 {
            f64::INFINITY
        } else {
            ma.welch_t(&mb).abs()
        };
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
            names.0,
            names.1,
            ma.mean,
            mb.mean,
            ma.mean - mb.mean,
        );
    }
    leaked
}

/// Prints each class's count, mean and median.
fn summary(names: &[&str], times: &[(usize, u64)]) {
    println!("| class | n | mean ns | median ns |");
    println!("|---|---:|---:|---:|");
    for (slot, name) in names.iter().enumerate() {
        let mut own: Vec<u64> = times
            .iter()
            .filter(|(c, _)| *c == slot)
            .map(|(_, t)| *t)
            .collect();
        own.sort_unstable();
        let mean = own.iter().sum::<u64>() as f64 / own.len().max(1) as f64;
        println!(
            "| {name} | {} | {mean:.1} | {} |",
            own.len(),
            own.get(own.len() / 2).copied().unwrap_or(0)
        );
    }
}

fn main() -> ExitCode {
    let options = options();
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let inputs = inputs(&verifier, options.tokens);
    let need = ScopeRequirement::all(["vps:read"]).unwrap();

    // The inputs must be what their classes claim, or nothing below means anything.
    let wrong = check_verdicts(&verifier, &inputs, &need);
    let (stored, compared) = match compare_inputs() {
        Ok(pair) if wrong.is_empty() => pair,
        Ok(_) => return wrong_verdicts(&wrong),
        Err(why) => return wrong_verdicts(&[why]),
    };
    let mut rng = Rng::new();

    // (class, nanoseconds) per measurement.
    let warm_up = options.samples / 10;
    let mut times: Vec<(usize, u64)> = Vec::with_capacity(options.samples);
    let mut wrong_during = 0usize;
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
        if black_box(verdict.is_ok()) != matches!(CLASSES[class], Class::Valid) {
            wrong_during += 1;
        }
        if n >= warm_up {
            times.push((class, took.as_nanos() as u64));
        }
    }

    // Pair D: the comparison alone, from one slot as well.
    let mut compare_times: Vec<(usize, u64)> = Vec::with_capacity(options.samples);
    for n in 0..warm_up + options.samples {
        let class = rng.below(COMPARE_CLASSES.len());
        // A copy in the same stack slot for either class.
        let presented = black_box(compared[class]);
        let started = Instant::now();
        let mut equal = 0u8;
        for _ in 0..COMPARE_BATCH {
            equal |= black_box(black_box(&stored).ct_eq(black_box(&presented))).unwrap_u8();
        }
        let took = started.elapsed();
        if equal != 0 {
            wrong_during += 1;
        }
        if n >= warm_up {
            compare_times.push((class, took.as_nanos() as u64));
        }
    }
    if wrong_during > 0 {
        return wrong_verdicts(&[format!(
            "{wrong_during} measured verdicts differ from their class"
        )]);
    }

    println!(
        "dudect-style timing test: {} measurements of Verifier::verify on a MemoryStore of {} \
         tokens, last use on; {} measurements of {COMPARE_BATCH} SecretHash comparisons",
        options.samples, options.tokens, options.samples
    );
    println!();
    summary(&CLASSES.map(Class::name), &times);
    println!();
    summary(&COMPARE_CLASSES, &compare_times);

    let pairs = [
        ("A", Class::UnknownId, Class::WrongSecret, true),
        ("B", Class::FirstChar, Class::LastChar, true),
        ("C", Class::Valid, Class::WrongSecret, false),
    ];
    println!();
    println!("| pair | classes | crop | mean ns | mean ns | difference ns | \\|t\\| | result |");
    println!("|---|---|---|---:|---:|---:|---:|---|");
    let mut leaked = false;
    for (label, a, b, decisive) in pairs {
        let names = (a.name(), b.name());
        leaked |= judge(label, names, (a as usize, b as usize), decisive, &times);
    }
    let names = (COMPARE_CLASSES[0], COMPARE_CLASSES[1]);
    leaked |= judge("D", names, (0, 1), true, &compare_times);
    println!();
    println!(
        "|t| < {THRESHOLD}: no difference detected at this sample size (dudect's threshold). \
         Pairs A, B and D decide; C is informational."
    );
    if options.strict && leaked {
        println!("strict: pair A, B or D shows a leak");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Reports inputs whose verdict is not their class's, and fails.
fn wrong_verdicts(wrong: &[String]) -> ExitCode {
    eprintln!("timing: inputs are not what their classes claim, so no figure would mean anything:");
    for line in wrong.iter().take(20) {
        eprintln!("  {line}");
    }
    if wrong.len() > 20 {
        eprintln!("  … and {} more", wrong.len() - 20);
    }
    ExitCode::FAILURE
}
