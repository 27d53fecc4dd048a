//! The gateway's side of registry liveness.
//!
//! A heartbeat carries only the gateway's id, the number of its logged-in sessions and their
//! digest (`switchboard_proto::digest`), whatever their number. The registry answers with its
//! own count and digest for the gateway; when the two differ on two heartbeats in a row (one
//! difference is usually a login or a close in flight), the gateway reconciles in bounded pages,
//! both ways: ids the registry holds for it that it no longer has are unregistered, and logged-in
//! sessions the registry lost (a restart, a reap of a gateway that was only slow) are re-learned.
//! A session the registry refuses to re-learn (another gateway holds its id now, or it was
//! stopped) is closed here.

use std::collections::HashSet;
use std::sync::Arc;

use switchboard_proto::digest;
use switchboard_proto::v1::{
    GatewaySessionsRequest, HeartbeatRequest, RelearnRequest, SessionInfo, UnregisterManyRequest,
};
use tokio::time::MissedTickBehavior;
use tonic::Status;

use crate::gateway::Gateway;
use crate::metrics::METRICS;

/// Session ids asked for per `GatewaySessions` page.
const PAGE: u32 = 2000;
/// Most sessions per `Relearn` or `UnregisterMany` call of a reconcile.
const BATCH: usize = 1000;
/// Close code of a session the registry no longer lets this gateway hold.
const CLOSE_LOST: u16 = 1008;

/// A count of sessions and their digest, on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    count: u64,
    digest: u64,
}

/// What a reconcile did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Ids the registry held for this gateway that it no longer has.
    pub unregistered: usize,
    /// Local sessions the registry had lost and took back.
    pub relearned: usize,
    /// Local sessions the registry refused, closed here.
    pub closed: usize,
}

/// Heartbeats every `heartbeat_interval`, reconciling on a lasting mismatch, until aborted.
pub(crate) async fn heartbeat_loop(gateway: Arc<Gateway>) {
    let mut interval = tokio::time::interval(gateway.config.heartbeat_interval);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut mismatches = 0u32;
    loop {
        interval.tick().await;
        let outcome = heartbeat(&gateway).await;
        let label = match &outcome {
            Ok(true) => "ok",
            Ok(false) => "mismatch",
            Err(_) => "failed",
        };
        METRICS
            .heartbeats
            .get_or_create(&[("outcome", label)])
            .inc();
        match outcome {
            Ok(true) => mismatches = 0,
            Ok(false) => {
                mismatches += 1;
                if mismatches < 2 {
                    continue;
                }
                mismatches = 0;
                match reconcile(&gateway).await {
                    Ok(done) if done != Reconciled::default() => {
                        tracing::info!(?done, "reconciled sessions with the registry");
                    }
                    Ok(_) => {}
                    Err(status) => tracing::warn!(code = ?status.code(), "reconcile failed"),
                }
            }
            Err(status) => tracing::warn!(code = ?status.code(), "heartbeat failed"),
        }
    }
}

fn local_held(gateway: &Gateway) -> Held {
    let sessions = gateway.hub.all_sessions();
    let mut held = Held {
        count: 0,
        digest: 0,
    };
    for session in &sessions {
        if let Some(identity) = session.identity() {
            held.count += 1;
            held.digest ^= digest::of_id(&identity.session_id);
        }
    }
    held
}

/// Sends one heartbeat; true when the registry holds exactly this gateway's sessions.
///
/// # Errors
/// The registry's status when the call failed.
pub async fn heartbeat(gateway: &Gateway) -> Result<bool, Status> {
    let local = local_held(gateway);
    let request = gateway.services.request(HeartbeatRequest {
        gateway_id: gateway.config.gateway_id.clone(),
        session_count: local.count,
        digest: local.digest,
        control_addr: gateway.config.control_addr.clone(),
    });
    let reply = gateway
        .services
        .registry
        .clone()
        .heartbeat(request)
        .await?
        .into_inner();
    Ok(Held {
        count: reply.session_count,
        digest: reply.digest,
    } == local)
}

/// Brings the registry's record of this gateway's sessions in line with the hub, in pages
/// and batches of bounded size.
///
/// # Errors
/// The registry's status when a call failed; what was done before it stays done.
pub async fn reconcile(gateway: &Gateway) -> Result<Reconciled, Status> {
    let gateway_id = &gateway.config.gateway_id;
    let mut registered = HashSet::new();
    let mut cursor = String::new();
    loop {
        let request = gateway.services.request(GatewaySessionsRequest {
            gateway_id: gateway_id.clone(),
            cursor,
            limit: PAGE,
        });
        let page = gateway
            .services
            .registry
            .clone()
            .gateway_sessions(request)
            .await?
            .into_inner();
        registered.extend(page.session_ids);
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    // The hub is read only now: a login inserts its session here before registering it, so
    // any id the registry listed that the hub lacks is one this gateway has let go.
    let local_ids = gateway.hub.session_ids();
    let local = gateway.hub.all_sessions();
    let stale: Vec<String> = registered
        .iter()
        .filter(|id| !local_ids.contains(id.as_str()))
        .cloned()
        .collect();
    let missing: Vec<SessionInfo> = local
        .iter()
        .filter_map(|session| {
            let identity = session.identity()?;
            (!registered.contains(&identity.session_id)).then(|| {
                gateway.session_info(
                    &identity.session_id,
                    &identity.user,
                    &session.service,
                    &session.remote,
                    identity.meta_json.clone(),
                    identity.resume_hash.clone(),
                )
            })
        })
        .collect();
    drop(local_ids);
    drop(local);
    let mut done = Reconciled::default();
    for chunk in stale.chunks(BATCH) {
        let request = gateway.services.request(UnregisterManyRequest {
            session_ids: chunk.to_vec(),
            gateway_id: gateway_id.clone(),
            reasons: Vec::new(),
        });
        gateway
            .services
            .registry
            .clone()
            .unregister_many(request)
            .await?;
        done.unregistered += chunk.len();
    }
    for chunk in missing.chunks(BATCH) {
        let request = gateway.services.request(RelearnRequest {
            sessions: chunk.to_vec(),
        });
        let refused = gateway
            .services
            .registry
            .clone()
            .relearn(request)
            .await?
            .into_inner()
            .refused;
        done.relearned += chunk.len() - refused.len();
        for session_id in refused {
            if let Some(session) = gateway.hub.session(&session_id) {
                session.close(CLOSE_LOST, "session no longer registered");
                done.closed += 1;
            }
        }
    }
    Ok(done)
}
