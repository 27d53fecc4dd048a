//! The gateway-wide state: local sessions by id and the local subscription index.
//!
//! The broker delivers each event once per channel to [`Hub::deliver`]; the hub parses it
//! once, serialises its frame data once per distinct subscription body and queues it to
//! every local subscriber of that channel.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use switchboard_broker::{Broker, BrokerError, Deliver, Subscriber, Subscribing};
#[cfg(doc)]
use switchboard_protocol::event::EventKey;
use switchboard_protocol::event::EventMessage;
use switchboard_sync::Lock;
use tokio::time::Instant;

use crate::session::SessionHandle;

/// One subscription of a connection: its broker channel, which encodes its key
/// ([`EventKey::from_channel`] reads it back), and its body. The channel text is shared with
/// the route index.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub(crate) channel: Arc<str>,
    pub(crate) body: Arc<Map<String, Value>>,
}

/// The body of every subscription without one, shared.
pub(crate) fn empty_body() -> Arc<Map<String, Value>> {
    static EMPTY: LazyLock<Arc<Map<String, Value>>> = LazyLock::new(|| Arc::new(Map::new()));
    Arc::clone(&EMPTY)
}

/// One local subscription in the index.
#[derive(Debug, Clone)]
struct Route {
    session: Arc<SessionHandle>,
    body: Arc<Map<String, Value>>,
}

/// The local subscribers of one channel, by connection id. Most channels have exactly one (a
/// session's own `user_event` and `session_event` channels), which then needs no map.
#[derive(Debug)]
enum Routes {
    One(u64, Route),
    Many(HashMap<u64, Route>),
}

impl Routes {
    /// Adds or replaces the route of `conn_id`.
    fn insert(&mut self, conn_id: u64, route: Route) {
        match self {
            Self::One(known, existing) if *known == conn_id => *existing = route,
            Self::One(known, existing) => {
                let mut many = HashMap::with_capacity(2);
                many.insert(*known, existing.clone());
                many.insert(conn_id, route);
                *self = Self::Many(many);
            }
            Self::Many(many) => {
                many.insert(conn_id, route);
            }
        }
    }

    /// Removes the route of `conn_id`; true when that was the channel's last route. A map
    /// left with one route goes back to [`Routes::One`], so `Many` always holds two or more.
    fn remove(&mut self, conn_id: u64) -> bool {
        match self {
            Self::One(known, _) => *known == conn_id,
            Self::Many(many) => {
                many.remove(&conn_id);
                let last = if many.len() == 1 {
                    many.drain().next()
                } else {
                    None
                };
                if let Some((last_id, last)) = last {
                    *self = Self::One(last_id, last);
                }
                false
            }
        }
    }

    fn for_each(&self, mut visit: impl FnMut(&Route)) {
        match self {
            Self::One(_, route) => visit(route),
            Self::Many(many) => many.values().for_each(visit),
        }
    }
}

/// channel → its local routes.
type RouteIndex = HashMap<Arc<str>, Routes>;

/// Shared gateway state.
///
/// Both maps sit behind std mutexes held only for map edits or to copy a channel's routes,
/// never across `.await`. `channel_ops` is an async mutex that orders the queueing of broker
/// (un)subscribes with the route changes that call for them, so a channel's first subscribe
/// and last unsubscribe cannot overtake each other; the wait for a subscribe's confirmation
/// happens after it is released, so concurrent subscribes share a broker round trip.
#[derive(Debug)]
pub struct Hub {
    /// Every open connection, logged in or not, for the write watchdog.
    connections: Mutex<HashMap<u64, Arc<SessionHandle>>>,
    sessions: Mutex<HashMap<String, Arc<SessionHandle>>>,
    routes: Mutex<RouteIndex>,
    /// Channels whose first subscribe is queued but not yet confirmed, with the number of the
    /// `add_routes` call that queued it. A connection joining such a channel queues a subscribe
    /// too and waits for it, so no `subscribe` answers before its channel is in effect. Locked
    /// after `routes` when both are.
    unconfirmed: Mutex<HashMap<Arc<str>, u64>>,
    next_subscribe: AtomicU64,
    channel_ops: tokio::sync::Mutex<Option<Subscriber>>,
    next_conn_id: AtomicU64,
    /// Origin of [`Hub::now_ms`].
    epoch: Instant,
}

/// The broker's view of the hub: a weak reference, so the subscriber does not keep it alive.
struct HubSink(std::sync::Weak<Hub>);

impl Deliver for HubSink {
    fn deliver(&self, channel: &str, payload: &Bytes) {
        if let Some(hub) = self.0.upgrade() {
            hub.deliver(channel, payload);
        }
    }

    fn dropped(&self, count: u64) {
        crate::metrics::METRICS.count_dropped_events(count);
    }
}

impl Hub {
    /// Creates a hub subscribed to `broker`.
    pub fn new(broker: &Broker) -> Arc<Self> {
        let hub = Arc::new(Self {
            connections: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            unconfirmed: Mutex::new(HashMap::new()),
            next_subscribe: AtomicU64::new(1),
            channel_ops: tokio::sync::Mutex::new(None),
            next_conn_id: AtomicU64::new(1),
            epoch: Instant::now(),
        });
        let subscriber = broker.subscriber(Arc::new(HubSink(Arc::downgrade(&hub))));
        if let Ok(mut slot) = hub.channel_ops.try_lock() {
            *slot = Some(subscriber);
        }
        hub
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<SessionHandle>>> {
        self.sessions.locked()
    }

    fn routes(&self) -> MutexGuard<'_, RouteIndex> {
        self.routes.locked()
    }

    fn unconfirmed(&self) -> MutexGuard<'_, HashMap<Arc<str>, u64>> {
        self.unconfirmed.locked()
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

    /// Adds or replaces routes of `session`, subscribing every channel that had none in one
    /// broker round trip; all of them are in effect when this returns.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker failed; none of the routes is then added.
    pub(crate) async fn add_routes(
        &self,
        subscriptions: &[Subscription],
        session: &Arc<SessionHandle>,
    ) -> Result<(), BrokerError> {
        let this_call = self.next_subscribe.fetch_add(1, Ordering::Relaxed);
        // Channels to subscribe, each with the number of the call whose first subscribe it
        // waits for (this one's, or an earlier one's still unconfirmed).
        let mut waiting: Vec<(Arc<str>, u64)> = Vec::new();
        let queued = {
            let subscriber = self.channel_ops.lock().await;
            {
                let mut index = self.routes();
                let mut unconfirmed = self.unconfirmed();
                for subscription in subscriptions {
                    let channel = &subscription.channel;
                    let route = Route {
                        session: Arc::clone(session),
                        body: Arc::clone(&subscription.body),
                    };
                    match index.get_mut(channel) {
                        Some(routes) => {
                            routes.insert(session.conn_id, route);
                            if let Some(&first) = unconfirmed.get(channel) {
                                waiting.push((Arc::clone(channel), first));
                            }
                        }
                        None => {
                            index.insert(Arc::clone(channel), Routes::One(session.conn_id, route));
                            unconfirmed.insert(Arc::clone(channel), this_call);
                            waiting.push((Arc::clone(channel), this_call));
                        }
                    }
                }
            }
            let channels: Vec<String> = waiting
                .iter()
                .map(|(channel, _)| channel.to_string())
                .collect();
            match subscriber.as_ref() {
                Some(subscriber) => subscriber.queue_subscribe(&channels).await,
                None => Ok(Subscribing::default()),
            }
        };
        let confirmed = match queued {
            Ok(subscribing) => subscribing.done().await,
            Err(error) => Err(error),
        };
        if let Err(error) = confirmed {
            // Under the lock, and unsubscribing what it empties: another connection's
            // subscribe of the same channel may have succeeded and left since.
            self.remove_routes(subscriptions, session.conn_id).await;
            return Err(error);
        }
        // In effect now: later joiners need not wait, unless the channel has been emptied and
        // subscribed anew since (then it is another call's entry).
        let mut unconfirmed = self.unconfirmed();
        for (channel, first) in &waiting {
            if unconfirmed.get(channel) == Some(first) {
                unconfirmed.remove(channel);
            }
        }
        Ok(())
    }

    /// Removes routes of connection `conn_id`, unsubscribing in one broker round trip every
    /// channel left without a route.
    pub(crate) async fn remove_routes(&self, subscriptions: &[Subscription], conn_id: u64) {
        let subscriber = self.channel_ops.lock().await;
        let emptied: Vec<String> = subscriptions
            .iter()
            .filter(|subscription| self.remove_route_entry(&subscription.channel, conn_id))
            .map(|subscription| subscription.channel.to_string())
            .collect();
        if let Some(subscriber) = subscriber.as_ref()
            && let Err(error) = subscriber.unsubscribe_many(&emptied).await
        {
            tracing::warn!(%error, "broker unsubscribe failed");
        }
    }

    /// Removes one entry; true when the channel has no route left.
    fn remove_route_entry(&self, channel: &str, conn_id: u64) -> bool {
        let mut index = self.routes();
        let Some(routes) = index.get_mut(channel) else {
            return false;
        };
        let emptied = routes.remove(conn_id);
        if emptied {
            index.remove(channel);
            self.unconfirmed().remove(channel);
        }
        emptied
    }

    /// Routes one broker message to the local subscribers of `channel`.
    ///
    /// The event is parsed once; its frame data is serialised once per distinct subscription
    /// body (once in all for the common empty body) and shared by every subscriber's frame.
    /// Queuing never blocks, so the routes lock is held across the loop instead of copying
    /// the routes out.
    pub fn deliver(&self, channel: &str, payload: &Bytes) {
        if !self.routes().contains_key(channel) {
            return;
        }
        let event: EventMessage = match serde_json::from_slice(payload) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(%error, channel, "undecodable event from the broker");
                return;
            }
        };
        let empty = Map::new();
        // Frames for an empty subscription body only differ by the subscriber's service.
        let mut shared_same_service: Option<Arc<str>> = None;
        let mut shared_other_service: Option<Arc<str>> = None;
        let routes = self.routes();
        let Some(entry) = routes.get(channel) else {
            return;
        };
        entry.for_each(|route| {
            let session = &route.session;
            let data = if route.body.is_empty() {
                let slot = if session.service == event.key.service {
                    &mut shared_same_service
                } else {
                    &mut shared_other_service
                };
                Arc::clone(slot.get_or_insert_with(|| {
                    Arc::from(event.frame_data(&empty, &session.service).to_string())
                }))
            } else {
                Arc::from(event.frame_data(&route.body, &session.service).to_string())
            };
            session.push_event(data);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Outbound;
    use switchboard_protocol::event::EventKey;

    fn route(conn_id: u64) -> Route {
        Route {
            session: Arc::new(SessionHandle::new(
                conn_id,
                String::new(),
                String::new(),
                4,
                1 << 20,
            )),
            body: empty_body(),
        }
    }

    fn conn_ids(routes: &Routes) -> Vec<u64> {
        let mut ids = Vec::new();
        routes.for_each(|route| ids.push(route.session.conn_id));
        ids.sort_unstable();
        ids
    }

    #[test]
    fn routes_grow_into_a_map_and_shrink_back() {
        let mut routes = Routes::One(1, route(1));
        routes.insert(1, route(1));
        assert_eq!(
            conn_ids(&routes),
            [1],
            "the same connection replaces its route"
        );
        routes.insert(2, route(2));
        routes.insert(3, route(3));
        assert!(matches!(routes, Routes::Many(_)));
        assert_eq!(conn_ids(&routes), [1, 2, 3]);
        assert!(
            !routes.remove(9),
            "an unknown connection leaves the routes as they are"
        );
        assert!(!routes.remove(1));
        assert!(!routes.remove(3));
        assert!(
            matches!(routes, Routes::One(2, _)),
            "one route left needs no map"
        );
        assert!(!routes.remove(1));
        assert!(routes.remove(2), "the last route empties the channel");
    }

    /// Connections subscribing the same new channel at once: each `add_routes` answers only
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
                    };
                    hub.add_routes(&[subscription], session)
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
                hub.unconfirmed().is_empty(),
                "round {round}: every confirmed channel is forgotten"
            );
        }
    }
}
