//! Login through the real services with each backend, token expiry on a live connection, and
//! login throttling that leaves other traffic alone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{Client, user_record};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use switchboard_gateway::token::CLOSE_TOKEN_EXPIRED;

const HS_SECRET: &str = "gateway-test-hs256-secret-0123456789";

fn token(user: &str, lifetime: Duration, roles: &[&str]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + lifetime.as_secs();
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": user, "exp": exp, "roles": roles}),
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .expect("token")
}

async fn login(client: &mut Client, user: &str, password: &str) -> Value {
    client
        .request("user", "login", json!({"user": user, "password": password}))
        .await
}

#[tokio::test]
async fn users_file_login_over_websocket() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("users.toml");
    let record = user_record("frank", "frank-pw", &["admin"]);
    std::fs::write(
        &path,
        format!(
            "[[user]]\nname = \"frank\"\npassword_hash = {:?}\nroles = [\"admin\"]\n",
            record.password_hash
        ),
    )
    .expect("users file");
    let running =
        crate::common::start_with(|config| config.auth.users_file = Some(path.clone())).await;
    let mut wrong = Client::connect(&running.ws_url(0)).await;
    let reply = login(&mut wrong, "frank", "nope").await;
    assert_eq!(reply["data"]["code"], "invalid_credentials", "{reply}");
    let reply = login(&mut wrong, "nobody", "frank-pw").await;
    assert_eq!(reply["data"]["code"], "invalid_credentials", "{reply}");
    let mut frank = Client::login_to(&running, 0, "frank", "frank-pw").await;
    // The file's role applies: frank is an admin.
    frank.ok("user", "list", json!({})).await;
    running.stop().await;
}

#[tokio::test]
async fn token_session_is_warned_then_closed_unless_refreshed() {
    let running = crate::common::start_with(|config| {
        config.auth.jwt.hs256_secret = Some(HS_SECRET.into());
    })
    .await;

    // A token that ends in 2 s: warned at once (less than 30 s left), closed at expiry.
    let mut short = Client::connect(&running.ws_url(0)).await;
    let reply = login(
        &mut short,
        "gina",
        &token("gina", Duration::from_secs(2), &[]),
    )
    .await;
    assert_eq!(reply["result"], "ok", "{reply}");
    assert!(reply["data"]["expires_at"].is_u64(), "{reply}");
    let warning = short.event().await;
    assert_eq!(warning["subclass"], "session_event");
    assert_eq!(warning["type"], "token_expiring");
    let expired = short.event().await;
    assert_eq!(expired["type"], "token_expired");
    assert_eq!(short.closed().await, CLOSE_TOKEN_EXPIRED);

    // Logging in again with a fresh token keeps the session past the first expiry.
    let mut refreshed = Client::connect(&running.ws_url(0)).await;
    let first = login(
        &mut refreshed,
        "hugo",
        &token("hugo", Duration::from_secs(2), &[]),
    )
    .await;
    assert_eq!(first["result"], "ok", "{first}");
    let session_id = first["data"]["session_id"].clone();
    assert_eq!(refreshed.event().await["type"], "token_expiring");
    let again = login(
        &mut refreshed,
        "hugo",
        &token("hugo", Duration::from_secs(600), &[]),
    )
    .await;
    assert_eq!(again["result"], "ok", "{again}");
    assert_eq!(again["data"]["session_id"], session_id, "same session");
    // A fresh token with other roles does not change a live session's rights.
    let other_roles = login(
        &mut refreshed,
        "hugo",
        &token("hugo", Duration::from_secs(600), &["admin"]),
    )
    .await;
    assert_eq!(
        other_roles["data"]["code"], "already_authenticated",
        "{other_roles}"
    );
    // Nobody can fake the gateway's expiry events.
    for type_ in ["token_expiring", "token_expired"] {
        let code = refreshed
            .error_code(
                "session",
                "send_event",
                json!({"session_id": session_id, "type": type_}),
            )
            .await;
        assert_eq!(code, "unauthorized", "{type_}");
    }
    // Another user's token does not take over the session.
    let other = login(
        &mut refreshed,
        "ivan",
        &token("ivan", Duration::from_secs(600), &[]),
    )
    .await;
    assert_eq!(other["data"]["code"], "already_authenticated", "{other}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    refreshed.ok("session", "ping", json!({})).await;
    refreshed.assert_quiet().await;

    // A password session is not refreshed by a second login.
    let mut admin = Client::admin(&running).await;
    let reply = login(&mut admin, "admin", crate::common::ADMIN_PASSWORD).await;
    assert_eq!(reply["data"]["code"], "already_authenticated", "{reply}");

    // An expired token never logs in.
    let mut late = Client::connect(&running.ws_url(0)).await;
    let stale = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "jack", "exp": 1_000_000}),
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .expect("token");
    let reply = login(&mut late, "jack", &stale).await;
    assert_eq!(reply["data"]["code"], "invalid_credentials", "{reply}");
    running.stop().await;
}

#[tokio::test]
async fn failed_logins_are_throttled_without_blocking_others() {
    let running = crate::common::start_with(|config| {
        config.auth.throttle.max_failures = 3;
    })
    .await;
    // A logged-in connection from the same address keeps working throughout.
    let mut admin = Client::admin(&running).await;
    admin
        .ok("event", "subscribe", json!({"class": "news"}))
        .await;
    let mut guesser = Client::connect(&running.ws_url(0)).await;
    for _ in 0..3 {
        let reply = login(&mut guesser, "admin", "guess").await;
        assert_eq!(reply["data"]["code"], "invalid_credentials", "{reply}");
    }
    let reply = login(&mut guesser, "admin", "guess").await;
    assert_eq!(reply["data"]["code"], "too_many_attempts", "{reply}");
    assert!(reply["tid"].is_u64(), "{reply}");
    let reply = login(&mut guesser, "admin", crate::common::ADMIN_PASSWORD).await;
    assert_eq!(
        reply["data"]["code"], "too_many_attempts",
        "throttled before the password is checked: {reply}"
    );
    // The throttled connection still gets answers, and others are untouched.
    let reply = guesser.request("session", "ping", json!({})).await;
    assert_eq!(reply["data"]["code"], "not_authenticated", "{reply}");
    admin
        .ok("event", "send_event", json!({"class": "news", "type": "t"}))
        .await;
    assert_eq!(admin.event().await["class"], "news");
    running.stop().await;
}

/// Logs in through a proxy that says the client is `ip`.
async fn login_from(url: &str, ip: &str, user: &str, password: &str) -> (Value, Client) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "x-forwarded-for",
        format!("203.0.113.9, {ip}").parse().expect("header"),
    );
    let mut client = Client::connect_request(request).await;
    let reply = login(&mut client, user, password).await;
    (reply, client)
}

/// The `remote` the registry holds for the admin session `login` (its ok reply) created.
async fn own_remote(client: &mut Client, login: &Value) -> String {
    let session_id = login["data"]["session_id"].as_str().expect("id");
    let sessions = client.ok("user", "get", json!({"user": "admin"})).await;
    sessions[session_id]["remote"]
        .as_str()
        .expect("remote")
        .to_owned()
}

#[tokio::test]
async fn forwarded_for_is_trusted_only_when_configured() {
    let running = crate::common::start_with(|config| {
        config.auth.throttle.max_failures = 2;
        config.gateway.trust_forwarded_for = true;
    })
    .await;
    let url = running.ws_url(0);
    for _ in 0..2 {
        let (reply, _) = login_from(&url, "10.9.9.1", "admin", "guess").await;
        assert_eq!(reply["data"]["code"], "invalid_credentials", "{reply}");
    }
    let (reply, _) = login_from(&url, "10.9.9.1", "admin", crate::common::ADMIN_PASSWORD).await;
    assert_eq!(reply["data"]["code"], "too_many_attempts", "{reply}");
    // Another client behind the same proxy is not throttled, and is seen as itself.
    let (reply, mut other) =
        login_from(&url, "10.9.9.2", "admin", crate::common::ADMIN_PASSWORD).await;
    assert_eq!(reply["result"], "ok", "{reply}");
    let remote = own_remote(&mut other, &reply).await;
    assert!(remote.starts_with("ws:10.9.9.2:"), "{remote}");
    running.stop().await;

    // Without the setting the header is ignored: a client cannot forge its address.
    let running = crate::common::start().await;
    let (reply, mut forged) = login_from(
        &running.ws_url(0),
        "10.9.9.3",
        "admin",
        crate::common::ADMIN_PASSWORD,
    )
    .await;
    let remote = own_remote(&mut forged, &reply).await;
    assert!(remote.starts_with("ws:127.0.0.1:"), "{remote}");
    running.stop().await;
}
