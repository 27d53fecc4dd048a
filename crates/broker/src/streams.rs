//! Positioned streams (PROTOCOL.md §10): per channel, while positioned subscriptions use it, an
//! epoch, a gap-free offset per published event and the last `history_size` events.
//!
//! A stream exists only once [`crate::Broker::open_stream`] made it. Publishing into a channel
//! with a stream takes the next offset, appends the event to the history and publishes it with
//! its position, all in one step; a channel without one is published plainly. A stream unused
//! for `history_ttl` (no open, no event) expires; opening it again starts a new epoch, as does
//! losing it any other way (Redis restarted or flushed), so a position from before is never
//! mistaken for a current one.

use std::time::Duration;

use bytes::Bytes;
use sha1::{Digest, Sha1};

/// Default number of events a stream keeps.
pub const DEFAULT_HISTORY_SIZE: usize = 1000;
/// Default time a stream outlives its last open or event.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(300);

/// The Lua functions that publish an event, for every script that publishes (the broker's
/// batches, the registry's lifecycle events): `publish_all(channels, payload, history size,
/// history TTL in ms)`. A channel with a stream (its meta hash exists) takes the next offset
/// and keeps the event in its history; a channel with a subscriber is published to, with the
/// event's position if it has a stream. `publish_all` first asks, in one command each,
/// whether any of the channels has a stream and which have subscribers, and publishes only to
/// those (an event matches up to 8 channels, most of them with nobody on them). Within a
/// script no SUBSCRIBE can come between the count and the PUBLISH.
///
/// On a Redis Cluster a caller sets `KP` to `{tag}` of the slot its channels share (see
/// [`crate::slot_tag`]) by calling `sharded('{tag}')`, which puts the stream keys in that
/// slot and publishes with `SPUBLISH`.
pub const LUA_PUBLISH_EVENT: &str = r#"
local KP, PUB, NUMSUB = '', 'PUBLISH', 'NUMSUB'
-- Whether this call has renewed `sb:streams` yet: once per call is enough, every event of a
-- call is published at the same instant.
local STREAMS_RENEWED = false
-- Whether `sb:streams` exists, asked once per call: a script runs atomically, with keys'
-- expiry frozen, and no publishing script deletes it (opening a stream, another script,
-- creates it).
local STREAMS_EXIST = nil
local function sharded(tag)
  KP = tag
  -- Another tag means other keys.
  STREAMS_RENEWED, STREAMS_EXIST = false, nil
  if KP ~= '' then PUB, NUMSUB = 'SPUBLISH', 'SHARDNUMSUB' end
end
local function publish_event(channel, payload, size, ttl, subscribed)
  local meta = 'sb:pos:' .. KP .. channel
  local found = redis.call('HMGET', meta, 'epoch', 'name')
  if found[1] then
    local offset = redis.call('HINCRBY', meta, 'top', 1)
    local history = 'sb:hist:' .. KP .. channel
    redis.call('XADD', history, 'MAXLEN', size, offset .. '-1', 'p', payload)
    redis.call('PEXPIRE', meta, ttl)
    redis.call('PEXPIRE', history, ttl)
    if not STREAMS_RENEWED then
      redis.call('SET', 'sb:streams' .. KP, '1', 'PX', ttl)
      STREAMS_RENEWED = true
    end
    if subscribed then
      redis.call(PUB, channel, '{"pos":{"stream":"' .. found[2] .. '","epoch":"' ..
        found[1] .. '","offset":' .. offset .. '},' .. string.sub(payload, 2))
    end
  elseif subscribed then
    redis.call(PUB, channel, payload)
  end
end
local function publish_all(channels, payload, size, ttl)
  if #channels == 0 then return end
  -- `sb:streams` lives while any stream may: without it, no channel has one.
  local streams = false
  if STREAMS_EXIST == nil then
    STREAMS_EXIST = redis.call('EXISTS', 'sb:streams' .. KP) == 1
  end
  if STREAMS_EXIST then
    local metas = {}
    for i, channel in ipairs(channels) do metas[i] = 'sb:pos:' .. KP .. channel end
    streams = redis.call('EXISTS', unpack(metas)) > 0
  end
  local counts = redis.call('PUBSUB', NUMSUB, unpack(channels))
  for i, channel in ipairs(channels) do
    local subscribed = counts[2 * i] > 0
    if streams then
      publish_event(channel, payload, size, ttl, subscribed)
    elseif subscribed then
      redis.call(PUB, channel, payload)
    end
  end
end
"#;

/// Most events one history read returns: at the 64 KiB event body limit, a page stays well
/// under a gRPC message's 16 MiB.
pub const HISTORY_PAGE: usize = 100;

/// How long streams live and how much they keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Events kept per stream.
    pub history_size: usize,
    /// A stream expires this long after its last open or event.
    pub history_ttl: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            history_size: DEFAULT_HISTORY_SIZE,
            history_ttl: DEFAULT_HISTORY_TTL,
        }
    }
}

/// A stream as opened: its name, its epoch and the offset of its last event (0 if none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTop {
    /// The stream's name: the same for every subscription with the same key (hex SHA-1 of its
    /// channel, JSON-safe).
    pub stream: String,
    /// The current epoch.
    pub epoch: String,
    /// The last offset.
    pub offset: u64,
}

/// What the history holds after a position (one page of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum History {
    /// The events after the position, in order: `(offset, payload without position)`, as
    /// many as the page holds (all of them when `events` ends at `top`).
    Complete {
        /// The stream's last offset when read.
        top: u64,
        /// The events after the position.
        events: Vec<(u64, Bytes)>,
    },
    /// Another epoch, an offset beyond the top, more than the caller's maximum, or events the
    /// history no longer holds.
    Unrecoverable,
}

/// The name of the stream of `channel`.
pub fn stream_name(channel: &str) -> String {
    let digest = Sha1::digest(channel.as_bytes());
    let mut name = String::with_capacity(40);
    for byte in digest {
        use std::fmt::Write as _;
        let _ = write!(name, "{byte:02x}");
    }
    name
}

/// `payload` (a JSON object) with its position as a leading `pos` member.
pub fn positioned_payload(payload: &[u8], stream: &str, epoch: &str, offset: u64) -> Bytes {
    let rest = payload.get(1..).unwrap_or_default();
    let mut out = Vec::with_capacity(payload.len() + stream.len() + epoch.len() + 48);
    out.extend_from_slice(b"{\"pos\":{\"stream\":\"");
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(b"\",\"epoch\":\"");
    out.extend_from_slice(epoch.as_bytes());
    out.extend_from_slice(format!("\",\"offset\":{offset}}},").as_bytes());
    out.extend_from_slice(rest);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_positioned_payload_is_the_event_with_a_leading_pos() {
        let payload = positioned_payload(br#"{"class":"a","body":{"n":1}}"#, "ab", "e1", 7);
        let value: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
        assert_eq!(value["pos"]["stream"], "ab");
        assert_eq!(value["pos"]["epoch"], "e1");
        assert_eq!(value["pos"]["offset"], 7);
        assert_eq!(value["body"]["n"], 1);
        assert_eq!(stream_name("x").len(), 40);
        assert_ne!(stream_name("x"), stream_name("y"));
    }
}
