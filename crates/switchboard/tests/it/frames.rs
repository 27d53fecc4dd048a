//! Bad input: each gets its documented answer and the connection keeps working.

use crate::common::{Client, start, start_with};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn still_works(client: &mut Client) {
    assert!(client.ok("session", "ping", json!({})).await["now"].is_u64());
}

#[tokio::test]
async fn invalid_json_and_non_objects() {
    let running = start().await;
    let mut client = Client::admin(&running).await;
    for text in ["{not json", "[1,2]", "42", "\"text\""] {
        client.send_text(text).await;
        let frame = client.next().await;
        assert_eq!(frame["result"], "error");
        assert_eq!(frame["data"]["code"], "invalid_json", "{text}");
        assert!(frame.get("tid").is_none(), "no tid for {text}: {frame}");
    }
    still_works(&mut client).await;
    running.stop().await;
}

#[tokio::test]
async fn binary_frame() {
    let running = start().await;
    let mut client = Client::admin(&running).await;
    client
        .send_message(Message::Binary(vec![1, 2, 3].into()))
        .await;
    let frame = client.next().await;
    assert_eq!(frame["data"]["code"], "invalid_frame");
    still_works(&mut client).await;
    running.stop().await;
}

#[tokio::test]
async fn missing_tid_and_unrecognised_objects() {
    let running = start().await;
    let mut client = Client::admin(&running).await;
    client
        .send_json(&json!({"class": "core", "subclass": "session", "cmd": "ping"}))
        .await;
    let frame = client.next().await;
    assert_eq!(frame["data"]["code"], "missing_field");
    assert!(
        frame["data"]["error"]
            .as_str()
            .expect("text")
            .contains("tid")
    );
    client.send_json(&json!({"hello": 1, "tid": 9})).await;
    let frame = client.next().await;
    assert_eq!(frame["data"]["code"], "invalid_frame");
    assert_eq!(frame["tid"], 9);
    still_works(&mut client).await;
    running.stop().await;
}

#[tokio::test]
async fn tid_is_echoed_verbatim() {
    let running = start().await;
    let mut client = Client::admin(&running).await;
    for tid in [json!("abc"), json!(12345678901_u64), json!(7)] {
        client
            .send_json(&json!({"class": "core", "subclass": "session", "cmd": "ping", "tid": tid}))
            .await;
        let frame = client.response_for(tid.clone()).await;
        assert_eq!(frame["result"], "ok");
    }
    running.stop().await;
}

#[tokio::test]
async fn unknown_commands_and_wrong_types() {
    let running = start().await;
    let mut client = Client::admin(&running).await;
    let unknown = [
        json!({"class": "other", "subclass": "user", "cmd": "list", "tid": 1}),
        json!({"class": "core", "subclass": "user", "cmd": "nope", "tid": 2}),
        json!({"class": "core", "subclass": "nope", "cmd": "list", "tid": 3}),
    ];
    for (index, frame) in unknown.iter().enumerate() {
        client.send_json(frame).await;
        let reply = client.response_for(json!(index + 1)).await;
        assert_eq!(reply["data"]["code"], "unknown_command", "{frame}");
    }
    let wrong = [
        json!({"class": 1, "cmd": "list", "tid": 10}),
        json!({"class": "core", "subclass": 2, "cmd": "list", "tid": 11}),
        json!({"class": "core", "subclass": "user", "cmd": ["x"], "tid": 12}),
        json!({"class": "core", "subclass": "user", "cmd": "get", "data": "x", "tid": 13}),
        json!({"class": "core", "subclass": "user", "cmd": "get", "data": {"user": 1}, "tid": 14}),
        json!({"class": "core", "subclass": "event", "cmd": "subscribe", "data": {"class": "c", "type": 3}, "tid": 15}),
        json!({"class": "core", "subclass": "session", "cmd": "log", "data": {"source": "s", "message": "m", "level": 9}, "tid": 16}),
    ];
    for frame in &wrong {
        client.send_json(frame).await;
        let reply = client.response_for(frame["tid"].clone()).await;
        assert_eq!(reply["data"]["code"], "syntax_error", "{frame}: {reply}");
    }
    let missing = json!({"class": "core", "subclass": "user", "cmd": "get", "data": {}, "tid": 20});
    client.send_json(&missing).await;
    assert_eq!(
        client.response_for(json!(20)).await["data"]["code"],
        "missing_field"
    );
    still_works(&mut client).await;
    running.stop().await;
}

#[tokio::test]
async fn too_deep_json() {
    let running = start().await;
    let mut client = Client::admin(&running).await;
    let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    client
        .send_text(&format!(
            r#"{{"class":"core","cmd":"x","tid":1,"data":{{"d":{deep}}}}}"#
        ))
        .await;
    let frame = client.next().await;
    assert_eq!(frame["data"]["code"], "limit_exceeded");
    still_works(&mut client).await;
    running.stop().await;
}

#[tokio::test]
async fn oversized_frame_closes_1009_and_others_keep_working() {
    let running = start_with(|config| config.gateway.max_frame_bytes = 64 * 1024).await;
    let mut bystander = Client::admin(&running).await;
    let mut client = Client::admin(&running).await;
    let big = json!({"class": "core", "subclass": "session", "cmd": "ping", "tid": 1, "data": {"pad": "x".repeat(70 * 1024)}});
    client.send_json(&big).await;
    assert_eq!(client.closed().await, 1009);
    still_works(&mut bystander).await;
    // A frame just under the limit is fine.
    let fits = json!({"class": "core", "subclass": "session", "cmd": "ping", "tid": 2, "data": {"pad": "x".repeat(60 * 1024)}});
    bystander.send_json(&fits).await;
    assert_eq!(bystander.response_for(json!(2)).await["result"], "ok");
    running.stop().await;
}

#[tokio::test]
async fn replies_to_events_are_ignored() {
    let running = start().await;
    let mut client = Client::admin(&running).await;
    client.ok("event", "subscribe", json!({"class": "c"})).await;
    client
        .ok("event", "send_event", json!({"class": "c"}))
        .await;
    let frame = client.next().await;
    let tid: Value = frame["tid"].clone();
    client.send_json(&json!({"result": "ok", "tid": tid})).await;
    client
        .send_json(&json!({"result": "ok", "tid": 999_999}))
        .await;
    client.send_json(&json!({"ack": 999_999})).await;
    still_works(&mut client).await;
    client.assert_quiet().await;
    running.stop().await;
}
