//! Scope policies: exact match by default; wildcards and implications only when configured, on
//! whole segments. Checked directly and through the verifier.

use apitoken::{
    AuthErrorKind, MemoryStore, NewToken, Owner, Principal, Scope, ScopePolicy, ScopeRequirement,
    ScopeSet, Verifier,
};

fn set(text: &str) -> ScopeSet {
    ScopeSet::parse(text).unwrap()
}

fn all(scopes: &[&str]) -> ScopeRequirement {
    ScopeRequirement::all(scopes).unwrap()
}

fn any(scopes: &[&str]) -> ScopeRequirement {
    ScopeRequirement::any(scopes).unwrap()
}

fn wild() -> ScopePolicy {
    ScopePolicy::strict().with_wildcards()
}

fn admin_all() -> ScopePolicy {
    ScopePolicy::strict()
        .with_wildcards()
        .imply("admin", "*")
        .unwrap()
}

fn write_implies_read() -> ScopePolicy {
    ScopePolicy::strict()
        .imply_segment("write", "read")
        .unwrap()
}

/// A principal for a token granted `granted`, verified under `policy`.
async fn principal(policy: ScopePolicy, granted: &[&str]) -> Principal {
    let verifier = Verifier::builder(MemoryStore::new())
        .scope_policy(policy)
        .build();
    let issued = verifier
        .issuer()
        .issue(
            NewToken::new("t", Owner::new("team-1").unwrap())
                .scopes(granted)
                .unwrap(),
        )
        .await
        .unwrap();
    verifier
        .authenticate(issued.token.expose_secret())
        .await
        .unwrap()
}

/// Issues a token granted `granted` and verifies it against `required` under `policy`.
async fn verify_with(
    policy: ScopePolicy,
    granted: &[&str],
    required: &ScopeRequirement,
) -> Result<(), apitoken::AuthError> {
    let verifier = Verifier::builder(MemoryStore::new())
        .scope_policy(policy)
        .build();
    let issued = verifier
        .issuer()
        .issue(
            NewToken::new("t", Owner::new("team-1").unwrap())
                .scopes(granted)
                .unwrap(),
        )
        .await
        .unwrap();
    verifier
        .verify(issued.token.expose_secret(), required)
        .await
        .map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Wildcards
// ---------------------------------------------------------------------------------------------

#[test]
fn a_segment_wildcard_never_matches_a_longer_name() {
    for policy in [
        wild(),
        admin_all(),
        wild().imply_segment("write", "read").unwrap(),
    ] {
        let granted = set("vps:*");
        assert!(policy.covers(&granted, "vps:read"), "{policy:?}");
        assert!(policy.covers(&granted, "vps:write"), "{policy:?}");
        assert!(policy.covers(&granted, "vps:read:own"), "{policy:?}");
        for not in [
            "vpsx:read",
            "vpsx:*",
            "xvps:read",
            "vp:read",
            "vps",
            "vps:",
            "vpsread",
            "storage:read",
            "VPS:read",
            "",
        ] {
            assert!(!policy.covers(&granted, not), "{not:?} under {policy:?}");
        }
    }
}

#[tokio::test]
async fn a_segment_wildcard_through_the_verifier() {
    assert!(
        verify_with(wild(), &["vps:*"], &all(&["vps:read"]))
            .await
            .is_ok()
    );
    let err = verify_with(wild(), &["vps:*"], &all(&["vpsx:read"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InsufficientScope);
    assert_eq!(err.missing_scopes(), Some(&set("vpsx:read")));
    // Without wildcards `vps:*` is only text.
    let err = verify_with(ScopePolicy::strict(), &["vps:*"], &all(&["vps:read"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InsufficientScope);
}

#[test]
fn wildcards_match_exactly_one_segment_unless_last() {
    let p = wild();
    assert!(p.covers(&set("*:read"), "vps:read"));
    assert!(p.covers(&set("*:read"), "storage:read"));
    assert!(!p.covers(&set("*:read"), "vps:write"));
    assert!(!p.covers(&set("*:read"), "vps:read:own"));
    assert!(!p.covers(&set("*:read"), ":read"));
    assert!(!p.covers(&set("*:read"), "read"));
    assert!(p.covers(&set("vps:*:own"), "vps:read:own"));
    assert!(!p.covers(&set("vps:*:own"), "vps:read:all"));
    assert!(!p.covers(&set("vps:*:own"), "vps::own"));
    // Only whole segments: `vp*` is not a prefix pattern.
    assert!(!p.covers(&set("vp*"), "vps:read"));
    assert!(!p.covers(&set("vp*"), "vps"));
    assert!(!p.covers(&set("vps*"), "vps:read"));
}

#[test]
fn a_wildcard_in_the_required_scope_is_not_a_wildcard() {
    let p = wild();
    assert!(!p.covers(&set("vps:read"), "vps:*"));
    assert!(!p.covers(&set("vps:read"), "*"));
    assert!(!p.covers(&set("admin"), "*"));
    assert!(p.covers(&set("vps:*"), "vps:*"));
}

#[test]
fn star_without_wildcards_grants_nothing_else() {
    let p = ScopePolicy::strict();
    let granted = set("*");
    assert!(p.covers(&granted, "*"));
    for not in ["vps:read", "admin", "a", "*:*", "vps:*"] {
        assert!(!p.covers(&granted, not), "{not}");
    }
    // With wildcards `*` alone covers every scope.
    for scope in ["vps:read", "admin", "a", "read:databases", "a:b:c:d"] {
        assert!(wild().covers(&granted, scope), "{scope}");
    }
}

// ---------------------------------------------------------------------------------------------
// Case
// ---------------------------------------------------------------------------------------------

#[test]
fn scopes_are_case_sensitive_under_every_policy() {
    for policy in [
        ScopePolicy::strict(),
        wild(),
        write_implies_read(),
        admin_all(),
    ] {
        assert!(policy.covers(&set("vps:read"), "vps:read"), "{policy:?}");
        assert!(!policy.covers(&set("VPS:read"), "vps:read"), "{policy:?}");
        assert!(!policy.covers(&set("vps:read"), "VPS:read"), "{policy:?}");
        assert!(!policy.covers(&set("vps:read"), "vps:Read"), "{policy:?}");
        assert!(!policy.covers(&set("VPS:*"), "vps:read"), "{policy:?}");
        assert!(!policy.covers(&set("Admin"), "vps:read"), "{policy:?}");
        assert!(
            !policy.covers(&set("ADMIN"), "storage:delete"),
            "{policy:?}"
        );
    }
    // Segment implications match segments case-sensitively too.
    let p = write_implies_read();
    assert!(!p.covers(&set("vps:WRITE"), "vps:read"));
    assert!(!p.covers(&set("vps:write"), "vps:READ"));
    assert!(p.covers(&set("VPS:write"), "VPS:read"));
    assert!(!p.covers(&set("VPS:write"), "vps:read"));
}

#[tokio::test]
async fn case_through_the_verifier() {
    let err = verify_with(ScopePolicy::strict(), &["VPS:read"], &all(&["vps:read"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InsufficientScope);
    assert_eq!(err.missing_scopes(), Some(&set("vps:read")));
}

// ---------------------------------------------------------------------------------------------
// Catch-alls and implications
// ---------------------------------------------------------------------------------------------

#[test]
fn admin_is_not_a_catch_all_unless_configured() {
    let granted = set("admin");
    for policy in [ScopePolicy::strict(), wild(), write_implies_read()] {
        assert!(policy.covers(&granted, "admin"), "{policy:?}");
        for scope in ["vps:read", "storage:delete", "read:databases", "*"] {
            assert!(!policy.covers(&granted, scope), "{scope} under {policy:?}");
        }
    }
    // `admin` implies the literal `*`, which without wildcards is only text.
    let no_wild = ScopePolicy::strict().imply("admin", "*").unwrap();
    assert!(no_wild.covers(&granted, "*"));
    assert!(!no_wild.covers(&granted, "vps:read"));
    assert!(!no_wild.covers(&granted, "read:databases"));
    // Both together: `admin` covers everything.
    let p = admin_all();
    for scope in [
        "vps:read",
        "storage:delete",
        "read:databases",
        "write:policies",
        "anything:at:all",
    ] {
        assert!(p.covers(&granted, scope), "{scope}");
    }
    // And only `admin` does.
    assert!(!p.covers(&set("vps:read"), "storage:delete"));
    assert!(!p.covers(&set("admins"), "storage:delete"));
    assert!(!p.covers(&set("admin:read"), "storage:delete"));
    assert!(!p.covers(&set("read:admin"), "storage:delete"));
}

#[tokio::test]
async fn admin_through_the_verifier() {
    let err = verify_with(ScopePolicy::strict(), &["admin"], &all(&["read:databases"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InsufficientScope);
    assert!(
        verify_with(
            admin_all(),
            &["admin"],
            &all(&["read:databases", "write:policies"])
        )
        .await
        .is_ok()
    );
}

#[test]
fn implications_chain_and_terminate() {
    let p = ScopePolicy::strict()
        .with_wildcards()
        .imply("owner", "admin")
        .unwrap()
        .imply("admin", "*")
        .unwrap();
    assert!(p.covers(&set("owner"), "storage:delete"));
    assert!(p.covers(&set("admin"), "vps:read"));
    assert!(!p.covers(&set("vps:read"), "owner"));

    let cyclic = ScopePolicy::strict()
        .imply("a", "b")
        .unwrap()
        .imply("b", "a")
        .unwrap();
    assert!(cyclic.covers(&set("a"), "b"));
    assert!(cyclic.covers(&set("b"), "a"));
    assert!(!cyclic.covers(&set("a"), "c"));

    assert!(ScopePolicy::strict().imply("a b", "c").is_err());
    assert!(ScopePolicy::strict().imply("a", "").is_err());
}

#[test]
fn imply_segment_works_in_both_segment_orders() {
    let p = write_implies_read();
    // resource:action (DanubeData)
    assert!(p.covers(&set("vps:write"), "vps:read"));
    assert!(p.covers(&set("vps:write"), "vps:write"));
    assert!(!p.covers(&set("vps:read"), "vps:write"));
    assert!(!p.covers(&set("vps:write"), "storage:read"));
    assert!(!p.covers(&set("vps:write"), "vpsx:read"));
    assert!(!p.covers(&set("vps:write"), "vps:delete"));
    // action:resource (DB Audit)
    assert!(p.covers(&set("write:databases"), "read:databases"));
    assert!(!p.covers(&set("read:databases"), "write:databases"));
    assert!(!p.covers(&set("write:databases"), "read:policies"));
    // The number of segments must agree.
    assert!(!p.covers(&set("vps:write"), "vps:read:own"));
    assert!(!p.covers(&set("vps:write:own"), "vps:read"));
    assert!(p.covers(&set("vps:write:own"), "vps:read:own"));

    // Registered in the other order, the same.
    let q = ScopePolicy::strict()
        .imply_segment("admin", "write")
        .unwrap()
        .imply_segment("write", "read")
        .unwrap();
    assert!(q.covers(&set("vps:admin"), "vps:read"));
    assert!(q.covers(&set("admin:databases"), "read:databases"));
    assert!(!q.covers(&set("vps:read"), "vps:admin"));
    let r = ScopePolicy::strict()
        .imply_segment("write", "read")
        .unwrap()
        .imply_segment("admin", "write")
        .unwrap();
    assert!(r.covers(&set("vps:admin"), "vps:read"));
    assert!(r.covers(&set("admin:databases"), "read:databases"));

    // A segment is one segment, and never `*`.
    assert!(ScopePolicy::strict().imply_segment("a:b", "c").is_err());
    assert!(ScopePolicy::strict().imply_segment("write", "*").is_err());
    assert!(ScopePolicy::strict().imply_segment("", "read").is_err());
}

#[test]
fn scope_implications_reach_what_the_implied_scope_covers() {
    // `admin` grants `vps:write`, which under `write` → `read` grants `vps:read`.
    let p = ScopePolicy::strict()
        .imply("admin", "vps:write")
        .unwrap()
        .imply_segment("write", "read")
        .unwrap();
    assert!(p.covers(&set("admin"), "vps:write"));
    assert!(p.covers(&set("admin"), "vps:read"));
    assert!(!p.covers(&set("admin"), "storage:read"));
    assert!(!p.covers(&set("vps:write"), "admin"));

    // Long chains are followed whatever order they were configured in.
    let mut forward = ScopePolicy::strict();
    let mut backward = ScopePolicy::strict();
    for i in 0..12 {
        forward = forward
            .imply(&format!("role{i}"), &format!("role{}", i + 1))
            .unwrap();
    }
    for i in (0..12).rev() {
        backward = backward
            .imply(&format!("role{i}"), &format!("role{}", i + 1))
            .unwrap();
    }
    for p in [&forward, &backward] {
        assert!(p.covers(&set("role0"), "role12"));
        assert!(p.covers(&set("role5"), "role6"));
        assert!(!p.covers(&set("role12"), "role0"));
        assert!(!p.covers(&set("role6"), "role5"));
        assert!(!p.covers(&set("role0"), "role13"));
    }
}

#[tokio::test]
async fn imply_segment_through_the_verifier() {
    let p = write_implies_read;
    assert!(
        verify_with(
            p(),
            &["vps:write", "write:databases"],
            &all(&["vps:read", "read:databases"])
        )
        .await
        .is_ok()
    );
    let err = verify_with(p(), &["vps:read"], &all(&["vps:write"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InsufficientScope);
    assert_eq!(err.missing_scopes(), Some(&set("vps:write")));
}

// ---------------------------------------------------------------------------------------------
// Requirements
// ---------------------------------------------------------------------------------------------

#[test]
fn all_of_and_any_of() {
    let p = ScopePolicy::strict();
    let granted = set("vps:read storage:read");
    assert!(p.check(&granted, &all(&["vps:read"])).is_ok());
    assert!(
        p.check(&granted, &all(&["vps:read", "storage:read"]))
            .is_ok()
    );
    assert_eq!(
        p.check(&granted, &all(&["vps:read", "vps:write", "storage:delete"])),
        Err(set("vps:write storage:delete"))
    );
    assert!(p.check(&granted, &any(&["vps:write", "vps:read"])).is_ok());
    assert_eq!(
        p.check(&granted, &any(&["vps:write", "admin"])),
        Err(set("vps:write admin"))
    );
    // Nothing required: anything passes, even no scopes.
    assert!(p.check(&ScopeSet::new(), &ScopeRequirement::none()).is_ok());
    assert!(p.check(&ScopeSet::new(), &all(&[])).is_ok());
    assert!(p.check(&ScopeSet::new(), &any(&[])).is_ok());
    assert!(p.check(&ScopeSet::new(), &all(&["vps:read"])).is_err());
    assert!(p.check(&ScopeSet::new(), &any(&["vps:read"])).is_err());

    let req = any(&["a", "b"]);
    assert!(req.is_any());
    assert!(!req.is_none());
    assert_eq!(req.scopes(), &set("a b"));
    assert!(!all(&["a"]).is_any());
    assert!(ScopeRequirement::none().is_none());
}

#[tokio::test]
async fn any_of_through_the_verifier() {
    let policy = ScopePolicy::strict;
    assert!(
        verify_with(policy(), &["vps:read"], &any(&["vps:write", "vps:read"]))
            .await
            .is_ok()
    );
    let err = verify_with(policy(), &["vps:read"], &any(&["vps:write", "admin"]))
        .await
        .unwrap_err();
    assert_eq!(err.missing_scopes(), Some(&set("vps:write admin")));
    let err = verify_with(policy(), &["vps:read"], &all(&["vps:write", "vps:read"]))
        .await
        .unwrap_err();
    assert_eq!(err.missing_scopes(), Some(&set("vps:write")));
}

// ---------------------------------------------------------------------------------------------
// Principal
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn principal_uses_the_verifiers_policy() {
    let wildcard = principal(wild(), &["vps:*"]).await;
    assert!(wildcard.has_scope("vps:read"));
    assert!(wildcard.has_scope("vps:*"));
    assert!(!wildcard.has_scope("vpsx:read"));
    assert!(wildcard.require(&all(&["vps:read", "vps:write"])).is_ok());
    let err = wildcard
        .require(&all(&["vps:read", "storage:read"]))
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::InsufficientScope);
    assert_eq!(err.missing_scopes(), Some(&set("storage:read")));
    assert_eq!(err.token_id(), Some(wildcard.token_id()));

    let strict = principal(ScopePolicy::strict(), &["vps:*"]).await;
    assert!(!strict.has_scope("vps:read"));
    assert!(strict.has_scope("vps:*"));
    assert!(strict.require(&all(&["vps:read"])).is_err());

    let admin = principal(admin_all(), &["admin"]).await;
    assert!(admin.has_scope("storage:delete"));
    assert!(admin.require(&any(&["x", "y:z"])).is_ok());

    let writer = principal(write_implies_read(), &["write:databases"]).await;
    assert!(writer.has_scope("read:databases"));
    assert!(!writer.has_scope("read:policies"));
    assert!(writer.require(&ScopeRequirement::none()).is_ok());
}

#[test]
fn the_verifier_keeps_the_policy_it_was_given() {
    let policy = admin_all().imply_segment("write", "read").unwrap();
    let verifier = Verifier::builder(MemoryStore::new())
        .scope_policy(policy.clone())
        .build();
    assert_eq!(verifier.scope_policy(), &policy);
    let default = Verifier::builder(MemoryStore::new()).build();
    assert_eq!(default.scope_policy(), &ScopePolicy::strict());
}

// ---------------------------------------------------------------------------------------------
// Scope syntax
// ---------------------------------------------------------------------------------------------

#[test]
fn scope_syntax_is_rfc_6749() {
    for ok in [
        "vps:read",
        "read:databases",
        "admin",
        "ssh-key:write",
        "*",
        "!",
        "~",
        "a/b",
    ] {
        assert!(Scope::new(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        " ",
        "vps read",
        "vps\"read",
        "vps\\read",
        "vps\tread",
        "vps\nread",
        "é",
        "\u{7f}",
        "\0",
    ] {
        assert!(Scope::new(bad).is_err(), "{bad:?}");
    }
    assert!(Scope::new(&"a".repeat(128)).is_ok());
    assert!(Scope::new(&"a".repeat(129)).is_err());

    assert_eq!(set("  vps:read   vps:write ").len(), 2);
    assert_eq!(set("b a b").to_string(), "a b");
    assert!(ScopeSet::parse("vps:read\tvps:write").is_err());
    assert!(ScopeSet::parse("vps:read\nvps:write").is_err());
    assert!(ScopeSet::parse("").unwrap().is_empty());

    assert!(ScopeRequirement::all(["vps read"]).is_err());
    assert!(ScopeRequirement::any(["ok", "not\"ok"]).is_err());
    assert!(
        NewToken::new("t", Owner::new("o").unwrap())
            .scopes(["a\\b"])
            .is_err()
    );
}

// Found by the `scopes` fuzz oracle's review: `*` did not cover a scope whose first segment
// is empty, while `can_delegate` treated it as a catch-all, so delegation could widen.
#[test]
fn a_wildcard_holder_cannot_delegate_more_than_it_covers() {
    let policy = ScopePolicy::strict()
        .with_wildcards()
        .catch_all("org:root")
        .unwrap();
    let maker = ScopeSet::parse("*").unwrap();
    assert!(Scope::new(":x").is_ok(), ":x is a valid scope");
    assert!(policy.can_delegate(&maker, "org:root"));
    let child = ScopeSet::parse("org:root").unwrap();
    assert!(policy.covers(&child, ":x"));
    // Fails: `*` does not cover `:x`.
    assert!(
        policy.covers(&maker, ":x"),
        "the child of `*` covers `:x`, its maker does not"
    );
}

#[test]
fn a_lone_wildcard_covers_every_scope_as_documented() {
    let policy = ScopePolicy::strict().with_wildcards();
    let star = ScopeSet::parse("*").unwrap();
    for scope in ["x", "x:y", "x::y", "x:", ":x", ":"] {
        assert!(Scope::new(scope).is_ok());
        assert!(policy.covers(&star, scope), "`*` does not cover {scope:?}");
    }
}
