//! Publishing events: connections hand their `send_event`s to one batching task per gateway,
//! which publishes everything queued so far as one batch (one Redis round trip) and answers
//! each request when its batch is done.
//!
//! A batch goes to the event bus over a long-lived `PublishStream` (`publish_via_bus`, the
//! default), or straight into the broker the gateway holds, through the publish path the bus
//! runs (`switchboard_publish::publish_batch`: the same validation, policy and positions).
//!
//! A connection does not wait for its publish to complete before reading its next request,
//! yet its events keep their order: one batch is in flight at a time and a batch keeps the
//! order of its queue. Each connection may have [`MAX_INFLIGHT_PER_CONNECTION`] publishes
//! waiting; past that its reader waits, so a fast publisher feels backpressure through its
//! own socket instead of growing a queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::{Value, json};
use switchboard_broker::Broker;
use switchboard_protocol::policy::Policy;

use switchboard_proto::v1::{PublishBatchReply, PublishBatchRequest, PublishRequest};
use switchboard_protocol::{ApiError, ErrorCode};
use switchboard_publish::Refusal;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::clients::{Services, status_to_api_error};
use crate::reply::{Failure, encode};
use crate::session::SessionHandle;

/// Publishes one connection may have waiting for the bus.
pub const MAX_INFLIGHT_PER_CONNECTION: usize = 256;
/// Most events in one `PublishBatch`.
const MAX_BATCH: usize = 512;
/// Publishes queued towards the batching task.
const QUEUE: usize = 8192;

/// One `send_event` waiting to be published.
#[derive(Debug)]
pub(crate) struct PublishJob {
    pub(crate) request: PublishRequest,
    pub(crate) session: Arc<SessionHandle>,
    pub(crate) tid: Value,
    /// Returned to the connection's in-flight budget once answered.
    pub(crate) permit: OwnedSemaphorePermit,
}

impl PublishJob {
    /// Sends the reply; the connection's permit goes back once the reply is queued.
    fn answer(self, result: Result<serde_json::Value, Failure>) {
        self.session
            .reply_soon(encode(&self.tid, result), self.permit);
    }
}

/// The handle connections submit publishes to.
#[derive(Debug, Clone)]
pub struct Publisher {
    jobs_tx: mpsc::Sender<PublishJob>,
}

/// Where a gateway's batches of events go.
#[derive(Debug, Clone)]
pub enum PublishRoute {
    /// Straight into the broker, validated and authorised like the bus does; a batch that
    /// takes longer than `deadline` fails as `unavailable`.
    Broker {
        broker: Broker,
        policy: Arc<Policy>,
        deadline: Duration,
    },
    /// To the event bus over gRPC.
    Bus(Box<Services>),
}

impl Publisher {
    /// Starts the batching task. While events keep coming, a batch goes out at most once per
    /// `linger`; an event after a quiet spell goes at once.
    pub fn start(route: PublishRoute, linger: Duration) -> Self {
        let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE);
        tokio::spawn(batch_loop(route, linger, jobs_rx));
        Self { jobs_tx }
    }

    /// Queues a publish; its reply is sent to the session when its batch completes.
    pub(crate) async fn submit(&self, job: PublishJob) {
        if let Err(mpsc::error::SendError(job)) = self.jobs_tx.send(job).await {
            job.answer(Err(Failure::Api(ApiError::unavailable("event publisher"))));
        }
    }
}

/// What a client is told of a refused event.
fn refusal_error(refusal: &Refusal) -> ApiError {
    match refusal {
        Refusal::Denied => ApiError::unauthorized(),
        Refusal::LimitExceeded(message) => ApiError::new(ErrorCode::LimitExceeded, message),
        Refusal::Invalid(message) => ApiError::new(ErrorCode::SyntaxError, message),
    }
}

/// The outcome of each event of a batch.
type Outcomes = Vec<Result<(), Refusal>>;

/// The gateway's end of a `PublishStream`: batches go out on `batches_tx`, replies come back
/// in order on `replies`.
struct BusStream {
    batches_tx: mpsc::Sender<PublishBatchRequest>,
    replies: tonic::Streaming<PublishBatchReply>,
}

impl BusStream {
    async fn open(services: &Services) -> Result<Self, Status> {
        let (batches_tx, batches_rx) = mpsc::channel(4);
        // No deadline on the request: it would end the whole stream. Each batch has its own.
        let request = tonic::Request::new(ReceiverStream::new(batches_rx));
        let replies = services
            .bus
            .clone()
            .publish_stream(request)
            .await?
            .into_inner();
        Ok(Self {
            batches_tx,
            replies,
        })
    }

    /// Sends one batch and waits (at most `deadline`) for its reply.
    async fn publish(
        &mut self,
        batch: PublishBatchRequest,
        deadline: Duration,
    ) -> Result<PublishBatchReply, Status> {
        self.batches_tx
            .send(batch)
            .await
            .map_err(|_| Status::unavailable("publish stream closed"))?;
        match tokio::time::timeout(deadline, self.replies.message()).await {
            Ok(Ok(Some(reply))) => Ok(reply),
            Ok(Ok(None)) => Err(Status::unavailable("publish stream ended")),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::deadline_exceeded("publish timed out")),
        }
    }
}

/// Sends one batch to the bus over `stream`, opening one first if there is none; a stream
/// that failed is dropped, so the next batch opens a new one.
async fn publish_via_bus(
    services: &Services,
    stream: &mut Option<BusStream>,
    batch: PublishBatchRequest,
) -> Result<PublishBatchReply, Status> {
    let deadline = services.rpc_timeout;
    let outcome = match stream.as_mut() {
        Some(open) => open.publish(batch, deadline).await,
        None => match tokio::time::timeout(deadline, BusStream::open(services)).await {
            Ok(Ok(mut opened)) => {
                let outcome = opened.publish(batch, deadline).await;
                *stream = Some(opened);
                outcome
            }
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::unavailable("event bus did not answer")),
        },
    };
    if outcome.is_err() {
        *stream = None;
    }
    outcome
}

impl PublishRoute {
    /// What a client's `unavailable` names when this route fails.
    fn service_name(&self) -> &'static str {
        match self {
            Self::Broker { .. } => "event broker",
            Self::Bus(_) => "event bus",
        }
    }

    /// Publishes one batch; `bus_stream` is the open `PublishStream` of a bus route.
    async fn publish(
        &self,
        bus_stream: &mut Option<BusStream>,
        events: Vec<PublishRequest>,
    ) -> Result<Outcomes, Status> {
        match self {
            Self::Broker {
                broker,
                policy,
                deadline,
            } => {
                let publish = switchboard_publish::publish_batch(broker, policy, events);
                match tokio::time::timeout(*deadline, publish).await {
                    Ok(Ok(outcomes)) => Ok(outcomes),
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "publish failed");
                        Err(Status::unavailable("broker unavailable"))
                    }
                    Err(_) => Err(Status::unavailable("event broker did not answer")),
                }
            }
            Self::Bus(services) => {
                let reply =
                    publish_via_bus(services, bus_stream, PublishBatchRequest { events }).await?;
                Ok(reply.results.iter().map(Refusal::from_result).collect())
            }
        }
    }
}

/// Publishes the queued events in batches along `route` and answers every job of a batch
/// once the batch is done.
async fn batch_loop(
    route: PublishRoute,
    linger: Duration,
    mut jobs_rx: mpsc::Receiver<PublishJob>,
) {
    let mut jobs: Vec<PublishJob> = Vec::with_capacity(MAX_BATCH);
    let mut bus_stream: Option<BusStream> = None;
    // As if the last batch went out long ago: the first is sent at once.
    let mut last_sent = Instant::now()
        .checked_sub(linger)
        .unwrap_or_else(Instant::now);
    while jobs_rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        // Busy (the last batch went out less than `linger` ago): gather for the rest of the
        // interval, so a stream of events costs one batch per interval, not one per event.
        let next = last_sent + linger;
        if jobs.len() < MAX_BATCH && Instant::now() < next {
            tokio::time::sleep_until(next).await;
            while jobs.len() < MAX_BATCH {
                match jobs_rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        last_sent = Instant::now();
        let events = jobs
            .iter_mut()
            .map(|job| std::mem::take(&mut job.request))
            .collect();
        let outcome = route.publish(&mut bus_stream, events).await;
        match outcome {
            Ok(outcomes) => {
                for (index, job) in jobs.drain(..).enumerate() {
                    let result = match outcomes.get(index) {
                        Some(Ok(())) => Ok(json!({})),
                        Some(Err(refusal)) => Err(Failure::Api(refusal_error(refusal))),
                        None => Err(Failure::Api(ApiError::new(
                            ErrorCode::InternalError,
                            "the bus answered fewer results than events",
                        ))),
                    };
                    job.answer(result);
                }
            }
            Err(status) => {
                let error = status_to_api_error(&status, route.service_name());
                for job in jobs.drain(..) {
                    job.answer(Err(Failure::Api(error.clone())));
                }
            }
        }
    }
}
