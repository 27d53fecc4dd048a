//! Test helpers shared by the crates' integration tests.
//!
//! [`RedisServer`] starts a private `redis-server` on a free loopback port (no persistence)
//! and stops it when dropped, so no test depends on a server someone else left running;
//! [`RedisCluster`] does the same for a Redis Cluster of several masters and replicas.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ports this process has handed out: the kernel may offer a port again once its probe
/// listener is closed, before the test that got it has bound it.
static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// Records `port` as handed out; false when it already was.
fn give(port: u16) -> bool {
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if given.contains(&port) {
        return false;
    }
    given.push(port);
    true
}

/// Returns a loopback port that was free a moment ago and that no other caller in this
/// process was given (tests run side by side and bind their ports later).
///
/// # Panics
/// When no port can be bound.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free loopback port");
        if give(port) {
            return port;
        }
    }
}

/// Waits until something accepts TCP connections on `port`; false after `patience`.
pub fn wait_for_port(port: u16, patience: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < patience {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A `redis-server` child process on 127.0.0.1; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port.
    ///
    /// # Panics
    /// When `redis-server` is not installed (`scripts/test.sh` installs it) or does not start.
    pub fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
        };
        server.restart();
        server
    }

    /// Returns `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Returns the port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    ///
    /// # Panics
    /// When it does not start.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "redis-server listens on {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of `redis-server --cluster-enabled yes` children on 127.0.0.1, formed with
/// `redis-cli --cluster create`; every node killed and its directory removed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    dir: std::path::PathBuf,
}

#[derive(Debug)]
struct ClusterNode {
    port: u16,
    child: Option<Child>,
}

/// A port `p` such that `p` and its cluster bus port `p + 10000` were both free a moment ago,
/// and that no other caller in this process was given. Both stay below the kernel's
/// ephemeral range (32768 and up), which [`free_port`] draws from.
fn free_cluster_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Ports 20000..22767 and their bus ports 30000..32767; each process starts somewhere
    // else in the range.
    const RANGE: u32 = 2_768;
    let start = std::process::id().wrapping_mul(7919) % RANGE;
    for _ in 0..RANGE {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % RANGE;
        let Ok(port) = u16::try_from(20_000 + offset) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
            && give(port)
        {
            return port;
        }
    }
    panic!("no free port pair for a cluster node")
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each, forms the cluster and waits
    /// until every node says `cluster_state:ok`. Nodes notice a dead master after 1 s
    /// (`cluster-node-timeout`), so a replica takes over within seconds.
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` is missing, or the cluster does not form in 30 s.
    pub fn start(masters: usize, replicas: usize) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-redis-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..masters * (1 + replicas) {
            let port = free_cluster_port();
            cluster.nodes.push(ClusterNode { port, child: None });
            cluster.spawn(cluster.nodes.len() - 1);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let mut creating = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli is installed (scripts/test.sh installs it)");
        let started = Instant::now();
        let created = loop {
            if let Ok(Some(status)) = creating.try_wait() {
                break status.success();
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = creating.kill();
                let _ = creating.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            created,
            "redis-cli --cluster create formed the cluster in 30 s"
        );
        let ports: Vec<u16> = cluster.nodes.iter().map(|node| node.port).collect();
        assert!(
            cluster.wait_until_ok(&ports, Duration::from_secs(30)),
            "the cluster formed"
        );
        cluster
    }

    /// Starts node `index`, on another port if its own turns out to be taken.
    fn spawn(&mut self, index: usize) {
        for _ in 0..5 {
            if self.try_spawn(index) {
                return;
            }
            self.nodes[index].port = free_cluster_port();
        }
        panic!("no cluster node could start after 5 ports");
    }

    /// Starts node `index` on its port; false when it exited instead (the port was taken).
    fn try_spawn(&mut self, index: usize) -> bool {
        let port = self.nodes[index].port;
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "1000",
                // A replica may take over however long ago it last heard from its master: in
                // a test the data is whatever the test wrote, and waiting is the failure.
                "--cluster-replica-validity-factor",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        let listening = wait_for_port(port, Duration::from_secs(10));
        // Something else may hold the port: then our server has exited.
        std::thread::sleep(Duration::from_millis(50));
        if listening && matches!(child.try_wait(), Ok(None)) {
            self.nodes[index].child = Some(child);
            return true;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Waits until each node of `ports` answers `cluster_state:ok`; false after `patience`.
    pub fn wait_until_ok(&self, ports: &[u16], patience: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < patience {
            if ports
                .iter()
                .all(|port| Self::info(*port).contains("cluster_state:ok"))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Waits until every replica has everything its master had written when this was called
    /// (its acknowledged offset reaches the master's offset of then); false after `patience`.
    /// Replication is asynchronous: a master killed before this loses what its replica had not
    /// received. (Masters that keep being written to are never equal to their replicas at one
    /// instant: replicas acknowledge once a second.)
    pub fn wait_for_replication(&self, patience: Duration) -> bool {
        let started = Instant::now();
        let targets: Vec<(u16, u64)> = self
            .master_ports()
            .into_iter()
            .map(|port| {
                let offset = Self::replication(port).0.unwrap_or(u64::MAX);
                (port, offset)
            })
            .collect();
        while started.elapsed() < patience {
            let caught_up = targets.iter().all(|(port, target)| {
                let (_, replicas) = Self::replication(*port);
                !replicas.is_empty() && replicas.iter().all(|offset| offset >= target)
            });
            if caught_up {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// A master's replication offset and the offsets its online replicas acknowledged.
    fn replication(port: u16) -> (Option<u64>, Vec<u64>) {
        let info = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "info", "replication"])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        let master = info
            .lines()
            .find_map(|line| line.strip_prefix("master_repl_offset:"))
            .and_then(|offset| offset.trim().parse().ok());
        let replicas = info
            .lines()
            .filter(|line| line.starts_with("slave") && line.contains("state=online"))
            .filter_map(|line| {
                line.split(',')
                    .find_map(|part| part.strip_prefix("offset="))
                    .and_then(|offset| offset.trim().parse().ok())
            })
            .collect();
        (master, replicas)
    }

    fn info(port: u16) -> String {
        Command::new("redis-cli")
            .args(["-p", &port.to_string(), "cluster", "info"])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default()
    }

    /// `redis://127.0.0.1:<port>` of every node, the seeds a cluster client starts from.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port))
            .collect()
    }

    /// The ports of the nodes that are masters now.
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .filter(|node| {
                Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "role"])
                    .output()
                    .is_ok_and(|output| output.stdout.starts_with(b"master"))
            })
            .map(|node| node.port)
            .collect()
    }

    /// The ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.port)
            .collect()
    }

    fn cli(port: u16, args: &[&str]) -> String {
        Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    /// The port of the master serving `slot` now.
    ///
    /// # Panics
    /// When no live master claims it.
    pub fn owner_of(&self, slot: u16) -> u16 {
        for port in self.master_ports() {
            let nodes = Self::cli(port, &["cluster", "nodes"]);
            let Some(mine) = nodes.lines().find(|line| line.contains("myself")) else {
                continue;
            };
            let owns = mine.split_whitespace().skip(8).any(|range| {
                let mut bounds = range.split('-').map(str::parse::<u16>);
                match (bounds.next(), bounds.next()) {
                    (Some(Ok(only)), None) => only == slot,
                    (Some(Ok(first)), Some(Ok(last))) => (first..=last).contains(&slot),
                    _ => false,
                }
            });
            if owns {
                return port;
            }
        }
        panic!("no master serves slot {slot}")
    }

    /// Migrates `slot` and its keys to the master on `to`, the way `redis-cli --cluster
    /// reshard` does (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE on every master).
    ///
    /// # Panics
    /// When a step fails.
    pub fn move_slot(&self, slot: u16, to: u16) {
        let from = self.owner_of(slot);
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let from_id = Self::cli(from, &["cluster", "myid"]);
        let to_id = Self::cli(to, &["cluster", "myid"]);
        let slot = slot.to_string();
        assert_eq!(
            Self::cli(to, &["cluster", "setslot", &slot, "importing", &from_id]),
            "OK"
        );
        assert_eq!(
            Self::cli(from, &["cluster", "setslot", &slot, "migrating", &to_id]),
            "OK"
        );
        loop {
            let keys = Self::cli(from, &["cluster", "getkeysinslot", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|key| !key.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut args = vec!["migrate", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            assert_eq!(Self::cli(from, &args), "OK", "MIGRATE");
        }
        for port in [to, from] {
            assert_eq!(
                Self::cli(port, &["cluster", "setslot", &slot, "node", &to_id]),
                "OK"
            );
        }
        for port in self.master_ports() {
            let _ = Self::cli(port, &["cluster", "setslot", &slot, "node", &to_id]);
        }
    }

    /// Kills every node (SIGKILL), as a power cut would.
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Kills every node and starts each again on its port, empty (nothing is saved) but with
    /// its cluster configuration (`nodes-<port>.conf`): the same cluster, slots and roles,
    /// without data. Returns once every node says `cluster_state:ok`.
    ///
    /// # Panics
    /// When a node's port was taken meanwhile, or the cluster is not ok within 30 s.
    pub fn restart(&mut self) {
        self.stop();
        for index in 0..self.nodes.len() {
            assert!(
                self.try_spawn(index),
                "cluster node {} starts again on its port",
                self.nodes[index].port
            );
        }
        let ports: Vec<u16> = self.nodes.iter().map(|node| node.port).collect();
        assert!(
            self.wait_until_ok(&ports, Duration::from_secs(30)),
            "the cluster is ok again"
        );
    }

    /// Kills the node on `port` (SIGKILL), as a crash would.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|node| node.port == port)
            && let Some(mut child) = node.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
