//! The session index in Redis.
//!
//! Keys (every variable part length-prefixed, so no value can forge another key):
//! - `sb:s:<session>`: hash `info` (the protobuf `SessionInfo`), `uk`, `usk`, `gk`, `user`;
//! - `sb:u:<service>:<user>`: set of the user's session ids;
//! - `sb:us:<service>`: set of users with at least one session;
//! - `sb:g:<gateway>`: set of the gateway's session ids;
//! - `sb:gw`: sorted set gateway → last heartbeat (ms since the epoch).
//!
//! Register and unregister are Lua scripts, so each is atomic and registry replicas can run
//! side by side. (The scripts derive some keys from stored fields, which a single Redis or a
//! Redis with all keys in one slot accepts; sharding the registry would need hash tags.)

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use switchboard_proto::v1::SessionInfo;

use super::RegistryError;

const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);
const GATEWAYS_KEY: &str = "sb:gw";

const REGISTER: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'info', ARGV[1], 'uk', KEYS[2], 'usk', KEYS[3], 'gk', KEYS[4], 'user', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('ZADD', KEYS[5], 'NX', ARGV[5], ARGV[4])
return 1
";

const UNREGISTER: &str = r"
local f = redis.call('HMGET', KEYS[1], 'uk', 'usk', 'gk', 'user')
if not f[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', f[1], ARGV[1])
if redis.call('SCARD', f[1]) == 0 then redis.call('SREM', f[2], f[4]) end
redis.call('SREM', f[3], ARGV[1])
return 1
";

fn part(value: &str) -> String {
    format!("{}:{value}", value.len())
}

fn session_key(session_id: &str) -> String {
    format!("sb:s:{}", part(session_id))
}

fn user_key(service: &str, user: &str) -> String {
    format!("sb:u:{}:{}", part(service), part(user))
}

fn users_key(service: &str) -> String {
    format!("sb:us:{}", part(service))
}

fn gateway_key(gateway_id: &str) -> String {
    format!("sb:g:{}", part(gateway_id))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

fn unavailable(error: impl fmt::Display) -> RegistryError {
    RegistryError::Unavailable(error.to_string())
}

/// The index in Redis; cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    register: Script,
    unregister: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Creates a store on `url`; the connection is made (and remade) in the background.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] for an invalid URL.
    pub fn connect(url: &str) -> Result<Self, RegistryError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OPERATION_TIMEOUT))
            .set_response_timeout(Some(OPERATION_TIMEOUT))
            .set_number_of_retries(1);
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        Ok(Self {
            connection,
            register: Script::new(REGISTER),
            unregister: Script::new(UNREGISTER),
        })
    }

    async fn timed<T>(
        future: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RegistryError> {
        tokio::time::timeout(OPERATION_TIMEOUT, future)
            .await
            .map_err(|_| unavailable("redis timed out"))?
            .map_err(unavailable)
    }

    async fn try_register(&self, session: &SessionInfo, now: u64) -> Result<bool, RegistryError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.register.prepare_invoke();
        invocation
            .key(session_key(&session.session_id))
            .key(user_key(&session.service, &session.user))
            .key(users_key(&session.service))
            .key(gateway_key(&session.gateway_id))
            .key(GATEWAYS_KEY)
            .arg(session.encode_to_vec())
            .arg(&session.session_id)
            .arg(&session.user)
            .arg(&session.gateway_id)
            .arg(now);
        let created: i64 = Self::timed(invocation.invoke_async(&mut connection)).await?;
        Ok(created == 1)
    }

    pub(crate) async fn register(&self, session: &SessionInfo) -> Result<(), RegistryError> {
        if self.try_register(session, now_ms()).await? {
            Ok(())
        } else {
            Err(RegistryError::DuplicateSession)
        }
    }

    pub(crate) async fn unregister(&self, session_id: &str) -> Result<(), RegistryError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.unregister.prepare_invoke();
        invocation.key(session_key(session_id)).arg(session_id);
        let _: i64 = Self::timed(invocation.invoke_async(&mut connection)).await?;
        Ok(())
    }

    pub(crate) async fn list_users(
        &self,
        service: &str,
    ) -> Result<Vec<(String, Vec<String>)>, RegistryError> {
        let mut connection = self.connection.clone();
        let mut users: Vec<String> = Self::timed(connection.smembers(users_key(service))).await?;
        users.sort();
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for user in &users {
            pipe.smembers(user_key(service, user));
        }
        let sessions: Vec<Vec<String>> = Self::timed(pipe.query_async(&mut connection)).await?;
        Ok(users
            .into_iter()
            .zip(sessions)
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(user, mut ids)| {
                ids.sort();
                (user, ids)
            })
            .collect())
    }

    async fn infos(&self, session_ids: &[String]) -> Result<Vec<SessionInfo>, RegistryError> {
        if session_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        for session_id in session_ids {
            pipe.hget(session_key(session_id), "info");
        }
        let encoded: Vec<Option<Vec<u8>>> = Self::timed(pipe.query_async(&mut connection)).await?;
        Ok(encoded
            .into_iter()
            .flatten()
            .filter_map(|bytes| SessionInfo::decode(bytes.as_slice()).ok())
            .collect())
    }

    pub(crate) async fn get_user(
        &self,
        service: &str,
        user: &str,
    ) -> Result<Vec<SessionInfo>, RegistryError> {
        let mut connection = self.connection.clone();
        let mut session_ids: Vec<String> =
            Self::timed(connection.smembers(user_key(service, user))).await?;
        session_ids.sort();
        let sessions = self.infos(&session_ids).await?;
        if sessions.is_empty() {
            return Err(RegistryError::NotFound);
        }
        Ok(sessions)
    }

    pub(crate) async fn lookup(&self, session_id: &str) -> Result<SessionInfo, RegistryError> {
        self.infos(&[session_id.to_owned()])
            .await?
            .pop()
            .ok_or(RegistryError::NotFound)
    }

    pub(crate) async fn heartbeat(
        &self,
        gateway_id: &str,
        sessions: &[SessionInfo],
    ) -> Result<(), RegistryError> {
        let mut connection = self.connection.clone();
        let now = now_ms();
        let known: usize = Self::timed(async {
            let mut pipe = redis::pipe();
            pipe.zadd(GATEWAYS_KEY, gateway_id, now).ignore();
            pipe.scard(gateway_key(gateway_id));
            let (count,): (usize,) = pipe.query_async(&mut connection).await?;
            Ok(count)
        })
        .await?;
        // Re-learn only when the index lost some of this gateway's sessions (Redis restarted
        // empty, or the gateway was reaped while it was only slow).
        if known != sessions.len() {
            let mut relearned = 0;
            for session in sessions {
                if self.try_register(session, now).await? {
                    relearned += 1;
                }
            }
            if relearned > 0 {
                tracing::info!(
                    gateway = gateway_id,
                    sessions = relearned,
                    "re-learned sessions from a heartbeat"
                );
            }
        }
        Ok(())
    }

    pub(crate) async fn reap(&self, timeout: Duration) -> Result<usize, RegistryError> {
        let mut connection = self.connection.clone();
        let cutoff = now_ms().saturating_sub(timeout.as_millis() as u64);
        let dead: Vec<String> =
            Self::timed(connection.zrangebyscore(GATEWAYS_KEY, 0, cutoff)).await?;
        let mut reaped = 0;
        for gateway_id in dead {
            let session_ids: Vec<String> =
                Self::timed(connection.smembers(gateway_key(&gateway_id))).await?;
            for session_id in &session_ids {
                self.unregister(session_id).await?;
                reaped += 1;
            }
            let mut pipe = redis::pipe();
            pipe.del(gateway_key(&gateway_id)).ignore();
            pipe.zrem(GATEWAYS_KEY, &gateway_id).ignore();
            Self::timed(pipe.query_async::<()>(&mut connection)).await?;
        }
        Ok(reaped)
    }
}
