//! Where Redis is and how to talk to it: one server ([`RedisTarget::Single`]) or a Redis
//! Cluster ([`RedisTarget::Cluster`], seed nodes), and a command connection that is either.
//!
//! In a cluster every script call must touch one hash slot, and a pub/sub channel lives on
//! the shard of its slot (sharded pub/sub, `SPUBLISH`/`SSUBSCRIBE`). [`slot`] computes a key's
//! or a channel's slot as Redis does; [`slot_tag`] gives a short hash tag for each slot, so
//! that keys kept beside a channel (a stream's meta and history) land in the channel's slot
//! whatever the channel's name holds.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};
use switchboard_sync::Lock;

/// Hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (or a primary behind a stable address).
    Single(String),
    /// A Redis Cluster, reached through any of these seed nodes.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// The cluster's seeds when `cluster` (a comma-separated list of `redis://host:port` or
    /// `host:port`) is set and not empty, else the single server at `url`.
    pub fn from_settings(url: &str, cluster: Option<&str>) -> Self {
        let seeds: Vec<String> = cluster
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|seed| !seed.is_empty())
            .map(|seed| {
                if seed.contains("://") {
                    seed.to_owned()
                } else {
                    format!("redis://{seed}")
                }
            })
            .collect();
        if seeds.is_empty() {
            Self::Single(url.to_owned())
        } else {
            Self::Cluster(seeds)
        }
    }

    /// True for a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A command connection, made (and remade) in the background: it does not need Redis to
    /// be up when this returns.
    ///
    /// # Errors
    /// An invalid URL.
    pub fn connect(&self, timeout: Duration) -> redis::RedisResult<RedisConnection> {
        match self {
            Self::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                Ok(RedisConnection::Single(
                    ConnectionManager::new_lazy_with_config(client, config)?,
                ))
            }
            Self::Cluster(seeds) => {
                let client = ClusterClientBuilder::new(seeds.clone()).build()?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                Ok(RedisConnection::Cluster(ClusterCommands::new(
                    client, config,
                )))
            }
        }
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(url) => write!(f, "{url}"),
            Self::Cluster(seeds) => write!(f, "cluster {}", seeds.join(",")),
        }
    }
}

/// A command connection to one Redis or to a cluster (which routes each command by its first
/// key); cheap to clone, multiplexed.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server, reconnected on failure.
    Single(ConnectionManager),
    /// A cluster: one connection per node, following `MOVED` and failovers.
    Cluster(ClusterCommands),
}

/// How long a cluster connection may fail without a success before it is made anew (and at
/// most how often that happens).
pub(crate) const REMAKE_AFTER: Duration = Duration::from_secs(5);

/// A redis-rs cluster connection that is made anew when it stops recovering by itself.
///
/// redis-rs 1.8 repairs a cluster connection in the background, but once it has lost every
/// node (the whole cluster restarted) its slot refresh can fail for good: it retries at once,
/// forever, without going back to the seed nodes, and every command fails. So a connection
/// that answers "no connections found", or nothing but errors for [`REMAKE_AFTER`], is
/// replaced by a new one from the seeds (at most once per [`REMAKE_AFTER`]).
#[derive(Clone)]
pub struct ClusterCommands {
    shared: Arc<Remade>,
}

impl fmt::Debug for ClusterCommands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterCommands")
    }
}

struct Remade {
    client: ClusterClient,
    config: ClusterConfig,
    state: Mutex<RemadeState>,
}

struct RemadeState {
    connection: ClusterConnection,
    /// Counts the connections made: a failure only replaces the one that failed.
    generation: u64,
    /// The first failure since the last success, if the last command failed.
    failing_since: Option<Instant>,
    made_at: Instant,
}

impl ClusterCommands {
    fn new(client: ClusterClient, config: ClusterConfig) -> Self {
        let connection = client.get_pending_async_connection_with_config(config.clone());
        let now = Instant::now();
        Self {
            shared: Arc::new(Remade {
                client,
                config,
                state: Mutex::new(RemadeState {
                    connection,
                    generation: 0,
                    failing_since: None,
                    made_at: now,
                }),
            }),
        }
    }

    /// The current connection and its generation.
    fn current(&self) -> (u64, ClusterConnection) {
        let state = self.shared.state.locked();
        (state.generation, state.connection.clone())
    }

    /// Notes how a command on connection `generation` ended, and makes a new connection when
    /// that one has stopped recovering.
    fn outcome<T>(&self, generation: u64, result: &Result<T, RedisError>) {
        let mut state = self.shared.state.locked();
        if state.generation != generation {
            return;
        }
        let now = Instant::now();
        let Err(error) = result else {
            state.failing_since = None;
            return;
        };
        let failing_since = *state.failing_since.get_or_insert(now);
        let stuck = error.kind() == ErrorKind::ClusterConnectionNotFound
            || now.duration_since(failing_since) >= REMAKE_AFTER;
        if stuck && now.duration_since(state.made_at) >= REMAKE_AFTER {
            tracing::warn!(%error, "redis cluster connection made anew from the seed nodes");
            state.connection = self
                .shared
                .client
                .get_pending_async_connection_with_config(self.shared.config.clone());
            state.generation += 1;
            state.made_at = now;
            state.failing_since = None;
        }
    }

    /// Runs `command` on the current connection.
    async fn run<T, F>(&self, command: impl FnOnce(ClusterConnection) -> F) -> Result<T, RedisError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let (generation, connection) = self.current();
        let result = command(connection).await;
        self.outcome(generation, &result);
        result
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(_) => f.write_str("RedisConnection::Single"),
            Self::Cluster(_) => f.write_str("RedisConnection::Cluster"),
        }
    }
}

impl RedisConnection {
    /// PING: the one server, or every primary of a cluster.
    ///
    /// # Errors
    /// When a server does not answer.
    pub async fn ping(&mut self) -> redis::RedisResult<()> {
        match self {
            Self::Single(single) => redis::cmd("PING")
                .query_async::<String>(single)
                .await
                .map(drop),
            Self::Cluster(cluster) => cluster
                .run(|mut connection| async move {
                    connection
                        .route_command(
                            redis::cmd("PING"),
                            RoutingInfo::MultiNode((
                                MultipleNodeRoutingInfo::AllMasters,
                                Some(ResponsePolicy::AllSucceeded),
                            )),
                        )
                        .await
                })
                .await
                .map(drop),
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(cluster) => Box::pin(cluster.run(move |mut connection| async move {
                connection.req_packed_command(cmd).await
            })),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            Self::Cluster(cluster) => Box::pin(cluster.run(move |mut connection| async move {
                connection.req_packed_commands(cmd, offset, count).await
            })),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

/// The part of `key` Redis hashes: the content of its first non-empty `{...}`, else all of it.
fn hashed_part(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|byte| *byte == b'{') else {
        return key;
    };
    let rest = &key[open + 1..];
    match rest.iter().position(|byte| *byte == b'}') {
        Some(close) if close > 0 => &rest[..close],
        _ => key,
    }
}

/// The hash slot of a key or a shard channel.
pub fn slot(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hashed_part(key)) % SLOTS
}

/// A short string whose slot is `slot` (taken modulo [`SLOTS`]): `{tag}` in a key's name puts
/// the key in that slot.
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); usize::from(SLOTS)];
        let mut missing = usize::from(SLOTS);
        let mut n: u64 = 0;
        while missing > 0 {
            let candidate = format!("{n:x}");
            let found = &mut tags[usize::from(self::slot(candidate.as_bytes()))];
            if found.is_empty() {
                *found = candidate;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[usize::from(slot % SLOTS)]
}

/// `{tag}` of `slot` ([`slot_tag`] in braces): in a key's name, it puts the key in that slot.
pub(crate) fn hash_tag(slot: u16) -> String {
    format!("{{{}}}", slot_tag(slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_of_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 12_739);
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"bar"), 5_061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn every_slot_has_a_tag_of_its_own() {
        for wanted in [0, 1, 5_061, 12_182, SLOTS - 1] {
            let tag = slot_tag(wanted);
            assert!(!tag.is_empty() && !tag.contains(['{', '}']));
            assert_eq!(
                slot(format!("sb:pos:{{{tag}}}:any{{thing}}").as_bytes()),
                wanted
            );
        }
    }

    #[test]
    fn a_cluster_list_replaces_the_url() {
        assert_eq!(
            RedisTarget::from_settings("redis://a:1", None),
            RedisTarget::Single("redis://a:1".into())
        );
        assert_eq!(
            RedisTarget::from_settings("redis://a:1", Some(" ")),
            RedisTarget::Single("redis://a:1".into())
        );
        assert_eq!(
            RedisTarget::from_settings("redis://a:1", Some("b:2, redis://c:3")),
            RedisTarget::Cluster(vec!["redis://b:2".into(), "redis://c:3".into()])
        );
    }
}
