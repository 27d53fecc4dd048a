//! Events that survive, on separate processes and a real Redis: recovery on another gateway
//! under load, after a gateway is SIGKILLed, gap repair after the gateways' Redis subscribers
//! are cut, a new epoch after Redis restarts, and clients' events through the bus.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::Client;
use crate::common::cluster::{CLUSTER_ADMIN_PASSWORD, Cluster};

pub(crate) async fn admin_at(cluster: &Cluster, index: usize) -> Client {
    Client::login_at(&cluster.ws_url(index), "admin", CLUSTER_ADMIN_PASSWORD).await
}

/// Publishes `count` events of `class` through gateway `index`, `per_ms` each millisecond
/// (bursts of `per_ms`, about `per_ms` thousand a second), body `{"n": 1..=count}`.
fn publish_paced(
    url: String,
    class: &'static str,
    count: u64,
    per_ms: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut publisher = Client::login_at(&url, "admin", CLUSTER_ADMIN_PASSWORD).await;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut n = 0;
        while n < count {
            tick.tick().await;
            for _ in 0..per_ms.min(count - n) {
                n += 1;
                let send = publisher.ok(
                    "event",
                    "send_event",
                    json!({"class": class, "body": {"n": n}}),
                );
                tokio::pin!(send);
                // A slow answer is named, so a silent subscriber can be told from a stuck
                // publisher.
                if tokio::time::timeout(Duration::from_secs(1), &mut send)
                    .await
                    .is_err()
                {
                    eprintln!("publisher: send_event {n} unanswered after 1 s");
                    send.await;
                    eprintln!("publisher: send_event {n} answered");
                }
            }
        }
    })
}

/// Reads events of a positioned subscription, checking each one's offset matches its body's
/// `n`, into `offsets`, until `until` (an offset) or the connection ends; true when it ended.
pub(crate) async fn read_offsets(client: &mut Client, offsets: &mut Vec<u64>, until: u64) -> bool {
    while offsets.last().copied().unwrap_or(0) < until {
        let Some(frame) = client.next_within(Duration::from_secs(10)).await else {
            return true;
        };
        if frame["cmd"] != "event" {
            continue;
        }
        assert_ne!(
            frame["data"]["type"], "stream_gap",
            "no gap expected: {frame}"
        );
        let offset = frame["pos"]["offset"].as_u64().expect("positioned");
        assert_eq!(frame["data"]["body"]["n"], offset, "{frame}");
        offsets.push(offset);
    }
    false
}

pub(crate) fn assert_exactly_once_in_order(offsets: &[u64], count: u64) {
    let expected: Vec<u64> = (1..=count).collect();
    if offsets != expected {
        let missing: Vec<u64> = expected
            .iter()
            .filter(|n| !offsets.contains(n))
            .copied()
            .collect();
        panic!(
            "{} offsets delivered for {count} published; missing {:?}; first out of place at {:?}",
            offsets.len(),
            &missing[..missing.len().min(10)],
            offsets.iter().zip(1..).position(|(got, want)| *got != want)
        );
    }
}

/// A subscriber that leaves mid-stream and recovers on the other gateway while a publisher
/// runs at about 2000 events a second gets every event once, in order.
#[tokio::test]
async fn recovery_on_another_gateway_under_load_is_exactly_once() {
    const COUNT: u64 = 4000;
    let cluster = Cluster::start(2);
    let mut first = admin_at(&cluster, 0).await;
    let opened = first
        .ok(
            "event",
            "subscribe",
            json!({"class": "load", "recover": true}),
        )
        .await;
    let epoch = opened["epoch"].clone();
    let publisher = publish_paced(cluster.ws_url(1), "load", COUNT, 2);
    let mut offsets = Vec::new();
    read_offsets(&mut first, &mut offsets, 800).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = admin_at(&cluster, 1).await;
    let last = *offsets.last().expect("events before leaving");
    let reply = second
        .ok(
            "event",
            "subscribe",
            json!({"class": "load", "recover": {"epoch": epoch, "offset": last}}),
        )
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert!(
        !read_offsets(&mut second, &mut offsets, COUNT).await,
        "connection stays"
    );
    publisher.await.expect("publisher");
    assert_exactly_once_in_order(&offsets, COUNT);
    second.assert_quiet().await;
}

/// The subscriber's gateway is SIGKILLed mid-stream; the subscriber reconnects to the other
/// gateway, recovers, and ends with every event once, in order.
#[tokio::test]
async fn a_sigkilled_gateway_loses_nothing_its_subscribers_recover() {
    const COUNT: u64 = 3000;
    let mut cluster = Cluster::start(2);
    let mut subscriber = admin_at(&cluster, 0).await;
    let opened = subscriber
        .ok(
            "event",
            "subscribe",
            json!({"class": "fault", "recover": true}),
        )
        .await;
    let epoch = opened["epoch"].clone();
    let publisher = publish_paced(cluster.ws_url(1), "fault", COUNT, 1);
    let mut offsets = Vec::new();
    read_offsets(&mut subscriber, &mut offsets, 700).await;
    cluster.kill("gateway0");
    // What was already on its way still arrives; then the connection ends.
    assert!(
        read_offsets(&mut subscriber, &mut offsets, COUNT).await,
        "the gateway died"
    );
    let mut again = admin_at(&cluster, 1).await;
    let last = offsets.last().copied().unwrap_or(0);
    let reply = again
        .ok(
            "event",
            "subscribe",
            json!({"class": "fault", "recover": {"epoch": epoch, "offset": last}}),
        )
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert!(!read_offsets(&mut again, &mut offsets, COUNT).await);
    publisher.await.expect("publisher");
    assert_exactly_once_in_order(&offsets, COUNT);
}

/// The gateways' Redis subscriber connections are cut mid-stream (on a Redis Cluster, on every
/// master): the events published while they reconnect are read back from the history, so the
/// subscriber sees no gap.
#[tokio::test]
async fn a_cut_redis_subscriber_is_repaired_from_history() {
    const COUNT: u64 = 3000;
    // History for 5 s of the publisher: on a Redis Cluster a subscription lost without a word
    // is found by the subscriber's next check, up to a second later.
    let cluster = Cluster::start_with_env(2, &[("SWITCHBOARD_HISTORY_SIZE", "5000")]);
    let mut subscriber = admin_at(&cluster, 0).await;
    subscriber
        .ok(
            "event",
            "subscribe",
            json!({"class": "cut", "recover": true}),
        )
        .await;
    let publisher = publish_paced(cluster.ws_url(1), "cut", COUNT, 1);
    let mut offsets = Vec::new();
    read_offsets(&mut subscriber, &mut offsets, 500).await;
    // Cut them again and again until a gap was repaired (at most 3 s): events published while
    // they reconnect and re-subscribe are missed by the pub/sub connection.
    let ports = cluster.redis_ports();
    let mut killed = 0;
    for _ in 0..300 {
        if cluster
            .log("gateway0")
            .contains("gap repaired from history")
        {
            break;
        }
        for port in &ports {
            let output = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "CLIENT", "KILL", "TYPE", "pubsub"])
                .output()
                .expect("redis-cli runs");
            killed += String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse::<u32>()
                .unwrap_or(0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(killed >= 2, "pub/sub connections cut: {killed}");
    let ended = read_offsets(&mut subscriber, &mut offsets, COUNT).await;
    // A publisher that failed says why before the subscriber's silence does.
    if !ended || publisher.is_finished() {
        publisher.await.expect("publisher");
    }
    assert!(
        !ended,
        "the subscriber went silent after {} events",
        offsets.len()
    );
    assert_exactly_once_in_order(&offsets, COUNT);
    assert!(
        cluster
            .log("gateway0")
            .contains("gap repaired from history"),
        "events were missed and read back"
    );
}

/// After Redis restarts empty, a stream opened again has a new epoch: positions from before
/// are not recovered, and a live positioned subscription is told of the gap.
#[tokio::test]
async fn a_redis_restart_starts_a_new_epoch() {
    let mut cluster = Cluster::start(2);
    let mut live = admin_at(&cluster, 0).await;
    let opened = live
        .ok(
            "event",
            "subscribe",
            json!({"class": "epoch", "recover": true}),
        )
        .await;
    let old_epoch = opened["epoch"].clone();
    let mut publisher = admin_at(&cluster, 1).await;
    publisher
        .ok(
            "event",
            "send_event",
            json!({"class": "epoch", "body": {"n": 1}}),
        )
        .await;
    assert_eq!(live.next().await["pos"]["offset"], 1);

    cluster.restart_redis();
    let started = Instant::now();
    let reply = loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "Redis back in time"
        );
        let mut late = Client::connect(&cluster.ws_url(1)).await;
        let login = late
            .request(
                "user",
                "login",
                json!({"user": "admin", "password": CLUSTER_ADMIN_PASSWORD}),
            )
            .await;
        if login["result"] != "ok" {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let reply = late
            .request(
                "event",
                "subscribe",
                json!({"class": "epoch", "recover": {"epoch": old_epoch, "offset": 1}}),
            )
            .await;
        if reply["result"] == "ok" {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(reply["data"]["recovered"], false, "{reply}");
    assert_ne!(reply["data"]["epoch"], old_epoch);
    let new_epoch = reply["data"]["epoch"].clone();

    // Once the gateways have re-subscribed, the live subscription sees the new epoch: first
    // the gap notice, then the event.
    let started = Instant::now();
    let mut frames: Vec<Value> = Vec::new();
    while !frames
        .iter()
        .any(|frame| frame["pos"]["epoch"] == new_epoch)
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "delivery resumed: {frames:?}"
        );
        let _ = publisher
            .request(
                "event",
                "send_event",
                json!({"class": "epoch", "body": {"n": 2}}),
            )
            .await;
        while let Some(frame) = live.next_within(Duration::from_millis(200)).await {
            frames.push(frame);
        }
    }
    let gap = frames
        .iter()
        .position(|frame| frame["data"]["type"] == "stream_gap")
        .unwrap_or_else(|| panic!("a gap notice: {frames:?}"));
    let first_new = frames
        .iter()
        .position(|frame| frame["pos"]["epoch"] == new_epoch)
        .expect("an event of the new epoch");
    assert!(gap < first_new, "{frames:?}");
    assert_eq!(frames[gap]["data"]["body"]["reason"], "epoch_changed");
    assert_eq!(frames[gap]["data"]["body"]["epoch"], old_epoch);
}

/// With the bus frozen, `send_event` answers `unavailable` within `rpc_timeout` on a gateway
/// that sends clients' events through it, and works again once the bus runs.
#[tokio::test]
async fn send_event_is_unavailable_while_the_bus_is_frozen() {
    let cluster = Cluster::start(2);
    // Gateway 1 sends clients' events through the bus (the default).
    let mut client = admin_at(&cluster, 1).await;
    client
        .ok("event", "send_event", json!({"class": "frozen"}))
        .await;
    cluster.signal("bus", "STOP");
    let started = Instant::now();
    let code = client
        .error_code("event", "send_event", json!({"class": "frozen"}))
        .await;
    let waited = started.elapsed();
    cluster.signal("bus", "CONT");
    assert_eq!(code, "unavailable");
    assert!(
        waited < Duration::from_secs(5),
        "answered within rpc_timeout: {waited:?}"
    );
    let started = Instant::now();
    loop {
        let reply = client
            .request("event", "send_event", json!({"class": "frozen"}))
            .await;
        if reply["result"] == "ok" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the bus is back: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
