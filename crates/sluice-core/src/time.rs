//! Wall-clock helpers without a date library.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, now.
pub fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Formats a Unix time in nanoseconds as RFC 3339 UTC with milliseconds,
/// e.g. `2026-11-27T19:00:00.123Z`, appending to `out`.
pub fn format_rfc3339_millis(unix_nanos: i64, out: &mut Vec<u8>) {
    let millis = unix_nanos.div_euclid(1_000_000);
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (sod / 3600, sod / 60 % 60, sod % 60);
    let mut buf = [0u8; 24];
    let y = y.clamp(0, 9999) as u32;
    put(&mut buf[0..4], y);
    buf[4] = b'-';
    put(&mut buf[5..7], m);
    buf[7] = b'-';
    put(&mut buf[8..10], d);
    buf[10] = b'T';
    put(&mut buf[11..13], hh);
    buf[13] = b':';
    put(&mut buf[14..16], mm);
    buf[16] = b':';
    put(&mut buf[17..19], ss);
    buf[19] = b'.';
    put(&mut buf[20..23], ms);
    buf[23] = b'Z';
    out.extend_from_slice(&buf);
}

fn put(dst: &mut [u8], mut v: u32) {
    for b in dst.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Howard Hinnant's days-to-civil algorithm: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(n: i64) -> String {
        let mut v = Vec::new();
        format_rfc3339_millis(n, &mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(fmt(0), "1970-01-01T00:00:00.000Z");
        // 2026-11-27T19:00:00.123Z
        assert_eq!(fmt(1_795_806_000_123_000_000), "2026-11-27T19:00:00.123Z");
        // leap day 2024-02-29T23:59:59.999Z
        assert_eq!(fmt(1_709_251_199_999_999_999), "2024-02-29T23:59:59.999Z");
    }
}
