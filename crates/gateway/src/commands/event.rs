//! `event subscribe`, `event unsubscribe`, `event get_subscriptions`, `event send_event`.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use switchboard_protocol::event::{EventKey, WILDCARD};
use switchboard_protocol::fields::Fields;
use switchboard_protocol::limits;
use switchboard_protocol::policy::Direction;
use switchboard_protocol::{ApiError, ErrorCode};

use super::publish_request;
use crate::conn_state::ConnState;
use crate::gateway::Gateway;
use crate::reply::{CommandResult, Failure};
use crate::routes::{Subscription, empty_body};
use crate::session::Identity;
use switchboard_proto::v1::PublishRequest;

/// Reads (service, class, subclass, type, obj_id) with defaults applied.
fn event_key(
    gateway: &Gateway,
    state: &ConnState,
    data: &Map<String, Value>,
) -> Result<EventKey, ApiError> {
    let fields = Fields(data);
    let class = fields.required_str("class")?;
    if class == WILDCARD {
        return Err(ApiError::syntax("class", "a class name, not *"));
    }
    let service = fields
        .optional_str("service")?
        .unwrap_or(&state.session.service);
    let key = EventKey {
        service: service.to_owned(),
        class: class.to_owned(),
        subclass: fields.str_or("subclass", WILDCARD)?.to_owned(),
        type_: fields.str_or("type", WILDCARD)?.to_owned(),
        obj_id: fields.str_or("obj_id", WILDCARD)?.to_owned(),
    };
    super::check_key(&key, &gateway.config.limits)?;
    Ok(key)
}

fn check_event_policy(
    gateway: &Gateway,
    identity: &Identity,
    state: &ConnState,
    key: &EventKey,
    direction: Direction,
) -> Result<(), ApiError> {
    if gateway.config.policy.event_allowed(
        &identity.roles,
        direction,
        &key.class,
        &key.service,
        &state.session.service,
    ) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

/// Adds (or replaces the body of) a subscription of this connection.
pub(crate) async fn add_subscription(
    gateway: &Gateway,
    state: &mut ConnState,
    key: &EventKey,
    body: Map<String, Value>,
) -> Result<(), ApiError> {
    let channel = key.channel();
    let existing = state
        .subscriptions
        .iter()
        .position(|known| *known.channel == *channel);
    if existing.is_none() && state.subscriptions.len() >= gateway.config.max_subscriptions {
        return Err(ApiError::new(
            ErrorCode::LimitExceeded,
            format!(
                "at most {} subscriptions per session",
                gateway.config.max_subscriptions
            ),
        ));
    }
    let subscription = Subscription {
        channel: match existing {
            Some(index) => Arc::clone(&state.subscriptions[index].channel),
            None => Arc::from(channel),
        },
        body: if body.is_empty() {
            empty_body()
        } else {
            Arc::new(body)
        },
    };
    gateway
        .hub
        .routes
        .add(std::slice::from_ref(&subscription), &state.session)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "subscribe failed");
            ApiError::unavailable("event broker")
        })?;
    match existing {
        Some(index) => state.subscriptions[index] = subscription,
        None => state.subscriptions.insert(0, subscription),
    }
    Ok(())
}

/// `event subscribe`.
pub(crate) async fn subscribe(
    gateway: &Gateway,
    state: &mut ConnState,
    identity: &Identity,
    data: &Map<String, Value>,
) -> CommandResult {
    let key = event_key(gateway, state, data)?;
    check_event_policy(gateway, identity, state, &key, Direction::Subscribe)?;
    let body = Fields(data)
        .optional_object("body")?
        .cloned()
        .unwrap_or_default();
    if !body.is_empty() {
        let max = gateway.config.limits.subscription_body;
        limits::check_json("body", &body, max)?;
    }
    add_subscription(gateway, state, &key, body).await?;
    Ok(json!({}))
}

/// `event unsubscribe`: ok whether or not the subscription existed.
pub(crate) async fn unsubscribe(
    gateway: &Gateway,
    state: &mut ConnState,
    data: &Map<String, Value>,
) -> CommandResult {
    let channel = event_key(gateway, state, data)?.channel();
    if let Some(index) = state
        .subscriptions
        .iter()
        .position(|known| *known.channel == *channel)
    {
        let subscription = state.subscriptions.remove(index);
        gateway
            .hub
            .routes
            .remove(&[subscription], state.session.conn_id)
            .await;
    }
    Ok(json!({}))
}

/// `event get_subscriptions`: newest first.
pub(crate) fn get_subscriptions(state: &ConnState) -> Value {
    Value::Array(
        state
            .subscriptions
            .iter()
            .filter_map(|subscription| {
                let key = EventKey::from_channel(&subscription.channel)?;
                Some(key.describe(&subscription.body))
            })
            .collect(),
    )
}

/// `event send_event` (alias `send`).
pub(crate) fn send_event(
    gateway: &Gateway,
    state: &ConnState,
    identity: &Identity,
    data: &Map<String, Value>,
) -> Result<PublishRequest, Failure> {
    let key = event_key(gateway, state, data)?;
    check_event_policy(gateway, identity, state, &key, Direction::Send)?;
    Ok(publish_request(
        key,
        Fields(data).optional_value("body"),
        gateway.config.limits.event_body,
        &identity.roles,
        &state.session.service,
        false,
    )?)
}
