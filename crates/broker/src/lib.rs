//! The pub/sub engine that carries events from the event bus to the gateways.
//!
//! The bus [`Broker::publish`]es an event to the channels of the subscription keys it can match;
//! a gateway holds one [`Subscriber`] and subscribes a channel when its first local
//! subscription with that key appears, unsubscribing after the last one goes. Each message is
//! handed to the gateway's [`Deliver`] sink, which routes it to local connections.
//!
//! A channel can also have a positioned stream ([`streams`]): its events then carry an epoch
//! and a gap-free offset, and its last events can be read back.
//!
//! [`MemoryBroker`] serves single-process mode (`switchboard dev`); [`RedisBroker`] serves the
//! scaled deployment, one Redis channel per subscription key, on one Redis or on a Redis
//! Cluster ([`RedisTarget`]) with sharded pub/sub.

mod connection;
mod handoff;
mod memory;
mod redis_engine;
mod shard_check;
mod sharded;
pub mod streams;
mod subscriber;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;

pub use connection::{RedisConnection, RedisTarget, SLOTS, slot, slot_tag};
pub use handoff::{HANDOFF_BYTES, HANDOFF_MESSAGES};
pub use memory::MemoryBroker;
pub use redis_engine::RedisBroker;
pub use streams::{HISTORY_PAGE, History, StreamConfig, StreamTop};
pub use subscriber::RedisSubscriber;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The engine cannot be reached; the operation may be retried.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Receives the messages of the channels a [`Subscriber`] subscribed.
///
/// Called on the broker's delivery path: implementations must not block.
pub trait Deliver: Send + Sync + 'static {
    /// Handles one message published on `channel`.
    fn deliver(&self, channel: &str, payload: &Bytes);

    /// `count` messages were dropped because delivery was too far behind the engine (see
    /// [`HANDOFF_MESSAGES`], [`HANDOFF_BYTES`]).
    fn dropped(&self, _count: u64) {}
}

/// The state of an engine's subscribing connections, for readiness and metrics.
#[derive(Debug, Default)]
pub struct SubscriberHealth {
    connected: AtomicBool,
    reconnections: AtomicU64,
}

impl SubscriberHealth {
    /// A health that is always connected (the in-memory engine).
    pub fn always_connected() -> Arc<Self> {
        let health = Self::default();
        health.connected.store(true, Ordering::Relaxed);
        Arc::new(health)
    }

    /// True while the subscriber's connection is up and every wanted channel is subscribed on
    /// it (or no subscriber has started yet and the engine needs none).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// How many times subscriber connections were re-established.
    pub fn reconnections(&self) -> u64 {
        self.reconnections.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub(crate) fn reconnected(&self) {
        self.reconnections.fetch_add(1, Ordering::Relaxed);
    }
}

/// The publishing side of the engine, cheap to clone.
#[derive(Debug, Clone)]
pub enum Broker {
    /// In-process engine for single-process mode.
    Memory(MemoryBroker),
    /// Redis pub/sub.
    Redis(Box<RedisBroker>),
}

impl Broker {
    /// Publishes `payload` on every channel of `channels`.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the engine cannot be reached.
    pub async fn publish(&self, channels: &[String], payload: Bytes) -> Result<(), BrokerError> {
        match self {
            Self::Memory(memory) => {
                memory.publish(channels, &payload);
                Ok(())
            }
            Self::Redis(redis) => redis.publish(channels, &payload).await,
        }
    }

    /// Publishes each `(channels, payload)` in order, in one round trip to the engine.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the engine cannot be reached.
    pub async fn publish_batch(&self, batch: &[(Vec<String>, Bytes)]) -> Result<(), BrokerError> {
        if batch.is_empty() {
            return Ok(());
        }
        match self {
            Self::Memory(memory) => {
                for (channels, payload) in batch {
                    memory.publish(channels, payload);
                }
                Ok(())
            }
            Self::Redis(redis) => redis.publish_batch(batch).await,
        }
    }

    /// Opens the stream of `channel` (a new epoch when it has none, or had one that expired),
    /// or keeps it alive for another `history_ttl`.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the engine cannot be reached.
    pub async fn open_stream(&self, channel: &str) -> Result<StreamTop, BrokerError> {
        match self {
            Self::Memory(memory) => Ok(memory.open_stream(channel)),
            Self::Redis(redis) => redis.open_stream(channel).await,
        }
    }

    /// A page of at most `page` events of `channel`'s stream after offset `after` of
    /// `epoch`, if the history holds every event after it and there are at most `max`.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the engine cannot be reached.
    pub async fn read_history(
        &self,
        channel: &str,
        epoch: &str,
        after: u64,
        max: u64,
        page: usize,
    ) -> Result<History, BrokerError> {
        match self {
            Self::Memory(memory) => Ok(memory.read_history(channel, epoch, after, max, page)),
            Self::Redis(redis) => redis.read_history(channel, epoch, after, max, page).await,
        }
    }

    /// The state of the subscribing connections this engine starts.
    pub fn subscriber_health(&self) -> Arc<SubscriberHealth> {
        match self {
            Self::Memory(_) => SubscriberHealth::always_connected(),
            Self::Redis(redis) => redis.subscriber_health(),
        }
    }

    /// Checks that the engine answers now.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when it does not.
    pub async fn ping(&self) -> Result<(), BrokerError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(redis) => redis.ping().await,
        }
    }

    /// Creates the subscribing side for one gateway, delivering into `sink`.
    pub fn subscriber(&self, sink: Arc<dyn Deliver>) -> Subscriber {
        match self {
            Self::Memory(memory) => Subscriber::Memory(memory.subscriber(sink)),
            Self::Redis(redis) => Subscriber::Redis(redis.subscriber(sink)),
        }
    }
}

/// A queued subscribe (see [`Subscriber::queue_subscribe`]).
#[derive(Debug, Default)]
#[must_use = "a subscribe is in effect only once `done` has returned Ok"]
pub struct Subscribing(Option<tokio::sync::oneshot::Receiver<Result<(), BrokerError>>>);

impl Subscribing {
    /// Waits until the subscribe is in effect.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the engine refused it or the subscriber stopped.
    pub async fn done(self) -> Result<(), BrokerError> {
        match self.0 {
            None => Ok(()),
            Some(confirmed) => confirmed
                .await
                .unwrap_or_else(|_| Err(BrokerError::Unavailable("subscriber stopped".to_owned()))),
        }
    }
}

/// One gateway's subscription to broker channels.
#[derive(Debug)]
pub enum Subscriber {
    /// In-process engine.
    Memory(memory::MemorySubscriber),
    /// Redis pub/sub connection.
    Redis(RedisSubscriber),
}

impl Subscriber {
    /// Subscribes `channel`; once this returns, every message published after it is delivered.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the engine cannot be reached.
    pub async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.subscribe_many(&[channel.to_owned()]).await
    }

    /// Subscribes several channels in one round trip; in effect for all of them on return.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the engine cannot be reached.
    pub async fn subscribe_many(&self, channels: &[String]) -> Result<(), BrokerError> {
        self.queue_subscribe(channels).await?.done().await
    }

    /// Queues a subscribe of several channels and returns without waiting for the engine to
    /// confirm it: commands are applied in the order they were queued, and [`Subscribing::done`]
    /// waits for this one. Lets a caller order its (un)subscribes under a lock and wait for the
    /// confirmation outside it, so subscribes of several callers share a round trip.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the subscriber has stopped.
    pub async fn queue_subscribe(&self, channels: &[String]) -> Result<Subscribing, BrokerError> {
        if channels.is_empty() {
            return Ok(Subscribing(None));
        }
        match self {
            Self::Memory(memory) => {
                memory.subscribe(channels);
                Ok(Subscribing(None))
            }
            Self::Redis(redis) => Ok(Subscribing(Some(redis.queue_subscribe(channels).await?))),
        }
    }

    /// Unsubscribes `channel` (see [`Subscriber::unsubscribe_many`]).
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the engine cannot be reached.
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.unsubscribe_many(&[channel.to_owned()]).await
    }

    /// Unsubscribes several channels. With Redis this only queues the UNSUBSCRIBE (queued ones
    /// go out together) and messages may still arrive for a moment; a subscribe made after it
    /// returns is applied after it.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the subscriber has stopped.
    pub async fn unsubscribe_many(&self, channels: &[String]) -> Result<(), BrokerError> {
        match self {
            Self::Memory(memory) => {
                memory.unsubscribe(channels);
                Ok(())
            }
            Self::Redis(redis) => redis.unsubscribe(channels).await,
        }
    }
}
