//! Every format's parser on arbitrary text: never panics, and what it accepts renders back.
#![no_main]

use apitoken::{IdKind, Separator, TokenFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let formats = [
        TokenFormat::canonical(),
        TokenFormat::dct(),
        TokenFormat::sanctum(),
        TokenFormat::sanctum_with_prefix("acme_").unwrap(),
        TokenFormat::builder()
            .prefix("dbaudit_live_")
            .separator(Separator::Underscore)
            .build()
            .unwrap(),
        TokenFormat::builder()
            .prefix("ghp_")
            .id(IdKind::None)
            .secret_chars(30)
            .build()
            .unwrap(),
    ];
    for format in &formats {
        if let Ok(parsed) = format.parse(text) {
            // The hashed part is part of the text, and ids are short and printable.
            assert!(text.contains(parsed.secret()));
            if let Some(id) = parsed.id() {
                assert!(text.contains(id.as_str()));
            }
        }
    }
});
