//! Token names: characters that would make a token list show something other than what it
//! holds (bidi overrides, invisible format characters, line and paragraph separators) are
//! refused at creation; ordinary names in any script are not.

use apitoken::{IssueError, MemoryStore, NewToken, Owner, TokenStore, Verifier};

/// Each class the issuer refuses, with one character of it.
const REFUSED: &[(&str, char)] = &[
    ("right-to-left override (bidi)", '\u{202e}'),
    ("left-to-right embedding (bidi)", '\u{202a}'),
    ("left-to-right isolate (bidi)", '\u{2066}'),
    ("pop directional isolate (bidi)", '\u{2069}'),
    ("left-to-right mark (bidi)", '\u{200e}'),
    ("right-to-left mark (bidi)", '\u{200f}'),
    ("arabic letter mark (bidi)", '\u{061c}'),
    ("line separator (Zl)", '\u{2028}'),
    ("paragraph separator (Zp)", '\u{2029}'),
    ("zero-width space (Cf)", '\u{200b}'),
    ("zero-width joiner (Cf)", '\u{200d}'),
    ("word joiner (Cf)", '\u{2060}'),
    ("byte order mark (Cf)", '\u{feff}'),
    ("soft hyphen (Cf)", '\u{00ad}'),
    ("interlinear annotation anchor (Cf)", '\u{fff9}'),
    ("language tag (Cf)", '\u{e0001}'),
    ("tag latin small letter a (Cf)", '\u{e0061}'),
    ("escape (Cc)", '\u{1b}'),
    ("newline (Cc)", '\n'),
];

fn team() -> Owner {
    Owner::new("team-1").unwrap()
}

#[tokio::test]
async fn creation_refuses_bidi_format_and_separator_characters() {
    let verifier = Verifier::builder(MemoryStore::new()).build();
    let issuer = verifier.issuer();
    for (class, c) in REFUSED {
        for name in [
            format!("deploy{c}gnp.exe"),
            format!("{c}deploy"),
            format!("deploy{c}"),
            c.to_string(),
        ] {
            let result = issuer.issue(NewToken::new(name.clone(), team())).await;
            assert!(
                matches!(result, Err(IssueError::InvalidName)),
                "{class}: {name:?} was not refused: {result:?}"
            );
        }
    }
    // Nothing was stored.
    assert!(
        verifier
            .store()
            .list_by_owner(&team())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn ordinary_names_in_any_script_are_accepted() {
    let issuer = Verifier::builder(MemoryStore::new()).build().issuer();
    for name in [
        "Production Server",
        "CI/CD Pipeline",
        "Déploiement",
        "部署",
        "Развёртывание",
        "نشر", // right-to-left letters are fine: they do not reorder what follows
        "פריסה",
        "🚀 deploy",
        "❤\u{fe0f} monitoring", // a variation selector is a mark (Mn), not a format character
        "🇫🇷 team",              // regional indicators are symbols
        "naïve café\u{301}",    // a combining accent
    ] {
        let issued = issuer
            .issue(NewToken::new(name, team()))
            .await
            .unwrap_or_else(|e| panic!("{name:?} refused: {e}"));
        assert_eq!(issued.record.name, name);
    }
}
