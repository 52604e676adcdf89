#!/usr/bin/env python3
"""bench/access_log_cost.py: what the access log costs shardd, on and off.

Two loads, each run against shardd with the access log off, then on (a file
under /tmp, text), in interleaved rounds; shardd pinned to CPU 0, the client
to CPU 1 (bench/compare's convention):

  steady  shardd-bench 256 connections x depth 4 x 64 B (bench/compare's
          busiest cell): connections stay open, so the log writes nothing
          until the end; this is the cost of having it on.
  churn   a Python client that opens a connection, echoes 64 B and closes,
          N times: one log line per connection, the log's real work.

Reports, per load, the median over rounds of the rate and of shardd's CPU
time per message (steady) or per connection (churn), from /proc/PID/stat,
and the ratio on/off.

  bench/access_log_cost.py [--rounds 3] [--seconds 5] [--connections 20000]
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
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_shardd(tmp, access_log):
    port = free_port()
    cfg = Path(tmp) / "shardd.toml"
    text = f'[runtime]\ncpus = "0"\n[log]\nlevel = "warn"\n'
    if access_log:
        text += f'[access_log]\npath = "{Path(tmp) / "access.log"}"\n'
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


def run(load, access_log, args):
    with tempfile.TemporaryDirectory() as tmp:
        p, port = start_shardd(tmp, access_log)
        try:
            cpu0, t0 = cpu_seconds(p.pid), time.time()
            count = steady(port, args.seconds) if load == "steady" else churn(port, args.connections)
            cpu1, t1 = cpu_seconds(p.pid), time.time()
            if load == "steady":  # shardd-bench counts the measured seconds only
                rate, cpu_per = count / args.seconds, (cpu1 - cpu0) / max(count, 1)
            else:
                rate, cpu_per = count / (t1 - t0), (cpu1 - cpu0) / count
            lines = 0
            if access_log:
                p.terminate()
                p.wait(timeout=20)
                lines = sum(1 for _ in open(Path(tmp) / "access.log"))
            return rate, cpu_per * 1e6, lines
        finally:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=20000)
    args = ap.parse_args()
    subprocess.run(["ninja", "-C", str(BUILD)], check=True, stdout=subprocess.DEVNULL)
    for load in ("steady", "churn"):
        results = {False: [], True: []}
        for _ in range(args.rounds):
            for on in (False, True):
                results[on].append(run(load, on, args))
        unit = "msg" if load == "steady" else "connection"
        med = {on: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
               for on, rs in results.items()}
        print(f"{load}: off {med[False][0]:,.0f}/s, {med[False][1]:.2f} us CPU per {unit}; "
              f"on {med[True][0]:,.0f}/s, {med[True][1]:.2f} us CPU per {unit}; "
              f"on/off rate {med[True][0] / med[False][0]:.3f}, CPU {med[True][1] / med[False][1]:.3f}; "
              f"lines logged per round {[r[2] for r in results[True]]}")


if __name__ == "__main__":
    main()
