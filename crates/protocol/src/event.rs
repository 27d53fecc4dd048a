//! Event and subscription keys, broker channels, matching candidates and body merge (§6).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The wildcard value of subclass, type and obj_id.
pub const WILDCARD: &str = "*";

/// (service, class, subclass, type, obj_id) with `*` kept literally.
///
/// As a subscription key it identifies one subscription of a connection; as an event's key
/// it says what the event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventKey {
    /// Tenant ("" is the default service).
    pub service: String,
    /// Event class; never a wildcard.
    pub class: String,
    /// Subclass or `*`.
    pub subclass: String,
    /// Type or `*`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Object id or `*`.
    pub obj_id: String,
}

/// The broker channel of the key made of `fields` (service, class, subclass, type, obj_id):
/// `sb:ev` then `:<length>:<value>` per field, so no value can collide with a separator.
fn channel_of(fields: [&str; 5]) -> String {
    use std::fmt::Write as _;
    let mut channel = String::with_capacity(5 + fields.iter().map(|f| f.len() + 5).sum::<usize>());
    channel.push_str("sb:ev");
    for field in fields {
        // Writing into a String cannot fail.
        let _ = write!(channel, ":{}:", field.len());
        channel.push_str(field);
    }
    channel
}

impl EventKey {
    /// Returns the broker channel of this key.
    ///
    /// Each field is length-prefixed, so no field value can collide with a separator.
    pub fn channel(&self) -> String {
        channel_of([
            &self.service,
            &self.class,
            &self.subclass,
            &self.type_,
            &self.obj_id,
        ])
    }

    /// Reads back the key of a channel made by [`EventKey::channel`]; `None` for any other
    /// text.
    pub fn from_channel(channel: &str) -> Option<Self> {
        let mut rest = channel.strip_prefix("sb:ev")?;
        let mut fields: [String; 5] = Default::default();
        for field in &mut fields {
            let (length, after) = rest.strip_prefix(':')?.split_once(':')?;
            let length: usize = length.parse().ok()?;
            *field = after.get(..length)?.to_owned();
            rest = after.get(length..)?;
        }
        if !rest.is_empty() {
            return None;
        }
        let [service, class, subclass, type_, obj_id] = fields;
        Some(Self {
            service,
            class,
            subclass,
            type_,
            obj_id,
        })
    }

    /// Returns the channels of every subscription key this event can match: its class crossed
    /// with {value, `*`} for each of subclass, type and obj_id (at most 8, no duplicates).
    pub fn candidate_channels(&self) -> Vec<String> {
        // Built from borrowed fields: an event is published on up to 8 channels, and this runs
        // once per event.
        fn options(value: &str) -> ([&str; 2], usize) {
            if value == WILDCARD {
                ([WILDCARD, WILDCARD], 1)
            } else {
                ([value, WILDCARD], 2)
            }
        }
        let (subclasses, subclass_count) = options(&self.subclass);
        let (types, type_count) = options(&self.type_);
        let (obj_ids, obj_id_count) = options(&self.obj_id);
        let mut channels = Vec::with_capacity(subclass_count * type_count * obj_id_count);
        for subclass in &subclasses[..subclass_count] {
            for type_ in &types[..type_count] {
                for obj_id in &obj_ids[..obj_id_count] {
                    channels.push(channel_of([
                        &self.service,
                        &self.class,
                        subclass,
                        type_,
                        obj_id,
                    ]));
                }
            }
        }
        channels
    }

    /// Tells whether an event with key `event` reaches a subscription with this key (§6).
    pub fn matches(&self, event: &EventKey) -> bool {
        let field_matches = |sub: &str, ev: &str| sub == WILDCARD || sub == ev;
        self.service == event.service
            && self.class == event.class
            && field_matches(&self.subclass, &event.subclass)
            && field_matches(&self.type_, &event.type_)
            && field_matches(&self.obj_id, &event.obj_id)
    }

    /// Returns the subscription as listed by `event get_subscriptions`.
    pub fn describe(&self, body: &Map<String, Value>) -> Value {
        serde_json::json!({
            "class": self.class,
            "subclass": self.subclass,
            "type": self.type_,
            "obj_id": self.obj_id,
            "service": self.service,
            "body": body,
        })
    }
}

/// Where an event sits in its positioned stream (PROTOCOL.md §10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPosition {
    /// The stream's name.
    pub stream: String,
    /// The stream's epoch.
    pub epoch: String,
    /// The event's offset in the epoch, from 1, gap-free.
    pub offset: u64,
}

impl EventPosition {
    /// The position as the JSON text of an event frame's `pos`.
    pub fn to_json(&self) -> String {
        serde_json::json!({"stream": self.stream, "epoch": self.epoch, "offset": self.offset})
            .to_string()
    }
}

/// An event as it travels from the bus to the gateways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMessage {
    /// Its position, when it was published into a channel with a positioned stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos: Option<EventPosition>,
    /// When the bus published it, in microseconds since the Unix epoch (for the delivery
    /// lag; absent from events published by other means).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// What the event is about.
    #[serde(flatten)]
    pub key: EventKey,
    /// The event body, absent when the event has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

impl EventMessage {
    /// Returns the `data` object of the event frame for a subscriber whose subscription body
    /// is `subscription_body` and whose connection belongs to `connection_service`.
    ///
    /// Wildcard fields are left out; `service` only appears for another service's event.
    pub fn frame_data(
        &self,
        subscription_body: &Map<String, Value>,
        connection_service: &str,
    ) -> Value {
        let mut data = Map::new();
        data.insert("class".into(), self.key.class.clone().into());
        for (name, value) in [
            ("subclass", &self.key.subclass),
            ("type", &self.key.type_),
            ("obj_id", &self.key.obj_id),
        ] {
            if value != WILDCARD {
                data.insert(name.into(), value.clone().into());
            }
        }
        if self.key.service != connection_service {
            data.insert("service".into(), self.key.service.clone().into());
        }
        if let Some(body) = merge_body(subscription_body, self.body.as_ref()) {
            data.insert("body".into(), body);
        }
        Value::Object(data)
    }
}

/// Merges a subscription body with an event body (§6).
///
/// Both objects: the subscription body overlaid with the event body (event keys win). A
/// non-object event body is delivered unchanged. `None` when there is nothing to deliver.
pub fn merge_body(
    subscription_body: &Map<String, Value>,
    event_body: Option<&Value>,
) -> Option<Value> {
    match event_body {
        Some(Value::Object(event_object)) => {
            if subscription_body.is_empty() {
                return (!event_object.is_empty()).then(|| Value::Object(event_object.clone()));
            }
            let mut merged = subscription_body.clone();
            for (key, value) in event_object {
                merged.insert(key.clone(), value.clone());
            }
            Some(Value::Object(merged))
        }
        Some(Value::Null) | None => {
            (!subscription_body.is_empty()).then(|| Value::Object(subscription_body.clone()))
        }
        Some(other) => Some(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn from_channel_reads_back_every_key() {
        let keys = [
            key("*", "*", "*"),
            key("a:b", "3:x", ""),
            EventKey {
                service: "média".into(),
                ..key("s", "t", "o:1:2")
            },
        ];
        for key in keys {
            assert_eq!(EventKey::from_channel(&key.channel()), Some(key));
        }
        for bad in [
            "",
            "sb:ev",
            "sb:ev:1:a",
            "sb:ev:0::1:c:1:*:1:*:1:*:x",
            "other",
        ] {
            assert_eq!(EventKey::from_channel(bad), None, "{bad}");
        }
    }

    fn key(subclass: &str, type_: &str, obj_id: &str) -> EventKey {
        EventKey {
            service: String::new(),
            class: "c".into(),
            subclass: subclass.into(),
            type_: type_.into(),
            obj_id: obj_id.into(),
        }
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn channels_do_not_collide() {
        let a = key("a:1", "b", "c");
        let b = key("a", "1:b", "c");
        assert_ne!(a.channel(), b.channel());
    }

    #[test]
    fn candidates_are_exactly_the_matching_keys() {
        let values = ["*", "x", "y"];
        for es in values {
            for et in values {
                for eo in values {
                    let event = key(es, et, eo);
                    let candidates = event.candidate_channels();
                    let unique: std::collections::HashSet<_> = candidates.iter().collect();
                    assert_eq!(unique.len(), candidates.len(), "no duplicate channel");
                    for ss in values {
                        for st in values {
                            for so in values {
                                let sub = key(ss, st, so);
                                assert_eq!(
                                    sub.matches(&event),
                                    candidates.contains(&sub.channel()),
                                    "sub {sub:?} event {event:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(key("a", "b", "c").candidate_channels().len(), 8);
    }

    #[test]
    fn merge_rules() {
        let sub = object(json!({"a": 1, "b": 1}));
        assert_eq!(
            merge_body(&sub, Some(&json!({"b": 2, "c": 3}))),
            Some(json!({"a": 1, "b": 2, "c": 3}))
        );
        assert_eq!(merge_body(&sub, None), Some(json!({"a": 1, "b": 1})));
        assert_eq!(
            merge_body(&Map::new(), Some(&json!({"x": 1}))),
            Some(json!({"x": 1}))
        );
        assert_eq!(merge_body(&sub, Some(&json!("text"))), Some(json!("text")));
        assert_eq!(merge_body(&Map::new(), Some(&json!({}))), None);
    }

    #[test]
    fn frame_data_omits_wildcards_and_own_service() {
        let event = EventMessage {
            ts: None,
            pos: None,
            key: key("s", "*", "*"),
            body: None,
        };
        assert_eq!(
            event.frame_data(&Map::new(), ""),
            json!({"class": "c", "subclass": "s"})
        );
        assert_eq!(
            event.frame_data(&Map::new(), "other"),
            json!({"class": "c", "subclass": "s", "service": ""})
        );
    }
}
