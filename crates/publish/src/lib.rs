//! The path an event takes into the broker: validate, authorise, prepare, publish.
//!
//! The event bus service runs it for backends and for gateways' clients; gateways run with
//! `publish_via_bus = false` run it in-process, one hop fewer. Neither is a
//! dependency of the other: both depend on this crate. Refusals are typed ([`Refusal`]); the
//! gRPC adapters turn them into statuses or [`PublishResult`]s.

use bytes::Bytes;
use serde_json::value::RawValue;
use switchboard_broker::{Broker, BrokerError};
use switchboard_proto::v1::{PublishRequest, PublishResult, RefusalCode};
use switchboard_protocol::ByteLimits;
use switchboard_protocol::event::{EventKey, WILDCARD};
use switchboard_protocol::policy::{Direction, Policy};

/// Why an event was not published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed: no event, no class, a body that is not JSON.
    Invalid(String),
    /// Over a byte limit of PROTOCOL.md §1; the text names the field.
    LimitExceeded(String),
    /// The policy does not let the publisher send this class.
    Denied,
}

impl Refusal {
    /// Text for humans.
    pub fn message(&self) -> &str {
        match self {
            Self::Invalid(message) | Self::LimitExceeded(message) => message,
            Self::Denied => "not allowed by the policy",
        }
    }

    /// The result of a refused event in a `PublishBatchReply`.
    pub fn to_result(&self) -> PublishResult {
        let code = match self {
            Self::Invalid(_) => RefusalCode::Invalid,
            Self::LimitExceeded(_) => RefusalCode::LimitExceeded,
            Self::Denied => RefusalCode::Denied,
        };
        PublishResult {
            ok: false,
            message: self.message().to_owned(),
            refusal: code.into(),
        }
    }

    /// Reads one result of a `PublishBatchReply`: `Ok` for a published event.
    ///
    /// # Errors
    /// The refusal the result carries (an unknown code reads as [`Refusal::Invalid`]).
    pub fn from_result(result: &PublishResult) -> Result<(), Self> {
        if result.ok {
            return Ok(());
        }
        let message = result.message.clone();
        Err(match RefusalCode::try_from(result.refusal) {
            Ok(RefusalCode::Denied) => Self::Denied,
            Ok(RefusalCode::LimitExceeded) => Self::LimitExceeded(message),
            _ => Self::Invalid(message),
        })
    }
}

/// The result of a published event in a `PublishBatchReply`.
pub fn published() -> PublishResult {
    PublishResult {
        ok: true,
        ..PublishResult::default()
    }
}

fn field_or_wildcard(value: String) -> String {
    if value.is_empty() {
        WILDCARD.to_owned()
    } else {
        value
    }
}

/// An event ready for the broker: the channels it can match and its payload.
pub type Prepared = (Vec<String>, Bytes);

/// Microseconds since the Unix epoch (0 before it).
fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |now| u64::try_from(now.as_micros()).unwrap_or(u64::MAX))
}

/// Validates and authorises one event; returns the channels it can match and its payload.
///
/// The body is checked to be JSON but not re-encoded: the payload is assembled around the
/// body text as received.
///
/// # Errors
/// The [`Refusal`].
pub fn prepare(policy: &Policy, request: PublishRequest) -> Result<Prepared, Refusal> {
    let event = request
        .event
        .ok_or_else(|| Refusal::Invalid("event is required".into()))?;
    if event.class.is_empty() || event.class == WILDCARD {
        return Err(Refusal::Invalid("event class must be set".into()));
    }
    if !request.trusted
        && !policy.event_allowed(
            &request.roles,
            Direction::Send,
            &event.class,
            &event.service,
            &request.publisher_service,
        )
    {
        return Err(Refusal::Denied);
    }
    // The byte limits of PROTOCOL.md §1, for backends too (gateways check them first, to
    // answer their clients with the field named).
    let limits = ByteLimits::default();
    for (field, value) in [
        ("class", &event.class),
        ("subclass", &event.subclass),
        ("type", &event.r#type),
        ("obj_id", &event.obj_id),
        ("service", &event.service),
    ] {
        if value.len() > limits.key_field {
            return Err(Refusal::LimitExceeded(format!(
                "{field} is over {} bytes",
                limits.key_field
            )));
        }
    }
    if event.body_json.len() > limits.event_body {
        return Err(Refusal::LimitExceeded(format!(
            "body is over {} bytes",
            limits.event_body
        )));
    }
    if !event.body_json.is_empty() && serde_json::from_str::<&RawValue>(&event.body_json).is_err() {
        return Err(Refusal::Invalid("body_json is not JSON".into()));
    }
    let key = EventKey {
        service: event.service,
        class: event.class,
        subclass: field_or_wildcard(event.subclass),
        type_: field_or_wildcard(event.r#type),
        obj_id: field_or_wildcard(event.obj_id),
    };
    let channels = key.candidate_channels();
    let mut payload = serde_json::to_string(&key)
        .map_err(|error| Refusal::Invalid(format!("event key: {error}")))?;
    // `key` serialises as an object: splice the publication time and the body in before its
    // closing brace.
    payload.pop();
    payload.push_str(",\"ts\":");
    payload.push_str(&now_micros().to_string());
    if event.body_json.is_empty() {
        payload.push('}');
    } else {
        payload.push_str(",\"body\":");
        payload.push_str(&event.body_json);
        payload.push('}');
    }
    Ok((channels, Bytes::from(payload)))
}

/// Prepares every event of a batch and publishes the valid ones, in order, in one broker
/// round trip; one outcome per event.
///
/// # Errors
/// [`BrokerError`] when the broker failed (nothing of the batch is known to be published).
pub async fn publish_batch(
    broker: &Broker,
    policy: &Policy,
    requests: Vec<PublishRequest>,
) -> Result<Vec<Result<(), Refusal>>, BrokerError> {
    let mut outcomes = Vec::with_capacity(requests.len());
    let mut batch = Vec::with_capacity(requests.len());
    for request in requests {
        outcomes.push(prepare(policy, request).map(|prepared| batch.push(prepared)));
    }
    broker.publish_batch(&batch).await?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use switchboard_proto::v1::Event;

    use super::*;

    fn request(class: &str, body: &str, roles: &[&str]) -> PublishRequest {
        PublishRequest {
            event: Some(Event {
                class: class.into(),
                body_json: body.into(),
                ..Event::default()
            }),
            roles: roles.iter().map(|role| (*role).to_owned()).collect(),
            publisher_service: String::new(),
            trusted: false,
        }
    }

    #[test]
    fn refusals_are_typed_and_survive_the_wire() {
        let policy = Policy::default();
        let cases = [
            (request("", "", &[]), "class"),
            (request("c", "{not json", &[]), "JSON"),
            (request(&"c".repeat(257), "", &[]), "class"),
        ];
        for (request, named) in cases {
            let refusal = prepare(&policy, request).expect_err("refused");
            assert!(refusal.message().contains(named), "{refusal:?}");
            assert_eq!(Refusal::from_result(&refusal.to_result()), Err(refusal));
        }
        assert!(matches!(
            prepare(&policy, request(&"c".repeat(257), "", &[])),
            Err(Refusal::LimitExceeded(_))
        ));
        assert_eq!(Refusal::from_result(&published()), Ok(()));
        let (channels, payload) = prepare(&policy, request("c", r#"{"a":1}"#, &["admin"]))
            .expect("an admin may send anything");
        assert_eq!(
            channels.len(),
            1,
            "no subclass, type or obj_id: one key can match"
        );
        assert!(payload.ends_with(br#","body":{"a":1}}"#));
    }
}
