//! The real `switchboard dev` binary, started as a newcomer would, plus connection limits.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Client, start_with};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn test_dev_binary_serves_with_no_configuration() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["dev", "--listen", "127.0.0.1:0"])
        .env_remove("SWITCHBOARD_ADMIN_PASSWORD")
        .env_remove("SWITCHBOARD_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("switchboard starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("prints its address in time")
        .expect("read")
        .expect("a line");
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("ws://"))
        .expect("a ws:// URL")
        .to_owned();
    assert!(url.ends_with("/api/ws"), "{url}");

    let mut client = Client::connect(&url).await;
    client
        .ok(
            "user",
            "login",
            json!({"user": "admin", "password": "admin"}),
        )
        .await;
    client
        .ok("event", "subscribe", json!({"class": "tour"}))
        .await;
    client
        .ok(
            "event",
            "send_event",
            json!({"class": "tour", "body": {"hello": "world"}}),
        )
        .await;
    assert_eq!(client.event().await["body"]["hello"], "world");

    child.start_kill().expect("kill");
    let _ = child.wait().await;
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = err.read_to_string(&mut stderr).await;
    }
    assert!(
        stderr.contains("no admin password configured"),
        "warning logged: {stderr}"
    );
}

#[tokio::test]
async fn test_dev_binary_rejects_bad_settings() {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["dev", "--gelf", "http://nowhere"])
        .output()
        .await
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("udp://host:port"));
}

#[tokio::test]
async fn test_slow_consumer_is_closed_1008_and_others_keep_receiving() {
    let running = start_with(|config| config.gateway.outbound_queue = 8).await;
    let mut slow = Client::admin(&running).await;
    slow.ok("event", "subscribe", json!({"class": "flood"}))
        .await;
    let mut healthy = Client::admin(&running).await;
    healthy
        .ok("event", "subscribe", json!({"class": "flood"}))
        .await;
    let mut publisher = Client::admin(&running).await;
    let pad = "x".repeat(8 * 1024);
    let reader = tokio::spawn(async move {
        for n in 0..3000 {
            assert_eq!(healthy.event().await["body"]["n"], n);
        }
        healthy
    });
    for n in 0..3000 {
        publisher
            .ok(
                "event",
                "send_event",
                json!({"class": "flood", "body": {"n": n, "pad": pad}}),
            )
            .await;
    }
    // Only now does the slow client read: it finds its close after what fitted in the buffers.
    assert_eq!(slow.closed().await, 1008);
    reader
        .await
        .expect("the healthy subscriber got every event in order");
    running.stop().await;
}
