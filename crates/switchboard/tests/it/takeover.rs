//! Sessions that outlive their connection (PROTOCOL.md §5, §11): a login with a session's id
//! and resume key takes it over, on the same gateway, on another one, or from a gateway that
//! was SIGKILLed, and the old connection is closed with 4002.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::cluster::{CLUSTER_ADMIN_PASSWORD, Cluster};
use crate::common::{ADMIN_PASSWORD, Client, start_with};

/// Logs in on a new connection to `url` with `data` merged into the credentials; returns
/// the client and the reply.
async fn login_with(url: &str, user: &str, password: &str, extra: Value) -> (Client, Value) {
    let mut client = Client::connect(url).await;
    let mut data = json!({"user": user, "password": password});
    if let (Some(data), Some(extra)) = (data.as_object_mut(), extra.as_object()) {
        data.extend(extra.clone());
    }
    let reply = client.request("user", "login", data).await;
    if reply["result"] == "ok" {
        client.session_id = reply["data"]["session_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    (client, reply)
}

fn resume_key(reply: &Value) -> String {
    let key = reply["data"]["resume_key"].as_str().expect("a resume key");
    assert!(key.len() >= 32, "at least 128 bits: {key}");
    key.to_owned()
}

#[tokio::test]
async fn a_session_is_taken_over_here_and_on_another_gateway() {
    let running = start_with(|config| config.gateways = 2).await;
    let (mut first, reply) =
        login_with(&running.ws_url(0), "admin", ADMIN_PASSWORD, json!({})).await;
    let session_id = first.session_id.clone();
    let key = resume_key(&reply);
    let mut caller = Client::admin(&running).await;
    // A `session cmd` waiting on the old connection ends with `session_stopped`.
    caller
        .send_json(
            &json!({"class": "core", "subclass": "session", "cmd": "cmd", "tid": 77,
            "data": {"session_id": session_id, "class": "a", "cmd": "b"}}),
        )
        .await;
    let request = first.next().await;
    assert!(request["tid"].is_u64(), "server request: {request}");

    // On the same gateway.
    let (mut second, reply) = login_with(
        &running.ws_url(0),
        "admin",
        ADMIN_PASSWORD,
        json!({"session_id": session_id, "resume_key": key}),
    )
    .await;
    assert_eq!(reply["result"], "ok", "{reply}");
    assert_eq!(second.session_id, session_id);
    let second_key = resume_key(&reply);
    assert_ne!(second_key, key, "each takeover issues a new key");
    assert_eq!(first.closed().await, 4002);
    let answer = caller.response_for(json!(77)).await;
    assert_eq!(answer["data"]["code"], "session_stopped", "{answer}");
    caller
        .ok(
            "session",
            "send_event",
            json!({"session_id": session_id, "type": "hello"}),
        )
        .await;
    assert_eq!(second.event().await["type"], "hello");

    // The spent key no longer works; on the other gateway, the new one does.
    let (_, refused) = login_with(
        &running.ws_url(1),
        "admin",
        ADMIN_PASSWORD,
        json!({"session_id": session_id, "resume_key": key}),
    )
    .await;
    assert_eq!(
        refused["data"]["code"], "duplicated_session_id",
        "{refused}"
    );
    let (mut third, reply) = login_with(
        &running.ws_url(1),
        "admin",
        ADMIN_PASSWORD,
        json!({"session_id": session_id, "resume_key": second_key}),
    )
    .await;
    assert_eq!(reply["result"], "ok", "{reply}");
    assert_eq!(second.closed().await, 4002);
    caller
        .ok(
            "session",
            "send_event",
            json!({"session_id": session_id, "type": "again"}),
        )
        .await;
    assert_eq!(third.event().await["type"], "again");
    let users = caller.ok("user", "get", json!({"user": "admin"})).await;
    let listed = users.to_string().matches(&session_id).count();
    assert_eq!(listed, 1, "the session is listed once: {users}");
}

#[tokio::test]
async fn a_wrong_key_or_another_user_is_a_duplicate() {
    let running = start_with(|_| {}).await;
    let (alice, reply) = login_with(&running.ws_url(0), "alice", "alice-pw", json!({})).await;
    let key = resume_key(&reply);
    for (user, password, presented) in [
        ("alice", "alice-pw", "not-the-key".to_owned()),
        ("bob", "bob-pw", key.clone()),
    ] {
        let (_, reply) = login_with(
            &running.ws_url(0),
            user,
            password,
            json!({"session_id": alice.session_id, "resume_key": presented}),
        )
        .await;
        assert_eq!(
            reply["data"]["code"], "duplicated_session_id",
            "{user}: {reply}"
        );
    }
    // Credentials are still checked.
    let (_, reply) = login_with(
        &running.ws_url(0),
        "alice",
        "wrong",
        json!({"session_id": alice.session_id, "resume_key": key}),
    )
    .await;
    assert_eq!(reply["data"]["code"], "invalid_credentials", "{reply}");
}

/// A session whose gateway was SIGKILLed is taken over at once, before any reap, and is not
/// reaped with the dead gateway's other sessions.
#[tokio::test]
async fn a_session_on_a_killed_gateway_is_taken_over_at_once() {
    let mut cluster = Cluster::start(2);
    let (first, reply) = login_with(
        &cluster.ws_url(0),
        "admin",
        CLUSTER_ADMIN_PASSWORD,
        json!({}),
    )
    .await;
    let key = resume_key(&reply);
    let session_id = first.session_id.clone();
    cluster.kill("gateway0");
    let started = Instant::now();
    let (mut moved, reply) = login_with(
        &cluster.ws_url(1),
        "admin",
        CLUSTER_ADMIN_PASSWORD,
        json!({"session_id": session_id, "resume_key": key}),
    )
    .await;
    assert_eq!(reply["result"], "ok", "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no waiting for the reaper"
    );
    // Past the gateway timeout and a reap, the session is still there, on gateway 1.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut caller = Client::login_at(&cluster.ws_url(1), "admin", CLUSTER_ADMIN_PASSWORD).await;
    caller
        .ok(
            "session",
            "send_event",
            json!({"session_id": session_id, "type": "alive"}),
        )
        .await;
    assert_eq!(moved.event().await["type"], "alive");
}
