//! Before login (PROTOCOL.md §1): frames of at most 16 KiB, a login within the deadline, and at
//! most so many connections per client address waiting to log in; each limit leaves logged-in
//! sessions alone.

use std::time::{Duration, Instant};

use crate::common::Client;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

#[tokio::test]
async fn big_frames_before_login_close_1009_but_not_after() {
    let running = crate::common::start().await;
    let mut stranger = Client::connect(&running.ws_url(0)).await;
    let padding = "x".repeat(16 * 1024);
    stranger
        .send_text(&json!({"class": "core", "cmd": "ping", "tid": 1, "pad": padding}).to_string())
        .await;
    assert_eq!(stranger.closed().await, 1009);

    // A frame just under the limit is read (and answered) before login.
    let mut client = Client::connect(&running.ws_url(0)).await;
    let pad = "x".repeat(16 * 1024 - 400);
    let reply = client
        .request(
            "user",
            "login",
            json!({"user": "alice", "password": "wrong", "pad": pad}),
        )
        .await;
    assert_eq!(reply["data"]["code"], "invalid_credentials", "{reply}");
    client
        .ok(
            "user",
            "login",
            json!({"user": "alice", "password": "alice-pw"}),
        )
        .await;
    // Logged in, frames up to max_frame_bytes are fine.
    client
        .ok("event", "subscribe", json!({"class": "big"}))
        .await;
    let body = json!({"pad": "y".repeat(60_000)});
    client
        .ok("event", "send_event", json!({"class": "big", "body": body}))
        .await;
    assert_eq!(client.event().await["body"], body);
    running.stop().await;
}

#[tokio::test]
async fn no_login_in_time_closes_1008() {
    let running = crate::common::start_with(|config| {
        config.gateway.login_timeout = Duration::from_millis(800);
        config.gateway.ping_interval = Duration::from_millis(100);
    })
    .await;
    let mut member = Client::login_to(&running, 0, "alice", "alice-pw").await;
    let started = Instant::now();
    let mut idler = Client::connect(&running.ws_url(0)).await;
    // It answers pings and even sends requests, but never logs in.
    let code = idler.error_code("session", "ping", json!({})).await;
    assert_eq!(code, "not_authenticated");
    assert_eq!(idler.closed().await, 1008);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    // The logged-in session outlives the deadline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    member.ok("session", "ping", json!({})).await;
    running.stop().await;
}

/// The HTTP status of a handshake from `forwarded` (when set) that fails.
async fn handshake_status(url: &str, forwarded: Option<&str>) -> Option<u16> {
    let mut request = url.into_client_request().expect("url");
    if let Some(address) = forwarded {
        request
            .headers_mut()
            .insert("x-forwarded-for", address.parse().expect("header"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => None,
        Err(WsError::Http(response)) => Some(response.status().as_u16()),
        Err(error) => panic!("handshake failed otherwise: {error}"),
    }
}

async fn connect_from(url: &str, forwarded: &str) -> Client {
    let mut request = url.into_client_request().expect("url");
    request
        .headers_mut()
        .insert("x-forwarded-for", forwarded.parse().expect("header"));
    Client::connect_request(request).await
}

#[tokio::test]
async fn waiting_connections_per_address_are_capped_with_429() {
    let running = crate::common::start_with(|config| {
        config.gateway.max_prelogin_per_address = 3;
        config.gateway.trust_forwarded_for = true;
    })
    .await;
    let url = running.ws_url(0);
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(connect_from(&url, "203.0.113.7").await);
    }
    assert_eq!(handshake_status(&url, Some("203.0.113.7")).await, Some(429));
    // Another address, and another IPv6 /64, are counted on their own.
    let _other = connect_from(&url, "203.0.113.8").await;
    let _v6 = connect_from(&url, "2001:db8:0:1::1").await;
    assert_eq!(handshake_status(&url, Some("2001:db8:0:1::1")).await, None);
    // A login frees its place; so does a close.
    waiting[0]
        .ok(
            "user",
            "login",
            json!({"user": "alice", "password": "alice-pw"}),
        )
        .await;
    let mut fourth = connect_from(&url, "203.0.113.7").await;
    assert_eq!(handshake_status(&url, Some("203.0.113.7")).await, Some(429));
    let closing = waiting.pop().expect("a waiting client");
    drop(closing);
    let started = Instant::now();
    while handshake_status(&url, Some("203.0.113.7")).await.is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a close frees its place"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The logged-in one and the waiting ones still work.
    waiting[0].ok("session", "ping", json!({})).await;
    let code = fourth.error_code("session", "ping", json!({})).await;
    assert_eq!(code, "not_authenticated", "still open");
    fourth.send_message(Message::Close(None)).await;
    running.stop().await;
}
