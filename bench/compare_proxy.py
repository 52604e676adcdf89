#!/usr/bin/env python3
"""bench/compare_proxy.py: shardd's proxy against HAProxy and nginx stream.

Run through `bench/compare --proxy` (or directly). For each path -- direct (no
proxy), shardd, HAProxy 2.6 (`mode tcp`, `nbthread 1`) and nginx 1.22
`stream` (`worker_processes 1`) -- in interleaved rounds:

  wrk     wrk -t1 -c64 --latency to nginx's static file (1 KiB): req/s, p99,
          and the proxy's CPU per request;
  iperf3  iperf3 -c for a fixed time to iperf3 -s: Gbit/s received, and the
          proxy's CPU per GB.

The backends (nginx http, iperf3 -s) and the proxy run on CPU 0, the client
on CPU 1. Then, once per proxy: RSS per idle proxied pair with N pairs open
(each relayed one byte each way) to a shardd echo listener.

Writes docs/benchmarks-proxy.md and, with gnuplot, a chart beside it.

  bench/compare_proxy.py                 3 rounds, 5 s runs, 10,000 idle pairs
  bench/compare_proxy.py --quick         1 round, 1 s runs, 1,000 pairs: harness check
  bench/compare_proxy.py --out /tmp/p.md
"""

import argparse
import json
import os
import re
import resource
import shutil
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
SERVER_CPU = "0"
CLIENT_CPU = "1"
# wrk's load: one thread, 64 keep-alive connections (the issue's numbers).
WRK_CONNECTIONS = 64
# The static file: small, so that the proxy's per-request cost dominates.
FILE_SIZE = 1024
LISTEN_TIMEOUT_S = 5.0
# The floors of the issue, checked and printed in the report.
WRK_FLOOR = 1.3  # req/s vs the better of HAProxy and nginx stream
IPERF_DIRECT_FLOOR = 0.95  # Gbit/s vs direct
IPERF_NGINX_FLOOR = 1.15  # Gbit/s vs nginx stream
IDLE_BYTES_FLOOR = 4096  # RSS per idle pair at 10,000 pairs
PROXIES = ["shardd", "haproxy", "nginx-stream"]
PATHS = ["direct"] + PROXIES


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, timeout=LISTEN_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def start(argv, cpu, log, env=None):
    return subprocess.Popen(["taskset", "-c", cpu] + argv, stdout=log, stderr=subprocess.STDOUT, env=env)


def stop(proc):
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Rig:
    """The backends, the three proxies and their ports, in a temp dir."""

    def __init__(self, tmp, idle_pairs, fd_limit):
        self.fd_limit = fd_limit
        self.tmp = Path(tmp)
        self.log = open(self.tmp / "processes.log", "w")
        self.procs = {}
        self.http = free_port()
        self.iperf = free_port()
        self.echo = free_port()
        # Per proxy: (port to nginx http, port to iperf3, port to the echo).
        self.ports = {p: (free_port(), free_port(), free_port()) for p in PROXIES}
        self.idle_pairs = idle_pairs
        (self.tmp / "www").mkdir()
        (self.tmp / "www" / "file").write_bytes(os.urandom(FILE_SIZE))

    def nginx_http_conf(self):
        return f"""daemon off; master_process off; worker_processes 1; pid nginx-http.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path body; proxy_temp_path proxy; fastcgi_temp_path fastcgi;
  uwsgi_temp_path uwsgi; scgi_temp_path scgi;
  server {{ listen 127.0.0.1:{self.http} backlog=4096; root {self.tmp}/www; }}
}}
"""

    def nginx_stream_conf(self):
        web, bulk, echo = self.ports["nginx-stream"]
        return f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off; master_process off; worker_processes 1; pid nginx-stream.pid;
error_log stderr warn; worker_rlimit_nofile {self.fd_limit};
events {{ worker_connections {2 * self.idle_pairs + 500}; }}
stream {{
  server {{ listen 127.0.0.1:{web} backlog=4096; proxy_pass 127.0.0.1:{self.http}; }}
  server {{ listen 127.0.0.1:{bulk}; proxy_pass 127.0.0.1:{self.iperf}; }}
  server {{ listen 127.0.0.1:{echo} backlog=4096; proxy_pass 127.0.0.1:{self.echo}; proxy_timeout 1h; }}
}}
"""

    def haproxy_conf(self):
        web, bulk, echo = self.ports["haproxy"]
        return f"""global
  nbthread 1
  maxconn {self.idle_pairs + 200}
  # Pipes for splice-auto: as many as a shardd shard has (its default
  # maxconn/4 would want more descriptors than RLIMIT_NOFILE here).
  maxpipes 256
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  maxconn {self.idle_pairs + 200}
listen web
  bind 127.0.0.1:{web}
  server s 127.0.0.1:{self.http}
listen bulk
  bind 127.0.0.1:{bulk}
  # HAProxy at its best for bulk: splice(2) where it pays, as shardd does
  # (its listener key splice, on by default).
  option splice-auto
  server s 127.0.0.1:{self.iperf}
listen echo
  bind 127.0.0.1:{echo}
  server s 127.0.0.1:{self.echo}
"""

    def shardd_conf(self):
        web, bulk, echo = self.ports["shardd"]
        listeners = ""
        for name, port, up in (("web", web, self.http), ("bulk", bulk, self.iperf), ("echo", echo, self.echo)):
            listeners += (
                f'[[listener]]\nname = "{name}"\nlisten = ["127.0.0.1:{port}"]\nmode = "proxy"\n'
                f'upstream = "{name}"\n\n[[upstream]]\nname = "{name}"\nservers = ["127.0.0.1:{up}"]\n\n'
            )
        return f'[runtime]\ncpus = "{SERVER_CPU}"\n\n[log]\nlevel = "warn"\n\n{listeners}'

    def write(self, name, text):
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def start_backends(self):
        conf = self.write("nginx-http.conf", self.nginx_http_conf())
        self.procs["nginx-http"] = start(["nginx", "-e", "stderr", "-p", str(self.tmp), "-c", conf], SERVER_CPU,
                                         self.log)
        self.procs["iperf3-s"] = start(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(self.iperf)], SERVER_CPU,
                                       self.log)
        echo_conf = self.write(
            "echo.toml", f'[runtime]\ncpus = "{SERVER_CPU}"\n\n[[listener]]\nname = "e"\n'
            f'listen = ["127.0.0.1:{self.echo}"]\nmode = "echo"\nidle_timeout = "1h"\n')
        self.procs["echo"] = start([str(SHARDD), "-c", echo_conf], SERVER_CPU, self.log)
        for name, port in (("nginx-http", self.http), ("iperf3-s", self.iperf), ("echo", self.echo)):
            wait_listening(port, self.procs[name])

    def start_proxies(self):
        conf = self.write("shardd.toml", self.shardd_conf())
        self.procs["shardd"] = start([str(SHARDD), "-c", conf], SERVER_CPU, self.log)
        conf = self.write("haproxy.cfg", self.haproxy_conf())
        self.procs["haproxy"] = start(["haproxy", "-db", "-f", conf], SERVER_CPU, self.log)
        conf = self.write("nginx-stream.conf", self.nginx_stream_conf())
        self.procs["nginx-stream"] = start(["nginx", "-e", "stderr", "-p", str(self.tmp), "-c", conf], SERVER_CPU,
                                           self.log)
        for p in PROXIES:
            for port in self.ports[p]:
                wait_listening(port, self.procs[p])

    def port(self, path, which):
        if path == "direct":
            return {"web": self.http, "bulk": self.iperf, "echo": self.echo}[which]
        return self.ports[path][("web", "bulk", "echo").index(which)]

    def pid(self, path):
        # haproxy -db and nginx with master_process off are one process; so is shardd.
        return None if path == "direct" else self.procs[path].pid

    def stop_all(self):
        for proc in self.procs.values():
            stop(proc)
        self.log.close()


def to_ms(value, unit):
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(rig, path, secs):
    url = f"http://127.0.0.1:{rig.port(path, 'web')}/file"
    pid = rig.pid(path)
    before = cpu_ticks(pid) if pid else 0
    r = subprocess.run(["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{secs}s",
                        "--latency", url], capture_output=True, text=True, timeout=secs + 60)
    after = cpu_ticks(pid) if pid else 0
    out = r.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_s = (after - before) / os.sysconf("SC_CLK_TCK")
    return {
        "rps": rps,
        "p99_ms": to_ms(m.group(1), m.group(2)) if m else float("nan"),
        "cpu_us_per_req": cpu_s * 1e6 / requests if pid and requests else None,
        "cpu_pct": 100.0 * cpu_s / secs if pid else None,
        "errors": (errors.group(1) if errors else "") + (f" non-2xx {non2xx.group(1)}" if non2xx else ""),
    }


def run_iperf(rig, path, secs):
    pid = rig.pid(path)
    before = cpu_ticks(pid) if pid else 0
    r = subprocess.run(["taskset", "-c", CLIENT_CPU, "iperf3", "-c", "127.0.0.1", "-p", str(rig.port(path, "bulk")),
                        "-t", str(secs), "-J"], capture_output=True, text=True, timeout=secs + 60)
    after = cpu_ticks(pid) if pid else 0
    end = json.loads(r.stdout)["end"]
    received = end["sum_received"]["bytes"]
    gbps = end["sum_received"]["bits_per_second"] / 1e9
    cpu_s = (after - before) / os.sysconf("SC_CLK_TCK")
    return {
        "gbps": gbps,
        "cpu_s_per_gb": cpu_s / (received / 1e9) if pid else None,
        "cpu_pct": 100.0 * cpu_s / secs if pid else None,
    }


def idle_pairs(rig, path, n):
    """RSS growth of the proxy per idle pair, n pairs each relaying one byte."""
    pid = rig.pid(path)
    port = rig.port(path, "echo")
    warm = socket.create_connection(("127.0.0.1", port))
    warm.sendall(b"w")
    warm.recv(1)
    warm.close()
    before = rss_kib(pid)
    socks = []
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise RuntimeError(f"{path}: pair {i} did not relay")
            socks.append(s)
        after = rss_kib(pid)
    finally:
        for s in socks:
            s.close()
    return (after - before) * 1024 / n


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def write_chart(out_dir, stats):
    if not shutil.which("gnuplot"):
        return None
    image = out_dir / "benchmarks-proxy.svg"
    data = "\n".join(f'"{p}" {stats[p]["rps"] / 1000:.2f} {stats[p]["gbps"]:.2f}' for p in PATHS)
    script = f"""set terminal svg size 900,360 dynamic font "sans,11"
set output "{image}"
set multiplot layout 1,2
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.7
set grid ytics
unset key
set yrange [0:*]
$d << EOD
{data}
EOD
set title "wrk -t1 -c{WRK_CONNECTIONS}, 1 KiB file (k req/s, higher is better)"
plot $d using 2:xtic(1) lc rgb "#4477AA"
set title "iperf3 (Gbit/s, higher is better)"
plot $d using 3:xtic(1) lc rgb "#228833"
unset multiplot
"""
    r = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True)
    return image.name if r.returncode == 0 else None


def git(*argv):
    r = subprocess.run(["git", "-C", str(ROOT)] + list(argv), capture_output=True, text=True)
    return r.stdout.strip()


def version(argv, pattern):
    r = subprocess.run(argv, capture_output=True, text=True)
    m = re.search(pattern, r.stdout + r.stderr)
    return m.group(1) if m else "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--seconds", type=int)
    ap.add_argument("--pairs", type=int)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-proxy.md"))
    args = ap.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    secs = args.seconds or (1 if args.quick else 5)
    wanted_pairs = args.pairs or (1000 if args.quick else 10000)
    for tool in ("wrk", "iperf3", "haproxy", "nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: .ci/install-deps installs it")
    if not SHARDD.exists():
        subprocess.run(["meson", "setup", str(BUILD), "--buildtype=release"], cwd=ROOT, check=False)
        subprocess.run(["ninja", "-C", str(BUILD)], check=True)
    # Each proxy holds two descriptors per pair: raise the soft limit to the
    # hard one, and open as many pairs as it allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # HAProxy and nginx also want room above two per pair (listeners, pipes,
    # their own files): 1,000 of it.
    pairs = min(wanted_pairs, (hard - 1000) // 2)

    results = {p: {"wrk": [], "iperf": []} for p in PATHS}
    idle = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shardd-proxy-bench-") as tmp:
        rig = Rig(tmp, pairs, hard)
        try:
            rig.start_backends()
            rig.start_proxies()
            for r in range(rounds):
                for p in PATHS:
                    w = run_wrk(rig, p, secs)
                    results[p]["wrk"].append(w)
                    i = run_iperf(rig, p, secs)
                    results[p]["iperf"].append(i)
                    print(f"round {r + 1}/{rounds} {p:13} wrk {w['rps']:9.0f} req/s p99 {w['p99_ms']:.2f} ms "
                          f"{w['errors']}| iperf3 {i['gbps']:.2f} Gbit/s", flush=True)
            for p in PROXIES:
                idle[p] = idle_pairs(rig, p, pairs)
                print(f"{p:13} idle pairs: {idle[p]:.0f} bytes each at {pairs}", flush=True)
        except Exception:
            rig.stop_all()
            print((Path(tmp) / "processes.log").read_text()[-3000:], file=sys.stderr)
            raise
        rig.stop_all()
        log = (Path(tmp) / "processes.log").read_text()
    elapsed = time.monotonic() - started

    stats = {}
    for p in PATHS:
        w, i = results[p]["wrk"], results[p]["iperf"]
        stats[p] = {
            "rps": median([x["rps"] for x in w]),
            "rps_min": min(x["rps"] for x in w),
            "rps_max": max(x["rps"] for x in w),
            "p99": median([x["p99_ms"] for x in w]),
            "cpu_req": median([x["cpu_us_per_req"] for x in w]),
            "cpu_pct_wrk": median([x["cpu_pct"] for x in w]),
            "gbps": median([x["gbps"] for x in i]),
            "gbps_min": min(x["gbps"] for x in i),
            "gbps_max": max(x["gbps"] for x in i),
            "cpu_gb": median([x["cpu_s_per_gb"] for x in i]),
            "cpu_pct_iperf": median([x["cpu_pct"] for x in i]),
            "errors": "; ".join(x["errors"] for x in w if x["errors"]),
        }
    out = Path(args.out)
    chart = write_chart(out.parent, stats)
    best_peer_rps = max(stats["haproxy"]["rps"], stats["nginx-stream"]["rps"])
    best_peer = "haproxy" if stats["haproxy"]["rps"] >= stats["nginx-stream"]["rps"] else "nginx-stream"
    s = stats["shardd"]
    checks = [
        (f"wrk req/s ≥ {WRK_FLOOR}x the better of HAProxy and nginx stream ({best_peer})",
         s["rps"] / best_peer_rps, s["rps"] / best_peer_rps >= WRK_FLOOR),
        (f"wrk p99 no worse than {best_peer}'s", s["p99"] / stats[best_peer]["p99"],
         s["p99"] <= stats[best_peer]["p99"]),
        (f"iperf3 Gbit/s ≥ {IPERF_DIRECT_FLOOR}x direct", s["gbps"] / stats["direct"]["gbps"],
         s["gbps"] / stats["direct"]["gbps"] >= IPERF_DIRECT_FLOOR),
        (f"iperf3 Gbit/s ≥ {IPERF_NGINX_FLOOR}x nginx stream", s["gbps"] / stats["nginx-stream"]["gbps"],
         s["gbps"] / stats["nginx-stream"]["gbps"] >= IPERF_NGINX_FLOOR),
        ("proxy CPU per GB below HAProxy's and nginx stream's",
         s["cpu_gb"] / min(stats["haproxy"]["cpu_gb"], stats["nginx-stream"]["cpu_gb"]),
         s["cpu_gb"] < min(stats["haproxy"]["cpu_gb"], stats["nginx-stream"]["cpu_gb"])),
        (f"RSS per idle pair ≤ {IDLE_BYTES_FLOOR} bytes (at {pairs} pairs)", idle["shardd"] / IDLE_BYTES_FLOOR,
         idle["shardd"] <= IDLE_BYTES_FLOOR),
    ]

    versions = {
        "haproxy": version(["haproxy", "-v"], r"version (\S+)"),
        "nginx": version(["nginx", "-v"], r"nginx/(\S+)"),
        "wrk": version(["wrk", "-v"], r"wrk (\S+)"),
        "iperf3": version(["iperf3", "-v"], r"iperf (\S+)"),
    }
    lines = [
        "# Proxy benchmarks",
        "",
        "Written by `bench/compare --proxy` (`bench/compare_proxy.py`); do not edit by hand.",
        "",
        f"Commit {git('rev-parse', '--short', 'HEAD')}{' (with local changes)' if git('status', '--porcelain') else ''}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {rounds} interleaved round(s) of {secs} s per path "
        f"and test, {elapsed / 60:.1f} min in all. {os.cpu_count()} CPUs; kernel {os.uname().release}. "
        f"HAProxy {versions['haproxy']}, nginx {versions['nginx']}, wrk {versions['wrk']}, "
        f"iperf3 {versions['iperf3']}.",
        "",
        f"Backends (nginx with a {FILE_SIZE}-byte static file, `iperf3 -s`) and the proxy on CPU {SERVER_CPU}, "
        f"the client (`wrk -t1 -c{WRK_CONNECTIONS} --latency`, `iperf3 -c -t {secs}`) on CPU {CLIENT_CPU}. "
        "Every proxy is one process with one thread: shardd `cpus = \"0\"`, HAProxy `nbthread 1`, nginx "
        "`worker_processes 1`. Medians, with min–max over the rounds; the ratio column is against the better "
        "of HAProxy and nginx stream.",
        "",
    ]
    if chart:
        lines += [f"![wrk req/s and iperf3 Gbit/s per path]({chart})", ""]
    lines += [
        "| path | wrk req/s | ratio | p99 ms | proxy CPU µs/req | proxy CPU % | iperf3 Gbit/s | ratio | proxy CPU s/GB | proxy CPU % |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    best_gbps = max(stats["haproxy"]["gbps"], stats["nginx-stream"]["gbps"])
    for p in PATHS:
        t = stats[p]
        lines.append(
            f"| {p} | {t['rps']:,.0f} ({t['rps_min']:,.0f}–{t['rps_max']:,.0f}) | {t['rps'] / best_peer_rps:.2f}x | "
            f"{t['p99']:.2f} | {fmt(t['cpu_req'], '.2f')} | {fmt(t['cpu_pct_wrk'], '.0f')} | "
            f"{t['gbps']:.2f} ({t['gbps_min']:.2f}–{t['gbps_max']:.2f}) | {t['gbps'] / best_gbps:.2f}x | "
            f"{fmt(t['cpu_gb'], '.3f')} | {fmt(t['cpu_pct_iperf'], '.0f')} |")
    lines += [
        "",
        f"RSS per idle proxied pair, {pairs} pairs open to a shardd echo listener, each having relayed one byte "
        "each way (the proxy's RSS growth over the pairs; kernel socket memory is not in it):",
        "",
        "| proxy | bytes per idle pair |",
        "|---|--:|",
    ] + [f"| {p} | {idle[p]:,.0f} |" for p in PROXIES]
    if pairs < wanted_pairs:
        lines += ["", f"({pairs} pairs, not {wanted_pairs}: the hard RLIMIT_NOFILE, {hard}, allows no more.)"]
    lines += ["", "## Floors", "", "| floor | shardd's ratio | met |", "|---|--:|---|"]
    lines += [f"| {name} | {ratio:.2f} | {'yes' if ok else '**no**'} |" for name, ratio, ok in checks]
    errors = [f"{p}: {stats[p]['errors']}" for p in PATHS if stats[p]["errors"]]
    if errors:
        lines += ["", "wrk reported errors: " + "; ".join(errors)]
    lines += ["", "## Reproduce", "", "```", "bench/compare --proxy" + (" --quick" if args.quick else ""), "```", ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out}" + (f" and {chart}" if chart else ""))
    for name, ratio, ok in checks:
        print(f"{'ok  ' if ok else 'MISS'} {name}: {ratio:.2f}")
    # Known noise: wait_listening()'s probe of iperf3 -s, and iperf3 ending
    # its data connections with a reset at the end of each test.
    noise = re.compile(r"unable to receive parameters|reset by peer|Broken pipe")
    bad = [line for line in log.splitlines()
           if re.search(r"\b(error|emerg|alert|crit)\b", line, re.I) and not noise.search(line)]
    if bad:
        print("process log:\n" + "\n".join(bad[:20]), file=sys.stderr)


if __name__ == "__main__":
    main()
