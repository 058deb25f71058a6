//! Every format's parser on arbitrary text: never panics, and what it accepts renders back to
//! the same text with `TokenFormat::render`.
//!
//! "Renders back" for each layout, as `docs/formats.md` and `TokenFormat::parse` describe it:
//!
//! - Standard layouts (`[prefix]` `[id separator]` secret `[checksum]`):
//!   `render(id, secret)` is the text, byte for byte.
//! - Sanctum (`[id|]` `[prefix]` 40 random characters `[crc32b]`): the random characters are
//!   the hashed part without the prefix and the checksum. The prefix is optional on parse
//!   (tokens issued before it was configured have none), so a body without it renders with the
//!   prefix-less format; the checksum is optional too (Sanctum 2 tokens have none), so such a
//!   body renders to the text followed by its eight-digit checksum.
#![no_main]

use apitoken::{IdKind, Separator, TokenFormat, TokenId};
use libfuzzer_sys::fuzz_target;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

enum Layout {
    Standard,
    Sanctum(Option<&'static str>),
}

fn formats() -> [(TokenFormat, Layout); 6] {
    [
        (TokenFormat::canonical(), Layout::Standard),
        (TokenFormat::dct(), Layout::Standard),
        (TokenFormat::sanctum(), Layout::Sanctum(None)),
        (
            TokenFormat::sanctum_with_prefix("acme_").unwrap(),
            Layout::Sanctum(Some("acme_")),
        ),
        (
            TokenFormat::builder()
                .prefix("dbaudit_live_")
                .separator(Separator::Underscore)
                .build()
                .unwrap(),
            Layout::Standard,
        ),
        (
            TokenFormat::builder()
                .prefix("ghp_")
                .id(IdKind::None)
                .secret_chars(30)
                .build()
                .unwrap(),
            Layout::Standard,
        ),
    ]
}

/// What `text`, accepted by `format`, must render back to.
fn check_round_trip(format: &TokenFormat, layout: &Layout, text: &str) {
    let Ok(parsed) = format.parse(text) else {
        return;
    };
    // The hashed part is part of the text, and ids are short and printable.
    assert!(text.contains(parsed.secret()));
    if let Some(id) = parsed.id() {
        assert!(text.contains(id.as_str()));
    }
    match layout {
        Layout::Standard => {
            let rendered = format
                .render(parsed.id(), parsed.secret())
                .unwrap_or_else(|e| panic!("{text:?} parsed but does not render: {e:?}"));
            assert_eq!(rendered.expose_secret(), text, "rendered back");
        }
        Layout::Sanctum(prefix) => {
            let body = parsed.secret();
            let unprefixed = prefix
                .and_then(|p| body.strip_prefix(p))
                .filter(|rest| rest.len() == 40 || rest.len() == 48);
            let (entropy_and_sum, renderer) = match unprefixed {
                Some(rest) => (rest, format.clone()),
                None => (body, TokenFormat::sanctum()),
            };
            assert!(
                entropy_and_sum.len() == 40 || entropy_and_sum.len() == 48,
                "{text:?}: a Sanctum body of {} characters",
                entropy_and_sum.len()
            );
            let rendered = renderer
                .render(parsed.id(), &entropy_and_sum[..40])
                .unwrap_or_else(|e| panic!("{text:?} parsed but does not render: {e:?}"));
            let rendered = rendered.expose_secret();
            if entropy_and_sum.len() == 48 {
                assert_eq!(rendered, text, "rendered back");
            } else {
                assert_eq!(rendered.len(), text.len() + 8, "{text:?} -> {rendered:?}");
                assert!(rendered.starts_with(text), "{text:?} -> {rendered:?}");
            }
        }
    }
}

/// The secret length `formats()` generate, in their order (Sanctum: the random part).
const SECRET_LEN: [usize; 6] = [43, 64, 40, 40, 43, 30];

/// A token of `formats()[pick]` made from fuzz bytes (its id and secret mapped onto the
/// format's alphabets; Sanctum's with or without id and checksum), then edited at up to two
/// places, so that most inputs are accepted or a couple of edits from it.
fn near_token(data: &[u8]) -> Option<String> {
    let (&pick, rest) = data.split_first()?;
    let (&edits, rest) = rest.split_first()?;
    let formats = formats();
    let slot = usize::from(pick) % formats.len();
    let (format, layout) = &formats[slot];
    let base62 = |b: &u8| char::from(BASE62[usize::from(*b) % 62]);
    let (id_bytes, rest) = rest.split_at(rest.len().min(8));
    let numeric = || TokenId::from_u64(id_bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)));
    let id = match (layout, format.id_kind()) {
        (Layout::Sanctum(_), _) => (pick & 0x80 == 0).then(numeric),
        (_, IdKind::Numeric) => Some(numeric()),
        (_, IdKind::Random { len }) if !id_bytes.is_empty() => {
            let text: String = id_bytes.iter().cycle().take(len).map(base62).collect();
            Some(TokenId::new(&text).ok()?)
        }
        _ => None,
    };
    let length = SECRET_LEN[slot];
    let (secret_bytes, tail) = rest.split_at(rest.len().min(length));
    if secret_bytes.is_empty() {
        return None;
    }
    let secret: String = secret_bytes
        .iter()
        .cycle()
        .take(length)
        .map(base62)
        .collect();
    let rendered = format.render(id.as_ref(), &secret).ok()?;
    let mut text = rendered.expose_secret().as_bytes().to_vec();
    if matches!(layout, Layout::Sanctum(_)) && pick & 0x40 != 0 {
        text.truncate(text.len() - 8); // Sanctum 2: no checksum
    }
    for pair in tail.chunks_exact(2).take(usize::from(edits % 3)) {
        let at = usize::from(pair[0]) % (text.len() + 1);
        match (pair[1] % 4, at < text.len()) {
            (0, true) => {
                text.remove(at);
            }
            (1, true) => text[at] = pair[1],
            (2, true) => text[at] = text[at].to_ascii_uppercase(),
            _ => text.insert(at, pair[1]),
        }
    }
    String::from_utf8(text).ok()
}

fuzz_target!(|data: &[u8]| {
    let near = match data.first() {
        Some(b) if b % 2 == 0 => near_token(&data[1..]),
        _ => None,
    };
    let text = match &near {
        Some(text) => text.as_str(),
        None => match std::str::from_utf8(data) {
            Ok(text) => text,
            Err(_) => return,
        },
    };
    for (format, layout) in &formats() {
        check_round_trip(format, layout, text);
    }
});
