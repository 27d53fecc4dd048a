//! The real `switchboard dev` binary, started as a newcomer would, plus connection limits.

use std::process::Stdio;
use std::time::Duration;

use crate::common::{Client, start_with};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn dev_binary_serves_with_no_configuration() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["dev", "--listen", "127.0.0.1:0"])
        .env_remove("SWITCHBOARD_ADMIN_PASSWORD")
        .env_remove("SWITCHBOARD_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("switchboard starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("prints its address in time")
        .expect("read")
        .expect("a line");
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("ws://"))
        .expect("a ws:// URL")
        .to_owned();
    assert!(url.ends_with("/api/ws"), "{url}");

    let mut client = Client::connect(&url).await;
    client
        .ok(
            "user",
            "login",
            json!({"user": "admin", "password": "admin"}),
        )
        .await;
    client
        .ok("event", "subscribe", json!({"class": "tour"}))
        .await;
    client
        .ok(
            "event",
            "send_event",
            json!({"class": "tour", "body": {"hello": "world"}}),
        )
        .await;
    assert_eq!(client.event().await["body"]["hello"], "world");

    child.start_kill().expect("kill");
    let _ = child.wait().await;
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = err.read_to_string(&mut stderr).await;
    }
    assert!(
        stderr.contains("no admin password configured"),
        "warning logged: {stderr}"
    );
}

#[tokio::test]
async fn dev_binary_rejects_bad_settings() {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["dev", "--gelf", "http://nowhere"])
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(64), "EX_USAGE");
    assert!(String::from_utf8_lossy(&output.stderr).contains("udp://host:port"));
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["gateway", "--cmd-timeout", "soon"])
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cmd-timeout"));
}

#[tokio::test]
async fn slow_consumer_is_closed_1008_and_others_keep_receiving() {
    let running = start_with(|config| config.gateway.outbound_queue = 8).await;
    let mut slow = Client::admin(&running).await;
    slow.ok("event", "subscribe", json!({"class": "flood"}))
        .await;
    let mut healthy = Client::admin(&running).await;
    healthy
        .ok("event", "subscribe", json!({"class": "flood"}))
        .await;
    let mut publisher = Client::admin(&running).await;
    let pad = "x".repeat(8 * 1024);
    let reader = tokio::spawn(async move {
        for n in 0..3000 {
            assert_eq!(healthy.event().await["body"]["n"], n);
        }
        healthy
    });
    for n in 0..3000 {
        publisher
            .ok(
                "event",
                "send_event",
                json!({"class": "flood", "body": {"n": n, "pad": pad}}),
            )
            .await;
    }
    // Only now does the slow client read: it finds its close after what fitted in the buffers.
    assert_eq!(slow.closed().await, 1008);
    reader
        .await
        .expect("the healthy subscriber got every event in order");
    running.stop().await;
}

/// Reads server frames from a raw socket until EOF; returns (pings seen, close code).
async fn raw_frames_until_eof(stream: &mut tokio::net::TcpStream) -> (usize, Option<u16>) {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes)).await;
    let (mut pings, mut close) = (0, None);
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let length = usize::from(bytes[at + 1] & 0x7f);
        assert!(length < 126, "control frames only");
        let payload = &bytes[at + 2..(at + 2 + length).min(bytes.len())];
        match opcode {
            0x9 => pings += 1,
            0x8 if payload.len() >= 2 => close = Some(u16::from_be_bytes([payload[0], payload[1]])),
            _ => {}
        }
        at += 2 + length;
    }
    (pings, close)
}

#[tokio::test]
async fn idle_connection_is_closed_and_live_one_kept() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let running = start_with(|config| {
        config.gateway.ping_interval = Duration::from_millis(100);
        config.gateway.idle_timeout = Duration::from_millis(400);
    })
    .await;
    // This client reads (and so answers pings) all along.
    let mut live = Client::admin(&running).await;
    // Older than the idle timeout, the gateway still counts a new connection's idleness
    // from the connection's start: it is pinged before it is closed.
    for _ in 0..6 {
        live.ok("session", "ping", json!({})).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // This one completes the handshake and then never answers a ping.
    let mut silent = tokio::net::TcpStream::connect(running.ws_addrs[0])
        .await
        .expect("connect");
    silent
        .write_all(
            b"GET /api/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .expect("handshake");
    let mut reader = tokio::io::BufReader::new(&mut silent);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("response line");
        if line == "\r\n" {
            break;
        }
    }
    for _ in 0..8 {
        live.ok("session", "ping", json!({})).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (pings, close) = raw_frames_until_eof(&mut silent).await;
    assert!(pings >= 2, "the server pinged: {pings}");
    assert_eq!(close, Some(1001), "the silent connection is closed as idle");
    live.ok("session", "ping", json!({})).await;
    running.stop().await;
}

#[tokio::test]
async fn client_that_never_reads_is_disconnected() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let running = start_with(|config| {
        config.gateway.outbound_queue = 4;
        config.gateway.write_timeout = Duration::from_millis(500);
    })
    .await;
    let mut bystander = Client::admin(&running).await;
    let (socket, _) = tokio_tungstenite::connect_async(running.ws_url(0))
        .await
        .expect("connect");
    let (mut sink, mut stream) = socket.split();
    // Requests whose replies (the tid is echoed) fill every buffer while nothing is read.
    let tid = "t".repeat(16 * 1024);
    let flood = tokio::spawn(async move {
        for _ in 0..4000 {
            let frame = json!({"class": "core", "subclass": "session", "cmd": "ping", "tid": tid});
            let sent = tokio::time::timeout(
                Duration::from_secs(5),
                sink.send(Message::Text(frame.to_string().into())),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                break;
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(20), flood).await;
    bystander.ok("session", "ping", json!({})).await;
    // Reading now finds the end of the connection instead of an endless stream.
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        let mut frames = 0usize;
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Close(_) = message {
                break;
            }
            frames += 1;
        }
        frames
    })
    .await;
    let frames = drained.expect("the server ended the connection");
    assert!(frames < 4000, "not every reply was written: {frames}");
    running.stop().await;
}

/// One option of `--help`: its flag, variable and clap default (when it has one).
#[derive(Debug, PartialEq, Eq)]
struct Documented {
    flag: String,
    variable: String,
    default: Option<String>,
}

fn options_of_help(help: &str) -> Vec<Documented> {
    let lines: Vec<&str> = help.lines().collect();
    let mut options = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("--") else {
            continue;
        };
        let flag = rest.split(' ').next().unwrap_or_default();
        if flag == "help" || flag == "version" {
            continue;
        }
        // clap appends `[env: …]` and then `[default: …]` to the option's own text, which
        // may carry a `[default: …]` of its own in prose (then clap has none).
        let text = if line.contains("[env: ") {
            line
        } else {
            lines.get(index + 1).copied().unwrap_or_default()
        };
        let clap_part = &text[text.find("[env: ").unwrap_or(text.len())..];
        let bracket = |name: &str| {
            let start = clap_part.find(&format!("[{name}: "))? + name.len() + 3;
            let end = clap_part[start..].find(']')? + start;
            Some(clap_part[start..end].trim_end_matches('=').to_owned())
        };
        options.push(Documented {
            flag: format!("--{flag}"),
            variable: bracket("env").unwrap_or_default(),
            default: bracket("default"),
        });
    }
    options
}

fn options_of_operations_md() -> Vec<Documented> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/OPERATIONS.md");
    let text = std::fs::read_to_string(path).expect("docs/OPERATIONS.md");
    let section = text
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Configuration section");
    section
        .lines()
        .filter(|line| line.starts_with("| `--"))
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            let code = |cell: &str| {
                let cell = cell.trim_start_matches("| ");
                (cell.starts_with('`') && cell.ends_with('`') && cell.len() > 1)
                    .then(|| cell.trim_matches('`').to_owned())
            };
            Documented {
                flag: code(cells[0]).unwrap_or_default(),
                variable: code(cells[1]).unwrap_or_default(),
                default: code(cells[2]),
            }
        })
        .collect()
}

/// The configuration tables of docs/OPERATIONS.md list exactly the options of `--help`,
/// with the same variables and defaults, in the same order.
#[tokio::test]
async fn documented_settings_match_help() {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["dev", "--help"])
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .await
        .expect("runs");
    assert!(output.status.success());
    let help = options_of_help(&String::from_utf8_lossy(&output.stdout));
    assert!(help.len() > 40, "{help:?}");
    assert_eq!(options_of_operations_md(), help);
}
