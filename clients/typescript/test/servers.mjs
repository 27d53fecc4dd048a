// Starts real Switchboard processes for the tests, on free loopback ports, and stops them:
// `switchboard dev` (one process), or Redis + auth + registry + bus + gateways.
import { spawn } from "node:child_process";
import { createServer, connect } from "node:net";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const BIN = process.env.SWITCHBOARD_BIN ?? join(root, "target", "debug", "switchboard");
export const PASSWORD = "sdk-test-password";
const SECRET = "sdk-test-internal-secret-0123456789";

if (!existsSync(BIN)) {
  throw new Error(`${BIN} is missing: build it with 'cargo build -p switchboard' or set SWITCHBOARD_BIN`);
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port, ms = 20000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const open = await new Promise((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.on("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.on("error", () => resolve(false));
    });
    if (open) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`port ${port} did not open within ${ms} ms`);
}

/** The processes a test started; `stop()` kills every one of them. */
export class Processes {
  constructor() {
    this.children = new Map();
    this.logs = mkdtempSync(join(tmpdir(), "switchboard-sdk-"));
  }

  async start(name, command, args, ports, env = {}) {
    const child = spawn(command, args, {
      env: { ...process.env, RUST_LOG: "warn", SWITCHBOARD_INTERNAL_SECRET: SECRET, ...env },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let log = "";
    child.stderr.on("data", (chunk) => {
      log = (log + chunk).slice(-4000);
    });
    child.log = () => log;
    this.children.set(name, child);
    try {
      for (const port of ports) await waitForPort(port);
    } catch (error) {
      throw new Error(`${name}: ${error.message}\n${log}`);
    }
    return child;
  }

  kill(name, signal = "SIGKILL") {
    const child = this.children.get(name);
    if (child && child.exitCode === null) child.kill(signal);
    this.children.delete(name);
  }

  async stop() {
    const exits = [];
    for (const [name, child] of this.children) {
      if (child.exitCode !== null) continue;
      exits.push(new Promise((resolve) => child.once("exit", resolve)));
      child.kill("SIGKILL");
      this.children.delete(name);
    }
    await Promise.all(exits);
  }
}

/** `switchboard dev` on a free port: resolves to { url, processes }. */
export async function startDev() {
  const processes = new Processes();
  const port = await freePort();
  await processes.start(
    "dev",
    BIN,
    ["dev", "--listen", `127.0.0.1:${port}`, "--admin-listen", `127.0.0.1:${await freePort()}`],
    [port],
    { SWITCHBOARD_ADMIN_PASSWORD: PASSWORD },
  );
  return { url: `ws://127.0.0.1:${port}/api/ws`, processes };
}

/** Redis, auth, registry, bus and `gateways` gateways: resolves to { urls, processes }. */
export async function startCluster(gateways = 2) {
  const processes = new Processes();
  const redisPort = await freePort();
  await processes.start(
    "redis",
    "redis-server",
    ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    [redisPort],
  );
  const redis = `redis://127.0.0.1:${redisPort}`;
  const [auth, registry, bus] = [await freePort(), await freePort(), await freePort()];
  const admin = async () => ["--admin-listen", `127.0.0.1:${await freePort()}`];
  await processes.start("auth", BIN, ["auth", "--grpc-listen", `127.0.0.1:${auth}`, ...(await admin())], [auth], {
    SWITCHBOARD_ADMIN_PASSWORD: PASSWORD,
  });
  await processes.start(
    "registry",
    BIN,
    ["registry", "--grpc-listen", `127.0.0.1:${registry}`, "--redis-url", redis, "--gateway-timeout", "3s", ...(await admin())],
    [registry],
  );
  await processes.start(
    "bus",
    BIN,
    ["bus", "--grpc-listen", `127.0.0.1:${bus}`, "--redis-url", redis, ...(await admin())],
    [bus],
  );
  const urls = [];
  for (let index = 0; index < gateways; index++) {
    const [ws, control] = [await freePort(), await freePort()];
    await processes.start(
      `gateway${index}`,
      BIN,
      [
        "gateway",
        "--listen", `127.0.0.1:${ws}`,
        "--control-listen", `127.0.0.1:${control}`,
        "--auth-url", `http://127.0.0.1:${auth}`,
        "--registry-url", `http://127.0.0.1:${registry}`,
        "--bus-url", `http://127.0.0.1:${bus}`,
        "--redis-url", redis,
        "--heartbeat-interval", "500ms",
        "--max-recover", "5000",
        ...(await admin()),
      ],
      [ws],
    );
    urls.push(`ws://127.0.0.1:${ws}/api/ws`);
  }
  return { urls, processes };
}
