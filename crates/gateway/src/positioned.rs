//! Positioned subscriptions at the gateway (PROTOCOL.md §10): the delivery flow of one
//! subscription whose events carry positions.
//!
//! A positioned subscription is added to the route index *holding*: live events are kept
//! while its reply and its replay go out, then released past what was replayed. Once live,
//! each event must be the next offset of its stream: an older one is a duplicate and dropped;
//! a later one means events were missed (the gateway's Redis subscriber reconnected, or
//! delivery fell behind), so the flow holds again while the missing range is read from the
//! stream's history and delivered in order. When the history no longer has it, or the
//! stream's epoch changed, the subscriber gets a `core/session_event/stream_gap/<session_id>`
//! event, and delivery goes on.

use std::sync::{Arc, Mutex, OnceLock};

use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use switchboard_protocol::ApiError;
use switchboard_protocol::event::{EventMessage, EventPosition};
use switchboard_sync::Lock;

use crate::outbound::{CLOSE_POLICY, Outbound};
use crate::session::SessionHandle;

/// Most live events held for one subscription while its replay or a repair goes out; past
/// it the connection is closed as a slow consumer (1008).
pub(crate) const MAX_HELD: usize = 10_000;
/// Most events read back to repair one gap.
pub(crate) const MAX_REPAIR: u64 = 100_000;

/// One page of a stream's history, as the bus serves it.
#[derive(Debug, Default)]
pub struct HistoryPage {
    /// False when the history cannot give every event after the position.
    pub recoverable: bool,
    /// The stream's last offset when read.
    pub top: u64,
    /// The events after the position, in offset order, as published (without position).
    pub payloads: Vec<Vec<u8>>,
}

/// Where a gateway reads streams' history: the event bus.
pub trait HistorySource: std::fmt::Debug + Send + Sync + 'static {
    /// One page of `channel`'s history after `after` in `epoch`; unrecoverable past `max`.
    fn read(
        &self,
        channel: String,
        epoch: String,
        after: u64,
        max: u64,
    ) -> BoxFuture<'static, Result<HistoryPage, ApiError>>;
}

/// Reads every event of `channel`'s stream after `after` in `epoch`, page by page, up to the
/// top when read: `None` when the history cannot give them all.
///
/// # Errors
/// The source's error (the bus unreachable).
pub(crate) async fn read_all(
    source: &dyn HistorySource,
    channel: &str,
    epoch: &str,
    after: u64,
    max: u64,
) -> Result<Option<Vec<(u64, EventMessage)>>, ApiError> {
    let mut events = Vec::new();
    let mut next = after;
    loop {
        let page = source
            .read(channel.to_owned(), epoch.to_owned(), next, max)
            .await?;
        if !page.recoverable {
            return Ok(None);
        }
        if page.payloads.is_empty() {
            return Ok(Some(events));
        }
        for payload in page.payloads {
            next += 1;
            match serde_json::from_slice::<EventMessage>(&payload) {
                Ok(event) => events.push((next, event)),
                Err(error) => {
                    tracing::error!(%error, channel, "undecodable event in history");
                    return Ok(None);
                }
            }
        }
        if next >= page.top {
            return Ok(Some(events));
        }
    }
}

/// An event's position with its `pos` JSON, made once per event and shared by every
/// positioned subscriber of it.
#[derive(Debug)]
pub(crate) struct Located {
    pub(crate) pos: EventPosition,
    pub(crate) json: Arc<str>,
}

impl Located {
    pub(crate) fn new(pos: EventPosition) -> Arc<Self> {
        let json = Arc::from(pos.to_json());
        Arc::new(Self { pos, json })
    }
}

/// A live event held for later, already shaped for its subscriber.
#[derive(Debug)]
struct Held {
    pos: Option<Arc<Located>>,
    data: Arc<str>,
}

#[derive(Debug)]
enum Flow {
    /// A reply and replay, or a repair, are on their way: live events wait.
    Holding(Vec<Held>),
    /// Delivering: `last` is the offset last delivered in `epoch`.
    Live { epoch: String, last: u64 },
}

/// Events a flow asks to be read back: those after `after` in `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gap {
    pub(crate) epoch: String,
    pub(crate) after: u64,
}

/// The delivery flow of one positioned subscription.
#[derive(Debug)]
pub struct Positioned {
    /// The subscription's broker channel.
    pub(crate) channel: Arc<str>,
    body: Arc<Map<String, Value>>,
    session: Arc<SessionHandle>,
    stream: OnceLock<String>,
    flow: Mutex<Flow>,
}

impl Positioned {
    /// A flow holding live events until [`Positioned::go_live`].
    pub(crate) fn new(
        channel: Arc<str>,
        body: Arc<Map<String, Value>>,
        session: Arc<SessionHandle>,
    ) -> Arc<Self> {
        Arc::new(Self {
            channel,
            body,
            session,
            stream: OnceLock::new(),
            flow: Mutex::new(Flow::Holding(Vec::new())),
        })
    }

    /// Names the stream (known once it is opened).
    pub(crate) fn set_stream(&self, stream: String) {
        let _ = self.stream.set(stream);
    }

    /// Offers a live event shaped for this subscriber; a gap to repair when it shows events
    /// were missed.
    pub(crate) fn offer(&self, data: Arc<str>, pos: Option<&Arc<Located>>) -> Option<Gap> {
        let held = Held {
            pos: pos.map(Arc::clone),
            data,
        };
        let mut flow = self.flow.locked();
        self.offer_locked(&mut flow, held)
    }

    fn offer_locked(&self, flow: &mut Flow, event: Held) -> Option<Gap> {
        let (epoch, last) = match flow {
            Flow::Holding(held) => {
                if held.len() >= MAX_HELD {
                    crate::metrics::METRICS.count_slow_consumer();
                    self.session
                        .kill(CLOSE_POLICY, "slow consumer: too many events held");
                } else {
                    held.push(event);
                }
                return None;
            }
            Flow::Live { epoch, last } => (epoch, last),
        };
        let Some(located) = event.pos else {
            // Published while the stream did not exist (it was lost and not yet reopened).
            self.session.push_event(event.data);
            return None;
        };
        let pos = &located.pos;
        if pos.epoch != *epoch {
            self.notify_gap(epoch, *last, "epoch_changed");
            epoch.clone_from(&pos.epoch);
            *last = pos.offset;
            let json = Arc::clone(&located.json);
            self.session
                .push_now(Outbound::Positioned(event.data, json));
            return None;
        }
        if pos.offset <= *last {
            return None;
        }
        if pos.offset == *last + 1 {
            *last = pos.offset;
            let json = Arc::clone(&located.json);
            self.session
                .push_now(Outbound::Positioned(event.data, json));
            return None;
        }
        let gap = Gap {
            epoch: epoch.clone(),
            after: *last,
        };
        *flow = Flow::Holding(vec![Held {
            pos: Some(located),
            data: event.data,
        }]);
        Some(gap)
    }

    /// Releases the held events past `last` of `epoch` and delivers live from there; a gap
    /// to repair when the held events show one.
    pub(crate) fn go_live(&self, epoch: String, last: u64) -> Option<Gap> {
        let mut flow = self.flow.locked();
        let held = match std::mem::replace(&mut *flow, Flow::Live { epoch, last }) {
            Flow::Holding(held) => held,
            Flow::Live { .. } => Vec::new(),
        };
        let mut gap = None;
        for event in held {
            if let Some(found) = self.offer_locked(&mut flow, event) {
                gap = Some(found);
            }
        }
        gap
    }

    /// The offset before the first held positioned event of `epoch`: where delivery goes on
    /// when the events before it cannot be read back.
    fn resume_point(&self, epoch: &str, fallback: u64) -> u64 {
        let flow = self.flow.locked();
        let Flow::Holding(held) = &*flow else {
            return fallback;
        };
        held.iter()
            .find_map(|event| event.pos.as_ref().filter(|at| at.pos.epoch == epoch))
            .map_or(fallback, |at| at.pos.offset.saturating_sub(1).max(fallback))
    }

    /// Sends one event read back from the history, waiting for room in the queue; false when
    /// the connection is gone.
    pub(crate) async fn send_replayed(
        &self,
        event: &EventMessage,
        epoch: &str,
        offset: u64,
    ) -> bool {
        let data: Arc<str> = Arc::from(
            event
                .frame_data(&self.body, &self.session.service)
                .to_string(),
        );
        let pos = EventPosition {
            stream: self.stream.get().cloned().unwrap_or_default(),
            epoch: epoch.to_owned(),
            offset,
        };
        self.session
            .send(Outbound::Positioned(data, Arc::from(pos.to_json())))
            .await
    }

    /// Tells the subscriber that the events after `after` in `epoch` will not come.
    fn notify_gap(&self, epoch: &str, after: u64, reason: &str) {
        let Some(identity) = self.session.identity() else {
            return;
        };
        let data = json!({
            "class": "core",
            "subclass": "session_event",
            "type": "stream_gap",
            "obj_id": identity.session_id,
            "body": {
                "stream": self.stream.get().cloned().unwrap_or_default(),
                "epoch": epoch,
                "after": after,
                "reason": reason,
            },
        });
        self.session.push_event(Arc::from(data.to_string()));
    }
}

/// Repairs `gap` and those found while doing so: reads the missing events back, delivers
/// them, then releases what was held meanwhile.
pub(crate) async fn repair(positioned: Arc<Positioned>, source: Arc<dyn HistorySource>, gap: Gap) {
    let mut gap = gap;
    loop {
        let read = read_all(
            &*source,
            &positioned.channel,
            &gap.epoch,
            gap.after,
            MAX_REPAIR,
        )
        .await;
        let last = match read {
            Ok(Some(events)) => {
                tracing::info!(
                    channel = &*positioned.channel,
                    after = gap.after,
                    events = events.len(),
                    "positioned subscription: gap repaired from history"
                );
                let mut last = gap.after;
                for (offset, event) in events {
                    if !positioned.send_replayed(&event, &gap.epoch, offset).await {
                        return;
                    }
                    last = offset;
                }
                last
            }
            outcome => {
                if let Err(error) = outcome {
                    tracing::warn!(%error, "stream history unavailable; the gap stays");
                }
                positioned.notify_gap(&gap.epoch, gap.after, "history_lost");
                positioned.resume_point(&gap.epoch, gap.after)
            }
        };
        match positioned.go_live(gap.epoch.clone(), last) {
            Some(next) => gap = next,
            None => return,
        }
    }
}
