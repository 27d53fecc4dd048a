//! What goes to a connection's writer: the frames ([`Outbound`]), the close codes, how a
//! connection ends (`Ending`), and the bounded queue of frames waiting for the writer.
//!
//! A `VecDeque` behind a mutex rather than a tokio `mpsc` channel: an idle connection's queue
//! holds no buffer at all (the writer takes the whole deque with each batch), where a channel
//! keeps its first block of slots allocated for the connection's whole life (about 1.5 KiB
//! per connection). Producers never wait for the writer's task to run: a push is one lock,
//! one `push_back` and, only when the writer sleeps on an empty queue, one wake-up.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use switchboard_sync::Lock;
use tokio::sync::Notify;

/// Close code of a normal close (`session stop`).
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code of a gateway going away (shutdown, idle).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a client that does not read fast enough.
pub const CLOSE_POLICY: u16 = 1008;
/// Close code for a frame over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code of a connection whose session was taken over by a login elsewhere (§11).
pub const CLOSE_TAKEN_OVER: u16 = 4002;

/// A frame waiting for the connection's writer.
#[derive(Debug)]
pub enum Outbound {
    /// A complete text frame (response or server request).
    Text(String),
    /// An event's `data` object, shared between subscribers; the writer adds the tid.
    Event(Arc<str>),
    /// An event of a positioned subscription: its `data` and its `pos` object (PROTOCOL.md
    /// §10), each shared between subscribers.
    Positioned(Arc<str>, Arc<str>),
    /// Close the connection with this code and reason after the frames before it.
    Close(u16, String),
}

impl Outbound {
    /// What the frame weighs against the connection's outbound byte budget: its text, plus
    /// the envelope the writer adds to an event.
    pub(crate) fn weight(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Event(data) => data.len() + 64,
            Self::Positioned(data, pos) => data.len() + pos.len() + 72,
            Self::Close(_, reason) => reason.len() + 2,
        }
    }
}

/// How a killed connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Without a close frame: the socket is gone or failed.
    Abort,
    /// With a close frame of this code and reason.
    Close(u16, String),
    /// With the close frame answering the client's (RFC 6455 §5.5.1).
    AnswerPeerClose,
}

/// Why a frame was not queued.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The queue holds `capacity` frames already, or the frame would take its bytes past
    /// the budget.
    Full(Outbound),
    /// The writer has ended; the frame is dropped.
    Closed,
}

#[derive(Debug, Default)]
struct Slots {
    frames: VecDeque<Outbound>,
    /// What `frames` weigh ([`Outbound::weight`]).
    bytes: usize,
    /// Set once the writer ends: every later push is refused.
    closed: bool,
    /// The writer, when it waits for a frame.
    writer: Option<Waker>,
    /// A push found the queue full since the last take: wake whoever waits for room.
    full_seen: bool,
}

/// A multi-producer, single-consumer frame queue bounded in frames and in bytes.
#[derive(Debug)]
pub(crate) struct OutboundQueue {
    capacity: usize,
    /// Bytes the queued frames may weigh. A frame is always admitted into an empty queue,
    /// so one answer bigger than the budget (a long `user list`) still goes out.
    byte_budget: usize,
    slots: Mutex<Slots>,
    room: Notify,
}

impl OutboundQueue {
    /// An empty queue of at most `capacity` frames (at least 1) weighing at most
    /// `byte_budget` bytes.
    pub(crate) fn new(capacity: usize, byte_budget: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            byte_budget,
            slots: Mutex::new(Slots::default()),
            room: Notify::new(),
        }
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.locked()
    }

    /// Queues `frame` if there is room, waking the writer if it waits.
    pub(crate) fn try_push(&self, frame: Outbound) -> Result<(), Refused> {
        let mut slots = self.slots();
        if slots.closed {
            return Err(Refused::Closed);
        }
        let weight = frame.weight();
        if slots.frames.len() >= self.capacity
            || (!slots.frames.is_empty() && slots.bytes + weight > self.byte_budget)
        {
            slots.full_seen = true;
            return Err(Refused::Full(frame));
        }
        slots.bytes += weight;
        slots.frames.push_back(frame);
        let writer = slots.writer.take();
        drop(slots);
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
    }

    /// Queues `frame`, waiting for room; false when the writer has ended.
    ///
    /// # Cancel safety
    /// Dropping the future before it completes queues nothing.
    pub(crate) async fn push(&self, mut frame: Outbound) -> bool {
        loop {
            // Registered before the attempt, so a take between the two cannot be missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_push(frame) {
                Ok(()) => return true,
                Err(Refused::Closed) => return false,
                Err(Refused::Full(back)) => frame = back,
            }
            room.await;
        }
    }

    /// Waits until at least one frame is queued. For the writer only.
    pub(crate) async fn ready(&self) {
        poll_fn(|cx| {
            let mut slots = self.slots();
            if !slots.frames.is_empty() {
                return Poll::Ready(());
            }
            match &mut slots.writer {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await;
    }

    /// Takes up to `max` frames, oldest first. Taking everything hands over the queue's
    /// buffer itself, so a drained queue holds no memory.
    pub(crate) fn take(&self, max: usize) -> VecDeque<Outbound> {
        let mut slots = self.slots();
        let batch: VecDeque<Outbound> = if slots.frames.len() <= max {
            slots.bytes = 0;
            std::mem::take(&mut slots.frames)
        } else {
            slots.frames.drain(..max).collect()
        };
        if !slots.frames.is_empty() {
            slots.bytes -= batch.iter().map(Outbound::weight).sum::<usize>();
        }
        let wake_senders = std::mem::take(&mut slots.full_seen);
        drop(slots);
        if wake_senders {
            self.room.notify_waiters();
        }
        batch
    }

    /// Refuses every later push and drops what is queued; wakes those waiting for room.
    pub(crate) fn close(&self) {
        let mut slots = self.slots();
        slots.closed = true;
        let dropped = std::mem::take(&mut slots.frames);
        slots.bytes = 0;
        drop(slots);
        drop(dropped);
        self.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn text(value: &str) -> Outbound {
        Outbound::Text(value.to_owned())
    }

    fn texts(batch: VecDeque<Outbound>) -> Vec<String> {
        batch
            .into_iter()
            .map(|frame| match frame {
                Outbound::Text(text) => text,
                other => panic!("unexpected frame {other:?}"),
            })
            .collect()
    }

    #[test]
    fn full_queue_refuses_and_take_keeps_order() {
        let queue = OutboundQueue::new(2, 1 << 20);
        assert!(queue.try_push(text("a")).is_ok());
        assert!(queue.try_push(text("b")).is_ok());
        assert!(matches!(queue.try_push(text("c")), Err(Refused::Full(_))));
        assert_eq!(texts(queue.take(1)), ["a"]);
        assert!(queue.try_push(text("c")).is_ok());
        assert_eq!(texts(queue.take(10)), ["b", "c"]);
        assert!(queue.take(10).is_empty());
    }

    #[test]
    fn byte_budget_refuses_but_an_empty_queue_takes_any_frame() {
        let queue = OutboundQueue::new(100, 10);
        assert!(queue.try_push(text(&"x".repeat(50))).is_ok(), "empty queue");
        assert!(matches!(queue.try_push(text("a")), Err(Refused::Full(_))));
        assert_eq!(queue.take(10).len(), 1);
        assert!(queue.try_push(text("abcd")).is_ok());
        assert!(queue.try_push(text("efgh")).is_ok());
        assert!(matches!(queue.try_push(text("ijk")), Err(Refused::Full(_))));
        assert_eq!(texts(queue.take(1)), ["abcd"]);
        assert!(
            queue.try_push(text("ijk")).is_ok(),
            "the taken bytes are free again"
        );
    }

    #[test]
    fn closed_queue_refuses() {
        let queue = OutboundQueue::new(2, 1 << 20);
        assert!(queue.try_push(text("a")).is_ok());
        queue.close();
        assert!(matches!(queue.try_push(text("b")), Err(Refused::Closed)));
        assert!(queue.take(10).is_empty());
    }

    #[tokio::test]
    async fn push_waits_for_room_and_ready_wakes_the_writer() {
        let queue = Arc::new(OutboundQueue::new(1, 1 << 20));
        assert!(queue.push(text("a")).await);
        let pusher = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { queue.push(text("b")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!pusher.is_finished(), "a push into a full queue waits");
        assert_eq!(texts(queue.take(10)), ["a"]);
        let pushed = tokio::time::timeout(Duration::from_secs(5), pusher).await;
        assert!(matches!(pushed, Ok(Ok(true))));
        tokio::time::timeout(Duration::from_secs(5), queue.ready())
            .await
            .expect("ready with a frame queued");
        assert_eq!(texts(queue.take(10)), ["b"]);

        let writer = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { queue.ready().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "ready waits on an empty queue");
        assert!(queue.try_push(text("c")).is_ok());
        let woke = tokio::time::timeout(Duration::from_secs(5), writer).await;
        assert!(woke.is_ok(), "a push wakes the waiting writer");
    }

    #[tokio::test]
    async fn close_releases_a_waiting_push() {
        let queue = Arc::new(OutboundQueue::new(1, 1 << 20));
        assert!(queue.try_push(text("a")).is_ok());
        let pusher = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { queue.push(text("b")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        queue.close();
        let pushed = tokio::time::timeout(Duration::from_secs(5), pusher).await;
        assert!(matches!(pushed, Ok(Ok(false))));
    }
}
