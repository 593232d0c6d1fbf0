"""In-process dispatch of an echo tools/call, no pipes: the compiled core against its pure twin.

A `bemcp serve` server (Server + built-in tools) builds its dispatcher on a uvloop
loop; its output goes to a list instead of a transport. Pre-encoded request lines
are fed to ``dispatcher.feed`` in batches of 256 lines and one line at a time, and
the time per call is reported. The echo tool finishes without suspending, so each
call is answered inside ``feed``: the figure is the whole path from bytes in to
bytes out (framing, JSON, envelope checks, in-flight table, tool call, result
encoding, coalesced write), minus the pipes and the event loop's I/O.

Each measurement runs in its own subprocess, with or without BEMCP_NO_EXTENSIONS=1,
alternating, for several rounds; the table gives the medians.

    python benches/dispatch_bench.py [--rounds 5] [--calls 100000] [--json FILE]
"""

import argparse
import asyncio
import gc
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

import orjson

from bemcp.bench.client import CLIENT_INFO, HANDSHAKE_VERSION
from bemcp.bench.report import environment, num, table, write_json, x
from bemcp.bench.stats import median, ratio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BATCH = 256


def _server():
    from bemcp.cli import make_server
    from bemcp.config import Config
    cfg = Config()
    for setting in ("plugins", "log_files"):   # keep the path under test to the core
        if hasattr(cfg, setting):
            setattr(cfg, setting, False)
    return make_server(cfg)


def _line(id):
    return orjson.dumps({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                         "params": {"name": "echo", "arguments": {"text": "hi"}}}) + b"\n"


async def _measure(calls, block):
    """ns per call, batched and single, as medians over blocks of ``block`` calls."""
    loop = asyncio.get_running_loop()
    server = _server()
    dispatcher = server.build_dispatcher(loop)
    out = []
    dispatcher.write = out.append
    dispatcher.feed(orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": HANDSHAKE_VERSION, "capabilities": {},
        "clientInfo": CLIENT_INFO}}) + b"\n")
    dispatcher.feed(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    await asyncio.sleep(0)
    out.clear()

    lines = [_line(i) for i in range(1, calls + 1)]
    batches = [b"".join(lines[i:i + BATCH]) for i in range(0, calls, BATCH)]
    feed, now = dispatcher.feed, time.perf_counter_ns
    results = {}

    # Warm up both paths (caches, allocator), then measure.
    for data in batches[:20] + lines[:2000]:
        feed(data)
    await asyncio.sleep(0)
    out.clear()

    gc.collect()
    gc.disable()
    try:
        per_call = []
        per_block = max(1, block // BATCH)
        for start in range(0, len(batches), per_block):
            chunk = batches[start:start + per_block]
            t0 = now()
            for data in chunk:
                feed(data)
            elapsed = now() - t0
            per_call.append(elapsed / sum(d.count(b"\n") for d in chunk))
            await asyncio.sleep(0)      # let anything the loop owes run, outside the clock
        results["batch_ns"] = statistics.median(per_call)
        _check(out, calls)
        out.clear()

        per_call = []
        for start in range(0, calls, block):
            chunk = lines[start:start + block]
            t0 = now()
            for data in chunk:
                feed(data)
            elapsed = now() - t0
            per_call.append(elapsed / len(chunk))
            await asyncio.sleep(0)
        results["single_ns"] = statistics.median(per_call)
        _check(out, calls)
        out.clear()

        # The JSON work alone, for scale: parse the request, encode the answer.
        loads, dumps, opt = orjson.loads, orjson.dumps, orjson.OPT_APPEND_NEWLINE
        per_call = []
        for start in range(0, calls, block):
            chunk = lines[start:start + block]
            t0 = now()
            for data in chunk:
                msg = loads(data)
                dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {
                    "content": [{"type": "text", "text": msg["params"]["arguments"]["text"]}]}}, option=opt)
            per_call.append((now() - t0) / len(chunk))
        results["orjson_ns"] = statistics.median(per_call)
    finally:
        gc.enable()
    dispatcher.close()
    return results


def _check(out, calls):
    """Every call answered once, with its id, and none failed."""
    data = b"".join(out)
    ids = sorted(int(m) for m in re.findall(rb'"id":(\d+)', data))
    if ids != list(range(1, calls + 1)):
        raise SystemExit(f"dispatch check failed: {len(ids)} answers for {calls} calls")
    if b'"error"' in data or b'"isError":true' in data:
        raise SystemExit("dispatch check failed: some echo calls failed")


def child(calls, block):
    import uvloop

    import bemcp
    results = uvloop.run(_measure(calls, block))
    results["compiled"] = bemcp.USE_EXTENSIONS
    sys.stdout.write(orjson.dumps(results).decode() + "\n")


def run_child(pure, opts):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("BEMCP_NO_EXTENSIONS", None)
    if pure:
        env["BEMCP_NO_EXTENSIONS"] = "1"
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                           "--calls", str(opts.calls), "--block", str(opts.block)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"dispatch child ({'pure' if pure else 'compiled'}) failed:\n{proc.stderr[-2000:]}")
    return orjson.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100_000, help="calls per measurement (default 100000)")
    parser.add_argument("--block", type=int, default=4096, help="calls timed together (default 4096)")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        return child(opts.calls, opts.block)

    env = environment(shlex.join([sys.executable, *sys.argv]))
    runs = {"compiled": [], "pure": []}
    for r in range(opts.rounds):
        order = ("compiled", "pure") if r % 2 == 0 else ("pure", "compiled")
        for variant in order:
            print(f"round {r + 1}/{opts.rounds}: {variant} ...", file=sys.stderr, flush=True)
            runs[variant].append(run_child(variant == "pure", opts))
    compiled_ran = all(r["compiled"] for r in runs["compiled"])
    summary = {v: {k: median([r[k] for r in rs]) for k in ("batch_ns", "single_ns", "orjson_ns")}
               for v, rs in runs.items()}

    c, p = summary["compiled"], summary["pure"]
    rows = [
        ["compiled core" if compiled_ran else "compiled core (NOT BUILT: pure twins ran)",
         num(c["batch_ns"]), num(c["single_ns"]), num(c["orjson_ns"])],
        ["pure twins (BEMCP_NO_EXTENSIONS=1)", num(p["batch_ns"]), num(p["single_ns"]), num(p["orjson_ns"])],
        ["pure / compiled", x(ratio(p["batch_ns"], c["batch_ns"])),
         x(ratio(p["single_ns"], c["single_ns"])), ""],
    ]
    print(f"## In-process dispatch of an echo tools/call (ns per call, median of {opts.rounds} rounds)\n")
    print(table(["core", f"{BATCH} lines per feed", "1 line per feed", "orjson alone"], rows))
    print(f"\n{opts.calls:,} calls per measurement, timed in blocks of {opts.block}; the median block is "
          "reported. 'orjson alone' is parsing the request and encoding the answer, nothing else: "
          "the share of the path that no dispatcher can avoid.\n")
    print(f"Reproducing: `{env['command']}` at commit {env['commit']}; {env['python']}, {env['cpu']}, "
          f"load average {env['load_average']}")
    if opts.json:
        write_json(opts.json, {"environment": env, "options": vars(opts), "summary": summary, "rounds": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
