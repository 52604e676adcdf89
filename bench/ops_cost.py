#!/usr/bin/env python3
"""bench/ops_cost.py: what the operator's features cost shardd's data path.

Two loads, each run against shardd as is ("off"), with the access log on (a
file under /tmp, text), and with /metrics scraped 10 times a second (a
Prometheus scraping every 100 ms instead of every 15 s: the worst case), in
interleaved rounds; shardd pinned to CPU 0, the client to CPU 1
(bench/compare's convention; the scraper runs beside the client):

  steady  shardd-bench 256 connections x depth 4 x 64 B (bench/compare's
          busiest cell): connections stay open, so the log writes nothing
          until the end; this is the cost of having it on.
  churn   a Python client that opens a connection, echoes 64 B and closes,
          N times: one log line per connection, the log's real work.

Reports, per load and variant, the median over rounds of the rate and of
shardd's CPU time per message (steady) or per connection (churn), from
/proc/PID/stat, and the ratio to "off". The admin thread's CPU counts: it
is shardd's.

  bench/ops_cost.py [--rounds 3] [--seconds 5] [--connections 20000]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build-bench"
SHARDD = BUILD / "server" / "shardd"
BENCH = BUILD / "bench" / "shardd-bench"


def cpu_seconds(pid, thread=None):
    """CPU time of the process (all its threads), or of its thread named
    `thread`: from schedstat, in nanoseconds, where /proc/PID/stat counts
    10 ms ticks."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if thread and (task / "comm").read_text().strip() != thread:
                continue
            total += int((task / "schedstat").read_text().split()[0])
        except FileNotFoundError:
            continue  # a thread that just ended
    return total / 1e9


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_shardd(tmp, variant, admin_port):
    port = free_port()
    cfg = Path(tmp) / "shardd.toml"
    text = f'[runtime]\ncpus = "0"\n[log]\nlevel = "warn"\n'
    if variant == "access_log":
        text += f'[access_log]\npath = "{Path(tmp) / "access.log"}"\n'
    if variant == "scrape":
        text += f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
    text += f'[[listener]]\nname = "e"\nlisten = "127.0.0.1:{port}"\nmode = "echo"\nidle_timeout = "0s"\n'
    cfg.write_text(text)
    p = subprocess.Popen(["taskset", "-c", "0", str(SHARDD), "-c", str(cfg)], stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    sys.exit("shardd did not start")


def steady(port, seconds):
    out = subprocess.run(["taskset", "-c", "1", str(BENCH), f"127.0.0.1:{port}", "-c", "256", "-d", "4", "-s", "64",
                          "--duration", f"{seconds}s", "--warmup", "1s", "--cpus", "1", "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["messages"]


def churn(port, n):
    os.sched_setaffinity(0, {1})
    msg = b"x" * 64
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(msg)
            got = b""
            while len(got) < 64:
                got += c.recv(64 - len(got))
    return n


def scraper(admin_port, stop, done):
    """/metrics 10 times a second until `stop` is set (on the client's CPU)."""
    import urllib.request
    deadline = time.time() + 10
    while not stop.is_set():
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read()
            done.append(1)
        except OSError:
            if time.time() > deadline:
                raise
        stop.wait(0.1)


def run(load, variant, args):
    import threading
    with tempfile.TemporaryDirectory() as tmp:
        admin_port = free_port()
        p, port = start_shardd(tmp, variant, admin_port)
        stop = threading.Event()
        scraping = None
        done = []
        scrapes = 0
        if variant == "scrape":
            scraping = threading.Thread(target=scraper, args=(admin_port, stop, done))
            scraping.start()
        try:
            cpu0, t0 = cpu_seconds(p.pid), time.time()
            admin0, done0 = cpu_seconds(p.pid, "shardd/admin"), len(done)
            count = steady(port, args.seconds) if load == "steady" else churn(port, args.connections)
            cpu1, t1 = cpu_seconds(p.pid), time.time()
            admin1, done1 = cpu_seconds(p.pid, "shardd/admin"), len(done)
            stop.set()
            if scraping:
                scraping.join()
                scrapes = done1 - done0
            if load == "steady":  # shardd-bench counts the measured seconds only
                rate, cpu_per = count / args.seconds, (cpu1 - cpu0) / max(count, 1)
            else:
                rate, cpu_per = count / (t1 - t0), (cpu1 - cpu0) / count
            lines = 0
            if variant == "access_log":
                p.terminate()
                p.wait(timeout=20)
                lines = sum(1 for _ in open(Path(tmp) / "access.log"))
            return rate, cpu_per * 1e6, lines, (admin1 - admin0) / scrapes * 1e6 if scrapes else 0.0
        finally:
            stop.set()
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=20000)
    args = ap.parse_args()
    subprocess.run(["ninja", "-C", str(BUILD)], check=True, stdout=subprocess.DEVNULL)
    variants = ("off", "access_log", "scrape")
    for load in ("steady", "churn"):
        results = {v: [] for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                results[v].append(run(load, v, args))
        unit = "msg" if load == "steady" else "connection"
        med = {v: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
               for v, rs in results.items()}
        for v in variants:
            print(f"{load} {v:10}: {med[v][0]:,.0f}/s, {med[v][1]:.2f} us shardd CPU per {unit}; "
                  f"vs off: rate {med[v][0] / med['off'][0]:.3f}, CPU {med[v][1] / med['off'][1]:.3f}"
                  + (f"; lines logged per round {[r[2] for r in results[v]]}" if v == "access_log" else "")
                  + (f"; admin thread CPU per scrape {statistics.median(r[3] for r in results[v]):.0f} us"
                     if v == "scrape" else ""))


if __name__ == "__main__":
    main()
