//! `switchboard`: the one binary. `switchboard dev` runs every service in one process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::sync::Arc;
use switchboard::dev::{self, DevConfig};
use switchboard::roles;
use switchboard::settings::command_line::{self, ParseFailure};
use switchboard::settings::{DEFAULT_LISTEN, DEV_ADMIN_PASSWORD, Settings};
use switchboard::telemetry::{self, LogFormat};
use switchboard_admin::Readiness;
use tokio_util::sync::CancellationToken;

/// jemalloc instead of glibc's allocator: a gateway allocates and frees a few small buffers
/// per frame (the request's JSON, the event payload, the framed delivery), and glibc's
/// `malloc`, `free` and `malloc_consolidate` were ~15% of a publishing gateway's CPU. See
/// BENCHMARKS.md for the A/B.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Switchboard: a real-time WebSocket API platform.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML settings file; flags and SWITCHBOARD_* variables override its keys.
    #[arg(long, env = "SWITCHBOARD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Runtime worker threads; 0 is one per core, 1 runs every task on the main thread
    /// (blocking work, such as password hashing, still goes to the blocking pool)
    /// [default: one per core].
    #[arg(long, env = "SWITCHBOARD_WORKER_THREADS", global = true)]
    worker_threads: Option<usize>,
    /// Log lines as `text`, or `json`: one object per line.
    #[arg(
        long,
        env = "SWITCHBOARD_LOG_FORMAT",
        global = true,
        value_enum,
        default_value_t,
        hide_possible_values = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs auth, registry, bus and a gateway in one process, in memory (no Redis).
    Dev(Settings),
    /// Runs the auth service (gRPC).
    Auth(Settings),
    /// Runs a session-registry replica (gRPC, state in Redis).
    Registry(Settings),
    /// Runs an event-bus replica (gRPC, publishes into Redis).
    Bus(Settings),
    /// Runs a gateway replica (WebSocket, SessionControl gRPC, Redis subscriber).
    Gateway(Settings),
    /// Reads a password from standard input (one line) and prints its argon2id hash for the
    /// users file.
    HashPassword,
    /// Measures a running deployment: connections, deliveries, latency, server CPU and RSS.
    Bench(switchboard::bench::BenchArgs),
    /// Operates a running deployment over gRPC: users, sessions, publish, stop, stats.
    Ctl(switchboard::ctl::CtlArgs),
    /// A terminal client of the WebSocket protocol: commands as words, events as they come;
    /// `--json` for scripts, one frame per line.
    Client(switchboard::client::ClientArgs),
}

async fn run_bench(args: switchboard::bench::BenchArgs) -> anyhow::Result<()> {
    for report in switchboard::bench::run(&args).await? {
        println!("{report}\n");
        if let Some(path) = &args.json_out {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            writeln!(file, "{}", serde_json::to_string(&report)?)?;
        }
    }
    Ok(())
}

fn hash_password() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    println!("{}", switchboard_auth::password::hash_password(password)?);
    Ok(())
}

/// Runs one role until SIGINT/SIGTERM: readiness turns 503 at once, then the role drains.
async fn run_role<F>(
    role: impl FnOnce(CancellationToken, Arc<Readiness>) -> F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let shutdown = CancellationToken::new();
    let readiness = Readiness::new();
    let mut task = tokio::spawn(role(shutdown.clone(), Arc::clone(&readiness)));
    tokio::select! {
        () = shutdown_signal() => {
            readiness.start_draining();
            tracing::info!("shutting down");
            shutdown.cancel();
            task.await?
        }
        result = &mut task => result?,
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        // Orchestrators (docker, Kubernetes) stop containers with SIGTERM.
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn run_dev(settings: Settings) -> anyhow::Result<()> {
    let admin_password = match &settings.auth.admin_password {
        Some(password) => password.clone(),
        None => {
            tracing::warn!(
                "no admin password configured (--admin-password or SWITCHBOARD_ADMIN_PASSWORD): using \"admin\", for development only"
            );
            DEV_ADMIN_PASSWORD.to_owned()
        }
    };
    let listen = settings
        .addresses
        .listen
        .as_deref()
        .unwrap_or(DEFAULT_LISTEN);
    let mut config = DevConfig::new(listen, &admin_password);
    config.auth = settings.auth_config(Some(admin_password));
    config.gateway = settings.gateway_config()?;
    config.secret = settings.secret_or_random()?;
    config.registry = settings.registry_config();
    config.streams = settings.stream_config();
    config.admin_listen = Some(
        settings
            .addresses
            .admin_listen
            .clone()
            .unwrap_or_else(|| switchboard::admin::DEFAULT_DEV_ADMIN_LISTEN.to_owned()),
    );
    config.console = settings.gateway.console;
    if let Some(address) = &settings.addresses.tls_listen {
        config.tls_listen = address.clone();
    }
    let mut running = dev::start(config).await?;
    tracing::info!(auth = %running.auth_addr, registry = %running.registry_addr, bus = %running.bus_addr, "internal gRPC services listening");
    println!(
        "switchboard dev listening on ws://{}/api/ws",
        running.ws_addrs[0]
    );
    if let Some(address) = running.wss_addrs.first() {
        println!("switchboard dev listening on wss://{address}/api/ws");
    }
    let token = running.shutdown_token();
    tokio::select! {
        () = shutdown_signal() => {
            running.readiness.start_draining();
            tracing::info!("shutting down");
        }
        () = running.wait() => tracing::error!("a service stopped unexpectedly"),
    }
    token.cancel();
    running.stop().await;
    Ok(())
}

/// Parses the command line and the settings file. Usage errors exit with EX_USAGE (64)
/// before anything listens; `--help` and `--version` print and exit 0.
fn parse_command_line() -> Result<Cli, ExitCode> {
    let command = command_line::with_environment(Cli::command());
    let parsed = command_line::parse(&command, std::env::args_os().collect())
        .and_then(|matches| Cli::from_arg_matches(&matches).map_err(ParseFailure::Clap));
    match parsed {
        Ok(cli) => Ok(cli),
        Err(ParseFailure::Clap(error)) if !error.use_stderr() => {
            let _ = error.print();
            Err(ExitCode::SUCCESS)
        }
        Err(ParseFailure::Clap(error)) => {
            let _ = error.print();
            Err(ExitCode::from(64))
        }
        Err(ParseFailure::File(error)) => {
            eprintln!("error: {error:#}");
            Err(ExitCode::from(64))
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // One worker needs no work stealing: the main thread runs every task itself.
    let mut runtime = match cli.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(0) | None => tokio::runtime::Builder::new_multi_thread(),
        Some(threads) => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.worker_threads(threads);
            runtime
        }
    };
    runtime.enable_all();
    match runtime.build() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The service a process runs.
#[derive(Debug, Clone, Copy)]
enum Role {
    Dev,
    Auth,
    Registry,
    Bus,
    Gateway,
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The service name a process's traces carry.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Dev(_) => "switchboard-dev",
        Command::Auth(_) => "switchboard-auth",
        Command::Registry(_) => "switchboard-registry",
        Command::Bus(_) => "switchboard-bus",
        Command::Gateway(_) => "switchboard-gateway",
        Command::HashPassword | Command::Bench(_) | Command::Ctl(_) | Command::Client(_) => {
            "switchboard-tool"
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let telemetry = telemetry::init(cli.log_format, service_name(&cli.command));
    let code = run_command(cli.command).await;
    // The exporter's last batch goes out on this runtime: not from one of its workers.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}

async fn run_command(command: Command) -> ExitCode {
    // Every WebSocket and gRPC connection is a descriptor; container runtimes often start
    // processes with a soft limit of 1024. Take what the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
    }
    let (role, settings) = match command {
        Command::Bench(args) => return exit_code(run_bench(args).await),
        Command::Ctl(args) => return exit_code(switchboard::ctl::run(args).await),
        Command::Client(args) => return exit_code(switchboard::client::run(args).await),
        Command::HashPassword => return exit_code(hash_password()),
        Command::Dev(settings) => (Role::Dev, settings),
        Command::Auth(settings) => (Role::Auth, settings),
        Command::Registry(settings) => (Role::Registry, settings),
        Command::Bus(settings) => (Role::Bus, settings),
        Command::Gateway(settings) => (Role::Gateway, settings),
    };
    // Invalid settings stop the process before anything listens, with EX_USAGE.
    if let Err(error) = settings.validate() {
        eprintln!("error: {error:#}");
        return ExitCode::from(64);
    }
    exit_code(match role {
        Role::Dev => run_dev(settings).await,
        Role::Auth => run_role(|token, ready| roles::auth(settings, token, ready)).await,
        Role::Registry => run_role(|token, ready| roles::registry(settings, token, ready)).await,
        Role::Bus => run_role(|token, ready| roles::bus(settings, token, ready)).await,
        Role::Gateway => run_role(|token, ready| roles::gateway(settings, token, ready)).await,
    })
}
