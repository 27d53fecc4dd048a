//! The `core` commands, one module per subclass.

pub(crate) mod event;
pub(crate) mod session;
pub(crate) mod user;

use std::sync::Arc;

use serde_json::{Map, Value};
use switchboard_proto::v1::{Event, PublishRequest};
use switchboard_protocol::event::EventKey;
use switchboard_protocol::event::WILDCARD;
use switchboard_protocol::fields::Fields;
use switchboard_protocol::{ApiError, ByteLimits, ErrorCode, limits};

use crate::conn_state::ConnState;
use crate::gateway::Gateway;
use crate::publisher::PublishJob;
use crate::reply::{Failure, encode};

/// Tells whether `subclass`/`cmd` is a core command.
pub(crate) fn is_known(subclass: &str, cmd: &str) -> bool {
    switchboard_protocol::policy::is_command(subclass, cmd)
}

/// Builds the bus request of `user send_event` and `session send_event`: the event
/// `core/<subclass>/<type>/<target>`, where `target` is the data field `target_field`.
/// These are authorised by the command policy, so the bus gets them as trusted.
pub(crate) fn core_event_request(
    gateway: &Gateway,
    state: &ConnState,
    data: &Map<String, Value>,
    subclass: &str,
    target_field: &str,
) -> Result<PublishRequest, Failure> {
    let fields = Fields(data);
    let target = fields.required_str(target_field)?;
    let type_ = fields.str_or("type", WILDCARD)?;
    // Both subclasses: a session subscribed to its user's events would see them as well.
    if crate::token::RESERVED_TYPES.contains(&type_) {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            format!("event type {type_} is sent by the gateway only"),
        )
        .into());
    }
    let key = EventKey {
        service: state.session.service.clone(),
        class: user::CORE_CLASS.to_owned(),
        subclass: subclass.to_owned(),
        type_: type_.to_owned(),
        obj_id: target.to_owned(),
    };
    check_key(&key, &gateway.config.limits)?;
    Ok(publish_request(
        key,
        fields.optional_value("body"),
        gateway.config.limits.event_body,
        &[],
        &state.session.service,
        true,
    )?)
}

/// `limit_exceeded` naming the first key field longer than the limit.
pub(crate) fn check_key(key: &EventKey, byte_limits: &ByteLimits) -> Result<(), ApiError> {
    for (field, value) in [
        ("class", &key.class),
        ("subclass", &key.subclass),
        ("type", &key.type_),
        ("obj_id", &key.obj_id),
        ("service", &key.service),
    ] {
        limits::check(field, value.len(), byte_limits.key_field)?;
    }
    Ok(())
}

/// Builds the bus request for an event whose body may be `max_body` bytes of compact JSON.
/// The body is encoded once: its length is checked on the text that is sent.
///
/// # Errors
/// `limit_exceeded` naming `body` past `max_body`.
pub(crate) fn publish_request(
    key: EventKey,
    body: Option<&Value>,
    max_body: usize,
    roles: &[String],
    publisher_service: &str,
    trusted: bool,
) -> Result<PublishRequest, ApiError> {
    let body_json = match body {
        // `to_string` starts from a buffer of 128 bytes; `Display` grows one from nothing.
        Some(body) if !body.is_null() => serde_json::to_string(body).unwrap_or_default(),
        _ => String::new(),
    };
    limits::check("body", body_json.len(), max_body)?;
    Ok(PublishRequest {
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
    })
}

/// Queues a publish for the connection of `state`; its reply is sent when the bus has it.
/// Waits while the connection already has its budget of publishes in flight.
pub(crate) async fn submit_publish(
    gateway: &Gateway,
    state: &mut ConnState,
    tid: Value,
    request: Result<PublishRequest, Failure>,
) -> Option<String> {
    let request = match request {
        Ok(request) => request,
        Err(failure) => return Some(encode(&tid, Err(failure))),
    };
    let permits = Arc::clone(state.publish_permits.get_or_insert_with(|| {
        Arc::new(tokio::sync::Semaphore::new(
            crate::publisher::MAX_INFLIGHT_PER_CONNECTION,
        ))
    }));
    let permit = tokio::select! {
        permit = permits.acquire_owned() => permit.ok()?,
        () = state.session.kill_token().cancelled() => return None,
    };
    gateway
        .publisher
        .submit(PublishJob {
            request,
            session: Arc::clone(&state.session),
            tid,
            permit,
        })
        .await;
    crate::metrics::METRICS.events_submitted.inc();
    None
}
