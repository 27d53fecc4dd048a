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
//! Delivery is at least once: a drainer that dies between publishing and deleting leaves
//! those entries for the next one (after [`LOCK_TTL`]). The stream is bounded ([`OUTBOX_MAX`]
//! entries, oldest dropped) for when the shards are unreachable for long.

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use redis::Script;
use switchboard_broker::{Broker, RedisConnection};

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

/// Deletes the lock only if it still holds this drainer's token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Publishes the outbox; cheap to clone.
#[derive(Clone)]
pub(crate) struct Outbox {
    connection: RedisConnection,
    broker: Broker,
    release: Script,
    /// Names this drainer in the lock.
    token: String,
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
    pub(crate) fn new(connection: RedisConnection, broker: Broker, timeout: Duration) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default();
        Self {
            connection,
            broker,
            release: Script::new(RELEASE),
            token: format!("{}-{nanos}", std::process::id()),
            timeout,
        }
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
            let taken: Option<String> = self
                .timed(
                    redis::cmd("SET")
                        .arg(LOCK_KEY)
                        .arg(&self.token)
                        .arg("NX")
                        .arg("PX")
                        .arg(u64::try_from(LOCK_TTL.as_millis()).unwrap_or(u64::MAX))
                        .query_async(&mut connection),
                )
                .await?;
            if taken.is_none() {
                return Ok(());
            }
            let drained = self.drain_locked(&mut connection).await;
            let mut release = self.release.key(LOCK_KEY);
            release.arg(&self.token);
            let released: Result<i64, _> = self.timed(release.invoke_async(&mut connection)).await;
            drained?;
            released?;
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

    async fn drain_locked(&self, connection: &mut RedisConnection) -> Result<(), RegistryError> {
        loop {
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
                return Ok(());
            }
            let batch: Vec<(Vec<String>, Bytes)> =
                entries.iter().map(|(_, fields)| event_of(fields)).collect();
            self.broker
                .publish_batch(&batch)
                .await
                .map_err(unavailable)?;
            let mut delete = redis::cmd("XDEL");
            delete.arg(OUTBOX_KEY);
            for (id, _) in &entries {
                delete.arg(id);
            }
            let _: u64 = self.timed(delete.query_async(connection)).await?;
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
