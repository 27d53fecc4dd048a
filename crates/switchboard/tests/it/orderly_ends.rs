//! Orderly ends: a client's close frame is answered with one; a session is unregistered
//! before `session stop` answers and before the server's close frame, so the moment a client
//! sees its close, its `session_id` is free again; a stopping gateway closes its connections
//! with 1001 spread over its drain window.

use std::time::{Duration, Instant};

use crate::common::Client;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The session ids `user get` lists for `user`.
async fn sessions_of(client: &mut Client, user: &str) -> Vec<String> {
    let reply = client.request("user", "get", json!({"user": user})).await;
    match reply["data"].as_object() {
        Some(sessions) if reply["result"] == "ok" => sessions.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn a_client_close_is_answered_and_its_session_is_gone_by_then() {
    let running = crate::common::start().await;
    let mut admin = Client::admin(&running).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(running.ws_url(0))
        .await
        .expect("connect");
    let login = json!({"class": "core", "subclass": "user", "cmd": "login", "tid": 1,
                       "data": {"user": "alice", "password": "alice-pw"}});
    socket
        .send(Message::Text(login.to_string().into()))
        .await
        .expect("send");
    let reply = socket.next().await.expect("reply").expect("frame");
    let reply: Value = serde_json::from_str(reply.to_text().expect("text")).expect("json");
    assert_eq!(reply["result"], "ok", "{reply}");
    let session_id = reply["data"]["session_id"].as_str().expect("id").to_owned();

    socket
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .expect("send close");
    // The server answers with a close frame of its own (RFC 6455 §5.5.1): a clean close.
    let answer = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("an answer in time");
    match answer {
        Some(Ok(Message::Close(_))) => {}
        other => panic!("expected the server's close frame, got {other:?}"),
    }
    // By the time the client saw it, the session was gone from the registry.
    assert!(
        !sessions_of(&mut admin, "alice").await.contains(&session_id),
        "still listed after a clean close"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_stopped_session_id_is_free_the_moment_its_close_arrives() {
    let running = crate::common::start_with(|config| config.gateways = 2).await;
    let mut admin = Client::admin(&running).await;
    for attempt in 0..15 {
        let session_id = format!("stop-me-{attempt}");
        let login = json!({"user": "alice", "password": "alice-pw", "session_id": session_id});
        // Alternately on this gateway and on the other one.
        let mut target = Client::connect(&running.ws_url(attempt % 2)).await;
        target.ok("user", "login", login.clone()).await;
        let stopped = admin
            .ok("session", "stop", json!({"session_id": session_id}))
            .await;
        assert_eq!(stopped["user"], "alice");
        assert!(
            !sessions_of(&mut admin, "alice").await.contains(&session_id),
            "unregistered before the answer"
        );
        assert_eq!(target.closed().await, 1000);
        // Logging in again with the same id as soon as the close arrives works.
        let mut again = Client::connect(&running.ws_url(attempt % 2)).await;
        again.ok("user", "login", login).await;
        again.send_message(Message::Close(None)).await;
    }
    // Stopping oneself: released before the answer, too.
    let mut alice = Client::login_to(&running, 0, "alice", "alice-pw").await;
    let own = alice.session_id.clone();
    alice
        .ok("session", "stop", json!({"session_id": own}))
        .await;
    assert!(!sessions_of(&mut admin, "alice").await.contains(&own));
    assert_eq!(alice.closed().await, 1000);
    running.stop().await;
}

#[tokio::test]
async fn a_stopping_gateway_closes_its_connections_paced_with_1001() {
    let running = crate::common::start_with(|config| {
        config.gateways = 2;
        config.gateway.drain_window = Duration::from_millis(1500);
    })
    .await;
    let mut admin = Client::login_to(&running, 1, "admin", crate::common::ADMIN_PASSWORD).await;
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(Client::login_to(&running, 0, "bob", "bob-pw").await);
    }
    let started = Instant::now();
    running.stop_gateway(0);
    let mut waiting = tokio::task::JoinSet::new();
    for mut client in clients {
        waiting.spawn(async move {
            let code = client.closed().await;
            (code, started.elapsed(), client.session_id)
        });
    }
    let mut closed_at = Vec::new();
    while let Some(closed) = waiting.join_next().await {
        let (code, at, id) = closed.expect("task");
        assert_eq!(code, 1001);
        closed_at.push(at);
        // Its session was released before its close frame.
        assert!(!sessions_of(&mut admin, "bob").await.contains(&id));
    }
    closed_at.sort();
    let spread = closed_at[closed_at.len() - 1] - closed_at[0];
    assert!(
        spread >= Duration::from_millis(600),
        "closes spread over the window, not at once: {spread:?}"
    );
    running.stop().await;
}
