//! Unit tests of the parent module.

use super::*;

fn set(text: &str) -> ScopeSet {
    ScopeSet::parse(text).unwrap()
}

fn all(scopes: &[&str]) -> ScopeRequirement {
    ScopeRequirement::all(scopes).unwrap()
}

#[test]
fn rfc6749_charset() {
    for ok in [
        "admin",
        "vps:read",
        "read:databases",
        "ssh-key:write",
        "!",
        "~",
        "*",
    ] {
        assert!(Scope::new(ok).is_ok(), "{ok}");
    }
    for bad in ["", "a b", "a\"b", "a\\b", "a\tb", "é", "a\nb", "\u{7f}"] {
        assert!(Scope::new(bad).is_err(), "{bad:?}");
    }
    assert!(Scope::new(&"a".repeat(MAX_SCOPE_LEN)).is_ok());
    assert!(Scope::new(&"a".repeat(MAX_SCOPE_LEN + 1)).is_err());
}

#[test]
fn strict_is_exact_and_case_sensitive() {
    let p = ScopePolicy::strict();
    let g = set("vps:read * vps:*");
    assert!(p.check(&g, &all(&["vps:read"])).is_ok());
    assert!(p.check(&g, &all(&["VPS:read"])).is_err());
    assert!(p.check(&g, &all(&["vps:write"])).is_err());
    assert!(p.check(&g, &all(&["storage:read"])).is_err());
}

#[test]
fn wildcards_match_whole_segments_only() {
    let p = ScopePolicy::strict().with_wildcards();
    let g = set("vps:*");
    assert!(p.covers(&g, "vps:read"));
    assert!(p.covers(&g, "vps:read:own"));
    assert!(!p.covers(&g, "vpsx:read"));
    assert!(!p.covers(&g, "vps"));
    assert!(!p.covers(&g, "vps:"));
    assert!(!p.covers(&g, "xvps:read"));
    assert!(!p.covers(&set("*:read"), "vps:write"));
    assert!(p.covers(&set("*:read"), "vps:read"));
    assert!(!p.covers(&set("*:read"), "vps:read:own"));
    assert!(p.covers(&set("*"), "anything:at:all"));
    assert!(!p.covers(&set("vp*"), "vps:read"));
}

#[test]
fn implications() {
    let p = ScopePolicy::strict()
        .imply("admin", "owner")
        .unwrap()
        .imply("owner", "billing:read")
        .unwrap();
    assert!(p.covers(&set("admin"), "billing:read"));
    assert!(!p.covers(&set("billing:read"), "admin"));
    // `admin` is not a catch-all unless configured so.
    assert!(!p.covers(&set("admin"), "vps:read"));
    let cyclic = ScopePolicy::strict()
        .imply("a", "b")
        .unwrap()
        .imply("b", "a")
        .unwrap();
    assert!(!cyclic.covers(&set("a"), "c"));
}

#[test]
fn delegation_never_hands_out_more_than_is_held() {
    let p = ScopePolicy::strict()
        .with_wildcards()
        .catch_all("root")
        .unwrap()
        .imply("org:admin", "*")
        .unwrap()
        .imply("billing:manager", "billing:write")
        .unwrap()
        .imply_segment("write", "read")
        .unwrap();
    let org = set("org:*");
    assert!(p.can_delegate(&org, "org:read"));
    assert!(!p.can_delegate(&org, "org:admin"), "implies *");
    assert!(!p.can_delegate(&set("billing:manager"), "root"));
    assert!(p.can_delegate(&set("root"), "root"));
    assert!(p.can_delegate(&set("*"), "org:admin"));
    // An implication's target must be held too.
    assert!(p.can_delegate(&set("billing:manager"), "billing:manager"));
    let lead = ScopePolicy::strict()
        .with_wildcards()
        .imply("team:lead", "billing:write")
        .unwrap();
    assert!(lead.can_delegate(&set("team:lead"), "team:lead"));
    assert!(lead.covers(&set("team:*"), "team:lead"));
    assert!(!lead.can_delegate(&set("team:*"), "team:lead"));
    assert!(p.can_delegate(&set("vps:write"), "vps:write"));
    assert!(p.can_delegate(&set("vps:write"), "vps:read"));
    assert!(!p.can_delegate(&set("vps:read"), "vps:write"));
    let strict = ScopePolicy::sanctum();
    assert!(!strict.can_delegate(&set("vps:read"), "*"));
    assert!(strict.can_delegate(&set("*"), "*"));
}

#[test]
fn catch_alls_cover_everything_and_only_when_configured() {
    let p = ScopePolicy::strict().catch_all("admin").unwrap();
    assert!(p.covers(&set("admin"), "storage:delete"));
    assert!(!p.covers(&set("vps:*"), "vps:read"));
    assert!(!ScopePolicy::strict().covers(&set("admin"), "storage:delete"));
    // Reached through an implication, too.
    let p = p.imply("owner", "admin").unwrap();
    assert!(p.covers(&set("owner"), "anything"));
    // Sanctum: `*` is everything, `vps:*` is a plain ability.
    let sanctum = ScopePolicy::sanctum();
    assert!(sanctum.covers(&set("*"), "vps:write"));
    assert!(!sanctum.covers(&set("vps:*"), "vps:write"));
    assert!(sanctum.covers(&set("vps:*"), "vps:*"));
}

#[test]
fn implication_chains_of_any_length_are_followed() {
    let mut p = ScopePolicy::strict();
    for i in 0..20 {
        p = p.imply(&format!("s{i}"), &format!("s{}", i + 1)).unwrap();
    }
    assert!(p.covers(&set("s0"), "s20"));
    assert!(!p.covers(&set("s20"), "s0"));
    // Added in reverse order, the closure is the same.
    let mut q = ScopePolicy::strict();
    for i in (0..20).rev() {
        q = q.imply(&format!("s{i}"), &format!("s{}", i + 1)).unwrap();
    }
    assert!(q.covers(&set("s0"), "s20"));
}

#[test]
fn segment_implications_chain_and_both_orders() {
    let p = ScopePolicy::strict()
        .imply_segment("admin", "write")
        .unwrap()
        .imply_segment("write", "read")
        .unwrap();
    assert!(p.covers(&set("vps:admin"), "vps:read"));
    assert!(p.covers(&set("write:databases"), "read:databases"));
    assert!(!p.covers(&set("vps:read"), "vps:write"));
    assert!(!p.covers(&set("vps:write"), "vpsx:read"));
    assert!(ScopePolicy::strict().imply_segment("a:b", "c").is_err());
    assert!(ScopePolicy::strict().imply_segment("*", "c").is_err());
}

#[test]
fn missing_scopes_are_reported() {
    let p = ScopePolicy::strict();
    let g = set("vps:read");
    assert_eq!(
        p.check(&g, &all(&["vps:read", "vps:write", "storage:read"])),
        Err(set("vps:write storage:read"))
    );
    let any = ScopeRequirement::any(["a", "b"]).unwrap();
    assert_eq!(p.check(&g, &any), Err(set("a b")));
    assert!(p.check(&set("b"), &any).is_ok());
    assert!(p.check(&ScopeSet::new(), &ScopeRequirement::none()).is_ok());
}

#[test]
fn set_serde_validates_and_dedups() {
    let s: ScopeSet = serde_json::from_str(r#"["b","a","b"]"#).unwrap();
    assert_eq!(serde_json::to_string(&s).unwrap(), r#"["a","b"]"#);
    assert!(serde_json::from_str::<ScopeSet>(r#"["a b"]"#).is_err());
    assert!(ScopeSet::parse("a\tb").is_err());
}

#[test]
fn a_scope_shows_its_own_text() {
    let scope = Scope::new("vps:read").unwrap();
    assert_eq!(scope.to_string(), "vps:read");
    assert_eq!(format!("{scope:?}"), r#""vps:read""#);
    assert_eq!(AsRef::<str>::as_ref(&scope), "vps:read");
}

#[test]
fn a_scope_set_holds_what_was_inserted_and_nothing_else() {
    let mut scopes = set("vps:read");
    assert!(scopes.contains("vps:read"));
    assert!(!scopes.contains("vps:write"));
    assert!(scopes.insert(Scope::new("vps:write").unwrap()), "new");
    assert!(
        !scopes.insert(Scope::new("vps:read").unwrap()),
        "already held"
    );
    assert!(scopes.contains("vps:write"));
    assert_eq!(scopes.len(), 2);
    let listed: Vec<&str> = (&scopes).into_iter().map(Scope::as_str).collect();
    assert_eq!(listed, ["vps:read", "vps:write"]);
    assert_eq!(format!("{scopes:?}"), r#"{"vps:read", "vps:write"}"#);
}

#[test]
fn a_catch_all_reached_only_through_a_wildcard_is_not_delegated() {
    let p = ScopePolicy::strict()
        .with_wildcards()
        .catch_all("org:root")
        .unwrap()
        .imply("team:lead", "org:root")
        .unwrap();
    let holder = set("org:* team:*");
    // `org:*` covers the text `org:root`, but `org:root` grants every scope and
    // `org:*` does not.
    assert!(p.covers(&holder, "org:root"));
    assert!(!p.covers(&holder, "billing:read"));
    assert!(!p.can_delegate(&holder, "org:root"));
    // Nor a scope that implies it.
    assert!(p.covers(&holder, "team:lead"));
    assert!(!p.can_delegate(&holder, "team:lead"));
    // What it holds it may hand on; a holder of the catch-all may hand on anything.
    assert!(p.can_delegate(&holder, "org:read"));
    assert!(p.can_delegate(&holder, "team:read"));
    assert!(p.can_delegate(&set("org:root"), "team:lead"));
}
