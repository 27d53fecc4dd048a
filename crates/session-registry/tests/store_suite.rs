//! One suite, two backends: the in-memory index and the Redis index behave the same.

use std::time::Duration;

use switchboard_proto::v1::SessionInfo;
use switchboard_session_registry::{MemoryStore, RedisStore, RegistryError, Store};
use switchboard_test_support::RedisServer;

fn session(id: &str, user: &str, gateway: &str) -> SessionInfo {
    SessionInfo {
        session_id: id.into(),
        service: String::new(),
        user: user.into(),
        r#type: "api_server".into(),
        remote: "ws:127.0.0.1:1".into(),
        meta_json: r#"{"k":1}"#.into(),
        gateway_id: gateway.into(),
        control_addr: "127.0.0.1:2".into(),
    }
}

async fn suite(store: Store) {
    store
        .register(session("s1", "u", "g1"))
        .await
        .expect("register");
    store
        .register(session("s2", "u", "g1"))
        .await
        .expect("register");
    store
        .register(session("s3", "v", "g2"))
        .await
        .expect("register");
    assert_eq!(
        store.register(session("s1", "w", "g2")).await,
        Err(RegistryError::DuplicateSession)
    );
    // At the per-user limit: refused; other users and other services are unaffected.
    assert_eq!(
        store.register_limited(session("s7", "u", "g1"), 2).await,
        Err(RegistryError::TooManySessions)
    );
    store
        .register_limited(session("s7", "v", "g1"), 2)
        .await
        .expect("v has one session");
    store.unregister("s7", "").await.expect("unregister");
    let mut elsewhere = session("s8", "u", "g1");
    elsewhere.service = "other".into();
    store
        .register_limited(elsewhere, 2)
        .await
        .expect("the limit is per service");
    store.unregister("s8", "").await.expect("unregister");
    // A user name that looks like a key separator cannot collide with another user.
    store
        .register(session("s4", "u:x", "g2"))
        .await
        .expect("register");
    let users = store.list_users("").await.expect("list");
    assert_eq!(
        users,
        vec![
            ("u".to_owned(), vec!["s1".to_owned(), "s2".to_owned()]),
            ("u:x".to_owned(), vec!["s4".to_owned()]),
            ("v".to_owned(), vec!["s3".to_owned()]),
        ]
    );
    assert!(store.list_users("other").await.expect("list").is_empty());
    let sessions = store.get_user("", "u").await.expect("get");
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].meta_json, r#"{"k":1}"#);
    assert_eq!(
        store.get_user("", "nobody").await,
        Err(RegistryError::NotFound)
    );
    assert_eq!(store.lookup("s3").await.expect("lookup").gateway_id, "g2");
    assert_eq!(store.lookup("nope").await, Err(RegistryError::NotFound));

    store.unregister("s1", "g1").await.expect("unregister");
    store
        .unregister("s1", "g1")
        .await
        .expect("unregister twice is fine");
    // Another gateway cannot remove a session it does not hold.
    store.unregister("s2", "g2").await.expect("unregister");
    assert!(store.lookup("s2").await.is_ok());
    store.unregister("s2", "").await.expect("unregister");
    assert_eq!(store.get_user("", "u").await, Err(RegistryError::NotFound));

    // Many at once: only the sessions the named gateway holds go; unknown ids are skipped.
    for (id, gateway) in [("m1", "g1"), ("m2", "g1"), ("m3", "g2")] {
        store
            .register(session(id, "many", gateway))
            .await
            .expect("register");
    }
    store
        .unregister_many(&["m1", "m3", "unknown", "m2"], "g1")
        .await
        .expect("unregister many");
    let left = store.get_user("", "many").await.expect("m3 is g2's");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].session_id, "m3");
    store
        .unregister_many(&["m3"], "")
        .await
        .expect("unregister many");
    assert_eq!(
        store.get_user("", "many").await,
        Err(RegistryError::NotFound)
    );
    // A heartbeat sent before the batch does not bring its sessions back.
    store
        .heartbeat("g1", vec![session("m1", "many", "g1")])
        .await
        .expect("heartbeat");
    assert_eq!(store.lookup("m1").await, Err(RegistryError::NotFound));

    // g2 keeps heartbeating, g1 (which holds s5) goes silent and is reaped.
    store
        .register(session("s5", "u", "g1"))
        .await
        .expect("register");
    store
        .heartbeat("g1", vec![session("s5", "u", "g1")])
        .await
        .expect("heartbeat");
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        store
            .heartbeat(
                "g2",
                vec![session("s3", "v", "g2"), session("s4", "u:x", "g2")],
            )
            .await
            .expect("heartbeat");
    }
    assert_eq!(store.reap(Duration::from_millis(400)).await, Ok(1));
    assert_eq!(store.lookup("s5").await, Err(RegistryError::NotFound));
    assert!(store.lookup("s3").await.is_ok());

    // A heartbeat sent before an unregister does not bring the session back.
    store.unregister("s3", "g2").await.expect("unregister");
    store
        .heartbeat(
            "g2",
            vec![session("s3", "v", "g2"), session("s4", "u:x", "g2")],
        )
        .await
        .expect("heartbeat");
    assert_eq!(store.lookup("s3").await, Err(RegistryError::NotFound));
    // A login may reuse the id right away.
    store
        .register(session("s3", "v", "g1"))
        .await
        .expect("register again");

    // A heartbeat re-learns sessions the index never had or lost (a restarted, empty store).
    store
        .heartbeat("g3", vec![session("s9", "w", "g3")])
        .await
        .expect("heartbeat");
    assert_eq!(store.get_user("", "w").await.map(|s| s.len()), Ok(1));
}

/// Registrations made at once keep each one's own answer: the per-user limit counts the
/// others, a duplicate id is refused, and every accepted session is listed.
async fn concurrent_registrations(store: Store) {
    let mut logins = tokio::task::JoinSet::new();
    for index in 0..40 {
        let store = store.clone();
        // c0..c19 twice each; at most 5 sessions for the user.
        let id = format!("c{}", index % 20);
        logins.spawn(async move { store.register_limited(session(&id, "crowd", "g1"), 5).await });
    }
    let mut outcomes = Vec::new();
    while let Some(outcome) = logins.join_next().await {
        outcomes.push(outcome.expect("task"));
    }
    let count =
        |wanted: Result<(), RegistryError>| outcomes.iter().filter(|o| **o == wanted).count();
    assert_eq!(count(Ok(())), 5, "{outcomes:?}");
    assert_eq!(
        count(Err(RegistryError::TooManySessions)) + count(Err(RegistryError::DuplicateSession)),
        35,
        "{outcomes:?}"
    );
    let listed = store.get_user("", "crowd").await.expect("listed");
    assert_eq!(listed.len(), 5);
    let ids: Vec<&str> = listed.iter().map(|info| info.session_id.as_str()).collect();
    store.unregister_many(&ids, "").await.expect("unregister");
    assert_eq!(
        store.get_user("", "crowd").await,
        Err(RegistryError::NotFound)
    );
    // Without a limit, each of the 20 ids is created once.
    let mut logins = tokio::task::JoinSet::new();
    for index in 0..40 {
        let store = store.clone();
        let id = format!("d{}", index % 20);
        logins.spawn(async move { store.register(session(&id, "crowd", "g1")).await });
    }
    let mut created = 0;
    while let Some(outcome) = logins.join_next().await {
        match outcome.expect("task") {
            Ok(()) => created += 1,
            Err(error) => assert_eq!(error, RegistryError::DuplicateSession),
        }
    }
    assert_eq!(created, 20);
    assert_eq!(store.get_user("", "crowd").await.map(|s| s.len()), Ok(20));
}

#[tokio::test]
async fn test_memory_store() {
    suite(Store::Memory(MemoryStore::new())).await;
}

#[tokio::test]
async fn test_memory_store_concurrent_registrations() {
    concurrent_registrations(Store::Memory(MemoryStore::new())).await;
}

#[tokio::test]
async fn test_redis_store_concurrent_registrations() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).expect("url");
    concurrent_registrations(Store::Redis(Box::new(store))).await;
}

#[tokio::test]
async fn test_redis_store() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).expect("url");
    suite(Store::Redis(Box::new(store))).await;
}

#[tokio::test]
async fn test_redis_store_down_is_unavailable_then_recovers() {
    let mut redis = RedisServer::start();
    let store = Store::Redis(Box::new(RedisStore::connect(&redis.url()).expect("url")));
    store
        .register(session("a", "u", "g"))
        .await
        .expect("register");
    redis.stop();
    assert!(matches!(
        store.lookup("a").await,
        Err(RegistryError::Unavailable(_))
    ));
    redis.restart();
    let mut recovered = false;
    for _ in 0..50 {
        if store.register(session("b", "u", "g")).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the store reconnects by itself");
}
