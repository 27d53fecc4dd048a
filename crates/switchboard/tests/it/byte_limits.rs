//! The byte limits of PROTOCOL.md §1: each oversized field is refused with `limit_exceeded`
//! naming it and the request's `tid`, nothing of it is stored or sent, and every other session
//! keeps working; a client that stops reading large events is closed with 1008 once its
//! queued frames pass the outbound byte budget.

use crate::common::Client;
use serde_json::{Value, json};

/// The error of `reply`, asserting it is `limit_exceeded` naming `field`.
fn assert_limit(reply: &Value, field: &str) {
    assert_eq!(reply["result"], "error", "{reply}");
    assert_eq!(reply["data"]["code"], "limit_exceeded", "{reply}");
    let text = reply["data"]["error"].as_str().unwrap_or_default();
    assert!(text.contains(field), "names {field}: {reply}");
    assert!(reply["tid"].is_u64(), "carries the tid: {reply}");
}

#[tokio::test]
async fn oversized_fields_are_refused_by_name_and_nothing_is_kept() {
    let running = crate::common::start().await;
    let mut alice = Client::login_to(&running, 0, "alice", "alice-pw").await;
    let mut bob = Client::login_to(&running, 0, "bob", "bob-pw").await;
    bob.ok("event", "subscribe", json!({"class": "chat"})).await;
    let before = alice.ok("event", "get_subscriptions", json!({})).await;

    // Key fields: 256 bytes are fine, 257 are not (UTF-8 bytes, not characters).
    let at_limit = "k".repeat(256);
    alice
        .ok("event", "subscribe", json!({"class": at_limit}))
        .await;
    alice
        .ok("event", "unsubscribe", json!({"class": at_limit}))
        .await;
    for field in ["class", "subclass", "type", "obj_id", "service"] {
        let mut data = json!({"class": "chat"});
        data[field] = json!("é".repeat(129));
        let reply = alice.request("event", "subscribe", data.clone()).await;
        assert_limit(&reply, field);
        let reply = alice.request("event", "send_event", data).await;
        assert_limit(&reply, field);
    }
    // A 200 KB class (as an attacker sends) is refused, not stored.
    let reply = alice
        .request("event", "subscribe", json!({"class": "x".repeat(200_000)}))
        .await;
    assert_limit(&reply, "class");

    // Subscription body: 16 KiB of compact JSON.
    let reply = alice
        .request(
            "event",
            "subscribe",
            json!({"class": "chat", "body": {"pad": "x".repeat(16 * 1024)}}),
        )
        .await;
    assert_limit(&reply, "body");
    assert_eq!(
        alice.ok("event", "get_subscriptions", json!({})).await,
        before,
        "nothing was stored"
    );

    // Event body: 64 KiB; past it nothing reaches the subscriber.
    let reply = alice
        .request(
            "event",
            "send_event",
            json!({"class": "chat", "body": {"pad": "x".repeat(64 * 1024)}}),
        )
        .await;
    assert_limit(&reply, "body");
    let reply = alice
        .request(
            "user",
            "send_event",
            json!({"user": "bob", "body": {"pad": "x".repeat(64 * 1024)}}),
        )
        .await;
    assert_limit(&reply, "body");
    bob.assert_quiet().await;
    let fits = "x".repeat(60 * 1024);
    alice
        .ok(
            "event",
            "send_event",
            json!({"class": "chat", "body": {"pad": fits}}),
        )
        .await;
    assert_eq!(bob.event().await["body"]["pad"], json!(fits));

    // `session log`: 64 KiB in all.
    let reply = alice
        .request(
            "session",
            "log",
            json!({"source": "s", "message": "m", "full_message": "x".repeat(70_000)}),
        )
        .await;
    assert_limit(&reply, "data");

    // Login `meta`: 8 KiB; the connection may then log in with a smaller one.
    let mut carol = Client::connect(&running.ws_url(0)).await;
    let reply = carol
        .request(
            "user",
            "login",
            json!({"user": "alice", "password": "alice-pw", "meta": {"pad": "x".repeat(9000)}}),
        )
        .await;
    assert_limit(&reply, "meta");
    carol
        .ok(
            "user",
            "login",
            json!({"user": "alice", "password": "alice-pw", "meta": {"device": "phone"}}),
        )
        .await;

    // Everyone else kept working throughout.
    bob.ok(
        "event",
        "send_event",
        json!({"class": "chat", "body": {"n": 1}}),
    )
    .await;
    assert_eq!(bob.event().await["body"]["n"], 1);
    running.stop().await;
}

#[tokio::test]
async fn token_event_types_cannot_be_sent_by_clients() {
    let running = crate::common::start().await;
    let mut alice = Client::login_to(&running, 0, "alice", "alice-pw").await;
    let mut bob = Client::login_to(&running, 0, "bob", "bob-pw").await;
    for kind in ["token_expiring", "token_expired"] {
        let code = alice
            .error_code("user", "send_event", json!({"user": "bob", "type": kind}))
            .await;
        assert_eq!(code, "unauthorized");
        let code = alice
            .error_code(
                "session",
                "send_event",
                json!({"session_id": bob.session_id.clone(), "type": kind}),
            )
            .await;
        assert_eq!(code, "unauthorized");
    }
    bob.assert_quiet().await;
    running.stop().await;
}

#[tokio::test]
async fn a_non_reader_is_closed_1008_at_its_byte_budget() {
    let running = crate::common::start_with(|config| {
        config.gateway.outbound_queue_bytes = 256 * 1024;
    })
    .await;
    let mut alice = Client::login_to(&running, 0, "alice", "alice-pw").await;
    let mut bob = Client::login_to(&running, 0, "bob", "bob-pw").await;
    bob.ok("event", "subscribe", json!({"class": "big"})).await;
    // Bob stops reading; 60 KB events pile up in the socket buffers, then in his queue.
    let body = json!({"pad": "x".repeat(60_000)});
    for _ in 0..600 {
        alice
            .ok("event", "send_event", json!({"class": "big", "body": body}))
            .await;
    }
    assert_eq!(bob.closed().await, 1008);
    alice.ok("session", "ping", json!({})).await;
    running.stop().await;
}
