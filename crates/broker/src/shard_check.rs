//! Proof that a sharded subscriber still holds its subscriptions, checked every round.
//!
//! redis-rs re-subscribes a node's channels when it reconnects, but a connection can be
//! replaced under the subscriber (a reconnect racing a slot refresh, a connection cut again
//! while its channels were being subscribed) and nothing reports the channels that did not
//! follow. Two checks run each round, per master of the current slot map:
//! - **counts**: `CLIENT INFO` on the connection the subscriber's commands use to reach that
//!   master names its shard subscriptions (`ssub=`); fewer than the subscriber's channels in
//!   the master's slots means some were lost;
//! - **canaries**: a private channel in the first slot of each slot range is subscribed once
//!   and published to; one that does not come back by the next round means the connection
//!   stopped delivering.
//!
//! Either failure makes the subscriber subscribe everything again.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Value;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};

use crate::connection::{hash_tag, slot};
use crate::subscriber::OPERATION_TIMEOUT;

/// How often a round runs (at most; a shorter health check interval wins).
pub(crate) const CANARY_INTERVAL: Duration = Duration::from_secs(1);
/// The prefix of canary channels; never a channel of events (those start with `sb:ev`).
pub(crate) const CANARY_PREFIX: &str = "sb:canary:";

/// The masters of the cluster and the slot ranges each serves, as `CLUSTER SLOTS` tells.
pub(crate) struct ShardMap {
    /// Per master address, its slot ranges (first, last).
    masters: BTreeMap<String, Vec<(u16, u16)>>,
    /// Every range (first, last, master address), sorted by first slot: a channel's master
    /// is found by binary search, however fragmented migrations left the slot map.
    ranges: Vec<(u16, u16, String)>,
}

impl ShardMap {
    /// Reads the slot map; `None` when the cluster did not answer.
    pub(crate) async fn read(connection: &ClusterConnection) -> Option<Self> {
        let mut asking = connection.clone();
        let ranges: Vec<Vec<Value>> = tokio::time::timeout(
            OPERATION_TIMEOUT,
            redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut asking),
        )
        .await
        .ok()?
        .ok()?;
        let mut masters: BTreeMap<String, Vec<(u16, u16)>> = BTreeMap::new();
        for range in &ranges {
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (range.first(), range.get(1), range.get(2))
            else {
                continue;
            };
            let address = match master.as_slice() {
                [Value::BulkString(host), Value::Int(port), ..] => {
                    format!("{}:{port}", String::from_utf8_lossy(host))
                }
                _ => continue,
            };
            if let (Ok(first), Ok(last)) = (u16::try_from(*first), u16::try_from(*last)) {
                masters.entry(address).or_default().push((first, last));
            }
        }
        Some(Self::new(masters))
    }

    fn new(masters: BTreeMap<String, Vec<(u16, u16)>>) -> Self {
        let mut ranges: Vec<(u16, u16, String)> = masters
            .iter()
            .flat_map(|(master, ranges)| {
                ranges
                    .iter()
                    .map(move |(first, last)| (*first, *last, master.clone()))
            })
            .collect();
        ranges.sort_unstable();
        Self { masters, ranges }
    }

    /// The canary channels of subscriber `id`: one in the first slot of each range.
    pub(crate) fn canaries(&self, id: &str) -> HashSet<String> {
        self.masters
            .values()
            .flatten()
            .map(|(first, _)| format!("{CANARY_PREFIX}{}:{id}", hash_tag(*first)))
            .collect()
    }

    /// True when every master's connection holds at least as many shard subscriptions as
    /// `subscribed` has channels in its slots (the subscriber's own connection is the only
    /// one that subscribes them).
    pub(crate) async fn subscriptions_intact<'a>(
        &self,
        connection: &ClusterConnection,
        subscribed: impl IntoIterator<Item = &'a String>,
    ) -> bool {
        let mut expected: BTreeMap<&str, usize> = BTreeMap::new();
        for channel in subscribed {
            let at = slot(channel.as_bytes());
            if let Some(master) = self.master_of(at) {
                *expected.entry(master).or_default() += 1;
            }
        }
        let checks = self.masters.iter().map(|(master, ranges)| {
            let mut connection = connection.clone();
            let want = expected.get(master.as_str()).copied().unwrap_or(0);
            let first = ranges.first().map_or(0, |(first, _)| *first);
            async move {
                let value = connection
                    .route_command(
                        redis::cmd("CLIENT").arg("INFO").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                            first,
                            SlotAddr::Master,
                        ))),
                    )
                    .await?;
                let info: String = redis::from_redis_value(value)?;
                // A server that does not count shard subscriptions cannot be checked this way
                // (the canaries still are).
                let intact = shard_subscriptions(&info).is_none_or(|held| held >= want);
                if !intact {
                    tracing::warn!(
                        master = %master,
                        expected = want,
                        info = info.trim_end(),
                        "a shard connection lost subscriptions"
                    );
                }
                Ok::<bool, redis::RedisError>(intact)
            }
        });
        let checked = tokio::time::timeout(
            OPERATION_TIMEOUT,
            futures_util::future::try_join_all(checks),
        )
        .await;
        matches!(checked, Ok(Ok(intact)) if intact.iter().all(|ok| *ok))
    }

    fn master_of(&self, at: u16) -> Option<&str> {
        // The last range starting at or before `at`, if it reaches that far.
        let after = self.ranges.partition_point(|(first, _, _)| *first <= at);
        let (_, last, master) = self.ranges.get(after.checked_sub(1)?)?;
        (at <= *last).then_some(master.as_str())
    }
}

/// The `ssub=` count of a `CLIENT INFO` line.
fn shard_subscriptions(info: &str) -> Option<usize> {
    info.split_ascii_whitespace()
        .find_map(|field| field.strip_prefix("ssub="))
        .and_then(|count| count.parse().ok())
}

/// Publishes one canary into each of `channels`; false when the cluster did not take them.
pub(crate) async fn publish_canaries(
    connection: &ClusterConnection,
    channels: &HashSet<String>,
) -> bool {
    let sends = channels.iter().map(|channel| {
        let mut connection = connection.clone();
        async move {
            redis::cmd("SPUBLISH")
                .arg(channel)
                .arg("1")
                .query_async::<i64>(&mut connection)
                .await
        }
    });
    let sent =
        tokio::time::timeout(OPERATION_TIMEOUT, futures_util::future::try_join_all(sends)).await;
    matches!(sent, Ok(Ok(_)))
}

/// Names one subscriber's canary channels: the process and a counter.
pub(crate) fn canary_id() -> String {
    static SUBSCRIBERS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        SUBSCRIBERS.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{ShardMap, shard_subscriptions};

    #[test]
    fn finds_the_master_of_a_slot_in_a_fragmented_map() {
        let masters = BTreeMap::from([
            ("a:1".to_owned(), vec![(0, 99), (200, 200), (5000, 16383)]),
            ("b:2".to_owned(), vec![(100, 199), (201, 4000)]),
        ]);
        let map = ShardMap::new(masters);
        let cases = [
            (0, Some("a:1")),
            (99, Some("a:1")),
            (100, Some("b:2")),
            (199, Some("b:2")),
            (200, Some("a:1")),
            (201, Some("b:2")),
            (4000, Some("b:2")),
            (4001, None),
            (4999, None),
            (5000, Some("a:1")),
            (16383, Some("a:1")),
        ];
        for (slot, master) in cases {
            assert_eq!(map.master_of(slot), master, "slot {slot}");
        }
    }

    #[test]
    fn reads_the_shard_subscription_count_of_client_info() {
        let info = "id=7 addr=127.0.0.1:5 laddr=127.0.0.1:6379 fd=9 name= age=3 idle=0 \
                    flags=P db=0 sub=0 psub=0 ssub=12 multi=-1 qbuf=0 resp=3\n";
        assert_eq!(shard_subscriptions(info), Some(12));
        assert_eq!(shard_subscriptions("id=7 sub=1 psub=0"), None);
    }
}
