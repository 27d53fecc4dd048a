//! A configured policy, rule by rule, and the limits: sessions per user, connections per
//! gateway, requests per second; each answers as documented, is counted on /metrics, and
//! leaves other connections alone.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{Client, user_record};
use serde_json::json;
use switchboard_protocol::policy::Policy;

const POLICY: &str = r#"
[roles."*"]
commands = ["event/*", "session/*", "core/ping"]
subscribe = ["*", "!secret"]
send = ["chat"]

[roles.operator]
commands = ["user/list", "session/stop"]
subscribe = ["secret"]
send = ["*"]
other_users = true
other_services = true
"#;

async fn scrape(address: Option<std::net::SocketAddr>) -> String {
    crate::common::admin_get(address.expect("admin listener"), "/metrics")
        .await
        .1
}

/// The value of the series `name` (with its labels, if any); a labelled series not created
/// yet reads 0.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.parse().ok())
        .or_else(|| name.contains('{').then_some(0))
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

#[tokio::test]
async fn configured_policy_rule_by_rule() {
    let running = crate::common::start_with(|config| {
        config.gateway.policy = Arc::new(Policy::from_toml(POLICY).expect("policy"));
        config
            .auth
            .users
            .push(user_record("olga", "olga-pw", &["operator"]));
        config.admin_listen = Some("127.0.0.1:0".into());
    })
    .await;
    let denied_before = counter(
        &scrape(running.admin_addr).await,
        r#"switchboard_refusals_total{code="unauthorized"}"#,
    );
    let mut alice = Client::login_to(&running, 0, "alice", "alice-pw").await;
    let mut bob = Client::login_to(&running, 0, "bob", "bob-pw").await;
    let mut olga = Client::login_to(&running, 0, "olga", "olga-pw").await;
    let mut refusals = 0;
    let mut refused = |code: String| {
        assert_eq!(code, "unauthorized");
        refusals += 1;
    };

    // Commands: "user/list" only for the operator; "session/*" for everyone.
    refused(alice.error_code("user", "list", json!({})).await);
    olga.ok("user", "list", json!({})).await;
    alice
        .ok("session", "log", json!({"source": "t", "message": "m"}))
        .await;
    refused(
        alice
            .error_code("user", "send_event", json!({"user": "bob"}))
            .await,
    );

    // Event classes: everyone but "secret" to subscribe; the operator adds "secret".
    alice
        .ok("event", "subscribe", json!({"class": "news"}))
        .await;
    refused(
        alice
            .error_code("event", "subscribe", json!({"class": "secret"}))
            .await,
    );
    olga.ok("event", "subscribe", json!({"class": "secret"}))
        .await;
    // Sending: "chat" only for everyone; any class for the operator.
    alice
        .ok("event", "send_event", json!({"class": "chat"}))
        .await;
    refused(
        alice
            .error_code("event", "send_event", json!({"class": "news"}))
            .await,
    );
    olga.ok(
        "event",
        "send_event",
        json!({"class": "secret", "type": "t"}),
    )
    .await;
    assert_eq!(olga.event().await["class"], "secret");

    // Other services: only the operator.
    refused(
        alice
            .error_code(
                "event",
                "subscribe",
                json!({"class": "news", "service": "other"}),
            )
            .await,
    );
    olga.ok(
        "event",
        "subscribe",
        json!({"class": "secret", "service": "other"}),
    )
    .await;
    // Each role is a whole: "*" allows news but not other services, so news in another
    // service needs a role that allows both.
    refused(
        olga.error_code(
            "event",
            "subscribe",
            json!({"class": "news", "service": "other"}),
        )
        .await,
    );

    // Other users' sessions: only the operator may stop them.
    refused(
        alice
            .error_code("session", "stop", json!({"session_id": bob.session_id}))
            .await,
    );
    olga.ok("session", "stop", json!({"session_id": bob.session_id}))
        .await;
    assert_eq!(bob.closed().await, 1000);

    // Every refusal was counted, and alice's connection kept working throughout.
    alice.ok("session", "ping", json!({})).await;
    let denied_after = counter(
        &scrape(running.admin_addr).await,
        r#"switchboard_refusals_total{code="unauthorized"}"#,
    );
    assert!(
        denied_after >= denied_before + refusals,
        "{denied_before} + {refusals} > {denied_after}"
    );
    running.stop().await;
}

#[tokio::test]
async fn sessions_per_user_limit() {
    let running =
        crate::common::start_with(|config| config.registry.max_sessions_per_user = 2).await;
    let _first = Client::login_to(&running, 0, "alice", "alice-pw").await;
    let second = Client::login_to(&running, 0, "alice", "alice-pw").await;
    let mut third = Client::connect(&running.ws_url(0)).await;
    let code = third
        .error_code(
            "user",
            "login",
            json!({"user": "alice", "password": "alice-pw"}),
        )
        .await;
    assert_eq!(code, "limit_exceeded");
    // Other users are not affected, and the refused connection may log in once a slot frees.
    let _bob = Client::login_to(&running, 0, "bob", "bob-pw").await;
    drop(second);
    let mut admitted = false;
    for _ in 0..50 {
        let reply = third
            .request(
                "user",
                "login",
                json!({"user": "alice", "password": "alice-pw"}),
            )
            .await;
        if reply["result"] == "ok" {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "a freed slot is reused");
    running.stop().await;
}

#[tokio::test]
async fn connection_limit_refuses_with_503() {
    let running = crate::common::start_with(|config| {
        config.gateway.max_connections = 2;
        config.admin_listen = Some("127.0.0.1:0".into());
    })
    .await;
    let mut first = Client::admin(&running).await;
    let second = Client::connect(&running.ws_url(0)).await;
    let refused = tokio_tungstenite::connect_async(running.ws_url(0)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
        }
        other => panic!("expected HTTP 503, got {:?}", other.map(|_| ())),
    }
    let metrics = scrape(running.admin_addr).await;
    assert!(counter(&metrics, "switchboard_refused_connections_total") >= 1);
    assert_eq!(counter(&metrics, "switchboard_connections"), 2);
    first.ok("session", "ping", json!({})).await;
    drop(second);
    let mut admitted = None;
    for _ in 0..50 {
        if let Ok((socket, _)) = tokio_tungstenite::connect_async(running.ws_url(0)).await {
            admitted = Some(socket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted.is_some(), "a closed connection frees its slot");
    running.stop().await;
}

#[tokio::test]
async fn request_rate_limit_answers_limit_exceeded() {
    let running = crate::common::start_with(|config| {
        config.gateway.max_frames_per_second = 5;
        config.admin_listen = Some("127.0.0.1:0".into());
    })
    .await;
    let mut flooder = Client::admin(&running).await;
    let mut calm = Client::admin(&running).await;
    // The login used one of the 5; send 20 at once and read every answer.
    for tid in 100..120 {
        flooder
            .send_json(&json!({"class": "core", "subclass": "session", "cmd": "ping", "tid": tid}))
            .await;
    }
    let mut limited = 0;
    for tid in 100..120 {
        let reply = flooder.response_for(json!(tid)).await;
        if reply["result"] == "error" {
            assert_eq!(reply["data"]["code"], "limit_exceeded", "{reply}");
            limited += 1;
        }
    }
    assert!((15..=16).contains(&limited), "{limited} of 20 refused");
    calm.ok("session", "ping", json!({})).await;
    // The bucket refills: after a second the flooder is served again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    flooder.ok("session", "ping", json!({})).await;
    let metrics = scrape(running.admin_addr).await;
    assert!(counter(&metrics, "switchboard_rate_limited_frames_total") >= 15);
    running.stop().await;
}

#[tokio::test]
async fn invalid_policy_file_stops_the_start() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, "[roles.x]\ncommands = [\"user/lists\"]\n").expect("write");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["dev", "--listen", "127.0.0.1:0", "--policy-file"])
        .arg(&path)
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("user/lists"), "{stderr}");
}
