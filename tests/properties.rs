//! Property tests: round trips for every format, parsers and scope checks that never panic, and
//! wildcards that never cross a segment boundary.

use apitoken::{
    Checksum, IdKind, ParsedToken, ScopePolicy, ScopeSet, Separator, TokenFormat, TokenId,
};
use proptest::prelude::*;

/// Default case count; no regression files are written (this suite owns only its sources).
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn prefixed_underscore() -> TokenFormat {
    TokenFormat::builder()
        .prefix("acme_live_")
        .separator(Separator::Underscore)
        .id(IdKind::Random { len: 16 })
        .secret_chars(32)
        .build()
        .unwrap()
}

/// Formats in the standard layout, where `render(parse(text))` must give `text` back.
fn standard_formats() -> Vec<TokenFormat> {
    vec![
        TokenFormat::canonical(),
        TokenFormat::dct(),
        prefixed_underscore(),
        TokenFormat::builder()
            .id(IdKind::Numeric)
            .separator(Separator::Pipe)
            .checksum(Checksum::None)
            .build()
            .unwrap(),
        TokenFormat::builder()
            .prefix("tk_")
            .id(IdKind::None)
            .build()
            .unwrap(),
        TokenFormat::builder()
            .prefix("dbaudit_live_")
            .id(IdKind::None)
            .checksum(Checksum::None)
            .secret_chars(32)
            .accept_secret_lengths(8..=64)
            .build()
            .unwrap(),
    ]
}

fn sanctum_formats() -> Vec<TokenFormat> {
    vec![
        TokenFormat::sanctum(),
        TokenFormat::sanctum_with_prefix("acme_").unwrap(),
    ]
}

fn all_formats() -> Vec<TokenFormat> {
    let mut formats = standard_formats();
    formats.extend(sanctum_formats());
    formats
}

/// The 40 random characters of a parsed Sanctum token with a checksum (prefix and checksum
/// removed), or `None` for a Sanctum 2 token without one.
fn sanctum_entropy<'a>(format: &TokenFormat, parsed: &ParsedToken<'a>) -> Option<&'a str> {
    let hashed = parsed.secret();
    let body = format
        .prefix()
        .and_then(|p| hashed.strip_prefix(p))
        .filter(|b| b.len() == 48)
        .unwrap_or(hashed);
    (body.len() == 48).then(|| &body[..40])
}

/// Text that often nearly fits one of the formats: optional prefix, id, separator, secret and
/// checksum-like tail.
fn near_token() -> impl Strategy<Value = String> {
    "(tk_|acme_live_|dbaudit_live_)?([0-9]{1,21}|[0-9A-Za-z]{12}|[0-9A-Za-z]{16})?[.|_]?(acme_)?[0-9A-Za-z]{0,70}([0-9a-f]{8})?"
}

/// Text that fits a format without a checksum more often than not, so the checks on accepted
/// text run: DCT, Sanctum 2 (no crc32b), the id-less DB Audit layout, and a numeric `|` layout.
fn likely_valid() -> impl Strategy<Value = String> {
    prop_oneof![
        "(0|[1-9][0-9]{0,19})\\.[0-9A-Za-z]{12,80}",
        "(0|[1-9][0-9]{0,19})\\|(acme_)?[0-9A-Za-z]{40}",
        "dbaudit_live_[0-9A-Za-z]{4,70}",
        "[0-9]{1,3}\\|[0-9A-Za-z]{43}",
    ]
}

/// Text from the token alphabet and separators only.
fn token_alphabet() -> impl Strategy<Value = String> {
    "[0-9A-Za-z._|-]{0,100}"
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(any::<u8>(), 0..600)
            .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        token_alphabet(),
        near_token(),
        likely_valid(),
        // Around the length limit.
        (500usize..530, "[0-9A-Za-z._|]").prop_map(|(n, c)| c.repeat(n)),
    ]
}

/// Checks whatever parsing returned: never panics, and an accepted text is consistent.
fn check_parse(format: &TokenFormat, text: &str, standard: bool) -> Result<(), TestCaseError> {
    let Ok(parsed) = format.parse(text) else {
        return Ok(());
    };
    prop_assert!(!parsed.secret().is_empty());
    prop_assert!(text.len() <= apitoken::format::MAX_TOKEN_LEN);
    if let Some(prefix) = format.prefix()
        && standard
    {
        prop_assert!(text.starts_with(prefix));
    }
    if let Some(id) = parsed.id() {
        prop_assert!(text.contains(id.as_str()));
        if format.id_kind() == IdKind::Numeric {
            // A numeric id is canonical decimal: it prints back to itself.
            let n = id.as_u64();
            prop_assert!(n.is_some(), "non-canonical numeric id {:?}", id);
            prop_assert_eq!(TokenId::from_u64(n.unwrap_or_default()), *id);
        }
    } else {
        prop_assert!(format.id_kind() == IdKind::None || !standard);
    }
    if standard {
        let again = format.render(parsed.id(), parsed.secret());
        prop_assert!(again.is_ok(), "{:?}", again.err());
        if let Ok(again) = again {
            prop_assert_eq!(again.expose_secret(), text);
        }
    } else if let Some(entropy) = sanctum_entropy(format, &parsed) {
        let again = format.render(parsed.id(), entropy);
        prop_assert!(again.is_ok(), "{:?}", again.err());
        if let Ok(again) = again {
            // The prefix is optional on parse, so compare without it.
            let rendered = again.expose_secret();
            let without_prefix = format
                .prefix()
                .map(|p| rendered.replacen(p, "", 1))
                .unwrap_or_else(|| rendered.to_owned());
            prop_assert!(rendered == text || without_prefix == text);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn canonical_round_trip(id in "[0-9A-Za-z]{12}", secret in "[0-9A-Za-z]{43}") {
        let format = TokenFormat::canonical();
        let id = TokenId::new(&id).unwrap();
        let token = format.render(Some(&id), &secret).unwrap();
        let text = token.expose_secret();
        prop_assert_eq!(text.len(), 62);
        let parsed = format.parse(text).unwrap();
        prop_assert_eq!(parsed.id(), Some(&id));
        prop_assert_eq!(parsed.secret(), secret.as_str());
        let again = format.render(parsed.id(), parsed.secret()).unwrap();
        prop_assert_eq!(again.expose_secret(), text);
    }

    #[test]
    fn canonical_single_changes_are_rejected(
        id in "[0-9A-Za-z]{12}",
        secret in "[0-9A-Za-z]{43}",
        at in 0usize..62,
        replacement in "[0-9A-Za-z._|-]",
    ) {
        let format = TokenFormat::canonical();
        let token = format.render(Some(&TokenId::new(&id).unwrap()), &secret).unwrap();
        let text = token.expose_secret();
        prop_assume!(text[at..=at] != replacement);
        let mut changed = text.to_owned();
        changed.replace_range(at..=at, &replacement);
        prop_assert!(format.parse(&changed).is_err());
    }

    #[test]
    fn dct_round_trip(n in any::<u64>(), secret in "[0-9A-Za-z]{16,256}") {
        let format = TokenFormat::dct();
        let id = TokenId::from_u64(n);
        let token = format.render(Some(&id), &secret).unwrap();
        let text = token.expose_secret();
        prop_assert_eq!(text, format!("{n}.{secret}"));
        let parsed = format.parse(text).unwrap();
        prop_assert_eq!(parsed.id().and_then(TokenId::as_u64), Some(n));
        prop_assert_eq!(parsed.secret(), secret.as_str());
        let again = format.render(parsed.id(), parsed.secret()).unwrap();
        prop_assert_eq!(again.expose_secret(), text);
    }

    #[test]
    fn sanctum_round_trip(n in proptest::option::of(any::<u64>()), entropy in "[0-9A-Za-z]{40}") {
        for format in sanctum_formats() {
            let id = n.map(TokenId::from_u64);
            let token = format.render(id.as_ref(), &entropy).unwrap();
            let text = token.expose_secret();
            let parsed = format.parse(text).unwrap();
            prop_assert_eq!(parsed.id(), id.as_ref());
            // Everything after the `|` is the hashed part: prefix, the 40, and the crc32b.
            let prefix = format.prefix().unwrap_or("");
            let after = match n {
                Some(n) => text.strip_prefix(&format!("{n}|")).unwrap(),
                None => text,
            };
            prop_assert_eq!(parsed.secret(), after);
            let start = format!("{prefix}{entropy}");
            prop_assert!(after.starts_with(&start));
            prop_assert_eq!(after.len(), prefix.len() + 48);
            prop_assert!(after[after.len() - 8..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            let entropy_back = sanctum_entropy(&format, &parsed).unwrap();
            prop_assert_eq!(entropy_back, entropy.as_str());
            let again = format.render(parsed.id(), entropy_back).unwrap();
            prop_assert_eq!(again.expose_secret(), text);
        }
    }

    #[test]
    fn sanctum_2_tokens_parse(n in 1u64.., entropy in "[0-9A-Za-z]{40}") {
        let text = format!("{n}|{entropy}");
        let parsed = TokenFormat::sanctum().parse(&text).unwrap();
        prop_assert_eq!(parsed.id().and_then(TokenId::as_u64), Some(n));
        prop_assert_eq!(parsed.secret(), entropy.as_str());
    }

    #[test]
    fn prefixed_underscore_round_trip(id in "[0-9A-Za-z]{16}", secret in "[0-9A-Za-z]{32}") {
        let format = prefixed_underscore();
        let id = TokenId::new(&id).unwrap();
        let token = format.render(Some(&id), &secret).unwrap();
        let text = token.expose_secret();
        let start = format!("acme_live_{id}_{secret}");
        prop_assert!(text.starts_with(&start));
        let parsed = format.parse(text).unwrap();
        prop_assert_eq!(parsed.id(), Some(&id));
        prop_assert_eq!(parsed.secret(), secret.as_str());
        let again = format.render(parsed.id(), parsed.secret()).unwrap();
        prop_assert_eq!(again.expose_secret(), text);
    }

    #[test]
    fn generated_tokens_round_trip_in_every_standard_format(pick in 0usize..6, n in any::<u64>()) {
        let format = &standard_formats()[pick];
        let id = match format.id_kind() {
            IdKind::Numeric => Some(TokenId::from_u64(n)),
            IdKind::Random { len } => Some(TokenId::new(&format!("{n:0>len$}")[..len]).unwrap()),
            _ => None,
        };
        let token = format.generate(id.as_ref()).unwrap();
        let parsed = format.parse(token.expose_secret()).unwrap();
        prop_assert_eq!(parsed.id(), id.as_ref());
        let again = format.render(parsed.id(), parsed.secret()).unwrap();
        prop_assert_eq!(again.expose_secret(), token.expose_secret());
    }

    #[test]
    fn parsing_never_panics_and_accepted_text_is_consistent(text in any_text()) {
        for format in standard_formats() {
            check_parse(&format, &text, true)?;
        }
        for format in sanctum_formats() {
            check_parse(&format, &text, false)?;
        }
    }

    #[test]
    fn parsing_is_deterministic(text in prop_oneof![near_token(), likely_valid()]) {
        for format in all_formats() {
            prop_assert_eq!(format.parse(&text), format.parse(&text));
        }
    }

    #[test]
    fn scope_set_parse_never_panics(text in prop_oneof![
        any::<String>(),
        "[ !-~]{0,80}",
        "[a-z:* ]{0,60}",
    ]) {
        if let Ok(set) = ScopeSet::parse(&text) {
            // Every scope is valid, and the display form parses back to the same set.
            for scope in &set {
                prop_assert!(apitoken::Scope::new(scope.as_str()).is_ok());
                prop_assert!(text.contains(scope.as_str()));
            }
            prop_assert_eq!(ScopeSet::parse(&set.to_string()).unwrap(), set);
        }
    }

    #[test]
    fn covers_never_panics(
        granted in proptest::collection::vec(
            prop_oneof!["[!#-\\[\\]-~]{1,16}", "[a-z*]{1,4}(:[a-z*]{0,4}){0,3}"],
            0..6,
        ),
        required in prop_oneof![any::<String>(), "[a-z*:]{0,16}", "[!-~]{0,20}"],
    ) {
        let granted = ScopeSet::try_from_iter(&granted).unwrap();
        let policies = [
            ScopePolicy::strict(),
            ScopePolicy::strict().with_wildcards(),
            ScopePolicy::strict()
                .with_wildcards()
                .imply("admin", "*")
                .unwrap()
                .imply_segment("write", "read")
                .unwrap(),
            ScopePolicy::strict().imply("a", "b").unwrap().imply("b", "a").unwrap(),
        ];
        for policy in &policies {
            let covered = policy.covers(&granted, &required);
            // Holding the exact scope always covers it.
            if granted.contains(&required) {
                prop_assert!(covered);
            }
            // The empty set covers nothing.
            prop_assert!(!policy.covers(&ScopeSet::new(), &required));
        }
        // Strict is exact match.
        prop_assert_eq!(policies[0].covers(&granted, &required), granted.contains(&required));
    }

    #[test]
    fn implication_chains_are_followed_in_any_configuration_order(
        order in Just((0..10usize).collect::<Vec<_>>()).prop_shuffle(),
        from in 0usize..11,
        to in 0usize..11,
    ) {
        // s0 → s1 → … → s10, configured in a random order.
        let mut policy = ScopePolicy::strict();
        for i in order {
            policy = policy.imply(&format!("s{i}"), &format!("s{}", i + 1)).unwrap();
        }
        let granted = ScopeSet::parse(&format!("s{from}")).unwrap();
        let required = format!("s{to}");
        prop_assert_eq!(policy.covers(&granted, &required), from <= to);
    }

    #[test]
    fn a_wildcard_never_crosses_the_first_segment(
        p in "[a-zA-Z0-9_-]{1,6}",
        other in "[a-zA-Z0-9_*-]{0,7}",
        mode in 0u8..4,
        rest in "(:[a-z*]{1,4}){0,3}",
    ) {
        // First segments that are not `p` but look like it: longer, shorter, other case.
        let first = match mode {
            0 => other,
            1 => format!("{p}{other}"),
            2 => format!("{other}{p}"),
            _ => p.to_uppercase(),
        };
        prop_assume!(first != p);
        let required = format!("{first}{rest}");
        let granted = ScopeSet::parse(&format!("{p}:*")).unwrap();
        let policy = ScopePolicy::strict().with_wildcards();
        prop_assert!(!policy.covers(&granted, &required), "{p}:* covered {required}");
        // And it does cover `p` with any non-empty rest.
        let inside = format!("{p}:x{rest}");
        prop_assert!(policy.covers(&granted, &inside));
    }
}
