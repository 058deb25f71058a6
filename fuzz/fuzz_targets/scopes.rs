//! Scope parsing and matching on arbitrary text: never panics; wildcards never cross a
//! segment boundary.
#![no_main]

use apitoken::{Scope, ScopePolicy, ScopeRequirement, ScopeSet};
use libfuzzer_sys::fuzz_target;

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
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (granted, required) = text.split_once('\n').unwrap_or((text, "vps:read"));
    let Ok(granted) = ScopeSet::parse(granted) else {
        return;
    };
    let policies = [
        ScopePolicy::strict(),
        ScopePolicy::sanctum(),
        ScopePolicy::strict()
            .with_wildcards()
            .imply("admin", "*")
            .unwrap()
            .imply_segment("write", "read")
            .unwrap(),
    ];
    for policy in &policies {
        let covered = policy.covers(&granted, required);
        let _ = policy.can_delegate(&granted, required);
        if let Ok(requirement) = ScopeRequirement::all([required]) {
            assert_eq!(policy.check(&granted, &requirement).is_ok(), covered);
        }
    }
});
