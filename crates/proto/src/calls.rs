//! Unary calls multiplexed over one long-lived gRPC stream (`LoginStream`, `RegisterStream`;
//! see `calls.proto`).
//!
//! A unary gRPC call opens an HTTP/2 stream: the client encodes headers and writes them apart
//! from the message, the server wakes for each and routes a new request through its service
//! stack, and answers with headers, message and trailers. On a stream that stays open a call is
//! one DATA frame each way. [`CallStream`] is the caller's end (it opens the stream on first use
//! and again after it fails), [`serve`] the server's (each call runs as its own task, so a slow
//! one does not hold up the others).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use switchboard_sync::Lock;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming};
use tracing::Instrument;

use crate::v1::{
    CallStatus, LoginAnswer, LoginCall, LoginReply, LoginRequest, RegisterAnswer, RegisterCall,
    RegisterReply, RegisterRequest,
};

/// Calls one stream may have in flight on the server; past that it stops reading the stream,
/// and HTTP/2 flow control holds the caller back.
pub const MAX_IN_FLIGHT: usize = 1024;

/// A call message: an id, a request and the caller's time limit.
pub trait Call: Send + 'static {
    /// The unary request it carries.
    type Request: Clone + Default + Send + 'static;
    /// The service and the method it stands for (`("Auth", "Login")`), naming its span.
    const METHOD: (&'static str, &'static str);
    /// Wraps a request the caller waits at most `timeout` for, with the caller's trace
    /// context.
    fn new(
        id: u64,
        request: Self::Request,
        timeout: Duration,
        trace_context: HashMap<String, String>,
    ) -> Self;
    /// Unwraps it: a missing request is the default one, a missing limit is none.
    fn into_parts(self) -> CallParts<Self::Request>;
}

/// A call message taken apart.
#[derive(Debug)]
pub struct CallParts<R> {
    /// The call's id on its stream.
    pub id: u64,
    /// The request.
    pub request: R,
    /// How long the caller waits (none: no limit).
    pub limit: Option<Duration>,
    /// The caller's W3C trace context.
    pub trace_context: HashMap<String, String>,
}

/// An answer message: the id of its call and the call's outcome.
pub trait Answer: Send + 'static {
    /// The unary reply it carries.
    type Reply: Default + Send + 'static;
    /// Wraps an outcome.
    fn new(id: u64, outcome: Result<Self::Reply, Status>) -> Self;
    /// The id of the call it answers.
    fn id(&self) -> u64;
    /// Unwraps the outcome.
    fn into_outcome(self) -> Result<Self::Reply, Status>;
}

fn status_of<T>(outcome: &Result<T, Status>) -> CallStatus {
    match outcome {
        Ok(_) => CallStatus::default(),
        Err(status) => CallStatus {
            code: status.code() as i32,
            message: status.message().to_owned(),
        },
    }
}

fn outcome_of<T: Default>(status: Option<CallStatus>, reply: Option<T>) -> Result<T, Status> {
    match status {
        Some(status) if status.code != 0 => {
            Err(Status::new(Code::from(status.code), status.message))
        }
        _ => Ok(reply.unwrap_or_default()),
    }
}

macro_rules! call_messages {
    ($call:ty, $request:ty, $answer:ty, $reply:ty, $method:expr) => {
        impl Call for $call {
            type Request = $request;
            const METHOD: (&'static str, &'static str) = $method;
            fn new(
                id: u64,
                request: $request,
                timeout: Duration,
                trace_context: HashMap<String, String>,
            ) -> Self {
                Self {
                    id,
                    request: Some(request),
                    // At least 1 ms: 0 would mean no limit.
                    timeout_ms: u32::try_from(timeout.as_millis())
                        .unwrap_or(u32::MAX)
                        .max(1),
                    trace_context,
                }
            }
            fn into_parts(self) -> CallParts<$request> {
                let limit = (self.timeout_ms > 0)
                    .then(|| Duration::from_millis(u64::from(self.timeout_ms)));
                CallParts {
                    id: self.id,
                    request: self.request.unwrap_or_default(),
                    limit,
                    trace_context: self.trace_context,
                }
            }
        }

        impl Answer for $answer {
            type Reply = $reply;
            fn new(id: u64, outcome: Result<$reply, Status>) -> Self {
                Self {
                    id,
                    status: Some(status_of(&outcome)),
                    reply: outcome.ok(),
                }
            }
            fn id(&self) -> u64 {
                self.id
            }
            fn into_outcome(self) -> Result<$reply, Status> {
                outcome_of(self.status, self.reply)
            }
        }
    };
}

call_messages!(
    LoginCall,
    LoginRequest,
    LoginAnswer,
    LoginReply,
    ("Auth", "Login")
);
call_messages!(
    RegisterCall,
    RegisterRequest,
    RegisterAnswer,
    RegisterReply,
    ("SessionRegistry", "Register")
);

/// The answers a server streams back.
pub type Answers<A> = ReceiverStream<Result<A, Status>>;

/// The server's end: runs `handle` for every call read from `calls` and streams the answers
/// back as they complete.
///
/// Each call runs as its own task, dropped once its caller's time limit has passed (it is then
/// answered `DEADLINE_EXCEEDED`, as a unary call would be); a handler that panics is answered
/// `INTERNAL`. Once `closing` is cancelled (the server is shutting down) it takes no more calls,
/// answers those it has read and ends the stream, so a graceful shutdown does not wait for the
/// caller to hang up; the caller sends what was not read again on a new stream.
pub fn serve<C, A, H, F>(
    mut calls: Streaming<C>,
    closing: CancellationToken,
    handle: H,
) -> Answers<A>
where
    C: Call,
    A: Answer,
    H: Fn(C::Request) -> F + Send + 'static,
    F: Future<Output = Result<A::Reply, Status>> + Send + 'static,
{
    let (answers_tx, answers_rx) = mpsc::channel(MAX_IN_FLIGHT);
    tokio::spawn(async move {
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        loop {
            let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                return;
            };
            let message = tokio::select! {
                biased;
                () = closing.cancelled() => return,
                message = calls.message() => message,
            };
            let CallParts {
                id,
                request,
                limit,
                trace_context,
            } = match message {
                Ok(Some(call)) => call.into_parts(),
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(%status, "call stream ended");
                    return;
                }
            };
            let (service, method) = C::METHOD;
            let span = crate::observe::server_span(service, method, &|name| {
                trace_context.get(name).cloned()
            });
            let answer = AssertUnwindSafe(handle(request).instrument(span)).catch_unwind();
            let answers_tx = answers_tx.clone();
            tokio::spawn(async move {
                let outcome = match limit {
                    Some(limit) => tokio::time::timeout(limit, answer)
                        .await
                        .unwrap_or_else(|_| Ok(Err(Status::deadline_exceeded("call timed out")))),
                    None => answer.await,
                };
                let outcome = outcome.unwrap_or_else(|_| {
                    tracing::error!("a call's handler panicked");
                    Err(Status::internal("internal error"))
                });
                let _ = answers_tx.send(Ok(A::new(id, outcome))).await;
                drop(permit);
            });
        }
    });
    ReceiverStream::new(answers_rx)
}

/// Waits for `shutdown`, then cancels `closing`: the shutdown signal a server holding
/// long-lived streams (call streams, publish streams) hands to tonic's graceful shutdown, so
/// those streams end instead of holding the shutdown open until every caller hangs up.
pub async fn close_streams_on(shutdown: impl Future<Output = ()>, closing: CancellationToken) {
    shutdown.await;
    closing.cancel();
}

type Opening<A> = Pin<Box<dyn Future<Output = Result<Streaming<A>, Status>> + Send>>;
type Open<C, A> = dyn Fn(ReceiverStream<C>) -> Opening<A> + Send + Sync;

/// What became of a call sent on a stream.
enum Delivery<R> {
    /// The server answered it (or the stream failed while it waited).
    Answered(Result<R, Status>),
    /// The server never read it: the stream was already retired, or it ended cleanly before
    /// reaching it. Safe to send again.
    Unread,
}

type Waiter<A> = oneshot::Sender<Delivery<<A as Answer>::Reply>>;

/// Calls waiting for their answers on one stream; closed once the stream has ended or been
/// retired (no new calls, but answers still reach those waiting).
struct Pending<A: Answer> {
    waiters: HashMap<u64, Waiter<A>>,
    closed: bool,
}

/// One open stream: where calls go, and who waits for answers.
struct Link<C, A: Answer> {
    calls_tx: mpsc::Sender<C>,
    pending: Arc<Mutex<Pending<A>>>,
}

impl<C, A: Answer> Link<C, A> {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending<A>> {
        self.pending.locked()
    }

    fn is_closed(&self) -> bool {
        self.pending().closed
    }

    /// Registers a waiter for call `id`; false when the link takes no more calls.
    fn wait_for(&self, id: u64, waiter: Waiter<A>) -> bool {
        let mut pending = self.pending();
        if pending.closed {
            return false;
        }
        pending.waiters.insert(id, waiter);
        true
    }

    /// No more calls on this link: the next call opens a new stream. Calls in flight on it
    /// still get their answers.
    fn retire(&self) {
        self.pending().closed = true;
    }
}

/// The caller's end: sends calls over one stream, opened on first use and opened again after
/// it ends or a call on it times out.
pub struct CallStream<C: Call, A: Answer> {
    open: Box<Open<C, A>>,
    link: tokio::sync::Mutex<Option<Arc<Link<C, A>>>>,
    next_id: AtomicU64,
    timeout: Duration,
    /// Service and method each call is reported as to the process's client observer.
    name: Option<(&'static str, &'static str)>,
}

impl<C: Call, A: Answer> fmt::Debug for CallStream<C, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallStream")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Times a call is sent when the server ends its stream without reading it.
const ATTEMPTS: usize = 2;

impl<C: Call, A: Answer> CallStream<C, A> {
    /// A caller that opens its stream with `open`; each call (opening included) may take
    /// `timeout`.
    pub fn new<F>(timeout: Duration, open: F) -> Self
    where
        F: Fn(ReceiverStream<C>) -> Opening<A> + Send + Sync + 'static,
    {
        Self {
            open: Box::new(open),
            link: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
            timeout,
            name: None,
        }
    }

    /// Reports each call to the client observer ([`crate::observe`]) as `service`/`method`.
    #[must_use]
    pub fn named(mut self, service: &'static str, method: &'static str) -> Self {
        self.name = Some((service, method));
        self
    }

    /// Makes one call. A call the server never read (its stream was ending) is sent again on
    /// a new stream, within the same time limit.
    ///
    /// # Errors
    /// The call's own status; `UNAVAILABLE` when the stream cannot be opened or fails before
    /// the answer; `DEADLINE_EXCEEDED` after the timeout.
    pub async fn call(&self, request: C::Request) -> Result<A::Reply, Status> {
        let started = std::time::Instant::now();
        let outcome = self
            .call_within(request, Instant::now() + self.timeout)
            .await;
        if let Some((service, method)) = self.name {
            crate::observe::finished(service, method, started);
        }
        outcome
    }

    async fn call_within(
        &self,
        request: C::Request,
        deadline: Instant,
    ) -> Result<A::Reply, Status> {
        for _ in 1..ATTEMPTS {
            if let Delivery::Answered(outcome) = self.attempt(request.clone(), deadline).await {
                return outcome;
            }
        }
        match self.attempt(request, deadline).await {
            Delivery::Answered(outcome) => outcome,
            Delivery::Unread => Err(Status::unavailable("call stream ended")),
        }
    }

    async fn attempt(&self, request: C::Request, deadline: Instant) -> Delivery<A::Reply> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut used: Option<Arc<Link<C, A>>> = None;
        let delivery = tokio::time::timeout_at(deadline, async {
            let link = match self.link().await {
                Ok(link) => link,
                Err(status) => return Delivery::Answered(Err(status)),
            };
            used = Some(Arc::clone(&link));
            let (answer_tx, answer_rx) = oneshot::channel();
            if !link.wait_for(id, answer_tx) {
                return Delivery::Unread;
            }
            let budget = deadline.saturating_duration_since(Instant::now());
            if link
                .calls_tx
                .send(C::new(id, request, budget, crate::observe::trace_context()))
                .await
                .is_err()
            {
                link.pending().waiters.remove(&id);
                return Delivery::Unread;
            }
            answer_rx.await.unwrap_or_else(|_| {
                Delivery::Answered(Err(Status::unavailable("call stream ended")))
            })
        })
        .await;
        delivery.unwrap_or_else(|_| {
            if let Some(link) = used {
                link.pending().waiters.remove(&id);
                // A stream that stops answering may be cut off without a reset: the next
                // call opens a new one.
                link.retire();
            }
            Delivery::Answered(Err(Status::deadline_exceeded("call timed out")))
        })
    }

    /// The open stream, opening one when there is none (or it has ended or been retired).
    async fn link(&self) -> Result<Arc<Link<C, A>>, Status> {
        let mut current = self.link.lock().await;
        if let Some(link) = current.as_ref()
            && !link.is_closed()
        {
            return Ok(Arc::clone(link));
        }
        let (calls_tx, calls_rx) = mpsc::channel(MAX_IN_FLIGHT);
        let answers = (self.open)(ReceiverStream::new(calls_rx)).await?;
        let pending = Arc::new(Mutex::new(Pending {
            waiters: HashMap::new(),
            closed: false,
        }));
        tokio::spawn(route_answers(answers, Arc::clone(&pending)));
        let link = Arc::new(Link { calls_tx, pending });
        *current = Some(Arc::clone(&link));
        Ok(link)
    }
}

/// Hands each answer to its caller. Once the stream ends, whoever still waits was not read by
/// the server (a clean end: it answers every call it reads first) or may have been (a failure).
async fn route_answers<A: Answer>(mut answers: Streaming<A>, pending: Arc<Mutex<Pending<A>>>) {
    let lock = || pending.locked();
    let clean = loop {
        match answers.message().await {
            Ok(Some(answer)) => {
                let waiter = lock().waiters.remove(&answer.id());
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Delivery::Answered(answer.into_outcome()));
                }
            }
            Ok(None) => break true,
            Err(status) => {
                tracing::debug!(%status, "call stream failed");
                break false;
            }
        }
    };
    let waiters = {
        let mut pending = lock();
        pending.closed = true;
        std::mem::take(&mut pending.waiters)
    };
    for waiter in waiters.into_values() {
        let _ = waiter.send(if clean {
            Delivery::Unread
        } else {
            Delivery::Answered(Err(Status::unavailable("call stream failed")))
        });
    }
}
