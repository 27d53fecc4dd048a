//! The session index in Redis.
//!
//! Keys (every variable part length-prefixed, so no value can forge another key), under the
//! prefix `sb:`, or `{sb}:` on a Redis Cluster (a hash tag: one slot for the whole index):
//! - `sb:s:<session>`: hash `info` (the protobuf `SessionInfo`), `uk`, `usk`, `gk`, `user`, `gw`,
//!   `rk` (the resume key's hash), `svc` (its service, for its `stopped` event);
//! - `sb:u:<service>:<user>`: set of the user's session ids;
//! - `sb:us:<service>`: set of users with at least one session;
//! - `sb:g:<gateway>`: set of the gateway's session ids;
//! - `sb:gd:<gateway>`: hash `h`, `l`: the digest of that set (`switchboard_proto::digest`),
//!   as two signed 32-bit halves, kept by every script that changes the set;
//! - `sb:gw`: sorted set gateway → last heartbeat (ms since the epoch, Redis's clock);
//! - `sb:t:<session>`: tombstone of a recently unregistered session (not re-learned).
//!
//! Register, unregister and reap are Lua scripts, so each is atomic and registry replicas can
//! run side by side. The tag keeps the whole index in one hash slot of a Redis Cluster, so
//! every script stays one atomic step there too: the index changes once per login, logout
//! and heartbeat, never per event, and one shard carries it (BENCHMARKS.md, "Redis Cluster").
//!
//! Lifecycle events are published by the scripts themselves on one Redis, in the same step. On
//! a cluster their channels live in other slots, so the scripts leave them in an outbox that
//! the store publishes, in order, right after (`super::outbox`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use redis::{AsyncCommands, Script, ScriptInvocation};
use switchboard_broker::streams::LUA_PUBLISH_EVENT;
use switchboard_broker::{Broker, RedisBroker, RedisConnection, RedisTarget, StreamConfig};
use switchboard_proto::digest;
use switchboard_proto::v1::{GatewayInfo, SessionInfo};

use crate::presence::Presence;

use super::outbox::{OUTBOX_MAX, Outbox};
use super::{GatewayDigest, Page, RegistryError, TOMBSTONE_TTL};

const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);
/// Sessions one reap script removes before it yields to other clients of Redis.
const REAP_CHUNK: usize = 1000;

/// Lua helpers shared by the scripts: the digest XOR (see `switchboard_proto::digest`).
const LUA_DIGEST: &str = r"
local function xor_digest(key, id)
  local h = redis.sha1hex(id)
  local d = redis.call('HMGET', key, 'h', 'l')
  redis.call('HSET', key,
    'h', bit.bxor(tonumber(d[1] or '0'), tonumber(string.sub(h, 1, 8), 16)),
    'l', bit.bxor(tonumber(d[2] or '0'), tonumber(string.sub(h, 9, 16), 16)))
end
";

/// Lifecycle events from the scripts (`crate::presence`): `fire(service, user, type, payload)`
/// publishes on the 8 channels a `core/presence/<type>/<user>` event can match, and
/// `stopped(service, user, id, reason)` builds and fires a session's `stopped` event from the
/// fields the index keeps, so the reaper needs nothing else. With `DEFER` set (on a cluster)
/// `fire` appends each event to the outbox stream instead (see `crate::store::outbox`).
const LUA_PRESENCE: &str = r#"
local DEFER, OUTBOX_MAX = false, 0
local function fire(service, user, type, payload, size, ttl)
  -- Lengths are formatted once per field (Lua formats numbers through printf).
  local head = 'sb:ev:' .. string.len(service) .. ':' .. service .. ':4:core'
  local obj = ':' .. string.len(user) .. ':' .. user
  local kind = ':' .. string.len(type) .. ':' .. type
  local channels = {}
  for _, sub in ipairs({':8:presence', ':1:*'}) do
    channels[#channels + 1] = head .. sub .. kind .. obj
    channels[#channels + 1] = head .. sub .. ':1:*' .. obj
    if user ~= '*' then
      channels[#channels + 1] = head .. sub .. kind .. ':1:*'
      channels[#channels + 1] = head .. sub .. ':1:*:1:*'
    end
  end
  if DEFER then
    local entry = {'p', payload}
    for _, channel in ipairs(channels) do
      entry[#entry + 1] = 'c'
      entry[#entry + 1] = channel
    end
    redis.call('XADD', '{sb}:outbox', 'MAXLEN', '~', OUTBOX_MAX, '*', unpack(entry))
  else
    publish_all(channels, payload, size, ttl)
  end
end
local function stopped(service, user, id, reason, size, ttl)
  if not service or not user then return end
  fire(service, user, 'stopped', '{"service":' .. cjson.encode(service) ..
    ',"class":"core","subclass":"presence","type":"stopped","obj_id":' .. cjson.encode(user) ..
    ',"body":{"session_id":' .. cjson.encode(id) .. ',"user":' .. cjson.encode(user) ..
    ',"reason":"' .. reason .. '"}}', size, ttl)
end
"#;

/// Registers sessions: KEYS in groups of 7 (session, user, users, gateway, gateways, tombstone,
/// digest), ARGV[1] = "1" when re-learning (a tombstone forbids it), ARGV[2] the per-user
/// limit (0: none), ARGV[3] and ARGV[4] the streams' history size and TTL (ms), then groups of
/// 8 (info, id, user, gateway, resume hash, takeover hash, service, `started` event; the event
/// is "" when re-learning). Returns per session: 1 created, 0 taken (or
/// tombstoned when re-learning), -1 at the limit, 2 (re-learning only) already held by that
/// same gateway, or {3, previous info} when the takeover hash matched the resume hash of a
/// session of the same user and service: the session moved to this gateway. A created
/// session fires `started` (not when re-learnt: it started before); a takeover fires the old
/// one's `stopped` (`taken_over`) then the new one's `started`, in the same step. The
/// gateway's heartbeat time is Redis's own clock, so registry replicas with skewed clocks
/// agree.
const REGISTER: &str = r#"
local relearn = ARGV[1] == '1'
local max = tonumber(ARGV[2])
local size, ttl = ARGV[3], ARGV[4]
local results = {}
for n = 0, #KEYS / 7 - 1 do
  local k = n * 7
  local a = 4 + n * 8
  local result = 1
  if redis.call('EXISTS', KEYS[k + 1]) == 1 then
    result = 0
    if relearn and redis.call('HGET', KEYS[k + 1], 'gw') == ARGV[a + 4] then result = 2 end
    if not relearn and ARGV[a + 6] ~= '' then
      local f = redis.call('HMGET', KEYS[k + 1], 'uk', 'rk', 'gk', 'info', 'svc', 'user')
      if f[1] == KEYS[k + 2] and f[2] == ARGV[a + 6] then
        if redis.call('SREM', f[3], ARGV[a + 2]) == 1 then
          xor_digest(P .. 'gd:' .. string.sub(f[3], #P + 3), ARGV[a + 2])
        end
        redis.call('HSET', KEYS[k + 1], 'info', ARGV[a + 1], 'gk', KEYS[k + 4], 'gw', ARGV[a + 4],
          'rk', ARGV[a + 5])
        if redis.call('SADD', KEYS[k + 4], ARGV[a + 2]) == 1 then xor_digest(KEYS[k + 7], ARGV[a + 2]) end
        local t = redis.call('TIME')
        redis.call('ZADD', KEYS[k + 5], 'NX', t[1] * 1000 + math.floor(t[2] / 1000), ARGV[a + 4])
        stopped(f[5], f[6], ARGV[a + 2], 'taken_over', size, ttl)
        fire(ARGV[a + 7], ARGV[a + 3], 'started', ARGV[a + 8], size, ttl)
        result = {3, f[4]}
      end
    end
  elseif max > 0 and redis.call('SCARD', KEYS[k + 2]) >= max then
    result = -1
  elseif relearn and redis.call('EXISTS', KEYS[k + 6]) == 1 then
    result = 0
  end
  if result == 1 then
    if not relearn then redis.call('DEL', KEYS[k + 6]) end
    redis.call('HSET', KEYS[k + 1], 'info', ARGV[a + 1], 'uk', KEYS[k + 2], 'usk', KEYS[k + 3],
      'gk', KEYS[k + 4], 'user', ARGV[a + 3], 'gw', ARGV[a + 4], 'rk', ARGV[a + 5],
      'svc', ARGV[a + 7])
    redis.call('SADD', KEYS[k + 2], ARGV[a + 2])
    redis.call('SADD', KEYS[k + 3], ARGV[a + 3])
    if redis.call('SADD', KEYS[k + 4], ARGV[a + 2]) == 1 then xor_digest(KEYS[k + 7], ARGV[a + 2]) end
    local t = redis.call('TIME')
    redis.call('ZADD', KEYS[k + 5], 'NX', t[1] * 1000 + math.floor(t[2] / 1000), ARGV[a + 4])
    if not relearn then fire(ARGV[a + 7], ARGV[a + 3], 'started', ARGV[a + 8], size, ttl) end
  end
  results[n + 1] = result
end
return results
"#;

/// Unregisters each session of ARGV[5..] (pairs of id and reason) that ARGV[1] (a gateway
/// id, or "" for any) holds, fires its `stopped` with that reason, and leaves a tombstone for
/// ARGV[2] ms; ARGV[3] and ARGV[4] are the streams' history size and TTL. KEYS holds each
/// session's key and tombstone key, in pairs. Returns how many were removed.
const UNREGISTER: &str = r#"
local removed = 0
for i = 5, #ARGV, 2 do
  local id = ARGV[i]
  local j = (i - 5) / 2
  local session_key = KEYS[j * 2 + 1]
  local f = redis.call('HMGET', session_key, 'uk', 'usk', 'gk', 'user', 'gw', 'svc')
  if f[1] and (ARGV[1] == '' or f[5] == ARGV[1]) then
    redis.call('DEL', session_key)
    redis.call('SREM', f[1], id)
    if redis.call('SCARD', f[1]) == 0 then redis.call('SREM', f[2], f[4]) end
    if redis.call('SREM', f[3], id) == 1 then
      xor_digest(P .. 'gd:' .. string.sub(f[3], #P + 3), id)
    end
    redis.call('SET', KEYS[j * 2 + 2], '1', 'PX', ARGV[2])
    stopped(f[6], f[4], id, ARGV[i + 1], ARGV[3], ARGV[4])
    removed = removed + 1
  end
end
return removed
"#;

/// Records a heartbeat at Redis's time; returns the count and digest halves of the sessions
/// the index holds for the gateway.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[3], 'addr', ARGV[2]) end
local d = redis.call('HMGET', KEYS[3], 'h', 'l')
return {redis.call('SCARD', KEYS[2]), tonumber(d[1] or '0'), tonumber(d[2] or '0')}
";

/// Returns {gateway, ms since its heartbeat, ...} for the gateways heard from within ARGV[1] ms,
/// by Redis's clock.
const HEARD_GATEWAYS: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local seen = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES')
local out = {}
for i = 1, #seen, 2 do
  out[#out + 1] = seen[i]
  out[#out + 1] = math.max(0, now - tonumber(seen[i + 1]))
end
return out
";

/// Returns the gateways whose last heartbeat is older than ARGV[1] ms, by Redis's clock.
const SILENT_GATEWAYS: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], 0, now - tonumber(ARGV[1]))
";

/// Reaps up to ARGV[3] sessions of gateway ARGV[1] (KEYS: gateways, its set, its digest),
/// firing each one's `stopped` (`lost`; ARGV[4] and ARGV[5] are the streams' history size and
/// TTL), only if it is still silent for longer than ARGV[2] ms: a gateway whose heartbeat arrived
/// since it was found silent keeps everything. Reaped sessions leave no tombstone, so a
/// gateway that was only slow re-learns them. Returns {removed, left}, or -1 when the gateway
/// is not silent (any more). The gateway is forgotten once it holds nothing.
const REAP: &str = r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return -1 end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if now - tonumber(score) <= tonumber(ARGV[2]) then return -1 end
local ids = redis.call('SPOP', KEYS[2], tonumber(ARGV[3]))
local removed = 0
for _, id in ipairs(ids) do
  xor_digest(KEYS[3], id)
  local session_key = P .. 's:' .. #id .. ':' .. id
  local f = redis.call('HMGET', session_key, 'uk', 'usk', 'user', 'gw', 'svc')
  if f[1] and f[4] == ARGV[1] then
    redis.call('DEL', session_key)
    redis.call('SREM', f[1], id)
    if redis.call('SCARD', f[1]) == 0 then redis.call('SREM', f[2], f[3]) end
    stopped(f[5], f[3], id, 'lost', ARGV[4], ARGV[5])
    removed = removed + 1
  end
end
local left = redis.call('SCARD', KEYS[2])
if left == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[3])
end
return {removed, left}
"#;

/// What REGISTER did with one session.
enum Registered {
    Created,
    Taken,
    AtLimit,
    AlreadyHeld,
    TakenOver(Box<SessionInfo>),
}

impl Registered {
    fn from_value(value: redis::Value) -> Result<Self, RegistryError> {
        match value {
            redis::Value::Int(1) => Ok(Self::Created),
            redis::Value::Int(0) => Ok(Self::Taken),
            redis::Value::Int(-1) => Ok(Self::AtLimit),
            redis::Value::Int(2) => Ok(Self::AlreadyHeld),
            redis::Value::Array(items) => match items.as_slice() {
                [redis::Value::Int(3), redis::Value::BulkString(info)] => {
                    SessionInfo::decode(info.as_slice())
                        .map(|info| Self::TakenOver(Box::new(info)))
                        .map_err(unavailable)
                }
                _ => Err(unavailable("unexpected register result")),
            },
            other => Err(unavailable(format!("unexpected register result {other:?}"))),
        }
    }
}

fn part(value: &str) -> String {
    format!("{}:{value}", value.len())
}

/// The index's key names under its prefix: `sb:` on one Redis, `{sb}:` on a cluster.
#[derive(Debug, Clone, Copy)]
struct Keys {
    prefix: &'static str,
}

impl Keys {
    fn session(self, session_id: &str) -> String {
        format!("{}s:{}", self.prefix, part(session_id))
    }

    fn user(self, service: &str, user: &str) -> String {
        format!("{}u:{}:{}", self.prefix, part(service), part(user))
    }

    fn users(self, service: &str) -> String {
        format!("{}us:{}", self.prefix, part(service))
    }

    fn gateway(self, gateway_id: &str) -> String {
        format!("{}g:{}", self.prefix, part(gateway_id))
    }

    fn digest(self, gateway_id: &str) -> String {
        format!("{}gd:{}", self.prefix, part(gateway_id))
    }

    fn tombstone(self, session_id: &str) -> String {
        format!("{}t:{}", self.prefix, part(session_id))
    }

    /// The sorted set of gateways by last heartbeat.
    fn gateways(self) -> String {
        format!("{}gw", self.prefix)
    }
}

fn unavailable(error: impl fmt::Display) -> RegistryError {
    RegistryError::Unavailable(error.to_string())
}

/// The index in Redis; cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    connection: RedisConnection,
    keys: Keys,
    /// On a cluster, where the scripts leave their lifecycle events.
    outbox: Option<Arc<Outbox>>,
    register: Script,
    unregister: Script,
    heartbeat: Script,
    heard_gateways: Script,
    silent_gateways: Script,
    reap: Script,
    streams: StreamConfig,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Sends a PING to Redis.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] when Redis does not answer.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let mut connection = self.connection.clone();
        Self::timed(connection.ping()).await
    }

    /// Creates a store on `url`; the connection is made (and remade) in the background.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] for an invalid URL.
    pub fn connect(url: &str) -> Result<Self, RegistryError> {
        Self::connect_to(&RedisTarget::Single(url.to_owned()))
    }

    /// Creates a store on one Redis or a Redis Cluster; the connections are made (and remade)
    /// in the background.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`] for an invalid URL.
    pub fn connect_to(target: &RedisTarget) -> Result<Self, RegistryError> {
        let connection = target.connect(OPERATION_TIMEOUT).map_err(unavailable)?;
        let keys = Keys {
            prefix: if target.is_cluster() { "{sb}:" } else { "sb:" },
        };
        let (outbox, defer) = if target.is_cluster() {
            let broker = RedisBroker::connect_to(target).map_err(unavailable)?;
            let outbox = Outbox::start(
                connection.clone(),
                Broker::Redis(Box::new(broker)),
                OPERATION_TIMEOUT,
            );
            (
                Some(outbox),
                format!("DEFER, OUTBOX_MAX = true, {OUTBOX_MAX}\n"),
            )
        } else {
            (None, String::new())
        };
        let prefix = format!("local P = '{}'\n", keys.prefix);
        let firing = |script: &str| {
            Script::new(&format!(
                "{prefix}{LUA_PUBLISH_EVENT}{LUA_PRESENCE}{defer}{LUA_DIGEST}{script}"
            ))
        };
        Ok(Self {
            connection,
            keys,
            outbox,
            register: firing(REGISTER),
            unregister: firing(UNREGISTER),
            heartbeat: Script::new(HEARTBEAT),
            heard_gateways: Script::new(HEARD_GATEWAYS),
            silent_gateways: Script::new(SILENT_GATEWAYS),
            reap: firing(REAP),
            streams: StreamConfig::default(),
        })
    }

    /// Runs a script that fires lifecycle events and returns its result. On a cluster the
    /// script leaves its events in the outbox, drained right after (for at most
    /// `outbox::DRAIN_BUDGET`): the caller's answer waits for its events, as on one Redis.
    async fn run_firing(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<redis::Value, RegistryError> {
        let mut connection = self.connection.clone();
        let value: redis::Value = Self::timed(invocation.invoke_async(&mut connection)).await?;
        if let Some(outbox) = &self.outbox
            && let Err(error) = outbox.drain().await
        {
            tracing::warn!(?error, "lifecycle events wait in the outbox");
        }
        Ok(value)
    }

    /// Sets the streams the lifecycle events are positioned in (as the bus's).
    pub fn with_streams(mut self, streams: StreamConfig) -> Self {
        self.streams = streams;
        if let Some(outbox) = &self.outbox {
            self.outbox = Some(outbox.with_streams(streams));
        }
        self
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.streams.history_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    async fn timed<T>(
        future: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RegistryError> {
        tokio::time::timeout(OPERATION_TIMEOUT, future)
            .await
            .map_err(|_| unavailable("redis timed out"))?
            .map_err(unavailable)
    }

    /// Runs REGISTER on `sessions` with their takeover hashes ("" for none).
    async fn try_register(
        &self,
        sessions: &[(&SessionInfo, &str)],
        relearn: bool,
        max_per_user: usize,
    ) -> Result<Vec<Registered>, RegistryError> {
        let mut invocation = self.register.prepare_invoke();
        invocation
            .arg(if relearn { "1" } else { "0" })
            .arg(max_per_user)
            .arg(self.streams.history_size)
            .arg(self.ttl_ms());
        for (session, takeover_hash) in sessions {
            let started = if relearn {
                String::new()
            } else {
                Presence::started_event(session)
            };
            invocation
                .key(self.keys.session(&session.session_id))
                .key(self.keys.user(&session.service, &session.user))
                .key(self.keys.users(&session.service))
                .key(self.keys.gateway(&session.gateway_id))
                .key(self.keys.gateways())
                .key(self.keys.tombstone(&session.session_id))
                .key(self.keys.digest(&session.gateway_id))
                .arg(session.encode_to_vec())
                .arg(&session.session_id)
                .arg(&session.user)
                .arg(&session.gateway_id)
                .arg(&session.resume_hash)
                .arg(*takeover_hash)
                .arg(&session.service)
                .arg(started);
        }
        let values: Vec<redis::Value> =
            redis::from_redis_value(self.run_firing(&invocation).await?).map_err(unavailable)?;
        values.into_iter().map(Registered::from_value).collect()
    }

    pub(crate) async fn register(
        &self,
        session: &SessionInfo,
        max_per_user: usize,
        takeover_hash: &str,
    ) -> Result<Option<SessionInfo>, RegistryError> {
        let results = self
            .try_register(&[(session, takeover_hash)], false, max_per_user)
            .await?;
        match results.into_iter().next() {
            Some(Registered::Created) => Ok(None),
            Some(Registered::TakenOver(previous)) => Ok(Some(*previous)),
            Some(Registered::AtLimit) => Err(RegistryError::TooManySessions),
            _ => Err(RegistryError::DuplicateSession),
        }
    }

    /// Re-learns sessions a gateway holds; returns the ids refused (taken or tombstoned).
    pub(crate) async fn relearn(
        &self,
        sessions: &[SessionInfo],
    ) -> Result<Vec<String>, RegistryError> {
        let mut refused = Vec::new();
        // Bounded script calls, so one re-learn never holds Redis for long.
        for chunk in sessions.chunks(256) {
            let with_hashes: Vec<(&SessionInfo, &str)> =
                chunk.iter().map(|session| (session, "")).collect();
            let results = self.try_register(&with_hashes, true, 0).await?;
            refused.extend(
                chunk
                    .iter()
                    .zip(results)
                    .filter(|(_, result)| matches!(result, Registered::Taken | Registered::AtLimit))
                    .map(|(session, _)| session.session_id.clone()),
            );
        }
        Ok(refused)
    }

    /// Unregisters many sessions, each with the reason its `stopped` event gives, in one
    /// script call.
    pub(crate) async fn unregister_many(
        &self,
        sessions: &[(&str, &str)],
        gateway_id: &str,
    ) -> Result<(), RegistryError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let mut invocation = self.unregister.prepare_invoke();
        invocation
            .arg(gateway_id)
            .arg(TOMBSTONE_TTL.as_millis() as u64)
            .arg(self.streams.history_size)
            .arg(self.ttl_ms());
        for (session_id, reason) in sessions {
            invocation
                .key(self.keys.session(session_id))
                .key(self.keys.tombstone(session_id))
                .arg(*session_id)
                .arg(*reason);
        }
        self.run_firing(&invocation).await?;
        Ok(())
    }

    pub(crate) async fn list_users(
        &self,
        service: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<Page<(String, Vec<String>)>, RegistryError> {
        let mut connection = self.connection.clone();
        let (users, next) =
            Self::scan(&mut connection, self.keys.users(service), cursor, limit).await?;
        if users.is_empty() {
            return Ok(Page {
                items: Vec::new(),
                next,
            });
        }
        let mut pipe = redis::pipe();
        for user in &users {
            pipe.smembers(self.keys.user(service, user));
        }
        let sessions: Vec<Vec<String>> = Self::timed(pipe.query_async(&mut connection)).await?;
        let items = users
            .into_iter()
            .zip(sessions)
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(user, mut ids)| {
                ids.sort();
                (user, ids)
            })
            .collect();
        Ok(Page { items, next })
    }

    /// One `SSCAN` page of a set: its members and the cursor to go on with ("" at the end).
    async fn scan(
        connection: &mut RedisConnection,
        key: String,
        cursor: &str,
        limit: usize,
    ) -> Result<(Vec<String>, String), RegistryError> {
        let cursor = if cursor.is_empty() { "0" } else { cursor };
        let (next, members): (String, Vec<String>) = Self::timed(
            redis::cmd("SSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(limit.max(1))
                .query_async(connection),
        )
        .await?;
        Ok((members, if next == "0" { String::new() } else { next }))
    }

    /// One page of the session ids held for a gateway.
    pub(crate) async fn gateway_sessions(
        &self,
        gateway_id: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<Page<String>, RegistryError> {
        let mut connection = self.connection.clone();
        let (items, next) = Self::scan(
            &mut connection,
            self.keys.gateway(gateway_id),
            cursor,
            limit,
        )
        .await?;
        Ok(Page { items, next })
    }

    async fn infos(&self, session_ids: &[String]) -> Result<Vec<SessionInfo>, RegistryError> {
        if session_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        for session_id in session_ids {
            pipe.hget(self.keys.session(session_id), "info");
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
            Self::timed(connection.smembers(self.keys.user(service, user))).await?;
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
        control_addr: &str,
    ) -> Result<GatewayDigest, RegistryError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.heartbeat.prepare_invoke();
        invocation
            .key(self.keys.gateways())
            .key(self.keys.gateway(gateway_id))
            .key(self.keys.digest(gateway_id))
            .arg(gateway_id)
            .arg(control_addr);
        let (count, high, low): (u64, i64, i64) =
            Self::timed(invocation.invoke_async(&mut connection)).await?;
        Ok(GatewayDigest {
            count,
            digest: digest::from_halves(high, low),
        })
    }

    pub(crate) async fn list_gateways(
        &self,
        within: Duration,
    ) -> Result<Vec<GatewayInfo>, RegistryError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.heard_gateways.prepare_invoke();
        invocation
            .key(self.keys.gateways())
            .arg(u64::try_from(within.as_millis()).unwrap_or(u64::MAX));
        let heard: Vec<(String, u64)> =
            Self::timed(invocation.invoke_async(&mut connection)).await?;
        if heard.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (gateway_id, _) in &heard {
            pipe.hget(self.keys.digest(gateway_id), "addr")
                .scard(self.keys.gateway(gateway_id));
        }
        let details: Vec<(Option<String>, u64)> =
            Self::timed(pipe.query_async(&mut connection)).await?;
        Ok(heard
            .into_iter()
            .zip(details)
            .map(
                |((gateway_id, last_heartbeat_ms), (control_addr, session_count))| GatewayInfo {
                    gateway_id,
                    control_addr: control_addr.unwrap_or_default(),
                    session_count,
                    last_heartbeat_ms,
                },
            )
            .collect())
    }

    pub(crate) async fn reap(&self, timeout: Duration) -> Result<usize, RegistryError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.silent_gateways.prepare_invoke();
        invocation
            .key(self.keys.gateways())
            .arg(timeout.as_millis() as u64);
        let dead: Vec<String> = Self::timed(invocation.invoke_async(&mut connection)).await?;
        let mut reaped = 0;
        for gateway_id in dead {
            loop {
                let mut invocation = self.reap.prepare_invoke();
                invocation
                    .key(self.keys.gateways())
                    .key(self.keys.gateway(&gateway_id))
                    .key(self.keys.digest(&gateway_id))
                    .arg(&gateway_id)
                    .arg(timeout.as_millis() as u64)
                    .arg(REAP_CHUNK)
                    .arg(self.streams.history_size)
                    .arg(self.ttl_ms());
                let outcome = self.run_firing(&invocation).await?;
                let Ok((removed, left)) = redis::from_redis_value::<(usize, usize)>(outcome) else {
                    // The gateway heartbeated since it was found silent: it keeps its sessions.
                    break;
                };
                reaped += removed;
                if left == 0 {
                    break;
                }
            }
        }
        Ok(reaped)
    }
}
