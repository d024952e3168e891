//! `processors.resource`: the configured actions on a resource's attributes, as the
//! OpenTelemetry Collector's resource processor applies them. `insert` adds an attribute
//! that is absent, `update` replaces one that is present, `upsert` does either, `delete`
//! removes it.

use crate::config::{AttributeAction, AttributeActionKind};
use std::borrow::Cow;
use std::ops::Range;

/// A resource as the processor sees it: the attributes that have columns of their own, the
/// service name, and every other attribute with its value already rendered as JSON text.
///
/// `'v` is what the values borrow (the message), `'k` what the keys borrow (the message or
/// the config).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResourceFields<'v, 'k> {
    /// `device.id`: the row's `source` column, not one of `attributes`.
    pub device_id: Option<Cow<'v, str>>,
    /// `device.location`: the row's `location` column, not one of `attributes`.
    pub location: Option<Cow<'v, str>>,
    /// `service.name` as text; it is one of `attributes` as well.
    pub service_name: Option<Cow<'v, str>>,
    /// Every other attribute in order: its key and the range of `values` its value takes.
    pub attributes: Vec<(&'k str, Range<usize>)>,
    /// The JSON values of `attributes`, one after another: one buffer for all of them
    /// instead of a String apiece. A replaced value's text is left unused.
    pub values: String,
}

impl<'v, 'k> ResourceFields<'v, 'k> {
    /// The field of an attribute that has a column of its own, or `None` for the others.
    pub fn column(&mut self, key: &str) -> Option<&mut Option<Cow<'v, str>>> {
        match key {
            "device.id" => Some(&mut self.device_id),
            "device.location" => Some(&mut self.location),
            _ => None,
        }
    }

    /// Records the text of `values` from `start` to its end as `key`'s value. A key set
    /// before keeps only this, its last value, as jsonb would.
    pub fn set(&mut self, key: &'k str, start: usize) {
        self.remove(key);
        self.attributes.push((key, start..self.values.len()));
    }

    fn remove(&mut self, key: &str) {
        self.attributes.retain(|(k, _)| *k != key);
    }

    fn has(&self, key: &str) -> bool {
        self.attributes.iter().any(|(k, _)| *k == key)
    }
}

/// Applies `actions` to a resource, in order. Nothing but its arguments goes in or out: the
/// caller reads the resource before and renders it after.
pub fn apply<'k>(actions: &'k [AttributeAction], resource: &mut ResourceFields<'_, 'k>) {
    for action in actions {
        let key = action.key.as_str();
        let text = || action.value_text.clone().map(Cow::Owned);
        if let Some(column) = resource.column(key) {
            match action.kind {
                AttributeActionKind::Delete => *column = None,
                kind if sets(kind, column.is_some()) => *column = text(),
                _ => {}
            }
            continue;
        }
        match action.kind {
            AttributeActionKind::Delete => {
                if key == "service.name" {
                    resource.service_name = None;
                }
                resource.remove(key);
            }
            kind if sets(kind, resource.has(key)) => {
                if key == "service.name" {
                    resource.service_name = text();
                }
                let start = resource.values.len();
                resource.values.push_str(&action.value_json);
                resource.set(key, start);
            }
            _ => {}
        }
    }
}

/// Whether an action of `kind` writes its value, given whether the attribute is `present`.
const fn sets(kind: AttributeActionKind, present: bool) -> bool {
    match kind {
        AttributeActionKind::Insert => !present,
        AttributeActionKind::Update => present,
        AttributeActionKind::Upsert => true,
        AttributeActionKind::Delete => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(key: &str, kind: AttributeActionKind, value: &str) -> AttributeAction {
        let json: serde_json::Value = serde_json::from_str(value).unwrap_or_default();
        AttributeAction {
            key: key.into(),
            kind,
            value_json: value.into(),
            value_text: json.as_str().map(str::to_owned),
        }
    }

    /// A resource read from `(key, JSON value)` pairs, as a decoder reads one.
    fn read<'k>(pairs: &[(&'k str, &str)]) -> ResourceFields<'static, 'k> {
        let mut resource = ResourceFields::default();
        for (key, value) in pairs {
            let text: Option<String> = serde_json::from_str(value).ok();
            if let Some(column) = resource.column(key) {
                *column = text.map(Cow::Owned);
                continue;
            }
            if *key == "service.name" {
                resource.service_name = text.map(Cow::Owned);
            }
            let start = resource.values.len();
            resource.values.push_str(value);
            resource.set(key, start);
        }
        resource
    }

    /// The attributes in order, each with its JSON value.
    fn rendered(resource: &ResourceFields<'_, '_>) -> Vec<(String, String)> {
        resource
            .attributes
            .iter()
            .map(|(k, range)| ((*k).to_owned(), resource.values[range.clone()].to_owned()))
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn each_kind_acts_on_present_and_absent_attributes() {
        use AttributeActionKind::{Delete, Insert, Update, Upsert};
        let mut resource = read(&[("keep", "\"k\""), ("dup", "1"), ("gone", "true")]);
        let actions = [
            action("keep", Insert, "\"replaced\""),
            action("added", Insert, "\"a\""),
            action("dup", Update, "3"),
            action("absent", Update, "4"),
            action("gone", Delete, ""),
            action("pipeline.processed_at", Upsert, "\"edge-7\""),
            action("keep", Upsert, "2"),
        ];
        apply(&actions[..6], &mut resource);
        assert_eq!(
            rendered(&resource),
            pairs(&[
                ("keep", "\"k\""),
                ("added", "\"a\""),
                ("dup", "3"),
                ("pipeline.processed_at", "\"edge-7\"")
            ])
        );
        // Upsert replaces a present value too, moving it last.
        apply(&actions[6..], &mut resource);
        assert_eq!(
            rendered(&resource).last(),
            Some(&pairs(&[("keep", "2")])[0])
        );
        assert_eq!(resource.attributes.len(), 4);
    }

    #[test]
    fn column_attributes_are_set_and_removed_outside_the_attributes() {
        use AttributeActionKind::{Delete, Insert, Update, Upsert};
        let actions = [
            action("device.id", Insert, "\"ignored\""),
            action("device.location", Update, "\"ignored\""),
            action("device.id", Update, "\"d-2\""),
            action("device.location", Upsert, "\"rack-2\""),
            action("device.id", Delete, ""),
            // A value that is not a string sets no column text.
            action("device.location", Upsert, "7"),
        ];
        let mut resource = read(&[("device.id", "\"d-1\""), ("other", "1")]);
        apply(&actions[..2], &mut resource);
        assert_eq!(resource.device_id.as_deref(), Some("d-1"));
        assert_eq!(resource.location, None);
        apply(&actions[2..4], &mut resource);
        assert_eq!(resource.device_id.as_deref(), Some("d-2"));
        assert_eq!(resource.location.as_deref(), Some("rack-2"));
        assert_eq!(rendered(&resource), pairs(&[("other", "1")]));
        apply(&actions[4..], &mut resource);
        assert_eq!((resource.device_id, resource.location), (None, None));
    }

    #[test]
    fn service_name_is_an_attribute_and_a_field() {
        use AttributeActionKind::{Delete, Upsert};
        let actions = [
            action("service.name", Upsert, "\"edge\""),
            action("service.name", Delete, ""),
        ];
        let mut resource = read(&[("service.name", "\"api\"")]);
        assert_eq!(resource.service_name.as_deref(), Some("api"));
        apply(&actions[..1], &mut resource);
        assert_eq!(resource.service_name.as_deref(), Some("edge"));
        assert_eq!(rendered(&resource), pairs(&[("service.name", "\"edge\"")]));
        apply(&actions[1..], &mut resource);
        assert_eq!(resource.service_name, None);
        assert!(resource.attributes.is_empty());
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        let resource = read(&[("dup", "1"), ("keep", "\"k\""), ("dup", "2")]);
        assert_eq!(
            rendered(&resource),
            pairs(&[("keep", "\"k\""), ("dup", "2")])
        );
        assert_eq!(resource.values, "1\"k\"2");
    }
}
