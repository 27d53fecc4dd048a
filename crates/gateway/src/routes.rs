//! The local subscription index: which connections subscribed which broker channel, with
//! which body; the broker (un)subscribes a change calls for; and the fan-out of one broker
//! message to a channel's local subscribers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use switchboard_broker::{BrokerError, Subscriber};
#[cfg(doc)]
use switchboard_protocol::event::EventKey;
use switchboard_protocol::event::EventMessage;
use switchboard_sync::Lock;

use crate::positioned::{HistorySource, Located, Positioned, repair};
use crate::session::SessionHandle;

/// One subscription of a connection: its broker channel, which encodes its key
/// ([`EventKey::from_channel`] reads it back), its body, and for a positioned subscription
/// its delivery flow. The channel text is shared with the route index.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub(crate) channel: Arc<str>,
    pub(crate) body: Arc<Map<String, Value>>,
    pub(crate) positioned: Option<Arc<Positioned>>,
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
    positioned: Option<Arc<Positioned>>,
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

    fn len(&self) -> usize {
        match self {
            Self::One(..) => 1,
            Self::Many(many) => many.len(),
        }
    }

    fn for_each(&self, mut visit: impl FnMut(&Route)) {
        match self {
            Self::One(_, route) => visit(route),
            Self::Many(many) => many.values().for_each(visit),
        }
    }
}

/// Seconds from `published_us` (microseconds since the Unix epoch, the bus's clock) to now;
/// 0 when the clocks disagree the other way.
fn lag_seconds(published_us: u64) -> f64 {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |now| now.as_micros());
    let lag_us = now_us.saturating_sub(u128::from(published_us));
    Duration::from_micros(u64::try_from(lag_us).unwrap_or(u64::MAX)).as_secs_f64()
}

/// channel → its local routes.
type RouteIndex = HashMap<Arc<str>, Routes>;

/// The route index and the broker subscriber that follows it.
///
/// The index sits behind a std mutex held only for map edits or across a fan-out (queueing
/// never blocks), never across `.await`. `subscriber` is an async mutex that orders the
/// queueing of broker (un)subscribes with the route changes that call for them, so a channel's
/// first subscribe and last unsubscribe cannot overtake each other; the wait for a subscribe's
/// confirmation happens after it is released, so concurrent subscribes share a broker round
/// trip.
#[derive(Debug)]
pub struct RouteTable {
    index: Mutex<RouteIndex>,
    /// Channels whose first subscribe is queued but not yet confirmed, with the number of the
    /// `add` call that queued it. A connection joining such a channel queues a subscribe too
    /// and waits for it, so no `subscribe` answers before its channel is in effect. Locked
    /// after `index` when both are.
    unconfirmed: Mutex<HashMap<Arc<str>, u64>>,
    next_subscribe: AtomicU64,
    subscriber: tokio::sync::Mutex<Subscriber>,
    /// Where positioned subscriptions' gaps are read back from; set once the gateway's
    /// services exist.
    history: OnceLock<Arc<dyn HistorySource>>,
}

impl RouteTable {
    /// Creates an empty table whose channels `subscriber` subscribes.
    pub(crate) fn new(subscriber: Subscriber) -> Self {
        Self {
            index: Mutex::new(HashMap::new()),
            unconfirmed: Mutex::new(HashMap::new()),
            next_subscribe: AtomicU64::new(1),
            subscriber: tokio::sync::Mutex::new(subscriber),
            history: OnceLock::new(),
        }
    }

    /// Sets where gaps of positioned subscriptions are read back from.
    pub(crate) fn set_history(&self, source: Arc<dyn HistorySource>) {
        let _ = self.history.set(source);
    }

    /// The channels with at least one positioned subscription here: their streams must be
    /// kept alive.
    pub(crate) fn positioned_channels(&self) -> Vec<String> {
        let index = self.index();
        index
            .iter()
            .filter(|(_, routes)| {
                let mut positioned = false;
                routes.for_each(|route| positioned |= route.positioned.is_some());
                positioned
            })
            .map(|(channel, _)| channel.to_string())
            .collect()
    }

    /// The channels subscribed and the local subscriptions on them, counted now (for the
    /// scrape-time gauges: nothing is counted on the subscribe path).
    pub(crate) fn counts(&self) -> (usize, usize) {
        let index = self.index();
        (index.len(), index.values().map(Routes::len).sum())
    }

    fn index(&self) -> MutexGuard<'_, RouteIndex> {
        self.index.locked()
    }

    fn unconfirmed(&self) -> MutexGuard<'_, HashMap<Arc<str>, u64>> {
        self.unconfirmed.locked()
    }

    /// Adds or replaces routes of `session`, subscribing every channel that had none in one
    /// broker round trip; all of them are in effect when this returns.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker failed; none of the routes is then added.
    pub(crate) async fn add(
        &self,
        subscriptions: &[Subscription],
        session: &Arc<SessionHandle>,
    ) -> Result<(), BrokerError> {
        let this_call = self.next_subscribe.fetch_add(1, Ordering::Relaxed);
        // Channels to subscribe, each with the number of the call whose first subscribe it
        // waits for (this one's, or an earlier one's still unconfirmed).
        let mut waiting: Vec<(Arc<str>, u64)> = Vec::new();
        let queued = {
            let subscriber = self.subscriber.lock().await;
            {
                let mut index = self.index();
                let mut unconfirmed = self.unconfirmed();
                for subscription in subscriptions {
                    let channel = &subscription.channel;
                    let route = Route {
                        session: Arc::clone(session),
                        body: Arc::clone(&subscription.body),
                        positioned: subscription.positioned.clone(),
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
            subscriber.queue_subscribe(&channels).await
        };
        let confirmed = match queued {
            Ok(subscribing) => subscribing.done().await,
            Err(error) => Err(error),
        };
        if let Err(error) = confirmed {
            // Under the lock, and unsubscribing what it empties: another connection's
            // subscribe of the same channel may have succeeded and left since.
            self.remove(subscriptions, session.conn_id).await;
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
    pub(crate) async fn remove(&self, subscriptions: &[Subscription], conn_id: u64) {
        let subscriber = self.subscriber.lock().await;
        let emptied: Vec<String> = subscriptions
            .iter()
            .filter(|subscription| self.remove_route_entry(&subscription.channel, conn_id))
            .map(|subscription| subscription.channel.to_string())
            .collect();
        if let Err(error) = subscriber.unsubscribe_many(&emptied).await {
            tracing::warn!(%error, "broker unsubscribe failed");
        }
    }

    /// Removes one entry; true when the channel has no route left.
    fn remove_route_entry(&self, channel: &str, conn_id: u64) -> bool {
        let mut index = self.index();
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
    pub(crate) fn deliver(&self, channel: &str, payload: &Bytes) {
        if !self.index().contains_key(channel) {
            return;
        }
        let mut event: EventMessage = match serde_json::from_slice(payload) {
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
        // Made once per event, shared by its positioned subscribers.
        let located = event.pos.take().map(Located::new);
        if let Some(published_us) = event.ts {
            crate::metrics::METRICS
                .delivery_lag
                .observe(lag_seconds(published_us));
        }
        let routes = self.index();
        let Some(entry) = routes.get(channel) else {
            return;
        };
        crate::metrics::METRICS
            .events_delivered
            .inc_by(entry.len() as u64);
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
            let Some(positioned) = &route.positioned else {
                session.push_event(data);
                return;
            };
            if let Some(gap) = positioned.offer(data, located.as_ref()) {
                match self.history.get() {
                    Some(source) => {
                        tokio::spawn(repair(Arc::clone(positioned), Arc::clone(source), gap));
                    }
                    None => tracing::error!("no history source for a positioned subscription"),
                }
            }
        });
    }

    /// Tells whether no first subscribe is waiting for its confirmation.
    #[cfg(test)]
    pub(crate) fn all_confirmed(&self) -> bool {
        self.unconfirmed().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(conn_id: u64) -> Route {
        Route {
            positioned: None,
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
}
