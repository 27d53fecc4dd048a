//! The bounded hand-off between a subscriber's Redis reader and delivery.
//!
//! The reader must keep draining its connection whatever delivery costs: redis-rs buffers a
//! pub/sub connection's messages without bound until they are read. So the reader only
//! queues each message here, and a delivery task of its own routes them. The queue is bounded
//! in messages and in bytes; past either bound a message is dropped and counted, and each
//! episode of drops is logged once (when it starts, and with its total when it ends).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use switchboard_sync::Lock;
use tokio::sync::Notify;

use crate::Deliver;

/// Messages the hand-off holds at most.
pub const HANDOFF_MESSAGES: usize = 65_536;
/// Bytes (payloads and channel names) the hand-off holds at most.
pub const HANDOFF_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Default)]
struct Queue {
    messages: VecDeque<(String, Bytes)>,
    bytes: usize,
    /// Drops in the current episode (0: none going on).
    dropping: u64,
    closed: bool,
}

/// The reader's end: [`Handoff::push`] never waits.
pub(crate) struct Handoff {
    queue: Mutex<Queue>,
    ready: Notify,
    max_messages: usize,
    max_bytes: usize,
    /// Where messages go, and drops are told.
    sink: Arc<dyn Deliver>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("max_messages", &self.max_messages)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl Handoff {
    /// A hand-off with the default bounds, and the task that delivers from it into `sink`.
    pub(crate) fn start(sink: Arc<dyn Deliver>) -> Arc<Self> {
        Self::start_with(sink, HANDOFF_MESSAGES, HANDOFF_BYTES)
    }

    pub(crate) fn start_with(
        sink: Arc<dyn Deliver>,
        max_messages: usize,
        max_bytes: usize,
    ) -> Arc<Self> {
        let handoff = Arc::new(Self {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            max_messages,
            max_bytes,
            sink,
        });
        tokio::spawn(deliver_loop(Arc::clone(&handoff)));
        handoff
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.locked()
    }

    /// Queues a message for delivery; drops it (counted) when the queue is full. Returns
    /// false when it was dropped.
    pub(crate) fn push(&self, channel: &str, payload: Bytes) -> bool {
        let weight = channel.len() + payload.len();
        let mut queue = self.queue();
        if queue.messages.len() >= self.max_messages || queue.bytes + weight > self.max_bytes {
            if queue.dropping == 0 {
                tracing::warn!(
                    queued = queue.messages.len(),
                    bytes = queue.bytes,
                    "event delivery is behind: dropping events until it catches up"
                );
            }
            queue.dropping += 1;
            drop(queue);
            self.sink.dropped(1);
            return false;
        }
        queue.bytes += weight;
        queue.messages.push_back((channel.to_owned(), payload));
        let wake = queue.messages.len() == 1;
        drop(queue);
        if wake {
            self.ready.notify_one();
        }
        true
    }

    /// Ends the delivery task once what is queued has been delivered.
    pub(crate) fn close(&self) {
        self.queue().closed = true;
        self.ready.notify_one();
    }
}

async fn deliver_loop(handoff: Arc<Handoff>) {
    loop {
        let batch = {
            let mut queue = handoff.queue();
            if queue.messages.is_empty() {
                if queue.closed {
                    return;
                }
                None
            } else {
                queue.bytes = 0;
                if queue.dropping > 0 {
                    tracing::warn!(
                        dropped = queue.dropping,
                        "event delivery caught up; events were dropped meanwhile"
                    );
                    queue.dropping = 0;
                }
                Some(std::mem::take(&mut queue.messages))
            }
        };
        match batch {
            None => handoff.ready.notified().await,
            Some(batch) => {
                for (channel, payload) in &batch {
                    handoff.sink.deliver(channel, payload);
                }
                // Other tasks (the reader among them) run between batches.
                tokio::task::yield_now().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    #[derive(Default)]
    struct Slow {
        delivered: Mutex<Vec<String>>,
        dropped: AtomicU64,
    }

    impl Deliver for Slow {
        fn deliver(&self, channel: &str, _payload: &Bytes) {
            self.delivered.locked().push(channel.to_owned());
        }

        fn dropped(&self, count: u64) {
            self.dropped.fetch_add(count, Ordering::Relaxed);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn past_its_bounds_the_handoff_drops_and_counts() {
        let sink = Arc::new(Slow::default());
        let handoff = Handoff::start_with(Arc::clone(&sink) as Arc<dyn Deliver>, 3, 1000);
        // The delivery task cannot run until this task yields: the queue fills.
        for n in 0..5 {
            handoff.push(&format!("c{n}"), Bytes::from_static(b"x"));
        }
        assert!(!handoff.push("big", Bytes::from(vec![0; 2000])));
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 3);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(*sink.delivered.locked(), ["c0", "c1", "c2"]);
        // Caught up: room again, in order.
        assert!(handoff.push("c5", Bytes::from_static(b"x")));
        handoff.close();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(sink.delivered.locked().len(), 4);
    }
}
