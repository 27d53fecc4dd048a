//! Test harness: starts the services in-process on loopback ports and drives them with a real
//! WebSocket client.

pub(crate) mod cluster;

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::dev::{self, DevConfig, Running};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// Admin password used by the tests.
pub(crate) const ADMIN_PASSWORD: &str = "test-admin-password";
/// How long a test waits for one frame.
pub(crate) const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits to be sure nothing arrives.
pub(crate) const QUIET: Duration = Duration::from_millis(300);

/// Starts the services with one gateway and test defaults.
pub(crate) async fn start() -> Running {
    start_with(|_| {}).await
}

/// Starts the services after `tune` adjusts the configuration.
pub(crate) async fn start_with(tune: impl FnOnce(&mut DevConfig)) -> Running {
    let mut config = DevConfig::new("127.0.0.1:0", ADMIN_PASSWORD);
    config
        .auth
        .users
        .push(user_record("alice", "alice-pw", &[]));
    config.auth.users.push(user_record("bob", "bob-pw", &[]));
    tune(&mut config);
    dev::start(config).await.expect("services start")
}

/// A users-file entry for `name` with a cheaply hashed `password` (the real parameters cost
/// tens of milliseconds per login).
/// Sends `GET path` to an admin listener; its status code and body.
pub(crate) async fn admin_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("admin listener");
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut text = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut text))
        .await
        .expect("admin answers in time")
        .expect("response");
    let status = text
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status in {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    (status, body)
}

pub(crate) fn user_record(
    name: &str,
    password: &str,
    roles: &[&str],
) -> switchboard_auth::UserRecord {
    switchboard_auth::UserRecord {
        name: name.to_owned(),
        password_hash: cheap_hash(password),
        roles: roles.iter().map(|role| (*role).to_owned()).collect(),
    }
}

/// An argon2id hash of `password` with the smallest parameters.
pub(crate) fn cheap_hash(password: &str) -> String {
    let params = switchboard_auth::password::Params::new(64, 1, 1, None).expect("params");
    switchboard_auth::password::hash_with(password, params).expect("hash")
}

/// A WebSocket client that keeps unsolicited frames aside while it waits for a response.
pub(crate) struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_tid: u64,
    /// Frames received while waiting for something else (events, server requests).
    backlog: VecDeque<Value>,
    pub(crate) session_id: String,
}

impl Client {
    /// Connects to `url`.
    pub(crate) async fn connect(url: &str) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        Client::connect_request(url.into_client_request().expect("url")).await
    }

    /// Connects with a prepared handshake request (extra headers).
    pub(crate) async fn connect_request(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Client {
        let (socket, _) = tokio::time::timeout(WAIT, connect_async(request))
            .await
            .expect("connect in time")
            .expect("connect");
        Client {
            socket,
            next_tid: 1,
            backlog: VecDeque::new(),
            session_id: String::new(),
        }
    }

    /// Connects to gateway `index` and logs in as `user`.
    pub(crate) async fn login_to(
        running: &Running,
        index: usize,
        user: &str,
        password: &str,
    ) -> Client {
        Client::login_at(&running.ws_url(index), user, password).await
    }

    /// Connects to `url` and logs in as `user`.
    pub(crate) async fn login_at(url: &str, user: &str, password: &str) -> Client {
        let mut client = Client::connect(url).await;
        let reply = client
            .request("user", "login", json!({"user": user, "password": password}))
            .await;
        assert_eq!(reply["result"], "ok", "login of {user}: {reply}");
        client.session_id = reply["data"]["session_id"]
            .as_str()
            .expect("session id")
            .to_owned();
        client
    }

    /// Connects to the first gateway and logs in as admin.
    pub(crate) async fn admin(running: &Running) -> Client {
        Client::login_to(running, 0, "admin", ADMIN_PASSWORD).await
    }

    /// Sends a text frame as is.
    pub(crate) async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send");
    }

    /// Sends a JSON value as a text frame.
    pub(crate) async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a core request and waits for the response with its tid.
    pub(crate) async fn request(&mut self, subclass: &str, cmd: &str, data: Value) -> Value {
        let tid = self.next_tid;
        self.next_tid += 1;
        self.send_json(
            &json!({"class": "core", "subclass": subclass, "cmd": cmd, "data": data, "tid": tid}),
        )
        .await;
        self.response_for(json!(tid)).await
    }

    /// Sends a request and returns the error code of its error response.
    pub(crate) async fn error_code(&mut self, subclass: &str, cmd: &str, data: Value) -> String {
        let reply = self.request(subclass, cmd, data).await;
        assert_eq!(reply["result"], "error", "expected an error: {reply}");
        reply["data"]["code"].as_str().expect("code").to_owned()
    }

    /// Sends a request and asserts it succeeds; returns its data.
    pub(crate) async fn ok(&mut self, subclass: &str, cmd: &str, data: Value) -> Value {
        let reply = self.request(subclass, cmd, data).await;
        assert_eq!(reply["result"], "ok", "{subclass} {cmd}: {reply}");
        reply["data"].clone()
    }

    /// Waits for the response carrying `tid`, keeping other frames in the backlog.
    pub(crate) async fn response_for(&mut self, tid: Value) -> Value {
        loop {
            let frame = self.next_from_socket().await;
            if frame.get("result").is_some() && frame.get("tid") == Some(&tid) {
                return frame;
            }
            self.backlog.push_back(frame);
        }
    }

    /// Returns the next frame (backlog first).
    pub(crate) async fn next(&mut self) -> Value {
        if let Some(frame) = self.backlog.pop_front() {
            return frame;
        }
        self.next_from_socket().await
    }

    async fn next_from_socket(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("frame");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("JSON frame");
                }
                Message::Close(frame) => panic!("connection closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// The next frame within `limit`; `None` when nothing comes or the connection ends.
    pub(crate) async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        if let Some(frame) = self.backlog.pop_front() {
            return Some(frame);
        }
        loop {
            match tokio::time::timeout(limit, self.socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    return serde_json::from_str(text.as_str()).ok();
                }
                Ok(Some(Ok(_))) => {}
                _ => return None,
            }
        }
    }

    /// Waits for the next event frame; returns its `data`.
    pub(crate) async fn event(&mut self) -> Value {
        let frame = self.next().await;
        assert_eq!(frame["cmd"], "event", "expected an event: {frame}");
        assert!(frame["tid"].is_u64(), "events carry a server tid: {frame}");
        frame["data"].clone()
    }

    /// Asserts no frame arrives for a short while.
    pub(crate) async fn assert_quiet(&mut self) {
        if let Some(frame) = self.backlog.pop_front() {
            panic!("unexpected frame {frame}");
        }
        if let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(QUIET, self.socket.next()).await
        {
            panic!("unexpected frame {text}");
        }
    }

    /// Waits for the server to close the connection; returns the close code.
    pub(crate) async fn closed(&mut self) -> u16 {
        loop {
            match tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
                Some(Ok(Message::Close(None))) | None => return 1005,
                Some(Ok(_)) => {}
                Some(Err(error)) => panic!("connection failed without a close frame: {error}"),
            }
        }
    }

    /// Sends a raw WebSocket message.
    pub(crate) async fn send_message(&mut self, message: Message) {
        self.socket.send(message).await.expect("send");
    }
}
