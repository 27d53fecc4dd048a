//! The in-process engine.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use switchboard_sync::Lock;
use tokio::time::Instant;

use crate::Deliver;
use crate::streams::{History, StreamConfig, StreamTop, positioned_payload, stream_name};

type SinkList = Vec<(u64, Arc<dyn Deliver>)>;

/// One positioned stream of the in-process engine.
#[derive(Debug)]
struct MemoryStream {
    name: String,
    epoch: String,
    top: u64,
    /// The last events: `(offset, payload without position)`.
    history: VecDeque<(u64, Bytes)>,
    expires: Instant,
}

/// An in-process broker: channel → subscribed sinks, and channel → positioned stream.
///
/// The sink map sits behind a std mutex held only to copy a channel's sinks or to edit the
/// map, never across `.await` or while delivering. The stream map is held across the delivery
/// of a positioned event, so offsets reach every sink in order.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    channels: Arc<Mutex<HashMap<String, SinkList>>>,
    streams: Arc<Mutex<HashMap<String, MemoryStream>>>,
    config: StreamConfig,
    next_subscriber_id: Arc<AtomicU64>,
    next_epoch: Arc<AtomicU64>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// Creates an empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how long streams live and how much they keep.
    pub fn with_streams(mut self, config: StreamConfig) -> Self {
        self.config = config;
        self
    }

    fn sinks(&self, channel: &str) -> Option<SinkList> {
        self.channels.locked().get(channel).cloned()
    }

    /// Publishes `payload` on `channels` now, positioned where a channel has a stream.
    pub fn publish(&self, channels: &[String], payload: &Bytes) {
        for channel in channels {
            let mut streams = self.streams.locked();
            let now = Instant::now();
            if let Some(stream) = streams
                .get_mut(channel.as_str())
                .filter(|stream| stream.expires > now)
            {
                stream.top += 1;
                stream.history.push_back((stream.top, payload.clone()));
                while stream.history.len() > self.config.history_size {
                    stream.history.pop_front();
                }
                stream.expires = now + self.config.history_ttl;
                let positioned =
                    positioned_payload(payload, &stream.name, &stream.epoch, stream.top);
                for (_, sink) in self.sinks(channel).unwrap_or_default() {
                    sink.deliver(channel, &positioned);
                }
                continue;
            }
            drop(streams);
            for (_, sink) in self.sinks(channel).unwrap_or_default() {
                sink.deliver(channel, payload);
            }
        }
    }

    /// Opens (or keeps alive) the stream of `channel`; a new epoch when it had none.
    pub(crate) fn open_stream(&self, channel: &str) -> StreamTop {
        let mut streams = self.streams.locked();
        let now = Instant::now();
        let expires = now + self.config.history_ttl;
        let fresh = || MemoryStream {
            name: stream_name(channel),
            epoch: format!(
                "m{:x}-{}",
                std::process::id(),
                self.next_epoch.fetch_add(1, Ordering::Relaxed) + 1
            ),
            top: 0,
            history: VecDeque::new(),
            expires,
        };
        let stream = streams.entry(channel.to_owned()).or_insert_with(fresh);
        if stream.expires <= now {
            *stream = fresh();
        }
        stream.expires = expires;
        StreamTop {
            stream: stream.name.clone(),
            epoch: stream.epoch.clone(),
            offset: stream.top,
        }
    }

    /// A page of the events of `channel`'s stream after `after` in `epoch`.
    pub(crate) fn read_history(
        &self,
        channel: &str,
        epoch: &str,
        after: u64,
        max: u64,
        page: usize,
    ) -> History {
        let streams = self.streams.locked();
        let Some(stream) = streams
            .get(channel)
            .filter(|stream| stream.expires > Instant::now() && stream.epoch == epoch)
        else {
            return History::Unrecoverable;
        };
        if after > stream.top || stream.top - after > max {
            return History::Unrecoverable;
        }
        let want = page
            .max(1)
            .min(usize::try_from(stream.top - after).unwrap_or(usize::MAX));
        let events: Vec<(u64, Bytes)> = stream
            .history
            .iter()
            .filter(|(offset, _)| *offset > after)
            .take(want)
            .cloned()
            .collect();
        if events.len() != want
            || events
                .first()
                .is_some_and(|(offset, _)| *offset != after + 1)
        {
            return History::Unrecoverable;
        }
        History::Complete {
            top: stream.top,
            events,
        }
    }

    pub(crate) fn subscriber(&self, sink: Arc<dyn Deliver>) -> MemorySubscriber {
        MemorySubscriber {
            broker: self.clone(),
            id: self.next_subscriber_id.fetch_add(1, Ordering::Relaxed),
            sink,
        }
    }
}

/// A gateway's subscriptions on a [`MemoryBroker`]; they end when it is dropped.
pub struct MemorySubscriber {
    broker: MemoryBroker,
    id: u64,
    sink: Arc<dyn Deliver>,
}

impl fmt::Debug for MemorySubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySubscriber")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MemorySubscriber {
    pub(crate) fn subscribe(&self, channels: &[String]) {
        for channel in channels {
            self.subscribe_one(channel);
        }
    }

    pub(crate) fn unsubscribe(&self, channels: &[String]) {
        for channel in channels {
            self.unsubscribe_one(channel);
        }
    }

    fn subscribe_one(&self, channel: &str) {
        let mut map = self.broker.channels.locked();
        let sinks = map.entry(channel.to_owned()).or_default();
        if !sinks.iter().any(|(id, _)| *id == self.id) {
            sinks.push((self.id, Arc::clone(&self.sink)));
        }
    }

    fn unsubscribe_one(&self, channel: &str) {
        let mut map = self.broker.channels.locked();
        if let Some(sinks) = map.get_mut(channel) {
            sinks.retain(|(id, _)| *id != self.id);
            if sinks.is_empty() {
                map.remove(channel);
            }
        }
    }
}

impl Drop for MemorySubscriber {
    fn drop(&mut self) {
        let mut map = self.broker.channels.locked();
        map.retain(|_, sinks| {
            sinks.retain(|(id, _)| *id != self.id);
            !sinks.is_empty()
        });
    }
}
