//! What an operator sees, on real processes: readiness that follows Redis and SIGTERM, every
//! documented series on its service and moving under a workload, JSON logs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::cluster::{CLUSTER_ADMIN_PASSWORD, Cluster};
use crate::common::{Client, admin_get};

/// How long readiness may take to follow a change (the issue's bound).
const FOLLOW: Duration = Duration::from_secs(5);

async fn ready_status(address: SocketAddr) -> u16 {
    admin_get(address, "/health/ready").await.0
}

/// Polls `/health/ready` of every address until each answers `status`; how long it took.
async fn until_ready_is(addresses: &[(&str, SocketAddr)], status: u16, patience: Duration) {
    let started = Instant::now();
    for (name, address) in addresses {
        loop {
            let (now, body) = admin_get(*address, "/health/ready").await;
            if now == status {
                break;
            }
            assert!(
                started.elapsed() < patience,
                "{name} still answers {now} ({body:?}), not {status}, after {patience:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_within_five_seconds() {
    let mut cluster = Cluster::start(1);
    let depends_on_redis = [
        ("gateway0", cluster.admin_addr("gateway0")),
        ("registry", cluster.admin_addr("registry")),
        ("bus", cluster.admin_addr("bus")),
    ];
    until_ready_is(&depends_on_redis, 200, Duration::from_secs(20)).await;
    let auth = cluster.admin_addr("auth");
    assert_eq!(ready_status(auth).await, 200);

    cluster.stop_redis();
    until_ready_is(&depends_on_redis, 503, FOLLOW).await;
    let (_, why) = admin_get(cluster.admin_addr("gateway0"), "/health/ready").await;
    assert!(why.contains("redis subscriber"), "{why}");
    // Liveness is not readiness; auth needs no Redis.
    assert_eq!(
        admin_get(cluster.admin_addr("bus"), "/health/live").await.0,
        200
    );
    assert_eq!(ready_status(auth).await, 200);

    cluster.restart_redis();
    until_ready_is(&depends_on_redis, 200, FOLLOW).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_is_unready_when_a_service_it_calls_is_gone() {
    let mut cluster = Cluster::start(1);
    let gateway = [("gateway0", cluster.admin_addr("gateway0"))];
    until_ready_is(&gateway, 200, Duration::from_secs(20)).await;
    cluster.kill("bus");
    until_ready_is(&gateway, 503, FOLLOW).await;
    let (_, why) = admin_get(gateway[0].1, "/health/ready").await;
    assert!(why.contains("bus"), "{why}");
    cluster.restart("bus");
    until_ready_is(&gateway, 200, FOLLOW).await;
}

fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_off_before_any_connection_closes() {
    let mut cluster = Cluster::start(1);
    let admin = cluster.admin_addr("gateway0");
    until_ready_is(&[("gateway0", admin)], 200, Duration::from_secs(20)).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(Client::login_at(&cluster.ws_url(0), "admin", CLUSTER_ADMIN_PASSWORD).await);
    }
    cluster.signal("gateway0", "TERM");
    let started = Instant::now();
    while ready_status(admin).await != 503 {
        assert!(started.elapsed() < Duration::from_secs(2), "still ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Connections are closed over the drain window (5 s): most are still open now.
    let (_, metrics) = admin_get(admin, "/metrics").await;
    let open = series_value(&metrics, "switchboard_connections").expect("the gauge");
    assert!(
        open >= 10.0,
        "{open} connections left when readiness went off"
    );
    for client in &mut clients {
        assert_eq!(client.closed().await, 1001);
    }
    cluster.terminate("gateway0");
}

/// The series table of docs/OPERATIONS.md: series → service.
fn documented_series() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/OPERATIONS.md");
    let text = std::fs::read_to_string(path).expect("docs/OPERATIONS.md");
    text.lines()
        .filter(|line| line.starts_with("| `switchboard_"))
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            (
                cells[0]
                    .trim_start_matches("| ")
                    .trim_matches('`')
                    .to_owned(),
                cells[1].to_owned(),
            )
        })
        .collect()
}

/// The names a scrape shows (a histogram's `_bucket`, `_sum` and `_count` under its own).
fn names_in(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| {
            let (name, kind) = line.split_once(' ')?;
            Some(match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_owned(),
            })
        })
        .collect()
}

/// The sum of every sample of `name` (all its label sets; a histogram's `_count`).
fn total(text: &str, name: &str) -> f64 {
    let sample = if name.ends_with("_seconds") {
        format!("{name}_count")
    } else {
        name.to_owned()
    };
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let bare = series.split('{').next()?;
            (bare == sample).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_series_is_exported_and_moves_under_a_workload() {
    let cluster = Cluster::start(2);
    let services = [
        ("gateway", "gateway1"),
        ("auth", "auth"),
        ("registry", "registry"),
        ("bus", "bus"),
    ];
    let scrape = |name: &str| admin_get(cluster.admin_addr(name), "/metrics");

    // The workload, on gateway 1 (which publishes through the bus).
    let url = cluster.ws_url(1);
    let mut watcher = Client::login_at(&url, "admin", CLUSTER_ADMIN_PASSWORD).await;
    watcher
        .ok(
            "event",
            "subscribe",
            json!({"class": "ops", "type": "tick"}),
        )
        .await;
    let mut sender = Client::login_at(&url, "admin", CLUSTER_ADMIN_PASSWORD).await;
    for round in 0..5 {
        sender
            .ok(
                "event",
                "send_event",
                json!({"class": "ops", "type": "tick", "body": {"round": round}}),
            )
            .await;
        assert_eq!(watcher.event().await["body"]["round"], round);
    }
    sender.ok("user", "list", json!({})).await;
    assert_eq!(
        sender.error_code("event", "nonsense", json!({})).await,
        "unknown_command"
    );
    let mut wrong = Client::connect(&url).await;
    assert_eq!(
        wrong
            .error_code(
                "user",
                "login",
                json!({"user": "admin", "password": "wrong"})
            )
            .await,
        "invalid_credentials"
    );
    sender
        .ok("session", "stop", json!({"session_id": sender.session_id}))
        .await;
    assert_eq!(sender.closed().await, 1000);
    // Two heartbeats (300 ms apart) and a reaper run.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let documented = documented_series();
    assert!(documented.len() >= 30, "{documented:?}");
    let mut scrapes = BTreeMap::new();
    for (service, process) in services {
        let (status, text) = scrape(process).await;
        assert_eq!(status, 200);
        let exported = names_in(&text);
        for (series, owner) in &documented {
            if owner == service {
                assert!(exported.contains(series), "{series} missing on {service}");
            }
        }
        for series in &exported {
            let own = ["switchboard_build_info", "switchboard_start_time_seconds"];
            assert!(
                own.contains(&series.as_str())
                    || documented.get(series).map(String::as_str) == Some(service),
                "{series} on {service} is not in the table of docs/OPERATIONS.md"
            );
        }
        assert!(
            total(&text, "switchboard_build_info") >= 1.0,
            "{service} has no build info"
        );
        scrapes.insert(service, text);
    }
    // Everything the workload did shows.
    let moved = [
        ("gateway", "switchboard_connections"),
        ("gateway", "switchboard_sessions"),
        ("gateway", "switchboard_subscriptions"),
        ("gateway", "switchboard_redis_channels"),
        ("gateway", "switchboard_frames_received_total"),
        ("gateway", "switchboard_frames_sent_total"),
        ("gateway", "switchboard_events_submitted_total"),
        ("gateway", "switchboard_events_delivered_total"),
        ("gateway", "switchboard_disconnects_total"),
        ("gateway", "switchboard_refusals_total"),
        ("gateway", "switchboard_logins_total"),
        ("gateway", "switchboard_heartbeats_total"),
        ("gateway", "switchboard_command_duration_seconds"),
        ("gateway", "switchboard_grpc_client_duration_seconds"),
        ("gateway", "switchboard_login_duration_seconds"),
        ("gateway", "switchboard_delivery_lag_seconds"),
        ("auth", "switchboard_auth_checks_total"),
        ("auth", "switchboard_auth_check_duration_seconds"),
        ("registry", "switchboard_registry_registrations_total"),
        ("registry", "switchboard_registry_heartbeats_total"),
        ("registry", "switchboard_registry_reaps_total"),
        ("bus", "switchboard_bus_events_total"),
        ("bus", "switchboard_bus_redis_publish_duration_seconds"),
    ];
    for (service, series) in moved {
        assert!(
            total(&scrapes[service], series) > 0.0,
            "{series} did not move on {service}"
        );
    }
    let gateway = &scrapes["gateway"];
    assert_eq!(
        series_value(
            gateway,
            r#"switchboard_refusals_total{code="unknown_command"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        series_value(
            gateway,
            r#"switchboard_logins_total{result="invalid_credentials"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        series_value(gateway, r#"switchboard_disconnects_total{code="1000"}"#),
        Some(1.0)
    );
    assert_eq!(
        series_value(gateway, "switchboard_events_delivered_total"),
        Some(5.0)
    );
    assert!(
        series_value(
            &scrapes["bus"],
            r#"switchboard_bus_events_total{result="published"}"#
        ) >= Some(5.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_session_in_their_spans() {
    let port = switchboard_test_support::free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "dev",
            "--log-format",
            "json",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-password",
            "json-logs-password",
        ])
        .env("RUST_LOG", "info,switchboard_gateway=debug")
        .env_remove("SWITCHBOARD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("switchboard dev starts");
    assert!(switchboard_test_support::wait_for_port(
        port,
        Duration::from_secs(20)
    ));
    let url = format!("ws://127.0.0.1:{port}/api/ws");
    let mut client = Client::login_at(&url, "admin", "json-logs-password").await;
    let session_id = client.session_id.clone();
    client
        .ok("session", "stop", json!({"session_id": session_id}))
        .await;
    assert_eq!(client.closed().await, 1000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.start_kill();
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut objects = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .unwrap_or(Ok(None))
    {
        let object: Value = serde_json::from_str(&line)
            .unwrap_or_else(|error| panic!("not one JSON object: {line:?}: {error}"));
        for field in ["timestamp", "level", "target", "fields"] {
            assert!(object.get(field).is_some(), "no {field} in {line}");
        }
        objects.push(object);
    }
    assert!(objects.len() >= 3, "{objects:?}");
    // A line logged on the session's connection carries its ids in its spans.
    let of_session = objects.iter().find(|object| {
        object["spans"].as_array().is_some_and(|spans| {
            spans
                .iter()
                .any(|span| span["session_id"] == session_id.as_str() && span["user"] == "admin")
        })
    });
    let line = of_session.unwrap_or_else(|| panic!("no line of the session in {objects:#?}"));
    let conn = line["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|span| span["name"] == "conn"))
        .expect("the conn span");
    assert!(conn["gateway"].as_str().is_some_and(|id| !id.is_empty()));
}

#[test]
fn the_dashboard_reads_only_documented_series() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/observability/grafana-dashboard.json"
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).expect("JSON");
    let documented = documented_series();
    let mut expressions = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            expressions.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(expressions.len() > 20, "{} queries", expressions.len());
    let process_series = ["switchboard_start_time_seconds", "switchboard_build_info"];
    for expression in &expressions {
        let mut rest = expression.as_str();
        while let Some(at) = rest.find("switchboard_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let series = name.strip_suffix("_bucket").unwrap_or(&name);
            assert!(
                documented.contains_key(series) || process_series.contains(&series),
                "{series} in `{expression}` is not in the table of docs/OPERATIONS.md"
            );
        }
    }
}
