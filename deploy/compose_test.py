#!/usr/bin/env python3
"""Black-box test of the docker-compose cluster, run by deploy/compose-test.sh.

Clients speak only to the load balancer. Docker is used to break containers on purpose and to
see which gateway container holds which client: a session's `remote` (from `user get`) is the
load balancer's side of the connection, found in exactly one gateway's /proc/net/tcp.

    python3 deploy/compose_test.py --url ws://127.0.0.1:9010/api/ws --password PASSWORD \\
        --project PROJECT --compose "docker-compose -p PROJECT --env-file .env -f docker-compose.yml"

Needs three healthy gateways at the start. Prints one line per finding and, at the end,
`compose: N passed, N failed[, N skipped]`; exits non-zero on any failure.
"""

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import shlex
import sys
import time
import urllib.parse
import urllib.request

import websockets
from websockets.exceptions import ConnectionClosed, WebSocketException

ADMIN = "admin"
T0 = time.monotonic()
OPTS = argparse.Namespace()


def log(message):
    print(f"   [{time.monotonic() - T0:6.1f}s] {message}", flush=True)


class Failed(Exception):
    """A check that did not hold."""


class CmdError(Exception):
    """An error reply."""

    def __init__(self, code, data):
        super().__init__(f"{code}: {data}")
        self.code = code


class Disconnected(Exception):
    """The connection closed before the reply came."""


# What a client can meet when a gateway, the load balancer or Redis goes away.
NETWORK_ERRORS = (CmdError, Disconnected, WebSocketException, asyncio.TimeoutError, OSError)


def expect(condition, what):
    if not condition:
        raise Failed(what)


async def eventually(probe, what, timeout, interval=0.25):
    """Awaits probe() until it returns a true value; returns (value, seconds taken)."""
    start = time.monotonic()
    last = None
    while True:
        try:
            value = await probe()
            if value:
                return value, time.monotonic() - start
        except NETWORK_ERRORS as error:
            last = error
        if time.monotonic() - start > timeout:
            raise Failed(f"{what} (not within {timeout}s{f'; last error: {last!r}' if last else ''})")
        await asyncio.sleep(interval)


# --- docker -------------------------------------------------------------------------------------


async def run(*cmd, timeout=120):
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise Failed(f"`{' '.join(cmd)}` did not finish within {timeout}s") from None
    if proc.returncode:
        raise Failed(f"`{' '.join(cmd)}` exited {proc.returncode}: {out.decode().strip()}")
    return out.decode()


async def compose(*args, timeout=180):
    return await run(*shlex.split(OPTS.compose), *args, timeout=timeout)


async def containers(service, everything=False):
    out = await run(
        "docker", "ps", *(["-a"] if everything else []),
        "--filter", f"label=com.docker.compose.project={OPTS.project}",
        "--filter", f"label=com.docker.compose.service={service}",
        "--format", "{{.Names}}",
    )
    return sorted(out.split())


async def healthy_gateways():
    names = await containers("gateway")
    if not names:
        return []
    out = await run("docker", "inspect", "-f", "{{.Name}} {{.State.Health.Status}}", *names)
    return sorted(line.split()[0].lstrip("/") for line in out.splitlines() if line.endswith(" healthy"))


def short(name):
    """gateway_2 for PROJECT_gateway_2 (Compose v1) or PROJECT-gateway-2 (v2)."""
    return name[len(OPTS.project) + 1 :] if name.startswith(OPTS.project) else name


async def connection_map():
    """The peer port of every established connection to a gateway's :9010 → gateways, and the
    peer addresses seen (the load balancer's)."""
    peers = collections.defaultdict(list)
    balancers = set()
    for gateway in await containers("gateway"):
        try:
            table = await run("docker", "exec", gateway, "cat", "/proc/net/tcp", timeout=20)
        except Failed:
            continue  # stopping right now
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "01" or int(fields[1].split(":")[1], 16) != 9010:
                continue
            ip_hex, port_hex = fields[2].split(":")
            balancers.add(".".join(str(b) for b in reversed(bytes.fromhex(ip_hex))))
            peers[int(port_hex, 16)].append(gateway)
    return peers, balancers


async def locate(clients, via):
    """Sets .gateway, the container that holds its connection, of each client that has none yet.

    The load balancer may use one source port towards two gateways: a client already located
    accounts for its own entry, and clients that stay ambiguous are returned (connect them anew).
    """
    sessions = await via.call("user", "get", {"user": ADMIN})
    peers, balancers = await connection_map()

    def peer_of(client):
        # `remote` is ws:CLIENT_IP:PORT: the client's address from the balancer's
        # X-Forwarded-For, with the port of the balancer's connection to the gateway.
        remote = sessions.get(client.session_id, {}).get("remote", "")
        ip, _, port = remote.partition(":")[2].rpartition(":")
        if ip in balancers:
            raise Failed(f"{client.name}'s remote {remote} is the load balancer, not the client")
        return int(port or 0)

    for client in clients:
        if client.gateway is not None:
            holders = peers.get(peer_of(client), [])
            if client.gateway not in holders:
                raise Failed(f"{client.name} is no longer on {short(client.gateway)}")
            holders.remove(client.gateway)
    ambiguous = []
    for client in clients:
        if client.gateway is None:
            holders = peers.get(peer_of(client), [])
            if len(holders) == 1:
                client.gateway = holders.pop()
            else:
                ambiguous.append(client)
    return ambiguous


def spread(clients, gateways):
    count = collections.Counter(c.gateway for c in clients)
    return ", ".join(f"{short(g)}: {count[g]} clients" for g in gateways)


# --- clients ------------------------------------------------------------------------------------


class Client:
    """A logged-in admin connection through the load balancer, subscribed to media/tick and
    media/hello; it answers `session cmd` requests with what it was sent."""

    def __init__(self, name):
        self.name = name
        self.ws = None
        self.session_id = None
        self.gateway = None
        self.ticks = collections.defaultdict(list)  # run → seqs in arrival order
        self.hellos = []
        self.stopped = {}  # session id → reason of its core/presence/stopped event
        self.pending = {}
        self.tids = itertools.count(1)
        self.closed = asyncio.Event()
        self.close_code = None
        self.disconnects = 0
        self.lock = asyncio.Lock()

    @property
    def is_open(self):
        return self.ws is not None and not self.closed.is_set()

    async def open(self, subscribe=True):
        self.ws = None
        self.gateway = None
        self.closed = asyncio.Event()
        self.close_code = None
        self.pending = {}
        self.ws = await websockets.connect(OPTS.url, open_timeout=10, close_timeout=3)
        asyncio.get_running_loop().create_task(self._read(self.ws))
        reply = await self.call("user", "login", {"user": ADMIN, "password": OPTS.password})
        self.session_id = reply["session_id"]
        if subscribe:
            for kind in ("tick", "hello"):
                await self.call("event", "subscribe", {"class": "media", "type": kind})
        return self

    async def reopen(self, timeout=20):
        """Reconnects through the load balancer as a client library would."""
        async with self.lock:
            if not self.is_open:
                await self._reconnect(timeout)
        return self

    async def _reconnect(self, timeout):
        start = time.monotonic()
        while True:
            try:
                return await self.open()
            except NETWORK_ERRORS as error:
                if self.ws is not None:
                    with contextlib.suppress(Exception):
                        await self.ws.close()
                if time.monotonic() - start > timeout:
                    raise Failed(f"{self.name} could not reconnect within {timeout}s: {error!r}") from None
                await asyncio.sleep(0.3)

    async def _read(self, ws):
        try:
            async for text in ws:
                msg = json.loads(text)
                if "result" in msg:
                    future = self.pending.pop(msg.get("tid"), None)
                    if future is not None and not future.done():
                        future.set_result(msg)
                elif msg.get("cmd") == "event":
                    data = msg.get("data", {})
                    body = data.get("body", {})
                    if data.get("subclass") == "presence" and data.get("type") == "stopped":
                        self.stopped[body.get("session_id")] = body.get("reason")
                    elif data.get("type") == "tick":
                        self.ticks[body["run"]].append(body["seq"])
                    elif data.get("type") == "hello":
                        self.hellos.append((time.monotonic(), body))
                elif "cmd" in msg and "tid" in msg:  # a request sent with `session cmd`
                    answer = {"answered_by": self.session_id, "cmd": msg["cmd"], "echo": msg.get("data")}
                    await ws.send(json.dumps({"result": "ok", "tid": msg["tid"], "data": answer}))
        except ConnectionClosed:
            pass
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.wait_closed(), 5)
            if ws is self.ws:
                self.close_code = int(ws.close_code or 1006)  # 1006: closed without a close frame
                self.disconnects += 1
                for future in self.pending.values():
                    if not future.done():
                        future.set_exception(Disconnected(self.name))
                self.pending = {}
                self.closed.set()

    async def call(self, subclass, cmd, data=None, timeout=10):
        tid = next(self.tids)
        future = asyncio.get_running_loop().create_future()
        self.pending[tid] = future
        frame = {"class": "core", "subclass": subclass, "cmd": cmd, "data": data or {}, "tid": tid}
        await self.ws.send(json.dumps(frame))
        msg = await asyncio.wait_for(future, timeout)
        if msg.get("result") != "ok":
            raise CmdError(msg.get("data", {}).get("code"), msg.get("data"))
        return msg.get("data", {})

    async def close(self):
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
                await asyncio.wait_for(self.closed.wait(), 5)


class Ticker:
    """Fires media/tick events {run, seq} from the publisher, one after the other's reply."""

    def __init__(self, cluster, run_name):
        self.cluster = cluster
        self.run = run_name
        self.seq = 0
        self.acked = []
        self.failures = collections.Counter()
        self.stopping = False
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self):
        while not self.stopping:
            pub = self.cluster.publisher
            seq = self.seq
            self.seq += 1
            try:
                if not pub.is_open:
                    await pub.reopen()
                body = {"run": self.run, "seq": seq}
                await pub.call("event", "send_event", {"class": "media", "type": "tick", "body": body}, timeout=8)
                self.acked.append(seq)
            except CmdError as error:
                self.failures[error.code] += 1
            except (Disconnected, WebSocketException, asyncio.TimeoutError, OSError) as error:
                self.failures[type(error).__name__] += 1
            await asyncio.sleep(0.05)

    async def stop(self, settle=1.0):
        self.stopping = True
        await self.task
        await asyncio.sleep(settle)  # let the last ones arrive

    def summary(self):
        failed = f", refused: {dict(self.failures)}" if self.failures else ""
        return f"{len(self.acked)} events published{failed}"


class Prober:
    """Opens a fresh connection every 0.25 s: login and `session ping`, then closes. A probe
    that fails is retried at once, as a client would: a connection that a stopping gateway
    took just before it closed its doors is dropped with 1001, and that is allowed; a retry that
    fails too is not."""

    def __init__(self):
        self.ok = 0
        self.retried = []
        self.errors = []
        self.stopping = False
        self.task = asyncio.get_running_loop().create_task(self._loop())

    @staticmethod
    async def _probe():
        client = Client("probe")
        try:
            await client.open(subscribe=False)
            await client.call("session", "ping")
        finally:
            await client.close()

    async def _loop(self):
        while not self.stopping:
            try:
                await self._probe()
            except NETWORK_ERRORS as error:
                self.retried.append(f"{time.monotonic() - T0:.1f}s {error!r}")
                try:
                    await self._probe()
                except NETWORK_ERRORS as error_again:
                    self.errors.append(f"{time.monotonic() - T0:.1f}s {error_again!r}")
                    continue
            self.ok += 1
            await asyncio.sleep(0.25)

    async def stop(self):
        self.stopping = True
        await self.task

    def summary(self):
        retried = f" ({len(self.retried)} on the second try: {self.retried[:3]})" if self.retried else ""
        failed = f", {len(self.errors)} failed twice: {self.errors[:5]}" if self.errors else ""
        return f"{self.ok} fresh logins ok{retried}{failed}"


# --- the cluster under test ---------------------------------------------------------------------


class Cluster:
    def __init__(self):
        self.clients = []
        self.publisher = None

    @property
    def everyone(self):
        return [*self.clients, self.publisher]

    async def locate(self):
        for _ in range(5):
            ambiguous = await locate(self.everyone, self.publisher)
            if not ambiguous:
                return
            for client in ambiguous:
                await client.close()
                await client.reopen()
        raise Failed(f"cannot tell which gateway holds {[c.name for c in ambiguous]}")

    async def listed(self):
        return set((await self.publisher.call("user", "list")).get(ADMIN, []))

    async def hello_reaches_everyone(self, sender, tag, timeout=10):
        """Fires a media/hello event; returns when the last client received it, in seconds."""
        sent = time.monotonic()
        await sender.call("event", "send_event", {"class": "media", "type": "hello", "body": {"tag": tag}})

        async def arrived():
            times = [[t for t, body in c.hellos if body.get("tag") == tag] for c in self.everyone]
            return all(times) and max(t[0] for t in times)

        last, _ = await eventually(arrived, f"event {tag} reaches every client", timeout, interval=0.01)
        return last - sent

    async def victims_of(self, gateway, timeout=15):
        """Waits for the clients of `gateway` to be disconnected; returns them."""
        victims = [c for c in self.everyone if c.gateway == gateway]

        async def all_closed():
            return all(c.closed.is_set() for c in victims)

        try:
            await eventually(all_closed, f"clients of {short(gateway)} disconnected", timeout)
        except Failed as error:
            still = [c.name for c in victims if not c.closed.is_set()]
            states = await run("docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={OPTS.project}",
                               "--format", "{{.Names}} {{.Status}}")
            raise Failed(f"{error}: still connected: {still}; containers: {states.split(chr(10))}") from None
        return victims

    def check_undisturbed(self, clients, ticker, since=0):
        """Each of `clients` is still connected and got every event published from `since` on."""
        for c in clients:
            expect(c.is_open, f"{c.name} on {short(c.gateway)} stayed connected")
            got = c.ticks[ticker.run]
            missing = sorted(s for s in set(ticker.acked) - set(got) if s >= since)
            expect(not missing, f"{c.name} on {short(c.gateway)} missed events {missing[:10]}")
            expect(got == sorted(set(got)), f"{c.name} received events in order, once each")


async def step_spread(cluster):
    gateways = await healthy_gateways()
    expect(len(gateways) == 3, f"three healthy gateways at the start (found {gateways})")
    cluster.clients = [await Client(f"client{i}").open() for i in range(9)]
    cluster.publisher = await Client("publisher").open()
    await cluster.locate()
    log(f"3 gateways serving: {spread(cluster.everyone, gateways)}")
    expect({c.gateway for c in cluster.everyone} == set(gateways), "every gateway holds clients")


async def step_events(cluster):
    for gateway in sorted({c.gateway for c in cluster.clients}):
        sender = next(c for c in cluster.clients if c.gateway == gateway)
        took = await cluster.hello_reaches_everyone(sender, f"from-{short(gateway)}")
        where = len({c.gateway for c in cluster.everyone})
        log(f"event fired through {short(gateway)} reached all {len(cluster.everyone)} clients on {where} gateways ({took * 1000:.0f} ms)")


async def step_user_list(cluster):
    everyone = {c.session_id for c in cluster.everyone}
    for gateway in sorted({c.gateway for c in cluster.clients}):
        asker = next(c for c in cluster.clients if c.gateway == gateway)
        listed = set((await asker.call("user", "list")).get(ADMIN, []))
        expect(listed == everyone, f"user list through {short(gateway)} shows all {len(everyone)} sessions (got {len(listed)})")
        log(f"user list through {short(gateway)}: all {len(listed)} sessions of the 3 gateways")


async def step_session_cmd(cluster):
    gateways = sorted({c.gateway for c in cluster.clients})
    for i, gateway in enumerate(gateways):
        caller = next(c for c in cluster.clients if c.gateway == gateway)
        target_gw = gateways[(i + 1) % len(gateways)]
        target = next(c for c in cluster.clients if c.gateway == target_gw)
        reply = await caller.call(
            "session", "cmd",
            {"session_id": target.session_id, "class": "test", "cmd": "echo", "data": {"n": i}},
        )
        expect(
            reply == {"answered_by": target.session_id, "cmd": "echo", "echo": {"n": i}},
            f"session cmd {short(gateway)} → {short(target_gw)} returns the target's answer (got {reply})",
        )
        log(f"session cmd from {short(gateway)} answered by a session on {short(target_gw)}")


async def step_kill(cluster):
    gateways = await healthy_gateways()
    count = collections.Counter(c.gateway for c in cluster.clients if c.gateway != cluster.publisher.gateway)
    victim = count.most_common(1)[0][0]
    # The publisher (on another gateway) watches sessions end.
    await cluster.publisher.call("event", "subscribe", {"class": "core", "subclass": "presence"})
    ticker = Ticker(cluster, "kill")
    await asyncio.sleep(1.0)
    others = [c for c in cluster.everyone if c.gateway != victim]
    old_ids = {c.session_id for c in cluster.everyone if c.gateway == victim}
    log(f"docker kill {short(victim)} under traffic ({len(old_ids)} clients on it)")
    killed_at = time.monotonic()
    await run("docker", "kill", victim)
    victims = await cluster.victims_of(victim)
    log(f"its clients were cut (close codes {sorted({c.close_code for c in victims})}); they reconnect")
    for c in victims:
        await c.reopen()
    reconnected = time.monotonic() - killed_at
    await cluster.locate()
    expect(all(c.gateway != victim for c in victims), "reconnected clients are on the surviving gateways")
    mark = ticker.seq
    await asyncio.sleep(1.5)
    await ticker.stop()
    for c in victims:
        expect(any(s >= mark for s in c.ticks["kill"]), f"{c.name} receives events again after reconnecting")
    cluster.check_undisturbed(others, ticker)
    log(f"reconnected within {reconnected:.1f}s to {spread(victims, sorted(set(gateways) - {victim}))}; "
        f"{len(others)} other clients undisturbed, none missed any of {ticker.summary()}")
    live = {c.session_id for c in cluster.everyone}

    async def reaped():
        listed = await cluster.listed()
        return not (listed & old_ids) and live <= listed

    await eventually(reaped, f"the sessions of {short(victim)} leave user list", 60)
    state = (await run("docker", "inspect", "-f", "{{.State.Status}}", victim)).strip()
    log(f"user list dropped the {len(old_ids)} sessions of {short(victim)} {time.monotonic() - killed_at:.1f}s after the kill "
        f"(container now {state})")

    async def announced():
        return all(cluster.publisher.stopped.get(i) == "lost" for i in old_ids)

    await eventually(announced, f"the sessions of {short(victim)} are announced lost", 30)
    log(f"core/presence/stopped announced the {len(old_ids)} sessions lost")
    log("fault survived: docker kill of a gateway")


async def step_redis(cluster):
    redis = (await containers(OPTS.redis_service))[0]
    ticker = Ticker(cluster, "redis")
    await asyncio.sleep(0.5)
    log(f"docker restart {short(redis)} under traffic")
    await run("docker", "restart", "-t", "2", redis, timeout=60)
    restarted = time.monotonic()
    mark = ticker.seq

    async def resumed():
        return all(any(s >= mark for s in c.ticks["redis"]) for c in cluster.everyone)

    _, took = await eventually(resumed, "event delivery resumes after the Redis restart", 45, interval=0.05)
    await ticker.stop()
    log(f"delivery to all {len(cluster.everyone)} clients resumed {took:.1f}s after Redis was back ({ticker.summary()})")
    expect(all(c.is_open for c in cluster.everyone), "no client was disconnected by the Redis restart")
    live = {c.session_id for c in cluster.everyone}

    async def refilled():
        return live <= await cluster.listed()

    await eventually(refilled, "user list shows every session again", 30)
    log(f"user list shows all {len(live)} sessions again {time.monotonic() - restarted:.1f}s after the restart")
    took = await cluster.hello_reaches_everyone(cluster.clients[0], "after-redis")
    log(f"fault survived: Redis restart (a new event reached everyone in {took * 1000:.0f} ms, no socket closed)")


async def step_scale(cluster):
    prober = Prober()
    ticker = Ticker(cluster, "scale")
    log("docker-compose up -d --scale gateway=4")
    await compose("up", "-d", "--scale", "gateway=4")

    async def four():
        gateways = await healthy_gateways()
        return gateways if len(gateways) == 4 else None

    gateways, _ = await eventually(four, "four healthy gateways", 60)

    async def all_serving():
        await cluster.locate()
        if {c.gateway for c in cluster.everyone} == set(gateways):
            return True
        cluster.clients.append(await Client(f"client{len(cluster.clients)}").open())
        return False

    await eventually(all_serving, "new clients reach the new gateways", 30)
    log(f"4 gateways serving: {spread(cluster.everyone, gateways)}")
    since = ticker.seq
    log("docker-compose up -d --scale gateway=2")
    await compose("up", "-d", "--scale", "gateway=2")
    remaining = await containers("gateway")
    log(f"scaled down, {', '.join(short(g) for g in remaining)} left")
    expect(len(remaining) == 2, f"two gateways left (found {remaining})")
    removed = sorted(set(gateways) - set(remaining))
    stopped = [c for c in cluster.everyone if c.gateway in removed]
    others = [c for c in cluster.everyone if c.gateway not in removed]
    old_ids = {c.session_id for c in stopped}
    await cluster.victims_of(removed[0])
    await cluster.victims_of(removed[1])
    codes = sorted({c.close_code for c in stopped})
    expect(codes == [1001], f"clients of the removed gateways were closed with 1001 (got {codes})")
    for c in stopped:
        await c.reopen()
    await cluster.locate()
    expect(all(c.gateway in remaining for c in cluster.everyone), "every client is on a remaining gateway")
    await ticker.stop()
    await prober.stop()
    cluster.check_undisturbed(others, ticker, since)
    live = {c.session_id for c in cluster.everyone}

    async def unregistered():
        listed = await cluster.listed()
        return not (listed & old_ids) and live <= listed

    await eventually(unregistered, "the removed gateways' sessions leave user list", 20)
    log(f"scaled down: {', '.join(short(g) for g in removed)} closed their {len(stopped)} clients with 1001; "
        f"they reconnected to {spread(cluster.everyone, remaining)}")
    log(f"throughout: {prober.summary()}; {ticker.summary()}, none missed by the {len(others)} clients left in place")
    expect(prober.ok > 0 and not prober.errors, "every fresh connection worked while scaling")
    log("fault survived: scale to 4 gateways and back to 2")


async def step_stop(cluster):
    remaining = await containers("gateway")
    victim = next(g for g in remaining if g != cluster.publisher.gateway)

    async def has_clients():
        await cluster.locate()
        if any(c.gateway == victim for c in cluster.clients):
            return True
        cluster.clients.append(await Client(f"client{len(cluster.clients)}").open())
        return False

    await eventually(has_clients, f"{short(victim)} holds clients", 30)
    ticker = Ticker(cluster, "stop")
    await asyncio.sleep(0.5)
    victims = [c for c in cluster.everyone if c.gateway == victim]
    others = [c for c in cluster.everyone if c.gateway != victim]
    old_ids = {c.session_id for c in victims}
    log(f"docker stop {short(victim)} ({len(victims)} clients on it)")
    stopped_at = time.monotonic()
    await run("docker", "stop", victim, timeout=60)
    await cluster.victims_of(victim)
    codes = sorted({c.close_code for c in victims})
    expect(codes == [1001], f"clients of the stopped gateway were closed with 1001 (got {codes})")
    for c in victims:
        await c.reopen()
    await cluster.locate()
    await ticker.stop()
    cluster.check_undisturbed(others, ticker)
    live = {c.session_id for c in cluster.everyone}

    async def unregistered():
        listed = await cluster.listed()
        return not (listed & old_ids) and live <= listed

    await eventually(unregistered, "the stopped gateway's sessions leave user list", 20)
    left = sorted(set(remaining) - {victim})
    log(f"{short(victim)} drained: {len(victims)} clients closed with 1001, its sessions left user list "
        f"within {time.monotonic() - stopped_at:.1f}s of docker stop; they reconnected to {spread(cluster.everyone, left)}")
    took = await cluster.hello_reaches_everyone(cluster.clients[-1], "final")
    log(f"fault survived: docker stop of a gateway ({len(others)} other clients undisturbed, "
        f"a last event reached all {len(cluster.everyone)} in {took * 1000:.0f} ms)")


def prometheus_query(expr):
    url = f"{OPTS.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)["data"]["result"]


async def step_prometheus(cluster):
    """Prometheus (the `observability` profile) finds every process through Docker's DNS and
    reads the sessions the gateways hold."""
    wanted = {"gateway": 3, "auth": 1, "registry": 1, "bus": 1}
    sessions = len(cluster.everyone)

    async def scraped():
        up = await asyncio.to_thread(prometheus_query, "sum by (job) (up)")
        jobs = {r["metric"]["job"]: int(float(r["value"][1])) for r in up}
        held = await asyncio.to_thread(prometheus_query, "sum(switchboard_sessions)")
        total = int(float(held[0]["value"][1])) if held else 0
        return (jobs, total) if jobs == wanted and total >= sessions else None

    (jobs, total), took = await eventually(scraped, f"Prometheus scrapes {wanted} and sees {sessions} sessions", 60, interval=1)
    log(f"Prometheus scrapes every process ({jobs}) and counts {total} sessions ({took:.1f}s)")


STEPS = [
    ("spread", "clients spread over three gateways", step_spread),
    ("prometheus", "Prometheus scrapes every service", step_prometheus),
    ("events", "events fired through each gateway reach every client", step_events),
    ("user_list", "user list sees every session", step_user_list),
    ("session_cmd", "session cmd crosses containers", step_session_cmd),
    ("kill", "docker kill of a gateway under traffic", step_kill),
    ("redis", "Redis restart", step_redis),
    ("scale", "scale to 4 gateways and back to 2", step_scale),
    ("stop", "docker stop of a gateway drains with 1001", step_stop),
]


async def main():
    cluster = Cluster()
    passed = failed = skipped = 0
    try:
        wanted = OPTS.steps.split()
        unknown = set(wanted) - {key for key, _, _ in STEPS} - {"all"}
        expect(not unknown, f"known steps (not {sorted(unknown)})")
        for key, title, step in STEPS:
            if "all" not in wanted and key not in wanted:
                continue
            if failed:
                skipped += 1
                continue
            print(f"-- {title}", flush=True)
            try:
                await asyncio.wait_for(step(cluster), 150)
                passed += 1
            except (Failed, *NETWORK_ERRORS) as error:
                failed += 1
                print(f"   FAILED: {title}: {error!r}", flush=True)
    finally:
        for c in cluster.clients + ([cluster.publisher] if cluster.publisher else []):
            await c.close()
    print(f"compose: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the load balancer, ws://127.0.0.1:PORT/api/ws")
    parser.add_argument("--password", required=True, help="the admin's password")
    parser.add_argument("--project", required=True, help="the Compose project name")
    parser.add_argument("--prometheus", required=True, help="Prometheus, http://127.0.0.1:PORT")
    parser.add_argument("--compose", required=True, help="the Compose command with -p, --env-file and -f")
    parser.add_argument("--steps", default="all", help="the steps to run, by key, or all")
    parser.add_argument("--redis-service", default="redis",
                        help="the Redis service the Redis step restarts (a master of a cluster)")
    parser.parse_args(namespace=OPTS)
    sys.exit(asyncio.run(main()))
