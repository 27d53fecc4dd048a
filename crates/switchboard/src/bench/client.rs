//! One benchmark connection.

use anyhow::{Context, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The socket of a benchmark connection.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Event class, subclass and type prefix the benchmark uses.
pub const CLASS: &str = "bench";
/// Subclass of benchmark events.
pub const SUBCLASS: &str = "s";

/// Returns the event type of topic `index`.
pub fn topic(index: usize) -> String {
    format!("t{index}")
}

/// The body fields a delivery carries back.
#[derive(Debug, Deserialize)]
pub struct Stamp {
    /// Publisher number.
    #[serde(rename = "pub")]
    pub publisher: u32,
    /// Sequence number of the publisher.
    pub seq: u64,
    /// Send time in ns since the run's epoch.
    pub ts: u64,
    /// 1 for an event of the measured window.
    pub w: u8,
}

#[derive(Deserialize)]
struct EventData {
    body: Option<Stamp>,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    cmd: Option<&'a str>,
    result: Option<&'a str>,
    data: Option<EventData>,
}

/// What one received frame is.
#[derive(Debug)]
pub enum Received {
    /// An event carrying a benchmark stamp.
    Delivery(Stamp),
    /// An ok reply.
    Ok,
    /// An error reply (the frame text).
    Error(String),
    /// Anything else.
    Other,
}

/// Classifies a received text frame.
pub fn classify(text: &str) -> Received {
    match serde_json::from_str::<Frame<'_>>(text) {
        Ok(Frame {
            cmd: Some("event"),
            data: Some(EventData { body: Some(stamp) }),
            ..
        }) => Received::Delivery(stamp),
        Ok(Frame {
            result: Some("ok"), ..
        }) => Received::Ok,
        Ok(Frame {
            result: Some(_), ..
        }) => Received::Error(text.to_owned()),
        _ => Received::Other,
    }
}

/// A logged-in connection.
#[derive(Debug)]
pub struct BenchConn {
    socket: Socket,
    next_tid: u64,
}

impl BenchConn {
    /// Connects to `url` and logs in.
    ///
    /// # Errors
    /// When the connection or the login fails.
    pub async fn login(url: &str, user: &str, password: &str) -> anyhow::Result<Self> {
        // Nagle off: a publisher's small frames must not wait for the previous one's ACK.
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        let mut conn = Self {
            socket,
            next_tid: 1,
        };
        conn.request("user", "login", json!({"user": user, "password": password}))
            .await
            .context("login")?;
        Ok(conn)
    }

    /// Sends a request and waits for its reply, skipping other frames.
    ///
    /// # Errors
    /// On an error reply or a closed connection.
    pub async fn request(
        &mut self,
        subclass: &str,
        cmd: &str,
        data: Value,
    ) -> anyhow::Result<Value> {
        let tid = self.next_tid;
        self.next_tid += 1;
        let frame =
            json!({"class": "core", "subclass": subclass, "cmd": cmd, "data": data, "tid": tid});
        self.socket
            .send(Message::Text(frame.to_string().into()))
            .await?;
        while let Some(message) = self.socket.next().await {
            let Message::Text(text) = message? else {
                continue;
            };
            let reply: Value = serde_json::from_str(text.as_str())?;
            if reply.get("tid") == Some(&json!(tid)) && reply.get("result").is_some() {
                if reply["result"] == "ok" {
                    return Ok(reply["data"].clone());
                }
                bail!("{subclass} {cmd} failed: {reply}");
            }
        }
        bail!("connection closed during {subclass} {cmd}")
    }

    /// Subscribes to topic `index`; a positioned subscription (PROTOCOL.md §10) with
    /// `recover`.
    ///
    /// # Errors
    /// On an error reply.
    pub async fn subscribe(&mut self, index: usize, recover: bool) -> anyhow::Result<()> {
        let mut data = json!({"class": CLASS, "subclass": SUBCLASS, "type": topic(index)});
        if recover {
            data["recover"] = json!(true);
        }
        self.request("event", "subscribe", data).await?;
        Ok(())
    }

    /// Splits into the sending and receiving halves, with the next free tid.
    pub fn split(self) -> (SplitSink<Socket, Message>, SplitStream<Socket>, u64) {
        let (sink, stream) = self.socket.split();
        (sink, stream, self.next_tid)
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// Encodes a `send_event` to topic `index` with a stamp and optional padding.
pub fn send_event_frame(index: usize, tid: u64, stamp: (u32, u64, u64, u8), pad: &str) -> String {
    let (publisher, seq, ts, window) = stamp;
    format!(
        r#"{{"class":"core","subclass":"event","cmd":"send_event","tid":{tid},"data":{{"class":"{CLASS}","subclass":"{SUBCLASS}","type":"t{index}","body":{{"pub":{publisher},"seq":{seq},"ts":{ts},"w":{window}{pad}}}}}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frame = send_event_frame(3, 9, (1, 2, 3, 1), r#","pad":"xx""#);
        let value: Value = serde_json::from_str(&frame).expect("valid JSON");
        assert_eq!(value["data"]["type"], "t3");
        let event = json!({"class": "core", "cmd": "event", "tid": 1, "data": {"class": CLASS, "body": value["data"]["body"]}});
        match classify(&event.to_string()) {
            Received::Delivery(stamp) => {
                assert_eq!((stamp.publisher, stamp.seq, stamp.w), (1, 2, 1))
            }
            other => panic!("not a delivery: {other:?}"),
        }
        assert!(matches!(
            classify(r#"{"result":"ok","tid":1}"#),
            Received::Ok
        ));
        assert!(matches!(
            classify(r#"{"result":"error","tid":1}"#),
            Received::Error(_)
        ));
    }
}
