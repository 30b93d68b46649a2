//! Finding the bytes a JSON string cannot hold as they are: `"`, `\` and control
//! characters. Eight bytes per step (SWAR on a `u64`), since the strings of the hot
//! path (keys, short values, event ids) are mostly a few words long and a
//! byte-by-byte loop spent a tenth of an NDJSON ingest there.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Index of the first `"`, `\` or byte below 0x20 in `b` at or after `from`, or
/// `b.len()` when there is none.
#[inline]
pub fn string_special(b: &[u8], mut from: usize) -> usize {
    while let Some(chunk) = b.get(from..from + 8) {
        let v = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // A byte's high bit is set in `m` when it is 0 after the XOR (quote,
        // backslash) or below 0x20. Carries can only flag bytes *above* the first
        // true hit, so the lowest flag is exact.
        let quote = v ^ (ONES * u64::from(b'"'));
        let slash = v ^ (ONES * u64::from(b'\\'));
        let m = (quote.wrapping_sub(ONES) & !quote)
            | (slash.wrapping_sub(ONES) & !slash)
            | (v.wrapping_sub(ONES * 0x20) & !v);
        let m = m & HIGHS;
        if m != 0 {
            return from + (m.trailing_zeros() / 8) as usize;
        }
        from += 8;
    }
    while from < b.len() && !is_special(b[from]) {
        from += 1;
    }
    from.min(b.len())
}

#[inline]
fn is_special(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow(b: &[u8], from: usize) -> usize {
        b.iter()
            .skip(from)
            .position(|&c| is_special(c))
            .map_or(b.len(), |i| from + i)
    }

    #[test]
    fn agrees_with_a_byte_loop_on_every_position_and_byte() {
        // Every byte value at every offset of a 19-byte window, from every start.
        for special in 0u8..=255 {
            for at in 0..19 {
                let mut b: Vec<u8> = (0..19).map(|i| b'a' + (i % 26) as u8).collect();
                b[at] = special;
                // A second candidate after the first, and high bytes around it.
                if at + 3 < b.len() {
                    b[at + 3] = b'"';
                }
                if at > 0 {
                    b[at - 1] = 0xC3;
                }
                for from in 0..=b.len() {
                    assert_eq!(
                        string_special(&b, from),
                        slow(&b, from),
                        "byte {special:#x} at {at}, from {from}"
                    );
                }
            }
        }
    }
}
