//! The gateway-wide state: open connections (for the write watchdog), logged-in sessions by
//! id, and the local subscription index ([`RouteTable`], in `routes.rs`).
//!
//! The broker delivers each event once per channel to the hub, which hands it to its route
//! table for fan-out.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use switchboard_broker::{Broker, Deliver};
use switchboard_sync::Lock;
use tokio::time::Instant;

use crate::routes::RouteTable;
use crate::session::SessionHandle;

/// Shared gateway state. Its maps sit behind std mutexes held only for map edits, never
/// across `.await`.
#[derive(Debug)]
pub struct Hub {
    /// Every open connection, logged in or not, for the write watchdog.
    connections: Mutex<HashMap<u64, Arc<SessionHandle>>>,
    sessions: Mutex<HashMap<String, Arc<SessionHandle>>>,
    /// Who subscribed which channel, and the broker subscriber that follows it.
    pub routes: RouteTable,
    /// Whether the broker subscriber is connected, and how often it reconnected.
    pub subscriber_health: Arc<switchboard_broker::SubscriberHealth>,
    next_conn_id: AtomicU64,
    /// Origin of [`Hub::now_ms`].
    epoch: Instant,
}

/// The broker's view of the hub: a weak reference, so the subscriber does not keep it alive.
struct HubSink(Weak<Hub>);

impl Deliver for HubSink {
    fn deliver(&self, channel: &str, payload: &Bytes) {
        if let Some(hub) = self.0.upgrade() {
            hub.routes.deliver(channel, payload);
        }
    }

    fn dropped(&self, count: u64) {
        crate::metrics::METRICS.count_dropped_events(count);
    }
}

impl Hub {
    /// Creates a hub subscribed to `broker`. The broker's sink holds the hub weakly, so it is
    /// made while the hub is: nothing is delivered to a hub half built.
    pub fn new(broker: &Broker) -> Arc<Self> {
        Arc::new_cyclic(|hub: &Weak<Hub>| Self {
            connections: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            routes: RouteTable::new(broker.subscriber(Arc::new(HubSink(hub.clone())))),
            subscriber_health: broker.subscriber_health(),
            next_conn_id: AtomicU64::new(1),
            epoch: Instant::now(),
        })
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<SessionHandle>>> {
        self.sessions.locked()
    }

    /// Returns milliseconds since the hub started (never 0).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Tracks an open connection.
    pub fn add_connection(&self, session: &Arc<SessionHandle>) {
        self.connections
            .locked()
            .insert(session.conn_id, Arc::clone(session));
    }

    /// Returns the number of open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.locked().len()
    }

    /// The number of logged-in sessions here.
    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// Forgets a closed connection.
    pub fn remove_connection(&self, conn_id: u64) {
        self.connections.locked().remove(&conn_id);
    }

    /// Kills every connection whose socket write has stalled for longer than `limit`; returns
    /// how many.
    pub fn kill_stalled_writers(&self, limit: Duration) -> usize {
        let now = self.now_ms();
        let stalled: Vec<Arc<SessionHandle>> = self
            .connections
            .locked()
            .values()
            .filter(|session| session.write_stalled(now, limit.as_millis() as u64))
            .cloned()
            .collect();
        for session in &stalled {
            tracing::warn!(
                conn.id = session.conn_id,
                "slow consumer disconnected: write stalled"
            );
            session.kill(
                crate::outbound::CLOSE_POLICY,
                "slow consumer: write timed out",
            );
        }
        stalled.len()
    }

    /// Returns a new gateway-local connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes a logged-in session reachable by id; false when the id is already held here.
    pub fn insert_session(&self, session_id: &str, session: Arc<SessionHandle>) -> bool {
        let mut sessions = self.sessions();
        if sessions.contains_key(session_id) {
            return false;
        }
        sessions.insert(session_id.to_owned(), session);
        true
    }

    /// Makes `session` the one reachable by `session_id`; returns the one it replaces (a
    /// takeover on this gateway).
    pub fn replace_session(
        &self,
        session_id: &str,
        session: Arc<SessionHandle>,
    ) -> Option<Arc<SessionHandle>> {
        self.sessions().insert(session_id.to_owned(), session)
    }

    /// Forgets a session.
    pub fn remove_session(&self, session_id: &str) {
        self.sessions().remove(session_id);
    }

    /// Forgets a session if connection `conn_id` holds it (a new login may reuse the id as
    /// soon as the registry has let it go).
    pub fn remove_session_of(&self, session_id: &str, conn_id: u64) {
        let mut sessions = self.sessions();
        if sessions
            .get(session_id)
            .is_some_and(|session| session.conn_id == conn_id)
        {
            sessions.remove(session_id);
        }
    }

    /// Returns every open connection.
    pub fn all_connections(&self) -> Vec<Arc<SessionHandle>> {
        self.connections.locked().values().cloned().collect()
    }

    /// Returns a local session.
    pub fn session(&self, session_id: &str) -> Option<Arc<SessionHandle>> {
        self.sessions().get(session_id).cloned()
    }

    /// Returns the ids of every local session, logged in or logging in.
    pub fn session_ids(&self) -> HashSet<String> {
        self.sessions().keys().cloned().collect()
    }

    /// Returns every local session.
    pub fn all_sessions(&self) -> Vec<Arc<SessionHandle>> {
        self.sessions().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Outbound;
    use crate::routes::{Subscription, empty_body};
    use switchboard_protocol::event::EventKey;

    /// Connections subscribing the same new channel at once: each `RouteTable::add` answers only
    /// once the channel is in effect in Redis, whether it queued the channel's first subscribe
    /// or joined one still on its way, so an event published right after reaches it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscribe_answers_once_its_channel_is_in_effect() {
        let redis = switchboard_test_support::RedisServer::start();
        let broker = Broker::Redis(Box::new(
            switchboard_broker::RedisBroker::connect(&redis.url())
                .await
                .expect("redis url"),
        ));
        subscribes_answer_once_in_effect(broker).await;
    }

    /// The same on a Redis Cluster, where each channel's subscribe goes to its own shard.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sharded_subscribe_answers_once_its_channel_is_in_effect() {
        let cluster = switchboard_test_support::RedisCluster::start(3, 0);
        let target = switchboard_broker::RedisTarget::Cluster(cluster.urls());
        let broker = Broker::Redis(Box::new(
            switchboard_broker::RedisBroker::connect_to(&target).expect("seeds"),
        ));
        subscribes_answer_once_in_effect(broker).await;
    }

    async fn subscribes_answer_once_in_effect(broker: Broker) {
        let hub = Hub::new(&broker);
        for round in 0..200u64 {
            let key = EventKey {
                service: String::new(),
                class: format!("class-{round}"),
                subclass: "*".to_owned(),
                type_: "*".to_owned(),
                obj_id: "*".to_owned(),
            };
            let channel: Arc<str> = Arc::from(key.channel());
            let sessions: Vec<Arc<SessionHandle>> = (0..8)
                .map(|n| {
                    Arc::new(SessionHandle::new(
                        round * 100 + n,
                        String::new(),
                        String::new(),
                        64,
                        1 << 20,
                    ))
                })
                .collect();
            let subscribe_then_publish = sessions.iter().enumerate().map(|(n, session)| {
                let (hub, broker, channel) = (&hub, &broker, Arc::clone(&channel));
                let mut payload = serde_json::to_value(&key).expect("key");
                payload["body"] = serde_json::json!({ "n": n });
                async move {
                    let subscription = Subscription {
                        channel: Arc::clone(&channel),
                        body: empty_body(),
                        positioned: None,
                    };
                    hub.routes
                        .add(&[subscription], session)
                        .await
                        .expect("subscribed");
                    broker
                        .publish(&[channel.to_string()], Bytes::from(payload.to_string()))
                        .await
                        .expect("published");
                }
            });
            futures_util::future::join_all(subscribe_then_publish).await;
            for (n, session) in sessions.iter().enumerate() {
                let own = format!("\"n\":{n}");
                let mut received = false;
                for _ in 0..200 {
                    received =
                        session.outbound().take(64).iter().any(
                            |frame| matches!(frame, Outbound::Event(data) if data.contains(&own)),
                        );
                    if received {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert!(
                    received,
                    "round {round}: connection {n} got the event published after its subscribe"
                );
            }
            assert!(
                hub.routes.all_confirmed(),
                "round {round}: every confirmed channel is forgotten"
            );
        }
    }
}
