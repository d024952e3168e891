//! Pieces of OTLP protobuf requests, built with opentelemetry-proto's own types.

use opentelemetry_proto::tonic::common::v1::{any_value::Value as Any, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// An attribute.
pub fn kv(key: &str, value: Any) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A string value.
pub fn string(value: &str) -> Any {
    Any::StringValue(value.into())
}

/// A resource with these attributes.
pub fn resource(attributes: Vec<KeyValue>) -> Option<Resource> {
    Some(Resource {
        attributes,
        ..Default::default()
    })
}
