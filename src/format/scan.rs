//! The byte scan every parse starts with: which bytes are outside the token alphabet, and how
//! many outside base62, eight at a time.

/// Whether any byte is outside the token alphabet (`0-9A-Za-z` and `.|_-`), and how many are
/// outside base62: eight bytes at a time, in the bits of a `u64` (SWAR), about twice as fast
/// as a table lookup a byte. `classify_bytewise` in the tests is the plain definition.
pub(super) fn classify(raw: &[u8]) -> (bool, usize) {
    let (words, rest) = raw.as_chunks::<8>();
    let (mut invalid, mut outside) = (0u64, 0u32);
    for word in words {
        let (i, o) = classify_word(u64::from_le_bytes(*word));
        invalid |= i;
        outside += o;
    }
    // The tail, padded with a base62 byte, which changes neither result.
    let mut last = [b'0'; 8];
    last[..rest.len()].copy_from_slice(rest);
    let (i, o) = classify_word(u64::from_le_bytes(last));
    (invalid | i != 0, (outside + o) as usize)
}

/// [`classify`] for eight bytes: a high bit set in the first result for each byte outside the
/// token alphabet, and the number of bytes outside base62.
fn classify_word(word: u64) -> (u64, u32) {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let ascii = word & LOW7;
    // The high bit of each byte: set where that byte is at least `c`. A 7-bit byte plus at
    // most 0x7f stays below 0x100, so no carry crosses into the next byte.
    let at_least = |c: u8| (ascii + u64::from(0x80 - c) * 0x0101_0101_0101_0101) & HIGH;
    let within = |lo: u8, hi: u8| at_least(lo) & !at_least(hi + 1);
    // `& !word`: a byte with its high bit set is not base62, whatever its low bits.
    let base62 = (within(b'0', b'9') | within(b'A', b'Z') | within(b'a', b'z')) & !word;
    let punct = within(b'-', b'.') | within(b'_', b'_') | within(b'|', b'|');
    let invalid = (word & HIGH) | (!(base62 | punct) & HIGH);
    // The count of high bits, by summing the bytes' 0/1 into the top byte: `count_ones` is a
    // dozen instructions on x86-64 without POPCNT, which baseline builds assume.
    let outside = ((!base62 & HIGH) >> 7).wrapping_mul(0x0101_0101_0101_0101) >> 56;
    (invalid, outside as u32)
}

pub(super) fn is_base62(text: &str) -> bool {
    classify(text.as_bytes()).1 == 0
}
