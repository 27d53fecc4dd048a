//! The in-memory session index (single-process mode).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use switchboard_broker::MemoryBroker;
use switchboard_proto::digest;
use switchboard_proto::v1::{GatewayInfo, SessionInfo};
use switchboard_sync::Lock;
use tokio::time::Instant;

use super::{GatewayDigest, Page, RegistryError};
use crate::presence::{Presence, reason, stopped, unpack_channels};

/// What the index knows of one gateway.
#[derive(Debug)]
struct Gateway {
    last_heartbeat: Instant,
    /// Where its SessionControl listens, as its last heartbeat said.
    control_addr: String,
    session_ids: BTreeSet<String>,
    digest: u64,
}

impl Gateway {
    fn new() -> Self {
        Self {
            last_heartbeat: Instant::now(),
            control_addr: String::new(),
            session_ids: BTreeSet::new(),
            digest: 0,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<String, SessionInfo>,
    /// (service, user) → session ids in login order.
    by_user: BTreeMap<(String, String), Vec<String>>,
    gateways: HashMap<String, Gateway>,
    /// Recently unregistered session ids: a re-learn sent before the unregister must not
    /// bring them back.
    tombstones: HashMap<String, Instant>,
}

impl State {
    fn insert(&mut self, session: SessionInfo) {
        self.by_user
            .entry((session.service.clone(), session.user.clone()))
            .or_default()
            .push(session.session_id.clone());
        let gateway = self
            .gateways
            .entry(session.gateway_id.clone())
            .or_insert_with(Gateway::new);
        if gateway.session_ids.insert(session.session_id.clone()) {
            gateway.digest ^= digest::of_id(&session.session_id);
        }
        self.sessions.insert(session.session_id.clone(), session);
    }

    fn remove(&mut self, session_id: &str) -> Option<SessionInfo> {
        let session = self.sessions.remove(session_id)?;
        let user_key = (session.service.clone(), session.user.clone());
        if let Some(ids) = self.by_user.get_mut(&user_key) {
            ids.retain(|id| id != session_id);
            if ids.is_empty() {
                self.by_user.remove(&user_key);
            }
        }
        if let Some(gateway) = self.gateways.get_mut(&session.gateway_id)
            && gateway.session_ids.remove(session_id)
        {
            gateway.digest ^= digest::of_id(session_id);
        }
        Some(session)
    }
}

/// Cursors of the in-memory pages: the last key returned, after a prefix so that "" (the
/// first page) is never a valid cursor.
fn cursor_of(key: &str) -> String {
    format!("k{key}")
}

fn after(cursor: &str) -> Bound<String> {
    match cursor.strip_prefix('k') {
        Some(key) => Bound::Excluded(key.to_owned()),
        None => Bound::Unbounded,
    }
}

/// The session index, a cheap-to-clone handle.
///
/// A std mutex guards the state: every critical section is a few map operations and none
/// spans an `.await`.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    /// Where lifecycle events go (none: not fired).
    events: Option<MemoryBroker>,
}

impl MemoryStore {
    /// Creates an empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires lifecycle events into `broker`, under the index's lock, so they are in the order
    /// of the changes they tell.
    pub fn with_events(mut self, broker: MemoryBroker) -> Self {
        self.events = Some(broker);
        self
    }

    fn fire(&self, channels: &str, payload: String) {
        if let Some(broker) = &self.events {
            broker.publish(&unpack_channels(channels), &Bytes::from(payload));
        }
    }

    fn fire_started(&self, session: &SessionInfo) {
        let presence = Presence::of(session);
        self.fire(&presence.started_channels, presence.started);
    }

    fn fire_stopped(&self, session: &SessionInfo, reason: &str) {
        let presence = Presence::of(session);
        self.fire(
            &presence.stopped_channels,
            stopped(&presence.stopped_prefix, reason),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Registers a session.
    ///
    /// # Errors
    /// [`RegistryError::DuplicateSession`] when its id is taken.
    pub fn register(
        &self,
        session: SessionInfo,
        max_per_user: usize,
        takeover_hash: &str,
    ) -> Result<Option<SessionInfo>, RegistryError> {
        let mut state = self.lock();
        if let Some(existing) = state.sessions.get(&session.session_id) {
            let takes_over = !takeover_hash.is_empty()
                && existing.resume_hash == takeover_hash
                && existing.service == session.service
                && existing.user == session.user;
            if !takes_over {
                return Err(RegistryError::DuplicateSession);
            }
            let previous = state.remove(&session.session_id);
            if let Some(previous) = &previous {
                self.fire_stopped(previous, reason::TAKEN_OVER);
            }
            self.fire_started(&session);
            state.insert(session);
            return Ok(previous);
        }
        let user_key = (session.service.clone(), session.user.clone());
        if max_per_user > 0 && state.by_user.get(&user_key).map_or(0, Vec::len) >= max_per_user {
            return Err(RegistryError::TooManySessions);
        }
        state.tombstones.remove(&session.session_id);
        self.fire_started(&session);
        state.insert(session);
        Ok(None)
    }

    /// Removes every session of `sessions` present and held by `gateway_id` ("" matches any
    /// gateway), each firing `stopped` with its reason.
    pub fn unregister_many(&self, sessions: &[(&str, &str)], gateway_id: &str) {
        let mut state = self.lock();
        for &(session_id, why) in sessions {
            let owned = state
                .sessions
                .get(session_id)
                .is_some_and(|session| gateway_id.is_empty() || session.gateway_id == gateway_id);
            if owned {
                if let Some(session) = state.remove(session_id) {
                    self.fire_stopped(&session, why);
                }
                state
                    .tombstones
                    .insert(session_id.to_owned(), Instant::now());
            }
        }
    }

    /// Returns one page of the users of `service` with their session ids, at most `limit`
    /// users (at least one), after `cursor` ("" for the first page).
    pub fn list_users(
        &self,
        service: &str,
        cursor: &str,
        limit: usize,
    ) -> Page<(String, Vec<String>)> {
        let state = self.lock();
        let start = match after(cursor) {
            Bound::Excluded(user) => Bound::Excluded((service.to_owned(), user)),
            _ => Bound::Included((service.to_owned(), String::new())),
        };
        let items: Vec<(String, Vec<String>)> = state
            .by_user
            .range((start, Bound::Unbounded))
            .take_while(|((session_service, _), _)| session_service == service)
            .take(limit.max(1))
            .map(|((_, user), ids)| (user.clone(), ids.clone()))
            .collect();
        let next = if items.len() < limit.max(1) {
            String::new()
        } else {
            items
                .last()
                .map(|(user, _)| cursor_of(user))
                .unwrap_or_default()
        };
        Page { items, next }
    }

    /// Returns one page of the session ids held for `gateway_id`, after `cursor`.
    pub fn gateway_sessions(&self, gateway_id: &str, cursor: &str, limit: usize) -> Page<String> {
        let state = self.lock();
        let Some(gateway) = state.gateways.get(gateway_id) else {
            return Page::default();
        };
        let items: Vec<String> = gateway
            .session_ids
            .range((after(cursor), Bound::Unbounded))
            .take(limit.max(1))
            .cloned()
            .collect();
        let next = if items.len() < limit.max(1) {
            String::new()
        } else {
            items.last().map(|id| cursor_of(id)).unwrap_or_default()
        };
        Page { items, next }
    }

    /// Returns the sessions of one user.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`] when the user has none.
    pub fn get_user(&self, service: &str, user: &str) -> Result<Vec<SessionInfo>, RegistryError> {
        let state = self.lock();
        let ids = state
            .by_user
            .get(&(service.to_owned(), user.to_owned()))
            .ok_or(RegistryError::NotFound)?;
        Ok(ids
            .iter()
            .filter_map(|id| state.sessions.get(id).cloned())
            .collect())
    }

    /// Returns one session.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`] when it does not exist.
    pub fn lookup(&self, session_id: &str) -> Result<SessionInfo, RegistryError> {
        self.lock()
            .sessions
            .get(session_id)
            .cloned()
            .ok_or(RegistryError::NotFound)
    }

    /// Records a heartbeat; returns what the index holds for the gateway.
    pub fn heartbeat(&self, gateway_id: &str, control_addr: &str) -> GatewayDigest {
        let mut state = self.lock();
        let gateway = state
            .gateways
            .entry(gateway_id.to_owned())
            .or_insert_with(Gateway::new);
        gateway.last_heartbeat = Instant::now();
        if !control_addr.is_empty() && gateway.control_addr != control_addr {
            control_addr.clone_into(&mut gateway.control_addr);
        }
        GatewayDigest {
            count: gateway.session_ids.len() as u64,
            digest: gateway.digest,
        }
    }

    /// The gateways heard from within `within`.
    pub fn list_gateways(&self, within: Duration) -> Vec<GatewayInfo> {
        let state = self.lock();
        let now = Instant::now();
        state
            .gateways
            .iter()
            .filter(|(_, gateway)| now.duration_since(gateway.last_heartbeat) <= within)
            .map(|(id, gateway)| GatewayInfo {
                gateway_id: id.clone(),
                control_addr: gateway.control_addr.clone(),
                session_count: gateway.session_ids.len() as u64,
                last_heartbeat_ms: u64::try_from(
                    now.duration_since(gateway.last_heartbeat).as_millis(),
                )
                .unwrap_or(u64::MAX),
            })
            .collect()
    }

    /// Registers sessions a gateway holds that the index lost; returns the ids refused
    /// (held by another gateway, or unregistered within [`super::TOMBSTONE_TTL`]).
    pub fn relearn(&self, sessions: Vec<SessionInfo>) -> Vec<String> {
        let mut state = self.lock();
        let mut refused = Vec::new();
        for session in sessions {
            let held_by_other = state
                .sessions
                .get(&session.session_id)
                .map(|held| held.gateway_id != session.gateway_id);
            match held_by_other {
                Some(false) => {}
                Some(true) => refused.push(session.session_id),
                None if state.tombstones.contains_key(&session.session_id) => {
                    refused.push(session.session_id);
                }
                None => state.insert(session),
            }
        }
        refused
    }

    /// Removes the sessions of every gateway silent for longer than `timeout`; returns how many.
    pub fn reap(&self, timeout: Duration) -> usize {
        let mut state = self.lock();
        let now = Instant::now();
        state
            .tombstones
            .retain(|_, at| now.duration_since(*at) < super::TOMBSTONE_TTL);
        let dead: Vec<String> = state
            .gateways
            .iter()
            .filter(|(_, gateway)| now.duration_since(gateway.last_heartbeat) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        let mut reaped = 0;
        for gateway_id in dead {
            let Some(gateway) = state.gateways.remove(&gateway_id) else {
                continue;
            };
            for session_id in &gateway.session_ids {
                if let Some(session) = state.remove(session_id) {
                    self.fire_stopped(&session, reason::LOST);
                    reaped += 1;
                }
            }
        }
        reaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, user: &str, gateway: &str) -> SessionInfo {
        SessionInfo {
            session_id: id.into(),
            user: user.into(),
            gateway_id: gateway.into(),
            ..SessionInfo::default()
        }
    }

    #[test]
    fn register_list_get_unregister() {
        let store = MemoryStore::new();
        store
            .register(session("s1", "u", "g"), 0, "")
            .expect("register");
        store
            .register(session("s2", "u", "g"), 0, "")
            .expect("register");
        assert_eq!(
            store.register(session("s1", "v", "g"), 0, ""),
            Err(RegistryError::DuplicateSession)
        );
        assert_eq!(
            store.list_users("", "", 10).items,
            vec![("u".to_owned(), vec!["s1".to_owned(), "s2".to_owned()])]
        );
        store.unregister_many(&[("s1", reason::CLOSED)], "other-gateway");
        assert_eq!(
            store.get_user("", "u").map(|s| s.len()),
            Ok(2),
            "not its gateway's"
        );
        store.unregister_many(&[("s1", reason::CLOSED)], "g");
        assert_eq!(store.get_user("", "u").map(|s| s.len()), Ok(1));
        store.unregister_many(&[("s2", reason::STOPPED)], "");
        assert_eq!(store.get_user("", "u"), Err(RegistryError::NotFound));
        assert!(store.list_users("", "", 10).items.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn reap_silent_gateway() {
        let store = MemoryStore::new();
        store
            .register(session("a", "u", "g1"), 0, "")
            .expect("register");
        store
            .register(session("b", "u", "g2"), 0, "")
            .expect("register");
        tokio::time::advance(Duration::from_secs(10)).await;
        store.heartbeat("g2", "");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(store.reap(Duration::from_secs(15)), 1);
        assert_eq!(store.lookup("a"), Err(RegistryError::NotFound));
        assert!(store.lookup("b").is_ok());
    }
}
