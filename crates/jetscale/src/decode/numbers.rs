//! OTLP/JSON numbers: 64-bit integers arrive as decimal strings or as JSON numbers, and
//! doubles as numbers or as the strings `NaN`, `Infinity`, `-Infinity` (proto3 JSON).
//! Both spellings are accepted everywhere; anything else is an error, never a silent 0.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// A signed 64-bit integer written as a number or a decimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LenientI64(pub i64);

/// An unsigned 64-bit integer (timestamps, counts) written as a number or a decimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LenientU64(pub u64);

/// A double written as a number or as a proto3 JSON string.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LenientF64(pub f64);

struct IntVisitor;

impl<'de> Visitor<'de> for IntVisitor {
    type Value = i128;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer as a number or a decimal string")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
        Ok(i128::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
        Ok(i128::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i128, E> {
        // 1e18 or 5.0 are integers written as floats by some encoders; 1.5 is not.
        if v.fract() == 0.0 && v.abs() < 1.9e19 {
            Ok(v as i128)
        } else {
            Err(E::custom(format!("{v} is not an integer")))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i128, E> {
        let digits = v.trim();
        if let Some(n) = short_decimal(digits) {
            return Ok(i128::from(n));
        }
        digits
            .parse::<i128>()
            .map_err(|_| E::custom(format!("\"{v}\" is not a decimal integer")))
    }
}

/// The value of 1 to 19 ASCII digits, which can not overflow a u64: the shape of every
/// timestamp, read without the general parser's sign and overflow checks per digit.
fn short_decimal(digits: &str) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.bytes().try_fold(0u64, |n, b| {
        let digit = b.wrapping_sub(b'0');
        (digit < 10).then(|| n * 10 + u64::from(digit))
    })
}

/// Reads an integer as a `T`; one that does not fit is an error naming `what` a `T` is.
fn integer<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D, what: &str) -> Result<T, D::Error> {
    let v = d.deserialize_any(IntVisitor)?;
    T::try_from(v).map_err(|_| de::Error::custom(format!("{v} does not fit {what}")))
}

impl<'de> serde::Deserialize<'de> for LenientI64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        integer(d, "a signed 64-bit integer").map(LenientI64)
    }
}

impl<'de> serde::Deserialize<'de> for LenientU64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        integer(d, "an unsigned 64-bit integer").map(LenientU64)
    }
}

struct FloatVisitor;

impl<'de> Visitor<'de> for FloatVisitor {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number, or \"NaN\", \"Infinity\", \"-Infinity\"")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            other => other
                .trim()
                .parse::<f64>()
                .map_err(|_| E::custom(format!("\"{other}\" is not a number"))),
        }
    }
}

impl<'de> serde::Deserialize<'de> for LenientF64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FloatVisitor).map(LenientF64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_as_strings_or_numbers() {
        let v: Vec<LenientI64> =
            serde_json::from_str(r#"["-42", 42, "9223372036854775807", 1e3]"#).unwrap();
        assert_eq!(
            v.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![-42, 42, i64::MAX, 1000]
        );
        let t: LenientU64 = serde_json::from_str(r#""1705314601234000000""#).unwrap();
        assert_eq!(t.0, 1_705_314_601_234_000_000);
        assert!(serde_json::from_str::<LenientI64>(r#""12abc""#).is_err());
        assert!(serde_json::from_str::<LenientI64>("1.5").is_err());
        assert!(serde_json::from_str::<LenientU64>(r#""-1""#).is_err());
        assert!(serde_json::from_str::<LenientI64>(r#""9223372036854775808""#).is_err());
        // Up to 19 digits take the short path, longer or signed text the general parser.
        let u: Vec<LenientU64> = serde_json::from_str(
            r#"["0", "9999999999999999999", "18446744073709551615", "+7", " 12 ", "0012"]"#,
        )
        .unwrap();
        assert_eq!(
            u.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![0, 9_999_999_999_999_999_999, u64::MAX, 7, 12, 12]
        );
        for bad in [
            r#""18446744073709551616""#,
            r#""""#,
            r#""1 2""#,
            r#""12\u0000""#,
        ] {
            assert!(serde_json::from_str::<LenientU64>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn doubles_round_trip_bit_for_bit() {
        // float_roundtrip must be on: without it serde_json is 1 ULP off on some inputs.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let x = f64::from_bits(rng.u64(..));
            if !x.is_finite() {
                continue;
            }
            let text = ryu::Buffer::new().format_finite(x).to_owned();
            let back: LenientF64 = serde_json::from_str(&text).unwrap();
            assert_eq!(back.0.to_bits(), x.to_bits(), "{text}");
        }
        let specials: Vec<LenientF64> =
            serde_json::from_str(r#"["NaN", "Infinity", "-Infinity", "2.5"]"#).unwrap();
        assert!(specials[0].0.is_nan());
        assert_eq!(specials[1].0, f64::INFINITY);
        assert_eq!(specials[2].0, f64::NEG_INFINITY);
        assert_eq!(specials[3].0, 2.5);
    }
}
