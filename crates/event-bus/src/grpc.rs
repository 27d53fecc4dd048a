//! The tonic adapter of the bus: `Publish`, `PublishBatch` and `PublishStream` over the
//! publish path, `OpenStreams` and `ReadHistory` over the broker's positioned streams, and the
//! server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use switchboard_broker::{Broker, BrokerError, HISTORY_PAGE, History};
use switchboard_proto::internal::InternalSecret;
use switchboard_proto::v1::event_bus_server::{EventBus, EventBusServer};
use switchboard_proto::v1::{
    OpenStreamsReply, OpenStreamsRequest, PublishBatchReply, PublishBatchRequest, PublishReply,
    PublishRequest, ReadHistoryReply, ReadHistoryRequest, StreamPosition,
};
use switchboard_protocol::policy::Policy;
use switchboard_publish::{Refusal, published};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::METRICS;
/// Replies buffered towards a publishing stream's client.
const STREAM_REPLIES: usize = 16;
/// Most channels one `OpenStreams` call may name.
pub const MAX_OPEN_STREAMS: usize = 1000;

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

fn refusal_status(refusal: &Refusal) -> Status {
    match refusal {
        Refusal::Denied => Status::permission_denied(refusal.message()),
        Refusal::LimitExceeded(message) => {
            Status::invalid_argument(format!("limit_exceeded: {message}"))
        }
        Refusal::Invalid(message) => Status::invalid_argument(message.clone()),
    }
}

fn broker_unavailable(error: &BrokerError) -> Status {
    tracing::warn!(%error, "publish failed");
    Status::unavailable("broker unavailable")
}

/// Publishes a batch; refused events are results, not errors.
async fn publish_batch(
    broker: &Broker,
    policy: &Policy,
    request: PublishBatchRequest,
) -> Result<PublishBatchReply, Status> {
    let events = request.events.len();
    let started = std::time::Instant::now();
    let outcomes = switchboard_publish::publish_batch(broker, policy, request.events)
        .await
        .map_err(|error| {
            METRICS.count("unavailable", events);
            broker_unavailable(&error)
        })?;
    METRICS
        .publish_duration
        .observe(started.elapsed().as_secs_f64());
    let mut published_count = 0;
    let results = outcomes
        .iter()
        .map(|outcome| match outcome {
            Ok(()) => {
                published_count += 1;
                published()
            }
            Err(refusal) => {
                METRICS.refused(refusal);
                refusal.to_result()
            }
        })
        .collect();
    METRICS.count("published", published_count);
    Ok(PublishBatchReply { results })
}

#[tonic::async_trait]
impl EventBus for GrpcEventBus {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishReply>, Status> {
        let prepared = switchboard_publish::prepare(&self.policy, request.into_inner()).map_err(
            |refusal| {
                METRICS.refused(&refusal);
                refusal_status(&refusal)
            },
        )?;
        let started = std::time::Instant::now();
        self.broker
            .publish(&prepared.0, prepared.1)
            .await
            .map_err(|error| {
                METRICS.count("unavailable", 1);
                broker_unavailable(&error)
            })?;
        METRICS
            .publish_duration
            .observe(started.elapsed().as_secs_f64());
        METRICS.count("published", 1);
        Ok(Response::new(PublishReply {}))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchReply>, Status> {
        let reply = publish_batch(&self.broker, &self.policy, request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn open_streams(
        &self,
        request: Request<OpenStreamsRequest>,
    ) -> Result<Response<OpenStreamsReply>, Status> {
        let channels = request.into_inner().channels;
        if channels.len() > MAX_OPEN_STREAMS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_OPEN_STREAMS} channels per call"
            )));
        }
        let mut streams = Vec::with_capacity(channels.len());
        for channel in &channels {
            let top = self
                .broker
                .open_stream(channel)
                .await
                .map_err(|error| broker_unavailable(&error))?;
            streams.push(StreamPosition {
                stream: top.stream,
                epoch: top.epoch,
                offset: top.offset,
            });
        }
        Ok(Response::new(OpenStreamsReply { streams }))
    }

    async fn read_history(
        &self,
        request: Request<ReadHistoryRequest>,
    ) -> Result<Response<ReadHistoryReply>, Status> {
        let request = request.into_inner();
        let page = match usize::try_from(request.page) {
            Ok(0) | Err(_) => HISTORY_PAGE,
            Ok(page) => page.min(HISTORY_PAGE),
        };
        let history = self
            .broker
            .read_history(
                &request.channel,
                &request.epoch,
                request.after,
                request.max,
                page,
            )
            .await
            .map_err(|error| broker_unavailable(&error))?;
        Ok(Response::new(match history {
            History::Unrecoverable => ReadHistoryReply::default(),
            History::Complete { top, events } => ReadHistoryReply {
                recoverable: true,
                top,
                payloads: events
                    .into_iter()
                    .map(|(_, payload)| payload.to_vec())
                    .collect(),
            },
        }))
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
        .layer(switchboard_proto::observe::ServerTraceLayer)
        // grpc.health.v1: SERVING while the server runs (behind the secret like the rest).
        .add_service(tonic_health::server::health_reporter().1)
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
