//! The Redis engine: PUBLISH through one auto-reconnecting multiplexed connection (pipelined,
//! one round trip per event), SUBSCRIBE through one pub/sub connection per gateway owned by
//! an actor task that reconnects with capped exponential backoff and re-subscribes every
//! channel it holds.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::connection::{RedisConnection, RedisTarget, hash_tag, slot};
use crate::handoff::Handoff;
use crate::streams::{History, LUA_PUBLISH_EVENT, StreamConfig, StreamTop};
use crate::subscriber::{
    CloseOnDrop, Command, Inbox, OPERATION_TIMEOUT, RedisSubscriber, Retry, SubscribeBatch,
    UNSUBSCRIBE_DELAY, Wanted, unavailable,
};
use crate::{BrokerError, Deliver, SubscriberHealth};

/// Publishes a batch laid out in ARGV as history size, history TTL in ms, the slot tag (""
/// on one Redis: see `sharded` in [`LUA_PUBLISH_EVENT`]), then per event: channel count,
/// payload, channels. A channel with a stream (its meta hash exists) takes the next offset and
/// keeps the event in its history; a channel with a subscriber is published to, with the
/// position if it has a stream (see [`LUA_PUBLISH_EVENT`]). One script call, so offsets have
/// no gaps and a stream's events are published in offset order. Channels are arguments rather than keys (pub/sub channels are
/// not keys); on a cluster every channel of a call is in the slot of its one key, KEYS[1].
const PUBLISH_BATCH: &str = r"
local size = ARGV[1]
local ttl = ARGV[2]
sharded(ARGV[3])
local i = 4
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  local payload = ARGV[i + 1]
  local channels = {}
  for c = 1, count do channels[c] = ARGV[i + 1 + c] end
  publish_all(channels, payload, size, ttl)
  i = i + 2 + count
end
return 0
";
/// Opens (or keeps alive) the stream of ARGV[1] with TTL ARGV[2] ms, its keys tagged with
/// ARGV[3] ("" on one Redis); a stream without meta gets a new epoch (time and a counter, so
/// one never repeats) and an empty history. Renews `sb:streams` for as long. Returns name,
/// epoch, top.
const OPEN_STREAM: &str = r"
local KP = ARGV[3]
local meta = 'sb:pos:' .. KP .. ARGV[1]
local history = 'sb:hist:' .. KP .. ARGV[1]
local found = redis.call('HMGET', meta, 'epoch', 'name', 'top')
if not found[1] then
  local now = redis.call('TIME')
  local n = redis.call('INCR', 'sb:epochs' .. KP)
  found = {now[1] .. string.format('%06d', tonumber(now[2])) .. '-' .. n, redis.sha1hex(ARGV[1]), '0'}
  redis.call('DEL', history)
  redis.call('HSET', meta, 'epoch', found[1], 'name', found[2], 'top', 0)
end
redis.call('PEXPIRE', meta, ARGV[2])
redis.call('PEXPIRE', history, ARGV[2])
-- Tells publishers that streams may exist (see `publish_all`); it outlives every stream
-- opened or kept alive until now.
redis.call('SET', 'sb:streams' .. KP, '1', 'PX', ARGV[2])
return {found[2], found[1], found[3]}
";
/// Reads the history of ARGV[1] after offset ARGV[3] in epoch ARGV[2] (unrecoverable past
/// ARGV[4] events), a page of at most ARGV[5], its keys tagged with ARGV[6]. Returns {0} when
/// unrecoverable, else {1, top, payload...} with the page's events after the offset, in order.
const READ_HISTORY: &str = r"
local KP = ARGV[6]
local meta = 'sb:pos:' .. KP .. ARGV[1]
local found = redis.call('HMGET', meta, 'epoch', 'top')
if not found[1] or found[1] ~= ARGV[2] then return {0} end
local top = tonumber(found[2])
local after = tonumber(ARGV[3])
if after > top or top - after > tonumber(ARGV[4]) then return {0} end
local reply = {1, top}
if after == top then return reply end
local want = math.min(top - after, tonumber(ARGV[5]))
local entries = redis.call('XRANGE', 'sb:hist:' .. KP .. ARGV[1], (after + 1) .. '-1', '+', 'COUNT', want)
if #entries ~= want or entries[1][1] ~= (after + 1) .. '-1' then return {0} end
for _, entry in ipairs(entries) do reply[#reply + 1] = entry[2][2] end
return reply
";
/// How often an idle pub/sub connection is checked with a PING.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Channels per SUBSCRIBE when re-subscribing after a reconnection.
pub(crate) const RESUBSCRIBE_BATCH: usize = 1000;

/// Publishes into Redis; cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    /// Where subscribers connect.
    subscribe_via: SubscribeVia,
    publisher: RedisConnection,
    health_check_interval: Duration,
    subscriber_health: Arc<SubscriberHealth>,
    publish_script: redis::Script,
    open_script: redis::Script,
    history_script: redis::Script,
    streams: StreamConfig,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker").finish_non_exhaustive()
    }
}

/// Where a broker's subscribers connect.
#[derive(Clone)]
enum SubscribeVia {
    /// A pub/sub connection to the one Redis.
    Server(redis::Client),
    /// `SSUBSCRIBE` on the shards of the cluster these seeds lead to.
    Cluster(Vec<String>),
}

/// The `{tag}` that puts a key in `channel`'s slot on a cluster; "" on one Redis.
fn key_tag(sharded: bool, channel: &str) -> String {
    if sharded {
        hash_tag(slot(channel.as_bytes()))
    } else {
        String::new()
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
        Self::connect_to(&RedisTarget::Single(url.to_owned()))
    }

    /// Connects to one Redis or to a Redis Cluster: on a cluster, events go out with
    /// `SPUBLISH`, one script call per slot, and subscribers use `SSUBSCRIBE` on each shard.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] for an invalid URL.
    pub fn connect_to(target: &RedisTarget) -> Result<Self, BrokerError> {
        let publisher = target.connect(OPERATION_TIMEOUT).map_err(unavailable)?;
        let subscribe_via = match target {
            RedisTarget::Single(url) => {
                SubscribeVia::Server(redis::Client::open(url.as_str()).map_err(unavailable)?)
            }
            RedisTarget::Cluster(seeds) => SubscribeVia::Cluster(seeds.clone()),
        };
        Ok(Self {
            subscribe_via,
            publisher,
            health_check_interval: HEALTH_CHECK_INTERVAL,
            subscriber_health: Arc::new(SubscriberHealth::default()),
            publish_script: redis::Script::new(&format!("{LUA_PUBLISH_EVENT}{PUBLISH_BATCH}")),
            open_script: redis::Script::new(OPEN_STREAM),
            history_script: redis::Script::new(READ_HISTORY),
            streams: StreamConfig::default(),
        })
    }

    /// Sets how long streams live and how much they keep.
    pub fn with_streams(mut self, config: StreamConfig) -> Self {
        self.streams = config;
        self
    }

    fn sharded(&self) -> bool {
        matches!(self.subscribe_via, SubscribeVia::Cluster(_))
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.streams.history_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Opens (or keeps alive) the stream of `channel`.
    pub(crate) async fn open_stream(&self, channel: &str) -> Result<StreamTop, BrokerError> {
        let mut connection = self.publisher.clone();
        let tag = key_tag(self.sharded(), channel);
        let mut invocation = self.open_script.key(format!("sb:pos:{tag}{channel}"));
        invocation.arg(channel).arg(self.ttl_ms()).arg(&tag);
        let (stream, epoch, offset): (String, String, u64) =
            tokio::time::timeout(OPERATION_TIMEOUT, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| unavailable("redis open stream timed out"))?
                .map_err(unavailable)?;
        Ok(StreamTop {
            stream,
            epoch,
            offset,
        })
    }

    /// Reads a page of the history of `channel` after `after` in `epoch`.
    pub(crate) async fn read_history(
        &self,
        channel: &str,
        epoch: &str,
        after: u64,
        max: u64,
        page: usize,
    ) -> Result<History, BrokerError> {
        let mut connection = self.publisher.clone();
        let tag = key_tag(self.sharded(), channel);
        let mut invocation = self.history_script.key(format!("sb:pos:{tag}{channel}"));
        invocation
            .arg(channel)
            .arg(epoch)
            .arg(after)
            .arg(max)
            .arg(page.max(1))
            .arg(&tag);
        let reply: Vec<redis::Value> =
            tokio::time::timeout(OPERATION_TIMEOUT, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| unavailable("redis history read timed out"))?
                .map_err(unavailable)?;
        let mut values = reply.into_iter();
        let recoverable = matches!(values.next(), Some(redis::Value::Int(1)));
        let top = match values.next() {
            Some(redis::Value::Int(top)) => u64::try_from(top).unwrap_or(0),
            _ => return Ok(History::Unrecoverable),
        };
        if !recoverable {
            return Ok(History::Unrecoverable);
        }
        let mut events = Vec::with_capacity(page.min(usize::try_from(top - after).unwrap_or(0)));
        for (offset, value) in (after + 1..).zip(values) {
            match value {
                redis::Value::BulkString(payload) => events.push((offset, Bytes::from(payload))),
                _ => return Err(unavailable("unexpected history entry")),
            }
        }
        Ok(History::Complete { top, events })
    }

    /// Sets how often an idle subscriber connection is checked with a PING.
    pub fn with_health_check_interval(mut self, interval: Duration) -> Self {
        self.health_check_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Returns how many times subscriber connections were re-established.
    pub fn reconnections(&self) -> u64 {
        self.subscriber_health.reconnections()
    }

    /// The state of the subscriber connections this broker starts.
    pub fn subscriber_health(&self) -> Arc<SubscriberHealth> {
        Arc::clone(&self.subscriber_health)
    }

    /// Sends a PING on the publishing connection (to every primary of a cluster).
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when Redis does not answer.
    pub async fn ping(&self) -> Result<(), BrokerError> {
        let mut connection = self.publisher.clone();
        tokio::time::timeout(OPERATION_TIMEOUT, connection.ping())
            .await
            .map_err(|_| unavailable("redis ping timed out"))?
            .map_err(unavailable)
    }

    pub(crate) async fn publish(
        &self,
        channels: &[String],
        payload: &Bytes,
    ) -> Result<(), BrokerError> {
        self.publish_batch(&[(channels.to_vec(), payload.clone())])
            .await
    }

    /// Publishes every event of `batch` in one script call: one round trip, order kept, and
    /// the positions of streams' events assigned in the same step. On a cluster, one script
    /// call per slot the batch's channels fall in, all sent at once: each channel's events
    /// keep their order, and nothing relies on atomicity across slots.
    pub(crate) async fn publish_batch(
        &self,
        batch: &[(Vec<String>, Bytes)],
    ) -> Result<(), BrokerError> {
        let published = if self.sharded() {
            self.publish_by_slot(batch).await
        } else {
            let mut connection = self.publisher.clone();
            let mut invocation = self.publish_script.prepare_invoke();
            invocation
                .arg(self.streams.history_size)
                .arg(self.ttl_ms())
                .arg("");
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
        };
        published
            .map_err(|_| unavailable("redis publish timed out"))?
            .map_err(unavailable)
    }

    async fn publish_by_slot(
        &self,
        batch: &[(Vec<String>, Bytes)],
    ) -> Result<redis::RedisResult<()>, tokio::time::error::Elapsed> {
        // Per slot, the batch's events in order, each with its channels in that slot.
        let mut by_slot: BTreeMap<u16, Vec<(usize, Vec<&String>)>> = BTreeMap::new();
        for (index, (channels, _)) in batch.iter().enumerate() {
            for channel in channels {
                let events = by_slot.entry(slot(channel.as_bytes())).or_default();
                match events.last_mut() {
                    Some((last, in_slot)) if *last == index => in_slot.push(channel),
                    _ => events.push((index, vec![channel])),
                }
            }
        }
        let calls = by_slot.into_iter().map(|(slot, events)| {
            let tag = hash_tag(slot);
            let mut invocation = self.publish_script.key(format!("sb:streams{tag}"));
            invocation
                .arg(self.streams.history_size)
                .arg(self.ttl_ms())
                .arg(&tag);
            for (index, channels) in events {
                invocation.arg(channels.len()).arg(batch[index].1.as_ref());
                for channel in channels {
                    invocation.arg(channel);
                }
            }
            let mut connection = self.publisher.clone();
            async move { invocation.invoke_async::<()>(&mut connection).await }
        });
        tokio::time::timeout(OPERATION_TIMEOUT, futures_util::future::try_join_all(calls))
            .await
            .map(|done| done.map(drop))
    }

    pub(crate) fn subscriber(&self, sink: Arc<dyn Deliver>) -> RedisSubscriber {
        let (commands_tx, commands_rx) = mpsc::channel(1024);
        let inbox = Inbox {
            commands_rx,
            held: None,
        };
        match &self.subscribe_via {
            SubscribeVia::Server(client) => {
                tokio::spawn(subscriber_actor(
                    client.clone(),
                    inbox,
                    sink,
                    self.health_check_interval,
                    Arc::clone(&self.subscriber_health),
                ));
            }
            SubscribeVia::Cluster(seeds) => {
                tokio::spawn(crate::sharded::subscriber_actor(
                    seeds.clone(),
                    inbox,
                    sink,
                    self.health_check_interval,
                    Arc::clone(&self.subscriber_health),
                ));
            }
        }
        RedisSubscriber { commands_tx }
    }
}

/// Owns the pub/sub connection: applies (un)subscribe commands, hands messages to `sink`,
/// reconnects and re-subscribes after a failure.
async fn subscriber_actor(
    client: redis::Client,
    mut inbox: Inbox,
    sink: Arc<dyn Deliver>,
    health_check_interval: Duration,
    state: Arc<SubscriberHealth>,
) {
    let handoff = Handoff::start(Arc::clone(&sink));
    let _close = CloseOnDrop(Arc::clone(&handoff));
    let mut wanted = Wanted::default();
    let mut retry = Retry::new();
    loop {
        let connected = tokio::time::timeout(OPERATION_TIMEOUT, client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            failure => {
                let error = match failure {
                    Ok(Err(error)) => error.to_string(),
                    _ => "connect timed out".to_owned(),
                };
                tracing::warn!(%error, retry_in = ?retry.backoff(), "redis subscriber connection failed");
                if !retry.wait(&mut inbox, &mut wanted.channels).await {
                    return;
                }
                continue;
            }
        };
        let (mut redis_sink, mut stream) = pubsub.split();
        wanted.connection_lost();
        if !resubscribe_all(&mut redis_sink, &wanted.channels).await {
            tracing::warn!(retry_in = ?retry.backoff(), "re-subscribing after reconnection failed");
            if !retry.wait(&mut inbox, &mut wanted.channels).await {
                return;
            }
            continue;
        }
        retry.connected(&state, wanted.channels.len());
        // A connection dropped without a reset (NAT, failover) only shows when we talk.
        let mut health = tokio::time::interval(health_check_interval);
        health.tick().await;
        let unsubscribe_timer = tokio::time::sleep(UNSUBSCRIBE_DELAY);
        tokio::pin!(unsubscribe_timer);
        loop {
            if let Some(at) = wanted.leave_at
                && unsubscribe_timer.deadline() != at
            {
                unsubscribe_timer.as_mut().reset(at);
            }
            tokio::select! {
                _ = health.tick() => {
                    // In subscribed mode the reply is the array ["pong", ""], not "PONG".
                    let pong = tokio::time::timeout(OPERATION_TIMEOUT, redis_sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
                command = inbox.recv() => match command {
                    None => return,
                    Some(Command::Unsubscribe(removed)) => wanted.leave(removed),
                    Some(Command::Subscribe(channels, done)) => {
                        let batch = inbox.gather(channels, done, &mut wanted);
                        if !subscribe(batch, &mut redis_sink, &mut wanted).await {
                            break;
                        }
                    }
                },
                () = &mut unsubscribe_timer, if wanted.leave_at.is_some() => {
                    if !unsubscribe_leaving(&mut redis_sink, &mut wanted).await {
                        break;
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let channel = message.get_channel_name();
                    if wanted.delivers(channel) {
                        let payload = Bytes::copy_from_slice(message.get_payload_bytes());
                        handoff.push(channel, payload);
                    }
                }
            }
        }
        state.set_connected(false);
        tracing::warn!("redis subscriber connection lost, reconnecting");
    }
}

/// Subscribes a batch and records it in `wanted`; false when the connection failed (the
/// batch's waiters are told, and the actor reconnects). Channels already subscribed on the
/// connection (wanted, or only just left) cost no command.
async fn subscribe(
    batch: SubscribeBatch,
    redis_sink: &mut redis::aio::PubSubSink,
    wanted: &mut Wanted,
) -> bool {
    let SubscribeBatch { channels, waiters } = batch;
    let missing: Vec<&String> = channels
        .iter()
        .filter(|channel| {
            !wanted.channels.contains(channel.as_str()) && !wanted.leaving.remove(channel.as_str())
        })
        .collect();
    let ok = missing.is_empty()
        || matches!(
            tokio::time::timeout(OPERATION_TIMEOUT, redis_sink.subscribe(&missing)).await,
            Ok(Ok(()))
        );
    if ok {
        wanted.channels.extend(channels);
    }
    for done in waiters {
        let _ = done.send(if ok {
            Ok(())
        } else {
            Err(unavailable("redis subscribe failed"))
        });
    }
    ok
}

/// Sends one UNSUBSCRIBE for every channel left since the last; false when the connection
/// failed.
async fn unsubscribe_leaving(redis_sink: &mut redis::aio::PubSubSink, wanted: &mut Wanted) -> bool {
    wanted.leave_at = None;
    let leaving: Vec<String> = wanted.leaving.drain().collect();
    if leaving.is_empty() {
        return true;
    }
    let result = tokio::time::timeout(OPERATION_TIMEOUT, redis_sink.unsubscribe(&leaving)).await;
    matches!(result, Ok(Ok(())))
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
