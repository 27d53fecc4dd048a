//! The shared handle of one connection: its outbound queue, server tids and pending requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;
use switchboard_sync::Lock;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::outbound::{CLOSE_POLICY, Ending, Outbound, OutboundQueue, Refused};

/// The answer of a session to a server request.
#[derive(Debug, Clone, PartialEq)]
pub struct CmdAnswer {
    /// `result == "ok"`.
    pub ok: bool,
    /// The `data` of the answer.
    pub data: Value,
}

/// Acks received for one server request, and the wake-up of its waiter.
#[derive(Debug, Default)]
pub(crate) struct AckSignal {
    count: AtomicU32,
    notify: Notify,
}

impl AckSignal {
    /// Counts one ack and wakes the waiter.
    fn ack(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Waits for acks; returns how many arrived since the last call.
    pub(crate) async fn acked(&self) -> u32 {
        loop {
            let count = self.count.swap(0, Ordering::Relaxed);
            if count > 0 {
                return count;
            }
            self.notify.notified().await;
        }
    }
}

/// A server request waiting for its answer.
#[derive(Debug)]
pub(crate) struct PendingRequest {
    pub(crate) answer_tx: oneshot::Sender<CmdAnswer>,
    pub(crate) acks: Arc<AckSignal>,
}

/// Who a logged-in session is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Session id.
    pub session_id: String,
    /// User.
    pub user: String,
    /// Roles from the auth service.
    pub roles: Vec<String>,
    /// The login `meta` as JSON text ("" when absent), repeated in heartbeats.
    pub meta_json: String,
    /// Hex SHA-256 of the session's resume key, registered with it (and again when re-learnt).
    pub resume_hash: String,
}

/// The part of a connection other tasks may touch: fan-out, `session stop`, `session cmd`.
#[derive(Debug)]
pub struct SessionHandle {
    /// Gateway-local connection number.
    pub conn_id: u64,
    /// Service the connection belongs to ("" for the default one).
    pub service: String,
    /// "ws:IP:PORT".
    pub remote: String,
    identity: OnceLock<Identity>,
    outbound: OutboundQueue,
    /// Server tids (events and server requests) of this connection.
    next_server_tid: AtomicU64,
    pending: Mutex<HashMap<u64, PendingRequest>>,
    /// Cancelled when the connection must end at once (slow consumer, oversized frame).
    kill: CancellationToken,
    ending: Mutex<Option<Ending>>,
    closing: AtomicBool,
    /// Set once the session has been taken out of the hub and the registry.
    released: AtomicBool,
    /// When the client last sent a frame, or else when the connection opened (ms on the hub
    /// clock); the writer closes the connection after `idle_timeout` without one.
    last_seen_ms: AtomicU64,
    /// When the writer's current socket write began (ms on the hub clock), 0 when idle; the
    /// gateway's watchdog kills connections whose write stalls.
    write_started_ms: AtomicU64,
}

impl SessionHandle {
    /// Creates the handle of a new connection with room for `outbound_queue` frames.
    pub(crate) fn new(
        conn_id: u64,
        service: String,
        remote: String,
        outbound_queue: usize,
        outbound_queue_bytes: usize,
    ) -> Self {
        Self {
            conn_id,
            service,
            remote,
            identity: OnceLock::new(),
            outbound: OutboundQueue::new(outbound_queue, outbound_queue_bytes),
            next_server_tid: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            kill: CancellationToken::new(),
            ending: Mutex::new(None),
            closing: AtomicBool::new(false),
            released: AtomicBool::new(false),
            last_seen_ms: AtomicU64::new(0),
            write_started_ms: AtomicU64::new(0),
        }
    }

    /// Returns the identity once logged in.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.get()
    }

    pub(crate) fn set_identity(&self, identity: Identity) {
        // Login happens once per connection; a second set is impossible by construction.
        let _ = self.identity.set(identity);
    }

    /// Allocates the next server tid.
    pub(crate) fn next_tid(&self) -> u64 {
        self.next_server_tid.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues an event without waiting; a full queue closes the connection with 1008.
    pub(crate) fn push_event(&self, data: Arc<str>) {
        self.push_now(Outbound::Event(data));
    }

    /// Queues a frame at once, without waiting: a connection whose queue is full is closed
    /// as a slow consumer (1008).
    pub(crate) fn push_now(&self, frame: Outbound) {
        if self.closing.load(Ordering::Relaxed) {
            return;
        }
        match self.outbound.try_push(frame) {
            Ok(()) | Err(Refused::Closed) => {}
            Err(Refused::Full(_)) => {
                tracing::warn!(conn.id = self.conn_id, "slow consumer disconnected");
                crate::metrics::METRICS.count_slow_consumer();
                self.kill(CLOSE_POLICY, "slow consumer: outbound queue full");
            }
        }
    }

    /// Queues a frame, waiting for room; false when the connection is gone or ending.
    ///
    /// # Cancel safety
    /// Returns as soon as the connection is killed, so a stuck client never blocks the caller.
    pub(crate) async fn send(&self, frame: Outbound) -> bool {
        tokio::select! {
            sent = self.outbound.push(frame) => sent,
            () = self.kill.cancelled() => false,
        }
    }

    /// Queues a reply without blocking the caller: at once when there is room, else from a
    /// task that waits for room (or for the connection to end). `held` (the request's
    /// in-flight permit) is released only once the reply is queued, so a client that stops
    /// reading cannot make these waiting tasks pile up past its in-flight budget.
    pub(crate) fn reply_soon<T: Send + 'static>(self: &Arc<Self>, text: String, held: T) {
        match self.outbound.try_push(Outbound::Text(text)) {
            Ok(()) | Err(Refused::Closed) => drop(held),
            Err(Refused::Full(frame)) => {
                let session = Arc::clone(self);
                tokio::spawn(async move {
                    session.send(frame).await;
                    drop(held);
                });
            }
        }
    }

    /// Closes the connection after the frames already queued.
    pub(crate) fn close(&self, code: u16, reason: &str) {
        if self.closing.swap(true, Ordering::Relaxed) {
            return;
        }
        if self
            .outbound
            .try_push(Outbound::Close(code, reason.to_owned()))
            .is_err()
        {
            self.kill(code, reason);
        }
    }

    /// Ends the connection at once, with a close frame of `code` and `reason` (frames still
    /// queued are dropped).
    pub(crate) fn kill(&self, code: u16, reason: &str) {
        self.end(Ending::Close(code, reason.to_owned()));
    }

    /// Ends the connection at once without a close frame: the socket is gone or failed.
    pub(crate) fn abort(&self) {
        self.end(Ending::Abort);
    }

    /// The client sent a close frame: the writer sends the answering one, then the
    /// connection ends.
    pub(crate) fn answer_peer_close(&self) {
        self.end(Ending::AnswerPeerClose);
    }

    fn end(&self, ending: Ending) {
        self.closing.store(true, Ordering::Relaxed);
        let mut slot = self.ending.locked();
        if slot.is_none() {
            *slot = Some(ending);
        }
        drop(slot);
        self.kill.cancel();
    }

    /// Marks the session as taken out of the hub and the registry; true the first time.
    pub(crate) fn mark_released(&self) -> bool {
        !self.released.swap(true, Ordering::AcqRel)
    }

    /// Records a frame from the client at `now_ms`.
    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    /// When the client last sent a frame, or else when the connection opened.
    pub(crate) fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    /// Marks the start (`now_ms > 0`) or the end (`0`) of a socket write.
    pub(crate) fn set_write_started(&self, now_ms: u64) {
        self.write_started_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Tells whether a socket write has been in progress for longer than `limit_ms`.
    pub(crate) fn write_stalled(&self, now_ms: u64, limit_ms: u64) -> bool {
        let started = self.write_started_ms.load(Ordering::Relaxed);
        started != 0 && now_ms.saturating_sub(started) > limit_ms
    }

    /// The queue the connection's writer drains.
    pub(crate) fn outbound(&self) -> &OutboundQueue {
        &self.outbound
    }

    pub(crate) fn kill_token(&self) -> &CancellationToken {
        &self.kill
    }

    /// How the connection was told to end, once.
    pub(crate) fn take_ending(&self) -> Option<Ending> {
        self.ending.locked().take()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PendingRequest>> {
        self.pending.locked()
    }

    pub(crate) fn add_pending(&self, tid: u64, request: PendingRequest) {
        self.pending().insert(tid, request);
    }

    pub(crate) fn remove_pending(&self, tid: u64) {
        self.pending().remove(&tid);
    }

    /// Hands a client's answer to the waiting request; answers to events are ignored.
    pub(crate) fn answer(&self, tid: u64, answer: CmdAnswer) {
        if let Some(request) = self.pending().remove(&tid) {
            let _ = request.answer_tx.send(answer);
        }
    }

    /// Extends the wait of server request `tid`.
    pub(crate) fn ack(&self, tid: u64) {
        if let Some(request) = self.pending().get(&tid) {
            request.acks.ack();
        }
    }

    /// Fails every pending server request with `session_stopped`.
    pub(crate) fn drop_pending(&self) {
        self.pending().clear();
    }
}
