//! Smoke runs of `switchboard bench` so the tool cannot rot (no timing assertions).

use crate::common::{ADMIN_PASSWORD, start};
use switchboard::bench::{self, BenchArgs, Workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_workloads_smoke() {
    let running = start().await;
    let mut args = BenchArgs::smoke(&running.ws_url(0), ADMIN_PASSWORD);
    args.server_pids = vec![std::process::id()];

    let fanout = bench::run(&args).await.expect("fanout runs").remove(0);
    assert!(fanout.expected > 0, "{fanout}");
    assert_eq!(fanout.received, fanout.expected, "{fanout}");
    assert_eq!(
        (fanout.lost, fanout.duplicates, fanout.errors),
        (0, 0, 0),
        "{fanout}"
    );
    assert!(fanout.latency.max_us > 0);

    args.workload = Workload::Targeted;
    let targeted = bench::run(&args).await.expect("targeted runs").remove(0);
    assert!(targeted.expected > 0);
    assert_eq!(targeted.received, targeted.expected, "{targeted}");

    args.workload = Workload::Idle;
    let idle = bench::run(&args).await.expect("idle runs").remove(0);
    assert!(idle.server_rss_connected_kib > 0, "{idle}");

    args.workload = Workload::Churn;
    let churn = bench::run(&args).await.expect("churn runs").remove(0);
    assert!(churn.churn_per_sec > 0.0, "{churn}");
    assert_eq!(churn.errors, 0);

    // A wrong password is reported as an error, not a hang.
    args.workload = Workload::Fanout;
    args.password = "wrong".into();
    assert!(bench::run(&args).await.is_err());
    running.stop().await;
}
