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
use crate::outbound::Outbound;
use crate::positioned::{Positioned, read_all, repair};
use crate::reply::{CommandResult, Failure, encode};
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

/// Adds (or replaces) a subscription of this connection; positioned when `positioned` is
/// given (its flow holds live events until it goes live).
pub(crate) async fn add_subscription(
    gateway: &Gateway,
    state: &mut ConnState,
    key: &EventKey,
    body: Arc<Map<String, Value>>,
    positioned: Option<Arc<Positioned>>,
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
        body,
        positioned,
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

/// What `recover` asks of `event subscribe` (PROTOCOL.md §10).
enum Recover {
    /// A plain subscription.
    No,
    /// A positioned one, from now on.
    Fresh,
    /// A positioned one that first recovers what came after this position.
    From { epoch: String, offset: u64 },
}

fn recover_field(data: &Map<String, Value>) -> Result<Recover, ApiError> {
    let invalid = || {
        ApiError::syntax(
            "recover",
            "true, false or {\"epoch\": text, \"offset\": number}",
        )
    };
    match data.get("recover") {
        None | Some(Value::Null | Value::Bool(false)) => Ok(Recover::No),
        Some(Value::Bool(true)) => Ok(Recover::Fresh),
        Some(Value::Object(position)) => {
            let epoch = position
                .get("epoch")
                .and_then(Value::as_str)
                .ok_or_else(invalid)?;
            let offset = position
                .get("offset")
                .and_then(Value::as_u64)
                .ok_or_else(invalid)?;
            if epoch.len() > 256 {
                return Err(invalid());
            }
            Ok(Recover::From {
                epoch: epoch.to_owned(),
                offset,
            })
        }
        Some(_) => Err(invalid()),
    }
}

/// `event subscribe`: returns the response frame, or `None` when a positioned subscription
/// sent its own (its replay must follow it).
pub(crate) async fn subscribe(
    gateway: &Gateway,
    state: &mut ConnState,
    identity: &Identity,
    tid: &Value,
    data: &Map<String, Value>,
) -> Option<String> {
    let checked = (|| {
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
        let body = if body.is_empty() {
            empty_body()
        } else {
            Arc::new(body)
        };
        Ok::<_, ApiError>((key, body, recover_field(data)?))
    })();
    let (key, body, recover) = match checked {
        Ok(checked) => checked,
        Err(error) => return Some(encode(tid, Err(error.into()))),
    };
    if matches!(recover, Recover::No) {
        let added = add_subscription(gateway, state, &key, body, None).await;
        return Some(encode(
            tid,
            added.map(|()| json!({})).map_err(Failure::from),
        ));
    }
    match subscribe_positioned(gateway, state, tid, key, body, recover).await {
        Ok(()) => None,
        Err(error) => Some(encode(tid, Err(error.into()))),
    }
}

/// A positioned subscribe: subscribed (holding live events) first, then the stream opened,
/// the history read when recovering, the reply sent, the replay sent, and the held events
/// past it released; each event once, in order.
async fn subscribe_positioned(
    gateway: &Gateway,
    state: &mut ConnState,
    tid: &Value,
    key: EventKey,
    body: Arc<Map<String, Value>>,
    recover: Recover,
) -> Result<(), ApiError> {
    let channel: Arc<str> = Arc::from(key.channel());
    let positioned = Positioned::new(
        Arc::clone(&channel),
        Arc::clone(&body),
        Arc::clone(&state.session),
    );
    add_subscription(gateway, state, &key, body, Some(Arc::clone(&positioned))).await?;
    let opened = gateway
        .services
        .open_streams(vec![channel.to_string()])
        .await;
    let top = match opened.map(|mut streams| streams.pop()) {
        Ok(Some(top)) => top,
        failed => {
            // Not subscribed after all: a positioned subscription without its stream would
            // hold its events for ever.
            let (Ok(()) | Err(_)) = unsubscribe_channel(gateway, state, &channel).await;
            return Err(failed
                .err()
                .unwrap_or_else(|| ApiError::unavailable("event bus")));
        }
    };
    positioned.set_stream(top.stream.clone());
    let mut reply = json!({"stream": top.stream, "epoch": top.epoch, "offset": top.offset});
    let mut replay = Vec::new();
    if let Recover::From { epoch, offset } = recover {
        let within = epoch == top.epoch
            && offset <= top.offset
            && top.offset - offset <= gateway.config.max_recover;
        let read = if within {
            read_all(
                gateway.history(),
                &channel,
                &epoch,
                offset,
                gateway.config.max_recover,
            )
            .await
        } else {
            Ok(None)
        };
        match read {
            Ok(Some(events)) => {
                reply["recovered"] = json!(true);
                reply["missed"] = json!(events.len());
                replay = events;
            }
            Ok(None) => reply["recovered"] = json!(false),
            Err(error) => {
                let (Ok(()) | Err(_)) = unsubscribe_channel(gateway, state, &channel).await;
                return Err(error);
            }
        }
    }
    if !state
        .session
        .send(Outbound::Text(encode(tid, Ok(reply))))
        .await
    {
        return Ok(());
    }
    let mut last = top.offset;
    for (offset, event) in &replay {
        if !positioned.send_replayed(event, &top.epoch, *offset).await {
            return Ok(());
        }
        last = last.max(*offset);
    }
    if let Some(gap) = positioned.go_live(top.epoch, last) {
        tokio::spawn(repair(positioned, gateway.history_source(), gap));
    }
    Ok(())
}

/// Removes this connection's subscription of `channel`, if it has one.
async fn unsubscribe_channel(
    gateway: &Gateway,
    state: &mut ConnState,
    channel: &str,
) -> Result<(), ApiError> {
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
    Ok(())
}

/// `event unsubscribe`: ok whether or not the subscription existed.
pub(crate) async fn unsubscribe(
    gateway: &Gateway,
    state: &mut ConnState,
    data: &Map<String, Value>,
) -> CommandResult {
    let channel = event_key(gateway, state, data)?.channel();
    unsubscribe_channel(gateway, state, &channel).await?;
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
