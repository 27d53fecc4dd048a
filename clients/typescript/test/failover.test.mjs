// The SDK through a gateway crash: two gateways with Redis, a publisher on one, a positioned
// subscriber on the other; the subscriber's gateway is SIGKILLed mid-stream. The SDK reconnects
// to the other gateway, takes its session over, recovers, and the application sees every event
// once, in order.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Switchboard } from "../dist/esm/index.js";
import { startCluster, PASSWORD } from "./servers.mjs";

const EVENTS = 1500;

test("a gateway SIGKILLed mid-stream: taken over, recovered, every event once in order", async () => {
  const { urls, processes } = await startCluster(2);
  const options = { user: "admin", password: PASSWORD, websocket: WebSocket, minReconnectDelay: 100, maxReconnectDelay: 1000 };
  // The subscriber starts on gateway 0 and, after a failure, tries the next URL.
  const subscriber = new Switchboard(urls, options);
  const publisher = new Switchboard(urls[1], options);
  try {
    await subscriber.connect();
    await publisher.connect();
    const session = subscriber.sessionId;
    const seen = [];
    const resubscribed = [];
    const sessions = [];
    subscriber.on("session", (info) => sessions.push(info));
    const sub = await subscriber.subscribe({ class: "feed", recover: true }, (event) => seen.push(event.body.n));
    sub.onResubscribed = (info) => resubscribed.push(info);

    // ~1 k events/s: a batch of 10 every 10 ms; the crash comes a third of the way in.
    let killed = false;
    for (let n = 1; n <= EVENTS; n += 10) {
      await Promise.all(
        Array.from({ length: Math.min(10, EVENTS - n + 1) }, (_, i) =>
          publisher.publish({ class: "feed", body: { n: n + i } }),
        ),
      );
      if (!killed && n > EVENTS / 3) {
        processes.kill("gateway0");
        killed = true;
      }
      await new Promise((r) => setTimeout(r, 10));
    }

    const deadline = Date.now() + 20000;
    while (seen.length < EVENTS && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(subscriber.state, "connected");
    assert.equal(subscriber.sessionId, session, "the same session, taken over");
    assert.deepEqual(sessions, [{ sessionId: session, resumed: true }]);
    assert.equal(resubscribed.length, 1);
    assert.equal(resubscribed[0].recovered, true, JSON.stringify(resubscribed[0]));
    const expected = Array.from({ length: EVENTS }, (_, i) => i + 1);
    const missing = expected.filter((n) => !seen.includes(n));
    assert.deepEqual(missing, [], "no event missing");
    assert.deepEqual(seen, expected, "each event once, in order");
  } finally {
    subscriber.close();
    publisher.close();
    await processes.stop();
  }
});
