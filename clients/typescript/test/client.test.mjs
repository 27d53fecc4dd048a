// The SDK against a real `switchboard dev`: requests, errors, subscriptions, server requests,
// closes and reconnects, as an application sees them.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Switchboard, SwitchboardError } from "../dist/esm/index.js";
import { startDev, PASSWORD, Processes, BIN, freePort } from "./servers.mjs";

let dev;
const clients = [];

function client(options = {}, url = dev.url) {
  const sb = new Switchboard(url, { user: "admin", password: PASSWORD, websocket: WebSocket, ...options });
  clients.push(sb);
  return sb;
}

function until(what, probe, ms = 5000) {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const poll = () => {
      const value = probe();
      if (value) return resolve(value);
      if (Date.now() > deadline) return reject(new Error(`${what}: not within ${ms} ms`));
      setTimeout(poll, 20);
    };
    poll();
  });
}

before(async () => {
  dev = await startDev();
});

after(async () => {
  for (const sb of clients) sb.close();
  await dev.processes.stop();
});

test("connects, logs in and answers requests", async () => {
  const sb = client({ meta: { app: "sdk-test" } });
  const states = [];
  sb.on("state", (state) => states.push(state));
  await sb.connect();
  assert.deepEqual(states, ["connecting", "connected"]);
  assert.ok(sb.sessionId, "a session id");
  const now = await sb.ping();
  assert.ok(Math.abs(now - Date.now()) < 60_000, "the server's clock");
  const users = await sb.userList();
  assert.ok(users.admin.includes(sb.sessionId));
  const sessions = await sb.userGet("admin");
  assert.deepEqual(sessions[sb.sessionId].meta, { app: "sdk-test" });
  const typed = await sb.call("session/ping", {});
  assert.equal(typeof typed.now, "number");
});

test("errors carry the protocol code", async () => {
  const sb = client();
  await sb.connect();
  await assert.rejects(sb.stopSession("no-such-session"), (error) => {
    assert.ok(error instanceof SwitchboardError);
    assert.equal(error.code, "session_not_found");
    return true;
  });
  await assert.rejects(sb.request("event", "subscribe", {}), { code: "missing_field" });
  const refused = client({ password: "wrong" });
  await assert.rejects(refused.connect(), { code: "invalid_credentials" });
  assert.equal(refused.state, "disconnected");
});

test("subscriptions get the events that match them, bodies merged", async () => {
  const sb = client();
  await sb.connect();
  const started = [];
  const all = [];
  await sb.subscribe({ class: "media", type: "started", body: { from: "sub" } }, (event) => started.push(event));
  await sb.subscribe({ class: "media" }, (event) => all.push(event));
  await sb.publish({ class: "media", type: "stopped", obj_id: "a" });
  await sb.publish({ class: "media", type: "started", obj_id: "b", body: { n: 1 } });
  await until("both events on the wide subscription", () => all.length === 2);
  await until("the started event", () => started.length === 1);
  assert.equal(started[0].obj_id, "b");
  assert.deepEqual(started[0].body, { from: "sub", n: 1 });
  assert.deepEqual(all.map((e) => e.type), ["stopped", "started"]);
});

test("unsubscribe stops the events", async () => {
  const sb = client();
  await sb.connect();
  const got = [];
  const sub = await sb.subscribe({ class: "once" }, (event) => got.push(event));
  await sb.publish({ class: "once" });
  await until("the first event", () => got.length === 1);
  await sub.unsubscribe();
  await sb.publish({ class: "once" });
  await sb.ping();
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(got.length, 1);
});

test("server requests are answered by onCommand, errors by their code", async () => {
  const caller = client();
  const target = client();
  await Promise.all([caller.connect(), target.connect()]);
  target.onCommand(async (request) => {
    if (request.cmd === "refuse") throw new SwitchboardError("unauthorized", "not you");
    return { echo: request.data, cls: request.class };
  });
  const answer = await caller.cmd(target.sessionId, "app", "hello", { x: 1 });
  assert.deepEqual(answer, { echo: { x: 1 }, cls: "app" });
  await assert.rejects(caller.cmd(target.sessionId, "app", "refuse"), { code: "unauthorized" });
});

test("a request times out on its own limit; pending requests fail when the client closes", async () => {
  const caller = client();
  const slow = client();
  await Promise.all([caller.connect(), slow.connect()]);
  slow.onCommand(() => new Promise((resolve) => setTimeout(() => resolve({}), 1000)));
  await assert.rejects(caller.cmd(slow.sessionId, "app", "slow", {}, { timeout: 100 }), { code: "timeout" });
  const pending = caller.cmd(slow.sessionId, "app", "slow");
  caller.close();
  await assert.rejects(pending, { code: "disconnected" });
  assert.equal(caller.state, "disconnected");
});

test("session stop ends the client for good", async () => {
  const admin = client();
  const victim = client();
  await Promise.all([admin.connect(), victim.connect()]);
  const closed = new Promise((resolve) => victim.on("closed", resolve));
  await admin.stopSession(victim.sessionId);
  const { code } = await closed;
  assert.equal(code, 1000);
  assert.equal(victim.state, "disconnected");
  await new Promise((r) => setTimeout(r, 700));
  assert.equal(victim.state, "disconnected", "no reconnect after session stop");
});

test("long server requests are kept alive with acks", async () => {
  // A dev server of its own with a 1 s session cmd timeout: only acks let a 2.5 s answer through.
  const processes = new Processes();
  const port = await freePort();
  try {
    await processes.start(
      "dev-acks",
      BIN,
      ["dev", "--listen", `127.0.0.1:${port}`, "--admin-listen", `127.0.0.1:${await freePort()}`, "--cmd-timeout", "1s"],
      [port],
      { SWITCHBOARD_ADMIN_PASSWORD: PASSWORD },
    );
    const url = `ws://127.0.0.1:${port}/api/ws`;
    const caller = client({}, url);
    const acking = client({ ackInterval: 300 }, url);
    const silent = client({ ackInterval: 60_000 }, url);
    await Promise.all([caller.connect(), acking.connect(), silent.connect()]);
    const slowly = () => new Promise((resolve) => setTimeout(() => resolve({ done: true }), 2500));
    acking.onCommand(slowly);
    silent.onCommand(slowly);
    assert.deepEqual(await caller.cmd(acking.sessionId, "app", "work"), { done: true });
    await assert.rejects(caller.cmd(silent.sessionId, "app", "work"), { code: "timeout" });
  } finally {
    await processes.stop();
  }
});

test("reconnects after the server restarts, with its subscriptions", async () => {
  const processes = new Processes();
  const port = await freePort();
  const start = () =>
    processes.start(
      "dev-restart",
      BIN,
      ["dev", "--listen", `127.0.0.1:${port}`, "--admin-listen", `127.0.0.1:0`],
      [port],
      { SWITCHBOARD_ADMIN_PASSWORD: PASSWORD },
    );
  try {
    await start();
    const url = `ws://127.0.0.1:${port}/api/ws`;
    const sb = client({ minReconnectDelay: 100, maxReconnectDelay: 500 }, url);
    const states = [];
    sb.on("state", (state) => states.push(state));
    await sb.connect();
    const session = sb.sessionId;
    const got = [];
    await sb.subscribe({ class: "after" }, (event) => got.push(event.body));
    const resubscribed = new Promise((resolve) => sb.on("resubscribed", resolve));
    processes.kill("dev-restart");
    await until("the client notices", () => sb.state === "connecting");
    await start();
    await resubscribed;
    assert.equal(sb.state, "connected");
    assert.equal(sb.sessionId, session, "the same session id");
    const publisher = client({}, url);
    await publisher.connect();
    await publisher.publish({ class: "after", body: { n: 1 } });
    await until("the event after the restart", () => got.length === 1);
    assert.deepEqual(states.slice(0, 4), ["connecting", "connected", "connecting", "connected"]);
  } finally {
    await processes.stop();
  }
});
