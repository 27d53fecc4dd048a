//! The session index behind the registry: in memory, or in Redis so that registry replicas
//! are interchangeable and survive restarts.

mod memory;
mod redis_store;

use std::time::Duration;

use switchboard_proto::v1::SessionInfo;

pub use memory::MemoryStore;
pub use redis_store::RedisStore;

/// How long an unregistered session id is kept from being re-learned from a heartbeat.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

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
        self.register_limited(session, 0).await
    }

    /// Registers a session unless its user already has `max_per_user` sessions in its
    /// service (0: no limit).
    ///
    /// # Errors
    /// [`RegistryError::DuplicateSession`] when its id is taken,
    /// [`RegistryError::TooManySessions`] at the limit.
    pub async fn register_limited(
        &self,
        session: SessionInfo,
        max_per_user: usize,
    ) -> Result<(), RegistryError> {
        match self {
            Self::Memory(store) => store.register(session, max_per_user),
            Self::Redis(store) => store.register(&session, max_per_user).await,
        }
    }

    /// Removes a session, if present and held by `gateway_id` ("" matches any gateway).
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
    /// any gateway), in one Redis call.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when Redis cannot be reached.
    pub async fn unregister_many(
        &self,
        session_ids: &[&str],
        gateway_id: &str,
    ) -> Result<(), RegistryError> {
        match self {
            Self::Memory(store) => {
                store.unregister_many(session_ids, gateway_id);
                Ok(())
            }
            Self::Redis(store) => store.unregister_many(session_ids, gateway_id).await,
        }
    }

    /// Returns every user of `service` with their session ids.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when Redis cannot be reached.
    pub async fn list_users(
        &self,
        service: &str,
    ) -> Result<Vec<(String, Vec<String>)>, RegistryError> {
        match self {
            Self::Memory(store) => Ok(store.list_users(service)),
            Self::Redis(store) => store.list_users(service).await,
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

    /// Records a heartbeat; re-learns sessions the gateway holds that the index lost.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when Redis cannot be reached.
    pub async fn heartbeat(
        &self,
        gateway_id: &str,
        sessions: Vec<SessionInfo>,
    ) -> Result<(), RegistryError> {
        match self {
            Self::Memory(store) => {
                store.heartbeat(gateway_id, sessions);
                Ok(())
            }
            Self::Redis(store) => store.heartbeat(gateway_id, &sessions).await,
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
