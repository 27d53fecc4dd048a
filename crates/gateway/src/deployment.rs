//! The whole deployment as one gateway can see it: the gateways the registry heard from, each
//! with what it holds (asked over its SessionControl). For the console's overview.

use serde_json::{Value, json};
use switchboard_proto::v1::{ListGatewaysRequest, StatsRequest};

use crate::gateway::Gateway;

/// Every gateway heard from within the registry's gateway timeout, with its stats (or why
/// they could not be read), and the totals: `{"gateways": [...], "totals": {...}}`.
///
/// # Errors
/// The registry's status when it cannot list the gateways.
pub async fn overview(gateway: &Gateway) -> Result<Value, tonic::Status> {
    let services = &gateway.services;
    let listed = services
        .registry
        .clone()
        .list_gateways(services.request(ListGatewaysRequest {}))
        .await?
        .into_inner()
        .gateways;
    let asked = listed.iter().map(|info| async move {
        if info.control_addr.is_empty() {
            return Err("its heartbeats carry no address yet".to_owned());
        }
        let client = services
            .control(&info.control_addr)
            .map_err(|error| error.message)?;
        client
            .clone()
            .stats(services.request(StatsRequest {}))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| status.message().to_owned())
    });
    let answers = futures_util::future::join_all(asked).await;
    let (mut connections, mut sessions, mut subscriptions) = (0, 0, 0);
    let gateways: Vec<Value> = listed
        .iter()
        .zip(answers)
        .map(|(info, answer)| match answer {
            Ok(stats) => {
                connections += stats.connections;
                sessions += stats.sessions;
                subscriptions += stats.subscriptions;
                json!({
                    "gateway": info.gateway_id,
                    "address": info.control_addr,
                    "connections": stats.connections,
                    "sessions": stats.sessions,
                    "subscriptions": stats.subscriptions,
                    "uptime_seconds": stats.uptime_seconds,
                    "version": stats.version,
                })
            }
            Err(error) => json!({
                "gateway": info.gateway_id,
                "address": info.control_addr,
                "error": error,
            }),
        })
        .collect();
    Ok(json!({
        "gateways": gateways,
        "totals": {
            "gateways": listed.len(),
            "connections": connections,
            "sessions": sessions,
            "subscriptions": subscriptions,
        },
    }))
}
