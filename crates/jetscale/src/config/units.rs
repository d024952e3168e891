//! Durations (`5s`, `48h`, `7d`) and byte sizes (`50GB`, `1GiB`) as written in configs and
//! on the command line, the same spellings the nats CLI accepts.

use std::time::Duration;

/// Parses `250ms`, `5s`, `2m`, `48h`, `7d`, `1w`, `1y` (365 d), or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let seconds = DURATION.parse(text, |unit| {
        Some(match unit {
            "" | "s" | "sec" | "secs" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "m" | "min" | "mins" => 60.0,
            "h" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "w" | "week" | "weeks" => 604_800.0,
            "y" | "year" | "years" => 31_536_000.0,
            _ => return None,
        })
    })?;
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses `50GB`, `1GiB`, `512MB`, `64KiB`, or a plain number of bytes. Decimal units are
/// powers of 1000 and binary ones of 1024, as the nats CLI reads them.
pub fn parse_bytes(text: &str) -> Result<i64, String> {
    let bytes = SIZE.parse(text, |unit| {
        Some(match unit.to_ascii_uppercase().as_str() {
            "" | "B" => 1.0,
            "K" | "KB" => 1e3,
            "M" | "MB" => 1e6,
            "G" | "GB" => 1e9,
            "T" | "TB" => 1e12,
            "KIB" => 1024.0,
            "MIB" => 1024.0 * 1024.0,
            "GIB" => 1024.0 * 1024.0 * 1024.0,
            "TIB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return None,
        })
    })?;
    // In range (below 9e18), so the cast neither wraps nor saturates.
    Ok(bytes as i64)
}

/// A kind of quantity written as a number and a unit, and how its errors word it.
struct Quantity {
    name: &'static str,
    examples: &'static str,
    units: &'static str,
    /// The largest value accepted, in the base unit.
    max: f64,
}

const DURATION: Quantity = Quantity {
    name: "duration",
    examples: "500ms, 5s, 2m, 48h, 7d",
    units: "ms, s, m, h, d, w, y",
    max: 1.0e12,
};

const SIZE: Quantity = Quantity {
    name: "size",
    examples: "1GB, 512MiB, 1048576",
    units: "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB",
    max: 9.0e18,
};

impl Quantity {
    /// `text` in the base unit: its number times what `factor` says its unit is worth
    /// (`None` for a unit it does not know).
    fn parse(&self, text: &str, factor: impl Fn(&str) -> Option<f64>) -> Result<f64, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().map_err(|_| {
            format!(
                "`{text}` is not a {} (write e.g. {})",
                self.name, self.examples
            )
        })?;
        let unit = unit.trim();
        let factor = factor(unit).ok_or_else(|| {
            format!(
                "`{text}`: unknown {} unit `{unit}` (use {})",
                self.name, self.units
            )
        })?;
        let total = number * factor;
        if !total.is_finite() || !(0.0..=self.max).contains(&total) {
            return Err(format!("`{text}` is out of range"));
        }
        Ok(total)
    }
}

/// Formats a duration the way [`parse_duration`] reads it, choosing the largest exact unit.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_the_nats_cli_writes_them() {
        assert_eq!(
            parse_duration("48h").unwrap(),
            Duration::from_secs(48 * 3600)
        );
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("5 parsecs")
            .unwrap_err()
            .contains("unknown duration unit `parsecs`"));
        assert!(parse_duration("5y0").is_err());
        assert!(parse_duration("1e300").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(Duration::from_secs(172_800)), "2d");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
    }

    #[test]
    fn sizes_as_the_nats_cli_writes_them() {
        assert_eq!(parse_bytes("50GB").unwrap(), 50_000_000_000);
        assert_eq!(parse_bytes("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("12 parsecs")
            .unwrap_err()
            .contains("unknown size unit `parsecs`"));
        assert!(parse_bytes("x").unwrap_err().contains("is not a size"));
        assert!(parse_bytes("99999999999TB")
            .unwrap_err()
            .contains("out of range"));
    }
}
