//! The Redis Cluster the suite can start: it forms, keeps keys across its shards, and a
//! replica takes over from a master that is killed.

use std::process::Command;
use std::time::{Duration, Instant};

use switchboard_test_support::RedisCluster;

fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-c", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn three_masters_form_a_cluster_and_survive_a_master_failure() {
    let mut cluster = RedisCluster::start(3, 1);
    assert_eq!(cluster.urls().len(), 6);
    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3, "three masters");
    // Keys spread over the slots of every master; -c follows MOVED.
    for key in ["a", "b", "c", "{user:1}x", "{user:1}y"] {
        assert_eq!(cli(masters[0], &["set", key, "v"]), "OK");
    }
    let keys_on: Vec<String> = masters.iter().map(|port| cli(*port, &["dbsize"])).collect();
    assert!(
        keys_on.iter().filter(|n| n.as_str() != "0").count() >= 2,
        "keys on several shards: {keys_on:?}"
    );

    // A master dies once its replica has everything: the replica is promoted and every slot
    // is served again, with every key.
    assert!(
        cluster.wait_for_replication(Duration::from_secs(20)),
        "replicas caught up"
    );
    cluster.kill(masters[1]);
    let started = Instant::now();
    while cluster.master_ports().len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a replica takes over within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let live = cluster.live_ports();
    assert!(
        cluster.wait_until_ok(&live, Duration::from_secs(20)),
        "the cluster recovers after a master is killed"
    );
    for key in ["a", "b", "c", "{user:1}x", "{user:1}y"] {
        assert_eq!(cli(live[0], &["get", key]), "v", "{key} after the failover");
    }
}
