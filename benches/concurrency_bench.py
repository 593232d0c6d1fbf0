"""10,000 concurrent tool calls that each sleep 1 s, all sent at once.

Issue 4's target: every call answered within 1.5 s of wall time, with RSS growth
≤ 30 MB over the idle baseline, every call tracked by the watchdog. The bemcp
server is benches/sleep_server.py, written with the public API only and default
settings. The peers are the official SDKs' servers in benches/peers/ (their
`sleep` tools).

Per target and round: spawn, initialize, let it settle, read the idle RSS; write
all the calls in one go (from a thread), read every answer, sampling the server's
RSS every 10 ms meanwhile. Figures: wall time from the first byte written to the
last answer read; peak RSS minus idle RSS. For bemcp, one more call sent 0.5 s
in (`in_flight`) reports how many requests the in-flight table holds and how many
have a deadline armed.

    python benches/concurrency_bench.py [--targets bemcp,bemcp-py,sdk,ts] [--rounds 3] [--json FILE]
"""

import argparse
import collections
import os
import re
import sys
import threading
import time

import orjson

import _common
from _common import (PEERS, PYTHON, Peer, Target, fmt, log, markdown_table, median,
                     time_limit)

FIRST_ID = 1000
PROBE_ID = 999


def targets():
    server = os.path.join(_common.BENCHES, "sleep_server.py")
    node_modules = os.path.join(PEERS, "node_modules", "@modelcontextprotocol", "sdk")
    return [
        Target("bemcp", [PYTHON, server], _common.bemcp_env(pure=False),
               description="benches/sleep_server.py, compiled core"
               + ("" if _common.compiled_core_available() else " (NOT BUILT: ran the pure twins)")),
        Target("bemcp-py", [PYTHON, server], _common.bemcp_env(pure=True),
               description="benches/sleep_server.py, pure twins (BEMCP_NO_EXTENSIONS=1)"),
        Target("sdk", [PYTHON, os.path.join(PEERS, "sdk_echo.py")],
               description=f"official Python SDK {_common.package_version('mcp')}, benches/peers/sdk_echo.py"),
        Target("ts", ["node", os.path.join(PEERS, "ts_echo.mjs")], needs=[node_modules],
               skip_hint="run benches/peers/setup.sh",
               description=f"TypeScript SDK {_common.ts_sdk_version()}, benches/peers/ts_echo.mjs"),
    ]


class RssSampler(threading.Thread):
    """The server's peak RSS, sampled every 10 ms until stopped."""

    def __init__(self, peer):
        super().__init__(daemon=True)
        self.peer = peer
        self.peak = 0.0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                self.peak = max(self.peak, self.peer.rss_mb())
            except (OSError, KeyError):
                return
            self.done.wait(0.01)

    def stop(self):
        self.done.set()
        self.join()
        return self.peak


def reset_peak_rss(peer):
    """Reset the kernel's RSS high-water mark (VmHWM) of the server; False if not allowed."""
    try:
        with open(f"/proc/{peer.proc.pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_once(target, opts, has_probe):
    calls = b"".join(_common.encode_call(FIRST_ID + i, "sleep", {"seconds": opts.seconds})
                     for i in range(opts.calls))
    probe = _common.encode_call(PROBE_ID, "in_flight", {})
    expected = opts.calls + (1 if has_probe else 0)
    with Peer(target) as peer:
        peer.initialize(timeout=opts.timeout)
        time.sleep(0.5)
        idle = peer.rss_mb()
        exact_peak = reset_peak_rss(peer)
        sampler = RssSampler(peer)
        sampler.start()

        def send():
            peer.write(calls)
            if has_probe:
                time.sleep(max(0.0, t0 + opts.probe_at - time.perf_counter()))
                peer.write(probe)

        writer = threading.Thread(target=send, daemon=True)
        chunks, lines, last = [], 0, None
        t0 = time.perf_counter()
        writer.start()
        with time_limit(opts.timeout, f"{target.name}: {opts.calls} sleeping calls"):
            buf, view = peer.buffer, peer.view
            while lines < expected:
                n = os.readv(peer.rfd, (buf,))
                if not n:
                    raise EOFError(f"{target.name} closed stdout{peer.stderr_hint()}")
                lines += buf.count(b"\n", 0, n)
                chunks.append(view[:n].tobytes())
                last = time.perf_counter()
        writer.join()
        peak = sampler.stop()
        if exact_peak:
            peak = max(peak, peer.peak_rss_mb())
    wall = last - t0
    return check(target, opts, b"".join(chunks), has_probe) | {
        "wall_s": wall, "idle_rss_mb": idle, "peak_rss_mb": peak, "rss_growth_mb": peak - idle}


def check(target, opts, data, has_probe):
    """Every call answered once, none failed; the probe's figures if there was one."""
    figures = {}
    ids = collections.Counter()
    failed = 0
    for line in data.splitlines():
        msg = orjson.loads(line)
        if "id" not in msg:
            continue
        ids[msg["id"]] += 1
        if msg["id"] == PROBE_ID:
            result = msg.get("result", {})
            payload = result.get("structuredContent") or orjson.loads(result["content"][0]["text"])
            figures["in_flight"] = payload["in_flight"]
            figures["with_deadline"] = payload["with_deadline"]
        elif "error" in msg or msg.get("result", {}).get("isError"):
            failed += 1
    answered = sum(n for id, n in ids.items() if id != PROBE_ID)
    if failed or answered != opts.calls or any(n != 1 for n in ids.values()):
        first_error = re.search(rb'.{0,200}"(error|isError":true).{0,200}', data)
        raise RuntimeError(f"{target.name}: {answered} answers for {opts.calls} calls, {failed} failed"
                           + (f": {first_error.group(0)!r}" if first_error else ""))
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="", help="comma-separated: bemcp, bemcp-py, sdk, ts (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=1.0, help="each call's sleep (1.0)")
    parser.add_argument("--probe-at", type=float, default=0.5, help="when to ask bemcp for its in-flight count")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", metavar="FILE")
    opts = parser.parse_args(argv)

    chosen = _common.select_targets(targets(), opts.targets)
    skipped = {t.name: t.missing() for t in chosen if t.missing()}
    for name, why in skipped.items():
        log(f"skipping {name}: {why}")
    chosen = [t for t in chosen if t.name not in skipped]
    env = _common.environment(_common.command_line())
    results, errors = _common.run_rounds(chosen, opts.rounds,
                                         lambda t: run_once(t, opts, t.name.startswith("bemcp")))

    keys = ("wall_s", "idle_rss_mb", "peak_rss_mb", "rss_growth_mb", "in_flight", "with_deadline")
    summary = {name: {k: median([r.get(k) for r in rs]) for k in keys} for name, rs in results.items() if rs}
    rows = [[name, fmt(s["wall_s"], 2), fmt(s["idle_rss_mb"], 1), fmt(s["peak_rss_mb"], 1),
             fmt(s["rss_growth_mb"], 1), fmt(s["in_flight"]), fmt(s["with_deadline"])]
            for name, s in summary.items()]
    print(f"## {opts.calls:,} concurrent calls sleeping {opts.seconds:g} s, sent at once "
          f"(median of {opts.rounds} rounds)\n")
    print(markdown_table(["target", "wall s", "idle RSS MB", "peak RSS MB", "RSS growth MB",
                          f"in flight at {opts.probe_at:g} s", "with deadline"], rows))
    core = summary.get("bemcp")
    if core and core["wall_s"] is not None:
        print(f"\nIssue 4's target (bemcp): all answered within 1.5 s: {core['wall_s']:.2f} s, "
              f"{'met' if core['wall_s'] <= 1.5 else 'not met'}; RSS growth ≤ 30 MB: "
              f"{core['rss_growth_mb']:.1f} MB, {'met' if core['rss_growth_mb'] <= 30 else 'not met'}.")
    print("\nTargets:\n")
    for t in chosen:
        print(f"- `{t.name}`: {t.description}")
    for name, why in skipped.items():
        print(f"- `{name}` skipped: {why}")
    for name, messages in errors.items():
        print(f"- `{name}` failed in {len(messages)} of {opts.rounds} rounds: {messages[0]}")
    print("\nWall time runs from the first byte written to the last answer read, so it includes "
          "writing and parsing every request; peak RSS is the kernel's high-water mark (VmHWM) reset just before the burst, or where that is not allowed, the highest of samples every 10 ms. "
          "'in flight' counts the requests the table held when the probe call ran (the probe included).\n")
    print(_common.reproducing_block(env))
    if opts.json:
        _common.write_json(opts.json, {"environment": env, "options": vars(opts), "summary": summary,
                                       "rounds": results, "skipped": skipped, "errors": dict(errors)})
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
