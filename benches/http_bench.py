"""Echo tools/call over Streamable HTTP, measured with wrk: bemcp beside a floor and peers.

Every Python target runs under uvicorn with uvloop and httptools (the TypeScript peer under
node:http), on loopback; wrk keeps 64 connections busy with one request, all targets
interleaved round by round, medians over rounds with p50/p99 latency, and the server's
CPU time per request: the CPU time of the target's processes over the measured window
(the scheduler's run time of each thread, /proc/PID/task/*/schedstat, else utime+stime
of /proc/PID/stat) divided by the requests answered. On a machine shared with other work
requests/s move with whatever else runs, while CPU per request holds (the cost of a
request does not change when the server waits for a core), so the ratios are given from
both; the load average at the start and the end says how busy the machine was.

- floor: a bare ASGI app answering each POST with a canned JSON-RPC result
  (benches/http_floor.py), under uvicorn with `bemcp serve --http`'s settings
  (bemcp.transports.http.uvicorn_config): what uvicorn itself costs.
- bemcp 2026-07-28: `bemcp serve --http`, stateless POSTs answered with JSON.
- bemcp session: the same server, a handshake-era session (Mcp-Session-Id), each
  answer on its own SSE stream with a priming event.
- sdk 2026-07-28: the official Python SDK (MCPServer, stateless, JSON answers):
  bemcp/bench/servers/sdk_http_echo.py, under uvicorn as the SDK runs itself (its
  defaults; access log off), run by the SDK `bemcp bench` uses (this Python's, or the one
  it installs into its peer cache).
- ts stateless: the official TypeScript SDK (stateless, JSON): ts_http_echo.mjs beside the
  SDK `bemcp bench` installs into its peer cache (node and npm needed).

With --nginx: bemcp 2026-07-28 through nginx in front of N = 1, 2, 4 processes,
configured as docs/deploy.md says.

What it does not show: one small request over and over, no TLS, and wrk sharing the
machine's cores with the server (it runs with 1 thread; on 2 cores it is not the
bottleneck for one server process, but it is with N processes). `bemcp bench --peers
bemcp-http,sdk-http` measures the same servers with its own client and every section.

    python benches/http_bench.py [--seconds 5] [--rounds 3] [--nginx] [--skip ts]
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import orjson

from bemcp.bench import default_cache_dir
from bemcp.bench import peers as P
from bemcp.bench.client import ProcessTree
from bemcp.bench.report import num, table, x
from bemcp.bench.stats import median, ratio

BENCHES = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(BENCHES), "tests"))
from http_server import Nginx  # noqa: E402  (docs/deploy.md's nginx configuration)

MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientCapabilities": {},
               "io.modelcontextprotocol/clientInfo": {"name": "bemcp-bench", "version": "0"}}
MODERN_HEADERS = "MCP-Protocol-Version: 2026-07-28\nMcp-Method: tools/call\nMcp-Name: echo"
ECHO_MODERN = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                            "params": {"name": "echo", "arguments": {"text": "hello"}, "_meta": MODERN_META}})
ECHO_LEGACY = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                            "params": {"name": "echo", "arguments": {"text": "hello"}}})


def load():
    """The load averages over 1, 5 and 15 minutes: what else the machine was doing."""
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def log(text):
    print(text, file=sys.stderr, flush=True)


def start(command, port):
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{command} did not start")
            time.sleep(0.05)


def post(url, body, headers):
    """POST one message; (status, the answer's headers, its body)."""
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    for line in headers.splitlines():
        name, _, value = line.partition(":")
        h[name.strip()] = value.strip()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, h), timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def open_session(url):
    """A handshake-era session: the headers every request then carries."""
    init = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                         "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                    "clientInfo": {"name": "bemcp-bench", "version": "0"}}})
    _, headers, _ = post(url, init, "")
    headers = f"Mcp-Session-Id: {headers['mcp-session-id']}\nMCP-Protocol-Version: 2025-11-25"
    post(url, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', headers)
    return headers


class Target:
    def __init__(self, name, command, body, headers="", port=None, session=False, owner=None):
        self.name, self.command, self.body, self.headers = name, command, body, headers
        self.port = port or P.free_port()
        self.session = session
        self.owner = owner        # the Target whose server this one talks to (command None)
        self.proc = None
        self.runs = []

    @property
    def tree(self):
        """The server's processes (its own, or its owner's)."""
        return ProcessTree((self.owner or self).proc.pid)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/mcp"

    def up(self):
        if self.command is not None:
            self.proc = start([c.replace("{port}", str(self.port)) for c in self.command], self.port)
        if self.session:
            self.headers = open_session(self.url)
        status, _, body = post(self.url, self.body, self.headers)
        if status != 200 or b"hello" not in body:
            raise RuntimeError(f"{self.name}: unexpected answer {status} {body[:200]!r}")

    def down(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wrk(url, body, headers, seconds, connections, threads, tree=None):
    """One wrk run; with ``tree`` (the server's ProcessTree), its CPU µs per request too."""
    env = dict(os.environ, BODY=body.decode(), HEADERS=headers)
    cpu0 = tree.cpu_seconds() if tree is not None else None
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", os.path.join(BENCHES, "http_load.lua"), url],
                         env=env, capture_output=True, text=True, check=True).stdout
    cpu = tree.cpu_seconds() - cpu0 if tree is not None else None
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    result = orjson.loads(line[7:])
    if result["non2xx"] or result["connect"] or result["read"] or result["write"]:
        raise RuntimeError(f"{url}: wrk saw errors: {result}")
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["cpu_us"] = cpu / result["requests"] * 1e6 if cpu is not None and result["requests"] else None
    return result


def cpu_of(runs):
    """Median server CPU µs per request over ``runs`` (None where it was not measured)."""
    cpus = [r["cpu_us"] for r in runs if r.get("cpu_us") is not None]
    return median(cpus) if cpus else None


def rows_of(named_runs, floor, sdk):
    """The table; ``floor`` and ``sdk``: those targets' runs (or None), the ratios' bases.

    The CPU ratios are the base's CPU per request over the target's: like the req/s
    ratios, above 1 means cheaper than the base.
    """
    floor_rps = median([r["rps"] for r in floor]) if floor else None
    sdk_rps = median([r["rps"] for r in sdk]) if sdk else None
    floor_cpu = cpu_of(floor) if floor else None
    sdk_cpu = cpu_of(sdk) if sdk else None
    rows = []
    for name, runs in named_runs:
        rps = median([r["rps"] for r in runs])
        cpu = cpu_of(runs)
        rows.append([name, num(rps), x(ratio(rps, floor_rps)), x(ratio(rps, sdk_rps)),
                     num(median([r["p50_us"] for r in runs]) / 1000, 2),
                     num(median([r["p99_us"] for r in runs]) / 1000, 2),
                     sum(r["timeout"] for r in runs),   # answers later than wrk's 2 s (an overloaded peer)
                     num(cpu, 1) if cpu is not None else "–",
                     x(ratio(floor_cpu, cpu)) if cpu is not None else "–",
                     x(ratio(sdk_cpu, cpu)) if cpu is not None else "–"])
    return table(["target", "req/s", "vs floor", "vs sdk", "p50 ms", "p99 ms", "timeouts",
                  "cpu µs/req", "cpu vs floor", "cpu vs sdk"], rows)


def peer_targets(py, skip):
    """The SDK peers, from `bemcp bench`'s peer cache (installed there the first time)."""
    cache, out = default_cache_dir(), []
    if "sdk" not in skip:
        try:
            sdk_py, version, _ = P.sdk_python(cache, log)
            out.append(Target(f"sdk {version} 2026-07-28", [sdk_py, os.path.join(P.SERVERS, "sdk_http_echo.py"),
                                                           "{port}"], ECHO_MODERN, MODERN_HEADERS))
        except P.Unavailable as why:
            log(f"(sdk peer left out: {why})")
    if "ts" not in skip:
        try:
            node, home, version, _ = P.ts_sdk(cache, log, "ts_http_echo.mjs")
            out.append(Target(f"ts {version} stateless", [node, os.path.join(home, "ts_http_echo.mjs"), "{port}"],
                              ECHO_LEGACY, "MCP-Protocol-Version: 2025-11-25"))
        except P.Unavailable as why:
            log(f"(ts peer left out: {why})")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nginx", action="store_true", help="also N = 1, 2, 4 processes behind nginx")
    parser.add_argument("--skip", action="append", default=[], choices=["floor", "bemcp", "sdk", "ts"],
                        help="a target to leave out (repeatable)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("http_bench: needs wrk (Debian: apt-get install wrk)")
    py = sys.executable
    bemcp = [py, "-m", "bemcp", "serve", "--no-plugins", "--no-log-files", "--http", "{port}"]
    served = Target("bemcp 2026-07-28", bemcp, ECHO_MODERN, MODERN_HEADERS)
    targets = [
        Target("floor", [py, os.path.join(BENCHES, "http_floor.py"), "{port}"], ECHO_MODERN, MODERN_HEADERS),
        served,
        Target("bemcp session", None, ECHO_LEGACY, port=served.port, session=True, owner=served),
        *peer_targets(py, args.skip),
    ]
    targets = [t for t in targets if t.name.split()[0] not in args.skip]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load at the start {load()}; "
          f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, {args.rounds} rounds interleaved\n")
    try:
        for t in targets:
            t.up()
        for r in range(args.rounds):
            for t in targets[r % len(targets):] + targets[:r % len(targets)]:
                log(f"round {r + 1}/{args.rounds}: {t.name}")
                run = wrk(t.url, t.body, t.headers, args.seconds, args.connections, args.threads, t.tree)
                log(f"  {run['rps']:,.0f} req/s, {run['cpu_us']:.1f} µs CPU per request")
                t.runs.append(run)
    finally:
        for t in targets:
            t.down()
    floor = next((t.runs for t in targets if t.name == "floor"), None)
    sdk = next((t.runs for t in targets if t.name.startswith("sdk")), None)
    print(rows_of([(t.name, t.runs) for t in targets], floor, sdk))
    print("\ncpu µs/req: the server's CPU time (all its processes) over the measured window, per request;"
          "\ncpu vs floor / vs sdk: that base's CPU per request over the target's (above 1: cheaper)")

    if args.nginx:
        print(f"\nbemcp 2026-07-28 behind nginx (docs/deploy.md), load {load()}\n")
        rows = []
        for n in (1, 2, 4):
            ports = [P.free_port() for _ in range(n)]
            procs, tmp, nginx = [], tempfile.mkdtemp(prefix="bemcp-nginx-"), None
            try:
                procs = [start([c.replace("{port}", str(p)) for c in bemcp], p) for p in ports]
                nginx = Nginx(tmp, P.free_port(), ports, workers=2)
                status, _, body = post(nginx.url, ECHO_MODERN, MODERN_HEADERS)
                if status != 200 or b"hello" not in body:
                    raise RuntimeError(f"nginx in front of {n}: unexpected answer {status} {body[:200]!r}")
                log(f"nginx in front of {n}")
                runs = [wrk(nginx.url, ECHO_MODERN, MODERN_HEADERS, args.seconds, args.connections,
                            args.threads) for _ in range(args.rounds)]
                rows.append((f"N = {n}", runs))
            finally:
                if nginx is not None:
                    nginx.close()
                for p in procs:
                    p.terminate()
                    p.wait(10)
                shutil.rmtree(tmp, ignore_errors=True)
        print(rows_of(rows, floor, sdk))
    print(f"\nload at the end {load()}")


if __name__ == "__main__":
    main()
