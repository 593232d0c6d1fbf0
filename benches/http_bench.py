"""Echo tools/call over Streamable HTTP, measured with wrk: bemcp beside a floor and peers.

Every target runs under uvicorn with uvloop and httptools (the TypeScript peer under
node:http), on loopback; wrk keeps 64 connections busy with one request, all targets
interleaved round by round, medians reported with p50/p99 latency:

- floor: a bare ASGI app answering each POST with a canned JSON-RPC result
  (benches/http_floor.py): what uvicorn itself costs.
- bemcp 2026-07-28: `bemcp serve --http`, stateless POSTs answered with JSON.
- bemcp session: the same server, a handshake-era session (Mcp-Session-Id), each
  answer on its own SSE stream with a priming event.
- sdk: the official Python SDK (MCPServer, stateless, JSON responses).
- ts: the official TypeScript SDK (stateless, JSON; needs benches/peers/setup.sh).

With --nginx: bemcp 2026-07-28 through nginx in front of N = 1, 2, 4 processes,
configured as docs/deploy.md says.

What it does not show: one small request over and over, no TLS, and wrk sharing the
machine's cores with the server (it runs with 1 thread; on 2 cores it is not the
bottleneck for one server process, but it is with N processes).
Usage: python benches/http_bench.py [--seconds 5] [--rounds 3] [--nginx]
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import orjson

BENCHES = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCHES)
PEERS = os.path.join(BENCHES, "peers")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from http_server import Nginx, free_port  # noqa: E402  (docs/deploy.md's nginx configuration)

MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientCapabilities": {},
               "io.modelcontextprotocol/clientInfo": {"name": "bemcp-bench", "version": "0"}}
MODERN_HEADERS = "MCP-Protocol-Version: 2026-07-28\nMcp-Method: tools/call\nMcp-Name: echo"
ECHO_MODERN = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                            "params": {"name": "echo", "arguments": {"text": "hello"}, "_meta": MODERN_META}})
ECHO_LEGACY = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                            "params": {"name": "echo", "arguments": {"text": "hello"}}})


def start(command, port, env=None):
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not start")
            time.sleep(0.05)


def post(url, body, headers):
    import httpx2 as httpx
    h = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    for line in headers.splitlines():
        name, _, value = line.partition(":")
        h[name.strip()] = value.strip()
    return httpx.post(url, content=body, headers=h, timeout=10)


def open_session(url):
    """A handshake-era session: its id and the headers every request then carries."""
    init = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                         "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                    "clientInfo": {"name": "bemcp-bench", "version": "0"}}})
    r = post(url, init, "")
    session = r.headers["mcp-session-id"]
    return f"Mcp-Session-Id: {session}\nMCP-Protocol-Version: 2025-11-25"


class Target:
    def __init__(self, name, command, body, headers="", port=None, session=False):
        self.name, self.command, self.body, self.headers = name, command, body, headers
        self.port = port or free_port()
        self.session = session
        self.proc = None
        self.runs = []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/mcp"

    def up(self):
        if self.command is not None:
            self.proc = start([c.replace("{port}", str(self.port)) for c in self.command], self.port)
        if self.session:
            self.headers = open_session(self.url)
        r = post(self.url, self.body, self.headers)
        if r.status_code != 200 or b"hello" not in r.content:
            raise RuntimeError(f"{self.name}: unexpected answer {r.status_code} {r.content[:200]!r}")

    def down(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wrk(url, body, headers, seconds, connections, threads):
    env = dict(os.environ, BODY=body.decode(), HEADERS=headers)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", os.path.join(BENCHES, "http_load.lua"), url],
                         env=env, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("RESULT "))
    result = orjson.loads(line[7:])
    if result["non2xx"] or result["connect"] or result["read"] or result["write"]:
        raise RuntimeError(f"{url}: wrk saw errors: {result}")
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def table(rows, floor_rps, sdk_rps):
    print(f"{'target':<24} {'req/s':>9} {'x floor':>8} {'x sdk':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'timeouts':>8}")
    for name, runs in rows:
        rps = statistics.median(r["rps"] for r in runs)
        p50 = statistics.median(r["p50_us"] for r in runs) / 1000
        p99 = statistics.median(r["p99_us"] for r in runs) / 1000
        xf = f"{rps / floor_rps:.2f}" if floor_rps else "-"
        xs = f"{rps / sdk_rps:.1f}" if sdk_rps else "-"
        late = sum(r["timeout"] for r in runs)   # answers later than wrk's 2 s (an overloaded peer)
        print(f"{name:<24} {rps:>9.0f} {xf:>8} {xs:>7} {p50:>7.2f} {p99:>7.2f} {late:>8}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nginx", action="store_true", help="also N = 1, 2, 4 processes behind nginx")
    parser.add_argument("--skip", action="append", default=[], help="a target to leave out")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("http_bench: needs wrk (Debian: apt-get install wrk)")
    py = sys.executable
    bemcp = [py, "-m", "bemcp", "serve", "--no-plugins", "--no-log-files", "--http", "{port}"]
    bemcp_port = free_port()
    targets = [
        Target("floor", [py, os.path.join(BENCHES, "http_floor.py"), "{port}"], ECHO_MODERN, MODERN_HEADERS),
        Target("bemcp 2026-07-28", bemcp, ECHO_MODERN, MODERN_HEADERS, port=bemcp_port),
        Target("bemcp session", None, ECHO_LEGACY, port=bemcp_port, session=True),
        Target("sdk 2026-07-28", [py, os.path.join(PEERS, "sdk_http_echo.py"), "{port}"], ECHO_MODERN,
               MODERN_HEADERS),
    ]
    node = shutil.which("node")
    if node and os.path.isdir(os.path.join(PEERS, "node_modules", "@modelcontextprotocol", "sdk")):
        targets.append(Target("ts stateless", [node, os.path.join(PEERS, "ts_http_echo.mjs"), "{port}"],
                              ECHO_LEGACY, "MCP-Protocol-Version: 2025-11-25"))
    else:
        print("(ts peer left out: run benches/peers/setup.sh with node on PATH)")
    targets = [t for t in targets if t.name.split()[0] not in args.skip]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
          f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, {args.rounds} rounds interleaved")
    try:
        for t in targets:
            t.up()
        for _ in range(args.rounds):
            for t in targets:
                t.runs.append(wrk(t.url, t.body, t.headers, args.seconds, args.connections, args.threads))
    finally:
        for t in targets:
            t.down()
    floor = next((statistics.median(r["rps"] for r in t.runs) for t in targets if t.name == "floor"), None)
    sdk = next((statistics.median(r["rps"] for r in t.runs) for t in targets if t.name.startswith("sdk")), None)
    table([(t.name, t.runs) for t in targets], floor, sdk)

    if args.nginx:
        print(f"\nbemcp 2026-07-28 behind nginx (docs/deploy.md), load {os.getloadavg()[0]:.2f}")
        rows = []
        for n in (1, 2, 4):
            ports = [free_port() for _ in range(n)]
            procs = [start([c.replace("{port}", str(p)) for c in bemcp], p) for p in ports]
            tmp = tempfile.mkdtemp(prefix="bemcp-nginx-")
            nginx = Nginx(tmp, free_port(), ports, workers=2)
            try:
                post(nginx.url, ECHO_MODERN, MODERN_HEADERS).raise_for_status()
                runs = [wrk(nginx.url, ECHO_MODERN, MODERN_HEADERS, args.seconds, args.connections,
                            args.threads) for _ in range(args.rounds)]
                rows.append((f"N = {n}", runs))
            finally:
                nginx.close()
                for p in procs:
                    p.terminate()
                    p.wait(10)
                shutil.rmtree(tmp, ignore_errors=True)
        table(rows, floor, sdk)
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
