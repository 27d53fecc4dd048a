//! The session index behind the registry: in memory, or in Redis so that registry replicas
//! are interchangeable and survive restarts.

mod memory;
mod outbox;
mod redis_store;

use std::time::Duration;

use switchboard_proto::v1::{GatewayInfo, SessionInfo};

use crate::presence::reason;

pub use memory::MemoryStore;
pub use redis_store::RedisStore;

/// How long an unregistered session id is kept from being re-learned.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// One page of a listing and where the next one starts ("" after the last page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// What this page holds.
    pub items: Vec<T>,
    /// The cursor of the next page; "" when this was the last.
    pub next: String,
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            next: String::new(),
        }
    }
}

/// What the index holds for one gateway: how many sessions, and their digest
/// (`switchboard_proto::digest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayDigest {
    /// How many sessions.
    pub count: u64,
    /// The XOR digest of their ids.
    pub digest: u64,
}

/// Why a registry operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// The session id is already registered.
    DuplicateSession,
    /// The user already has the most sessions allowed.
    TooManySessions,
    /// No such session or user.
    NotFound,
    /// The backing store cannot be reached; the call may be retried.
    Unavailable(String),
}

/// Where the index lives.
#[derive(Debug, Clone)]
pub enum Store {
    /// In this process.
    Memory(MemoryStore),
    /// In Redis, shared by every registry replica.
    Redis(Box<RedisStore>),
}

impl Store {
    /// Registers a session.
    ///
    /// # Errors
    /// [`RegistryError::DuplicateSession`] when its id is taken.
    pub async fn register(&self, session: SessionInfo) -> Result<(), RegistryError> {
        self.register_limited(session, 0, "").await.map(|_| ())
    }

    /// Registers a session unless its user already has `max_per_user` sessions in its
    /// service (0: no limit). When its id is registered with the resume hash
    /// `takeover_hash`, for the same user and service, the session moves to the new one's
    /// gateway in one step (a takeover, PROTOCOL.md §11) and its registration before is
    /// returned.
    ///
    /// # Errors
    /// [`RegistryError::DuplicateSession`] when its id is taken (and not taken over),
    /// [`RegistryError::TooManySessions`] at the limit.
    pub async fn register_limited(
        &self,
        session: SessionInfo,
        max_per_user: usize,
        takeover_hash: &str,
    ) -> Result<Option<SessionInfo>, RegistryError> {
        match self {
            Self::Memory(store) => store.register(session, max_per_user, takeover_hash),
            Self::Redis(store) => store.register(&session, max_per_user, takeover_hash).await,
        }
    }

    /// Removes a session, if present and held by `gateway_id` ("" matches any gateway); its
    /// `stopped` event says `closed` for a gateway's, `stopped` for anyone's.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when Redis cannot be reached.
    pub async fn unregister(
        &self,
        session_id: &str,
        gateway_id: &str,
    ) -> Result<(), RegistryError> {
        self.unregister_many(&[session_id], gateway_id).await
    }

    /// Removes every session of `session_ids` present and held by `gateway_id` ("" matches
    /// any gateway), in one Redis call (see [`Store::unregister`] for their reason).
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when Redis cannot be reached.
    pub async fn unregister_many(
        &self,
        session_ids: &[&str],
        gateway_id: &str,
    ) -> Result<(), RegistryError> {
        let why = if gateway_id.is_empty() {
            reason::STOPPED
        } else {
            reason::CLOSED
        };
        let sessions: Vec<(&str, &str)> = session_ids.iter().map(|id| (*id, why)).collect();
        self.unregister_with_reasons(&sessions, gateway_id).await
    }

    /// Removes every session of `sessions` present and held by `gateway_id` ("" matches any
    /// gateway), each firing its `stopped` event with its reason, in one Redis call.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when Redis cannot be reached.
    pub async fn unregister_with_reasons(
        &self,
        sessions: &[(&str, &str)],
        gateway_id: &str,
    ) -> Result<(), RegistryError> {
        match self {
            Self::Memory(store) => {
                store.unregister_many(sessions, gateway_id);
                Ok(())
            }
            Self::Redis(store) => store.unregister_many(sessions, gateway_id).await,
        }
    }

    /// Returns one page of the users of `service` with their session ids: about `limit`
    /// users after `cursor` ("" for the first page). A user may appear on two pages.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when Redis cannot be reached.
    pub async fn list_users(
        &self,
        service: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<Page<(String, Vec<String>)>, RegistryError> {
        match self {
            Self::Memory(store) => Ok(store.list_users(service, cursor, limit)),
            Self::Redis(store) => store.list_users(service, cursor, limit).await,
        }
    }

    /// Returns one page of the session ids held for `gateway_id`: about `limit` ids after
    /// `cursor` ("" for the first page). An id may appear on two pages.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when Redis cannot be reached.
    pub async fn gateway_sessions(
        &self,
        gateway_id: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<Page<String>, RegistryError> {
        match self {
            Self::Memory(store) => Ok(store.gateway_sessions(gateway_id, cursor, limit)),
            Self::Redis(store) => store.gateway_sessions(gateway_id, cursor, limit).await,
        }
    }

    /// Registers sessions a gateway holds that the index lost (a restart, a reap of a
    /// gateway that was only slow); returns the ids refused: held by another gateway, or
    /// unregistered within [`TOMBSTONE_TTL`].
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when Redis cannot be reached.
    pub async fn relearn(&self, sessions: Vec<SessionInfo>) -> Result<Vec<String>, RegistryError> {
        match self {
            Self::Memory(store) => Ok(store.relearn(sessions)),
            Self::Redis(store) => store.relearn(&sessions).await,
        }
    }

    /// Returns the sessions of one user.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`] when the user has none.
    pub async fn get_user(
        &self,
        service: &str,
        user: &str,
    ) -> Result<Vec<SessionInfo>, RegistryError> {
        match self {
            Self::Memory(store) => store.get_user(service, user),
            Self::Redis(store) => store.get_user(service, user).await,
        }
    }

    /// Returns one session.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`] when it does not exist.
    pub async fn lookup(&self, session_id: &str) -> Result<SessionInfo, RegistryError> {
        match self {
            Self::Memory(store) => store.lookup(session_id),
            Self::Redis(store) => store.lookup(session_id).await,
        }
    }

    /// Records a heartbeat; returns the count and digest of the sessions the index holds
    /// for the gateway, for it to compare with its own.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when Redis cannot be reached.
    pub async fn heartbeat(
        &self,
        gateway_id: &str,
        control_addr: &str,
    ) -> Result<GatewayDigest, RegistryError> {
        match self {
            Self::Memory(store) => Ok(store.heartbeat(gateway_id, control_addr)),
            Self::Redis(store) => store.heartbeat(gateway_id, control_addr).await,
        }
    }

    /// The gateways heard from within `within`, most recently heard first.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when Redis cannot be reached.
    pub async fn list_gateways(&self, within: Duration) -> Result<Vec<GatewayInfo>, RegistryError> {
        let mut gateways = match self {
            Self::Memory(store) => store.list_gateways(within),
            Self::Redis(store) => store.list_gateways(within).await?,
        };
        gateways.sort_by(|a, b| {
            (a.last_heartbeat_ms, &a.gateway_id).cmp(&(b.last_heartbeat_ms, &b.gateway_id))
        });
        Ok(gateways)
    }

    /// Checks that the backing store answers now.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when it does not.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(store) => store.ping().await,
        }
    }

    /// Removes the sessions of every gateway silent for longer than `timeout`; returns how many.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when Redis cannot be reached.
    pub async fn reap(&self, timeout: Duration) -> Result<usize, RegistryError> {
        match self {
            Self::Memory(store) => Ok(store.reap(timeout)),
            Self::Redis(store) => store.reap(timeout).await,
        }
    }
}
