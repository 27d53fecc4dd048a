//! A cluster of real processes: a private redis-server, `switchboard auth`, `registry`, `bus`
//! and N `switchboard gateway`s, all on free loopback ports. Gateway 0, 2… publish events into
//! Redis themselves and gateway 1, 3… through the bus. Everything is killed on drop.
//!
//! With `SWITCHBOARD_TEST_REDIS=cluster` the processes run on a 3-master Redis Cluster
//! (`--redis-cluster`, sharded pub/sub) instead: `scripts/test.sh` runs the suite that way too.
//! Tests of what happens to Redis (stopped, restarted empty, its clients killed) run on
//! either: [`Cluster::stop_redis`] and [`Cluster::restart_redis`] act on the one server or on
//! every node of the cluster.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_test_support::{RedisCluster, RedisServer, free_port, wait_for_port};

/// The internal credential every process of a test cluster shares.
pub(crate) const CLUSTER_SECRET: &str = "cluster-test-secret-0123456789";
/// Admin password of the cluster's auth service.
pub(crate) const CLUSTER_ADMIN_PASSWORD: &str = "cluster-admin-password";
/// Registry reap timeout used by the cluster tests.
pub(crate) const GATEWAY_TIMEOUT: Duration = Duration::from_secs(2);

struct Service {
    args: Vec<String>,
    ports: Vec<u16>,
    child: Option<Child>,
}

/// The Redis the processes share.
pub(crate) enum Backend {
    /// One redis-server (`--redis-url`).
    Single(RedisServer),
    /// A 3-master Redis Cluster (`--redis-cluster`).
    Sharded(RedisCluster),
}

impl Backend {
    /// The backend `SWITCHBOARD_TEST_REDIS` asks for: `cluster`, else one Redis.
    fn from_env() -> Self {
        match std::env::var("SWITCHBOARD_TEST_REDIS").as_deref() {
            Ok("cluster") => Self::Sharded(RedisCluster::start(3, 0)),
            _ => Self::Single(RedisServer::start()),
        }
    }

    /// The flag and value that point a process at this Redis.
    fn args(&self) -> [String; 2] {
        match self {
            Self::Single(redis) => ["--redis-url".to_owned(), redis.url()],
            Self::Sharded(cluster) => ["--redis-cluster".to_owned(), cluster.urls().join(",")],
        }
    }
}

/// The running processes.
pub(crate) struct Cluster {
    pub(crate) backend: Backend,
    services: BTreeMap<String, Service>,
    log_dir: PathBuf,
    pub(crate) gateway_ports: Vec<u16>,
    /// Each service's admin listener port, by name.
    admin_ports: BTreeMap<String, u16>,
    /// The gRPC ports of the registry and the bus.
    registry_port: u16,
    bus_port: u16,
    /// Variables every process gets on top of the cluster's own.
    env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts Redis, the three services and `gateways` gateways.
    pub(crate) fn start(gateways: usize) -> Cluster {
        Cluster::start_with_env(gateways, &[])
    }

    /// [`Cluster::start`], each process with the variables `env` too.
    pub(crate) fn start_with_env(gateways: usize, env: &[(&str, &str)]) -> Cluster {
        Cluster::start_on(Backend::from_env(), gateways, env)
    }

    /// [`Cluster::start`] on a Redis Cluster of 3 masters with `replicas` replicas each,
    /// whatever `SWITCHBOARD_TEST_REDIS` says: for failover tests ([`Cluster::redis_cluster`]).
    pub(crate) fn start_on_redis_cluster(gateways: usize, replicas: usize) -> Cluster {
        Cluster::start_on(
            Backend::Sharded(RedisCluster::start(3, replicas)),
            gateways,
            &[],
        )
    }

    /// The Redis Cluster of a cluster made by [`Cluster::start_on_redis_cluster`].
    pub(crate) fn redis_cluster(&mut self) -> &mut RedisCluster {
        match &mut self.backend {
            Backend::Sharded(cluster) => cluster,
            Backend::Single(_) => panic!("this test cluster runs on one redis-server"),
        }
    }

    /// Kills Redis: the server, or every node of the Redis Cluster.
    pub(crate) fn stop_redis(&mut self) {
        match &mut self.backend {
            Backend::Single(redis) => redis.stop(),
            Backend::Sharded(cluster) => cluster.stop(),
        }
    }

    /// Starts Redis again, empty: the server, or every node of the Redis Cluster (with its
    /// slots, without data).
    pub(crate) fn restart_redis(&mut self) {
        match &mut self.backend {
            Backend::Single(redis) => redis.restart(),
            Backend::Sharded(cluster) => cluster.restart(),
        }
    }

    /// The ports of the Redis servers (every master of a Redis Cluster).
    pub(crate) fn redis_ports(&self) -> Vec<u16> {
        match &self.backend {
            Backend::Single(redis) => vec![redis.port()],
            Backend::Sharded(cluster) => cluster.master_ports(),
        }
    }

    fn start_on(backend: Backend, gateways: usize, env: &[(&str, &str)]) -> Cluster {
        let log_dir = std::env::temp_dir().join(format!(
            "switchboard-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let mut cluster = Cluster {
            backend,
            services: BTreeMap::new(),
            log_dir,
            gateway_ports: Vec::new(),
            admin_ports: BTreeMap::new(),
            registry_port: free_port(),
            bus_port: free_port(),
            env: env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
        };
        let [redis_flag, redis_url] = cluster.backend.args();
        let (auth, registry, bus) = (free_port(), cluster.registry_port, cluster.bus_port);
        cluster.add(
            "auth",
            vec![auth],
            &[
                "auth",
                "--grpc-listen",
                &format!("127.0.0.1:{auth}"),
                "--admin-password",
                CLUSTER_ADMIN_PASSWORD,
            ],
        );
        cluster.add(
            "registry",
            vec![registry],
            &[
                "registry",
                "--grpc-listen",
                &format!("127.0.0.1:{registry}"),
                &redis_flag,
                &redis_url,
                "--gateway-timeout",
                "2s",
            ],
        );
        cluster.add(
            "bus",
            vec![bus],
            &[
                "bus",
                "--grpc-listen",
                &format!("127.0.0.1:{bus}"),
                &redis_flag,
                &redis_url,
                // One worker: the current-thread runtime (odd gateways too).
                "--worker-threads",
                "1",
            ],
        );
        for index in 0..gateways {
            let (ws, control) = (free_port(), free_port());
            // Even gateways publish into Redis themselves on the default runtime (a worker
            // per core); odd ones publish through the bus on one worker thread, like the bus:
            // the current-thread runtime is tested on the bus path, the multi-thread one on
            // the direct path and in the registry and auth.
            let odd = index % 2 == 1;
            let via_bus = if odd { "true" } else { "false" };
            let workers = if odd { "1" } else { "0" };
            cluster.add(
                &format!("gateway{index}"),
                vec![ws, control],
                &[
                    "gateway",
                    "--listen",
                    &format!("127.0.0.1:{ws}"),
                    "--control-listen",
                    &format!("127.0.0.1:{control}"),
                    "--auth-url",
                    &format!("http://127.0.0.1:{auth}"),
                    "--registry-url",
                    &format!("http://127.0.0.1:{registry}"),
                    "--bus-url",
                    &format!("http://127.0.0.1:{bus}"),
                    &redis_flag,
                    &redis_url,
                    "--heartbeat-interval",
                    "300ms",
                    "--rpc-timeout",
                    "2s",
                    "--cmd-timeout",
                    "1s",
                    "--publish-via-bus",
                    via_bus,
                    "--max-recover",
                    "5000",
                    "--worker-threads",
                    workers,
                ],
            );
            cluster.gateway_ports.push(ws);
        }
        cluster
    }

    fn add(&mut self, name: &str, mut ports: Vec<u16>, args: &[&str]) {
        let admin = free_port();
        self.admin_ports.insert(name.to_owned(), admin);
        ports.push(admin);
        let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        args.extend(["--admin-listen".to_owned(), format!("127.0.0.1:{admin}")]);
        self.services.insert(
            name.to_owned(),
            Service {
                args,
                ports,
                child: None,
            },
        );
        self.restart(name);
    }

    /// The registry's gRPC address (`http://127.0.0.1:PORT`).
    pub(crate) fn registry_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.registry_port)
    }

    /// The bus's gRPC address (`http://127.0.0.1:PORT`).
    pub(crate) fn bus_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.bus_port)
    }

    /// The admin listener of service `name` (`auth`, `registry`, `bus`, `gateway0`…).
    pub(crate) fn admin_addr(&self, name: &str) -> std::net::SocketAddr {
        let port = self.admin_ports.get(name).expect("known service");
        std::net::SocketAddr::from(([127, 0, 0, 1], *port))
    }

    /// Returns the WebSocket URL of gateway `index`.
    pub(crate) fn ws_url(&self, index: usize) -> String {
        format!("ws://127.0.0.1:{}/api/ws", self.gateway_ports[index])
    }

    /// Starts (again) the service `name` with its original arguments and waits for its ports.
    pub(crate) fn restart(&mut self, name: &str) {
        let log = File::create(self.log_dir.join(format!("{name}.log"))).expect("log file");
        let service = self.services.get_mut(name).expect("known service");
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(&service.args)
            .env(
                "RUST_LOG",
                std::env::var("SWITCHBOARD_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .env("SWITCHBOARD_INTERNAL_SECRET", CLUSTER_SECRET)
            .env_remove("SWITCHBOARD_CONFIG")
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("switchboard starts");
        service.child = Some(child);
        for port in &service.ports {
            assert!(
                wait_for_port(*port, Duration::from_secs(20)),
                "{name} listens on {port} (log in {})",
                self.log_dir.display()
            );
        }
    }

    /// Kills `name` with SIGKILL, as a crash would.
    pub(crate) fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.services.get_mut(name).and_then(|s| s.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to `name`; after "STOP", returns once the process
    /// is stopped.
    ///
    /// # Panics
    /// When `name` is not running or the signal cannot be sent.
    pub(crate) fn signal(&self, name: &str, signal: &str) {
        let pid = self
            .services
            .get(name)
            .and_then(|service| service.child.as_ref())
            .map(std::process::Child::id)
            .unwrap_or_else(|| panic!("{name} runs"));
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .is_ok_and(|status| status.success());
        assert!(sent, "kill -{signal} {name} ({pid})");
        if signal == "STOP" {
            let started = Instant::now();
            while process_state(pid) != Some('T') {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{name} ({pid}) stops"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Sends SIGTERM to `name` and waits for it to exit.
    pub(crate) fn terminate(&mut self, name: &str) {
        if let Some(mut child) = self.services.get_mut(name).and_then(|s| s.child.take()) {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to `name`; true when it exits within `limit` (else it is killed).
    pub(crate) fn terminate_within(&mut self, name: &str, limit: Duration) -> bool {
        let Some(mut child) = self.services.get_mut(name).and_then(|s| s.child.take()) else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Returns the log of `name` so far.
    pub(crate) fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            self.kill(&name);
        }
        if std::thread::panicking() {
            eprintln!("the cluster's logs are kept in {}", self.log_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// The state letter of process `pid` (`T` when stopped), from `/proc`.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses and may contain spaces.
    stat.rsplit_once(") ")?.1.chars().next()
}
