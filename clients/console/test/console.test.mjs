// The console in a real browser (Debian's chromium, driven by playwright-core) against a real
// `switchboard dev --console true`: log in, see the sessions, watch an event arrive live, send a
// request to another session and stop it. Screenshots go to target/console-screenshots/ (or
// SCREENSHOTS); docs/images/ holds a copy of them.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import WebSocket from "ws";
import { Switchboard } from "@switchboard/client";
import { Processes, BIN, PASSWORD, freePort } from "../../typescript/test/servers.mjs";

const shots =
  process.env.SCREENSHOTS ?? join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "target", "console-screenshots");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const processes = new Processes();
let browser;
let admin;
let ws;

async function dev(port, adminPort, extra = []) {
  await processes.start(
    `dev-${port}`,
    BIN,
    ["dev", "--listen", `127.0.0.1:${port}`, "--admin-listen", `127.0.0.1:${adminPort}`, ...extra],
    [port, adminPort],
    { SWITCHBOARD_ADMIN_PASSWORD: PASSWORD },
  );
}

before(async () => {
  mkdirSync(shots, { recursive: true });
  [ws, admin] = [await freePort(), await freePort()];
  await dev(ws, admin, ["--console", "true"]);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  await processes.stop();
});

test("the console is off unless asked for", async () => {
  const [port, adminPort] = [await freePort(), await freePort()];
  await dev(port, adminPort);
  const answer = await fetch(`http://127.0.0.1:${adminPort}/console/`);
  assert.equal(answer.status, 404);
  const on = await fetch(`http://127.0.0.1:${admin}/console/`);
  assert.equal(on.status, 200);
  assert.match(on.headers.get("content-type"), /text\/html/);
});

test("log in, see sessions, watch events, ask and stop a session", async () => {
  const other = new Switchboard(`ws://127.0.0.1:${ws}/api/ws`, {
    user: "admin",
    password: PASSWORD,
    websocket: WebSocket,
    meta: { app: "worker" },
  });
  await other.connect();
  other.onCommand((request) => ({ pong: true, asked: request.cmd }));
  const closed = new Promise((resolve) => other.on("closed", resolve));

  const page = await browser.newPage({ viewport: { width: 1200, height: 760 } });
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.goto(`http://127.0.0.1:${admin}/console/`);
  // The gateway's address comes from the server; only the password is typed.
  await page.waitForFunction(() => document.getElementById("login-url").value !== "");
  assert.equal(await page.inputValue("#login-url"), `ws://127.0.0.1:${ws}/api/ws`);
  await page.fill("#login-password", PASSWORD);
  await page.click("#login-form button");
  await page.waitForSelector("#status.connected");

  // Overview: the console's own session and the worker's, on the one gateway.
  await page.waitForFunction(() => document.getElementById("count-sessions").textContent === "2");
  assert.equal(await page.textContent("#count-users"), "1");
  await page.waitForFunction(() => document.getElementById("count-gateways").textContent === "1");
  assert.equal(await page.textContent("#count-connections"), "2");
  assert.match(await page.textContent("#gateways-body"), /gateway-0-\d+/);
  const mine = await page.textContent("#me-session");
  assert.ok(mine.length > 0);
  await page.screenshot({ path: join(shots, "overview.png") });

  // Users → sessions: remote address and meta.
  await page.click('nav a[data-page="users"]');
  await page.click("#users-body a");
  await page.waitForSelector(`#user-sessions a:text("${other.sessionId}")`);
  assert.match(await page.textContent("#user-sessions"), /"app":"worker"/);
  await page.screenshot({ path: join(shots, "users.png") });

  // Live events: an event published elsewhere shows up.
  await page.click('nav a[data-page="events"]');
  await page.fill('#events-form input[name="class"]', "demo");
  await page.click("#events-form button");
  await page.waitForSelector("#events-watching:text('watching demo/*/*/*')");
  await other.publish({ class: "demo", type: "hello", obj_id: "o1", body: { n: 7 } });
  await page.waitForSelector("#events-body td:text('demo/*/hello/o1')");
  assert.match(await page.textContent("#events-body"), /\{"n":7\}/);
  await page.screenshot({ path: join(shots, "events.png") });

  // A session: send it a request, see its reply; then stop it.
  await page.click('nav a[data-page="users"]');
  await page.click("#users-body a");
  await page.click(`#user-sessions a:text("${other.sessionId}")`);
  await page.waitForSelector(`#session-id:text("${other.sessionId}")`);
  await page.click("#session-cmd button");
  await page.waitForSelector("#session-result:text('reply')");
  const reply = (await page.textContent("#session-result")).replace(/^reply /, "");
  assert.deepEqual(JSON.parse(reply), { pong: true, asked: "status" });
  await page.screenshot({ path: join(shots, "session.png") });
  await page.click("#session-stop");
  await page.waitForSelector("#session-result:text('stopped')");
  const { code } = await closed;
  assert.equal(code, 1000, "the worker's connection closed by the stop");

  // The raw frame console.
  await page.click('nav a[data-page="frames"]');
  await page.click("#frames-form button");
  await page.waitForSelector("#frames-log:text('ok')");
  assert.match(await page.textContent("#frames-log"), /"now":\d+/);
  assert.deepEqual(errors, [], "no error in the page");
  await page.close();
});
