//! The scaled deployment as separate processes over a real Redis: cross-replica behaviour and
//! faults (a killed gateway, a restarted Redis, restarted services, a drained gateway).

use std::time::{Duration, Instant};

use crate::common::Client;
use crate::common::cluster::{CLUSTER_ADMIN_PASSWORD, Cluster, GATEWAY_TIMEOUT};
use serde_json::{Value, json};

async fn admin_at(cluster: &Cluster, index: usize) -> Client {
    Client::login_at(&cluster.ws_url(index), "admin", CLUSTER_ADMIN_PASSWORD).await
}

async fn admin_sessions(client: &mut Client) -> Vec<String> {
    let users = client.ok("user", "list", json!({})).await;
    let mut ids: Vec<String> = users["admin"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Retries `request` until it answers ok, up to `patience`; returns the last reply.
async fn until_ok(
    client: &mut Client,
    subclass: &str,
    cmd: &str,
    data: Value,
    patience: Duration,
) -> Value {
    let started = Instant::now();
    loop {
        let reply = client.request(subclass, cmd, data.clone()).await;
        if reply["result"] == "ok" || started.elapsed() > patience {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_across_three_gateways() {
    let cluster = Cluster::start(3);
    let mut a = admin_at(&cluster, 0).await;
    let mut b = admin_at(&cluster, 1).await;
    let mut c = Client::connect(&cluster.ws_url(2)).await;
    let login = c
        .ok(
            "user",
            "login",
            json!({"user": "admin", "password": CLUSTER_ADMIN_PASSWORD, "meta": {"replica": 2}}),
        )
        .await;
    c.session_id = login["session_id"].as_str().expect("id").to_owned();

    let mut expected = vec![
        a.session_id.clone(),
        b.session_id.clone(),
        c.session_id.clone(),
    ];
    expected.sort();
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(
            admin_sessions(client).await,
            expected,
            "user list sees every replica"
        );
    }
    let sessions = b.ok("user", "get", json!({"user": "admin"})).await;
    assert_eq!(sessions.as_object().map(|s| s.len()), Some(3));
    assert_eq!(sessions[&c.session_id]["meta"], json!({"replica": 2}));
    assert!(
        sessions[&a.session_id]["remote"]
            .as_str()
            .expect("remote")
            .starts_with("ws:127.0.0.1:")
    );

    // event send_event: one delivery per subscription, on every replica.
    for client in [&mut a, &mut b, &mut c] {
        client.ok("event", "subscribe", json!({"class": "x"})).await;
    }
    b.ok(
        "event",
        "send_event",
        json!({"class": "x", "body": {"n": 1}}),
    )
    .await;
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(client.event().await["body"]["n"], 1);
        client.assert_quiet().await;
    }
    // user send_event reaches every session of the user.
    c.ok("user", "send_event", json!({"user": "admin", "type": "hi"}))
        .await;
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(client.event().await["subclass"], "user_event");
        client.assert_quiet().await;
    }
    // session send_event reaches exactly its session.
    let target = b.session_id.clone();
    a.ok(
        "session",
        "send_event",
        json!({"session_id": target, "body": {"only": "b"}}),
    )
    .await;
    assert_eq!(b.event().await["body"]["only"], "b");
    a.assert_quiet().await;
    c.assert_quiet().await;

    // session cmd across replicas: ok, error, timeout.
    a.send_json(
        &json!({"class": "core", "subclass": "session", "cmd": "cmd", "tid": 1,
        "data": {"session_id": b.session_id, "class": "app", "cmd": "sum", "data": {"x": 2}}}),
    )
    .await;
    let request = b.next().await;
    assert_eq!(request["cmd"], "sum");
    b.send_json(&json!({"result": "ok", "data": {"sum": 4}, "tid": request["tid"]}))
        .await;
    assert_eq!(a.response_for(json!(1)).await["data"], json!({"sum": 4}));

    a.send_json(
        &json!({"class": "core", "subclass": "session", "cmd": "cmd", "tid": 2,
        "data": {"session_id": c.session_id, "class": "app", "cmd": "fail"}}),
    )
    .await;
    let request = c.next().await;
    c.send_json(&json!({"result": "error", "data": {"code": "nope", "error": "refused"}, "tid": request["tid"]}))
        .await;
    assert_eq!(
        a.response_for(json!(2)).await["data"],
        json!({"code": "nope", "error": "refused"})
    );
    let started = Instant::now();
    assert_eq!(
        a.error_code(
            "session",
            "cmd",
            json!({"session_id": c.session_id, "class": "app", "cmd": "ignored"})
        )
        .await,
        "timeout"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    let _ignored = c.next().await;

    // session stop across replicas.
    let stopped = a
        .ok("session", "stop", json!({"session_id": c.session_id}))
        .await;
    assert_eq!(stopped, json!({"user": "admin"}));
    assert_eq!(c.closed().await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_gateway_sessions_are_reaped() {
    let mut cluster = Cluster::start(2);
    let mut a = admin_at(&cluster, 0).await;
    let b = admin_at(&cluster, 1).await;
    assert_eq!(admin_sessions(&mut a).await.len(), 2);
    let killed_at = Instant::now();
    cluster.kill("gateway1");
    let mut reaped = None;
    while killed_at.elapsed() < Duration::from_secs(15) {
        if admin_sessions(&mut a).await == vec![a.session_id.clone()] {
            reaped = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reaped = reaped.expect("the killed gateway's session leaves user list");
    assert!(
        reaped >= GATEWAY_TIMEOUT / 2,
        "not before the timeout: {reaped:?}"
    );
    drop(b);
    // The surviving replica keeps serving.
    a.ok("event", "subscribe", json!({"class": "still"})).await;
    a.ok("event", "send_event", json!({"class": "still"})).await;
    assert_eq!(a.event().await["class"], "still");
    let mut again = admin_at(&cluster, 0).await;
    again.ok("session", "ping", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_delivery_resumes_without_restarts() {
    let mut cluster = Cluster::start(2);
    let mut a = admin_at(&cluster, 0).await;
    let mut b = admin_at(&cluster, 1).await;
    a.ok("event", "subscribe", json!({"class": "r"})).await;
    b.ok("event", "subscribe", json!({"class": "r"})).await;
    cluster.stop_redis();
    // Sockets stay; what needs Redis answers unavailable.
    assert_eq!(
        a.error_code("event", "send_event", json!({"class": "r"}))
            .await,
        "unavailable"
    );
    assert_eq!(
        b.error_code("event", "subscribe", json!({"class": "new"}))
            .await,
        "unavailable"
    );
    a.ok("session", "ping", json!({})).await;
    cluster.restart_redis();

    // Delivery resumes on both gateways once they have re-subscribed.
    let started = Instant::now();
    let mut n = 0;
    let (mut got_a, mut got_b) = (false, false);
    while !(got_a && got_b) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "delivery resumed in time"
        );
        n += 1;
        let _ = a
            .request(
                "event",
                "send_event",
                json!({"class": "r", "body": {"n": n}}),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (client, got) in [(&mut a, &mut got_a), (&mut b, &mut got_b)] {
            while let Ok(frame) =
                tokio::time::timeout(Duration::from_millis(50), client.next()).await
            {
                if frame["cmd"] == "event" {
                    *got = true;
                }
            }
        }
    }
    // Exactly once from here on.
    a.ok(
        "event",
        "send_event",
        json!({"class": "r", "body": {"final": true}}),
    )
    .await;
    for client in [&mut a, &mut b] {
        loop {
            let event = client.event().await;
            if event["body"]["final"] == true {
                break;
            }
        }
        client.assert_quiet().await;
    }
    // The registry, emptied by the restart, re-learns both sessions from heartbeats.
    let mut expected = vec![a.session_id.clone(), b.session_id.clone()];
    expected.sort();
    let started = Instant::now();
    while admin_sessions(&mut a).await != expected {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "sessions re-learned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The error code of an admin login at gateway `index`.
async fn login_error(cluster: &Cluster, index: usize) -> String {
    Client::connect(&cluster.ws_url(index))
        .await
        .error_code(
            "user",
            "login",
            json!({"user": "admin", "password": CLUSTER_ADMIN_PASSWORD}),
        )
        .await
}

/// Logs in as admin at gateway `index` until it works or `within` has passed.
async fn until_login(cluster: &Cluster, index: usize, within: Duration) -> Option<Client> {
    let started = Instant::now();
    while started.elapsed() < within {
        let mut client = Client::connect(&cluster.ws_url(index)).await;
        let reply = client
            .request(
                "user",
                "login",
                json!({"user": "admin", "password": CLUSTER_ADMIN_PASSWORD}),
            )
            .await;
        if reply["result"] == "ok" {
            return Some(client);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_auth_and_bus_restart() {
    let mut cluster = Cluster::start(2);
    let mut a = admin_at(&cluster, 0).await;
    a.ok("event", "subscribe", json!({"class": "z"})).await;

    cluster.kill("registry");
    let started = Instant::now();
    assert_eq!(a.error_code("user", "list", json!({})).await, "unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "within the deadline"
    );
    assert_eq!(login_error(&cluster, 1).await, "unavailable");
    cluster.restart("registry");
    let reply = until_ok(&mut a, "user", "list", json!({}), Duration::from_secs(10)).await;
    assert_eq!(reply["result"], "ok", "{reply}");
    assert_eq!(
        reply["data"]["admin"],
        json!([a.session_id]),
        "state survived in Redis"
    );
    // Logins travel on long-lived streams to auth and the registry; a restarted service is
    // found again by the next login.
    let relogin = until_login(&cluster, 1, Duration::from_secs(10)).await;
    assert!(
        relogin.is_some(),
        "login through gateway 1 after the registry restart"
    );
    // Gateways hold their login streams open; a stopping auth ends them instead of waiting.
    assert!(
        cluster.terminate_within("auth", Duration::from_secs(5)),
        "auth exits on SIGTERM while gateways hold login streams"
    );
    assert_eq!(login_error(&cluster, 0).await, "unavailable");
    cluster.restart("auth");
    let relogin = until_login(&cluster, 0, Duration::from_secs(10)).await;
    assert!(
        relogin.is_some(),
        "login through gateway 0 after the auth restart"
    );

    // Gateway 0 publishes into Redis itself: the bus going away does not concern it.
    // Gateway 1 publishes through the bus: its clients get `unavailable` until it is back.
    let mut b = admin_at(&cluster, 1).await;
    b.ok(
        "event",
        "send_event",
        json!({"class": "z", "type": "before"}),
    )
    .await;
    assert_eq!(a.event().await["type"], "before");
    // Gateway 1 holds its publish stream open; a stopping bus ends it instead of waiting.
    assert!(
        cluster.terminate_within("bus", Duration::from_secs(5)),
        "the bus exits on SIGTERM while a gateway holds a publish stream"
    );
    a.ok(
        "event",
        "send_event",
        json!({"class": "z", "type": "direct"}),
    )
    .await;
    assert_eq!(a.event().await["type"], "direct");
    assert_eq!(
        b.error_code("event", "send_event", json!({"class": "z"}))
            .await,
        "unavailable"
    );
    cluster.restart("bus");
    let reply = until_ok(
        &mut b,
        "event",
        "send_event",
        json!({"class": "z", "type": "via_bus"}),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(reply["result"], "ok", "{reply}");
    assert_eq!(a.event().await["type"], "via_bus");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gateway_drains_and_clients_move() {
    let mut cluster = Cluster::start(2);
    let mut a = admin_at(&cluster, 0).await;
    let mut b = admin_at(&cluster, 1).await;
    let old_session = b.session_id.clone();
    cluster.terminate("gateway1");
    assert_eq!(b.closed().await, 1001);
    assert!(cluster.log("gateway1").contains("shutting down"));
    // The client reconnects through another replica.
    let moved = admin_at(&cluster, 0).await;
    let sessions = admin_sessions(&mut a).await;
    assert!(sessions.contains(&moved.session_id));
    assert!(
        !sessions.contains(&old_session),
        "the drained gateway unregistered its session"
    );
}
