//! The in-process engine.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use switchboard_sync::Lock;

use crate::Deliver;

type SinkList = Vec<(u64, Arc<dyn Deliver>)>;

/// An in-process broker: channel → subscribed sinks.
///
/// The map sits behind a std mutex: it is held only to copy a channel's sinks or to edit the
/// map, never across `.await` or while delivering.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    channels: Arc<Mutex<HashMap<String, SinkList>>>,
    next_subscriber_id: Arc<AtomicU64>,
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

    pub(crate) fn publish(&self, channels: &[String], payload: &Bytes) {
        for channel in channels {
            let sinks: SinkList = {
                let map = self.channels.locked();
                match map.get(channel) {
                    Some(sinks) => sinks.clone(),
                    None => continue,
                }
            };
            for (_, sink) in sinks {
                sink.deliver(channel, payload);
            }
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
