//! The internal network is closed: a gRPC call without the shared secret is refused by every
//! service, and production roles refuse to start without one.

use std::time::Duration;

use switchboard_proto::v1::auth_client::AuthClient;
use switchboard_proto::v1::session_control_client::SessionControlClient;
use switchboard_proto::v1::session_registry_client::SessionRegistryClient;
use switchboard_proto::v1::{ListUsersRequest, LoginRequest, StopRequest};
use tokio::process::Command;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

async fn channel(address: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

#[tokio::test]
async fn internal_calls_without_the_secret_are_refused() {
    let running = crate::common::start().await;
    let login = LoginRequest {
        user: "admin".into(),
        password: crate::common::ADMIN_PASSWORD.into(),
        ..LoginRequest::default()
    };

    let auth = channel(running.auth_addr).await;
    let refused = AuthClient::new(auth.clone())
        .login(login.clone())
        .await
        .expect_err("auth refuses a stranger");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let reply = AuthClient::new(running.secret.channel(auth))
        .login(login)
        .await
        .expect("auth accepts the credential");
    assert_eq!(reply.into_inner().user, "admin");

    let registry = channel(running.registry_addr).await;
    let refused = SessionRegistryClient::new(registry.clone())
        .list_users(ListUsersRequest::default())
        .await
        .expect_err("registry refuses a stranger");
    assert_eq!(refused.code(), Code::Unauthenticated);
    SessionRegistryClient::new(running.secret.channel(registry))
        .list_users(ListUsersRequest::default())
        .await
        .expect("registry accepts the credential");

    let control = channel(running.control_addrs[0]).await;
    let refused = SessionControlClient::new(control)
        .stop(StopRequest {
            session_id: "any".into(),
            taken_over: false,
        })
        .await
        .expect_err("a gateway's SessionControl refuses a stranger");
    assert_eq!(refused.code(), Code::Unauthenticated);

    // Clients still work end to end through the same services.
    let mut admin = crate::common::Client::admin(&running).await;
    admin.ok("user", "list", serde_json::json!({})).await;
    running.stop().await;
}

#[tokio::test]
async fn production_roles_need_a_valid_secret() {
    for role in ["auth", "registry", "bus", "gateway"] {
        let output = tokio::time::timeout(
            Duration::from_secs(20),
            Command::new(env!("CARGO_BIN_EXE_switchboard"))
                .args([
                    role,
                    "--admin-password",
                    "x",
                    "--grpc-listen",
                    "127.0.0.1:0",
                ])
                .env_remove("SWITCHBOARD_INTERNAL_SECRET")
                .env_remove("SWITCHBOARD_CONFIG")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("exits in time")
        .expect("runs");
        assert!(!output.status.success(), "{role} starts without a secret");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("SWITCHBOARD_INTERNAL_SECRET"),
            "{role}: {stderr}"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["registry", "--internal-secret", "tiny-pw"])
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .await
        .expect("runs");
    assert_eq!(
        output.status.code(),
        Some(64),
        "a short secret is a usage error"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 16"), "{stderr}");
    assert!(
        !stderr.contains("tiny-pw"),
        "the secret is not echoed: {stderr}"
    );
}
