//! `event` commands, matching, body merge and delivery rules (PROTOCOL.md §5, §6).

use std::collections::BTreeMap;

use crate::common::{ADMIN_PASSWORD, Client, start, start_with};
use serde_json::{Value, json};

const VALUES_SUB: [&str; 3] = ["*", "a", "b"];
const VALUES_EVENT: [&str; 2] = ["*", "a"];

fn matches(sub: &str, event: &str) -> bool {
    sub == "*" || sub == event
}

/// Fires a marker event and collects every frame before it (same publisher → in order).
async fn drain_until_marker(
    publisher: &mut Client,
    subscriber: &mut Client,
    marker: u64,
) -> Vec<Value> {
    publisher
        .ok(
            "event",
            "send_event",
            json!({"class": "marker", "body": {"marker": marker}}),
        )
        .await;
    let mut seen = Vec::new();
    loop {
        let data = subscriber.event().await;
        if data["class"] == "marker" {
            assert_eq!(data["body"]["marker"], marker);
            return seen;
        }
        seen.push(data);
    }
}

#[tokio::test]
async fn full_matching_table() {
    let running = start().await;
    let mut subscriber = Client::admin(&running).await;
    let mut publisher = Client::admin(&running).await;
    subscriber
        .ok("event", "subscribe", json!({"class": "marker"}))
        .await;
    for s in VALUES_SUB {
        for t in VALUES_SUB {
            for o in VALUES_SUB {
                subscriber
                    .ok(
                        "event",
                        "subscribe",
                        json!({"class": "m", "subclass": s, "type": t, "obj_id": o, "body": {"sub": format!("{s}/{t}/{o}")}}),
                    )
                    .await;
            }
        }
    }
    // Another class never matches.
    subscriber
        .ok("event", "subscribe", json!({"class": "other"}))
        .await;
    let mut marker = 0;
    for s in VALUES_EVENT {
        for t in VALUES_EVENT {
            for o in VALUES_EVENT {
                publisher
                    .ok(
                        "event",
                        "send_event",
                        json!({"class": "m", "subclass": s, "type": t, "obj_id": o, "body": {"event": true}}),
                    )
                    .await;
                marker += 1;
                let deliveries = drain_until_marker(&mut publisher, &mut subscriber, marker).await;
                let mut got: BTreeMap<String, usize> = BTreeMap::new();
                for data in &deliveries {
                    assert_eq!(data["class"], "m");
                    assert_eq!(data["body"]["event"], true);
                    // Wildcard fields of the event are left out of the frame.
                    for (name, value) in [("subclass", s), ("type", t), ("obj_id", o)] {
                        if value == "*" {
                            assert!(data.get(name).is_none(), "{name} left out: {data}");
                        } else {
                            assert_eq!(data[name], value);
                        }
                    }
                    *got.entry(data["body"]["sub"].as_str().expect("sub").to_owned())
                        .or_default() += 1;
                }
                let mut expected: BTreeMap<String, usize> = BTreeMap::new();
                for ss in VALUES_SUB {
                    for st in VALUES_SUB {
                        for so in VALUES_SUB {
                            if matches(ss, s) && matches(st, t) && matches(so, o) {
                                expected.insert(format!("{ss}/{st}/{so}"), 1);
                            }
                        }
                    }
                }
                assert_eq!(got, expected, "event {s}/{t}/{o}");
            }
        }
    }
    running.stop().await;
}

#[tokio::test]
async fn body_merge() {
    let running = start().await;
    let mut subscriber = Client::admin(&running).await;
    let mut publisher = Client::admin(&running).await;
    subscriber
        .ok(
            "event",
            "subscribe",
            json!({"class": "with", "body": {"a": 1, "b": 1}}),
        )
        .await;
    subscriber
        .ok("event", "subscribe", json!({"class": "without"}))
        .await;
    let cases = [
        (
            "with",
            Some(json!({"b": 2, "c": 3})),
            Some(json!({"a": 1, "b": 2, "c": 3})),
        ),
        ("with", None, Some(json!({"a": 1, "b": 1}))),
        ("with", Some(json!({})), Some(json!({"a": 1, "b": 1}))),
        ("with", Some(json!("text")), Some(json!("text"))),
        ("with", Some(json!([1, 2])), Some(json!([1, 2]))),
        ("without", Some(json!({"x": 1})), Some(json!({"x": 1}))),
        ("without", None, None),
        ("without", Some(json!(5)), Some(json!(5))),
    ];
    for (class, event_body, expected) in cases {
        let mut data = json!({"class": class});
        if let Some(body) = &event_body {
            data["body"] = body.clone();
        }
        publisher.ok("event", "send_event", data).await;
        let delivered = subscriber.event().await;
        assert_eq!(
            delivered.get("body").cloned(),
            expected,
            "{class} {event_body:?}"
        );
    }
    running.stop().await;
}

#[tokio::test]
async fn resubscribe_replaces_body_and_unsubscribe_removes() {
    let running = start().await;
    let mut client = Client::admin(&running).await;
    let subscriptions = client.ok("event", "get_subscriptions", json!({})).await;
    let list = subscriptions.as_array().expect("list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["subclass"], "session_event");
    assert_eq!(list[0]["obj_id"], client.session_id.as_str());
    assert_eq!(list[1]["subclass"], "user_event");
    assert_eq!(list[1]["obj_id"], "admin");
    assert_eq!(list[1]["type"], "*");

    client
        .ok(
            "event",
            "subscribe",
            json!({"class": "x", "type": "t", "body": {"v": 1}}),
        )
        .await;
    client.ok("event", "subscribe", json!({"class": "y"})).await;
    client
        .ok(
            "event",
            "subscribe",
            json!({"class": "x", "type": "t", "body": {"v": 2}}),
        )
        .await;
    let list = client.ok("event", "get_subscriptions", json!({})).await;
    let list = list.as_array().expect("list");
    assert_eq!(list.len(), 4, "re-subscribing never adds: {list:?}");
    assert_eq!(list[0]["class"], "y", "newest first");
    assert_eq!(
        list[1],
        json!({"class": "x", "subclass": "*", "type": "t", "obj_id": "*", "service": "", "body": {"v": 2}})
    );
    client
        .ok("event", "send_event", json!({"class": "x", "type": "t"}))
        .await;
    assert_eq!(client.event().await["body"], json!({"v": 2}));

    client
        .ok("event", "unsubscribe", json!({"class": "x", "type": "t"}))
        .await;
    client
        .ok("event", "unsubscribe", json!({"class": "never"}))
        .await;
    client
        .ok("event", "send_event", json!({"class": "x", "type": "t"}))
        .await;
    client.assert_quiet().await;
    // The automatic subscriptions can be removed like any other.
    let session_id = client.session_id.clone();
    client
        .ok(
            "event",
            "unsubscribe",
            json!({"class": "core", "subclass": "session_event", "obj_id": session_id}),
        )
        .await;
    client
        .ok("session", "send_event", json!({"session_id": session_id}))
        .await;
    client.assert_quiet().await;
    assert_eq!(
        client
            .ok("event", "get_subscriptions", json!({}))
            .await
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    running.stop().await;
}

#[tokio::test]
async fn subscribe_and_send_errors() {
    let running = start().await;
    let mut client = Client::admin(&running).await;
    assert_eq!(
        client.error_code("event", "subscribe", json!({})).await,
        "missing_field"
    );
    assert_eq!(
        client
            .error_code("event", "subscribe", json!({"class": "*"}))
            .await,
        "syntax_error"
    );
    assert_eq!(
        client
            .error_code("event", "subscribe", json!({"class": "c", "body": 1}))
            .await,
        "syntax_error"
    );
    assert_eq!(
        client
            .error_code("event", "subscribe", json!({"class": "c", "obj_id": 1}))
            .await,
        "syntax_error"
    );
    assert_eq!(
        client
            .error_code("event", "unsubscribe", json!({"subclass": "x"}))
            .await,
        "missing_field"
    );
    assert_eq!(
        client
            .error_code("event", "send_event", json!({"type": "x"}))
            .await,
        "missing_field"
    );
    assert_eq!(
        client
            .error_code("event", "send", json!({"class": 1}))
            .await,
        "syntax_error"
    );
    client.ok("event", "subscribe", json!({"class": "c"})).await;
    client
        .ok(
            "event",
            "send",
            json!({"class": "c", "body": {"via": "alias"}}),
        )
        .await;
    assert_eq!(client.event().await["body"]["via"], "alias");
    running.stop().await;
}

#[tokio::test]
async fn subscription_limit() {
    let running = start_with(|config| config.gateway.max_subscriptions = 4).await;
    let mut client = Client::admin(&running).await;
    client.ok("event", "subscribe", json!({"class": "a"})).await;
    client.ok("event", "subscribe", json!({"class": "b"})).await;
    assert_eq!(
        client
            .error_code("event", "subscribe", json!({"class": "c"}))
            .await,
        "limit_exceeded"
    );
    // Replacing an existing subscription is not a new one.
    client
        .ok(
            "event",
            "subscribe",
            json!({"class": "a", "body": {"x": 1}}),
        )
        .await;
    client
        .ok("event", "unsubscribe", json!({"class": "b"}))
        .await;
    client.ok("event", "subscribe", json!({"class": "c"})).await;
    running.stop().await;
}

#[tokio::test]
async fn two_matching_subscriptions_deliver_twice_and_order_is_kept() {
    let running = start().await;
    let mut subscriber = Client::admin(&running).await;
    let mut publisher = Client::admin(&running).await;
    subscriber
        .ok("event", "subscribe", json!({"class": "o"}))
        .await;
    subscriber
        .ok(
            "event",
            "subscribe",
            json!({"class": "o", "type": "t", "body": {"second": true}}),
        )
        .await;
    publisher
        .ok("event", "send_event", json!({"class": "o", "type": "t"}))
        .await;
    let first = subscriber.event().await;
    let second = subscriber.event().await;
    let bodies = [first.get("body").cloned(), second.get("body").cloned()];
    assert!(
        bodies.contains(&None) && bodies.contains(&Some(json!({"second": true}))),
        "{bodies:?}"
    );
    subscriber.assert_quiet().await;

    subscriber
        .ok("event", "unsubscribe", json!({"class": "o", "type": "t"}))
        .await;
    for n in 0..200 {
        publisher
            .ok(
                "event",
                "send_event",
                json!({"class": "o", "body": {"n": n}}),
            )
            .await;
    }
    for n in 0..200 {
        assert_eq!(subscriber.event().await["body"]["n"], n);
    }
    running.stop().await;
}

#[tokio::test]
async fn services_are_separate() {
    let running = start().await;
    let tenant_url = format!("ws://{}/api/ws/tenant1", running.ws_addrs[0]);
    let mut tenant = Client::connect(&tenant_url).await;
    tenant
        .ok(
            "user",
            "login",
            json!({"user": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    tenant.ok("event", "subscribe", json!({"class": "c"})).await;
    let mut default = Client::admin(&running).await;
    default
        .ok("event", "subscribe", json!({"class": "c"}))
        .await;
    default
        .ok(
            "event",
            "subscribe",
            json!({"class": "c", "service": "tenant1"}),
        )
        .await;

    // An event of the default service does not reach tenant1.
    default
        .ok(
            "event",
            "send_event",
            json!({"class": "c", "body": {"n": 1}}),
        )
        .await;
    let own = default.event().await;
    assert!(
        own.get("service").is_none(),
        "own service is left out: {own}"
    );
    tenant.assert_quiet().await;

    // An event sent into tenant1 reaches its subscribers; `service` shows for other services.
    default
        .ok(
            "event",
            "send_event",
            json!({"class": "c", "service": "tenant1", "body": {"n": 2}}),
        )
        .await;
    let tenant_event = tenant.event().await;
    assert_eq!(tenant_event["body"]["n"], 2);
    assert!(tenant_event.get("service").is_none());
    let cross = default.event().await;
    assert_eq!(cross["service"], "tenant1");
    default.assert_quiet().await;

    // `user list` is per service.
    let users = default.ok("user", "list", json!({})).await;
    assert_eq!(users["admin"].as_array().map(Vec::len), Some(1));
    running.stop().await;
}

#[tokio::test]
async fn default_policy_for_other_users() {
    let running = start().await;
    let mut alice = Client::login_to(&running, 0, "alice", "alice-pw").await;
    let mut alice2 = Client::login_to(&running, 0, "alice", "alice-pw").await;
    let bob = Client::login_to(&running, 0, "bob", "bob-pw").await;
    assert_eq!(
        alice.error_code("user", "list", json!({})).await,
        "unauthorized"
    );
    assert_eq!(
        alice
            .error_code("user", "get", json!({"user": "bob"}))
            .await,
        "unauthorized"
    );
    assert_eq!(
        alice
            .error_code("event", "subscribe", json!({"class": "core"}))
            .await,
        "unauthorized"
    );
    assert_eq!(
        alice
            .error_code("event", "send_event", json!({"class": "core"}))
            .await,
        "unauthorized"
    );
    assert_eq!(
        alice
            .error_code(
                "event",
                "subscribe",
                json!({"class": "media", "service": "other"})
            )
            .await,
        "unauthorized"
    );
    assert_eq!(
        alice
            .error_code("session", "stop", json!({"session_id": bob.session_id}))
            .await,
        "unauthorized"
    );
    assert_eq!(
        alice
            .error_code(
                "session",
                "cmd",
                json!({"session_id": bob.session_id, "class": "x", "cmd": "y"})
            )
            .await,
        "unauthorized"
    );
    alice
        .ok("event", "subscribe", json!({"class": "media"}))
        .await;
    alice
        .ok(
            "event",
            "send_event",
            json!({"class": "media", "body": {"ok": 1}}),
        )
        .await;
    assert_eq!(alice.event().await["body"]["ok"], 1);
    alice
        .ok(
            "user",
            "send_event",
            json!({"user": "alice", "type": "hello"}),
        )
        .await;
    assert_eq!(alice.event().await["type"], "hello");
    alice
        .ok("session", "log", json!({"source": "s", "message": "m"}))
        .await;
    alice.ok("event", "get_subscriptions", json!({})).await;
    alice
        .ok("session", "stop", json!({"session_id": alice2.session_id}))
        .await;
    assert_eq!(alice2.closed().await, 1000);
    running.stop().await;
}

#[tokio::test]
async fn two_hundred_clients_each_receive_one_event_once() {
    let running = start().await;
    let url = running.ws_url(0);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(200);
    // In waves, as PROTOCOL.md §1 asks: at most 64 connections of an address may wait to
    // log in at once.
    let waves = std::sync::Arc::new(tokio::sync::Semaphore::new(50));
    let mut tasks = Vec::new();
    for index in 0..200 {
        let url = url.clone();
        let ready_tx = ready_tx.clone();
        let waves = std::sync::Arc::clone(&waves);
        tasks.push(tokio::spawn(async move {
            let wave = waves.acquire_owned().await.expect("semaphore");
            let mut client = Client::connect(&url).await;
            client
                .ok(
                    "user",
                    "login",
                    json!({"user": "admin", "password": ADMIN_PASSWORD, "meta": {"i": index}}),
                )
                .await;
            drop(wave);
            client
                .ok("event", "subscribe", json!({"class": "load", "type": "go"}))
                .await;
            ready_tx.send(()).await.expect("ready");
            let event = client.event().await;
            assert_eq!(event["body"]["wave"], 1);
            client.assert_quiet().await;
        }));
    }
    for _ in 0..200 {
        ready_rx.recv().await.expect("all ready");
    }
    let mut publisher = Client::admin(&running).await;
    publisher
        .ok(
            "event",
            "send_event",
            json!({"class": "load", "type": "go", "body": {"wave": 1}}),
        )
        .await;
    for task in tasks {
        task.await.expect("client task");
    }
    running.stop().await;
}
