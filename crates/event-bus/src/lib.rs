//! The event bus: validates and authorises events, then publishes each one to the broker
//! channels of the (at most 8) subscription keys that can match it.
//!
//! Serves the `EventBus` gRPC service (`proto/switchboard/v1/bus.proto`); publishes into a
//! [`switchboard_broker::Broker`]. Stateless: scale it freely.

use std::future::Future;

use bytes::Bytes;
use serde_json::Value;
use switchboard_broker::Broker;
use switchboard_proto::v1::event_bus_server::{EventBus, EventBusServer};
use switchboard_proto::v1::{PublishReply, PublishRequest};
use switchboard_protocol::event::{EventKey, EventMessage, WILDCARD};
use switchboard_protocol::policy;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// The tonic service publishing into a broker.
#[derive(Debug, Clone)]
pub struct GrpcEventBus {
    broker: Broker,
}

impl GrpcEventBus {
    /// Creates a bus publishing into `broker`.
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

fn field_or_wildcard(value: String) -> String {
    if value.is_empty() {
        WILDCARD.to_owned()
    } else {
        value
    }
}

#[tonic::async_trait]
impl EventBus for GrpcEventBus {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishReply>, Status> {
        let request = request.into_inner();
        let event = request
            .event
            .ok_or_else(|| Status::invalid_argument("event is required"))?;
        if event.class.is_empty() || event.class == WILDCARD {
            return Err(Status::invalid_argument("event class must be set"));
        }
        if !request.trusted
            && !policy::event_allowed(
                &request.roles,
                &event.class,
                &event.service,
                &request.publisher_service,
            )
        {
            return Err(Status::permission_denied("not allowed by the policy"));
        }
        let body = if event.body_json.is_empty() {
            None
        } else {
            Some(
                serde_json::from_str::<Value>(&event.body_json)
                    .map_err(|_| Status::invalid_argument("body_json is not JSON"))?,
            )
        };
        let message = EventMessage {
            key: EventKey {
                service: event.service,
                class: event.class,
                subclass: field_or_wildcard(event.subclass),
                type_: field_or_wildcard(event.r#type),
                obj_id: field_or_wildcard(event.obj_id),
            },
            body,
        };
        let channels = message.key.candidate_channels();
        let payload =
            serde_json::to_vec(&message).map_err(|_| Status::internal("internal error"))?;
        self.broker
            .publish(&channels, Bytes::from(payload))
            .await
            .map_err(|error| {
                tracing::warn!(%error, "publish failed");
                Status::unavailable("broker unavailable")
            })?;
        Ok(Response::new(PublishReply {}))
    }
}

/// Serves the bus on `listener` until `shutdown` completes.
///
/// # Errors
/// Returns the transport error that stopped the server.
pub async fn serve(
    broker: Broker,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(EventBusServer::new(GrpcEventBus::new(broker)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
