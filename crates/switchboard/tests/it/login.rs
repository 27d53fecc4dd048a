//! `user login` and the rules before and around it.

use crate::common::{ADMIN_PASSWORD, Client, start};
use serde_json::json;

#[tokio::test]
async fn login_ok_generates_a_uuid_session_id() {
    let running = start().await;
    let mut client = Client::connect(&running.ws_url(0)).await;
    let data = client
        .ok(
            "user",
            "login",
            json!({"user": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    let session_id = data["session_id"].as_str().expect("session id");
    assert_eq!(session_id.len(), 36, "a UUID: {session_id}");
    assert!(client.ok("session", "ping", json!({})).await["now"].is_u64());
    running.stop().await;
}

#[tokio::test]
async fn login_pass_alias_and_requested_session_id() {
    let running = start().await;
    let mut client = Client::connect(&running.ws_url(0)).await;
    let data = client
        .ok(
            "user",
            "login",
            json!({"user": "admin", "pass": ADMIN_PASSWORD, "session_id": "my-session", "extra": 1}),
        )
        .await;
    assert_eq!(data["session_id"], "my-session");
    assert!(
        data["resume_key"].is_string(),
        "every login issues a resume key: {data}"
    );
    assert_eq!(data.as_object().map(|data| data.len()), Some(2), "{data}");
    running.stop().await;
}

#[tokio::test]
async fn login_errors() {
    let running = start().await;
    let mut client = Client::connect(&running.ws_url(0)).await;
    assert_eq!(
        client
            .error_code("user", "login", json!({"password": "x"}))
            .await,
        "missing_field"
    );
    assert_eq!(
        client
            .error_code("user", "login", json!({"user": "admin"}))
            .await,
        "missing_field"
    );
    assert_eq!(
        client
            .error_code("user", "login", json!({"user": 5, "password": "x"}))
            .await,
        "syntax_error"
    );
    assert_eq!(
        client
            .error_code(
                "user",
                "login",
                json!({"user": "admin", "password": "wrong"})
            )
            .await,
        "invalid_credentials"
    );
    assert_eq!(
        client
            .error_code("user", "login", json!({"user": "nobody", "password": "x"}))
            .await,
        "invalid_credentials"
    );
    assert_eq!(
        client
            .error_code(
                "user",
                "login",
                json!({"user": "admin", "password": ADMIN_PASSWORD, "meta": "x"})
            )
            .await,
        "syntax_error"
    );
    assert_eq!(
        client
            .error_code(
                "user",
                "login",
                json!({"user": "admin", "password": ADMIN_PASSWORD, "session_id": "s".repeat(129)})
            )
            .await,
        "syntax_error"
    );
    // Failed logins do not block the connection: a correct one still works.
    client
        .ok(
            "user",
            "login",
            json!({"user": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(
        client
            .error_code(
                "user",
                "login",
                json!({"user": "admin", "password": ADMIN_PASSWORD})
            )
            .await,
        "already_authenticated"
    );
    running.stop().await;
}

#[tokio::test]
async fn duplicated_session_id() {
    let running = start().await;
    let mut first = Client::connect(&running.ws_url(0)).await;
    first
        .ok(
            "user",
            "login",
            json!({"user": "admin", "password": ADMIN_PASSWORD, "session_id": "dup"}),
        )
        .await;
    let mut second = Client::connect(&running.ws_url(0)).await;
    assert_eq!(
        second
            .error_code(
                "user",
                "login",
                json!({"user": "admin", "password": ADMIN_PASSWORD, "session_id": "dup"})
            )
            .await,
        "duplicated_session_id"
    );
    // Once the first session ends, its id can be used again.
    drop(first);
    let mut reused = false;
    for _ in 0..50 {
        let reply = second
            .request(
                "user",
                "login",
                json!({"user": "admin", "password": ADMIN_PASSWORD, "session_id": "dup"}),
            )
            .await;
        if reply["result"] == "ok" {
            reused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reused, "the id of a closed session is free again");
    running.stop().await;
}

#[tokio::test]
async fn commands_before_login_are_refused() {
    let running = start().await;
    let mut client = Client::connect(&running.ws_url(0)).await;
    for (subclass, cmd, data) in [
        ("user", "list", json!({})),
        ("user", "get", json!({"user": "admin"})),
        ("user", "send_event", json!({"user": "admin"})),
        ("session", "stop", json!({"session_id": "x"})),
        ("session", "send_event", json!({"session_id": "x"})),
        (
            "session",
            "cmd",
            json!({"session_id": "x", "class": "c", "cmd": "c"}),
        ),
        ("session", "log", json!({"source": "s", "message": "m"})),
        ("session", "ping", json!({})),
        ("event", "subscribe", json!({"class": "c"})),
        ("event", "unsubscribe", json!({"class": "c"})),
        ("event", "get_subscriptions", json!({})),
        ("event", "send_event", json!({"class": "c"})),
    ] {
        assert_eq!(
            client.error_code(subclass, cmd, data).await,
            "not_authenticated",
            "{subclass} {cmd}"
        );
    }
    running.stop().await;
}

#[tokio::test]
async fn unknown_path_is_refused() {
    let running = start().await;
    let url = format!("ws://{}/elsewhere", running.ws_addrs[0]);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    running.stop().await;
}

#[tokio::test]
async fn fifty_wrong_logins_at_once_get_at_most_ten_checks() {
    let running = crate::common::start().await;
    let url = running.ws_url(0);
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let url = url.clone();
        attempts.spawn(async move {
            let mut client = Client::connect(&url).await;
            client
                .error_code(
                    "user",
                    "login",
                    json!({"user": "alice", "password": "guess"}),
                )
                .await
        });
    }
    let mut codes = Vec::new();
    while let Some(code) = attempts.join_next().await {
        codes.push(code.expect("task"));
    }
    let checked = codes.iter().filter(|c| *c == "invalid_credentials").count();
    let throttled = codes.iter().filter(|c| *c == "too_many_attempts").count();
    assert!(checked <= 10, "{checked} checked: {codes:?}");
    assert_eq!(checked + throttled, 50, "{codes:?}");
    running.stop().await;
}
