//! OTLP `KeyValue` / `AnyValue`, and their rendering into the text of a JSON object for the
//! `attributes jsonb` column, with the attribute limits enforced while rendering.

use super::numbers::{LenientF64, LenientI64};
use super::Rejection;
use crate::config::Limits;
use serde::Deserialize;
use std::borrow::Cow;

/// One attribute.
#[derive(Debug, Deserialize)]
pub struct KeyValue<'a> {
    #[serde(borrow)]
    pub key: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub value: AnyValue<'a>,
}

/// A field that may be written as `null` (some encoders write an absent message that way,
/// e.g. opentelemetry-proto's serde for `Option` fields): `null` means the default.
pub fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An OTLP `AnyValue`: exactly one of its fields is set (none for an empty value).
#[derive(Debug, Default, Deserialize)]
pub struct AnyValue<'a> {
    #[serde(borrow, default, rename = "stringValue", alias = "string_value")]
    pub string_value: Option<Cow<'a, str>>,
    #[serde(default, rename = "boolValue", alias = "bool_value")]
    pub bool_value: Option<bool>,
    #[serde(default, rename = "intValue", alias = "int_value")]
    pub int_value: Option<LenientI64>,
    #[serde(default, rename = "doubleValue", alias = "double_value")]
    pub double_value: Option<LenientF64>,
    #[serde(borrow, default, rename = "arrayValue", alias = "array_value")]
    pub array_value: Option<ArrayValue<'a>>,
    #[serde(borrow, default, rename = "kvlistValue", alias = "kvlist_value")]
    pub kvlist_value: Option<KeyValueList<'a>>,
    /// Base64, kept as sent.
    #[serde(borrow, default, rename = "bytesValue", alias = "bytes_value")]
    pub bytes_value: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ArrayValue<'a> {
    #[serde(borrow, default)]
    pub values: Vec<AnyValue<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct KeyValueList<'a> {
    #[serde(borrow, default)]
    pub values: Vec<KeyValue<'a>>,
}

impl AnyValue<'_> {
    /// The value as text when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        self.string_value.as_deref()
    }

    /// Whether no field is set (an empty value, rendered as `null`).
    pub fn is_empty(&self) -> bool {
        self.string_value.is_none()
            && self.bool_value.is_none()
            && self.int_value.is_none()
            && self.double_value.is_none()
            && self.array_value.is_none()
            && self.kvlist_value.is_none()
            && self.bytes_value.is_none()
    }
}

/// The start of a string for an error message: at most 40 characters, so a rejection never
/// repeats a megabyte of input.
pub fn preview(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// Appends a plain JSON value (the flat records' `attributes`, `tags`, `fields`, `events`)
/// to `out`, with the same limits as OTLP attribute values: string length, nesting depth,
/// and no NUL. Object keys are checked like attribute keys.
pub fn write_json_value(
    out: &mut String,
    value: &serde_json::Value,
    limits: &Limits,
    depth: usize,
) -> Result<(), Rejection> {
    use serde_json::Value;
    if depth > limits.max_value_depth {
        return Err(Rejection::limit(format!(
            "max_value_depth: value nested deeper than {}",
            limits.max_value_depth
        )));
    }
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(itoa::Buffer::new().format(i));
            } else if let Some(u) = n.as_u64() {
                out.push_str(itoa::Buffer::new().format(u));
            } else {
                // serde_json only holds finite doubles.
                out.push_str(ryu::Buffer::new().format_finite(n.as_f64().unwrap_or(0.0)));
            }
        }
        Value::String(s) => {
            check_len(s, limits)?;
            write_json_string(out, s)?;
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_value(out, v, limits, depth + 1)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_key(out, k, limits)?;
                write_json_value(out, v, limits, depth + 1)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// Appends `value` as JSON to `out`, enforcing the value limits.
pub fn write_value(
    out: &mut String,
    value: &AnyValue<'_>,
    limits: &Limits,
    depth: usize,
) -> Result<(), Rejection> {
    if depth > limits.max_value_depth {
        return Err(Rejection::limit(format!(
            "max_value_depth: attribute value nested deeper than {}",
            limits.max_value_depth
        )));
    }
    if let Some(s) = &value.string_value {
        check_len(s, limits)?;
        write_json_string(out, s)?;
    } else if let Some(b) = value.bool_value {
        out.push_str(if b { "true" } else { "false" });
    } else if let Some(i) = value.int_value {
        out.push_str(itoa::Buffer::new().format(i.0));
    } else if let Some(d) = value.double_value {
        if d.0.is_finite() {
            out.push_str(ryu::Buffer::new().format_finite(d.0));
        } else if d.0.is_nan() {
            out.push_str("\"NaN\"");
        } else if d.0 > 0.0 {
            out.push_str("\"Infinity\"");
        } else {
            out.push_str("\"-Infinity\"");
        }
    } else if let Some(a) = &value.array_value {
        out.push('[');
        for (i, v) in a.values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_value(out, v, limits, depth + 1)?;
        }
        out.push(']');
    } else if let Some(kv) = &value.kvlist_value {
        out.push('{');
        for (i, item) in kv.values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_key(out, &item.key, limits)?;
            write_value(out, &item.value, limits, depth + 1)?;
        }
        out.push('}');
    } else if let Some(b) = &value.bytes_value {
        check_len(b, limits)?;
        write_json_string(out, b)?;
    } else {
        out.push_str("null");
    }
    Ok(())
}

/// Appends `"key":` to `out`, enforcing the key limit.
pub fn write_key(out: &mut String, key: &str, limits: &Limits) -> Result<(), Rejection> {
    if key.len() > limits.max_attribute_key_bytes {
        return Err(Rejection::limit(format!(
            "max_attribute_key_bytes: attribute key of {} bytes, the limit is {}",
            key.len(),
            limits.max_attribute_key_bytes
        )));
    }
    write_json_string(out, key)?;
    out.push(':');
    Ok(())
}

fn check_len(s: &str, limits: &Limits) -> Result<(), Rejection> {
    if s.len() > limits.max_attribute_value_bytes {
        return Err(Rejection::limit(format!(
            "max_attribute_value_bytes: attribute value of {} bytes, the limit is {}",
            s.len(),
            limits.max_attribute_value_bytes
        )));
    }
    Ok(())
}

/// Appends a JSON string literal. NUL can not be stored in PostgreSQL text or jsonb, so it is
/// a rejection rather than a failed transaction later.
pub fn write_json_string(out: &mut String, s: &str) -> Result<(), Rejection> {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0 => {
                return Err(Rejection::malformed(
                    "a string holds a NUL character, which PostgreSQL can not store",
                ))
            }
            0x01..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                out.push_str("\\u00");
                out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
                out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
    Ok(())
}

/// Rejects text PostgreSQL can not hold (NUL bytes) in a plain text column.
pub fn check_text(what: &str, s: &str) -> Result<(), Rejection> {
    if s.as_bytes().contains(&0) {
        return Err(Rejection::malformed(format!(
            "{what} holds a NUL character, which PostgreSQL can not store"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_any_value_kind_renders_as_json() {
        let text = r#"[
            {"key": "s", "value": {"stringValue": "a\"b\\c\n\u0001 ✓"}},
            {"key": "b", "value": {"boolValue": true}},
            {"key": "i", "value": {"intValue": "-9007199254740993"}},
            {"key": "d", "value": {"doubleValue": 0.1}},
            {"key": "n", "value": {"doubleValue": "NaN"}},
            {"key": "a", "value": {"arrayValue": {"values": [{"intValue": 1}, {"stringValue": "x"}]}}},
            {"key": "k", "value": {"kvlistValue": {"values": [{"key": "inner", "value": {"boolValue": false}}]}}},
            {"key": "y", "value": {"bytesValue": "AQID"}},
            {"key": "e", "value": {}}
        ]"#;
        let kvs: Vec<KeyValue> = serde_json::from_str(text).unwrap();
        let mut out = String::from("{");
        for (i, kv) in kvs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_key(&mut out, &kv.key, &Limits::default()).unwrap();
            write_value(&mut out, &kv.value, &Limits::default(), 0).unwrap();
        }
        out.push('}');
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["s"], "a\"b\\c\n\u{1} ✓");
        assert_eq!(parsed["b"], true);
        assert_eq!(parsed["i"].to_string(), "-9007199254740993");
        assert_eq!(parsed["d"], 0.1);
        assert_eq!(parsed["n"], "NaN");
        assert_eq!(parsed["a"], serde_json::json!([1, "x"]));
        assert_eq!(parsed["k"], serde_json::json!({"inner": false}));
        assert_eq!(parsed["y"], "AQID");
        assert!(parsed["e"].is_null());
    }

    #[test]
    fn limits_are_enforced_while_rendering() {
        let limits = Limits {
            max_value_depth: 1,
            max_attribute_value_bytes: 4,
            ..Limits::default()
        };
        let deep: AnyValue = serde_json::from_str(
            r#"{"arrayValue": {"values": [{"arrayValue": {"values": [{"arrayValue": {"values": []}}]}}]}}"#,
        )
        .unwrap();
        let err = write_value(&mut String::new(), &deep, &limits, 0).unwrap_err();
        assert!(err.detail.contains("max_value_depth"));
        let long: AnyValue = serde_json::from_str(r#"{"stringValue": "12345"}"#).unwrap();
        assert!(write_value(&mut String::new(), &long, &limits, 0)
            .unwrap_err()
            .detail
            .contains("max_attribute_value_bytes"));
        let nul: AnyValue = serde_json::from_str(r#"{"stringValue": "a\u0000b"}"#).unwrap();
        assert!(write_value(&mut String::new(), &nul, &Limits::default(), 0).is_err());
    }
}
