//! The byte scan every parse starts with: which bytes are outside the token alphabet, and how
//! many outside base62.

/// A byte's class in [`CLASS`]: not base62.
const OUTSIDE: u8 = 1;
/// A byte's class in [`CLASS`]: not in the token alphabet either.
const INVALID: u8 = 2;

/// Each byte's class: 0 for base62, [`OUTSIDE`] for the punctuation a token may hold
/// (`.|_-`), [`OUTSIDE`] | [`INVALID`] for everything else.
static CLASS: [u8; 256] = class_table();

const fn class_table() -> [u8; 256] {
    let mut table = [OUTSIDE | INVALID; 256];
    let mut b = 0u8;
    while b < 0x80 {
        table[b as usize] = if b.is_ascii_alphanumeric() {
            0
        } else if matches!(b, b'.' | b'|' | b'_' | b'-') {
            OUTSIDE
        } else {
            OUTSIDE | INVALID
        };
        b += 1;
    }
    table
}

/// Whether any byte is outside the token alphabet (`0-9A-Za-z` and `.|_-`), and how many are
/// outside base62. Eight bytes at a time: most words of a token are all base62, which one
/// test on a `u64` shows (SWAR); only the other words, and the tail, are read a byte at a
/// time. `classify_bytewise` in the tests is the plain definition.
pub(super) fn classify(raw: &[u8]) -> (bool, usize) {
    let (words, rest) = raw.as_chunks::<8>();
    let (mut class, mut outside) = (0u8, 0usize);
    for word in words {
        if !all_base62(u64::from_le_bytes(*word)) {
            let (c, o) = classify_bytes(word);
            class |= c;
            outside += o;
        }
    }
    let (c, o) = classify_bytes(rest);
    ((class | c) & INVALID != 0, outside + o)
}

/// [`classify`] by table, a byte at a time: the classes seen, and the count outside base62.
fn classify_bytes(raw: &[u8]) -> (u8, usize) {
    raw.iter().fold((0, 0), |(class, outside), &b| {
        let c = CLASS[usize::from(b)];
        (class | c, outside + usize::from(c & OUTSIDE))
    })
}

/// Whether all eight bytes of `word` are base62.
fn all_base62(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x80 * ONES;
    const LOW7: u64 = 0x7f * ONES;
    let ascii = word & LOW7;
    // The high bit of each byte of `x` (7-bit bytes): set where that byte is at least `c`. A
    // 7-bit byte plus at most 0x80 - 1 stays below 0x100, so no carry crosses bytes.
    let at_least = |x: u64, c: u8| (x + u64::from(0x80 - c) * ONES) & HIGH;
    let digits = at_least(ascii, b'0') & !at_least(ascii, b'9' + 1);
    // Setting bit 5 folds `A-Z` onto `a-z`, and no other byte lands there.
    let folded = ascii | (0x20 * ONES);
    let letters = at_least(folded, b'a') & !at_least(folded, b'z' + 1);
    // `!word`: a byte with its high bit set is not base62, whatever its low bits.
    (digits | letters) & !word & HIGH == HIGH
}

pub(super) fn is_base62(text: &str) -> bool {
    classify(text.as_bytes()).1 == 0
}
