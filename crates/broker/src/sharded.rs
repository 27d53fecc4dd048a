//! A gateway's subscriber on a Redis Cluster: sharded pub/sub (`SSUBSCRIBE`).
//!
//! redis-rs's cluster connection holds one RESP3 connection per node, routes each
//! `SSUBSCRIBE` to the owner of the channel's slot, follows `MOVED`, and re-subscribes a node's
//! channels when it reconnects or the slot map changes. This actor adds what the broker
//! promises on top of it:
//! - a subscribe answers only once every shard it touches has confirmed it (one `SSUBSCRIBE`
//!   per slot, sent together);
//! - a channel the server unsubscribed while it is still wanted (its slot migrated) is
//!   subscribed again, on its new owner;
//! - a lost node (process gone, failover) makes the subscriber unhealthy until every wanted
//!   channel is confirmed subscribed again; the messages published meanwhile are the gap
//!   that positioned streams repair;
//! - every [`CANARY_INTERVAL`] a round proves each shard connection still holds the
//!   subscriptions and delivers (subscription counts and canaries, `shard_check`); a failed
//!   round subscribes everything again.
//!
//! Messages go straight from the connection into the bounded hand-off.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{AsyncPushSender, SendError};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use switchboard_sync::Lock;
use tokio::sync::mpsc;

use crate::connection::slot;
use crate::handoff::Handoff;
use crate::shard_check::{CANARY_INTERVAL, CANARY_PREFIX, ShardMap, canary_id, publish_canaries};
use crate::subscriber::{
    BACKOFF_MAX, CloseOnDrop, Command, Inbox, OPERATION_TIMEOUT, Retry, SubscribeBatch,
    UNSUBSCRIBE_DELAY, Wanted, refuse_commands_for, unavailable,
};
use crate::{Deliver, SubscriberHealth};

/// Control pushes (unsubscribes, disconnections) queued for the actor at most; past it the
/// actor re-subscribes everything it wants.
const CONTROL_QUEUE: usize = 4096;

/// What the connection tells the actor besides messages.
enum Control {
    /// A canary came back on this channel.
    Canary(String),
    /// The server (or our own `SUNSUBSCRIBE`) unsubscribed this channel.
    Unsubscribed(String),
    /// A node's connection closed.
    Disconnected,
}

/// The channels left but still subscribed, whose messages are dropped (as the actor's
/// `Wanted::leaving`, copied for the connection's task).
#[derive(Default)]
struct Leaving {
    count: AtomicUsize,
    channels: Mutex<HashSet<String>>,
    /// Channels of our own SUNSUBSCRIBEs whose confirmations have not come yet.
    unsubscribing: Mutex<HashSet<String>>,
}

impl Leaving {
    fn drops(&self, channel: &str) -> bool {
        self.count.load(Ordering::Acquire) > 0 && self.channels.locked().contains(channel)
    }

    /// Expects the confirmations of an SUNSUBSCRIBE of `channels`.
    fn unsubscribing(&self, channels: &[String]) {
        self.unsubscribing.locked().extend(channels.iter().cloned());
    }

    /// True (once) when `channel`'s unsubscribe is the confirmation of our own.
    fn confirmed(&self, channel: &str) -> bool {
        self.unsubscribing.locked().remove(channel)
    }

    /// Copies the actor's set, when either is not empty.
    fn update(&self, leaving: &HashSet<String>) {
        if leaving.is_empty() && self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut channels = self.channels.locked();
        channels.clone_from(leaving);
        self.count.store(channels.len(), Ordering::Release);
    }
}

/// Receives the cluster connection's pushes: messages into the hand-off, the rest to the actor.
struct ShardPushes {
    handoff: Arc<Handoff>,
    leaving: Arc<Leaving>,
    control: mpsc::Sender<Control>,
    /// Set when a control push did not fit in the queue.
    overflowed: Arc<AtomicBool>,
}

impl ShardPushes {
    fn tell(&self, control: Control) {
        if self.control.try_send(control).is_err() {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }
}

impl AsyncPushSender for ShardPushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::SMessage => {
                if let [Value::BulkString(channel), Value::BulkString(payload)] =
                    info.data.as_slice()
                {
                    let channel = String::from_utf8_lossy(channel);
                    if channel.starts_with(CANARY_PREFIX) {
                        self.tell(Control::Canary(channel.into_owned()));
                    } else if !self.leaving.drops(&channel) {
                        self.handoff.push(&channel, Bytes::copy_from_slice(payload));
                    }
                }
            }
            PushKind::SUnsubscribe => {
                if let Some(Value::BulkString(channel)) = info.data.first() {
                    let channel = String::from_utf8_lossy(channel).into_owned();
                    // The confirmation of our own SUNSUBSCRIBE needs no answer.
                    if !self.leaving.confirmed(&channel) {
                        self.tell(Control::Unsubscribed(channel));
                    }
                }
            }
            PushKind::Disconnection => self.tell(Control::Disconnected),
            _ => {}
        }
        Ok(())
    }
}

/// Owns the gateway's sharded subscriptions: applies (un)subscribe commands, hands messages to
/// `sink`, and subscribes everything again after a node was lost.
pub(crate) async fn subscriber_actor(
    seeds: Vec<String>,
    mut inbox: Inbox,
    sink: Arc<dyn Deliver>,
    health_check_interval: Duration,
    state: Arc<SubscriberHealth>,
) {
    let handoff = Handoff::start(sink);
    let _close = CloseOnDrop(Arc::clone(&handoff));
    let (control_tx, mut control_rx) = mpsc::channel(CONTROL_QUEUE);
    let overflowed = Arc::new(AtomicBool::new(false));
    let leaving = Arc::new(Leaving::default());
    let pushes = ShardPushes {
        handoff,
        leaving: Arc::clone(&leaving),
        control: control_tx,
        overflowed: Arc::clone(&overflowed),
    };
    let built = ClusterClientBuilder::new(seeds)
        .use_protocol(ProtocolVersion::RESP3)
        .build();
    let mut wanted = Wanted::default();
    let config = ClusterConfig::new()
        .set_connection_timeout(OPERATION_TIMEOUT)
        .set_response_timeout(OPERATION_TIMEOUT)
        .set_push_sender(pushes);
    let (client, mut connection) = match built {
        Ok(client) => {
            let connection = client.get_pending_async_connection_with_config(config.clone());
            (client, connection)
        }
        Err(error) => {
            tracing::error!(%error, "invalid redis cluster seeds");
            while refuse_commands_for(&mut inbox, &mut wanted.channels, BACKOFF_MAX).await {}
            return;
        }
    };
    let mut retry = Retry::new();
    let canary_id = canary_id();
    // The canary channels subscribed so far (one per slot range seen).
    let mut canary_channels: HashSet<String> = HashSet::new();
    loop {
        overflowed.store(false, Ordering::Relaxed);
        // Confirmations still expected from before are not coming (or no longer matter).
        leaving.unsubscribing.locked().clear();
        // What the connection told before this attempt is answered by it: a storm of cut
        // connections leaves a queue of disconnections, each of which would otherwise start
        // one more attempt after this one succeeded.
        while control_rx.try_recv().is_ok() {}
        let everything = wanted
            .channels
            .iter()
            .chain(&wanted.leaving)
            .chain(&canary_channels);
        // A first canary round proves the cluster answers (with nothing wanted yet, the
        // subscribe above sends nothing); the next tick checks that the canaries came back.
        let first_round = if ssubscribe(&connection, everything).await {
            prove(&connection, &canary_id, &mut canary_channels, &wanted).await
        } else {
            None
        };
        let Some(first_round) = first_round else {
            tracing::warn!(retry_in = ?retry.backoff(), "subscribing on the redis cluster failed");
            // The next attempt starts from the seed nodes: a redis-rs cluster connection that
            // lost every node can stay unable to recover (`connection::ClusterCommands`).
            connection = client.get_pending_async_connection_with_config(config.clone());
            if !retry.wait(&mut inbox, &mut wanted.channels).await {
                return;
            }
            continue;
        };
        retry.connected(&state, wanted.channels.len());
        let mut health = tokio::time::interval(health_check_interval.min(CANARY_INTERVAL));
        health.tick().await;
        // Canaries sent in the last round and not back yet.
        let mut canaries: HashSet<String> = first_round;
        let unsubscribe_timer = tokio::time::sleep(UNSUBSCRIBE_DELAY);
        tokio::pin!(unsubscribe_timer);
        loop {
            leaving.update(&wanted.leaving);
            if let Some(at) = wanted.leave_at
                && unsubscribe_timer.deadline() != at
            {
                unsubscribe_timer.as_mut().reset(at);
            }
            tokio::select! {
                _ = health.tick() => {
                    if !canaries.is_empty() {
                        tracing::warn!(shards = canaries.len(), "a canary did not come back");
                        break;
                    }
                    if overflowed.load(Ordering::Relaxed) {
                        break;
                    }
                    match prove(&connection, &canary_id, &mut canary_channels, &wanted).await {
                        Some(sent) => canaries = sent,
                        None => break,
                    }
                }
                command = inbox.recv() => match command {
                    None => return,
                    Some(Command::Unsubscribe(removed)) => wanted.leave(removed),
                    Some(Command::Subscribe(channels, done)) => {
                        let batch = inbox.gather(channels, done, &mut wanted);
                        if !subscribe(batch, &connection, &mut wanted).await {
                            break;
                        }
                    }
                },
                () = &mut unsubscribe_timer, if wanted.leave_at.is_some() => {
                    wanted.leave_at = None;
                    let leaving_now: Vec<String> = wanted.leaving.drain().collect();
                    leaving.unsubscribing(&leaving_now);
                    if !sunsubscribe(&mut connection, &leaving_now).await {
                        break;
                    }
                }
                control = control_rx.recv() => match control {
                    None => return,
                    Some(Control::Canary(channel)) => {
                        canaries.remove(&channel);
                    }
                    Some(Control::Disconnected) => break,
                    Some(Control::Unsubscribed(channel)) => {
                        let again = wanted.channels.contains(&channel)
                            || wanted.leaving.contains(&channel);
                        if again && !ssubscribe(&connection, [&channel]).await {
                            break;
                        }
                    }
                },
            }
        }
        state.set_connected(false);
        tracing::warn!("redis cluster subscriber lost a node, subscribing again");
        if !retry.after_loss(&mut inbox, &mut wanted.channels).await {
            return;
        }
    }
}

/// One round of proof (`shard_check`): reads the slot map, subscribes the canaries of slot
/// ranges not seen before (into `canaries`), checks that every shard connection still holds
/// its subscriptions and publishes the canaries. Returns the canaries published, or `None`
/// when the cluster did not answer or subscriptions were lost: everything is subscribed again.
async fn prove(
    connection: &ClusterConnection,
    id: &str,
    canaries: &mut HashSet<String>,
    wanted: &Wanted,
) -> Option<HashSet<String>> {
    let map = ShardMap::read(connection).await?;
    let current = map.canaries(id);
    let new: Vec<String> = current.difference(canaries).cloned().collect();
    if !new.is_empty() {
        if !ssubscribe(connection, &new).await {
            return None;
        }
        canaries.extend(new);
    }
    let subscribed = wanted
        .channels
        .iter()
        .chain(&wanted.leaving)
        .chain(canaries.iter());
    if !map.subscriptions_intact(connection, subscribed).await {
        return None;
    }
    publish_canaries(connection, &current)
        .await
        .then_some(current)
}

/// Subscribes a batch and records it in `wanted`; false when a shard failed (the batch's
/// waiters are told, and the actor subscribes everything again). Channels already subscribed
/// (wanted, or only just left) cost no command.
async fn subscribe(
    batch: SubscribeBatch,
    connection: &ClusterConnection,
    wanted: &mut Wanted,
) -> bool {
    let SubscribeBatch { channels, waiters } = batch;
    let missing: Vec<&String> = channels
        .iter()
        .filter(|channel| {
            !wanted.channels.contains(channel.as_str()) && !wanted.leaving.remove(channel.as_str())
        })
        .collect();
    let ok = missing.is_empty() || ssubscribe(connection, missing).await;
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

/// Groups channels by slot: a sharded (un)subscribe names channels of one slot only.
fn by_slot<'a>(channels: impl IntoIterator<Item = &'a String>) -> HashMap<u16, Vec<&'a String>> {
    let mut groups: HashMap<u16, Vec<&String>> = HashMap::new();
    for channel in channels {
        groups
            .entry(slot(channel.as_bytes()))
            .or_default()
            .push(channel);
    }
    groups
}

/// `SSUBSCRIBE`s `channels`, one command per slot, all sent at once; true once every shard
/// has confirmed.
async fn ssubscribe<'a>(
    connection: &ClusterConnection,
    channels: impl IntoIterator<Item = &'a String>,
) -> bool {
    let calls = by_slot(channels).into_values().map(|group| {
        let mut connection = connection.clone();
        async move { connection.ssubscribe(group).await }
    });
    let done =
        tokio::time::timeout(OPERATION_TIMEOUT, futures_util::future::try_join_all(calls)).await;
    matches!(done, Ok(Ok(_)))
}

/// `SUNSUBSCRIBE`s `channels`, one command per slot; false when a shard failed.
async fn sunsubscribe(connection: &mut ClusterConnection, channels: &[String]) -> bool {
    let unique: HashSet<&String> = channels.iter().collect();
    let calls = by_slot(unique).into_values().map(|group| {
        let mut connection = connection.clone();
        async move { connection.sunsubscribe(group).await }
    });
    let done =
        tokio::time::timeout(OPERATION_TIMEOUT, futures_util::future::try_join_all(calls)).await;
    matches!(done, Ok(Ok(_)))
}
