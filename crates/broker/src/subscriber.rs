//! What both subscriber actors share (the one-Redis actor of the Redis engine and the sharded
//! one of a cluster): the gateway's handle, the commands it queues, the batching of subscribes,
//! the wanted and leaving channels, and how commands are refused while Redis is unreachable.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::handoff::Handoff;
use crate::{BrokerError, SubscriberHealth};

/// How long one Redis operation may take before it counts as unavailable.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest wait between reconnection attempts.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(crate) fn unavailable(error: impl fmt::Display) -> BrokerError {
    BrokerError::Unavailable(error.to_string())
}

/// How an actor waits between attempts to (re)subscribe: capped exponential backoff, and
/// whether it was ever connected (so a later success counts as a reconnection).
pub(crate) struct Retry {
    backoff: Duration,
    was_connected: bool,
}

impl Retry {
    pub(crate) fn new() -> Self {
        Self {
            backoff: BACKOFF_MIN,
            was_connected: false,
        }
    }

    /// The wait before the next attempt.
    pub(crate) fn backoff(&self) -> Duration {
        self.backoff
    }

    /// After a failed attempt: refuses commands for the current wait, then doubles it. False
    /// when the subscriber was dropped meanwhile.
    pub(crate) async fn wait(&mut self, inbox: &mut Inbox, channels: &mut HashSet<String>) -> bool {
        let waited = refuse_commands_for(inbox, channels, self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        waited
    }

    /// After a connection was lost: the first loss since everything was subscribed retries at
    /// once, each one after it waits (and doubles the wait). False when the subscriber was
    /// dropped.
    pub(crate) async fn after_loss(
        &mut self,
        inbox: &mut Inbox,
        channels: &mut HashSet<String>,
    ) -> bool {
        if self.backoff > BACKOFF_MIN {
            return self.wait(inbox, channels).await;
        }
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        true
    }

    /// Every wanted channel is subscribed: the subscriber is connected again (`state`), a
    /// success after the first counts as a reconnection, and the next loss retries at once.
    pub(crate) fn connected(&mut self, state: &SubscriberHealth, channels: usize) {
        state.set_connected(true);
        if self.was_connected {
            state.reconnected();
            tracing::info!(channels, "redis subscriber re-subscribed every channel");
        }
        self.was_connected = true;
        self.backoff = BACKOFF_MIN;
    }
}

/// A request to the subscriber actor.
pub(crate) enum Command {
    Subscribe(Vec<String>, oneshot::Sender<Result<(), BrokerError>>),
    /// Nobody waits for an unsubscribe.
    Unsubscribe(Vec<String>),
}

/// Subscribes queued together (unsubscribes of other channels may sit between them), sent as
/// one SUBSCRIBE: under load (logins) the subscribes that queue while the actor waits for
/// Redis go out together, and an idle gateway still sends each one at once.
pub(crate) struct SubscribeBatch {
    pub(crate) channels: Vec<String>,
    pub(crate) waiters: Vec<oneshot::Sender<Result<(), BrokerError>>>,
}

/// Most commands gathered into one [`SubscribeBatch`].
const MAX_BATCH_COMMANDS: usize = 256;
/// How long a left channel stays subscribed on the connection before one UNSUBSCRIBE takes
/// every channel left meanwhile. Nobody waits for an unsubscribe, messages of a left channel
/// are dropped here, and a channel subscribed again meanwhile costs no command at all; under
/// churn this turns one UNSUBSCRIBE per closed connection into one per interval.
pub(crate) const UNSUBSCRIBE_DELAY: Duration = Duration::from_millis(10);

/// What the subscriber holds: the channels wanted, whatever the connection state, and those
/// left but still subscribed on the current connection.
#[derive(Default)]
pub(crate) struct Wanted {
    /// Channels the gateway wants.
    pub(crate) channels: HashSet<String>,
    /// Channels left but still subscribed on the current connection; their messages are
    /// dropped until the UNSUBSCRIBE at `leave_at`.
    pub(crate) leaving: HashSet<String>,
    pub(crate) leave_at: Option<tokio::time::Instant>,
}

impl Wanted {
    /// Forgets `removed`; those subscribed on the connection wait in `leaving`.
    pub(crate) fn leave(&mut self, removed: Vec<String>) {
        for channel in removed {
            if self.channels.remove(&channel) {
                self.leaving.insert(channel);
            }
        }
        if !self.leaving.is_empty() && self.leave_at.is_none() {
            self.leave_at = Some(tokio::time::Instant::now() + UNSUBSCRIBE_DELAY);
        }
    }

    /// Tells whether a message of `channel` is for the gateway.
    pub(crate) fn delivers(&self, channel: &str) -> bool {
        self.leaving.is_empty() || !self.leaving.contains(channel)
    }

    /// A new connection has nothing subscribed yet.
    pub(crate) fn connection_lost(&mut self) {
        self.leaving.clear();
        self.leave_at = None;
    }
}

/// The actor's end of a [`RedisSubscriber`].
pub(crate) struct Inbox {
    pub(crate) commands_rx: mpsc::Receiver<Command>,
    /// A command taken while gathering a batch that it had to follow; it comes next.
    pub(crate) held: Option<Command>,
}

impl Inbox {
    /// The next command, in the order they were sent. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Option<Command> {
        if let Some(command) = self.held.take() {
            return Some(command);
        }
        self.commands_rx.recv().await
    }

    /// The subscribes queued right behind `first`'s channels and `done`. Unsubscribes queued
    /// among them are applied to `wanted` on the way when they name none of the batch's
    /// channels; one that does ends the batch and comes next, so a channel's subscribe and
    /// unsubscribe reach Redis in the order they were sent.
    pub(crate) fn gather(
        &mut self,
        first: Vec<String>,
        done: oneshot::Sender<Result<(), BrokerError>>,
        wanted: &mut Wanted,
    ) -> SubscribeBatch {
        let mut batch = SubscribeBatch {
            channels: first,
            waiters: vec![done],
        };
        // The batch's channels as a set, made when the first unsubscribe is met.
        let mut named: Option<HashSet<String>> = None;
        for _ in 1..MAX_BATCH_COMMANDS {
            let Ok(command) = self.commands_rx.try_recv() else {
                break;
            };
            match command {
                Command::Subscribe(more, done) => {
                    if let Some(named) = named.as_mut() {
                        named.extend(more.iter().cloned());
                    }
                    batch.channels.extend(more);
                    batch.waiters.push(done);
                }
                Command::Unsubscribe(removed) => {
                    let named =
                        named.get_or_insert_with(|| batch.channels.iter().cloned().collect());
                    if removed.iter().any(|channel| named.contains(channel)) {
                        self.held = Some(Command::Unsubscribe(removed));
                        break;
                    }
                    wanted.leave(removed);
                }
            }
        }
        batch
    }
}

/// A gateway's pub/sub connection, driven by its actor; the actor stops when this is dropped.
#[derive(Debug)]
pub struct RedisSubscriber {
    pub(crate) commands_tx: mpsc::Sender<Command>,
}

impl RedisSubscriber {
    /// Queues a subscribe; the receiver says when Redis has confirmed it.
    pub(crate) async fn queue_subscribe(
        &self,
        channels: &[String],
    ) -> Result<oneshot::Receiver<Result<(), BrokerError>>, BrokerError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.commands_tx
            .send(Command::Subscribe(channels.to_vec(), done_tx))
            .await
            .map_err(|_| unavailable("subscriber stopped"))?;
        Ok(done_rx)
    }

    /// Queues an unsubscribe without waiting for Redis. Commands are applied in order, so a
    /// later subscribe of the same channel is never overtaken by it.
    pub(crate) async fn unsubscribe(&self, channels: &[String]) -> Result<(), BrokerError> {
        if channels.is_empty() {
            return Ok(());
        }
        self.commands_tx
            .send(Command::Unsubscribe(channels.to_vec()))
            .await
            .map_err(|_| unavailable("subscriber stopped"))
    }
}

/// Ends the delivery task (after what is queued) when the actor ends.
pub(crate) struct CloseOnDrop(pub(crate) Arc<Handoff>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// While Redis is unreachable: answer subscribes with `Unavailable` and apply unsubscribes to
/// the wanted set, for `wait`. Returns false when the subscriber was dropped.
pub(crate) async fn refuse_commands_for(
    inbox: &mut Inbox,
    channels: &mut HashSet<String>,
    wait: Duration,
) -> bool {
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return true,
            command = inbox.recv() => match command {
                None => return false,
                Some(Command::Subscribe(_, done)) => {
                    let _ = done.send(Err(unavailable("redis is unreachable")));
                }
                Some(Command::Unsubscribe(removed)) => {
                    for channel in &removed {
                        channels.remove(channel);
                    }
                }
            }
        }
    }
}
