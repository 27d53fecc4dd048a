//! `user` and `session` commands, on one gateway and across two.

use std::time::{Duration, Instant};

use crate::common::{ADMIN_PASSWORD, Client, start, start_with};
use serde_json::{Value, json};

/// Waits for a server request on `client`; returns it.
async fn server_request(client: &mut Client) -> Value {
    let frame = client.next().await;
    assert!(
        frame.get("cmd").is_some() && frame["tid"].is_u64(),
        "server request: {frame}"
    );
    frame
}

#[tokio::test]
async fn user_list_and_get() {
    let running = start().await;
    let mut admin = Client::admin(&running).await;
    let mut with_meta = Client::connect(&running.ws_url(0)).await;
    with_meta
        .ok(
            "user",
            "login",
            json!({"user": "alice", "password": "alice-pw", "meta": {"app": "x", "n": 1}}),
        )
        .await;
    let users = admin.ok("user", "list", json!({})).await;
    assert_eq!(users["admin"], json!([admin.session_id]));
    assert_eq!(users["alice"].as_array().map(Vec::len), Some(1));
    let alice_session = users["alice"][0].as_str().expect("id").to_owned();

    let sessions = admin.ok("user", "get", json!({"user": "alice"})).await;
    let entry = &sessions[&alice_session];
    assert_eq!(entry["type"], "api_server");
    assert_eq!(entry["meta"], json!({"app": "x", "n": 1}));
    let remote = entry["remote"].as_str().expect("remote");
    assert!(remote.starts_with("ws:127.0.0.1:"), "{remote}");
    assert_eq!(
        admin
            .error_code("user", "get", json!({"user": "nobody"}))
            .await,
        "user_not_found"
    );
    assert_eq!(
        admin.error_code("user", "get", json!({})).await,
        "missing_field"
    );

    // A closed session leaves the list.
    drop(with_meta);
    let mut gone = false;
    for _ in 0..100 {
        if admin
            .ok("user", "list", json!({}))
            .await
            .get("alice")
            .is_none()
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "alice leaves user list after disconnecting");
    running.stop().await;
}

#[tokio::test]
async fn user_and_session_send_event() {
    let running = start().await;
    let mut admin = Client::admin(&running).await;
    let mut alice1 = Client::login_to(&running, 0, "alice", "alice-pw").await;
    let mut alice2 = Client::login_to(&running, 0, "alice", "alice-pw").await;
    admin
        .ok(
            "user",
            "send_event",
            json!({"user": "alice", "type": "greet", "body": {"hi": 1}}),
        )
        .await;
    for client in [&mut alice1, &mut alice2] {
        let event = client.event().await;
        assert_eq!(
            event,
            json!({"class": "core", "subclass": "user_event", "type": "greet", "obj_id": "alice", "body": {"hi": 1}})
        );
    }
    admin
        .ok("user", "send_event", json!({"user": "alice"}))
        .await;
    for client in [&mut alice1, &mut alice2] {
        let event = client.event().await;
        assert!(event.get("type").is_none(), "default type is *: {event}");
    }
    admin
        .ok("user", "send_event", json!({"user": "nobody"}))
        .await;
    assert_eq!(
        admin.error_code("user", "send_event", json!({})).await,
        "missing_field"
    );

    let target = alice2.session_id.clone();
    admin
        .ok(
            "session",
            "send_event",
            json!({"session_id": target, "type": "only", "body": {"x": true}}),
        )
        .await;
    let event = alice2.event().await;
    assert_eq!(event["subclass"], "session_event");
    assert_eq!(event["obj_id"], target.as_str());
    assert_eq!(event["body"], json!({"x": true}));
    alice1.assert_quiet().await;
    admin.assert_quiet().await;
    assert_eq!(
        admin.error_code("session", "send_event", json!({})).await,
        "missing_field"
    );
    running.stop().await;
}

#[tokio::test]
async fn session_stop_other_and_self() {
    let running = start().await;
    let mut admin = Client::admin(&running).await;
    let mut victim = Client::login_to(&running, 0, "alice", "alice-pw").await;
    let stopped = admin
        .ok("session", "stop", json!({"session_id": victim.session_id}))
        .await;
    assert_eq!(stopped, json!({"user": "alice"}));
    assert_eq!(victim.closed().await, 1000);
    assert_eq!(
        admin
            .error_code("session", "stop", json!({"session_id": "no-such-session"}))
            .await,
        "session_not_found"
    );
    assert_eq!(
        admin.error_code("session", "stop", json!({})).await,
        "missing_field"
    );
    let own = admin.session_id.clone();
    let reply = admin
        .request("session", "stop", json!({"session_id": own}))
        .await;
    assert_eq!(
        reply["data"],
        json!({"user": "admin"}),
        "the reply comes first"
    );
    assert_eq!(admin.closed().await, 1000);
    running.stop().await;
}

#[tokio::test]
async fn session_cmd_answered_ok_and_error() {
    let running = start().await;
    let mut caller = Client::admin(&running).await;
    let mut target = Client::login_to(&running, 0, "admin", ADMIN_PASSWORD).await;
    let target_id = target.session_id.clone();
    caller
        .send_json(
            &json!({"class": "core", "subclass": "session", "cmd": "cmd", "tid": "c1",
            "data": {"session_id": target_id, "class": "app", "cmd": "do", "data": {"x": 1}}}),
        )
        .await;
    let request = server_request(&mut target).await;
    assert_eq!(request["class"], "app");
    assert_eq!(request["cmd"], "do");
    assert!(
        request.get("subclass").is_none(),
        "subclass core is left out: {request}"
    );
    assert_eq!(request["data"], json!({"x": 1}));
    target
        .send_json(&json!({"result": "ok", "data": {"done": true}, "tid": request["tid"]}))
        .await;
    let reply = caller.response_for(json!("c1")).await;
    assert_eq!(
        reply,
        json!({"result": "ok", "data": {"done": true}, "tid": "c1"})
    );

    caller
        .send_json(
            &json!({"class": "core", "subclass": "session", "cmd": "cmd", "tid": "c2",
            "data": {"session_id": target_id, "class": "app", "subclass": "sub", "cmd": "fail"}}),
        )
        .await;
    let request = server_request(&mut target).await;
    assert_eq!(request["subclass"], "sub");
    assert_eq!(request["data"], json!({}));
    let error = json!({"code": "app_failed", "error": "it failed"});
    target
        .send_json(&json!({"result": "error", "data": error, "tid": request["tid"]}))
        .await;
    let reply = caller.response_for(json!("c2")).await;
    assert_eq!(
        reply,
        json!({"result": "error", "data": error, "tid": "c2"})
    );

    assert_eq!(
        caller
            .error_code(
                "session",
                "cmd",
                json!({"session_id": "missing", "class": "a", "cmd": "b"})
            )
            .await,
        "session_not_found"
    );
    assert_eq!(
        caller
            .error_code(
                "session",
                "cmd",
                json!({"session_id": target_id, "cmd": "b"})
            )
            .await,
        "missing_field"
    );
    assert_eq!(
        caller
            .error_code(
                "session",
                "cmd",
                json!({"session_id": target_id, "class": "a", "cmd": "b", "data": 3})
            )
            .await,
        "syntax_error"
    );
    running.stop().await;
}

#[tokio::test]
async fn session_cmd_timeout_and_ack() {
    let running = start_with(|config| {
        config.gateway.cmd_timeout = Duration::from_millis(400);
        config.gateway.cmd_max_timeout = Duration::from_millis(1500);
    })
    .await;
    let mut caller = Client::admin(&running).await;
    let mut target = Client::login_to(&running, 0, "admin", ADMIN_PASSWORD).await;
    let target_id = target.session_id.clone();
    let data = json!({"session_id": target_id, "class": "app", "cmd": "slow"});

    // Unanswered: timeout, and the target stays connected.
    let started = Instant::now();
    assert_eq!(
        caller.error_code("session", "cmd", data.clone()).await,
        "timeout"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    let request = server_request(&mut target).await;
    // A late answer is ignored and does not close anything.
    target
        .send_json(&json!({"result": "ok", "tid": request["tid"]}))
        .await;
    target.ok("session", "ping", json!({})).await;

    // Acked: the wait is extended and the late answer arrives.
    caller
        .send_json(
            &json!({"class": "core", "subclass": "session", "cmd": "cmd", "tid": 50, "data": data}),
        )
        .await;
    let request = server_request(&mut target).await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        target.send_json(&json!({"ack": request["tid"]})).await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    target
        .send_json(&json!({"result": "ok", "data": {"late": true}, "tid": request["tid"]}))
        .await;
    let reply = caller.response_for(json!(50)).await;
    assert_eq!(reply["data"], json!({"late": true}), "{reply}");

    // Acks cannot extend past the maximum.
    caller
        .send_json(
            &json!({"class": "core", "subclass": "session", "cmd": "cmd", "tid": 51, "data": data}),
        )
        .await;
    let request = server_request(&mut target).await;
    let started = Instant::now();
    let acker = tokio::spawn(async move {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            target.send_json(&json!({"ack": request["tid"]})).await;
        }
        target
    });
    let reply = caller.response_for(json!(51)).await;
    assert_eq!(reply["data"]["code"], "timeout");
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    acker.await.expect("acker");
    running.stop().await;
}

#[tokio::test]
async fn session_cmd_target_disconnects() {
    let running = start().await;
    let mut caller = Client::admin(&running).await;
    let mut target = Client::login_to(&running, 0, "admin", ADMIN_PASSWORD).await;
    caller
        .send_json(
            &json!({"class": "core", "subclass": "session", "cmd": "cmd", "tid": 1,
            "data": {"session_id": target.session_id, "class": "a", "cmd": "b"}}),
        )
        .await;
    server_request(&mut target).await;
    drop(target);
    let reply = caller.response_for(json!(1)).await;
    assert_eq!(reply["data"]["code"], "session_stopped");
    running.stop().await;
}

#[tokio::test]
async fn session_cmd_to_own_session() {
    let running = start().await;
    let mut client = Client::admin(&running).await;
    let own = client.session_id.clone();
    client
        .send_json(
            &json!({"class": "core", "subclass": "session", "cmd": "cmd", "tid": "self",
            "data": {"session_id": own, "class": "app", "cmd": "echo", "data": {"v": 7}}}),
        )
        .await;
    let request = server_request(&mut client).await;
    assert_eq!(request["data"]["v"], 7);
    // The connection keeps serving while its own cmd waits.
    client.ok("session", "ping", json!({})).await;
    client
        .send_json(&json!({"result": "ok", "data": {"v": 8}, "tid": request["tid"]}))
        .await;
    assert_eq!(
        client.response_for(json!("self")).await["data"],
        json!({"v": 8})
    );
    running.stop().await;
}

#[tokio::test]
async fn across_two_gateways() {
    let running = start_with(|config| config.gateways = 2).await;
    let mut on_first = Client::login_to(&running, 0, "admin", ADMIN_PASSWORD).await;
    let mut on_second = Client::login_to(&running, 1, "alice", "alice-pw").await;
    let users = on_first.ok("user", "list", json!({})).await;
    assert_eq!(users["alice"], json!([on_second.session_id]));

    // Events fired on one gateway reach subscribers on the other.
    on_second
        .ok("event", "subscribe", json!({"class": "media"}))
        .await;
    on_first
        .ok(
            "event",
            "send_event",
            json!({"class": "media", "body": {"n": 1}}),
        )
        .await;
    assert_eq!(on_second.event().await["body"]["n"], 1);
    on_second.assert_quiet().await;

    // session cmd crosses gateways through SessionControl.
    on_first
        .send_json(
            &json!({"class": "core", "subclass": "session", "cmd": "cmd", "tid": 1,
            "data": {"session_id": on_second.session_id, "class": "app", "cmd": "hello"}}),
        )
        .await;
    let request = server_request(&mut on_second).await;
    on_second
        .send_json(&json!({"result": "ok", "data": {"from": "second"}, "tid": request["tid"]}))
        .await;
    assert_eq!(
        on_first.response_for(json!(1)).await["data"],
        json!({"from": "second"})
    );

    // session stop crosses gateways too.
    let stopped = on_first
        .ok(
            "session",
            "stop",
            json!({"session_id": on_second.session_id}),
        )
        .await;
    assert_eq!(stopped["user"], "alice");
    assert_eq!(on_second.closed().await, 1000);
    running.stop().await;
}

#[tokio::test]
async fn gateway_shutdown_closes_with_1001() {
    let running = start_with(|config| config.gateways = 2).await;
    let mut leaving = Client::login_to(&running, 1, "admin", ADMIN_PASSWORD).await;
    let mut staying = Client::admin(&running).await;
    running.stop_gateway(1);
    assert_eq!(leaving.closed().await, 1001);
    let mut gone = false;
    for _ in 0..100 {
        let users = staying.ok("user", "list", json!({})).await;
        if users["admin"].as_array().map(Vec::len) == Some(1) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the drained gateway's sessions are unregistered");
    running.stop().await;
}
