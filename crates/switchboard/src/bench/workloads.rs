//! The workloads: fan-out and targeted traffic (with a rate sweep), idle connections, churn.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::client::{BenchConn, Received, send_event_frame};
use super::procstat;
use super::report::{Latency, Report};
use super::{BenchArgs, Workload};

/// Runs the workload of `args`; a sweep yields one report per rate.
///
/// # Errors
/// When connections cannot be set up.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Vec<Report>> {
    match args.workload {
        Workload::Idle => Ok(vec![idle(args).await?]),
        Workload::Churn => Ok(vec![churn(args).await?]),
        Workload::Fanout | Workload::Targeted if !args.sweep.is_empty() => {
            let mut reports = Vec::new();
            for rate in &args.sweep {
                let report = traffic(args, *rate).await?;
                let kept_up = report.kept_up;
                reports.push(report);
                if !kept_up {
                    break;
                }
            }
            Ok(reports)
        }
        Workload::Fanout | Workload::Targeted => Ok(vec![traffic(args, args.rate).await?]),
    }
}

fn workload_name(args: &BenchArgs) -> &'static str {
    match args.workload {
        Workload::Fanout => "fanout",
        Workload::Targeted => "targeted",
        Workload::Idle => "idle",
        Workload::Churn => "churn",
    }
}

/// Opens `count` logged-in connections, each subscribed to `topic_of(index)`, at most
/// `--connect-concurrency` at a time.
async fn connect_all(
    args: &BenchArgs,
    count: usize,
    topic_of: impl Fn(usize) -> Option<usize>,
) -> anyhow::Result<Vec<BenchConn>> {
    let limit = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let url = args.url[index % args.url.len()].clone();
        let (user, password) = (args.user.clone(), args.password.clone());
        let topic = topic_of(index);
        let recover = args.recover;
        let limit = Arc::clone(&limit);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let mut conn = BenchConn::login(&url, &user, &password).await?;
            if let Some(topic) = topic {
                conn.subscribe(topic, recover).await?;
            }
            anyhow::Ok((index, conn))
        });
    }
    let mut conns: Vec<Option<BenchConn>> = (0..count).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (index, conn) = joined??;
        conns[index] = Some(conn);
    }
    Ok(conns.into_iter().flatten().collect())
}

/// Per-subscriber results.
#[derive(Default)]
struct SubscriberTally {
    unique: u64,
    duplicates: u64,
    errors: u64,
    latencies_us: Vec<u64>,
}

/// Counters shared by every reader.
#[derive(Default)]
struct Shared {
    window_open: AtomicBool,
    arrivals_in_window: AtomicU64,
    window_received: AtomicU64,
    publisher_errors: AtomicU64,
}

fn nanos_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

async fn read_deliveries(
    conn: BenchConn,
    publishers: usize,
    shared: Arc<Shared>,
    epoch: Instant,
    stop: CancellationToken,
) -> SubscriberTally {
    let (_sink, mut stream, _) = conn.split();
    let mut tally = SubscriberTally::default();
    let mut last_seq: Vec<Option<u64>> = vec![None; publishers];
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = stream.next() => message,
        };
        let Some(Ok(message)) = message else { break };
        let Message::Text(text) = message else {
            continue;
        };
        match super::client::classify(text.as_str()) {
            Received::Delivery(stamp) => {
                if shared.window_open.load(Ordering::Relaxed) {
                    shared.arrivals_in_window.fetch_add(1, Ordering::Relaxed);
                }
                if stamp.w != 1 {
                    continue;
                }
                let slot = last_seq.get_mut(stamp.publisher as usize);
                match slot {
                    Some(last) if last.is_some_and(|seen| stamp.seq <= seen) => {
                        tally.duplicates += 1
                    }
                    Some(last) => {
                        *last = Some(stamp.seq);
                        tally.unique += 1;
                        shared.window_received.fetch_add(1, Ordering::Relaxed);
                        tally
                            .latencies_us
                            .push(nanos_since(epoch).saturating_sub(stamp.ts) / 1000);
                    }
                    None => tally.errors += 1,
                }
            }
            Received::Error(_) => tally.errors += 1,
            Received::Ok | Received::Other => {}
        }
    }
    tally
}

/// One publisher's plan.
struct PublisherPlan {
    index: u32,
    rate: f64,
    topics: usize,
    random_topics: bool,
    pad: Arc<str>,
}

/// Publishes at `plan.rate` until `stop`; stamps events of the window; returns how many
/// window events went to each topic and how many events it sent in the window.
async fn publish(
    conn: BenchConn,
    plan: PublisherPlan,
    shared: Arc<Shared>,
    epoch: Instant,
    stop: CancellationToken,
) -> (Vec<u64>, u64) {
    let (mut sink, mut stream, mut tid) = conn.split();
    let reader_shared = Arc::clone(&shared);
    let reader_stop = stop.clone();
    let replies = tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                () = reader_stop.cancelled() => break,
                message = stream.next() => message,
            };
            let Some(Ok(Message::Text(text))) = message else {
                if message.is_none() {
                    break;
                }
                continue;
            };
            if let Received::Error(_) = super::client::classify(text.as_str()) {
                reader_shared
                    .publisher_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let mut window_per_topic = vec![0u64; plan.topics];
    let mut sent_in_window = 0u64;
    let mut seq = 0u64;
    let mut random = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(plan.index + 1);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let due = (started.elapsed().as_secs_f64() * plan.rate) as u64;
        let window = shared.window_open.load(Ordering::Relaxed);
        while sent < due {
            let topic = if plan.random_topics {
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                (random % plan.topics as u64) as usize
            } else {
                (seq % plan.topics as u64) as usize
            };
            seq += 1;
            let stamp = (plan.index, seq, nanos_since(epoch), u8::from(window));
            let frame = send_event_frame(topic, tid, stamp, &plan.pad);
            tid += 1;
            if sink.feed(Message::Text(frame.into())).await.is_err() {
                shared.publisher_errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if window {
                window_per_topic[topic] += 1;
                sent_in_window += 1;
            }
            sent += 1;
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    let _ = replies.await;
    let _ = sink.close().await;
    (window_per_topic, sent_in_window)
}

async fn traffic(args: &BenchArgs, rate: u64) -> anyhow::Result<Report> {
    let targeted = args.workload == Workload::Targeted;
    let topics = args
        .topics
        .unwrap_or(if targeted { args.subs } else { 1 })
        .max(1);
    let epoch = Instant::now();
    let before = procstat::sample(&args.server_pids);
    let connect_started = Instant::now();
    let subscribers = connect_all(args, args.subs, |index| Some(index % topics))
        .await
        .context("setting up subscribers")?;
    let connect_per_sec = args.subs as f64 / connect_started.elapsed().as_secs_f64();
    let connected = procstat::sample(&args.server_pids);
    let mut subs_per_topic = vec![0u64; topics];
    for index in 0..args.subs {
        subs_per_topic[index % topics] += 1;
    }
    let publishers = connect_all(args, args.pubs.max(1), |_| None)
        .await
        .context("setting up publishers")?;

    let shared = Arc::new(Shared::default());
    let stop_readers = CancellationToken::new();
    let stop_publishers = CancellationToken::new();
    let mut readers = JoinSet::new();
    for conn in subscribers {
        readers.spawn(read_deliveries(
            conn,
            args.pubs.max(1),
            Arc::clone(&shared),
            epoch,
            stop_readers.clone(),
        ));
    }
    let pad: Arc<str> = if args.payload_bytes > 0 {
        Arc::from(format!(r#","pad":"{}""#, "x".repeat(args.payload_bytes)))
    } else {
        Arc::from("")
    };
    let per_publisher = rate as f64 / publishers.len() as f64;
    let mut pubs = JoinSet::new();
    for (index, conn) in publishers.into_iter().enumerate() {
        let plan = PublisherPlan {
            index: index as u32,
            rate: per_publisher,
            topics,
            random_topics: targeted,
            pad: Arc::clone(&pad),
        };
        pubs.spawn(publish(
            conn,
            plan,
            Arc::clone(&shared),
            epoch,
            stop_publishers.clone(),
        ));
    }

    tokio::time::sleep(args.warmup()).await;
    let window_start = procstat::sample(&args.server_pids);
    shared.window_open.store(true, Ordering::Relaxed);
    let window_started = Instant::now();
    tokio::time::sleep(args.window()).await;
    shared.window_open.store(false, Ordering::Relaxed);
    let window_seconds = window_started.elapsed().as_secs_f64();
    let window_end = procstat::sample(&args.server_pids);
    stop_publishers.cancel();
    let mut expected = 0u64;
    let mut published = 0u64;
    while let Some(joined) = pubs.join_next().await {
        let (per_topic, sent) = joined?;
        published += sent;
        expected += per_topic
            .iter()
            .zip(&subs_per_topic)
            .map(|(events, subs)| events * subs)
            .sum::<u64>();
    }
    let drain_started = Instant::now();
    while shared.window_received.load(Ordering::Relaxed) < expected
        && drain_started.elapsed() < args.drain()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_readers.cancel();
    let mut received = 0;
    let mut duplicates = 0;
    let mut errors = shared.publisher_errors.load(Ordering::Relaxed);
    let mut latencies = Vec::new();
    while let Some(joined) = readers.join_next().await {
        let mut tally = joined?;
        received += tally.unique;
        duplicates += tally.duplicates;
        errors += tally.errors;
        latencies.append(&mut tally.latencies_us);
    }
    let arrivals = shared.arrivals_in_window.load(Ordering::Relaxed);
    let cpu = (window_end.cpu_seconds - window_start.cpu_seconds).max(0.0);
    let deliveries_per_sec = arrivals as f64 / window_seconds;
    let lost = expected.saturating_sub(received);
    let target_deliveries = rate as f64 * args.subs as f64 / topics as f64;
    Ok(Report {
        workload: workload_name(args).to_owned(),
        connections: args.subs,
        publishers: args.pubs.max(1),
        target_rate: rate,
        published_per_sec: published as f64 / window_seconds,
        deliveries_per_sec,
        expected,
        received,
        lost,
        duplicates,
        latency: Latency::from_samples(&mut latencies),
        server_cpu_seconds: cpu,
        server_cpu_us_per_op: if arrivals > 0 {
            cpu * 1e6 / arrivals as f64
        } else {
            0.0
        },
        server_rss_before_kib: before.rss_kib,
        server_rss_connected_kib: connected.rss_kib,
        server_rss_per_connection_kib: per_connection(before.rss_kib, connected.rss_kib, args.subs),
        connect_per_sec,
        churn_per_sec: 0.0,
        errors,
        kept_up: lost == 0 && duplicates == 0 && deliveries_per_sec >= 0.95 * target_deliveries,
    })
}

fn per_connection(before_kib: u64, after_kib: u64, connections: usize) -> f64 {
    if connections == 0 {
        return 0.0;
    }
    after_kib.saturating_sub(before_kib) as f64 / connections as f64
}

async fn idle(args: &BenchArgs) -> anyhow::Result<Report> {
    let topics = args.topics.unwrap_or(args.subs).max(1);
    let before = procstat::sample(&args.server_pids);
    let started = Instant::now();
    let conns = connect_all(args, args.subs, |index| Some(index % topics))
        .await
        .context("setting up idle connections")?;
    let connect_per_sec = args.subs as f64 / started.elapsed().as_secs_f64();
    tokio::time::sleep(args.window()).await;
    let connected = procstat::sample(&args.server_pids);
    for conn in conns {
        conn.close().await;
    }
    Ok(Report {
        workload: workload_name(args).to_owned(),
        connections: args.subs,
        server_rss_before_kib: before.rss_kib,
        server_rss_connected_kib: connected.rss_kib,
        server_rss_per_connection_kib: per_connection(before.rss_kib, connected.rss_kib, args.subs),
        connect_per_sec,
        kept_up: true,
        ..Report::default()
    })
}

async fn churn(args: &BenchArgs) -> anyhow::Result<Report> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut workers = JoinSet::new();
    let start = procstat::sample(&args.server_pids);
    let started = Instant::now();
    for worker in 0..args.churn_workers.max(1) {
        let url = args.url[worker % args.url.len()].clone();
        let (user, password) = (args.user.clone(), args.password.clone());
        let (done, errors, stop) = (Arc::clone(&done), Arc::clone(&errors), stop.clone());
        workers.spawn(async move {
            let mut round = 0usize;
            while !stop.is_cancelled() {
                round += 1;
                let attempt = async {
                    let mut conn = BenchConn::login(&url, &user, &password).await?;
                    conn.subscribe(worker * 1_000_000 + round, false).await?;
                    conn.close().await;
                    anyhow::Ok(())
                };
                match attempt.await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    tokio::time::sleep(args.window()).await;
    let seconds = started.elapsed().as_secs_f64();
    let end = procstat::sample(&args.server_pids);
    let operations = done.load(Ordering::Relaxed);
    stop.cancel();
    while workers.join_next().await.is_some() {}
    let cpu = (end.cpu_seconds - start.cpu_seconds).max(0.0);
    Ok(Report {
        workload: workload_name(args).to_owned(),
        connections: args.churn_workers,
        churn_per_sec: operations as f64 / seconds,
        server_cpu_seconds: cpu,
        server_cpu_us_per_op: if operations > 0 {
            cpu * 1e6 / operations as f64
        } else {
            0.0
        },
        errors: errors.load(Ordering::Relaxed),
        kept_up: true,
        ..Report::default()
    })
}
