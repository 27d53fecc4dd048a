//! `switchboard ctl` as an operator runs it: the binary against a cluster of real processes,
//! with the internal secret, reading what the clients on two gateways see.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::Client;
use crate::common::cluster::{CLUSTER_ADMIN_PASSWORD, CLUSTER_SECRET, Cluster};

/// Runs `switchboard ctl --json ARGS` against `cluster`: exit success, stdout lines as JSON,
/// stderr.
async fn ctl(cluster: &Cluster, secret: &str, args: &[&str]) -> (bool, Vec<Value>, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("ctl")
        .args(["--registry-url", &cluster.registry_url()])
        .args(["--bus-url", &cluster.bus_url()])
        .args(["--internal-secret", secret, "--json"])
        .args(args)
        .env_remove("SWITCHBOARD_INTERNAL_SECRET")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("ctl finishes")
        .expect("ctl runs");
    let rows = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("JSON line: {line}")))
        .collect();
    (
        output.status.success(),
        rows,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn ctl_ok(cluster: &Cluster, args: &[&str]) -> Vec<Value> {
    let (ok, rows, stderr) = ctl(cluster, CLUSTER_SECRET, args).await;
    assert!(ok, "ctl {args:?} failed: {stderr}");
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_lists_publishes_stops_and_counts() {
    let cluster = Cluster::start(2);
    let mut watcher = Client::login_at(&cluster.ws_url(0), "admin", CLUSTER_ADMIN_PASSWORD).await;
    let mut other = Client::login_at(&cluster.ws_url(1), "admin", CLUSTER_ADMIN_PASSWORD).await;
    watcher
        .ok("event", "subscribe", json!({"class": "ops"}))
        .await;

    // users and sessions: what the registry holds.
    let users = ctl_ok(&cluster, &["users"]).await;
    assert_eq!(users, [json!({"user": "admin", "sessions": 2})]);
    let sessions = ctl_ok(&cluster, &["sessions", "admin"]).await;
    let mut ids: Vec<&str> = sessions
        .iter()
        .map(|row| row["session_id"].as_str().expect("session id"))
        .collect();
    ids.sort_unstable();
    let mut expected = [watcher.session_id.as_str(), other.session_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert!(
        sessions
            .iter()
            .all(|row| row["remote"].as_str().is_some_and(|r| r.starts_with("ws:")))
    );
    assert!(ctl_ok(&cluster, &["sessions", "nobody"]).await.is_empty());

    // publish: a subscriber on a gateway sees the event, key and body as given.
    ctl_ok(
        &cluster,
        &[
            "publish",
            "ops",
            "deploy",
            "started",
            "v2",
            r#"{"by":"ctl"}"#,
        ],
    )
    .await;
    let event = watcher.event().await;
    assert_eq!(
        (
            &event["class"],
            &event["subclass"],
            &event["type"],
            &event["obj_id"],
            &event["body"]["by"]
        ),
        (
            &json!("ops"),
            &json!("deploy"),
            &json!("started"),
            &json!("v2"),
            &json!("ctl")
        )
    );

    // stats: one row per gateway, from the gateways themselves.
    let started = Instant::now();
    let stats = loop {
        let stats = ctl_ok(&cluster, &["stats"]).await;
        let sessions: u64 = stats
            .iter()
            .filter_map(|row| row["sessions"].as_u64())
            .sum();
        if stats.len() == 2 && sessions == 2 {
            break stats;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "two gateways with a session each: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for row in &stats {
        assert_eq!(row["connections"], 1, "{row}");
        assert_eq!(row["version"], env!("CARGO_PKG_VERSION"), "{row}");
        assert!(row["uptime"].is_string(), "{row}");
    }
    // A new subscription shows in the count of the gateway holding it.
    let subscriptions = |stats: &[Value]| -> u64 {
        stats
            .iter()
            .filter_map(|row| row["subscriptions"].as_u64())
            .sum()
    };
    let before = subscriptions(&stats);
    other
        .ok("event", "subscribe", json!({"class": "more"}))
        .await;
    assert_eq!(
        subscriptions(&ctl_ok(&cluster, &["stats"]).await),
        before + 1
    );

    // stop: the session's connection closes with 1000, wherever it is.
    let stopped = ctl_ok(&cluster, &["stop", &other.session_id]).await;
    assert_eq!(stopped[0]["user"], "admin");
    assert_eq!(other.closed().await, 1000);
    let left = ctl_ok(&cluster, &["sessions", "admin"]).await;
    assert_eq!(left.len(), 1, "{left:?}");

    // Mistakes get a clear error and a failing exit status.
    let (ok, _, stderr) = ctl(&cluster, "not-the-cluster-secret-0000", &["users"]).await;
    assert!(!ok);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    let (ok, _, stderr) = ctl(&cluster, CLUSTER_SECRET, &["stop", "no-such-session"]).await;
    assert!(!ok);
    assert!(stderr.contains("no session no-such-session"), "{stderr}");
    let (ok, _, stderr) = ctl(&cluster, CLUSTER_SECRET, &["publish", "ops", "a", "b"]).await;
    assert!(!ok);
    assert!(stderr.contains("CLASS SUBCLASS TYPE OBJ_ID"), "{stderr}");
    watcher.assert_quiet().await;
}
