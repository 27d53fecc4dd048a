//! The `core` commands, one module per subclass.

pub(crate) mod event;
pub(crate) mod session;
pub(crate) mod user;

use serde_json::Value;
use switchboard_proto::v1::{Event, PublishRequest};
use switchboard_protocol::event::EventKey;

use crate::clients::status_to_api_error;
use crate::dispatch::Failure;
use crate::gateway::Gateway;

/// Tells whether `subclass`/`cmd` is a core command.
pub(crate) fn is_known(subclass: &str, cmd: &str) -> bool {
    matches!(
        (subclass, cmd),
        ("user", "login" | "list" | "get" | "send_event")
            | ("session", "stop" | "send_event" | "cmd" | "log" | "ping")
            | ("core", "ping")
            | (
                "event",
                "subscribe" | "unsubscribe" | "get_subscriptions" | "send_event" | "send"
            )
    )
}

/// Publishes an event through the bus.
pub(crate) async fn publish(
    gateway: &Gateway,
    key: EventKey,
    body: Option<&Value>,
    roles: &[String],
    publisher_service: &str,
    trusted: bool,
) -> Result<(), Failure> {
    let body_json = match body {
        Some(body) if !body.is_null() => body.to_string(),
        _ => String::new(),
    };
    let request = gateway.services.request(PublishRequest {
        event: Some(Event {
            service: key.service,
            class: key.class,
            subclass: key.subclass,
            r#type: key.type_,
            obj_id: key.obj_id,
            body_json,
        }),
        roles: roles.to_vec(),
        publisher_service: publisher_service.to_owned(),
        trusted,
    });
    gateway
        .services
        .bus
        .clone()
        .publish(request)
        .await
        .map_err(|status| Failure::Api(status_to_api_error(&status, "event bus")))?;
    Ok(())
}
