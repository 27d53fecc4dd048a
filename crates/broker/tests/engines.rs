//! The memory and Redis engines deliver the same way; the Redis subscriber survives a restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use switchboard_broker::{
    Broker, BrokerError, Deliver, History, MemoryBroker, RedisBroker, RedisTarget, StreamConfig,
    Subscriber,
};
use switchboard_test_support::{RedisCluster, RedisServer};

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, Bytes)>>);

impl Deliver for Recorder {
    fn deliver(&self, channel: &str, payload: &Bytes) {
        self.0
            .lock()
            .expect("lock")
            .push((channel.to_owned(), payload.clone()));
    }
}

impl Recorder {
    fn take(&self) -> Vec<(String, Bytes)> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
    }

    async fn wait_for(&self, count: usize) -> Vec<(String, Bytes)> {
        for _ in 0..200 {
            if self.0.lock().expect("lock").len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.take()
    }
}

async fn suite(broker: Broker) {
    let first = Arc::new(Recorder::default());
    let second = Arc::new(Recorder::default());
    let first_sub = broker.subscriber(first.clone());
    let second_sub = broker.subscriber(second.clone());
    first_sub
        .subscribe_many(&["a".to_owned(), "b".to_owned()])
        .await
        .expect("subscribe both in one call");
    first_sub
        .subscribe("a")
        .await
        .expect("subscribing again is the same subscription");
    second_sub.subscribe("b").await.expect("subscribe");
    broker
        .publish(
            &["a".into(), "b".into(), "c".into()],
            Bytes::from_static(b"1"),
        )
        .await
        .expect("publish");
    let mut got = first.wait_for(2).await;
    got.sort();
    assert_eq!(
        got,
        vec![
            ("a".into(), Bytes::from_static(b"1")),
            ("b".into(), Bytes::from_static(b"1"))
        ]
    );
    assert_eq!(
        second.wait_for(1).await,
        vec![("b".into(), Bytes::from_static(b"1"))]
    );
    first_sub
        .unsubscribe_many(&["a".to_owned(), "never-subscribed".to_owned()])
        .await
        .expect("unsubscribe");
    // An unsubscribe does not wait for Redis: the channel's messages stop at once, and its
    // UNSUBSCRIBE follows shortly.
    first_sub.subscribe("z").await.expect("subscribe");
    broker
        .publish(&["a".into()], Bytes::from_static(b"2"))
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(first.take().is_empty(), "nothing after unsubscribe");
    queued_commands(&broker).await;
}

/// Commands sent back to back, without waiting between them, are applied in the order sent,
/// however the engine groups them.
async fn queued_commands(broker: &Broker) {
    let recorder = Arc::new(Recorder::default());
    let sub = broker.subscriber(recorder.clone());
    sub.subscribe("x").await.expect("subscribe");
    // Leave, come back and leave again: x must end unsubscribed.
    let leave = ["x".to_owned()];
    let (left, back, left_again) = tokio::join!(
        sub.unsubscribe_many(&leave),
        sub.subscribe("x"),
        sub.unsubscribe_many(&leave)
    );
    left.and(back).and(left_again).expect("commands");
    // Fifty subscribes queued at once all land.
    let channels: Vec<String> = (0..50).map(|n| format!("many-{n}")).collect();
    let subscribed =
        futures_util::future::join_all(channels.iter().map(|channel| sub.subscribe(channel))).await;
    assert!(subscribed.iter().all(Result::is_ok), "{subscribed:?}");
    let mut targets = channels.clone();
    targets.push("x".to_owned());
    broker
        .publish(&targets, Bytes::from_static(b"3"))
        .await
        .expect("publish");
    let mut got: Vec<String> = recorder
        .wait_for(channels.len())
        .await
        .into_iter()
        .map(|(channel, _)| channel)
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    got.extend(recorder.take().into_iter().map(|(channel, _)| channel));
    got.sort();
    let mut expected = channels;
    expected.sort();
    assert_eq!(got, expected, "every queued subscribe, and x left");
}

/// A broker on `redis`.
async fn redis_broker(redis: &RedisServer) -> Broker {
    Broker::Redis(Box::new(
        RedisBroker::connect(&redis.url()).await.expect("url"),
    ))
}

/// A plain client connection to `redis`, to look at its state.
async fn redis_connection(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

#[tokio::test]
async fn memory_engine() {
    suite(Broker::Memory(MemoryBroker::new())).await;
}

#[tokio::test]
async fn redis_engine() {
    let redis = RedisServer::start();
    suite(redis_broker(&redis).await).await;
}

#[tokio::test]
async fn redis_large_batch_keeps_order() {
    let redis = RedisServer::start();
    let broker = redis_broker(&redis).await;
    let recorder = Arc::new(Recorder::default());
    let subscriber = broker.subscriber(recorder.clone());
    subscriber.subscribe("a").await.expect("subscribe");
    subscriber.subscribe("b").await.expect("subscribe");
    // Large enough to go through the publishing script.
    let batch: Vec<(Vec<String>, Bytes)> = (0..50u8)
        .map(|n| {
            (
                vec!["a".to_owned(), "none".to_owned(), "b".to_owned()],
                Bytes::from(vec![n]),
            )
        })
        .collect();
    broker.publish_batch(&batch).await.expect("publish");
    let got = recorder.wait_for(100).await;
    let on_a: Vec<u8> = got
        .iter()
        .filter(|(c, _)| c == "a")
        .map(|(_, p)| p[0])
        .collect();
    assert_eq!(on_a, (0..50).collect::<Vec<u8>>(), "every event, in order");
    assert_eq!(got.len(), 100);
}

#[tokio::test]
async fn redis_restart_resubscribes() {
    let mut redis = RedisServer::start();
    let broker = redis_broker(&redis).await;
    let recorder = Arc::new(Recorder::default());
    let subscriber = broker.subscriber(recorder.clone());
    subscriber.subscribe("kept").await.expect("subscribe");
    redis.stop();
    assert!(
        broker
            .publish(&["kept".into()], Bytes::from_static(b"x"))
            .await
            .is_err()
    );
    assert!(
        subscriber.subscribe("new").await.is_err(),
        "subscribe fails while Redis is down"
    );
    redis.restart();
    let mut delivered = false;
    for _ in 0..100 {
        let _ = broker
            .publish(&["kept".into()], Bytes::from_static(b"back"))
            .await;
        if !recorder.wait_for(1).await.is_empty() {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "delivery resumes on the re-subscribed channel");
}

#[tokio::test]
async fn health_checks_keep_a_healthy_subscription() {
    let redis = RedisServer::start();
    let engine = RedisBroker::connect(&redis.url())
        .await
        .expect("url")
        .with_health_check_interval(Duration::from_millis(50));
    let broker = Broker::Redis(Box::new(engine.clone()));
    let recorder = Arc::new(Recorder::default());
    let subscriber = broker.subscriber(recorder.clone());
    subscriber.subscribe("steady").await.expect("subscribe");
    for n in 0..20u8 {
        broker
            .publish(&["steady".into()], Bytes::from(vec![n]))
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let got = recorder.wait_for(20).await;
    assert_eq!(got.len(), 20, "every message across many health checks");
    assert_eq!(
        engine.reconnections(),
        0,
        "a healthy connection is never dropped"
    );
}

/// Subscribers of each channel, as Redis counts them.
async fn redis_subscribers(redis: &RedisServer, channels: &[String]) -> Vec<i64> {
    let mut connection = redis_connection(redis).await;
    let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channels)
        .query_async(&mut connection)
        .await
        .expect("numsub");
    counts.into_iter().map(|(_, count)| count).collect()
}

/// Leaves `channels` one by one between other connections' subscribes, all queued at once
/// as under churn; then joins "left-0" again and checks that it alone delivers.
async fn leave_all_but_left_0(
    broker: &Broker,
    subscriber: &Subscriber,
    recorder: &Recorder,
    channels: &[String],
) {
    let joined: Vec<String> = (0..channels.len()).map(|n| format!("joined-{n}")).collect();
    let mut commands: Vec<BoxFuture<'_, Result<(), BrokerError>>> = Vec::new();
    for (channel, other) in channels.iter().zip(&joined) {
        commands.push(subscriber.unsubscribe(channel).boxed());
        commands.push(subscriber.subscribe(other).boxed());
    }
    let outcomes = futures_util::future::join_all(commands).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    subscriber.subscribe("left-0").await.expect("joined again");
    broker
        .publish(channels, Bytes::from_static(b"after"))
        .await
        .expect("publish");
    assert_eq!(
        recorder.wait_for(1).await,
        vec![("left-0".into(), Bytes::from_static(b"after"))],
    );
}

#[tokio::test]
async fn redis_left_channels_are_unsubscribed_together() {
    let redis = RedisServer::start();
    let broker = redis_broker(&redis).await;
    let recorder = Arc::new(Recorder::default());
    let subscriber = broker.subscriber(recorder.clone());
    let channels: Vec<String> = (0..100).map(|n| format!("left-{n}")).collect();
    subscriber
        .subscribe_many(&channels)
        .await
        .expect("subscribe");
    assert!(
        redis_subscribers(&redis, &channels)
            .await
            .iter()
            .all(|&n| n == 1)
    );
    leave_all_but_left_0(&broker, &subscriber, &recorder, &channels).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        recorder.take().is_empty(),
        "only the channel joined again delivers"
    );
    let mut remaining = Vec::new();
    for _ in 0..200 {
        remaining = redis_subscribers(&redis, &channels).await;
        if remaining.iter().sum::<i64>() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(remaining[0], 1, "left-0 stays subscribed");
    assert_eq!(
        remaining.iter().sum::<i64>(),
        1,
        "every other channel is unsubscribed"
    );
    let mut connection = redis_connection(&redis).await;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await
        .expect("info");
    let unsubscribes: u64 = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_unsubscribe:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .expect("UNSUBSCRIBE was called");
    // One per channel left if each went out on its own.
    assert!(
        unsubscribes < 20,
        "99 channels left one by one went out in {unsubscribes} UNSUBSCRIBE commands"
    );
}

/// Positioned streams: plain before opening; gap-free offsets after; history read in pages;
/// trimmed, beyond-the-top, too-many and other-epoch reads are unrecoverable.
async fn streams_suite(broker: Broker) {
    let recorder = Arc::new(Recorder::default());
    let sub = broker.subscriber(recorder.clone());
    sub.subscribe("s").await.expect("subscribe");
    let event = |n: u64| Bytes::from(format!("{{\"class\":\"c\",\"body\":{{\"n\":{n}}}}}"));
    broker
        .publish(&["s".into()], event(0))
        .await
        .expect("publish");
    assert_eq!(
        recorder.wait_for(1).await[0].1,
        event(0),
        "no stream: plain"
    );

    let top = broker.open_stream("s").await.expect("open");
    assert_eq!(top.offset, 0);
    assert_eq!(top.stream.len(), 40);
    assert_eq!(
        broker.open_stream("s").await.expect("open").epoch,
        top.epoch
    );
    for n in 1..=5 {
        broker
            .publish(&["s".into()], event(n))
            .await
            .expect("publish");
    }
    let got = recorder.wait_for(5).await;
    for (n, (_, payload)) in (1..=5_u64).zip(&got) {
        let value: serde_json::Value = serde_json::from_slice(payload).expect("JSON");
        assert_eq!(value["pos"]["offset"], n, "{value}");
        assert_eq!(value["pos"]["epoch"], top.epoch.as_str());
        assert_eq!(value["pos"]["stream"], top.stream.as_str());
        assert_eq!(value["body"]["n"], n);
    }
    let read =
        |after: u64, max: u64, page: usize| broker.read_history("s", &top.epoch, after, max, page);
    let offsets = |history: History| match history {
        History::Complete { top, events } => Some((
            top,
            events
                .into_iter()
                .map(|(offset, _)| offset)
                .collect::<Vec<_>>(),
        )),
        History::Unrecoverable => None,
    };
    // history_size 3 keeps offsets 3, 4, 5.
    assert_eq!(
        offsets(read(2, 100, 100).await.expect("read")),
        Some((5, vec![3, 4, 5]))
    );
    assert_eq!(
        offsets(read(2, 100, 2).await.expect("read")),
        Some((5, vec![3, 4])),
        "a page"
    );
    assert_eq!(
        offsets(read(5, 100, 100).await.expect("read")),
        Some((5, vec![]))
    );
    assert_eq!(
        offsets(read(1, 100, 100).await.expect("read")),
        None,
        "trimmed"
    );
    assert_eq!(
        offsets(read(6, 100, 100).await.expect("read")),
        None,
        "beyond the top"
    );
    assert_eq!(
        offsets(read(3, 1, 100).await.expect("read")),
        None,
        "more than max"
    );
    let other = broker.read_history("s", "another-epoch", 3, 100, 100).await;
    assert_eq!(offsets(other.expect("read")), None, "another epoch");
    if let History::Complete { events, .. } = read(4, 100, 100).await.expect("read") {
        assert_eq!(
            events[0].1,
            event(5),
            "the history keeps the payload without position"
        );
    }

    // A stream nobody subscribes to still positions and keeps every event of its channel.
    let quiet = broker.open_stream("quiet").await.expect("open");
    broker
        .publish(&["quiet".into(), "s".into()], event(6))
        .await
        .expect("publish");
    let got = recorder.wait_for(1).await;
    let (_, payload) = got.first().expect("delivered on s");
    assert_eq!(offset_of(payload), Some(6));
    let history = broker
        .read_history("quiet", &quiet.epoch, 0, 100, 100)
        .await;
    assert_eq!(
        offsets(history.expect("read")),
        Some((1, vec![1])),
        "the unsubscribed stream"
    );
}

fn small_streams() -> StreamConfig {
    StreamConfig {
        history_size: 3,
        history_ttl: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn memory_streams() {
    streams_suite(Broker::Memory(
        MemoryBroker::new().with_streams(small_streams()),
    ))
    .await;
}

#[tokio::test]
async fn redis_streams_and_a_lost_stream_gets_a_new_epoch() {
    let redis = RedisServer::start();
    let broker = Broker::Redis(Box::new(
        RedisBroker::connect(&redis.url())
            .await
            .expect("url")
            .with_streams(small_streams()),
    ));
    streams_suite(broker.clone()).await;
    // A stream nobody listens to takes its events without a PUBLISH.
    let publishes = calls(vec![redis.port()], "publish").await;
    broker
        .publish(&["quiet".into()], Bytes::from_static(b"{\"class\":\"c\"}"))
        .await
        .expect("publish");
    assert_eq!(broker.open_stream("quiet").await.expect("open").offset, 2);
    assert_eq!(calls(vec![redis.port()], "publish").await, publishes);
    let before = broker.open_stream("s").await.expect("open");
    let mut connection = redis_connection(&redis).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg("sb:pos:s")
        .query_async(&mut connection)
        .await
        .expect("pttl");
    assert!(ttl > 0 && ttl <= 60_000, "the stream expires: {ttl}");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut connection)
        .await
        .expect("flush");
    let after = broker.open_stream("s").await.expect("open");
    assert_ne!(
        after.epoch, before.epoch,
        "a lost stream starts a new epoch"
    );
    assert_eq!(after.offset, 0);
}

/// Streams that keep a stream for 600 ms after its last open or event.
fn short_lived_streams() -> StreamConfig {
    StreamConfig {
        history_size: 100,
        history_ttl: Duration::from_millis(600),
    }
}

/// A stream kept alive by its events alone (no open since the first) goes on positioning
/// them past its TTL: publishers never mistake it for a channel without a stream.
async fn kept_alive_by_events(broker: Broker) {
    broker.open_stream("kept").await.expect("open");
    let recorder = Arc::new(Recorder::default());
    let sub = broker.subscriber(recorder.clone());
    sub.subscribe("kept").await.expect("subscribe");
    for _ in 0..8 {
        broker
            .publish(&["kept".into()], Bytes::from_static(b"{\"class\":\"c\"}"))
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let offsets: Vec<u64> = recorder
        .wait_for(8)
        .await
        .iter()
        .filter_map(|(_, payload)| offset_of(payload))
        .collect();
    assert_eq!(offsets, (1..=8).collect::<Vec<u64>>());
}

#[tokio::test]
async fn redis_a_stream_kept_alive_by_events_stays_positioned() {
    let redis = RedisServer::start();
    let broker = Broker::Redis(Box::new(
        RedisBroker::connect(&redis.url())
            .await
            .expect("url")
            .with_streams(short_lived_streams()),
    ));
    kept_alive_by_events(broker).await;
}

/// A broker on a Redis Cluster: sharded pub/sub, one script call per slot.
fn cluster_broker(cluster: &RedisCluster, streams: StreamConfig) -> Broker {
    let target = RedisTarget::Cluster(cluster.urls());
    Broker::Redis(Box::new(
        RedisBroker::connect_to(&target)
            .expect("seeds")
            .with_streams(streams)
            .with_health_check_interval(Duration::from_millis(200)),
    ))
}

/// The offset of a positioned payload.
fn offset_of(payload: &Bytes) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value["pos"]["offset"].as_u64()
}

#[tokio::test]
async fn redis_cluster_engine_delivers_like_one_redis_and_follows_a_moved_slot() {
    let cluster = RedisCluster::start(3, 0);
    let broker = cluster_broker(&cluster, small_streams());
    suite(broker.clone()).await;
    queued_commands(&broker).await;
    streams_suite(broker.clone()).await;

    // One batch over channels of many slots keeps each channel's order.
    let recorder = Arc::new(Recorder::default());
    let sub = broker.subscriber(recorder.clone());
    let channels: Vec<String> = (0..40).map(|n| format!("spread-{n}")).collect();
    sub.subscribe_many(&channels).await.expect("subscribe");
    let batch: Vec<(Vec<String>, Bytes)> = (0..10)
        .map(|n| (channels.clone(), Bytes::from(n.to_string())))
        .collect();
    broker.publish_batch(&batch).await.expect("publish");
    let got = recorder.wait_for(400).await;
    assert_eq!(got.len(), 400);
    for channel in &channels {
        let order: Vec<Bytes> = got
            .iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, payload)| payload.clone())
            .collect();
        let expected: Vec<Bytes> = (0..10).map(|n| Bytes::from(n.to_string())).collect();
        assert_eq!(order, expected, "{channel} in order");
    }

    // A slot moved to another master: Redis unsubscribes its channels there; the subscriber
    // subscribes again on the new owner, and the stream's keys moved with the slot.
    let moving = "moving".to_owned();
    sub.subscribe(&moving).await.expect("subscribe");
    broker.open_stream(&moving).await.expect("open");
    let event = Bytes::from_static(b"{\"class\":\"c\"}");
    broker
        .publish(std::slice::from_ref(&moving), event.clone())
        .await
        .expect("publish");
    assert_eq!(offset_of(&recorder.wait_for(1).await[0].1), Some(1));
    let slot = switchboard_broker::slot(moving.as_bytes());
    let from = cluster.owner_of(slot);
    let to = cluster
        .master_ports()
        .into_iter()
        .find(|port| *port != from)
        .expect("another master");
    cluster.move_slot(slot, to);
    let mut offsets = Vec::new();
    for _ in 0..50 {
        broker
            .publish(std::slice::from_ref(&moving), event.clone())
            .await
            .expect("publish after the move");
        offsets.extend(
            recorder
                .wait_for(1)
                .await
                .iter()
                .filter_map(|(_, payload)| offset_of(payload)),
        );
        if !offsets.is_empty() {
            break;
        }
    }
    let first = *offsets
        .first()
        .expect("delivered again after the slot moved");
    assert!(first >= 2, "the stream moved with its slot: offset {first}");
    assert_eq!(cluster.owner_of(slot), to);
}

/// A cluster broker whose subscriber has `channel`, one event delivered on it.
async fn delivering(cluster: &RedisCluster, channel: &str) -> (Broker, Arc<Recorder>, Subscriber) {
    let broker = cluster_broker(cluster, StreamConfig::default());
    let recorder = Arc::new(Recorder::default());
    let sub = broker.subscriber(recorder.clone());
    sub.subscribe(channel).await.expect("subscribe");
    broker
        .publish(&[channel.to_owned()], Bytes::from_static(b"before"))
        .await
        .expect("publish");
    assert_eq!(recorder.wait_for(1).await.len(), 1);
    (broker, recorder, sub)
}

/// Publishes `after` on `channel` until it is accepted and delivered; false after 30 s.
async fn resumes(broker: &Broker, recorder: &Recorder, channel: &str) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if broker
            .publish(&[channel.to_owned()], Bytes::from_static(b"after"))
            .await
            .is_ok()
            && recorder
                .wait_for(1)
                .await
                .iter()
                .any(|(_, payload)| payload.as_ref() == b"after")
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A master killed under a subscriber: once its replica has taken over, the subscriber is
/// subscribed there and delivery resumes.
#[tokio::test]
async fn redis_cluster_failover_resumes_delivery() {
    let mut cluster = RedisCluster::start(3, 1);
    let (broker, recorder, _sub) = delivering(&cluster, "failing-over").await;
    let channel = "failing-over".to_owned();
    assert!(cluster.wait_for_replication(Duration::from_secs(10)));
    let victim = cluster.owner_of(switchboard_broker::slot(channel.as_bytes()));
    cluster.kill(victim);
    let Broker::Redis(redis) = &broker else {
        unreachable!("a Redis broker")
    };
    let delivered = resumes(&broker, &recorder, &channel).await;
    assert!(delivered, "delivery resumed after the failover");
    assert!(
        redis.reconnections() >= 1,
        "the subscriber noticed the loss"
    );
    assert_ne!(
        cluster.owner_of(switchboard_broker::slot(channel.as_bytes())),
        victim
    );
}

/// Every node of the cluster killed and started again empty (with its slots): publishing and
/// delivery come back on the same broker and subscriber, however many commands failed while
/// the cluster was gone.
#[tokio::test]
async fn redis_cluster_restarted_whole_resumes_publishing_and_delivery() {
    let mut cluster = RedisCluster::start(3, 0);
    let (broker, recorder, _sub) = delivering(&cluster, "restarted").await;
    let channel = "restarted".to_owned();

    // Longer than REMAKE_AFTER: the command connection is made anew from the seeds while
    // the cluster is gone, and that one must find the cluster when it is back.
    cluster.stop();
    let down = std::time::Instant::now();
    while down.elapsed() < Duration::from_secs(6) {
        assert!(
            broker
                .publish(std::slice::from_ref(&channel), Bytes::from_static(b"lost"))
                .await
                .is_err(),
            "nothing to publish to"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.restart();

    let delivered = resumes(&broker, &recorder, &channel).await;
    assert!(
        delivered,
        "publishing and delivery resumed after the restart"
    );
}

/// A plain connection to one node of `cluster`, to look at its state.
async fn node_connection(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// How many times the Redis servers on `ports` ran `command`, by `INFO commandstats`.
async fn calls(ports: Vec<u16>, command: &str) -> u64 {
    let mut calls = 0;
    for port in ports {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut node_connection(port).await)
            .await
            .expect("info");
        calls += stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse::<u64>().ok())
            .unwrap_or(0);
    }
    calls
}

/// The shard channels subscribed on any master, out of `channels`.
async fn cluster_subscribed(cluster: &RedisCluster, channels: &[String]) -> Vec<String> {
    let mut subscribed = Vec::new();
    for port in cluster.master_ports() {
        let active: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .query_async(&mut node_connection(port).await)
            .await
            .expect("shardchannels");
        subscribed.extend(
            active
                .into_iter()
                .filter(|channel| channels.contains(channel)),
        );
    }
    subscribed
}

/// The subscriber's checks (subscription counts and canaries, every round) never take a
/// healthy cluster subscription for a lost one, even at a round every 50 ms.
#[tokio::test]
async fn redis_cluster_health_checks_keep_a_healthy_subscription() {
    let cluster = RedisCluster::start(3, 0);
    let engine = RedisBroker::connect_to(&RedisTarget::Cluster(cluster.urls()))
        .expect("seeds")
        .with_health_check_interval(Duration::from_millis(50));
    let broker = Broker::Redis(Box::new(engine.clone()));
    let recorder = Arc::new(Recorder::default());
    let subscriber = broker.subscriber(recorder.clone());
    let channels: Vec<String> = (0..30).map(|n| format!("steady-{n}")).collect();
    subscriber
        .subscribe_many(&channels)
        .await
        .expect("subscribe");
    for n in 0..20u8 {
        broker
            .publish(&channels, Bytes::from(vec![n]))
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let got = recorder.wait_for(600).await;
    assert_eq!(got.len(), 600, "every message across many checks");
    assert_eq!(
        engine.reconnections(),
        0,
        "a healthy subscription is never subscribed again"
    );
}

/// Channels left on a cluster are unsubscribed (one SUNSUBSCRIBE per slot at most, however
/// the leaves were spread between other subscribes); a channel joined again stays.
#[tokio::test]
async fn redis_cluster_left_channels_are_unsubscribed() {
    let cluster = RedisCluster::start(3, 0);
    let broker = cluster_broker(&cluster, StreamConfig::default());
    let recorder = Arc::new(Recorder::default());
    let subscriber = broker.subscriber(recorder.clone());
    let channels: Vec<String> = (0..100).map(|n| format!("left-{n}")).collect();
    subscriber
        .subscribe_many(&channels)
        .await
        .expect("subscribe");
    assert_eq!(cluster_subscribed(&cluster, &channels).await.len(), 100);
    let before = calls(cluster.master_ports(), "sunsubscribe").await;
    leave_all_but_left_0(&broker, &subscriber, &recorder, &channels).await;
    let mut remaining = Vec::new();
    for _ in 0..200 {
        remaining = cluster_subscribed(&cluster, &channels).await;
        if remaining.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(remaining, vec!["left-0".to_owned()], "only left-0 stays");
    let slots: std::collections::HashSet<u16> = channels
        .iter()
        .map(|channel| switchboard_broker::slot(channel.as_bytes()))
        .collect();
    let unsubscribes = calls(cluster.master_ports(), "sunsubscribe").await - before;
    assert!(
        unsubscribes <= u64::try_from(slots.len()).unwrap_or(u64::MAX),
        "99 channels in {} slots went out in {unsubscribes} SUNSUBSCRIBEs",
        slots.len()
    );
}

/// On a cluster too: a stream's keys expire, a stream lost (every master flushed) starts a
/// new epoch, and a stream kept alive by its events alone stays positioned.
#[tokio::test]
async fn redis_cluster_streams_expire_renew_their_epoch_and_stay_alive() {
    let cluster = RedisCluster::start(3, 0);
    let broker = cluster_broker(&cluster, small_streams());
    let before = broker.open_stream("s").await.expect("open");
    let slot = switchboard_broker::slot(b"s");
    let key = format!("sb:pos:{{{}}}s", switchboard_broker::slot_tag(slot));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut node_connection(cluster.owner_of(slot)).await)
        .await
        .expect("pttl");
    assert!(ttl > 0 && ttl <= 60_000, "{key} expires: {ttl}");
    for port in cluster.master_ports() {
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut node_connection(port).await)
            .await
            .expect("flush");
    }
    let after = broker.open_stream("s").await.expect("open");
    assert_ne!(
        after.epoch, before.epoch,
        "a lost stream starts a new epoch"
    );
    assert_eq!(after.offset, 0);

    kept_alive_by_events(cluster_broker(&cluster, short_lived_streams())).await;
}
