//! 50 000 sessions of one gateway, registered, heartbeated, listed, reaped and re-learned
//! through the registry's gRPC API, against a real Redis: every message stays small whatever
//! the number of sessions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message;
use switchboard_broker::RedisTarget;
use switchboard_proto::digest;
use switchboard_proto::internal::{InternalSecret, SecuredChannel};
use switchboard_proto::v1::session_registry_client::SessionRegistryClient;
use switchboard_proto::v1::{
    GatewaySessionsRequest, HeartbeatReply, HeartbeatRequest, ListUsersRequest, LookupRequest,
    RegisterRequest, RelearnRequest, SessionInfo,
};
use switchboard_session_registry::{Config, RedisStore, Store};
use switchboard_test_support::{RedisCluster, RedisServer};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

const SESSIONS: usize = 50_000;
const GATEWAY: &str = "gw-big";

fn session(index: usize) -> SessionInfo {
    SessionInfo {
        session_id: format!("session-{index:06}"),
        service: String::new(),
        user: format!("user-{:05}", index / 2),
        r#type: "api_server".into(),
        remote: "ws:127.0.0.1:1".into(),
        meta_json: r#"{"device":"test"}"#.into(),
        gateway_id: GATEWAY.into(),
        control_addr: "127.0.0.1:2".into(),
        resume_hash: String::new(),
    }
}

fn all_digest() -> u64 {
    (0..SESSIONS).fold(0, |d, i| d ^ digest::of_id(&session(i).session_id))
}

/// Heartbeats as `GATEWAY` every 300 ms until `alive` is cancelled.
fn keep_beating(
    mut client: SessionRegistryClient<SecuredChannel>,
    alive: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !alive.is_cancelled() {
            let request = HeartbeatRequest {
                gateway_id: GATEWAY.into(),
                ..HeartbeatRequest::default()
            };
            client.heartbeat(request).await.expect("heartbeat");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

async fn heartbeat(client: &mut SessionRegistryClient<SecuredChannel>) -> HeartbeatReply {
    let request = HeartbeatRequest {
        gateway_id: GATEWAY.into(),
        session_count: SESSIONS as u64,
        digest: all_digest(),
        control_addr: String::new(),
    };
    assert!(request.encoded_len() < 64, "a heartbeat is a few bytes");
    client
        .heartbeat(request)
        .await
        .expect("heartbeat")
        .into_inner()
}

async fn gateway_session_count(client: &mut SessionRegistryClient<SecuredChannel>) -> usize {
    let mut ids = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .gateway_sessions(GatewaySessionsRequest {
                gateway_id: GATEWAY.into(),
                cursor,
                limit: 0,
            })
            .await
            .expect("gateway sessions")
            .into_inner();
        assert!(page.session_ids.len() <= 10_000, "a page is bounded");
        ids.extend(page.session_ids);
        if page.next_cursor.is_empty() {
            return ids.len();
        }
        cursor = page.next_cursor;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_sessions_of_one_gateway() {
    let redis = RedisServer::start();
    let store = Store::Redis(Box::new(RedisStore::connect(&redis.url()).expect("url")));
    fifty_thousand_sessions_of_one_gateway_in(store).await;
}

/// The same on a 3-master Redis Cluster, where the whole index sits in one slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_sessions_of_one_gateway_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let target = RedisTarget::Cluster(cluster.urls());
    let store = Store::Redis(Box::new(RedisStore::connect_to(&target).expect("seeds")));
    fifty_thousand_sessions_of_one_gateway_in(store).await;
}

async fn fifty_thousand_sessions_of_one_gateway_in(store: Store) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let secret = InternalSecret::random();
    let shutdown = CancellationToken::new();
    let config = Config {
        gateway_timeout: Duration::from_secs(2),
        max_sessions_per_user: 0,
    };
    let server = tokio::spawn(switchboard_session_registry::serve(
        config,
        store,
        listener,
        secret.clone(),
        shutdown.clone(),
    ));
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let client = SessionRegistryClient::new(secret.channel(channel));

    // The gateway stays alive (heartbeats) while it registers and lists.
    let alive = CancellationToken::new();
    let beating = keep_beating(client.clone(), alive.clone());

    // Register all of them, 64 calls in flight.
    let mut next = 0;
    let mut in_flight = tokio::task::JoinSet::new();
    while next < SESSIONS || !in_flight.is_empty() {
        while next < SESSIONS && in_flight.len() < 64 {
            let mut client = client.clone();
            let info = session(next);
            in_flight.spawn(async move {
                client
                    .register(RegisterRequest {
                        session: Some(info),
                        takeover_hash: String::new(),
                    })
                    .await
            });
            next += 1;
        }
        if let Some(done) = in_flight.join_next().await {
            done.expect("task").expect("register");
        }
    }

    // The registry's count and digest are the gateway's.
    let mut client = client.clone();
    let expected_digest = all_digest();
    let reply = heartbeat(&mut client).await;
    assert_eq!(reply.session_count, SESSIONS as u64);
    assert_eq!(reply.digest, expected_digest);
    assert_eq!(gateway_session_count(&mut client).await, SESSIONS);

    // `ListUsers` in pages: every user once, with both of their sessions.
    let mut users: HashMap<String, Vec<String>> = HashMap::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_users(ListUsersRequest {
                service: String::new(),
                cursor,
                limit: 0,
            })
            .await
            .expect("list users")
            .into_inner();
        pages += 1;
        for entry in page.users {
            users
                .entry(entry.user)
                .or_default()
                .extend(entry.session_ids);
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert!(pages > 1, "listed in several pages");
    assert_eq!(users.len(), SESSIONS / 2);
    assert!(users.values().all(|ids| {
        let mut ids = ids.clone();
        ids.sort();
        ids.dedup();
        ids.len() == 2
    }));

    // The gateway goes silent: the reaper removes every session, in chunks.
    alive.cancel();
    beating.await.expect("heartbeats");
    let silent = Instant::now();
    while gateway_session_count(&mut client).await > 0 {
        assert!(silent.elapsed() < Duration::from_secs(30), "reaped in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lost = client
        .lookup(LookupRequest {
            session_id: session(7).session_id,
        })
        .await
        .expect_err("reaped");
    assert_eq!(lost.code(), tonic::Code::NotFound);

    // It was only slow: its next heartbeat shows the loss, and it re-learns everything in
    // batches, heartbeating meanwhile as a gateway does; nothing is refused (a reap leaves no
    // tombstone).
    let reply = heartbeat(&mut client).await;
    assert_eq!((reply.session_count, reply.digest), (0, 0));
    let alive = CancellationToken::new();
    let beating = keep_beating(client.clone(), alive.clone());
    let all: Vec<SessionInfo> = (0..SESSIONS).map(session).collect();
    for batch in all.chunks(1000) {
        let refused = client
            .relearn(RelearnRequest {
                sessions: batch.to_vec(),
            })
            .await
            .expect("relearn")
            .into_inner()
            .refused;
        assert!(refused.is_empty(), "{refused:?}");
    }
    let reply = heartbeat(&mut client).await;
    assert_eq!(reply.session_count, SESSIONS as u64);
    assert_eq!(reply.digest, expected_digest);
    let found = client
        .lookup(LookupRequest {
            session_id: session(7).session_id,
        })
        .await
        .expect("re-learned")
        .into_inner();
    assert_eq!(found.session.map(|s| s.user), Some("user-00003".to_owned()));
    alive.cancel();
    beating.await.expect("heartbeats");

    shutdown.cancel();
    let _ = server.await;
}
