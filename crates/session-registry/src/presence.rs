//! Lifecycle events (PROTOCOL.md §11): `core/presence/started/<user>` when a session starts,
//! `core/presence/stopped/<user>` with a `reason` when it ends.
//!
//! They are built here from a session's registration and fired by the store in the same step
//! that changes the index (the Redis scripts publish them), so each session yields exactly one
//! `started` and one `stopped`, in that order, whatever races: a close, a `session stop`, a
//! takeover and the reaper. The registry keeps each session's `stopped` event, without its
//! reason, beside the session, since the reaper fires it without a gateway to ask.

use switchboard_proto::v1::SessionInfo;
use switchboard_protocol::event::EventKey;

pub use switchboard_protocol::presence::reason;

/// A session's two lifecycle events, ready for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The channels of `started`, each as `<length>:<channel>`.
    pub started_channels: String,
    /// The `started` event.
    pub started: String,
    /// The channels of `stopped`, each as `<length>:<channel>`.
    pub stopped_channels: String,
    /// The `stopped` event up to its reason: the reason and `"}}` complete it.
    pub stopped_prefix: String,
}

fn json(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// `channels` as `<length>:<channel>` one after the other (channels may hold any byte).
pub fn pack_channels(channels: &[String]) -> String {
    let mut packed = String::new();
    for channel in channels {
        packed.push_str(&format!("{}:{channel}", channel.len()));
    }
    packed
}

/// Reads back [`pack_channels`].
pub fn unpack_channels(mut packed: &str) -> Vec<String> {
    let mut channels = Vec::new();
    while let Some((length, rest)) = packed.split_once(':') {
        let Some(length) = length.parse::<usize>().ok().filter(|n| *n <= rest.len()) else {
            break;
        };
        let Some(channel) = rest.get(..length) else {
            break;
        };
        channels.push(channel.to_owned());
        packed = &rest[length..];
    }
    channels
}

fn key(info: &SessionInfo, type_: &str) -> EventKey {
    EventKey {
        service: info.service.clone(),
        class: "core".to_owned(),
        subclass: "presence".to_owned(),
        type_: type_.to_owned(),
        obj_id: info.user.clone(),
    }
}

/// The event of `type_` about `info`'s user with `body` (JSON text).
fn payload(key: &EventKey, body: &str) -> String {
    let mut payload = serde_json::to_string(key).unwrap_or_else(|_| "{}".to_owned());
    payload.pop();
    payload.push_str(",\"body\":");
    payload.push_str(body);
    payload.push('}');
    payload
}

/// The event of `type_` about `info`'s user with `body`, and its packed channels.
fn event(info: &SessionInfo, type_: &str, body: &str) -> (String, String) {
    let key = key(info, type_);
    (
        pack_channels(&key.candidate_channels()),
        payload(&key, body),
    )
}

impl Presence {
    /// The lifecycle events of the session `info` registers.
    pub fn of(info: &SessionInfo) -> Self {
        let (started_channels, started) = event(info, "started", &started_body(info));
        let stopped_body = format!(
            "{{\"session_id\":{},\"user\":{},\"reason\":\"\"}}",
            json(&info.session_id),
            json(&info.user)
        );
        let (stopped_channels, mut stopped_prefix) = event(info, "stopped", &stopped_body);
        // Ends with `"reason":""}}`: keep it up to the reason's opening quote.
        stopped_prefix.truncate(stopped_prefix.len() - 3);
        Self {
            started_channels,
            started,
            stopped_channels,
            stopped_prefix,
        }
    }

    /// The `started` event alone (the Redis scripts make its channels and the `stopped` event
    /// themselves).
    pub fn started_event(info: &SessionInfo) -> String {
        payload(&key(info, "started"), &started_body(info))
    }
}

/// The body of a session's `started` event.
fn started_body(info: &SessionInfo) -> String {
    let mut body = format!(
        "{{\"session_id\":{},\"user\":{},\"type\":{},\"remote\":{}",
        json(&info.session_id),
        json(&info.user),
        json(&info.r#type),
        json(&info.remote)
    );
    if serde_json::from_str::<serde_json::Value>(&info.meta_json).is_ok_and(|v| v.is_object()) {
        body.push_str(",\"meta\":");
        body.push_str(&info.meta_json);
    }
    body.push('}');
    body
}

/// The `stopped` event from its prefix and `reason`.
pub fn stopped(prefix: &str, reason: &str) -> String {
    format!("{prefix}{reason}\"}}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_are_events_of_the_protocol() {
        let info = SessionInfo {
            session_id: "s\"1".into(),
            service: "media".into(),
            user: "alice".into(),
            r#type: "api_server".into(),
            remote: "ws:1.2.3.4:5".into(),
            meta_json: r#"{"device":"phone"}"#.into(),
            ..SessionInfo::default()
        };
        let presence = Presence::of(&info);
        let started: serde_json::Value = serde_json::from_str(&presence.started).expect("JSON");
        assert_eq!(started["class"], "core");
        assert_eq!(started["subclass"], "presence");
        assert_eq!(started["type"], "started");
        assert_eq!(started["obj_id"], "alice");
        assert_eq!(started["body"]["session_id"], "s\"1");
        assert_eq!(started["body"]["meta"]["device"], "phone");
        let stopped: serde_json::Value =
            serde_json::from_str(&stopped(&presence.stopped_prefix, reason::LOST)).expect("JSON");
        assert_eq!(stopped["type"], "stopped");
        assert_eq!(
            stopped["body"],
            serde_json::json!({"session_id": "s\"1", "user": "alice", "reason": "lost"})
        );
        let channels = unpack_channels(&presence.started_channels);
        assert_eq!(channels.len(), 8, "{channels:?}");
        assert_eq!(pack_channels(&channels), presence.started_channels);
        assert_eq!(Presence::started_event(&info), presence.started);
    }
}
