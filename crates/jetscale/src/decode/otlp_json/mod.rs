//! OTLP/JSON requests to rows, to the letter of the OTLP/JSON encoding: lowerCamelCase keys
//! (the proto field names are accepted too, as proto3 JSON requires), 64-bit integers as
//! strings or numbers, enums as integers or names, unknown fields ignored. Decoded with
//! borrowed strings: nothing is copied that is not escaped.
//!
//! One file per signal ([`metrics`], [`traces`], [`logs`]); this one holds what they share:
//! the resource and the scope, enum names, timestamps, ids and the checks every request
//! gets. The structs are also what the protobuf decoder converts into (`otlp_proto`), so both
//! encodings share one mapping.

pub mod logs;
pub mod metrics;
pub mod traces;

use super::attributes::{
    append_attributes, append_part, check_text, preview, separate, too_many, write_json_string,
    write_key, write_value, KeyValue,
};
use super::numbers::LenientU64;
use super::{DecodeContext, Rejection};
use crate::config::Limits;
use crate::processors::resource::{self, ResourceFields};
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize, Default)]
pub(crate) struct Resource<'a> {
    #[serde(borrow, default)]
    pub attributes: Vec<KeyValue<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Scope<'a> {
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    #[serde(borrow, default)]
    pub attributes: Vec<KeyValue<'a>>,
}

/// Reads a request of one signal, naming the signal when the payload is not one.
pub(crate) fn parse<'a, T: Deserialize<'a>>(
    payload: &'a [u8],
    signal: &str,
) -> Result<T, Rejection> {
    super::from_json_slice(payload)
        .map_err(|e| Rejection::malformed(format!("OTLP/JSON {signal}: {e}")))
}

/// The names of an OTLP enum, by number, without their common prefix.
#[derive(Clone, Copy)]
pub(crate) struct EnumNames {
    pub prefix: &'static str,
    pub names: &'static [&'static str],
}

impl EnumNames {
    /// The number of a name: the proto name (`SPAN_KIND_SERVER`), or, case-insensitively,
    /// the name without its prefix (`server`) or a decimal number.
    pub fn number(&self, name: &str) -> Option<i32> {
        let name = name.trim();
        if let Ok(n) = name.parse::<i32>() {
            return Some(n);
        }
        let short = if name.len() > self.prefix.len()
            && name.is_char_boundary(self.prefix.len())
            && name[..self.prefix.len()].eq_ignore_ascii_case(self.prefix)
        {
            &name[self.prefix.len()..]
        } else {
            name
        };
        self.names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(short))
            .and_then(|i| i32::try_from(i).ok())
    }
}

/// Reads an OTLP enum written as its number or as its name. Numbers are kept as they are
/// (proto3 enums are open: the caller maps unknown numbers); an unknown name is an error.
pub(crate) fn enum_number<'de, D: serde::Deserializer<'de>>(
    d: D,
    what: &'static str,
    names: EnumNames,
) -> Result<i32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<'a> {
        Number(i64),
        #[serde(borrow)]
        Name(Cow<'a, str>),
    }
    match Raw::deserialize(d)? {
        Raw::Number(n) => i32::try_from(n)
            .map_err(|_| serde::de::Error::custom(format!("{what} {n} is out of range"))),
        Raw::Name(name) => names.number(&name).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown {what} `{}`", preview(&name)))
        }),
    }
}

/// A timestamp field as nanoseconds, rejecting values past `i64` (the year 2262).
pub(crate) fn nanos(what: &str, v: LenientU64) -> Result<i64, Rejection> {
    i64::try_from(v.0).map_err(|_| Rejection::malformed(format!("{what} beyond the year 2262")))
}

/// Checks a hex id of `bytes` bytes and returns it lowercase. Empty ids are allowed (and
/// returned empty) unless `required`; an all-zero id is invalid in OTLP and is treated as
/// absent, or rejected when required.
pub(crate) fn hex_id<'s>(
    what: &str,
    id: &'s str,
    bytes: usize,
    required: bool,
) -> Result<Cow<'s, str>, Rejection> {
    if id.is_empty() {
        return if required {
            Err(Rejection::malformed(format!("{what} is missing")))
        } else {
            Ok(Cow::Borrowed(""))
        };
    }
    if id.len() != bytes * 2 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Rejection::malformed(format!(
            "{what} `{}` is not {} hex digits",
            preview(id),
            bytes * 2
        )));
    }
    if id.bytes().all(|b| b == b'0') {
        return if required {
            Err(Rejection::malformed(format!(
                "{what} is all zeros, which OTLP defines as invalid"
            )))
        } else {
            Ok(Cow::Borrowed(""))
        };
    }
    if id.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(id.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(id))
    }
}

/// A fixed32 flags field.
pub(crate) fn flags32(what: &str, v: LenientU64) -> Result<u32, Rejection> {
    u32::try_from(v.0).map_err(|_| Rejection::malformed(format!("{what} {} exceeds 32 bits", v.0)))
}

/// Rejects a message with more items than `max_points_per_message`, or with none.
pub(crate) fn check_count(total: usize, what: &str, limits: &Limits) -> Result<(), Rejection> {
    if total > limits.max_points_per_message {
        return Err(Rejection::limit(format!(
            "max_points_per_message: {total} {what}, the limit is {}",
            limits.max_points_per_message
        )));
    }
    if total == 0 {
        return Err(Rejection::malformed(format!("the request holds no {what}")));
    }
    Ok(())
}

/// The resource after processors: who sent it and the JSON fragment of its other attributes.
pub(crate) struct ResolvedResource<'a> {
    pub device_id: Option<Cow<'a, str>>,
    pub service_name: Option<Cow<'a, str>>,
    pub location: Option<Cow<'a, str>>,
    /// `"k":v,"k":v` without braces; empty when there is nothing.
    pub fragment: String,
    pub count: usize,
}

impl ResolvedResource<'_> {
    /// `service.name`, or OTLP's `unknown_service` when the resource names none, checked
    /// as the text of the `service` column.
    pub fn service(&self) -> Result<&str, Rejection> {
        let service = self.service_name.as_deref().unwrap_or("unknown_service");
        check_text("service.name", service)?;
        Ok(service)
    }

    /// What every span or log record of one scope shares: the whole resource and scope as
    /// the text of one JSON object (their `resource` column; `device.id` and
    /// `device.location` are included), and how many attributes they hold between them.
    pub fn with_scope(&self, scope: &Scope<'_>, limits: &Limits) -> Result<Inherited, Rejection> {
        let scope_part = scope_fragment(scope, limits)?;
        let mut out = String::with_capacity(self.fragment.len() + scope_part.len() + 2);
        out.push('{');
        append_part(&mut out, &self.fragment);
        for (key, value) in [
            ("device.id", &self.device_id),
            ("device.location", &self.location),
        ] {
            if let Some(v) = value {
                separate(&mut out);
                write_key(&mut out, key, limits)?;
                write_json_string(&mut out, v)?;
            }
        }
        append_part(&mut out, &scope_part);
        out.push('}');
        Ok(Inherited {
            resource_json: out,
            count: self.count + scope.attributes.len(),
        })
    }
}

/// What the items of one scope inherit from it and its resource.
pub(crate) struct Inherited {
    /// The resource and the scope as the text of one JSON object.
    pub resource_json: String,
    /// How many attributes the resource and the scope hold.
    pub count: usize,
}

impl Inherited {
    /// Writes an item's attributes as one JSON object into `out`, after checking that they,
    /// the inherited ones and `extra` more stay within `max_attributes`; `write_extra`
    /// writes the `extra` members after the item's own.
    pub fn item_attributes(
        &self,
        out: &mut String,
        attributes: &[KeyValue<'_>],
        extra: usize,
        limits: &Limits,
        write_extra: impl FnOnce(&mut String) -> Result<(), Rejection>,
    ) -> Result<(), Rejection> {
        let n = self.count + attributes.len() + extra;
        if n > limits.max_attributes {
            return Err(too_many(n, limits));
        }
        out.clear();
        out.push('{');
        append_attributes(out, attributes, limits)?;
        write_extra(out)?;
        out.push('}');
        Ok(())
    }
}

/// Reads a resource's attributes, applies the resource processors and renders the rest.
pub(crate) fn resolve_resource<'a>(
    attributes: &'a [KeyValue<'a>],
    ctx: &DecodeContext<'_>,
) -> Result<ResolvedResource<'a>, Rejection> {
    let limits = ctx.limits;
    if attributes.len() > limits.max_attributes {
        return Err(too_many(attributes.len(), limits));
    }
    let mut fields = ResourceFields {
        attributes: Vec::with_capacity(attributes.len() + ctx.resource_actions.len()),
        ..ResourceFields::default()
    };
    for kv in attributes {
        let value = &kv.value;
        if let Some(column) = fields.column(&kv.key) {
            *column = value.as_str().map(Cow::Borrowed);
            continue;
        }
        if kv.key == "service.name" {
            fields.service_name = value.as_str().map(Cow::Borrowed);
        }
        let start = fields.values.len();
        write_value(&mut fields.values, value, limits, 0)?;
        fields.set(&kv.key, start);
    }
    resource::apply(ctx.resource_actions, &mut fields);
    let rendered = &fields.attributes;
    if rendered.len() > limits.max_attributes {
        return Err(too_many(rendered.len(), limits));
    }
    // Each member adds its key's quotes, a colon and a comma to the key and the value.
    let keys_len: usize = rendered.iter().map(|(k, _)| k.len() + 4).sum();
    let mut fragment = String::with_capacity(keys_len + fields.values.len());
    for (k, range) in rendered {
        if !fragment.is_empty() {
            fragment.push(',');
        }
        write_key(&mut fragment, k, limits)?;
        fragment.push_str(&fields.values[range.clone()]);
    }
    Ok(ResolvedResource {
        count: rendered.len(),
        device_id: fields.device_id,
        service_name: fields.service_name,
        location: fields.location,
        fragment,
    })
}

/// Renders the scope's name, version and attributes as a fragment.
pub(crate) fn scope_fragment(scope: &Scope<'_>, limits: &Limits) -> Result<String, Rejection> {
    if scope.attributes.len() > limits.max_attributes {
        return Err(too_many(scope.attributes.len(), limits));
    }
    let mut out = String::new();
    if !scope.name.is_empty() {
        write_key(&mut out, "otel.scope.name", limits)?;
        write_json_string(&mut out, &scope.name)?;
    }
    if !scope.version.is_empty() {
        separate(&mut out);
        write_key(&mut out, "otel.scope.version", limits)?;
        write_json_string(&mut out, &scope.version)?;
    }
    append_attributes(&mut out, &scope.attributes, limits)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::metrics::tests::{run, DEVICE_PAYLOAD};
    use crate::config::{AttributeAction, AttributeActionKind, Limits};
    use serde_json::json;

    #[test]
    fn resource_upsert_adds_processed_at() {
        let actions = [AttributeAction {
            key: "pipeline.processed_at".into(),
            kind: AttributeActionKind::Upsert,
            value_json: "\"edge-7\"".into(),
            value_text: Some("edge-7".into()),
        }];
        let rows = run(DEVICE_PAYLOAD, &actions, &Limits::default())
            .unwrap()
            .metrics;
        assert_eq!(rows[0].attributes["pipeline.processed_at"], "edge-7");
    }

    #[test]
    fn resource_attributes_repeat_and_processors_resolve_to_one_object() {
        let payload = r#"{"resourceMetrics": [{"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "s"}},
            {"key": "dup", "value": {"intValue": "1"}},
            {"key": "keep", "value": {"stringValue": "k"}},
            {"key": "dup", "value": {"intValue": "2"}},
            {"key": "gone", "value": {"boolValue": true}}]},
          "scopeMetrics": [{"scope": {"name": "m", "attributes": [{"key": "sa", "value": {"intValue": 5}}]},
            "metrics": [{"name": "x", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601000000000", "asInt": 1}]}}]}]},
          {"resource": {"attributes": [{"key": "device.id", "value": {"stringValue": "d"}}]},
           "scopeMetrics": [{"scope": {"name": "n"}, "metrics": [
             {"name": "y", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601000000000", "asInt": 2}]}}]}]}]}"#;
        let action = |key: &str, kind, value_json: &str| AttributeAction {
            key: key.into(),
            kind,
            value_json: value_json.into(),
            value_text: None,
        };
        let actions = [
            action("keep", AttributeActionKind::Insert, "\"replaced\""),
            action("added", AttributeActionKind::Insert, "\"a\""),
            action("dup", AttributeActionKind::Update, "3"),
            action("absent", AttributeActionKind::Update, "4"),
            action("gone", AttributeActionKind::Delete, ""),
        ];
        let rows = run(payload, &actions, &Limits::default()).unwrap().metrics;
        assert_eq!(
            rows[0].attributes,
            json!({"service.name": "s", "dup": 3, "keep": "k", "added": "a",
                   "otel.scope.name": "m", "sa": 5})
        );
        assert_eq!(rows[1].source, "d");
        assert_eq!(
            rows[1].attributes,
            json!({"added": "a", "keep": "replaced", "otel.scope.name": "n"})
        );
    }
}
