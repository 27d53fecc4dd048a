//! `session log` against real UDP and TCP listeners, decoded the way a GELF server does.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use crate::common::{Client, start_with};
use flate2::read::GzDecoder;
use serde_json::{Value, json};
use switchboard_gateway::GelfTarget;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};

/// Decodes one GELF UDP payload: plain JSON, gzip, or a chunk to reassemble.
enum Udp {
    Message(Value),
    Chunk {
        id: [u8; 8],
        sequence: u8,
        count: u8,
        data: Vec<u8>,
    },
}

fn decode_payload(bytes: &[u8]) -> Value {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut text = String::new();
        GzDecoder::new(bytes)
            .read_to_string(&mut text)
            .expect("gzip");
        serde_json::from_str(&text).expect("JSON in gzip")
    } else {
        serde_json::from_slice(bytes).expect("plain JSON")
    }
}

fn decode_datagram(bytes: &[u8]) -> Udp {
    if bytes.starts_with(&[0x1e, 0x0f]) {
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[2..10]);
        Udp::Chunk {
            id,
            sequence: bytes[10],
            count: bytes[11],
            data: bytes[12..].to_vec(),
        }
    } else {
        Udp::Message(decode_payload(bytes))
    }
}

/// Receives datagrams until one whole message is assembled.
async fn receive_udp_message(socket: &UdpSocket) -> (Value, usize) {
    let mut chunks: HashMap<[u8; 8], Vec<Option<Vec<u8>>>> = HashMap::new();
    let mut buffer = vec![0u8; 65536];
    loop {
        let size = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buffer))
            .await
            .expect("a datagram in time")
            .expect("recv");
        assert!(size <= 8192, "datagrams stay small: {size}");
        match decode_datagram(&buffer[..size]) {
            Udp::Message(message) => return (message, 1),
            Udp::Chunk {
                id,
                sequence,
                count,
                data,
            } => {
                assert!(count as usize <= 128 && sequence < count);
                let parts = chunks
                    .entry(id)
                    .or_insert_with(|| vec![None; count as usize]);
                parts[sequence as usize] = Some(data);
                if parts.iter().all(Option::is_some) {
                    let whole: Vec<u8> = parts.iter().flatten().flatten().copied().collect();
                    return (decode_payload(&whole), count as usize);
                }
            }
        }
    }
}

#[tokio::test]
async fn gelf_over_udp_small_and_chunked() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("udp bind");
    let address = socket.local_addr().expect("addr");
    let running =
        start_with(|config| config.gateway.gelf = Some(GelfTarget::Udp(address.to_string()))).await;
    let mut client = Client::admin(&running).await;
    client
        .ok(
            "session",
            "log",
            json!({"source": "my-app", "message": "hello", "level": 4, "full_message": "details",
                   "meta": {"count": 3, "flag": true, "bad key": "v", "id": "dropped", "_user": "spoof", "user": "spoof2"}}),
        )
        .await;
    let (message, parts) = receive_udp_message(&socket).await;
    assert_eq!(parts, 1);
    assert_eq!(message["version"], "1.1");
    assert_eq!(message["host"], "my-app");
    assert_eq!(message["short_message"], "hello");
    assert_eq!(message["full_message"], "details");
    assert_eq!(message["level"], 4);
    assert!(message["timestamp"].as_f64().expect("timestamp") > 1.6e9);
    assert_eq!(message["_count"], 3);
    assert_eq!(message["_flag"], "true");
    assert_eq!(message["_bad_key"], "v");
    assert!(message.get("_id").is_none());
    assert_eq!(message["_user"], "admin", "server fields win");
    assert_eq!(message["_session_id"], client.session_id.as_str());
    assert_eq!(message["_service"], "");

    // A large message is compressed and chunked, and arrives whole.
    let mut seed = 1u64;
    let large: String = (0..60_000)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from(b'a' + ((seed >> 33) % 26) as u8)
        })
        .collect();
    client
        .ok(
            "session",
            "log",
            json!({"source": "s", "message": "big", "full_message": large}),
        )
        .await;
    let (message, parts) = receive_udp_message(&socket).await;
    assert!(parts > 1, "chunked into {parts} parts");
    assert_eq!(message["full_message"].as_str().map(str::len), Some(60_000));
    assert_eq!(message["level"], 1, "default level");
    running.stop().await;
}

#[tokio::test]
async fn gelf_over_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("tcp bind");
    let address = listener.local_addr().expect("addr");
    let running =
        start_with(|config| config.gateway.gelf = Some(GelfTarget::Tcp(address.to_string()))).await;
    let mut client = Client::admin(&running).await;
    client
        .ok("session", "log", json!({"source": "a", "message": "one"}))
        .await;
    client
        .ok(
            "session",
            "log",
            json!({"source": "a", "message": "two", "meta": {"k": "v"}, "level": "4"}),
        )
        .await;
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("connect in time")
        .expect("accept");
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while received.iter().filter(|byte| **byte == 0).count() < 2 {
        let size = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("data in time")
            .expect("read");
        assert!(size > 0, "connection stays open");
        received.extend_from_slice(&buffer[..size]);
    }
    let messages: Vec<Value> = received
        .split(|byte| *byte == 0)
        .filter(|part| !part.is_empty())
        .map(|part| serde_json::from_slice(part).expect("JSON per message"))
        .collect();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["short_message"], "one");
    assert_eq!(messages[1]["short_message"], "two");
    assert_eq!(messages[1]["_k"], "v");
    assert_eq!(
        messages[1]["level"], 4,
        "a level sent as text is that number"
    );
    running.stop().await;
}

#[tokio::test]
async fn log_without_server_or_with_dead_server_still_ok() {
    // Nothing listens on this port: sends fail, the command does not.
    let unused = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        socket.local_addr().expect("addr")
    };
    let running =
        start_with(|config| config.gateway.gelf = Some(GelfTarget::Tcp(unused.to_string()))).await;
    let mut client = Client::admin(&running).await;
    for _ in 0..3 {
        client
            .ok("session", "log", json!({"source": "a", "message": "m"}))
            .await;
    }
    assert_eq!(
        client
            .error_code("session", "log", json!({"source": "a"}))
            .await,
        "missing_field"
    );
    assert_eq!(
        client
            .error_code(
                "session",
                "log",
                json!({"source": "a", "message": "m", "meta": 1})
            )
            .await,
        "syntax_error"
    );
    running.stop().await;
}
