#!/usr/bin/env python3
"""Soak: two gateways (bench/switchboard.sh) under valid traffic plus abusive clients.

Valid clients: subscribers on both gateways and one publisher per gateway sending numbered
events; every subscriber must receive every event. Abusers, all at once for the whole run:
huge fields (200 KB class, 600 KB body, 1 MB events), pre-login floods (100 connections at
once that never log in, and 100 KB frames before login), login floods (50 wrong logins at
once), and subscribers that never read while 60 KB events are sent to them. Each gateway's
RSS is sampled every 5 s.

    bench/soak.py [--seconds 180]      # needs target/release/switchboard and `pip install websockets`
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
URLS = ["ws://127.0.0.1:9010/api/ws", "ws://127.0.0.1:9012/api/ws"]
PASSWORD = os.environ.get("SWITCHBOARD_BENCH_PASSWORD", "bench")
stats = {}


def count(name, n=1):
    stats[name] = stats.get(name, 0) + n


class Conn:
    def __init__(self, ws):
        self.ws = ws
        self.tid = 0

    @classmethod
    async def open(cls, url, login=True, **kw):
        conn = cls(await websockets.connect(url, max_size=None, open_timeout=10, **kw))
        if login:
            reply = await conn.request("user", "login", {"user": "admin", "password": PASSWORD})
            assert reply["result"] == "ok", reply
        return conn

    async def send(self, subclass, cmd, data):
        self.tid += 1
        await self.ws.send(json.dumps({"class": "core", "subclass": subclass, "cmd": cmd,
                                       "data": data, "tid": self.tid}))
        return self.tid

    async def request(self, subclass, cmd, data, timeout=10):
        tid = await self.send(subclass, cmd, data)
        deadline = time.monotonic() + timeout
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), deadline - time.monotonic()))
            if frame.get("tid") == tid and "result" in frame:
                return frame


async def subscriber(url, name, received, stop):
    conn = await Conn.open(url)
    await conn.request("event", "subscribe", {"class": "soak"})
    seen = received.setdefault(name, set())
    while not stop.is_set():
        try:
            frame = json.loads(await asyncio.wait_for(conn.ws.recv(), 1))
        except asyncio.TimeoutError:
            continue
        if frame.get("cmd") == "event":
            body = frame["data"].get("body", {})
            seen.add((body["p"], body["n"]))


async def publisher(url, index, sent, stop, rate):
    conn = await Conn.open(url)
    n = 0
    while not stop.is_set():
        n += 1
        reply = await conn.request("event", "send_event", {"class": "soak", "body": {"p": index, "n": n}})
        if reply["result"] == "ok":
            sent.add((index, n))
        else:
            count("valid publish refused")
        await asyncio.sleep(1 / rate)


async def huge_fields(url, stop):
    conn = await Conn.open(url)
    cases = [("subscribe", {"class": "x" * 200_000}), ("subscribe", {"class": "c", "body": {"p": "x" * 600_000}}),
             ("send_event", {"class": "c", "body": {"p": "x" * 1_000_000}})]
    while not stop.is_set():
        for cmd, data in cases:
            reply = await conn.request("event", cmd, data)
            count(f"huge {cmd} -> {reply['data'].get('code', reply['result'])}")
        await asyncio.sleep(0.05)


async def prelogin_flood(url, stop):
    while not stop.is_set():
        opened = []
        for _ in range(100):
            try:
                opened.append(await websockets.connect(url, open_timeout=5))
                count("prelogin connections accepted")
            except websockets.exceptions.InvalidStatus as error:
                count(f"prelogin refused {error.response.status_code}")
            except Exception as error:  # noqa: BLE001
                count(f"prelogin failed {type(error).__name__}")
        # A big frame before login on one of them.
        if opened:
            try:
                await opened[0].send("x" * 100_000)
                await asyncio.wait_for(opened[0].recv(), 5)
            except websockets.exceptions.ConnectionClosed as closed:
                count(f"prelogin big frame closed {closed.rcvd.code if closed.rcvd else None}")
            except Exception as error:  # noqa: BLE001
                count(f"prelogin big frame {type(error).__name__}")
        await asyncio.sleep(2)
        for ws in opened:
            await ws.close()


async def login_flood(url, stop):
    async def one():
        try:
            conn = await Conn.open(url, login=False)
            reply = await conn.request("user", "login", {"user": "victim", "password": "guess"})
            count(f"wrong login -> {reply['data'].get('code')}")
            await conn.ws.close()
        except Exception as error:  # noqa: BLE001
            count(f"wrong login failed {type(error).__name__}")
    while not stop.is_set():
        await asyncio.gather(*(one() for _ in range(50)))
        await asyncio.sleep(1)


async def non_readers(urls, stop):
    # Logged in before the login flood throttles this address; they subscribe and never read.
    conns = [await Conn.open(url) for url in urls for _ in range(5)]
    for conn in conns:
        await conn.request("event", "subscribe", {"class": "big"})
    pub = await Conn.open(urls[0])
    body = {"p": "y" * 60_000}
    while not stop.is_set():
        await pub.request("event", "send_event", {"class": "big", "body": body})
        await asyncio.sleep(0.01)
    for conn in conns:
        code = conn.ws.close_code
        count(f"non-reader closed {code}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def sample_rss(pids, samples, stop):
    while not stop.is_set():
        samples.append([rss_kib(pid) for pid in pids])
        await asyncio.sleep(5)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--rate", type=float, default=50, help="events per second per publisher")
    args = parser.parse_args()
    env = dict(os.environ, SWITCHBOARD_MAX_PRELOGIN_PER_ADDRESS="64")
    env.setdefault("GATEWAY_ARGS", "")
    try:
        subprocess.run([f"{ROOT}/bench/switchboard.sh", "start"], check=True, env=env)
        pids = subprocess.run([f"{ROOT}/bench/switchboard.sh", "pids"], check=True,
                              capture_output=True, text=True).stdout.strip().split(",")[:2]
        stop = asyncio.Event()
        received, sent, samples = {}, set(), []
        tasks = [asyncio.create_task(subscriber(URLS[i % 2], f"sub{i}", received, stop)) for i in range(20)]
        await asyncio.sleep(1)
        readers = asyncio.create_task(non_readers(URLS, stop))
        await asyncio.sleep(1)
        tasks += [asyncio.create_task(publisher(URLS[i], i, sent, stop, args.rate)) for i in range(2)]
        tasks += [asyncio.create_task(f(URLS[i], stop)) for f in (huge_fields, prelogin_flood, login_flood)
                  for i in range(2)]
        tasks += [readers, asyncio.create_task(sample_rss(pids, samples, stop))]
        await asyncio.sleep(args.seconds)
        stop.set()
        await asyncio.sleep(3)  # the last events arrive
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        lost = {name: len(sent - seen) for name, seen in received.items()}
        print(json.dumps({
            "seconds": args.seconds,
            "valid_events_sent": len(sent),
            "subscribers": len(received),
            "lost_per_subscriber": lost,
            "abuse": dict(sorted(stats.items())),
            "gateway_rss_kib": {"first": samples[0], "max": [max(s[i] for s in samples) for i in range(2)],
                                "last": samples[-1]},
            "task_errors": [repr(e) for e in errors],
        }, indent=1))
    finally:
        subprocess.run([f"{ROOT}/bench/switchboard.sh", "stop"], check=False)


if __name__ == "__main__":
    asyncio.run(main())
