//! Publishing events: connections hand their `send_event`s to one batching task per gateway,
//! which sends everything queued so far to the bus in one `PublishBatch` call (one Redis
//! round trip) and answers each request when its batch is done.
//!
//! A connection does not wait for its publish to complete before reading its next request,
//! yet its events keep their order: one batch is in flight at a time and a batch keeps the
//! order of its queue. Each connection may have [`MAX_INFLIGHT_PER_CONNECTION`] publishes
//! waiting; past that its reader waits, so a fast publisher feels backpressure through its
//! own socket instead of growing a queue.

use std::sync::Arc;

use serde_json::{Value, json};
use switchboard_proto::v1::{PublishBatchRequest, PublishRequest};
use switchboard_protocol::{ApiError, ErrorCode};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::clients::{Services, status_to_api_error};
use crate::dispatch::{Failure, encode};
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

/// The handle connections submit publishes to.
#[derive(Debug, Clone)]
pub struct Publisher {
    jobs_tx: mpsc::Sender<PublishJob>,
}

impl Publisher {
    /// Starts the batching task.
    pub fn start(services: Services) -> Self {
        let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE);
        tokio::spawn(batch_loop(services, jobs_rx));
        Self { jobs_tx }
    }

    /// Queues a publish; its reply is sent to the session when its batch completes.
    pub(crate) async fn submit(&self, job: PublishJob) {
        if let Err(mpsc::error::SendError(job)) = self.jobs_tx.send(job).await {
            let error = ApiError::unavailable("event bus");
            job.session
                .reply_soon(encode(&job.tid, Err(Failure::Api(error))));
        }
    }
}

fn refusal(code: &str, message: &str) -> ApiError {
    match code {
        "permission_denied" => ApiError::unauthorized(),
        _ => ApiError::new(ErrorCode::SyntaxError, message),
    }
}

async fn batch_loop(services: Services, mut jobs_rx: mpsc::Receiver<PublishJob>) {
    let mut jobs: Vec<PublishJob> = Vec::with_capacity(MAX_BATCH);
    while jobs_rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let events = jobs
            .iter_mut()
            .map(|job| std::mem::take(&mut job.request))
            .collect();
        let request = services.request(PublishBatchRequest { events });
        let outcome = services.bus.clone().publish_batch(request).await;
        match outcome {
            Ok(reply) => {
                let results = reply.into_inner().results;
                for (index, job) in jobs.drain(..).enumerate() {
                    let result = match results.get(index) {
                        Some(result) if result.ok => Ok(json!({})),
                        Some(result) => Err(Failure::Api(refusal(&result.code, &result.message))),
                        None => Err(Failure::Api(ApiError::new(
                            ErrorCode::InternalError,
                            "the bus answered fewer results than events",
                        ))),
                    };
                    job.session.reply_soon(encode(&job.tid, result));
                    drop(job.permit);
                }
            }
            Err(status) => {
                let error = status_to_api_error(&status, "event bus");
                for job in jobs.drain(..) {
                    job.session
                        .reply_soon(encode(&job.tid, Err(Failure::Api(error.clone()))));
                    drop(job.permit);
                }
            }
        }
    }
}
