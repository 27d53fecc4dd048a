//! The gateway's shared context: configuration, local state, service clients, GELF sender.

use std::sync::Arc;
use std::time::Duration;

use switchboard_proto::internal::InternalSecret;
use switchboard_proto::v1::{HeartbeatRequest, SessionInfo, UnregisterRequest};

use crate::clients::Services;
use crate::config::Config;
use crate::gelf::GelfSender;
use crate::hub::Hub;
use crate::publisher::Publisher;

/// Attempts to unregister a closed session before giving up.
const UNREGISTER_ATTEMPTS: u32 = 3;

/// Session `type` of WebSocket clients (PROTOCOL.md §4).
pub const SESSION_TYPE: &str = "api_server";

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
        }
    }

    /// Removes one of this gateway's sessions from the registry, retrying a few times; if
    /// the registry stays unreachable the session is logged, and a restarted gateway's
    /// sessions are reaped with it.
    pub async fn unregister(&self, session_id: &str) {
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=UNREGISTER_ATTEMPTS {
            let request = self.services.request(UnregisterRequest {
                session_id: session_id.to_owned(),
                gateway_id: self.config.gateway_id.clone(),
            });
            match self.services.registry.clone().unregister(request).await {
                Ok(_) => return,
                Err(status) if attempt == UNREGISTER_ATTEMPTS => {
                    tracing::warn!(session.id = session_id, code = ?status.code(), "unregister failed");
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait *= 4;
                }
            }
        }
    }

    /// Sends one heartbeat with every local session, so a restarted registry re-learns them.
    pub async fn heartbeat(&self, sessions: Vec<SessionInfo>) {
        let request = self.services.request(HeartbeatRequest {
            gateway_id: self.config.gateway_id.clone(),
            sessions,
        });
        if let Err(status) = self.services.registry.clone().heartbeat(request).await {
            tracing::warn!(code = ?status.code(), "heartbeat failed");
        }
    }
}
