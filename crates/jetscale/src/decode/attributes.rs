//! OTLP `KeyValue` / `AnyValue`, and their rendering into the text of a JSON object for the
//! `attributes jsonb` column, with the attribute limits enforced while rendering.

use super::numbers::{LenientF64, LenientI64};
use super::Rejection;
use crate::config::Limits;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

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

/// An OTLP `AnyValue`: one of its kinds, or none (an empty value).
///
/// An enum rather than one optional field per kind: a fifth of the size, and attributes are
/// moved around a lot while a request is deserialized. A sender that sets several fields gets
/// the first of string, bool, int, double, array, kvlist, bytes (each field is still read
/// and checked).
#[derive(Debug, Default)]
pub enum AnyValue<'a> {
    #[default]
    Empty,
    String(Cow<'a, str>),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array(Vec<AnyValue<'a>>),
    KvList(Vec<KeyValue<'a>>),
    /// Base64, kept as sent.
    Bytes(Cow<'a, str>),
}

/// `arrayValue` as written: its items are kept as [`AnyValue::Array`].
#[derive(Deserialize)]
struct ArrayValue<'a> {
    #[serde(borrow, default)]
    values: Vec<AnyValue<'a>>,
}

/// `kvlistValue` as written: its items are kept as [`AnyValue::KvList`].
#[derive(Deserialize)]
struct KeyValueList<'a> {
    #[serde(borrow, default)]
    values: Vec<KeyValue<'a>>,
}

impl AnyValue<'_> {
    /// The value as text when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AnyValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// Whether no field is set (an empty value, rendered as `null`).
    pub fn is_empty(&self) -> bool {
        matches!(self, AnyValue::Empty)
    }
}

/// The fields of an `AnyValue` as written, before one is chosen.
#[derive(Default)]
struct AnyValueFields<'a> {
    string_value: Option<Cow<'a, str>>,
    bool_value: Option<bool>,
    int_value: Option<LenientI64>,
    double_value: Option<LenientF64>,
    array_value: Option<ArrayValue<'a>>,
    kvlist_value: Option<KeyValueList<'a>>,
    bytes_value: Option<Cow<'a, str>>,
}

impl<'a> AnyValueFields<'a> {
    fn into_value(self) -> AnyValue<'a> {
        if let Some(s) = self.string_value {
            AnyValue::String(s)
        } else if let Some(b) = self.bool_value {
            AnyValue::Bool(b)
        } else if let Some(i) = self.int_value {
            AnyValue::Int(i.0)
        } else if let Some(d) = self.double_value {
            AnyValue::Double(d.0)
        } else if let Some(a) = self.array_value {
            AnyValue::Array(a.values)
        } else if let Some(kv) = self.kvlist_value {
            AnyValue::KvList(kv.values)
        } else if let Some(b) = self.bytes_value {
            AnyValue::Bytes(b)
        } else {
            AnyValue::Empty
        }
    }
}

/// The keys of an `AnyValue` object: the lowerCamelCase names, and the proto field names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AnyValueKey {
    String,
    Bool,
    Int,
    Double,
    Array,
    KvList,
    Bytes,
    Unknown,
}

const ANY_VALUE_FIELDS: &[&str] = &[
    "stringValue",
    "boolValue",
    "intValue",
    "doubleValue",
    "arrayValue",
    "kvlistValue",
    "bytesValue",
];

impl AnyValueKey {
    fn named(key: &str) -> Self {
        match key {
            "stringValue" | "string_value" => AnyValueKey::String,
            "boolValue" | "bool_value" => AnyValueKey::Bool,
            "intValue" | "int_value" => AnyValueKey::Int,
            "doubleValue" | "double_value" => AnyValueKey::Double,
            "arrayValue" | "array_value" => AnyValueKey::Array,
            "kvlistValue" | "kvlist_value" => AnyValueKey::KvList,
            "bytesValue" | "bytes_value" => AnyValueKey::Bytes,
            _ => AnyValueKey::Unknown,
        }
    }
}

impl<'de> Deserialize<'de> for AnyValueKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_identifier(KeyVisitor {
            expecting: "field identifier",
            name: AnyValueKey::named,
        })
    }
}

/// Reads a map key that is one of a fixed set of names: `name` tells which, for any text.
pub(crate) struct KeyVisitor<F> {
    pub expecting: &'static str,
    pub name: F,
}

impl<T, F: FnOnce(&str) -> T> Visitor<'_> for KeyVisitor<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok((self.name)(v))
    }
}

/// Text borrowed from the input when it holds no escape, copied otherwise.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

fn text(v: Option<Text<'_>>) -> Option<Cow<'_, str>> {
    v.map(|t| t.0)
}

/// Reads an `AnyValue` as serde's derive would read a struct of its seven optional fields
/// (a repeated field is an error, `null` is an unset field, unknown keys are skipped, and
/// the fields may come as an array in declaration order), then keeps one of them.
struct AnyValueVisitor<'a>(PhantomData<AnyValue<'a>>);

impl<'de: 'a, 'a> Visitor<'de> for AnyValueVisitor<'a> {
    type Value = AnyValue<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("struct AnyValue")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyValue<'a>, A::Error> {
        let mut fields = AnyValueFields::default();
        let mut seen = 0u8;
        while let Some(key) = map.next_key::<AnyValueKey>()? {
            if key != AnyValueKey::Unknown {
                let bit = 1 << key as u8;
                if seen & bit != 0 {
                    return Err(de::Error::duplicate_field(ANY_VALUE_FIELDS[key as usize]));
                }
                seen |= bit;
            }
            match key {
                AnyValueKey::String => fields.string_value = text(map.next_value()?),
                AnyValueKey::Bool => fields.bool_value = map.next_value()?,
                AnyValueKey::Int => fields.int_value = map.next_value()?,
                AnyValueKey::Double => fields.double_value = map.next_value()?,
                AnyValueKey::Array => fields.array_value = map.next_value()?,
                AnyValueKey::KvList => fields.kvlist_value = map.next_value()?,
                AnyValueKey::Bytes => fields.bytes_value = text(map.next_value()?),
                AnyValueKey::Unknown => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(fields.into_value())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyValue<'a>, A::Error> {
        let fields = AnyValueFields {
            string_value: text(seq.next_element()?.flatten()),
            bool_value: seq.next_element()?.flatten(),
            int_value: seq.next_element()?.flatten(),
            double_value: seq.next_element()?.flatten(),
            array_value: seq.next_element()?.flatten(),
            kvlist_value: seq.next_element()?.flatten(),
            bytes_value: text(seq.next_element()?.flatten()),
        };
        Ok(fields.into_value())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for AnyValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct("AnyValue", ANY_VALUE_FIELDS, AnyValueVisitor(PhantomData))
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
    match value {
        AnyValue::String(s) => {
            check_len(s, limits)?;
            write_json_string(out, s)?;
        }
        AnyValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        AnyValue::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
        AnyValue::Double(d) => write_f64(out, *d),
        AnyValue::Array(values) => {
            out.push('[');
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, v, limits, depth + 1)?;
            }
            out.push(']');
        }
        AnyValue::KvList(items) => {
            out.push('{');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_key(out, &item.key, limits)?;
                write_value(out, &item.value, limits, depth + 1)?;
            }
            out.push('}');
        }
        AnyValue::Bytes(b) => {
            check_len(b, limits)?;
            write_json_string(out, b)?;
        }
        AnyValue::Empty => out.push_str("null"),
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

/// Appends a double as JSON: finite values as numbers (shortest round-trip form), the
/// others as proto3 JSON strings (`"NaN"`, `"Infinity"`, `"-Infinity"`), which jsonb holds.
pub fn write_f64(out: &mut String, v: f64) {
    if v.is_finite() {
        out.push_str(ryu::Buffer::new().format_finite(v));
    } else if v.is_nan() {
        out.push_str("\"NaN\"");
    } else if v > 0.0 {
        out.push_str("\"Infinity\"");
    } else {
        out.push_str("\"-Infinity\"");
    }
}

/// The rejection of an item with `n` attributes, more than `max_attributes`.
pub fn too_many(n: usize, limits: &Limits) -> Rejection {
    Rejection::limit(format!(
        "max_attributes: {n} attributes on one item, the limit is {}",
        limits.max_attributes
    ))
}

/// Pushes the comma before a member of a JSON object, array or `"k":v,…` fragment being
/// written in `out`, unless the member is the first one.
pub fn separate(out: &mut String) {
    if !(out.is_empty() || out.ends_with('{') || out.ends_with('[')) {
        out.push(',');
    }
}

/// Appends a `"k":v,…` fragment to a JSON object being written in `out`.
pub fn append_part(out: &mut String, part: &str) {
    if !part.is_empty() {
        separate(out);
        out.push_str(part);
    }
}

/// Appends attributes as members of a JSON object or fragment being written in `out`.
pub fn append_attributes(
    out: &mut String,
    attributes: &[KeyValue<'_>],
    limits: &Limits,
) -> Result<(), Rejection> {
    for kv in attributes {
        separate(out);
        write_key(out, &kv.key, limits)?;
        write_value(out, &kv.value, limits, 0)?;
    }
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
    fn any_value_reads_its_fields_as_a_derived_struct_would() {
        fn read(text: &str) -> serde_json::Result<AnyValue<'_>> {
            serde_json::from_str(text)
        }
        let plain = read(r#"{"stringValue": "plain"}"#).unwrap();
        assert!(matches!(plain, AnyValue::String(Cow::Borrowed("plain"))));
        let escaped = read(r#"{"string_value": "a\nb"}"#).unwrap();
        assert_eq!(escaped.as_str(), Some("a\nb"));
        // Several fields set: the first of string, bool, int, double, array, kvlist, bytes.
        let several = read(r#"{"bytesValue": "AQ==", "intValue": "5", "boolValue": false}"#);
        assert!(matches!(several, Ok(AnyValue::Bool(false))));
        // `null` leaves a field unset; unknown keys are skipped.
        let null = read(r#"{"stringValue": null, "note": [1, {"x": null}], "intValue": 3}"#);
        assert!(matches!(null, Ok(AnyValue::Int(3))));
        assert!(read(r#"{"stringValue": null}"#).unwrap().is_empty());
        // A field given twice, under either name, is an error, as is a wrong type.
        for twice in [
            r#"{"stringValue": "a", "stringValue": "b"}"#,
            r#"{"stringValue": null, "string_value": "b"}"#,
        ] {
            let err = read(twice).unwrap_err().to_string();
            assert!(err.contains("duplicate field `stringValue`"), "{err}");
        }
        let err = read(r#"{"stringValue": 5}"#).unwrap_err().to_string();
        assert!(err.contains("expected a string"), "{err}");
        let err = read(r#"{"intValue": "5x"}"#).unwrap_err().to_string();
        assert!(err.contains("not a decimal integer"), "{err}");
        let err = read("7").unwrap_err().to_string();
        assert!(err.contains("expected struct AnyValue"), "{err}");
        // Positional fields, as serde accepts for any struct; one too many is an error.
        assert!(matches!(read(r#"[null, true]"#), Ok(AnyValue::Bool(true))));
        assert!(read(r#"[null, null, null, null, null, null, null, 1]"#).is_err());
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
