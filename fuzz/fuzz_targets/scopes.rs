//! Scope parsing and matching on arbitrary text: never panics; wildcards never cross a
//! segment boundary; and delegation never escalates.
//!
//! The delegation property, from `ScopePolicy::can_delegate`'s documentation ("a holder of
//! `granted` may give `scope` to another token without the other token gaining anything"),
//! for every valid scope `r` (see `check_delegation`):
//!
//! ```text
//! can_delegate(G, s)  ⇒  covers(G, s)  ∧  ∀ r: covers({s}, r) ⇒ covers(G, r)
//! ```
//!
//! A token holding only `s` is covered for nothing its maker is not. (`covers` of a set is the
//! union over its scopes, so a delegated set all of whose scopes pass `can_delegate`, which is
//! what `Principal::can_delegate` requires, covers nothing `G` does not either.) The `s` tried
//! are the input's second line and the scopes the policies name; the `r`, the input's third
//! line and scopes derived from `s`: each segment replaced by a word the policies treat
//! specially, one segment more, and the policies' own scopes.
#![no_main]

use apitoken::{Scope, ScopePolicy, ScopeRequirement, ScopeSet};
use libfuzzer_sys::fuzz_target;

/// Words the policies below give a meaning to, as scopes or segments.
const WORDS: [&str; 9] = [
    "*", "admin", "write", "read", "root", "ops", "org", "vps", "billing",
];

/// Scopes the policies below name.
const NAMED: [&str; 8] = [
    "*",
    "admin",
    "root",
    "org:root",
    "org:admin",
    "vps:admin",
    "billing:read",
    "deploy:prod",
];

fn policies() -> [ScopePolicy; 6] {
    [
        ScopePolicy::strict(),
        ScopePolicy::sanctum(),
        ScopePolicy::strict()
            .with_wildcards()
            .imply("admin", "*")
            .unwrap()
            .imply_segment("write", "read")
            .unwrap(),
        ScopePolicy::strict()
            .with_wildcards()
            .imply("org:admin", "*")
            .unwrap()
            .imply("vps:admin", "billing:read")
            .unwrap()
            .imply_segment("admin", "write")
            .unwrap()
            .imply_segment("write", "read")
            .unwrap(),
        ScopePolicy::strict()
            .catch_all("root")
            .unwrap()
            .imply("ops", "deploy:prod")
            .unwrap()
            .imply_segment("write", "read")
            .unwrap(),
        // A catch-all that a wildcard covers: `org:*` covers `org:root` but is not one.
        ScopePolicy::strict()
            .with_wildcards()
            .catch_all("org:root")
            .unwrap(),
    ]
}

/// Segments for inputs made of words: those the policies name, and a few they do not.
const VOCABULARY: [&str; 16] = [
    "*", "admin", "write", "read", "root", "ops", "org", "vps", "billing", "deploy", "prod", "x",
    "", "db", "delete", "vpsx",
];

/// Text made of [`VOCABULARY`] from fuzz bytes: each byte picks a segment (low four bits) and
/// what follows it (a `:`, a space, a new line, or nothing), so that most inputs name scopes
/// the policies give a meaning to.
fn from_words(data: &[u8]) -> String {
    let mut out = String::new();
    for b in data {
        out.push_str(VOCABULARY[usize::from(b & 0x0f)]);
        match (b >> 4) & 3 {
            0 => out.push(':'),
            1 => out.push(' '),
            2 => out.push('\n'),
            _ => {}
        }
    }
    out
}

/// The scopes to try as `r` for a delegated `scope`.
fn probes(scope: &str, extra: &str) -> Vec<String> {
    let segments: Vec<&str> = scope.split(':').collect();
    let mut out = vec![extra.to_owned(), scope.to_owned(), format!("{scope}:x")];
    out.extend(NAMED.iter().map(|s| (*s).to_owned()));
    for i in 0..segments.len() {
        for word in WORDS.iter().chain(["x"].iter()) {
            let mut derived = segments.clone();
            derived[i] = word;
            out.push(derived.join(":"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // A prefix wildcard never covers a scope whose first segment differs (`vps:*` never
    // covers `vpsx:read`).
    if let Ok(text) = std::str::from_utf8(data)
        && let Some((prefix, required)) = text.split_once('\n')
        && !prefix.is_empty()
        && !prefix.contains([':', '*'])
        && let Ok(scope) = Scope::new(&format!("{prefix}:*"))
    {
        let granted: ScopeSet = [scope].into_iter().collect();
        let wild = ScopePolicy::strict().with_wildcards();
        if wild.covers(&granted, required) {
            assert_eq!(
                required.split(':').next(),
                Some(prefix),
                "{prefix}:* covered {required}"
            );
        }
    }
    let words;
    let text = match data.split_first() {
        // Scopes are ASCII, so text starting with any other byte holds none: such inputs are
        // better spent on words.
        Some((first, rest)) if *first >= 0x80 => {
            words = from_words(rest);
            words.as_str()
        }
        _ => match std::str::from_utf8(data) {
            Ok(text) => text,
            Err(_) => return,
        },
    };
    let mut lines = text.splitn(3, '\n');
    let granted = lines.next().unwrap_or_default();
    let required = lines.next().unwrap_or("vps:read");
    let probe = lines.next().unwrap_or("billing:read");
    let Ok(granted) = ScopeSet::parse(granted) else {
        return;
    };
    for policy in &policies() {
        let covered = policy.covers(&granted, required);
        if let Ok(requirement) = ScopeRequirement::all([required]) {
            assert_eq!(policy.check(&granted, &requirement).is_ok(), covered);
        }
        // The input's scope, and the scopes the policies name.
        for delegated in std::iter::once(required).chain(NAMED) {
            check_delegation(policy, &granted, delegated, probe);
        }
    }
});

/// The delegation property for `granted` giving `delegated`.
fn check_delegation(policy: &ScopePolicy, granted: &ScopeSet, delegated: &str, probe: &str) {
    if !policy.can_delegate(granted, delegated) {
        return;
    }
    assert!(
        policy.covers(granted, delegated),
        "{granted} may delegate {delegated} without covering it"
    );
    // Only a valid scope can be given to a token.
    let Ok(scope) = Scope::new(delegated) else {
        return;
    };
    let child: ScopeSet = [scope].into_iter().collect();
    // Only valid scopes are ever required, empty first segments (`:x`) included: a lone `*`
    // covers them too (tests/scopes.rs, `a_lone_wildcard_covers_every_scope_as_documented`).
    let required = probes(delegated, probe)
        .into_iter()
        .filter(|r| Scope::new(r).is_ok());
    for r in required {
        if policy.covers(&child, &r) {
            assert!(
                policy.covers(granted, &r),
                "{policy:?}: {granted} delegates {delegated}, which covers {r}; {granted} does not"
            );
        }
    }
}
