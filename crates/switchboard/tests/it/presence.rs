//! Lifecycle events (PROTOCOL.md §11): `core/presence/started` and `stopped`, fired by the
//! registry, exactly once per session lifetime, with the reason it ended.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::cluster::{CLUSTER_ADMIN_PASSWORD, Cluster};
use crate::common::{ADMIN_PASSWORD, Client, start_with};

/// Presence events received by `watcher` until nothing comes for `quiet`.
async fn presence_events(watcher: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut events = Vec::new();
    while let Some(frame) = watcher.next_within(quiet).await {
        if frame["cmd"] == "event" && frame["data"]["subclass"] == "presence" {
            events.push(frame["data"].clone());
        }
    }
    events
}

async fn watch(url: &str, password: &str) -> Client {
    let mut watcher = Client::login_at(url, "admin", password).await;
    watcher
        .ok(
            "event",
            "subscribe",
            json!({"class": "core", "subclass": "presence"}),
        )
        .await;
    watcher
}

#[tokio::test]
async fn sessions_start_and_stop_with_their_reason() {
    let running = start_with(|_| {}).await;
    let mut watcher = watch(&running.ws_url(0), ADMIN_PASSWORD).await;
    let mut alice = Client::connect(&running.ws_url(0)).await;
    let login = alice
        .request(
            "user",
            "login",
            json!({"user": "alice", "password": "alice-pw", "meta": {"device": "phone"}}),
        )
        .await;
    let alice_id = login["data"]["session_id"].as_str().expect("id").to_owned();
    let key = login["data"]["resume_key"].clone();
    let bob = Client::login_to(&running, 0, "bob", "bob-pw").await;

    // A takeover, a session stop and a close.
    let mut taker = Client::connect(&running.ws_url(0)).await;
    taker
        .ok(
            "user",
            "login",
            json!({"user": "alice", "password": "alice-pw", "session_id": alice_id, "resume_key": key}),
        )
        .await;
    watcher
        .ok("session", "stop", json!({"session_id": bob.session_id}))
        .await;
    drop(taker);

    let events = presence_events(&mut watcher, Duration::from_millis(700)).await;
    let seen: Vec<(String, String, String)> = events
        .iter()
        .map(|event| {
            (
                event["type"].as_str().unwrap_or_default().to_owned(),
                event["body"]["session_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                event["body"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let expected = [
        ("started", alice_id.as_str(), ""),
        ("started", bob.session_id.as_str(), ""),
        ("stopped", alice_id.as_str(), "taken_over"),
        ("started", alice_id.as_str(), ""),
        ("stopped", bob.session_id.as_str(), "stopped"),
        ("stopped", alice_id.as_str(), "closed"),
    ]
    .map(|(t, s, r)| (t.to_owned(), s.to_owned(), r.to_owned()));
    assert_eq!(seen, expected, "{events:#?}");
    let first = &events[0];
    assert_eq!(first["obj_id"], "alice");
    assert_eq!(first["body"]["user"], "alice");
    assert_eq!(first["body"]["type"], "api_server");
    assert_eq!(first["body"]["meta"]["device"], "phone");
    assert!(
        first["body"]["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("ws:"))
    );
    drop(alice);

    // Only the admin may subscribe to them by default.
    let mut plain = Client::login_to(&running, 0, "bob", "bob-pw").await;
    let code = plain
        .error_code(
            "event",
            "subscribe",
            json!({"class": "core", "subclass": "presence"}),
        )
        .await;
    assert_eq!(code, "unauthorized");
}

/// Takeovers, closes and stops of the same sessions, all at once, through `urls`: every
/// lifetime yields one `started` and one `stopped`, in that order.
async fn racing_ends(urls: [String; 2], password: &'static str) {
    const SESSIONS: usize = 20;
    let mut watcher = watch(&urls[0], password).await;
    let mut originals = Vec::new();
    for index in 0..SESSIONS {
        let mut client = Client::connect(&urls[index % 2]).await;
        let login = client
            .request(
                "user",
                "login",
                json!({"user": "admin", "password": password}),
            )
            .await;
        let id = login["data"]["session_id"].as_str().expect("id").to_owned();
        originals.push((client, id, login["data"]["resume_key"].clone()));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (client, id, key)) in originals.into_iter().enumerate() {
        let url = urls[(index + 1) % 2].clone();
        let stop_url = urls[index % 2].clone();
        tasks.spawn(async move {
            let take = async {
                let mut taker = Client::connect(&url).await;
                let _ = taker
                    .request(
                        "user",
                        "login",
                        json!({"user": "admin", "password": password,
                               "session_id": id, "resume_key": key}),
                    )
                    .await;
                taker
            };
            let stop = async {
                let mut stopper = Client::login_at(&stop_url, "admin", password).await;
                let _ = stopper
                    .request("session", "stop", json!({"session_id": id}))
                    .await;
                stopper
            };
            let close = async move { drop(client) };
            let (taker, stopper, ()) = tokio::join!(take, stop, close);
            (taker, stopper)
        });
    }
    let mut survivors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        survivors.push(joined.expect("task"));
    }
    drop(survivors);
    let events = presence_events(&mut watcher, Duration::from_secs(1)).await;
    let mut by_session: HashMap<String, Vec<String>> = HashMap::new();
    for event in &events {
        let id = event["body"]["session_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        by_session
            .entry(id)
            .or_default()
            .push(event["type"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        by_session.len() > SESSIONS,
        "the sessions and the stoppers: {}",
        by_session.len()
    );
    for (id, types) in &by_session {
        assert!(types.len() % 2 == 0, "{id}: {types:?}");
        for pair in types.chunks(2) {
            assert_eq!(pair, ["started", "stopped"], "{id}: {types:?}");
        }
    }
}

#[tokio::test]
async fn racing_ends_yield_one_start_and_one_stop_per_lifetime() {
    let running = start_with(|config| config.gateways = 2).await;
    racing_ends([running.ws_url(0), running.ws_url(1)], ADMIN_PASSWORD).await;
}

/// The same race on separate processes and Redis, where the registry's scripts fire them.
#[tokio::test]
async fn racing_ends_in_redis_yield_one_start_and_one_stop_per_lifetime() {
    let cluster = Cluster::start(2);
    racing_ends(
        [cluster.ws_url(0), cluster.ws_url(1)],
        CLUSTER_ADMIN_PASSWORD,
    )
    .await;
}

/// A session of a SIGKILLed gateway is `lost` once the registry reaps it.
#[tokio::test]
async fn a_dead_gateways_sessions_are_lost() {
    let mut cluster = Cluster::start(2);
    let mut watcher = watch(&cluster.ws_url(1), CLUSTER_ADMIN_PASSWORD).await;
    let victim = Client::login_at(&cluster.ws_url(0), "admin", CLUSTER_ADMIN_PASSWORD).await;
    let started = presence_events(&mut watcher, Duration::from_millis(300)).await;
    assert!(
        started
            .iter()
            .any(|e| e["body"]["session_id"] == victim.session_id.as_str())
    );
    cluster.kill("gateway0");
    let killed = Instant::now();
    let lost = loop {
        assert!(killed.elapsed() < Duration::from_secs(15), "lost in time");
        let Some(frame) = watcher.next_within(Duration::from_secs(1)).await else {
            continue;
        };
        if frame["data"]["type"] == "stopped"
            && frame["data"]["body"]["session_id"] == victim.session_id.as_str()
        {
            break frame["data"].clone();
        }
    };
    assert_eq!(lost["body"]["reason"], "lost", "{lost}");
    // gateway_timeout (2 s) plus the reaper's period.
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "{:?}",
        killed.elapsed()
    );
}
