//! A gateway and the registry agree on its sessions through heartbeats of a count and a
//! digest: what the registry holds that the gateway has let go is removed, and a session the
//! registry refuses to take back (stopped behind the gateway's back) is closed.

use std::time::{Duration, Instant};

use crate::common::Client;
use serde_json::json;
use switchboard_proto::v1::session_registry_client::SessionRegistryClient;
use switchboard_proto::v1::{LookupRequest, RegisterRequest, SessionInfo, UnregisterRequest};
use tonic::transport::Endpoint;

#[tokio::test]
async fn the_registry_converges_on_what_the_gateway_holds() {
    let running = crate::common::start_with(|config| {
        config.gateway.heartbeat_interval = Duration::from_millis(100);
    })
    .await;
    let channel = Endpoint::from_shared(format!("http://{}", running.registry_addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut registry = SessionRegistryClient::new(running.secret.channel(channel));
    let mut alice = Client::login_to(&running, 0, "alice", "alice-pw").await;
    let held = registry
        .lookup(LookupRequest {
            session_id: alice.session_id.clone(),
        })
        .await
        .expect("alice is registered")
        .into_inner()
        .session
        .expect("session");

    // A session the registry lists for this gateway, which the gateway does not hold.
    let ghost = SessionInfo {
        session_id: "ghost".into(),
        user: "ghost".into(),
        ..held.clone()
    };
    registry
        .register(RegisterRequest {
            session: Some(ghost),
            takeover_hash: String::new(),
        })
        .await
        .expect("register");
    let started = Instant::now();
    while registry
        .lookup(LookupRequest {
            session_id: "ghost".into(),
        })
        .await
        .is_ok()
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the ghost is removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice.ok("session", "ping", json!({})).await;

    // Alice's session removed behind the gateway's back (a backend's unregister): the
    // registry will not take it back, and the gateway closes it.
    registry
        .unregister(UnregisterRequest {
            session_id: alice.session_id.clone(),
            gateway_id: String::new(),
        })
        .await
        .expect("unregister");
    assert_eq!(alice.closed().await, 1008);
    running.stop().await;
}
