//! The gateway's shared context: configuration, local state, service clients, GELF sender.

use std::sync::Arc;
use std::time::Duration;

use switchboard_proto::internal::InternalSecret;
use switchboard_proto::v1::{SessionInfo, UnregisterManyRequest};
use tokio::sync::{mpsc, oneshot};

use crate::clients::Services;
use crate::config::Config;
use crate::gelf::GelfSender;
use crate::hub::Hub;
use crate::outbound::{CLOSE_NORMAL, CLOSE_TAKEN_OVER};
use crate::prelogin::PreloginCounts;
use crate::publisher::Publisher;
use crate::reply::session_not_found;
use crate::server_request::{self, CmdRequest, CmdTiming};
use crate::session::{CmdAnswer, SessionHandle};
use switchboard_protocol::ApiError;
use switchboard_protocol::presence::reason;

/// Attempts to unregister a batch of closed sessions before giving up.
const UNREGISTER_ATTEMPTS: u32 = 3;
/// Most sessions in one `UnregisterMany`.
const UNREGISTER_BATCH: usize = 512;
/// Closed sessions waiting for their batch; past it closing connections wait.
const UNREGISTER_QUEUE: usize = 16_384;
/// How long a batch of closed sessions waits for more before it goes out. A session stays
/// listed this much longer after its connection closed; a close costs a fraction of a
/// registry call instead of a whole one.
const UNREGISTER_LINGER: Duration = Duration::from_millis(5);

/// Session `type` of WebSocket clients (PROTOCOL.md §4).
pub const SESSION_TYPE: &str = "api_server";

impl Gateway {
    /// Where positioned subscriptions read streams' history: the bus.
    pub(crate) fn history(&self) -> &dyn crate::positioned::HistorySource {
        &self.services
    }

    /// [`Gateway::history`], shared with a task.
    pub(crate) fn history_source(&self) -> Arc<dyn crate::positioned::HistorySource> {
        Arc::new(self.services.clone())
    }
}

/// Everything a connection task or the SessionControl service needs.
#[derive(Debug)]
pub struct Gateway {
    /// Settings.
    pub config: Config,
    /// Local sessions and subscriptions.
    pub hub: Arc<Hub>,
    /// Clients of the internal services.
    pub services: Services,
    /// Where `session log` goes.
    pub gelf: GelfSender,
    /// Batches `send_event`s towards the bus.
    pub publisher: Publisher,
    /// The internal credential, required by SessionControl and sent on every call.
    pub secret: InternalSecret,
    /// Closed sessions on their way to the registry (see [`Gateway::unregister`]).
    pub(crate) unregistrations: mpsc::Sender<Unregistration>,
    /// Connections waiting to log in, per client address.
    pub(crate) prelogin: Arc<PreloginCounts>,
    /// When the gateway was built (its uptime in `SessionControl.Stats`).
    pub(crate) started: std::time::Instant,
}

/// One entry of the unregistering task's queue.
#[derive(Debug)]
pub(crate) enum Unregistration {
    /// A closed session, why it ended (its `stopped` event's reason), and who waits until its
    /// batch has been sent (it lingers like any other: a burst of closes still shares one
    /// call).
    Session(String, &'static str, Option<oneshot::Sender<()>>),
    /// Answered once every session queued before it has been sent.
    Flush(oneshot::Sender<()>),
}

/// Starts the task that unregisters closed sessions: the closes of [`UNREGISTER_LINGER`]
/// (and everything queued while a call is in flight) go in one call, so a stream of closes
/// costs a few registry calls, not one each.
pub(crate) fn start_unregistrations(
    services: Services,
    gateway_id: String,
) -> mpsc::Sender<Unregistration> {
    let (tx, mut rx) = mpsc::channel(UNREGISTER_QUEUE);
    tokio::spawn(async move {
        let mut queued = Vec::with_capacity(UNREGISTER_BATCH);
        while rx.recv_many(&mut queued, UNREGISTER_BATCH).await > 0 {
            let flushing = queued
                .iter()
                .any(|entry| matches!(entry, Unregistration::Flush(_)));
            if !flushing && queued.len() < UNREGISTER_BATCH {
                tokio::time::sleep(UNREGISTER_LINGER).await;
                while queued.len() < UNREGISTER_BATCH {
                    match rx.try_recv() {
                        Ok(entry) => queued.push(entry),
                        Err(_) => break,
                    }
                }
            }
            let mut session_ids = Vec::with_capacity(queued.len());
            let mut flushes = Vec::new();
            for entry in queued.drain(..) {
                match entry {
                    Unregistration::Session(session_id, why, waiter) => {
                        session_ids.push((session_id, why));
                        flushes.extend(waiter);
                    }
                    Unregistration::Flush(done) => flushes.push(done),
                }
            }
            if !session_ids.is_empty() {
                unregister_batch(&services, &gateway_id, session_ids).await;
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    });
    tx
}

/// Removes a batch of this gateway's sessions from the registry, retrying a few times; if
/// the registry stays unreachable the sessions are logged, and a restarted gateway's
/// sessions are reaped with it.
async fn unregister_batch(
    services: &Services,
    gateway_id: &str,
    sessions: Vec<(String, &'static str)>,
) {
    let mut wait = Duration::from_millis(100);
    let (session_ids, reasons): (Vec<String>, Vec<String>) = sessions
        .into_iter()
        .map(|(id, why)| (id, why.to_owned()))
        .unzip();
    for attempt in 1..=UNREGISTER_ATTEMPTS {
        let request = services.request(UnregisterManyRequest {
            session_ids: session_ids.clone(),
            gateway_id: gateway_id.to_owned(),
            reasons: reasons.clone(),
        });
        match services.registry.clone().unregister_many(request).await {
            Ok(_) => return,
            Err(status) if attempt == UNREGISTER_ATTEMPTS => {
                tracing::warn!(
                    sessions = session_ids.len(),
                    code = ?status.code(),
                    "unregister failed"
                );
            }
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait *= 4;
            }
        }
    }
}

impl Gateway {
    /// Builds the registry record of a local session.
    pub fn session_info(
        &self,
        session_id: &str,
        user: &str,
        service: &str,
        remote: &str,
        meta_json: String,
        resume_hash: String,
    ) -> SessionInfo {
        SessionInfo {
            session_id: session_id.to_owned(),
            service: service.to_owned(),
            user: user.to_owned(),
            r#type: SESSION_TYPE.to_owned(),
            remote: remote.to_owned(),
            meta_json,
            gateway_id: self.config.gateway_id.clone(),
            control_addr: self.config.control_addr.clone(),
            resume_hash,
        }
    }

    /// Queues one of this gateway's sessions for removal from the registry; it goes out with
    /// the next batch (at once when none is in flight).
    pub async fn unregister(&self, session_id: &str) {
        let entry = Unregistration::Session(session_id.to_owned(), reason::CLOSED, None);
        if self.unregistrations.send(entry).await.is_err() {
            tracing::warn!(session.id = session_id, "unregister dropped: task ended");
        }
    }

    /// Removes one of this gateway's sessions from the registry at once (with retries),
    /// outside the batches: for a login being rolled back, whose client may retry with the
    /// same session id as soon as it has its answer.
    pub async fn unregister_now(&self, session_id: &str) {
        let sessions = vec![(session_id.to_owned(), reason::CLOSED)];
        unregister_batch(&self.services, &self.config.gateway_id, sessions).await;
    }

    /// The gauges read from this gateway's state at scrape time, and the counts other
    /// parts keep (subscriber reconnections, GELF drops).
    pub fn scrape_series(&self) -> switchboard_admin::ScrapeSeries {
        let (hub, gelf) = (Arc::clone(&self.hub), self.gelf.clone());
        let counts = move |read: fn(&Hub) -> usize| {
            let hub = Arc::clone(&hub);
            move || i64::try_from(read(&hub)).unwrap_or(i64::MAX)
        };
        let health = Arc::clone(&self.hub.subscriber_health);
        switchboard_admin::ScrapeSeries::default()
            .gauge(
                "switchboard_connections",
                "Open WebSocket connections",
                counts(Hub::connection_count),
            )
            .gauge(
                "switchboard_sessions",
                "Logged-in sessions on this gateway",
                counts(Hub::session_count),
            )
            .gauge(
                "switchboard_subscriptions",
                "Subscriptions of this gateway's sessions",
                counts(|hub| hub.routes.counts().1),
            )
            .gauge(
                "switchboard_redis_channels",
                "Broker channels this gateway subscribes",
                counts(|hub| hub.routes.counts().0),
            )
            .counter(
                "switchboard_subscriber_reconnections",
                "Times the broker subscriber reconnected and subscribed again",
                move || health.reconnections(),
            )
            .counter(
                "switchboard_gelf_dropped",
                "session log records dropped (GELF queue full or send failed)",
                move || gelf.dropped(),
            )
    }

    /// What this gateway holds now, and what it is (`SessionControl.Stats`).
    pub fn stats(&self) -> switchboard_proto::v1::StatsReply {
        switchboard_proto::v1::StatsReply {
            gateway_id: self.config.gateway_id.clone(),
            connections: self.hub.connection_count() as u64,
            sessions: self.hub.session_count() as u64,
            subscriptions: self.hub.routes.counts().1 as u64,
            uptime_seconds: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// Checks that the broker subscriber is connected (for readiness).
    ///
    /// # Errors
    /// Says why not.
    pub fn subscriber_ready(&self) -> Result<(), String> {
        if self.hub.subscriber_health.connected() {
            Ok(())
        } else {
            Err("the broker subscriber is not connected".to_owned())
        }
    }

    /// Takes a logged-in session out of the hub and the registry, once, and waits until the
    /// registry has let it go: from then on its id is free for a new login, anywhere. Called
    /// before anything tells the client its session ended (an answer to `session stop`, a
    /// close frame), so a client that logs in again at once is never refused.
    pub async fn release(&self, session: &SessionHandle, why: &'static str) {
        let Some(identity) = session.identity() else {
            return;
        };
        if !session.mark_released() {
            return;
        }
        self.hub
            .remove_session_of(&identity.session_id, session.conn_id);
        let (done_tx, done_rx) = oneshot::channel();
        let entry = Unregistration::Session(identity.session_id.clone(), why, Some(done_tx));
        if self.unregistrations.send(entry).await.is_ok() {
            let _ = done_rx.await;
        }
    }

    /// A logged-in session of this gateway (one still logging in is not visible yet).
    fn logged_in_session(&self, session_id: &str) -> Result<Arc<SessionHandle>, ApiError> {
        self.hub
            .session(session_id)
            .filter(|session| session.identity().is_some())
            .ok_or_else(session_not_found)
    }

    /// Sends `session cmd` to a local session and waits for its answer.
    ///
    /// # Errors
    /// `session_not_found` (not here, or still logging in), `session_stopped` or `timeout`.
    pub async fn session_cmd(
        &self,
        session_id: &str,
        request: CmdRequest<'_>,
    ) -> Result<CmdAnswer, ApiError> {
        let session = self.logged_in_session(session_id)?;
        server_request::send(&session, request, CmdTiming::of(&self.config)).await
    }

    /// Stops a local session: releases it, then closes it with 1000; returns its user.
    ///
    /// # Errors
    /// `session_not_found` when this gateway does not hold it (or it is still logging in).
    pub async fn stop(&self, session_id: &str) -> Result<String, ApiError> {
        let session = self.logged_in_session(session_id)?;
        let user = session
            .identity()
            .map(|identity| identity.user.clone())
            .unwrap_or_default();
        self.release(&session, reason::STOPPED).await;
        session.close(CLOSE_NORMAL, "session stopped");
        Ok(user)
    }

    /// Ends the local connection of a session taken over by a login elsewhere: closed with
    /// 4002 after what is queued, and neither unregistered nor taken out of the hub by this
    /// connection (both now belong to the new one); returns its user.
    ///
    /// # Errors
    /// `session_not_found` when this gateway does not hold it.
    pub fn end_taken_over(&self, session_id: &str) -> Result<String, ApiError> {
        let session = self.logged_in_session(session_id)?;
        Ok(Self::close_taken_over(&session))
    }

    /// Closes `session`'s connection as taken over (see [`Gateway::end_taken_over`]).
    pub(crate) fn close_taken_over(session: &SessionHandle) -> String {
        session.mark_released();
        session.close(CLOSE_TAKEN_OVER, "session taken over");
        session
            .identity()
            .map(|identity| identity.user.clone())
            .unwrap_or_default()
    }

    /// Waits until every session queued for unregistering so far has been sent.
    pub async fn flush_unregistrations(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self
            .unregistrations
            .send(Unregistration::Flush(done_tx))
            .await
            .is_ok()
        {
            let _ = done_rx.await;
        }
    }
}
