//! Human-readable sizes and durations: the one grammar of the config file and of
//! the command-line tools' flags.
//!
//! ```text
//! size      "10 MiB", "10MiB", "4GB", "512k", "1.5 GiB", 1048576 (a TOML integer), "1024"
//!           units, case-insensitive: B, k|KB (1000), KiB (1024), M|MB, MiB, G|GB, GiB, T|TB, TiB
//! duration  "30s", "100ms", "1.5m", "250us", "2h", "1h 30m", "0"
//!           units (humantime's): ns, us|µs, ms, s|sec, m|min, h|hr, d, w, and their long forms
//! ```
//!
//! Durations are parsed by the `humantime` crate. A bare number is a size in bytes;
//! as a duration it is refused in the config (`"30"`: seconds or milliseconds?),
//! while the tools' flags ([`parse_duration_or_secs`]) read it as seconds, as
//! `sluice load -d 3` always did.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte count written as a human value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A duration written as a human value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

/// Why a size or duration did not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnitError {
    #[error("{input:?} is not a size like \"10 MiB\"")]
    NotASize { input: String },
    #[error(
        "unknown size unit {unit:?} in {input:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB or TiB)"
    )]
    SizeUnit { input: String, unit: String },
    #[error("{input:?} is larger than any size sluice can use (16 EiB)")]
    SizeTooLarge { input: String },
    #[error("{input:?} needs a unit (ms, s, m, h)")]
    NoUnit { input: String },
    #[error("{input:?} is not a duration like \"30s\", \"1.5m\" or \"1h 30m\"")]
    NotADuration {
        input: String,
        #[source]
        source: humantime::DurationError,
    },
}

impl ByteSize {
    /// Parses `"10 MiB"`, `"10MB"`, `"512k"`, `"1024"`.
    pub fn parse(s: &str) -> Result<ByteSize, UnitError> {
        let input = s.trim();
        let split = input
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(input.len());
        let (num, unit) = input.split_at(split);
        let n: f64 = num.parse().map_err(|_| UnitError::NotASize {
            input: input.to_string(),
        })?;
        let unit = unit.trim();
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
            _ => {
                return Err(UnitError::SizeUnit {
                    input: input.to_string(),
                    unit: unit.to_string(),
                })
            }
        };
        let bytes = n * mult as f64;
        // `as u64` would saturate silently: a size past u64 is refused, not clamped
        // (digits and a dot only, so never NaN; a huge digit string is infinity).
        if bytes >= u64::MAX as f64 {
            return Err(UnitError::SizeTooLarge {
                input: input.to_string(),
            });
        }
        Ok(ByteSize(bytes as u64))
    }

    /// `"1.5 MiB"`: rounded to one decimal in the largest binary unit, for
    /// progress lines and reports (`Display` is exact, for configuration).
    pub fn approx(self) -> String {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut u = 0;
        while v >= 1024.0 && u + 1 < UNITS.len() {
            v /= 1024.0;
            u += 1;
        }
        if u == 0 {
            format!("{} B", self.0)
        } else {
            format!("{v:.1} {}", UNITS[u])
        }
    }
}

/// Exact: `"10 KiB"` when the count is a whole number of KiB, MiB or GiB, else `"N B"`.
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
    /// Parses `"30s"`, `"100ms"`, `"1.5m"`, `"1h 30m"`, `"250us"`; a bare number
    /// other than `"0"` needs a unit.
    pub fn parse(s: &str) -> Result<HumanDuration, UnitError> {
        let input = s.trim();
        match humantime::parse_duration(input) {
            Ok(d) => Ok(HumanDuration(d)),
            Err(humantime::DurationError::UnknownUnit { unit, .. }) if unit.is_empty() => {
                Err(UnitError::NoUnit {
                    input: input.to_string(),
                })
            }
            Err(source) => Err(UnitError::NotADuration {
                input: input.to_string(),
                source,
            }),
        }
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A command-line duration: what [`HumanDuration::parse`] reads, and a bare
/// number (`"3"`, `"0.5"`) as seconds.
pub fn parse_duration_or_secs(s: &str) -> Result<Duration, UnitError> {
    let input = s.trim();
    if !input.is_empty() && input.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        if let Some(d) = input
            .parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        {
            return Ok(d);
        }
    }
    HumanDuration::parse(input).map(|d| d.0)
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

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// In humantime's form (`"1m 30s"`), which [`HumanDuration::parse`] reads back.
impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
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
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!(ByteSize::parse("10 MiB").unwrap().0, 10 << 20);
        assert_eq!(ByteSize::parse("4GB").unwrap().0, 4_000_000_000);
        assert_eq!(ByteSize::parse("512").unwrap().0, 512);
        assert_eq!(ByteSize::parse("512k").unwrap().0, 512_000);
        assert_eq!(ByteSize::parse(" 1.5 gib ").unwrap().0, 3 << 29);
        assert!(matches!(
            ByteSize::parse("20000000 TiB"),
            Err(UnitError::SizeTooLarge { .. })
        ));
        assert!(matches!(
            ByteSize::parse("ten"),
            Err(UnitError::NotASize { .. })
        ));
        assert!(matches!(
            ByteSize::parse("10 parsecs"),
            Err(UnitError::SizeUnit { unit, .. }) if unit == "parsecs"
        ));
    }

    #[test]
    fn sizes_display_exactly_or_approximately() {
        assert_eq!(ByteSize(10 << 10).to_string(), "10 KiB");
        assert_eq!(ByteSize(1000).to_string(), "1000 B");
        assert_eq!(ByteSize(1000).approx(), "1000 B");
        assert_eq!(ByteSize(3 << 19).approx(), "1.5 MiB");
    }

    /// Every form the config file and the `sluice load` / `sluice send` flags
    /// accepted before they shared this parser.
    #[test]
    fn durations_keep_both_former_grammars() {
        let ok = |s: &str, d: Duration| {
            assert_eq!(HumanDuration::parse(s).unwrap().0, d, "{s}");
            assert_eq!(parse_duration_or_secs(s).unwrap(), d, "{s}");
        };
        ok("30s", Duration::from_secs(30));
        ok("100ms", Duration::from_millis(100));
        ok("2m", Duration::from_secs(120));
        ok("1.5m", Duration::from_secs(90));
        ok("2h", Duration::from_secs(7200));
        ok("250us", Duration::from_micros(250));
        ok("250µs", Duration::from_micros(250));
        ok("5ns", Duration::from_nanos(5));
        ok("1min", Duration::from_secs(60));
        ok(" 30 s ", Duration::from_secs(30));
        ok("0s", Duration::ZERO);
        ok("0", Duration::ZERO);
        // New with humantime: compound durations.
        ok("1h 30m", Duration::from_secs(5400));
    }

    #[test]
    fn a_bare_number_is_seconds_on_the_command_line_and_refused_in_the_config() {
        assert_eq!(parse_duration_or_secs("3").unwrap(), Duration::from_secs(3));
        assert_eq!(
            parse_duration_or_secs("0.25").unwrap(),
            Duration::from_millis(250)
        );
        assert!(matches!(
            HumanDuration::parse("30"),
            Err(UnitError::NoUnit { .. })
        ));
    }

    #[test]
    fn bad_durations_are_errors_not_panics() {
        for s in [
            "ten",
            "5 parsecs",
            "",
            "-1s",
            "1e400",
            "99999999999999999999999h",
        ] {
            assert!(HumanDuration::parse(s).is_err(), "{s:?}");
            assert!(parse_duration_or_secs(s).is_err(), "{s:?}");
        }
        let e = HumanDuration::parse("5 parsecs").unwrap_err().to_string();
        assert_eq!(
            e,
            "\"5 parsecs\" is not a duration like \"30s\", \"1.5m\" or \"1h 30m\""
        );
    }
}
