//! The event bus: validates and authorises events, then publishes each one to the broker
//! channels of the (at most 8) subscription keys that can match it.
//!
//! Serves the `EventBus` gRPC service (`proto/switchboard/v1/bus.proto`); publishes into a
//! [`switchboard_broker::Broker`]. Stateless: scale it freely.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use switchboard_broker::Broker;
use switchboard_proto::internal::InternalSecret;
use switchboard_proto::v1::event_bus_server::{EventBus, EventBusServer};
use switchboard_proto::v1::{
    PublishBatchReply, PublishBatchRequest, PublishReply, PublishRequest, PublishResult,
};
use switchboard_protocol::ByteLimits;
use switchboard_protocol::event::{EventKey, WILDCARD};
use switchboard_protocol::policy::{Direction, Policy};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// The tonic service publishing into a broker.
#[derive(Debug, Clone)]
pub struct GrpcEventBus {
    broker: Broker,
    policy: Arc<Policy>,
    /// Cancelled when the server shuts down: its `PublishStream`s end.
    closing: CancellationToken,
}

impl GrpcEventBus {
    /// Creates a bus publishing into `broker`, refusing what `policy` does not allow.
    pub fn new(broker: Broker, policy: Arc<Policy>) -> Self {
        Self {
            broker,
            policy,
            closing: CancellationToken::new(),
        }
    }
}

fn field_or_wildcard(value: String) -> String {
    if value.is_empty() {
        WILDCARD.to_owned()
    } else {
        value
    }
}

/// Validates and authorises one event; returns the channels it can match and its payload.
///
/// The body is checked to be JSON but not re-encoded: the payload is assembled around the
/// body text as received.
///
/// # Errors
/// `InvalidArgument` for a malformed event, `PermissionDenied` when the policy refuses it.
fn prepare(policy: &Policy, request: PublishRequest) -> Result<(Vec<String>, Bytes), Status> {
    let event = request
        .event
        .ok_or_else(|| Status::invalid_argument("event is required"))?;
    if event.class.is_empty() || event.class == WILDCARD {
        return Err(Status::invalid_argument("event class must be set"));
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
        return Err(Status::permission_denied("not allowed by the policy"));
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
            return Err(Status::invalid_argument(format!(
                "limit_exceeded: {field} is over {} bytes",
                limits.key_field
            )));
        }
    }
    if event.body_json.len() > limits.event_body {
        return Err(Status::invalid_argument(format!(
            "limit_exceeded: body is over {} bytes",
            limits.event_body
        )));
    }
    if !event.body_json.is_empty() && serde_json::from_str::<&RawValue>(&event.body_json).is_err() {
        return Err(Status::invalid_argument("body_json is not JSON"));
    }
    let key = EventKey {
        service: event.service,
        class: event.class,
        subclass: field_or_wildcard(event.subclass),
        type_: field_or_wildcard(event.r#type),
        obj_id: field_or_wildcard(event.obj_id),
    };
    let channels = key.candidate_channels();
    let mut payload =
        serde_json::to_string(&key).map_err(|_| Status::internal("internal error"))?;
    if !event.body_json.is_empty() {
        // `key` serialises as an object: splice the body in before its closing brace.
        payload.pop();
        payload.push_str(",\"body\":");
        payload.push_str(&event.body_json);
        payload.push('}');
    }
    Ok((channels, Bytes::from(payload)))
}

fn broker_unavailable(error: impl std::fmt::Display) -> Status {
    tracing::warn!(%error, "publish failed");
    Status::unavailable("broker unavailable")
}

#[tonic::async_trait]
impl EventBus for GrpcEventBus {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishReply>, Status> {
        let (channels, payload) = prepare(&self.policy, request.into_inner())?;
        self.broker
            .publish(&channels, payload)
            .await
            .map_err(broker_unavailable)?;
        Ok(Response::new(PublishReply {}))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchReply>, Status> {
        let reply = publish_batch(&self.broker, &self.policy, request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    type PublishStreamStream =
        Pin<Box<dyn Stream<Item = Result<PublishBatchReply, Status>> + Send + 'static>>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishBatchRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let broker = self.broker.clone();
        let policy = Arc::clone(&self.policy);
        let (replies_tx, replies_rx) = mpsc::channel(STREAM_REPLIES);
        let closing = self.closing.clone();
        tokio::spawn(async move {
            // Batches are published one after the other, so their order is kept. A shutting
            // down bus takes no more batches and ends the stream; the gateway opens another.
            loop {
                let batch = tokio::select! {
                    biased;
                    () = closing.cancelled() => break,
                    batch = inbound.message() => batch,
                };
                let Ok(Some(batch)) = batch else { break };
                let reply = publish_batch(&broker, &policy, batch).await;
                let failed = reply.is_err();
                if replies_tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(replies_rx))))
    }
}

/// Replies buffered towards a publishing stream's client.
const STREAM_REPLIES: usize = 16;

/// Prepares every event of a batch and publishes the valid ones in one broker round trip.
///
/// This is the whole of a publish: gateways that hold the broker themselves call it directly
/// (one hop fewer), and the gRPC service calls it for everyone else.
///
/// # Errors
/// `Unavailable` when the broker failed; refused events are results, not errors.
pub async fn publish_batch(
    broker: &Broker,
    policy: &Policy,
    request: PublishBatchRequest,
) -> Result<PublishBatchReply, Status> {
    let mut results = Vec::with_capacity(request.events.len());
    let mut batch = Vec::with_capacity(request.events.len());
    for event in request.events {
        match prepare(policy, event) {
            Ok(prepared) => {
                batch.push(prepared);
                results.push(PublishResult {
                    ok: true,
                    ..PublishResult::default()
                });
            }
            Err(status) => results.push(PublishResult {
                ok: false,
                code: match status.code() {
                    tonic::Code::PermissionDenied => "permission_denied".to_owned(),
                    _ => "invalid_argument".to_owned(),
                },
                message: status.message().to_owned(),
            }),
        }
    }
    broker
        .publish_batch(&batch)
        .await
        .map_err(broker_unavailable)?;
    Ok(PublishBatchReply { results })
}

/// Serves the bus on `listener` until `shutdown` completes.
///
/// # Errors
/// Returns the transport error that stopped the server.
pub async fn serve(
    broker: Broker,
    policy: Arc<Policy>,
    listener: TcpListener,
    secret: InternalSecret,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let bus = GrpcEventBus::new(broker, policy);
    let closing = bus.closing.clone();
    tonic::transport::Server::builder()
        .layer(secret.server_layer())
        .add_service(
            EventBusServer::new(bus)
                .max_decoding_message_size(switchboard_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(switchboard_proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            // Gateways run with `publish_via_bus` hold a publish stream open.
            switchboard_proto::calls::close_streams_on(shutdown, closing),
        )
        .await
}
