//! Human-readable sizes (`"10 MiB"`, `"4GB"`, `1048576`) and durations (`"30s"`,
//! `"100ms"`, `"2m"`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A byte count written as a human value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A duration written as a human value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl ByteSize {
    /// Parses `"10 MiB"`, `"10MB"`, `"512k"`, `"1024"`.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let (n, unit) = number_and_unit(s, "a size like \"10 MiB\"")?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            other => return Err(format!("unknown size unit {other:?} in {:?}", s.trim())),
        };
        Ok(ByteSize((n * mult as f64) as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= size && n.is_multiple_of(size) {
                return write!(f, "{} {unit}", n / size);
            }
        }
        write!(f, "{n} B")
    }
}

impl HumanDuration {
    /// Parses `"30s"`, `"100ms"`, `"2m"`, `"1h"`, `"250us"`.
    pub fn parse(s: &str) -> Result<HumanDuration, String> {
        let (n, unit) = number_and_unit(s, "a duration like \"30s\"")?;
        let secs = match unit {
            "ns" => n / 1e9,
            "us" | "µs" => n / 1e6,
            "ms" => n / 1e3,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "" => return Err(format!("{:?} needs a unit (ms, s, m, h)", s.trim())),
            other => return Err(format!("unknown duration unit {other:?} in {:?}", s.trim())),
        };
        Ok(HumanDuration(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// `" 10.5 MiB "` → `(10.5, "MiB")`; `what` names the expected form in the error.
fn number_and_unit<'a>(s: &'a str, what: &str) -> Result<(f64, &'a str), String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n = num.parse().map_err(|_| format!("{s:?} is not {what}"))?;
    Ok((n, unit.trim()))
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(ByteSize::parse("10 MiB").unwrap().0, 10 << 20);
        assert_eq!(ByteSize::parse("4GB").unwrap().0, 4_000_000_000);
        assert_eq!(ByteSize::parse("512").unwrap().0, 512);
        assert!(ByteSize::parse("ten").is_err());
        assert!(ByteSize::parse("10 parsecs").is_err());
        assert_eq!(ByteSize(10 << 10).to_string(), "10 KiB");
        assert_eq!(
            HumanDuration::parse("30s").unwrap().0,
            Duration::from_secs(30)
        );
        assert_eq!(
            HumanDuration::parse("100ms").unwrap().0,
            Duration::from_millis(100)
        );
        assert_eq!(
            HumanDuration::parse("2m").unwrap().0,
            Duration::from_secs(120)
        );
        assert!(HumanDuration::parse("30").is_err());
    }
}
