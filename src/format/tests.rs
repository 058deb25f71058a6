//! Unit tests of the parent module.

use super::*;

/// The definition [`classify`] computes faster.
fn classify_bytewise(raw: &[u8]) -> (bool, usize) {
    let token = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'|' | b'_' | b'-');
    (
        !raw.iter().all(token),
        raw.iter().filter(|b| !b.is_ascii_alphanumeric()).count(),
    )
}

#[test]
fn classify_agrees_with_the_definition_for_every_byte_at_every_position() {
    for len in 1..=19 {
        for at in 0..len {
            for byte in 0..=255u8 {
                let mut raw = vec![b'a'; len];
                raw[at] = byte;
                raw[len - 1 - at] = b'.';
                raw[at] = byte;
                assert_eq!(classify(&raw), classify_bytewise(&raw), "{raw:?}");
            }
        }
    }
    assert_eq!(classify(b""), (false, 0));
}

const DCT_1: &str = "1.0p9PMkZO4Hgy0ezwjhX0Fi4lEKrD4pflejgqjd0pfKtywlSWR9G0fIaWajuKcBT3";
const DCT_2: &str = "2.vCfC0MnpySYZLshuxap2aZ7xqBKAnQvV7hFnobe7xuNlHS9AF2NQnV9XXw4UyET6";
const SANCTUM: &str = "1|7TEwyZaQXMXRVBZV9USjWNRbXAbPv9BrgMJSLDCk345196d2";

fn id(text: &str) -> TokenId {
    TokenId::new(text).unwrap()
}

#[test]
fn seed_tokens_parse_with_their_ids() {
    let dct = TokenFormat::dct();
    let p = dct.parse(DCT_1).unwrap();
    assert_eq!(p.id(), Some(&id("1")));
    assert_eq!(p.secret(), &DCT_1[2..]);
    assert_eq!(dct.parse(DCT_2).unwrap().id(), Some(&id("2")));

    let p = TokenFormat::sanctum().parse(SANCTUM).unwrap();
    assert_eq!(p.id(), Some(&id("1")));
    assert_eq!(p.secret(), &SANCTUM[2..]);
}

#[test]
fn bits_to_chars() {
    assert_eq!(chars_for_bits(256), 43);
    assert_eq!(chars_for_bits(128), 22);
    assert!(TokenFormat::builder().secret_bits(127).build().is_err());
    assert!(TokenFormat::builder().secret_chars(21).build().is_err());
    assert!(TokenFormat::builder().secret_bits(128).build().is_ok());
}

#[test]
fn checksum_covers_prefix_and_id() {
    let format = TokenFormat::builder().prefix("tk_").build().unwrap();
    let token = format.generate(Some(&id("AbCdEfGh1234"))).unwrap();
    let text = token.expose_secret();
    assert!(format.parse(text).is_ok());
    // Change one id character: the checksum no longer matches.
    let tampered = text.replacen("AbCd", "AbCe", 1);
    assert_eq!(format.parse(&tampered), Err(FormatError::BadChecksum));
}

#[test]
fn sanctum_prefix_is_optional_on_parse() {
    let format = TokenFormat::sanctum_with_prefix("acme_").unwrap();
    let with = format.generate(Some(&id("5"))).unwrap();
    assert!(with.expose_secret().starts_with("5|acme_"));
    let p = format.parse(with.expose_secret()).unwrap();
    assert_eq!(p.secret(), &with.expose_secret()[2..]);
    assert!(format.parse(SANCTUM).is_ok());
}

/// `text` with its six-character checksum recomputed, so only the other checks can refuse it.
fn with_checksum(text: &str) -> String {
    let body = &text[..text.len() - checksum::BASE62_LEN];
    format!(
        "{body}{}",
        std::str::from_utf8(&checksum::crc32_base62(body.as_bytes())).unwrap()
    )
}

#[test]
fn punctuation_in_the_id_or_secret_is_refused_even_with_a_right_checksum() {
    // The scan's count lets a clean token skip the id's and the secret's own base62 checks; a
    // byte of the token alphabet that is not base62 must still be found in either.
    for prefix in [None, Some("tk_")] {
        let mut builder = TokenFormat::builder();
        if let Some(prefix) = prefix {
            builder = builder.prefix(prefix);
        }
        let format = builder.build().unwrap();
        let good = format.generate(Some(&id("AbCdEfGh1234"))).unwrap();
        let good = good.expose_secret();
        assert!(format.parse(good).is_ok());
        // Within the 12-character id, and within the secret after its `.`.
        let id_at = prefix.map_or(0, str::len) + 3;
        let secret_at = prefix.map_or(0, str::len) + 13 + 5;
        for punct in ["-", "_", "|", "."] {
            let mut bad_id = good.to_owned();
            bad_id.replace_range(id_at..=id_at, punct);
            assert_eq!(
                format.parse(&with_checksum(&bad_id)),
                Err(FormatError::InvalidId),
                "{bad_id}"
            );
            let mut bad_secret = good.to_owned();
            bad_secret.replace_range(secret_at..=secret_at, punct);
            assert_eq!(
                format.parse(&with_checksum(&bad_secret)),
                Err(FormatError::InvalidSecret),
                "{bad_secret}"
            );
        }
    }
}
