//! `wss://` with a certificate generated here: a client that trusts it logs in and is seen
//! as `wss:`; plain WebSocket on the TLS port and clients that do not trust it are refused;
//! `ws://` keeps working beside it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_gateway::tls::Tls;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message;

fn client_config(trusted: Option<&rcgen::Certificate>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    if let Some(cert) = trusted {
        roots.add(cert.der().clone()).expect("root");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn tls_connect(
    address: std::net::SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    let name = ServerName::try_from("localhost").expect("name");
    TlsConnector::from(config).connect(name, tcp).await
}

async fn request<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>, frame: Value) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let tid = frame["tid"].clone();
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
    loop {
        let message = tokio::time::timeout(crate::common::WAIT, socket.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(text.as_str()).expect("json");
            if value["tid"] == tid {
                return value;
            }
        }
    }
}

#[tokio::test]
async fn wss_with_a_generated_certificate() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let dir = tempfile::tempdir().expect("dir");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("cert");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("key");
    let tls = Tls::from_pem_files(&cert_path, &key_path).expect("tls");
    let running = crate::common::start_with(|config| {
        config.gateway.tls = Some(tls);
        config.tls_listen = "127.0.0.1:0".into();
    })
    .await;
    let wss = running.wss_addrs[0];

    let stream = tls_connect(wss, client_config(Some(&certified.cert)))
        .await
        .expect("TLS handshake");
    let (mut socket, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/api/ws", wss.port()), stream)
            .await
            .expect("WebSocket over TLS");
    let login = request(
        &mut socket,
        json!({"class": "core", "subclass": "user", "cmd": "login", "tid": 1,
               "data": {"user": "admin", "password": crate::common::ADMIN_PASSWORD}}),
    )
    .await;
    assert_eq!(login["result"], "ok", "{login}");
    let sessions = request(
        &mut socket,
        json!({"class": "core", "subclass": "user", "cmd": "get", "tid": 2, "data": {"user": "admin"}}),
    )
    .await;
    let session_id = login["data"]["session_id"].as_str().expect("id");
    let remote = sessions["data"][session_id]["remote"]
        .as_str()
        .expect("remote");
    assert!(remote.starts_with("wss:127.0.0.1:"), "{remote}");

    // A client that does not trust the certificate is refused in the handshake.
    assert!(tls_connect(wss, client_config(None)).await.is_err());
    // Plain WebSocket on the TLS port gets no upgrade.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(format!("ws://{wss}/api/ws")),
    )
    .await
    .expect("answer in time");
    assert!(plain.is_err());
    // ws:// beside it keeps working, and so does the wss session.
    let mut plain_client = crate::common::Client::admin(&running).await;
    plain_client.ok("session", "ping", json!({})).await;
    let ping = request(
        &mut socket,
        json!({"class": "core", "subclass": "session", "cmd": "ping", "tid": 3}),
    )
    .await;
    assert_eq!(ping["result"], "ok");
    running.stop().await;
}

#[test]
fn unusable_certificate_files_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let other =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    std::fs::write(&cert_path, certified.cert.pem()).expect("cert");
    std::fs::write(&key_path, other.signing_key.serialize_pem()).expect("key");
    let mismatch = Tls::from_pem_files(&cert_path, &key_path).expect_err("mismatched key");
    assert!(mismatch.to_string().contains("do not match"), "{mismatch}");
    std::fs::write(&key_path, "not a key").expect("key");
    let error = Tls::from_pem_files(&cert_path, &key_path).expect_err("no key");
    assert!(
        error.to_string().contains("no usable private key"),
        "{error}"
    );
    assert!(Tls::from_pem_files(&dir.path().join("missing.pem"), &key_path).is_err());
}
