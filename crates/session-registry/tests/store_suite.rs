//! One suite, two backends: the in-memory index and the Redis index behave the same.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchboard_broker::{Broker, Deliver, RedisBroker, RedisTarget};
use switchboard_proto::digest;
use switchboard_proto::v1::SessionInfo;
use switchboard_session_registry::{GatewayDigest, MemoryStore, RedisStore, RegistryError, Store};
use switchboard_test_support::{RedisCluster, RedisServer};

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
        resume_hash: String::new(),
    }
}

/// Every user of `service`, read in pages of `limit` and merged.
async fn all_users(store: &Store, service: &str, limit: usize) -> Vec<(String, Vec<String>)> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let page = store
            .list_users(service, &cursor, limit)
            .await
            .expect("list");
        for (user, ids) in page.items {
            users.entry(user).or_default().extend(ids);
        }
        pages += 1;
        assert!(pages < 10_000, "the cursor goes on forever");
        if page.next.is_empty() {
            break;
        }
        cursor = page.next;
    }
    users
        .into_iter()
        .map(|(user, mut ids)| {
            ids.sort();
            ids.dedup();
            (user, ids)
        })
        .collect()
}

/// Every session id the index holds for `gateway`, read in pages of `limit`.
async fn all_gateway_sessions(store: &Store, gateway: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = store
            .gateway_sessions(gateway, &cursor, limit)
            .await
            .expect("gateway sessions");
        ids.extend(page.items);
        if page.next.is_empty() {
            break;
        }
        cursor = page.next;
    }
    ids.sort();
    ids.dedup();
    ids
}

fn held(ids: &[&str]) -> GatewayDigest {
    GatewayDigest {
        count: ids.len() as u64,
        digest: digest::of_ids(ids.iter().copied()),
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
        store
            .register_limited(session("s7", "u", "g1"), 2, "")
            .await,
        Err(RegistryError::TooManySessions)
    );
    store
        .register_limited(session("s7", "v", "g1"), 2, "")
        .await
        .expect("v has one session");
    store.unregister("s7", "").await.expect("unregister");
    let mut elsewhere = session("s8", "u", "g1");
    elsewhere.service = "other".into();
    store
        .register_limited(elsewhere, 2, "")
        .await
        .expect("the limit is per service");
    store.unregister("s8", "").await.expect("unregister");
    // A user name that looks like a key separator cannot collide with another user.
    store
        .register(session("s4", "u:x", "g2"))
        .await
        .expect("register");
    let users = all_users(&store, "", 1000).await;
    assert_eq!(users, all_users(&store, "", 1).await, "one user per page");
    assert_eq!(
        users,
        vec![
            ("u".to_owned(), vec!["s1".to_owned(), "s2".to_owned()]),
            ("u:x".to_owned(), vec!["s4".to_owned()]),
            ("v".to_owned(), vec!["s3".to_owned()]),
        ]
    );
    assert!(all_users(&store, "other", 10).await.is_empty());
    // The heartbeat answers what the index holds for the gateway; so do its pages.
    assert_eq!(store.heartbeat("g1", "").await, Ok(held(&["s1", "s2"])));
    assert_eq!(store.heartbeat("g2", "").await, Ok(held(&["s3", "s4"])));
    assert_eq!(all_gateway_sessions(&store, "g2", 1).await, ["s3", "s4"]);
    assert_eq!(store.heartbeat("nobody", "").await, Ok(held(&[])));
    // The gateways heard from, with the control address their heartbeats carry and the
    // sessions the index holds for each.
    store
        .heartbeat("g1", "10.0.0.1:9104")
        .await
        .expect("heartbeat");
    let mut heard: Vec<(String, String, u64)> = store
        .list_gateways(Duration::from_secs(60))
        .await
        .expect("list gateways")
        .into_iter()
        .map(|g| (g.gateway_id, g.control_addr, g.session_count))
        .collect();
    heard.sort();
    assert_eq!(
        heard,
        [
            ("g1".to_owned(), "10.0.0.1:9104".to_owned(), 2),
            ("g2".to_owned(), String::new(), 2),
            ("nobody".to_owned(), String::new(), 0),
        ]
    );
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
    // A re-learn sent before the batch does not bring its sessions back.
    assert_eq!(
        store.relearn(vec![session("m1", "many", "g1")]).await,
        Ok(vec!["m1".to_owned()])
    );
    assert_eq!(store.lookup("m1").await, Err(RegistryError::NotFound));
    assert_eq!(store.heartbeat("g1", "").await, Ok(held(&[])));

    // g2 keeps heartbeating, g1 (which holds s5) goes silent and is reaped.
    store
        .register(session("s5", "u", "g1"))
        .await
        .expect("register");
    store.heartbeat("g1", "").await.expect("heartbeat");
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        store.heartbeat("g2", "").await.expect("heartbeat");
    }
    assert_eq!(store.reap(Duration::from_millis(400)).await, Ok(1));
    assert_eq!(store.lookup("s5").await, Err(RegistryError::NotFound));
    assert!(store.lookup("s3").await.is_ok());
    // g1 was only slow: its heartbeat shows the loss, and it re-learns what it holds (a
    // reap leaves no tombstone); re-learning what is already there changes nothing.
    assert_eq!(store.heartbeat("g1", "").await, Ok(held(&[])));
    assert_eq!(
        store.relearn(vec![session("s5", "u", "g1")]).await,
        Ok(vec![])
    );
    assert_eq!(
        store.relearn(vec![session("s5", "u", "g1")]).await,
        Ok(vec![])
    );
    assert_eq!(store.heartbeat("g1", "").await, Ok(held(&["s5"])));
    // Another gateway cannot re-learn an id that is held.
    assert_eq!(
        store.relearn(vec![session("s5", "u", "g2")]).await,
        Ok(vec!["s5".to_owned()])
    );
    assert_eq!(store.lookup("s5").await.expect("lookup").gateway_id, "g1");

    // A re-learn sent before an unregister does not bring the session back.
    store.unregister("s3", "g2").await.expect("unregister");
    assert_eq!(
        store
            .relearn(vec![session("s3", "v", "g2"), session("s4", "u:x", "g2")])
            .await,
        Ok(vec!["s3".to_owned()])
    );
    assert_eq!(store.lookup("s3").await, Err(RegistryError::NotFound));
    assert_eq!(store.heartbeat("g2", "").await, Ok(held(&["s4"])));
    // A login may reuse the id right away.
    store
        .register(session("s3", "v", "g1"))
        .await
        .expect("register again");

    // A re-learn brings back sessions the index never had or lost (a restarted, empty store).
    assert_eq!(
        store.relearn(vec![session("s9", "w", "g3")]).await,
        Ok(vec![])
    );
    assert_eq!(store.get_user("", "w").await.map(|s| s.len()), Ok(1));
}

/// A gateway that heartbeats between the reaper finding it silent and reaping it keeps its
/// sessions.
async fn reap_spares_a_gateway_that_came_back(store: Store) {
    store
        .register(session("r1", "u", "gr"))
        .await
        .expect("register");
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.heartbeat("gr", "").await.expect("heartbeat");
    assert_eq!(store.reap(Duration::from_millis(200)).await, Ok(0));
    assert!(store.lookup("r1").await.is_ok());
}

/// Registrations made at once keep each one's own answer: the per-user limit counts the
/// others, a duplicate id is refused, and every accepted session is listed.
async fn concurrent_registrations(store: Store) {
    let mut logins = tokio::task::JoinSet::new();
    for index in 0..40 {
        let store = store.clone();
        // c0..c19 twice each; at most 5 sessions for the user.
        let id = format!("c{}", index % 20);
        logins.spawn(async move {
            store
                .register_limited(session(&id, "crowd", "g1"), 5, "")
                .await
        });
    }
    let mut outcomes = Vec::new();
    while let Some(outcome) = logins.join_next().await {
        outcomes.push(outcome.expect("task"));
    }
    let count = |wanted: Result<Option<SessionInfo>, RegistryError>| {
        outcomes.iter().filter(|o| **o == wanted).count()
    };
    assert_eq!(count(Ok(None)), 5, "{outcomes:?}");
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

/// A takeover moves a session to the new gateway when the resume hash matches, for the same
/// user and service only; the old gateway's unregister leaves it, and the old hash is spent.
async fn takeover(store: Store) {
    let mut first = session("t1", "u", "g1");
    first.resume_hash = "h1".into();
    store.register(first).await.expect("register");
    let mut moved = session("t1", "u", "g2");
    moved.resume_hash = "h2".into();
    let refused = store.register_limited(moved.clone(), 0, "wrong").await;
    assert_eq!(refused, Err(RegistryError::DuplicateSession), "wrong hash");
    let mut other = moved.clone();
    other.user = "v".into();
    let refused = store.register_limited(other, 0, "h1").await;
    assert_eq!(
        refused,
        Err(RegistryError::DuplicateSession),
        "another user"
    );
    let previous = store
        .register_limited(moved, 0, "h1")
        .await
        .expect("taken over")
        .expect("the registration before");
    assert_eq!(previous.gateway_id, "g1");
    assert_eq!(store.lookup("t1").await.expect("lookup").gateway_id, "g2");
    assert_eq!(
        all_gateway_sessions(&store, "g1", 10).await,
        Vec::<String>::new()
    );
    assert_eq!(
        all_gateway_sessions(&store, "g2", 10).await,
        vec!["t1".to_owned()]
    );
    assert_eq!(
        store.heartbeat("g1", "").await,
        Ok(held(&[])),
        "g1's digest lost it"
    );
    assert_eq!(
        store.heartbeat("g2", "").await,
        Ok(held(&["t1"])),
        "g2's digest has it"
    );
    store.unregister("t1", "g1").await.expect("unregister");
    assert_eq!(
        store.lookup("t1").await.expect("still there").gateway_id,
        "g2"
    );
    let mut again = session("t1", "u", "g3");
    again.resume_hash = "h3".into();
    let refused = store.register_limited(again, 0, "h1").await;
    assert_eq!(
        refused,
        Err(RegistryError::DuplicateSession),
        "the old hash is spent"
    );
}

#[tokio::test]
async fn memory_store_takeover() {
    takeover(Store::Memory(MemoryStore::new())).await;
}

#[tokio::test]
async fn redis_store_takeover() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).expect("url");
    takeover(Store::Redis(Box::new(store))).await;
}

#[tokio::test]
async fn memory_store() {
    suite(Store::Memory(MemoryStore::new())).await;
}

#[tokio::test]
async fn memory_store_reap_spares_a_gateway_that_came_back() {
    reap_spares_a_gateway_that_came_back(Store::Memory(MemoryStore::new())).await;
}

#[tokio::test]
async fn redis_store_reap_spares_a_gateway_that_came_back() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).expect("url");
    reap_spares_a_gateway_that_came_back(Store::Redis(Box::new(store))).await;
}

#[tokio::test]
async fn memory_store_concurrent_registrations() {
    concurrent_registrations(Store::Memory(MemoryStore::new())).await;
}

#[tokio::test]
async fn redis_store_concurrent_registrations() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).expect("url");
    concurrent_registrations(Store::Redis(Box::new(store))).await;
}

#[tokio::test]
async fn redis_store() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).expect("url");
    suite(Store::Redis(Box::new(store))).await;
}

/// `store` answers unavailable while Redis is down, and registers again on its own once it is
/// back; `power(false)` stops Redis, `power(true)` starts it again.
async fn down_then_recovers(store: Store, mut power: impl FnMut(bool)) {
    store
        .register(session("a", "u", "g"))
        .await
        .expect("register");
    power(false);
    assert!(matches!(
        store.lookup("a").await,
        Err(RegistryError::Unavailable(_))
    ));
    power(true);
    let mut recovered = false;
    for _ in 0..100 {
        if store.register(session("b", "u", "g")).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the store reconnects by itself");
}

#[tokio::test]
async fn redis_store_down_is_unavailable_then_recovers() {
    let mut redis = RedisServer::start();
    let store = Store::Redis(Box::new(RedisStore::connect(&redis.url()).expect("url")));
    down_then_recovers(store, |up| if up { redis.restart() } else { redis.stop() }).await;
}

/// A store on a fresh 3-master Redis Cluster.
fn cluster_store(cluster: &RedisCluster) -> Store {
    let target = RedisTarget::Cluster(cluster.urls());
    Store::Redis(Box::new(RedisStore::connect_to(&target).expect("seeds")))
}

#[tokio::test]
async fn redis_cluster_store() {
    let cluster = RedisCluster::start(3, 0);
    suite(cluster_store(&cluster)).await;
}

#[tokio::test]
async fn redis_cluster_store_takeover_and_concurrency() {
    let cluster = RedisCluster::start(3, 0);
    takeover(cluster_store(&cluster)).await;
    concurrent_registrations(cluster_store(&cluster)).await;
}

#[tokio::test]
async fn redis_cluster_store_reap_spares_a_gateway_that_came_back() {
    let cluster = RedisCluster::start(3, 0);
    reap_spares_a_gateway_that_came_back(cluster_store(&cluster)).await;
}

#[tokio::test]
async fn redis_cluster_store_down_is_unavailable_then_recovers() {
    let mut cluster = RedisCluster::start(3, 0);
    let store = cluster_store(&cluster);
    down_then_recovers(store, |up| {
        if up {
            cluster.restart();
        } else {
            cluster.stop();
        }
    })
    .await;
}

/// On a cluster the lifecycle events leave the scripts and go out sharded, in order.
#[tokio::test]
async fn redis_cluster_store_publishes_lifecycle_events() {
    #[derive(Default)]
    struct Events(std::sync::Mutex<Vec<(String, String)>>);
    impl Deliver for Events {
        fn deliver(&self, channel: &str, payload: &Bytes) {
            let value: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
            let kind = value["type"].as_str().unwrap_or_default().to_owned();
            self.0
                .lock()
                .expect("lock")
                .push((channel.to_owned(), kind));
        }
    }
    let cluster = RedisCluster::start(3, 0);
    let target = RedisTarget::Cluster(cluster.urls());
    let broker = Broker::Redis(Box::new(RedisBroker::connect_to(&target).expect("seeds")));
    let events = Arc::new(Events::default());
    let subscriber = broker.subscriber(events.clone());
    // Every presence event of user "u" in the default service.
    let any_type = "sb:ev:0::4:core:8:presence:1:*:1:u".to_owned();
    subscriber.subscribe(&any_type).await.expect("subscribe");
    let store = cluster_store(&cluster);
    store
        .register(session("p1", "u", "g"))
        .await
        .expect("register");
    store.unregister("p1", "g").await.expect("unregister");
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = events.0.lock().expect("lock").clone();
        if seen.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen,
        vec![
            (any_type.clone(), "started".to_owned()),
            (any_type, "stopped".to_owned())
        ]
    );
}

/// An event left in the outbox by a drainer that died holding the lock is published once the
/// lock expires, by the next sweep.
#[tokio::test]
async fn redis_cluster_outbox_left_by_a_dead_drainer_is_published() {
    let cluster = RedisCluster::start(3, 0);
    let target = RedisTarget::Cluster(cluster.urls());
    let broker = Broker::Redis(Box::new(RedisBroker::connect_to(&target).expect("seeds")));
    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<Bytes>>);
    impl Deliver for Seen {
        fn deliver(&self, _channel: &str, payload: &Bytes) {
            self.0.lock().expect("lock").push(payload.clone());
        }
    }
    let seen = Arc::new(Seen::default());
    let subscriber = broker.subscriber(seen.clone());
    subscriber
        .subscribe("left-behind")
        .await
        .expect("subscribe");
    let owner = cluster
        .owner_of(switchboard_broker::slot(b"{sb}"))
        .to_string();
    let cli = |args: &[&str]| {
        let output = std::process::Command::new("redis-cli")
            .args(["-p", &owner])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(
        cli(&["SET", "{sb}:outbox:lock", "dead", "PX", "1500"]),
        "OK"
    );
    cli(&[
        "XADD",
        "{sb}:outbox",
        "*",
        "p",
        "{\"n\":1}",
        "c",
        "left-behind",
    ]);
    let _store = cluster_store(&cluster);
    let started = std::time::Instant::now();
    while seen.0.lock().expect("lock").is_empty() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen.0.lock().expect("lock").clone(),
        vec![Bytes::from_static(b"{\"n\":1}")]
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "not before the dead drainer's lock expired"
    );
    assert_eq!(cli(&["XLEN", "{sb}:outbox"]), "0");
}
