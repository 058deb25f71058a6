//! Token formats: round trips, the seed tokens, checksums, strict ids and hostile input.

use apitoken::format::MAX_TOKEN_LEN;
use apitoken::{Checksum, FormatError, IdKind, ParsedToken, Separator, TokenFormat, TokenId};

// Seed tokens, copied from the documentation pages in /work/shared/seeds/.
const DCT_1: &str = "1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD4pflejgqjd0pfKtywlSWR9G0fIaWajuKcBT3";
const DCT_2: &str = "2.vCfC0MnpySYZLshuxap2aZ7xqBKAnQvV7hFnobe7xuNlHS9AF2NQnV9XXw4UyET6";
const SANCTUM_SEED: &str = "1|7TEwyZaQXMXRVBZV9USjWNRbXAbPv9BrgMJSLDCk345196d2";
const SANCTUM_SEED_ENTROPY: &str = "7TEwyZaQXMXRVBZV9USjWNRbXAbPv9BrgMJSLDCk";
/// crc32b of the 40 entropy characters, as printed in the DanubeData seed.
const SANCTUM_SEED_CRC: &str = "345196d2";

const ALNUM: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn id(text: &str) -> TokenId {
    TokenId::new(text).expect("valid id")
}

/// `n` base62 characters, deterministic, varied.
fn alnum(n: usize, seed: usize) -> String {
    ALNUM
        .chars()
        .cycle()
        .skip(seed % 62)
        .step_by(7)
        .take(n)
        .collect()
}

fn id_str<'a>(parsed: &'a ParsedToken<'_>) -> Option<&'a str> {
    parsed.id().map(TokenId::as_str)
}

fn prefixed_underscore() -> TokenFormat {
    TokenFormat::builder()
        .prefix("dbaudit_live_")
        .separator(Separator::Underscore)
        .build()
        .expect("valid format")
}

fn db_audit_placeholder_format() -> TokenFormat {
    TokenFormat::builder()
        .prefix("dbaudit_live_")
        .id(IdKind::None)
        .checksum(Checksum::None)
        .secret_chars(32)
        .accept_secret_lengths(8..=64)
        .build()
        .expect("the DB Audit placeholder format builds")
}

/// Every standard-layout format under test, with an id that fits it.
fn standard_formats() -> Vec<(&'static str, TokenFormat, Option<TokenId>)> {
    let b = TokenFormat::builder;
    vec![
        (
            "canonical",
            TokenFormat::canonical(),
            Some(id("q7Xa0LmB2pZe")),
        ),
        ("dct", TokenFormat::dct(), Some(id("42"))),
        (
            "prefix",
            b().prefix("tk_").build().unwrap(),
            Some(id("AbCdEfGh1234")),
        ),
        (
            "underscore",
            b().separator(Separator::Underscore).build().unwrap(),
            Some(id("AbCdEfGh1234")),
        ),
        (
            "pipe",
            b().separator(Separator::Pipe).build().unwrap(),
            Some(id("AbCdEfGh1234")),
        ),
        (
            "prefixed underscore",
            prefixed_underscore(),
            Some(id("AbCdEfGh1234")),
        ),
        (
            "numeric",
            b().id(IdKind::Numeric).build().unwrap(),
            Some(id("18446744073709551615")),
        ),
        (
            "random 20",
            b().id(IdKind::Random { len: 20 }).build().unwrap(),
            Some(id("abcdefghij0123456789")),
        ),
        (
            "id-less with prefix",
            b().prefix("ghp_").id(IdKind::None).build().unwrap(),
            None,
        ),
        (
            "id-less checksum only",
            b().id(IdKind::None).build().unwrap(),
            None,
        ),
        (
            "no checksum",
            b().checksum(Checksum::None).build().unwrap(),
            Some(id("AbCdEfGh1234")),
        ),
        (
            "explicit crc32 base62",
            b().checksum(Checksum::Crc32Base62)
                .id(IdKind::Numeric)
                .separator(Separator::Pipe)
                .prefix("x-")
                .build()
                .unwrap(),
            Some(id("7")),
        ),
        ("db audit placeholder", db_audit_placeholder_format(), None),
    ]
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn generate_then_parse_gives_the_id_back_for_every_standard_format() {
    for (name, format, token_id) in standard_formats() {
        let token = format
            .generate(token_id.as_ref())
            .unwrap_or_else(|e| panic!("{name}: generate failed: {e}"));
        let text = token.expose_secret();
        let parsed = format
            .parse(text)
            .unwrap_or_else(|e| panic!("{name}: generated token does not parse: {e}"));
        assert_eq!(parsed.id(), token_id.as_ref(), "{name}");
        assert!(text.contains(parsed.secret()), "{name}");
        assert!(!parsed.secret().is_empty(), "{name}");
        if let Some(prefix) = format.prefix() {
            assert!(text.starts_with(prefix), "{name}: {text}");
        }
        // Two generations never collide.
        let other = format.generate(token_id.as_ref()).unwrap();
        assert_ne!(other.expose_secret(), text, "{name}");
    }
}

#[test]
fn render_then_parse_gives_id_and_secret_back_for_every_standard_format() {
    for (name, format, token_id) in standard_formats() {
        // Use the generated length of the format: learn it from a generated token.
        let generated = format.generate(token_id.as_ref()).unwrap();
        let len = format
            .parse(generated.expose_secret())
            .unwrap()
            .secret()
            .len();
        let secret = alnum(len, name.len());
        let token = format
            .render(token_id.as_ref(), &secret)
            .unwrap_or_else(|e| panic!("{name}: render failed: {e}"));
        let parsed = format
            .parse(token.expose_secret())
            .unwrap_or_else(|e| panic!("{name}: rendered token does not parse: {e}"));
        assert_eq!(parsed.id(), token_id.as_ref(), "{name}");
        assert_eq!(parsed.secret(), secret, "{name}");
        // Rendering is deterministic.
        let again = format.render(token_id.as_ref(), &secret).unwrap();
        assert_eq!(again.expose_secret(), token.expose_secret(), "{name}");
    }
}

#[test]
fn canonical_layout_is_id_dot_secret_checksum() {
    let format = TokenFormat::canonical();
    let token = format.generate(Some(&id("q7Xa0LmB2pZe"))).unwrap();
    let text = token.expose_secret();
    assert_eq!(text.len(), 12 + 1 + 43 + 6);
    assert!(text.starts_with("q7Xa0LmB2pZe."));
    let parsed = format.parse(text).unwrap();
    assert_eq!(parsed.secret().len(), 43);
    assert_eq!(&text[13..13 + 43], parsed.secret());
    assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'));
    assert!(format.is_b64token());
    assert_eq!(format.id_kind(), IdKind::Random { len: 12 });
    assert_eq!(TokenFormat::default(), format);
}

#[test]
fn builder_layouts_put_each_part_where_documented() {
    let token = prefixed_underscore()
        .render(Some(&id("AbCdEfGh1234")), &alnum(43, 3))
        .unwrap();
    let text = token.expose_secret();
    assert!(text.starts_with("dbaudit_live_AbCdEfGh1234_"), "{text}");
    assert!(text[26..].starts_with(&alnum(43, 3)));
    assert_eq!(text.len(), 13 + 12 + 1 + 43 + 6);

    let pipe = TokenFormat::builder()
        .separator(Separator::Pipe)
        .build()
        .unwrap();
    let text = pipe
        .render(Some(&id("AbCdEfGh1234")), &alnum(43, 0))
        .unwrap();
    assert!(text.expose_secret().starts_with("AbCdEfGh1234|"));
    assert!(!pipe.is_b64token());

    let idless = TokenFormat::builder()
        .prefix("ghp_")
        .id(IdKind::None)
        .build()
        .unwrap();
    let text = idless.render(None, &alnum(43, 5)).unwrap();
    assert_eq!(text.expose_secret().len(), 4 + 43 + 6);
    assert!(
        text.expose_secret()
            .starts_with(&format!("ghp_{}", alnum(43, 5)))
    );

    let plain = TokenFormat::builder()
        .checksum(Checksum::None)
        .build()
        .unwrap();
    let text = plain
        .render(Some(&id("AbCdEfGh1234")), &alnum(43, 1))
        .unwrap();
    assert_eq!(
        text.expose_secret(),
        format!("AbCdEfGh1234.{}", alnum(43, 1))
    );
}

#[test]
fn dct_round_trip_and_layout() {
    let format = TokenFormat::dct();
    assert_eq!(format.id_kind(), IdKind::Numeric);
    let token = format.generate(Some(&TokenId::from_u64(7))).unwrap();
    let text = token.expose_secret();
    assert!(text.starts_with("7."));
    assert_eq!(text.len(), 2 + 64, "DCT generates 64-character secrets");
    let parsed = format.parse(text).unwrap();
    assert_eq!(parsed.id().and_then(TokenId::as_u64), Some(7));
    assert_eq!(parsed.secret(), &text[2..]);

    let secret = alnum(16, 9);
    let rendered = format
        .render(Some(&TokenId::from_u64(123)), &secret)
        .unwrap();
    assert_eq!(rendered.expose_secret(), format!("123.{secret}"));
    let parsed = format.parse(rendered.expose_secret()).unwrap();
    assert_eq!(id_str(&parsed), Some("123"));
    assert_eq!(parsed.secret(), secret);
}

#[test]
fn dct_accepts_secret_lengths_16_to_256_only() {
    let format = TokenFormat::dct();
    for len in [16, 17, 64, 255, 256] {
        let text = format!("5.{}", alnum(len, len));
        assert!(format.parse(&text).is_ok(), "length {len}");
    }
    for len in [1, 15, 257] {
        let text = format!("5.{}", alnum(len, len));
        assert_eq!(
            format.parse(&text),
            Err(FormatError::InvalidSecret),
            "length {len}"
        );
    }
    assert_eq!(format.parse("5."), Err(FormatError::InvalidSecret));
    assert_eq!(
        format.parse(&alnum(64, 0)),
        Err(FormatError::MissingSeparator)
    );
}

#[test]
fn sanctum_round_trip() {
    let format = TokenFormat::sanctum();
    assert_eq!(format.id_kind(), IdKind::Numeric);
    assert!(!format.is_b64token());
    let token = format.generate(Some(&TokenId::from_u64(99))).unwrap();
    let text = token.expose_secret();
    assert_eq!(text.len(), 3 + 40 + 8);
    assert!(text.starts_with("99|"));
    let parsed = format.parse(text).unwrap();
    assert_eq!(id_str(&parsed), Some("99"));
    // Sanctum hashes everything after the `|`.
    assert_eq!(parsed.secret(), &text[3..]);
    assert!(
        text[43..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );

    let entropy = alnum(40, 11);
    let rendered = format
        .render(Some(&TokenId::from_u64(3)), &entropy)
        .unwrap();
    let parsed = format.parse(rendered.expose_secret()).unwrap();
    assert_eq!(id_str(&parsed), Some("3"));
    assert!(parsed.secret().starts_with(&entropy));
    assert_eq!(parsed.secret().len(), 48);

    // Without an id: the bare token, looked up by its hash.
    let bare = format.render(None, &entropy).unwrap();
    assert_eq!(bare.expose_secret(), parsed.secret());
    let parsed = format.parse(bare.expose_secret()).unwrap();
    assert_eq!(parsed.id(), None);
    assert_eq!(parsed.secret(), bare.expose_secret());

    // Sanctum's secret part is exactly 40 characters.
    for bad in [alnum(39, 0), alnum(41, 0), format!("{}-", alnum(39, 0))] {
        assert_eq!(
            format.render(Some(&TokenId::from_u64(1)), &bad).err(),
            Some(FormatError::InvalidSecret)
        );
    }
}

#[test]
fn sanctum_with_prefix_round_trip_and_tokens_from_before_the_prefix() {
    let format = TokenFormat::sanctum_with_prefix("acme_").unwrap();
    assert_eq!(format.prefix(), Some("acme_"));
    let entropy = alnum(40, 4);
    let token = format
        .render(Some(&TokenId::from_u64(12)), &entropy)
        .unwrap();
    let text = token.expose_secret();
    assert!(text.starts_with(&format!("12|acme_{entropy}")), "{text}");
    assert_eq!(text.len(), 3 + 5 + 40 + 8);
    let parsed = format.parse(text).unwrap();
    assert_eq!(id_str(&parsed), Some("12"));
    // Everything after `|`, prefix included, is what Sanctum hashes.
    assert_eq!(parsed.secret(), &text[3..]);

    let generated = format.generate(Some(&TokenId::from_u64(5))).unwrap();
    assert!(generated.expose_secret().starts_with("5|acme_"));
    assert_eq!(
        id_str(&format.parse(generated.expose_secret()).unwrap()),
        Some("5")
    );

    // The seed token has no prefix; it was issued before one was configured.
    let parsed = format.parse(SANCTUM_SEED).unwrap();
    assert_eq!(id_str(&parsed), Some("1"));
    assert_eq!(parsed.secret(), &SANCTUM_SEED[2..]);

    assert!(TokenFormat::sanctum_with_prefix("").is_err());
    assert!(TokenFormat::sanctum_with_prefix("bad prefix").is_err());
    assert!(TokenFormat::sanctum_with_prefix(&"a".repeat(33)).is_err());
}

// ---------------------------------------------------------------------------------------------
// Seed tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn seed_dct_tokens_parse_with_their_ids() {
    let format = TokenFormat::dct();
    let one = format.parse(DCT_1).unwrap();
    assert_eq!(id_str(&one), Some("1"));
    assert_eq!(one.id().and_then(TokenId::as_u64), Some(1));
    assert_eq!(one.secret(), &DCT_1[2..]);
    let two = format.parse(DCT_2).unwrap();
    assert_eq!(id_str(&two), Some("2"));
    assert_eq!(two.id().and_then(TokenId::as_u64), Some(2));
    assert_eq!(two.secret(), &DCT_2[2..]);
    // DCT tokens have no checksum: render reproduces the text exactly.
    let again = format.render(one.id(), one.secret()).unwrap();
    assert_eq!(again.expose_secret(), DCT_1);
}

#[test]
fn seed_sanctum_token_parses_with_its_id_and_known_checksum() {
    let format = TokenFormat::sanctum();
    let parsed = format.parse(SANCTUM_SEED).unwrap();
    assert_eq!(id_str(&parsed), Some("1"));
    assert_eq!(parsed.id().and_then(TokenId::as_u64), Some(1));
    assert_eq!(
        parsed.secret(),
        format!("{SANCTUM_SEED_ENTROPY}{SANCTUM_SEED_CRC}")
    );
    // Rendering the same 40 characters gives the same crc32b as Laravel did.
    let rendered = format
        .render(Some(&TokenId::from_u64(1)), SANCTUM_SEED_ENTROPY)
        .unwrap();
    assert_eq!(rendered.expose_secret(), SANCTUM_SEED);
    assert!(rendered.expose_secret().ends_with(SANCTUM_SEED_CRC));
}

#[test]
fn seed_db_audit_placeholders_parse_without_an_id() {
    let format = db_audit_placeholder_format();
    for (text, secret) in [
        ("dbaudit_live_xxxxxxxxxxxxxxxx", "xxxxxxxxxxxxxxxx"),
        ("dbaudit_live_xxxxxxxx", "xxxxxxxx"),
    ] {
        let parsed = format.parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed.id(), None, "{text}");
        assert_eq!(parsed.secret(), secret, "{text}");
    }
    // Below the accepted lengths, or without the prefix, they do not parse.
    assert_eq!(
        format.parse("dbaudit_live_xxxxxxx"),
        Err(FormatError::InvalidSecret)
    );
    assert_eq!(
        format.parse("dbaudit_test_xxxxxxxxxxxxxxxx"),
        Err(FormatError::WrongPrefix)
    );
    assert_eq!(
        format.parse("dbaudit_live_"),
        Err(FormatError::InvalidSecret)
    );
}

#[test]
fn db_audit_builder_requirements() {
    // The generated length must be one of the accepted lengths.
    let too_long = TokenFormat::builder()
        .prefix("dbaudit_live_")
        .id(IdKind::None)
        .checksum(Checksum::None)
        .secret_chars(65)
        .accept_secret_lengths(8..=64)
        .build();
    assert_eq!(
        too_long,
        Err(apitoken::FormatConfigError::InvalidAcceptedLength)
    );
    // Fewer than 128 bits is refused even though 8..=64 would accept it on parse.
    let too_short = TokenFormat::builder()
        .prefix("dbaudit_live_")
        .id(IdKind::None)
        .checksum(Checksum::None)
        .secret_chars(16)
        .accept_secret_lengths(8..=64)
        .build();
    assert_eq!(
        too_short,
        Err(apitoken::FormatConfigError::InvalidSecretSize)
    );
    // An id-less format without a prefix or checksum could not tell its tokens from any text.
    let ambiguous = TokenFormat::builder()
        .id(IdKind::None)
        .checksum(Checksum::None)
        .build();
    assert_eq!(ambiguous, Err(apitoken::FormatConfigError::AmbiguousIdLess));
    assert_eq!(
        TokenFormat::builder().prefix("db audit").build(),
        Err(apitoken::FormatConfigError::InvalidPrefix)
    );
    assert_eq!(
        TokenFormat::builder().id(IdKind::Random { len: 7 }).build(),
        Err(apitoken::FormatConfigError::InvalidIdLength)
    );
}

// ---------------------------------------------------------------------------------------------
// Checksums
// ---------------------------------------------------------------------------------------------

/// Every single-character change of `text` (to each of several replacements) fails to parse.
fn assert_every_single_change_is_rejected(format: &TokenFormat, text: &str) {
    assert!(format.parse(text).is_ok());
    let replacements = ['0', 'a', 'Z', 'q', '9', '.', '|', '_', '-', ' ', '\0', 'é'];
    let chars: Vec<char> = text.chars().collect();
    let mut tried = 0;
    for at in 0..chars.len() {
        for replacement in replacements {
            if chars[at] == replacement {
                continue;
            }
            let mut changed = chars.clone();
            changed[at] = replacement;
            let changed: String = changed.into_iter().collect();
            let result = format.parse(&changed);
            assert!(
                result.is_err(),
                "changing position {at} to {replacement:?} was accepted"
            );
            tried += 1;
        }
        // The neighbouring character in the alphabet: the smallest possible typo.
        if chars[at].is_ascii_alphanumeric() {
            let i = ALNUM.find(chars[at]).unwrap();
            let next = ALNUM.as_bytes()[(i + 1) % 62] as char;
            let mut changed = chars.clone();
            changed[at] = next;
            let changed: String = changed.into_iter().collect();
            assert!(format.parse(&changed).is_err(), "position {at} to {next:?}");
        }
    }
    assert!(tried > chars.len() * 10);
}

#[test]
fn every_single_character_change_of_a_canonical_token_is_rejected() {
    let format = TokenFormat::canonical();
    for _ in 0..4 {
        let token = format.generate(Some(&id("q7Xa0LmB2pZe"))).unwrap();
        assert_every_single_change_is_rejected(&format, token.expose_secret());
    }
}

#[test]
fn base62_changes_inside_a_canonical_token_are_bad_checksums() {
    let format = TokenFormat::canonical();
    let token = format.generate(Some(&id("q7Xa0LmB2pZe"))).unwrap();
    let text = token.expose_secret();
    for at in (0..text.len()).filter(|&i| i != 12) {
        let c = text.as_bytes()[at] as char;
        let i = ALNUM.find(c).unwrap();
        let other = ALNUM.as_bytes()[(i + 31) % 62] as char;
        let mut changed = text.to_owned();
        changed.replace_range(at..=at, &other.to_string());
        assert_eq!(
            format.parse(&changed),
            Err(FormatError::BadChecksum),
            "position {at}"
        );
    }
}

#[test]
fn every_single_character_change_of_a_prefixed_token_is_rejected() {
    let format = prefixed_underscore();
    let token = format.generate(Some(&id("AbCdEfGh1234"))).unwrap();
    assert_every_single_change_is_rejected(&format, token.expose_secret());
}

#[test]
fn truncated_and_extended_canonical_tokens_are_rejected() {
    let format = TokenFormat::canonical();
    let token = format.generate(Some(&id("q7Xa0LmB2pZe"))).unwrap();
    let text = token.expose_secret();
    for end in 0..text.len() {
        assert!(format.parse(&text[..end]).is_err(), "truncated to {end}");
    }
    assert!(format.parse(&format!("{text}a")).is_err());
    assert!(format.parse(&format!("a{text}")).is_err());
    // Swapping two different adjacent characters of the secret is caught too.
    let bytes = text.as_bytes();
    let at = (13..55).find(|&i| bytes[i] != bytes[i + 1]).unwrap();
    let mut swapped = bytes.to_vec();
    swapped.swap(at, at + 1);
    let swapped = String::from_utf8(swapped).unwrap();
    assert_eq!(format.parse(&swapped), Err(FormatError::BadChecksum));
}

#[test]
fn sanctum_wrong_crc_is_a_bad_checksum() {
    let format = TokenFormat::sanctum();
    let base = &SANCTUM_SEED[..SANCTUM_SEED.len() - 8];
    for wrong in ["345196d3", "00000000", "245196d2", "ffffffff"] {
        let text = format!("{base}{wrong}");
        assert_eq!(
            format.parse(&text),
            Err(FormatError::BadChecksum),
            "{wrong}"
        );
    }
    // A change in the 40 characters is caught by the checksum as well.
    let mut changed = SANCTUM_SEED.to_owned();
    changed.replace_range(2..3, "8");
    assert_eq!(format.parse(&changed), Err(FormatError::BadChecksum));
    // Without the id, too.
    assert_eq!(
        format.parse(&format!("{SANCTUM_SEED_ENTROPY}345196d3")),
        Err(FormatError::BadChecksum)
    );
}

#[test]
fn sanctum_with_prefix_wrong_crc_is_a_bad_checksum() {
    let format = TokenFormat::sanctum_with_prefix("acme_").unwrap();
    let token = format
        .render(Some(&TokenId::from_u64(4)), &alnum(40, 2))
        .unwrap();
    let text = token.expose_secret();
    let last = text.as_bytes()[text.len() - 1];
    let replacement = if last == b'0' { "1" } else { "0" };
    let mut changed = text.to_owned();
    changed.replace_range(text.len() - 1.., replacement);
    assert_eq!(format.parse(&changed), Err(FormatError::BadChecksum));
}

#[test]
fn sanctum_2_tokens_without_checksum_parse() {
    let format = TokenFormat::sanctum();
    let entropy = alnum(40, 17);
    let text = format!("8|{entropy}");
    let parsed = format.parse(&text).unwrap();
    assert_eq!(id_str(&parsed), Some("8"));
    assert_eq!(parsed.secret(), entropy);
    let bare = format.parse(&entropy).unwrap();
    assert_eq!(bare.id(), None);
    assert_eq!(bare.secret(), entropy);
    // 41 to 47 characters are neither Sanctum 2 nor Sanctum 3.
    for len in [39, 41, 47, 49] {
        assert_eq!(
            format.parse(&format!("8|{}", alnum(len, 1))),
            Err(FormatError::InvalidSecret),
            "length {len}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Strict ids
// ---------------------------------------------------------------------------------------------

fn assert_bad_id(format: &TokenFormat, token: &str) {
    match format.parse(token) {
        Err(FormatError::InvalidId | FormatError::InvalidCharacter) => {}
        other => panic!("{token:?} gave {other:?}, expected InvalidId or InvalidCharacter"),
    }
}

const BAD_NUMERIC_IDS: &[&str] = &[
    "01",
    "00",
    "+1",
    "-1",
    "0x1",
    "1e0",
    "1_000",
    "18446744073709551616",
    "99999999999999999999",
    "100000000000000000000",
    "\u{ff11}",
    "\u{0661}",
    "\u{06f1}",
    "",
    " 1",
    "1 ",
];

#[test]
fn dct_ids_are_strict_canonical_decimals() {
    let format = TokenFormat::dct();
    let secret = alnum(64, 0);
    for bad in BAD_NUMERIC_IDS {
        assert_bad_id(&format, &format!("{bad}.{secret}"));
    }
    assert_eq!(
        format.parse(&format!(".{secret}")),
        Err(FormatError::InvalidId)
    );
    for ok in ["0", "1", "10", "18446744073709551615"] {
        let text = format!("{ok}.{secret}");
        let parsed = format.parse(&text).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(id_str(&parsed), Some(ok));
    }
    let text = format!("18446744073709551615.{secret}");
    let max = format.parse(&text).unwrap();
    assert_eq!(max.id().and_then(TokenId::as_u64), Some(u64::MAX));
}

#[test]
fn sanctum_ids_are_strict_canonical_decimals() {
    let format = TokenFormat::sanctum();
    let body = &SANCTUM_SEED[2..];
    for bad in BAD_NUMERIC_IDS {
        assert_bad_id(&format, &format!("{bad}|{body}"));
    }
    assert_eq!(
        format.parse(&format!("|{body}")),
        Err(FormatError::InvalidId)
    );
    let text = format!("18446744073709551615|{body}");
    let parsed = format.parse(&text).unwrap();
    assert_eq!(parsed.id().and_then(TokenId::as_u64), Some(u64::MAX));
}

#[test]
fn render_refuses_ids_that_do_not_fit_the_format() {
    let secret = alnum(64, 0);
    for bad in ["01", "abc", "1-2"] {
        assert_eq!(
            TokenFormat::dct().render(Some(&id(bad)), &secret).err(),
            Some(FormatError::InvalidId),
            "{bad}"
        );
        assert_eq!(
            TokenFormat::sanctum()
                .render(Some(&id(bad)), &alnum(40, 0))
                .err(),
            Some(FormatError::InvalidId),
            "{bad}"
        );
    }
    // A random id must have exactly the configured length and be base62.
    let canonical = TokenFormat::canonical();
    for bad in ["short", "q7Xa0LmB2pZeX", "q7Xa0LmB2p-e"] {
        assert_eq!(
            canonical.render(Some(&id(bad)), &alnum(43, 0)).err(),
            Some(FormatError::InvalidId),
            "{bad}"
        );
    }
    assert_eq!(
        canonical.render(None, &alnum(43, 0)).err(),
        Some(FormatError::InvalidId)
    );
    assert!(canonical.generate(None).is_err());
    assert!(TokenFormat::dct().generate(Some(&id("01"))).is_err());
}

#[test]
fn random_ids_are_exactly_their_length_of_base62() {
    let format = TokenFormat::canonical();
    let token = format
        .render(Some(&id("q7Xa0LmB2pZe")), &alnum(43, 0))
        .unwrap();
    let text = token.expose_secret();
    // Replace the id with other ids and recompute nothing: all are rejected as ids, not as
    // checksums, because the id is checked first.
    for bad in [
        "q7Xa0LmB2pZ",
        "q7Xa0LmB2pZeA",
        "q7Xa0-mB2pZe",
        "q7Xa0_mB2pZe",
        "",
    ] {
        let changed = format!("{bad}{}", &text[12..]);
        assert_eq!(format.parse(&changed), Err(FormatError::InvalidId), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Splitting
// ---------------------------------------------------------------------------------------------

#[test]
fn dct_splits_on_the_first_dot_only() {
    let format = TokenFormat::dct();
    let a = alnum(20, 0);
    let b = alnum(20, 5);
    assert_eq!(
        format.parse(&format!("1.{a}.{b}")),
        Err(FormatError::InvalidSecret)
    );
    assert_eq!(
        format.parse(&format!("1.{a}|{b}")),
        Err(FormatError::InvalidSecret)
    );
    assert_eq!(
        format.parse(&format!("1.{a}_{b}")),
        Err(FormatError::InvalidSecret)
    );
    // `1.2.secret` is not id `1.2`, nor id `2`.
    assert_eq!(
        format.parse(&format!("1.2.{a}")),
        Err(FormatError::InvalidSecret)
    );
}

#[test]
fn sanctum_splits_on_the_first_pipe_only() {
    let format = TokenFormat::sanctum();
    let body = &SANCTUM_SEED[2..];
    assert_eq!(
        format.parse(&format!("1|2|{}", &body[2..])),
        Err(FormatError::InvalidSecret)
    );
    assert_eq!(
        format.parse(&format!("1|{}|{}", &body[..20], &body[21..])),
        Err(FormatError::InvalidSecret)
    );
    assert_eq!(
        format.parse(&format!("1|{}.{}", &body[..20], &body[21..])),
        Err(FormatError::InvalidSecret)
    );
}

#[test]
fn canonical_with_a_second_separator_is_rejected() {
    let format = TokenFormat::canonical();
    let token = format
        .render(Some(&id("q7Xa0LmB2pZe")), &alnum(43, 0))
        .unwrap();
    let text = token.expose_secret();
    let mut changed = text.to_owned();
    changed.replace_range(20..21, ".");
    assert!(format.parse(&changed).is_err());
    let underscore = TokenFormat::builder()
        .separator(Separator::Underscore)
        .checksum(Checksum::None)
        .build()
        .unwrap();
    assert_eq!(
        underscore.parse(&format!("AbCdEfGh1234_{}_{}", alnum(20, 0), alnum(22, 0))),
        Err(FormatError::InvalidSecret)
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------------

fn all_formats() -> Vec<(&'static str, TokenFormat)> {
    let mut formats: Vec<(&'static str, TokenFormat)> = standard_formats()
        .into_iter()
        .map(|(name, format, _)| (name, format))
        .collect();
    formats.push(("sanctum", TokenFormat::sanctum()));
    formats.push((
        "sanctum prefix",
        TokenFormat::sanctum_with_prefix("acme_").unwrap(),
    ));
    formats
}

#[test]
fn empty_text_is_empty_in_every_format() {
    for (name, format) in all_formats() {
        assert_eq!(format.parse(""), Err(FormatError::Empty), "{name}");
    }
}

#[test]
fn overlong_text_is_too_long_in_every_format() {
    for (name, format) in all_formats() {
        let at_limit = "a".repeat(MAX_TOKEN_LEN);
        assert_ne!(format.parse(&at_limit), Err(FormatError::TooLong), "{name}");
        let over = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(format.parse(&over), Err(FormatError::TooLong), "{name}");
        // Length is checked before characters.
        let hostile = "\0".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(format.parse(&hostile), Err(FormatError::TooLong), "{name}");
        let huge = "1.".repeat(100_000);
        assert_eq!(format.parse(&huge), Err(FormatError::TooLong), "{name}");
    }
    // A valid token padded past the limit.
    let padded = format!("{DCT_1}{}", "a".repeat(MAX_TOKEN_LEN));
    assert_eq!(TokenFormat::dct().parse(&padded), Err(FormatError::TooLong));
}

#[test]
fn hostile_characters_are_invalid_characters_in_every_format() {
    let hostile = [
        "\0",
        "\r",
        "\n",
        "\t",
        " ",
        "\"",
        "'",
        "\\",
        "=",
        "+",
        "/",
        "~",
        "é",
        "\u{ff11}",
        "\u{200b}",
        "\u{feff}",
        "\u{7f}",
        ";",
        ",",
        "%",
        "\u{1f600}",
    ];
    for (name, format) in all_formats() {
        for bad in hostile {
            for text in [
                format!("{bad}{DCT_1}"),
                format!("{DCT_1}{bad}"),
                format!("1{bad}{}", &DCT_1[1..]),
                format!("{}{bad}{}", &SANCTUM_SEED[..10], &SANCTUM_SEED[10..]),
                bad.to_owned(),
            ] {
                assert_eq!(
                    format.parse(&text),
                    Err(FormatError::InvalidCharacter),
                    "{name}: {text:?}"
                );
            }
        }
        // The seeds' "no extra whitespace or newline" troubleshooting case.
        assert_eq!(
            format.parse(&format!("{SANCTUM_SEED}\n")),
            Err(FormatError::InvalidCharacter),
            "{name}"
        );
        assert_eq!(
            format.parse(&format!("Bearer {SANCTUM_SEED}")),
            Err(FormatError::InvalidCharacter),
            "{name}"
        );
    }
}

#[test]
fn wrong_prefix_is_reported() {
    let format = TokenFormat::builder().prefix("tk_live_").build().unwrap();
    let other = TokenFormat::builder().prefix("tk_test_").build().unwrap();
    let token = other.generate(Some(&id("AbCdEfGh1234"))).unwrap();
    assert_eq!(
        format.parse(token.expose_secret()),
        Err(FormatError::WrongPrefix)
    );
    let canonical = TokenFormat::canonical()
        .generate(Some(&id("AbCdEfGh1234")))
        .unwrap();
    assert_eq!(
        format.parse(canonical.expose_secret()),
        Err(FormatError::WrongPrefix)
    );
    // The prefix is case-sensitive.
    let token = format.generate(Some(&id("AbCdEfGh1234"))).unwrap();
    let upper = format!("TK_LIVE_{}", &token.expose_secret()[8..]);
    assert_eq!(format.parse(&upper), Err(FormatError::WrongPrefix));
    assert_eq!(format.parse("tk_live"), Err(FormatError::WrongPrefix));
    assert!(format.parse(token.expose_secret()).is_ok());
}

#[test]
fn errors_never_contain_the_input() {
    let canonical = TokenFormat::canonical();
    let token = canonical
        .render(Some(&id("q7Xa0LmB2pZe")), &alnum(43, 8))
        .unwrap();
    let text = token.expose_secret();
    let secret = alnum(43, 8);
    let mut bad_checksum = text.to_owned();
    bad_checksum.replace_range(20..21, if &text[20..21] == "A" { "B" } else { "A" });
    let cases: Vec<(TokenFormat, String)> = vec![
        (canonical.clone(), bad_checksum),
        (canonical.clone(), format!("{text} ")),
        (canonical.clone(), format!("q7Xa0LmB2pZ.{secret}")),
        (TokenFormat::dct(), format!("01.{secret}")),
        (TokenFormat::dct(), format!("1.{secret}.{secret}")),
        (TokenFormat::sanctum(), format!("1|{secret}")),
        (
            TokenFormat::builder().prefix("zz_").build().unwrap(),
            text.to_owned(),
        ),
        (canonical.clone(), secret.repeat(20)),
    ];
    for (format, input) in cases {
        let err = format.parse(&input).expect_err("rejected");
        let shown = [err.to_string(), format!("{err:?}"), format!("{err:#?}")];
        for s in shown {
            assert!(!s.contains(&secret[..10]), "{s}");
            assert!(!s.contains("q7Xa0LmB2p"), "{s}");
        }
    }
    // ParsedToken's Debug shows the id and hides the secret.
    let parsed = canonical.parse(text).unwrap();
    let debug = format!("{parsed:?}");
    assert!(debug.contains("q7Xa0LmB2pZe"), "{debug}");
    assert!(!debug.contains(&secret[..10]), "{debug}");
    // A generated token's Debug is redacted.
    assert!(!format!("{token:?}").contains(&secret[..10]));
}

// ---------------------------------------------------------------------------------------------
// Several formats in one verifier: a format that parses another's tokens does not shadow it
// ---------------------------------------------------------------------------------------------

mod several_formats {
    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use apitoken::{
        IdKind, MemoryStore, NewToken, Owner, RejectReason, SecretHash, SecretHasher, StoreError,
        StoredToken, TokenFormat, TokenId, TokenRecord, TokenStore, Verifier,
    };
    use chrono::{DateTime, Utc};

    /// A `MemoryStore` that counts lookups (by id and by hash).
    #[derive(Clone, Default)]
    struct Counting {
        inner: Arc<MemoryStore>,
        lookups: Arc<AtomicUsize>,
    }

    impl Counting {
        fn take_lookups(&self) -> usize {
            self.lookups.swap(0, Ordering::SeqCst)
        }
    }

    impl TokenStore for Counting {
        fn insert(
            &self,
            record: TokenRecord,
            hash: SecretHash,
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            self.inner.insert(record, hash)
        }
        fn next_id(&self) -> impl Future<Output = Result<TokenId, StoreError>> + Send {
            self.inner.next_id()
        }
        fn get(
            &self,
            id: &TokenId,
        ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            self.inner.get(id)
        }
        fn find_by_hash(
            &self,
            hash: &SecretHash,
        ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            self.inner.find_by_hash(hash)
        }
        fn list_by_owner(
            &self,
            owner: &Owner,
        ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send {
            self.inner.list_by_owner(owner)
        }
        fn revoke(
            &self,
            id: &TokenId,
            at: DateTime<Utc>,
        ) -> impl Future<Output = Result<bool, StoreError>> + Send {
            self.inner.revoke(id, at)
        }
        fn revoke_owner(
            &self,
            owner: &Owner,
            at: DateTime<Utc>,
        ) -> impl Future<Output = Result<usize, StoreError>> + Send {
            self.inner.revoke_owner(owner, at)
        }
        fn record_last_used(
            &self,
            id: &TokenId,
            at: DateTime<Utc>,
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            self.inner.record_last_used(id, at)
        }
    }

    fn owner() -> Owner {
        Owner::new("team-1").expect("owner")
    }

    fn verifier(store: &Counting, formats: &[&TokenFormat]) -> Verifier<Counting> {
        let mut builder = Verifier::builder(store.clone()).format(formats[0].clone());
        for format in &formats[1..] {
            builder = builder.also_accept((*format).clone());
        }
        builder.disable_last_used().build()
    }

    async fn issue(store: &Counting, format: &TokenFormat) -> String {
        let issued = verifier(store, &[format])
            .issuer()
            .issue(NewToken::new("t", owner()))
            .await
            .expect("issued");
        issued.token.expose_secret().to_owned()
    }

    /// `tok` and `toklive` in two layouts where `tok` parses every `toklive` token: id-less
    /// ("live" joins the secret) and with random ids ("live" joins the id).
    fn tok_and_toklive() -> Vec<(TokenFormat, TokenFormat)> {
        let b = TokenFormat::builder;
        vec![
            (
                b().prefix("tok")
                    .id(IdKind::None)
                    .accept_secret_lengths(43..=47)
                    .build()
                    .expect("tok"),
                b().prefix("toklive")
                    .id(IdKind::None)
                    .build()
                    .expect("toklive"),
            ),
            (
                b().prefix("tok")
                    .id(IdKind::Random { len: 16 })
                    .build()
                    .expect("tok"),
                b().prefix("toklive")
                    .id(IdKind::Random { len: 12 })
                    .build()
                    .expect("toklive"),
            ),
        ]
    }

    #[tokio::test]
    async fn a_shorter_prefix_accepted_first_does_not_shadow_a_longer_one() {
        for (tok, toklive) in tok_and_toklive() {
            let store = Counting::default();
            let old = issue(&store, &tok).await;
            let new = issue(&store, &toklive).await;
            // The shadowing shape: `tok` parses the `toklive` token, to a different id or secret.
            assert!(tok.parse(&new).is_ok(), "{tok:?} parses {new}");

            for order in [[&tok, &toklive], [&toklive, &tok]] {
                let both = verifier(&store, &order);
                for token in [&old, &new] {
                    let verified = both.authenticate(token).await;
                    assert!(verified.is_ok(), "{order:?}: {token} refused: {verified:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_canonical_token_whose_id_is_all_digits_is_not_taken_for_dct() {
        let store = Counting::default();
        let canonical = TokenFormat::canonical();
        let dct = TokenFormat::dct();
        // A random id that happens to be all digits (about 3 in 10^10 of them).
        let digits = TokenId::new("123456789012").expect("id");
        let token = canonical.generate(Some(&digits)).expect("generated");
        let token = token.expose_secret();
        let parsed_as_dct = dct
            .parse(token)
            .expect("a canonical token of this id is DCT-shaped");
        assert_eq!(parsed_as_dct.id(), Some(&digits));
        let secret = canonical
            .parse(token)
            .expect("canonical")
            .secret()
            .to_owned();
        let record = TokenRecord::new(digits, owner(), "all digits", Utc::now());
        store
            .insert(record, SecretHasher::sha256().hash(secret.as_bytes()))
            .await
            .expect("inserted");
        let dct_token = issue(&store, &dct).await;

        let both = verifier(&store, &[&dct, &canonical]);
        let principal = both
            .authenticate(token)
            .await
            .expect("the canonical token verifies");
        assert_eq!(principal.token_id(), &digits);
        assert!(both.authenticate(&dct_token).await.is_ok());
        // Its id with another secret is still refused, as a wrong secret of that record.
        let forged = canonical
            .render(Some(&digits), &"x".repeat(43))
            .expect("rendered");
        let refused = both
            .authenticate(forged.expose_secret())
            .await
            .expect_err("wrong secret");
        assert_eq!(refused.reason(), Some(RejectReason::WrongSecret));
        assert_eq!(refused.token_id(), Some(&digits));
    }

    #[tokio::test]
    async fn a_token_no_record_matches_costs_one_lookup_per_format_that_parses_it() {
        let (tok, toklive) = tok_and_toklive().remove(1);
        let store = Counting::default();
        let issued = issue(&store, &toklive).await;
        let known = toklive
            .parse(&issued)
            .expect("parses")
            .id()
            .copied()
            .expect("id");
        let both = verifier(&store, &[&tok, &toklive]);
        store.take_lookups();

        // Unknown id and known id with a wrong secret: the same work, a lookup per format.
        let unknown = toklive
            .render(
                Some(&TokenId::new("AbCdEfGh1234").expect("id")),
                &"y".repeat(43),
            )
            .expect("rendered");
        let wrong = toklive
            .render(Some(&known), &"y".repeat(43))
            .expect("rendered");
        for (token, reason) in [
            (&unknown, RejectReason::UnknownToken),
            (&wrong, RejectReason::WrongSecret),
        ] {
            let refused = both.authenticate(token.expose_secret()).await.unwrap_err();
            assert_eq!(refused.reason(), Some(reason));
            assert_eq!(store.take_lookups(), 2, "{reason:?}");
        }
        // The valid token stops at its match; text only one format parses costs one lookup.
        assert!(both.authenticate(&issued).await.is_ok());
        assert_eq!(store.take_lookups(), 2, "tok first, then toklive's match");
        let only_tok = tok
            .render(
                Some(&TokenId::new("AbCdEfGh12345678").expect("id")),
                &"y".repeat(43),
            )
            .expect("rendered");
        assert!(both.authenticate(only_tok.expose_secret()).await.is_err());
        assert_eq!(store.take_lookups(), 1);
        // Malformed text: no lookup. A format added twice is looked up once.
        assert!(both.authenticate("tok_nothing").await.is_err());
        assert_eq!(store.take_lookups(), 0);
        let twice = verifier(&store, &[&toklive, &toklive]);
        assert!(twice.authenticate(unknown.expose_secret()).await.is_err());
        assert_eq!(store.take_lookups(), 1);
    }
}
