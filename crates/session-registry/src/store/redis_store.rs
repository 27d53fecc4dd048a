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
use std::time::Duration;

use prost::Message;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use switchboard_proto::v1::SessionInfo;

use super::{RegistryError, TOMBSTONE_TTL};

const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);
const GATEWAYS_KEY: &str = "sb:gw";

/// Registers a session (ARGV[5] = "1": re-learning it from a heartbeat, which a recent
/// unregister's tombstone forbids). The gateway's heartbeat time is Redis's own clock, so
/// registry replicas with skewed clocks agree.
const REGISTER: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local max = tonumber(ARGV[6])
if max > 0 and redis.call('SCARD', KEYS[2]) >= max then return -1 end
if ARGV[5] == '1' then
  if redis.call('EXISTS', KEYS[6]) == 1 then return 0 end
else
  redis.call('DEL', KEYS[6])
end
redis.call('HSET', KEYS[1], 'info', ARGV[1], 'uk', KEYS[2], 'usk', KEYS[3], 'gk', KEYS[4], 'user', ARGV[3], 'gw', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[2])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[5], 'NX', t[1] * 1000 + math.floor(t[2] / 1000), ARGV[4])
return 1
";

/// Unregisters each session ARGV[3..] that ARGV[1] (a gateway id, or "" for any) holds, and
/// leaves a tombstone for ARGV[2] ms; KEYS holds each session's key and tombstone key, in
/// pairs. Returns how many were removed.
const UNREGISTER: &str = r"
local removed = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local session_key = KEYS[(i - 3) * 2 + 1]
  local f = redis.call('HMGET', session_key, 'uk', 'usk', 'gk', 'user', 'gw')
  if f[1] and (ARGV[1] == '' or f[5] == ARGV[1]) then
    redis.call('DEL', session_key)
    redis.call('SREM', f[1], id)
    if redis.call('SCARD', f[1]) == 0 then redis.call('SREM', f[2], f[4]) end
    redis.call('SREM', f[3], id)
    redis.call('SET', KEYS[(i - 3) * 2 + 2], '1', 'PX', ARGV[2])
    removed = removed + 1
  end
end
return removed
";

/// Records a heartbeat at Redis's time; returns how many sessions the index holds for it.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])
return redis.call('SCARD', KEYS[2])
";

/// Returns the gateways whose last heartbeat is older than ARGV[1] ms, by Redis's clock.
const SILENT_GATEWAYS: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], 0, now - tonumber(ARGV[1]))
";

/// Forgets the reaped ids of a gateway; drops the gateway once it holds none (a login that
/// raced the reap keeps it listed, and the next pass takes it).
const FORGET_GATEWAY: &str = r"
for i = 2, #ARGV do redis.call('SREM', KEYS[2], ARGV[i]) end
if redis.call('SCARD', KEYS[2]) == 0 then redis.call('ZREM', KEYS[1], ARGV[1]) end
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

fn tombstone_key(session_id: &str) -> String {
    format!("sb:t:{}", part(session_id))
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
    heartbeat: Script,
    silent_gateways: Script,
    forget_gateway: Script,
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
            heartbeat: Script::new(HEARTBEAT),
            silent_gateways: Script::new(SILENT_GATEWAYS),
            forget_gateway: Script::new(FORGET_GATEWAY),
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

    /// Runs REGISTER: 1 created, 0 taken (or tombstoned when relearning), -1 at the limit.
    async fn try_register(
        &self,
        session: &SessionInfo,
        relearn: bool,
        max_per_user: usize,
    ) -> Result<i64, RegistryError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.register.prepare_invoke();
        invocation
            .key(session_key(&session.session_id))
            .key(user_key(&session.service, &session.user))
            .key(users_key(&session.service))
            .key(gateway_key(&session.gateway_id))
            .key(GATEWAYS_KEY)
            .key(tombstone_key(&session.session_id))
            .arg(session.encode_to_vec())
            .arg(&session.session_id)
            .arg(&session.user)
            .arg(&session.gateway_id)
            .arg(if relearn { "1" } else { "0" })
            .arg(max_per_user);
        Self::timed(invocation.invoke_async(&mut connection)).await
    }

    pub(crate) async fn register(
        &self,
        session: &SessionInfo,
        max_per_user: usize,
    ) -> Result<(), RegistryError> {
        match self.try_register(session, false, max_per_user).await? {
            1 => Ok(()),
            -1 => Err(RegistryError::TooManySessions),
            _ => Err(RegistryError::DuplicateSession),
        }
    }

    pub(crate) async fn unregister(
        &self,
        session_id: &str,
        gateway_id: &str,
    ) -> Result<(), RegistryError> {
        self.unregister_many(&[session_id], gateway_id).await
    }

    /// Unregisters many sessions in one script call.
    pub(crate) async fn unregister_many(
        &self,
        session_ids: &[&str],
        gateway_id: &str,
    ) -> Result<(), RegistryError> {
        if session_ids.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        let mut invocation = self.unregister.prepare_invoke();
        invocation
            .arg(gateway_id)
            .arg(TOMBSTONE_TTL.as_millis() as u64);
        for session_id in session_ids {
            invocation
                .key(session_key(session_id))
                .key(tombstone_key(session_id))
                .arg(*session_id);
        }
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
        let mut invocation = self.heartbeat.prepare_invoke();
        invocation
            .key(GATEWAYS_KEY)
            .key(gateway_key(gateway_id))
            .arg(gateway_id);
        let known: usize = Self::timed(invocation.invoke_async(&mut connection)).await?;
        // Re-learn only when the index lost some of this gateway's sessions (Redis restarted
        // empty, or the gateway was reaped while it was only slow).
        if known != sessions.len() {
            let mut relearned = 0;
            for session in sessions {
                if self.try_register(session, true, 0).await? == 1 {
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
        let mut invocation = self.silent_gateways.prepare_invoke();
        invocation.key(GATEWAYS_KEY).arg(timeout.as_millis() as u64);
        let dead: Vec<String> = Self::timed(invocation.invoke_async(&mut connection)).await?;
        let mut reaped = 0;
        for gateway_id in dead {
            let session_ids: Vec<String> =
                Self::timed(connection.smembers(gateway_key(&gateway_id))).await?;
            for session_id in &session_ids {
                self.unregister(session_id, &gateway_id).await?;
                reaped += 1;
            }
            let mut invocation = self.forget_gateway.prepare_invoke();
            invocation
                .key(GATEWAYS_KEY)
                .key(gateway_key(&gateway_id))
                .arg(&gateway_id)
                .arg(&session_ids);
            let _: i64 = Self::timed(invocation.invoke_async(&mut connection)).await?;
        }
        Ok(reaped)
    }
}
