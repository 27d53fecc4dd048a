//! The lifecycle events of a registry on a Redis Cluster, published in the order the index
//! changed.
//!
//! On a cluster the index lives in the slot of `{sb}` while an event's channels live in
//! slots of their own, so a script cannot publish them. It appends them to the stream
//! `{sb}:outbox` instead, in the same atomic step as the change, and the store drains the
//! stream into the sharded broker right after. One drainer at a time (a lock key, whichever
//! registry replica takes it) publishes entries in stream order and deletes them once
//! published, so two changes of one session (a takeover racing a stop) reach subscribers in
//! the order Redis applied them, whichever replica made them.
//!
//! A drainer renews its lock before each page and deletes a page only while it still holds
//! it; it lets go after [`DRAIN_BUDGET`], well within the lock's TTL, and the sweep goes on.
//! Delivery is at least once: a drainer that dies between publishing and deleting leaves those
//! entries for the next one (after [`LOCK_TTL`]), and a page that reached some shards but not
//! all (a master failing over) is published again, to all, on the next attempt. The stream is
//! bounded ([`OUTBOX_MAX`] entries, oldest dropped) for when the shards are unreachable for long.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use redis::Script;
use switchboard_broker::{Broker, RedisConnection, StreamConfig};

use super::RegistryError;

/// The stream of events waiting to be published.
const OUTBOX_KEY: &str = "{sb}:outbox";
/// The drainer's lock.
const LOCK_KEY: &str = "{sb}:outbox:lock";
/// A drainer that stops answering loses the lock after this long.
pub(crate) const LOCK_TTL: Duration = Duration::from_secs(5);
/// Entries the outbox keeps at most (approximately: `MAXLEN ~`).
pub(crate) const OUTBOX_MAX: usize = 100_000;
/// Entries published per round trip.
const PAGE: usize = 256;
/// How often each registry checks for entries nobody drained (a drainer died).
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How long one drain goes on before letting go of the lock (the sweep continues).
pub(crate) const DRAIN_BUDGET: Duration = Duration::from_millis(2500);

/// Deletes the lock (KEYS[1]) only if it still holds this drainer's token (ARGV[1]).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";
/// Renews the lock (KEYS[1]) for ARGV[2] ms if it still holds token ARGV[1]; 1 if so.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";
/// Deletes the entries ARGV[2..] of the outbox (KEYS[2]) if the lock (KEYS[1]) still holds
/// token ARGV[1]; -1 if it does not.
const DELETE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
return redis.call('XDEL', KEYS[2], unpack(ARGV, 2))
";

/// How a drainer's hold of the lock ended.
enum Drained {
    /// Nothing left in the outbox.
    Empty,
    /// It held the lock for [`DRAIN_BUDGET`].
    OutOfBudget,
    /// Its lock expired and may be someone else's.
    LockLost,
}

/// Publishes the outbox; cheap to clone.
#[derive(Clone)]
pub(crate) struct Outbox {
    connection: RedisConnection,
    broker: Broker,
    release: Script,
    renew: Script,
    delete: Script,
    /// Names this process in its lock tokens.
    token_base: String,
    /// Counts the locks taken, so each holds a token of its own.
    taken: Arc<AtomicU64>,
    timeout: Duration,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

fn unavailable(error: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(error.to_string())
}

impl Outbox {
    /// An outbox, and its sweep, which stops when the outbox is dropped.
    pub(crate) fn start(
        connection: RedisConnection,
        broker: Broker,
        timeout: Duration,
    ) -> Arc<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default();
        Self {
            connection,
            broker,
            release: Script::new(RELEASE),
            renew: Script::new(RENEW),
            delete: Script::new(DELETE),
            token_base: format!("{}-{nanos}", std::process::id()),
            taken: Arc::new(AtomicU64::new(0)),
            timeout,
        }
        .started()
    }

    fn started(self) -> Arc<Self> {
        let outbox = Arc::new(self);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&outbox)));
        }
        outbox
    }

    /// The same outbox publishing with `streams` (its events' positions and history).
    pub(crate) fn with_streams(&self, streams: StreamConfig) -> Arc<Self> {
        let broker = match &self.broker {
            Broker::Redis(redis) => {
                Broker::Redis(Box::new((**redis).clone().with_streams(streams)))
            }
            other => other.clone(),
        };
        Self {
            connection: self.connection.clone(),
            broker,
            release: self.release.clone(),
            renew: self.renew.clone(),
            delete: self.delete.clone(),
            token_base: self.token_base.clone(),
            taken: Arc::clone(&self.taken),
            timeout: self.timeout,
        }
        .started()
    }

    async fn timed<T>(
        &self,
        future: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RegistryError> {
        tokio::time::timeout(self.timeout, future)
            .await
            .map_err(|_| unavailable("redis timed out"))?
            .map_err(unavailable)
    }

    /// Publishes every entry of the outbox, unless another drainer holds the lock: that one
    /// publishes them (it looks again after letting go).
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when Redis or the broker cannot be reached; the entries
    /// stay for the next drain.
    pub(crate) async fn drain(&self) -> Result<(), RegistryError> {
        let mut connection = self.connection.clone();
        loop {
            let token = format!(
                "{}-{}",
                self.token_base,
                self.taken.fetch_add(1, Ordering::Relaxed)
            );
            let taken: Option<String> = self
                .timed(
                    redis::cmd("SET")
                        .arg(LOCK_KEY)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(u64::try_from(LOCK_TTL.as_millis()).unwrap_or(u64::MAX))
                        .query_async(&mut connection),
                )
                .await?;
            if taken.is_none() {
                return Ok(());
            }
            let drained = self.drain_locked(&mut connection, &token).await;
            let mut release = self.release.key(LOCK_KEY);
            release.arg(&token);
            let released: Result<i64, _> = self.timed(release.invoke_async(&mut connection)).await;
            let drained = drained?;
            released?;
            match drained {
                Drained::Empty => {}
                // No hold outlives the lock's TTL, and no caller drains for long: the next
                // change or the sweep goes on. Whoever holds it now publishes from there.
                Drained::OutOfBudget | Drained::LockLost => return Ok(()),
            }
            // An entry added while we held the lock, by a caller that found it taken.
            let left: u64 = self
                .timed(
                    redis::cmd("XLEN")
                        .arg(OUTBOX_KEY)
                        .query_async(&mut connection),
                )
                .await?;
            if left == 0 {
                return Ok(());
            }
        }
    }

    /// Publishes pages while this drainer holds the lock (renewed before each page) and its
    /// budget lasts.
    async fn drain_locked(
        &self,
        connection: &mut RedisConnection,
        token: &str,
    ) -> Result<Drained, RegistryError> {
        let started = tokio::time::Instant::now();
        let ttl_ms = u64::try_from(LOCK_TTL.as_millis()).unwrap_or(u64::MAX);
        loop {
            if started.elapsed() > DRAIN_BUDGET {
                return Ok(Drained::OutOfBudget);
            }
            let mut renew = self.renew.key(LOCK_KEY);
            renew.arg(token).arg(ttl_ms);
            let held: i64 = self.timed(renew.invoke_async(connection)).await?;
            if held != 1 {
                return Ok(Drained::LockLost);
            }
            let entries: Vec<(String, Vec<Vec<u8>>)> = self
                .timed(
                    redis::cmd("XRANGE")
                        .arg(OUTBOX_KEY)
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(PAGE)
                        .query_async(connection),
                )
                .await?;
            if entries.is_empty() {
                return Ok(Drained::Empty);
            }
            let batch: Vec<(Vec<String>, Bytes)> =
                entries.iter().map(|(_, fields)| event_of(fields)).collect();
            self.broker
                .publish_batch(&batch)
                .await
                .map_err(unavailable)?;
            let mut delete = self.delete.key(LOCK_KEY);
            delete.key(OUTBOX_KEY).arg(token);
            for (id, _) in &entries {
                delete.arg(id);
            }
            let deleted: i64 = self.timed(delete.invoke_async(connection)).await?;
            if deleted < 0 {
                return Ok(Drained::LockLost);
            }
        }
    }
}

/// The channels and payload of an entry: fields `p` (payload) and `c` (a channel, repeated).
fn event_of(fields: &[Vec<u8>]) -> (Vec<String>, Bytes) {
    let mut channels = Vec::new();
    let mut payload = Bytes::new();
    for pair in fields.chunks(2) {
        if let [name, value] = pair {
            match name.as_slice() {
                b"p" => payload = Bytes::copy_from_slice(value),
                b"c" => channels.push(String::from_utf8_lossy(value).into_owned()),
                _ => {}
            }
        }
    }
    (channels, payload)
}

/// Drains the outbox every [`SWEEP_INTERVAL`] while the store lives: entries a dead drainer
/// left behind are published within a lock TTL and a sweep.
pub(crate) async fn sweep(outbox: Weak<Outbox>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let Some(outbox) = outbox.upgrade() else {
            return;
        };
        if let Err(error) = outbox.drain().await {
            tracing::warn!(?error, "lifecycle events wait in the outbox");
        }
    }
}
