//! The Redis engine: PUBLISH through one auto-reconnecting multiplexed connection (pipelined,
//! one round trip per event), SUBSCRIBE through one pub/sub connection per gateway owned by
//! an actor task that reconnects with capped exponential backoff and re-subscribes every
//! channel it holds.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};

use crate::{BrokerError, Deliver};

/// How long one Redis operation may take before it counts as unavailable.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Publishes a batch laid out in ARGV as, per event: channel count, payload, channels.
/// Channels are arguments rather than keys: pub/sub channels are not keys, and a sharded
/// deployment would use SPUBLISH per shard instead.
const PUBLISH_BATCH: &str = r"
local i = 1
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  local payload = ARGV[i + 1]
  for c = 1, count do redis.call('PUBLISH', ARGV[i + 1 + c], payload) end
  i = i + 2 + count
end
return 0
";
/// Batches of at least this many events are published by one script call, smaller ones by
/// a pipeline of PUBLISH commands.
const SCRIPT_MIN_BATCH: usize = 8;
/// How often an idle pub/sub connection is checked with a PING.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Channels per SUBSCRIBE when re-subscribing after a reconnection.
const RESUBSCRIBE_BATCH: usize = 1000;

fn unavailable(error: impl fmt::Display) -> BrokerError {
    BrokerError::Unavailable(error.to_string())
}

/// Publishes into Redis; cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    client: redis::Client,
    publisher: ConnectionManager,
    health_check_interval: Duration,
    reconnections: Arc<AtomicU64>,
    publish_script: redis::Script,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker").finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects the publishing connection to `url` (`redis://host:port`).
    ///
    /// The connection manager keeps reconnecting in the background; it does not need Redis to
    /// be up when this returns.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] for an invalid URL.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OPERATION_TIMEOUT))
            .set_response_timeout(Some(OPERATION_TIMEOUT))
            .set_number_of_retries(1);
        let publisher =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(unavailable)?;
        Ok(Self {
            client,
            publisher,
            health_check_interval: HEALTH_CHECK_INTERVAL,
            reconnections: Arc::new(AtomicU64::new(0)),
            publish_script: redis::Script::new(PUBLISH_BATCH),
        })
    }

    /// Sets how often an idle subscriber connection is checked with a PING.
    pub fn with_health_check_interval(mut self, interval: Duration) -> Self {
        self.health_check_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Returns how many times subscriber connections were re-established.
    pub fn reconnections(&self) -> u64 {
        self.reconnections.load(Ordering::Relaxed)
    }

    pub(crate) async fn publish(
        &self,
        channels: &[String],
        payload: &Bytes,
    ) -> Result<(), BrokerError> {
        self.publish_batch(&[(channels.to_vec(), payload.clone())])
            .await
    }

    /// Publishes every event of `batch` in one pipeline: one round trip, order kept.
    ///
    /// One script call publishes the whole batch: Redis parses one command instead of one
    /// PUBLISH per channel, which is most of its cost per event.
    pub(crate) async fn publish_batch(
        &self,
        batch: &[(Vec<String>, Bytes)],
    ) -> Result<(), BrokerError> {
        let mut connection = self.publisher.clone();
        if batch.len() < SCRIPT_MIN_BATCH {
            // A script call costs more than it saves for a handful of events.
            let mut pipe = redis::pipe();
            for (channels, payload) in batch {
                for channel in channels {
                    pipe.publish(channel, payload.as_ref()).ignore();
                }
            }
            return tokio::time::timeout(
                OPERATION_TIMEOUT,
                pipe.query_async::<()>(&mut connection),
            )
            .await
            .map_err(|_| unavailable("redis publish timed out"))?
            .map_err(unavailable);
        }
        let mut invocation = self.publish_script.prepare_invoke();
        for (channels, payload) in batch {
            invocation.arg(channels.len()).arg(payload.as_ref());
            for channel in channels {
                invocation.arg(channel);
            }
        }
        tokio::time::timeout(
            OPERATION_TIMEOUT,
            invocation.invoke_async::<()>(&mut connection),
        )
        .await
        .map_err(|_| unavailable("redis publish timed out"))?
        .map_err(unavailable)
    }

    pub(crate) fn subscriber(&self, sink: Arc<dyn Deliver>) -> RedisSubscriber {
        let (commands_tx, commands_rx) = mpsc::channel(1024);
        let leaving = Arc::new(Leaving::default());
        tokio::spawn(subscriber_actor(
            self.client.clone(),
            Inbox {
                commands_rx,
                leaving: Arc::clone(&leaving),
            },
            sink,
            self.health_check_interval,
            Arc::clone(&self.reconnections),
        ));
        RedisSubscriber {
            commands_tx,
            leaving,
        }
    }
}

/// A request to the subscriber actor; several channels go in one SUBSCRIBE/UNSUBSCRIBE.
enum Command {
    Subscribe(Vec<String>, oneshot::Sender<Result<(), BrokerError>>),
    /// Unsubscribe whatever [`Leaving`] holds now.
    Unsubscribe,
}

/// Channels to unsubscribe, gathered between two UNSUBSCRIBEs: nobody waits for an
/// unsubscribe, and the unsubscribes queued while the actor is busy go out as one command.
#[derive(Debug, Default)]
struct Leaving(std::sync::Mutex<Vec<String>>);

impl Leaving {
    /// Adds channels; true when the list was empty (a [`Command::Unsubscribe`] is then due).
    fn add(&self, channels: &[String]) -> bool {
        let mut leaving = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let was_empty = leaving.is_empty();
        leaving.extend_from_slice(channels);
        was_empty
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// The actor's end of a [`RedisSubscriber`].
struct Inbox {
    commands_rx: mpsc::Receiver<Command>,
    leaving: Arc<Leaving>,
}

/// A gateway's pub/sub connection, driven by its actor; the actor stops when this is dropped.
#[derive(Debug)]
pub struct RedisSubscriber {
    commands_tx: mpsc::Sender<Command>,
    leaving: Arc<Leaving>,
}

impl RedisSubscriber {
    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), BrokerError>>) -> Command,
    ) -> Result<(), BrokerError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.commands_tx
            .send(make(done_tx))
            .await
            .map_err(|_| unavailable("subscriber stopped"))?;
        done_rx
            .await
            .map_err(|_| unavailable("subscriber stopped"))?
    }

    pub(crate) async fn subscribe(&self, channels: &[String]) -> Result<(), BrokerError> {
        if channels.is_empty() {
            return Ok(());
        }
        let channels = channels.to_vec();
        self.call(|done| Command::Subscribe(channels, done)).await
    }

    /// Queues an unsubscribe without waiting for Redis. Commands are applied in order, so a
    /// later subscribe of the same channel is never overtaken by it.
    pub(crate) async fn unsubscribe(&self, channels: &[String]) -> Result<(), BrokerError> {
        if channels.is_empty() || !self.leaving.add(channels) {
            return Ok(());
        }
        self.commands_tx
            .send(Command::Unsubscribe)
            .await
            .map_err(|_| unavailable("subscriber stopped"))
    }
}

/// Owns the pub/sub connection: applies (un)subscribe commands, hands messages to `sink`,
/// reconnects and re-subscribes after a failure.
async fn subscriber_actor(
    client: redis::Client,
    mut inbox: Inbox,
    sink: Arc<dyn Deliver>,
    health_check_interval: Duration,
    reconnections: Arc<AtomicU64>,
) {
    // Channels the gateway wants, whatever the connection state.
    let mut channels: HashSet<String> = HashSet::new();
    let mut backoff = BACKOFF_MIN;
    let mut was_connected = false;
    loop {
        let connected = tokio::time::timeout(OPERATION_TIMEOUT, client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            failure => {
                let error = match failure {
                    Ok(Err(error)) => error.to_string(),
                    _ => "connect timed out".to_owned(),
                };
                tracing::warn!(%error, retry_in = ?backoff, "redis subscriber connection failed");
                if !refuse_commands_for(&mut inbox, &mut channels, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let (mut redis_sink, mut stream) = pubsub.split();
        if !resubscribe_all(&mut redis_sink, &channels).await {
            tracing::warn!(retry_in = ?backoff, "re-subscribing after reconnection failed");
            if !refuse_commands_for(&mut inbox, &mut channels, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        if was_connected {
            reconnections.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                channels = channels.len(),
                "redis subscriber reconnected and re-subscribed"
            );
        }
        was_connected = true;
        backoff = BACKOFF_MIN;
        // A connection dropped without a reset (NAT, failover) only shows when we talk.
        let mut health = tokio::time::interval(health_check_interval);
        health.tick().await;
        loop {
            tokio::select! {
                _ = health.tick() => {
                    // In subscribed mode the reply is the array ["pong", ""], not "PONG".
                    let pong = tokio::time::timeout(OPERATION_TIMEOUT, redis_sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
                command = inbox.commands_rx.recv() => {
                    let Some(command) = command else { return };
                    let result = match command {
                        Command::Subscribe(added, done) => {
                            let result = tokio::time::timeout(OPERATION_TIMEOUT, redis_sink.subscribe(&added)).await;
                            let ok = matches!(result, Ok(Ok(())));
                            if ok {
                                channels.extend(added);
                                let _ = done.send(Ok(()));
                            } else {
                                let _ = done.send(Err(unavailable("redis subscribe failed")));
                            }
                            ok
                        }
                        Command::Unsubscribe => {
                            let removed = inbox.leaving.take();
                            for channel in &removed {
                                channels.remove(channel);
                            }
                            if removed.is_empty() {
                                true
                            } else {
                                let result = tokio::time::timeout(OPERATION_TIMEOUT, redis_sink.unsubscribe(&removed)).await;
                                matches!(result, Ok(Ok(())))
                            }
                        }
                    };
                    if !result {
                        break;
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let channel = message.get_channel_name();
                    let payload = Bytes::copy_from_slice(message.get_payload_bytes());
                    sink.deliver(channel, &payload);
                }
            }
        }
        tracing::warn!("redis subscriber connection lost, reconnecting");
    }
}

/// Subscribes every wanted channel again, in batches; false on failure.
async fn resubscribe_all(
    redis_sink: &mut redis::aio::PubSubSink,
    channels: &HashSet<String>,
) -> bool {
    let all: Vec<&String> = channels.iter().collect();
    for batch in all.chunks(RESUBSCRIBE_BATCH) {
        let subscribed = tokio::time::timeout(OPERATION_TIMEOUT, redis_sink.subscribe(batch)).await;
        if !matches!(subscribed, Ok(Ok(()))) {
            return false;
        }
    }
    true
}

/// While Redis is unreachable: answer subscribes with `Unavailable` and apply unsubscribes to
/// the wanted set, for `wait`. Returns false when the subscriber was dropped.
async fn refuse_commands_for(
    inbox: &mut Inbox,
    channels: &mut HashSet<String>,
    wait: Duration,
) -> bool {
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return true,
            command = inbox.commands_rx.recv() => match command {
                None => return false,
                Some(Command::Subscribe(_, done)) => {
                    let _ = done.send(Err(unavailable("redis is unreachable")));
                }
                Some(Command::Unsubscribe) => {
                    for channel in inbox.leaving.take() {
                        channels.remove(&channel);
                    }
                }
            }
        }
    }
}
