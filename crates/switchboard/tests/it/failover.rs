//! A Redis Cluster master killed under traffic: its replica takes over, delivery resumes, and
//! a positioned subscriber loses nothing the history holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::cluster::Cluster;
use crate::recovery::{admin_at, assert_exactly_once_in_order, read_offsets};

/// The broker channel of subscription key `{class: "failover"}`.
const CHANNEL: &str = "sb:ev:0::8:failover:1:*:1:*:1:*";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_positioned_subscribers_lose_nothing() {
    const BEFORE: u64 = 300;
    const TOTAL: u64 = 900;
    let mut cluster = Cluster::start_on_redis_cluster(2, 1);
    let mut subscriber = admin_at(&cluster, 0).await;
    subscriber
        .ok(
            "event",
            "subscribe",
            json!({"class": "failover", "recover": true}),
        )
        .await;
    let mut publisher = admin_at(&cluster, 1).await;
    for n in 1..=BEFORE {
        publisher
            .ok(
                "event",
                "send_event",
                json!({"class": "failover", "body": {"n": n}}),
            )
            .await;
    }
    let mut offsets = Vec::new();
    assert!(!read_offsets(&mut subscriber, &mut offsets, BEFORE).await);

    // Replication is asynchronous: what a master wrote in its last instant may never reach its
    // replica. The kill comes once the replica has everything.
    let redis = cluster.redis_cluster();
    assert!(redis.wait_for_replication(Duration::from_secs(10)));
    let slot = switchboard_broker::slot(CHANNEL.as_bytes());
    let victim = redis.owner_of(slot);
    redis.kill(victim);

    // Publish on, each event until it is accepted (refused while the replica takes over), and
    // past TOTAL until the subscriber has TOTAL: a gap is noticed when a later event arrives.
    let done = Arc::new(AtomicBool::new(false));
    let publishing = tokio::spawn({
        let done = Arc::clone(&done);
        async move {
            let mut refused = 0_u32;
            let mut n = BEFORE + 1;
            let started = Instant::now();
            while !done.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let reply = publisher
                    .request(
                        "event",
                        "send_event",
                        json!({"class": "failover", "body": {"n": n}}),
                    )
                    .await;
                if reply["result"] == "ok" {
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                } else {
                    assert_eq!(reply["data"]["code"], "unavailable", "{reply}");
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            (refused, n - 1)
        }
    });
    let ended = read_offsets(&mut subscriber, &mut offsets, TOTAL).await;
    done.store(true, Ordering::Relaxed);
    let (refused, published) = publishing.await.expect("publisher");
    assert!(!ended, "the subscriber kept its connection");
    assert_exactly_once_in_order(&offsets[..usize::try_from(TOTAL).unwrap_or(0)], TOTAL);
    let promoted = cluster.redis_cluster().owner_of(slot);
    assert_ne!(promoted, victim, "the replica serves the slot");
    eprintln!(
        "failover: master {victim} killed, replica {promoted} took over; \
         {refused} publishes refused meanwhile, {published} accepted"
    );
}
