"""End-to-end stdio benchmark: bemcp against a floor and the official SDKs, in one run.

Every round spawns each target afresh (in a rotated order, so slow drift of the
machine spreads over all targets) and measures, over real pipes:

- cold start: from spawn to the initialize answer (ms);
- RSS of the server process 0.1 s after initialize (MB, /proc/PID/status VmRSS);
- closed-loop latency of an echo tools/call, one request in flight (p50/p90/p99, µs);
- pipelined throughput with 256 requests in flight (calls/s), with the load
  client's own CPU time per call, to show the client is not what limits it.

The table reports the median over rounds of each figure, and ratios to the floor
measured in the same run (benches/floor.py: a process that writes one canned line
for each line it reads; ``floor-batched``, one write per read, is shown beside it
as a stricter yardstick). See benches/README.md for what these figures do not show.

    python benches/stdio_bench.py                      # all targets, 5 rounds
    python benches/stdio_bench.py --targets floor,bemcp,bemcp-py --rounds 3
    python benches/stdio_bench.py --target 'bemcp-nowd=python -m bemcp serve --max-inflight 0'
    python benches/stdio_bench.py --json results/stdio.json

More scenarios plug in with ``@scenario(...)`` below: a function of a started
Peer and the options that returns a dict of figures, declared as Metrics.
"""

import argparse
import collections
import gc
import os
import re
import sys
import time
from dataclasses import dataclass

import _common
from _common import (Peer, client_cpu_seconds, encode_call, fmt, fmt_ratio,
                     log, markdown_table, median, percentile, ratio, time_limit)

ECHO_ARGS = {"text": "hi"}
WINDOW = 256


# -- scenarios and their figures -------------------------------------------------------


@dataclass
class Metric:
    key: str
    label: str
    digits: int = 0
    vs_floor: bool = False    # quote as a ratio to the floor
    in_table: bool = True


@dataclass
class Scenario:
    name: str
    run: object               # run(peer, opts) -> {metric key: value}
    metrics: list
    default: bool = True


SCENARIOS = {}


def scenario(name, metrics, default=True):
    """Register a scenario: ``run(peer, opts)`` is called on an initialized server."""
    def register(fn):
        SCENARIOS[name] = Scenario(name, fn, metrics, default)
        return fn
    return register


# Measured for every target at spawn, whatever scenarios run.
SPAWN_METRICS = [
    Metric("cold_start_ms", "cold start ms", 1, vs_floor=True),
    Metric("rss_mb", "RSS MB", 1),
]


@scenario("latency", [
    Metric("p50_us", "p50 µs", 0, vs_floor=True),
    Metric("p90_us", "p90 µs", 0),
    Metric("p99_us", "p99 µs", 0),
])
def closed_loop_latency(peer, opts):
    """One echo tools/call in flight at a time; the time from write to answer."""
    count, warmup = opts.latency_count, opts.latency_warmup
    lines = [encode_call(10 + i, "echo", ECHO_ARGS) for i in range(warmup + count)]
    samples = []
    write, read_response, now = peer.write, peer.read_response, time.perf_counter_ns
    with time_limit(opts.phase_timeout, f"{peer.target.name} latency"):
        for i, line in enumerate(lines):
            t0 = now()
            write(line)
            read_response(10 + i)
            if i >= warmup:
                samples.append(now() - t0)
    samples.sort()
    return {"p50_us": percentile(samples, 50) / 1e3, "p90_us": percentile(samples, 90) / 1e3,
            "p99_us": percentile(samples, 99) / 1e3}


class RequestRing:
    """Pre-encoded echo calls with ids FIRST..FIRST+size-1, laid out twice so any
    run of up to ``size`` consecutive requests is one contiguous slice."""

    FIRST = 1_000_000
    SIZE = 1 << 16

    def __init__(self, size=SIZE):
        self.size = size
        lines = [encode_call(self.FIRST + i, "echo", ECHO_ARGS) for i in range(size)]
        self.data = memoryview(b"".join(lines) * 2)
        offsets = [0]
        for line in lines + lines:
            offsets.append(offsets[-1] + len(line))
        self.offsets = offsets

    def chunk(self, position, count):
        """Requests ``position .. position+count-1`` (positions grow without bound)."""
        start = position % self.size
        return self.data[self.offsets[start]:self.offsets[start + count]]

    def expected_ids(self, sent):
        """How often each id was sent after ``sent`` requests from position 0."""
        rounds, rest = divmod(sent, self.size)
        counts = collections.Counter()
        if rounds:
            counts.update({self.FIRST + i: rounds for i in range(self.size)})
        counts.update(self.FIRST + i for i in range(rest))
        return counts


_ring = None
_ID_RE = re.compile(rb'"id":(\d+)')


def _pipeline(peer, seconds, window, keep):
    """Keep ``window`` calls in flight for ``seconds``, then collect the stragglers.

    Returns (sent, answered, wall seconds, client CPU seconds, chunks read).
    """
    global _ring
    if _ring is None:
        _ring = RequestRing()
    ring = _ring
    readv, write, rfd, wfd = os.readv, os.write, peer.rfd, peer.wfd
    buf, received = peer.buffer, peer.view
    target = (buf,)
    count = buf.count
    chunks = []
    keep_chunk = chunks.append if keep else None
    sent = answered = 0
    cpu0 = client_cpu_seconds()
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    now = time.perf_counter
    sending = True
    while True:
        if sending:
            room = window - (sent - answered)
            if room > 0:
                out = ring.chunk(sent, room)
                while out:
                    out = out[write(wfd, out):]
                sent += room
        if answered >= sent:
            break
        n = readv(rfd, target)
        if not n:
            raise EOFError(f"{peer.target.name} closed stdout{peer.stderr_hint()}")
        answered += count(b"\n", 0, n)
        if keep_chunk is not None:
            keep_chunk(received[:n].tobytes())
        if sending and now() >= stop_at:
            sending = False
    wall = time.perf_counter() - t0
    cpu = client_cpu_seconds() - cpu0
    return sent, answered, wall, cpu, chunks


@scenario("pipelined", [
    Metric("calls_per_s", "calls/s @256", 0, vs_floor=True),
    Metric("client_cpu_us", "client CPU µs/call", 2),
    Metric("client_busy", "client busy %", 0),
    Metric("server_cpu_us", "server CPU µs/call", 2),
])
def pipelined_throughput(peer, opts):
    """``WINDOW`` echo calls in flight for a fixed time; every answer's id checked afterwards."""
    name = peer.target.name
    with time_limit(opts.phase_timeout, f"{name} pipelined warm-up"):
        _pipeline(peer, opts.pipeline_warmup, opts.window, keep=False)
    # Leftover bytes of the previous phase would be counted as answers.
    if peer.pending:
        raise RuntimeError(f"{name}: unexpected data before the pipelined phase: {peer.pending[:200]!r}")
    gc.collect()
    gc.disable()   # a collection in the client would be charged to the server
    try:
        server_cpu0 = peer.cpu_seconds()
        with time_limit(opts.pipeline_seconds + opts.phase_timeout, f"{name} pipelined"):
            sent, answered, wall, cpu, chunks = _pipeline(peer, opts.pipeline_seconds, opts.window, keep=True)
        server_cpu = peer.cpu_seconds() - server_cpu0
    finally:
        gc.enable()
    # Check outside the clock: one answer per request, and (but for the canned
    # floor) exactly the ids that were sent, each as often as it was sent.
    data = b"".join(chunks)
    if answered != sent or not data.endswith(b"\n"):
        raise RuntimeError(f"{name}: {answered} lines for {sent} requests")
    if not peer.target.canned:
        got = collections.Counter(int(m) for m in _ID_RE.findall(data))
        if got != _ring.expected_ids(sent):
            raise RuntimeError(f"{name}: the answers' ids do not match the requests' ids")
        if data.count(b'"error"') or data.count(b'"isError":true'):
            raise RuntimeError(f"{name}: some echo calls failed: {data[:300]!r}")
    return {"calls_per_s": answered / wall, "client_cpu_us": cpu / answered * 1e6,
            "client_busy": 100 * cpu / wall, "server_cpu_us": server_cpu / answered * 1e6,
            "calls": answered}


# -- running -------------------------------------------------------------------


def run_target(target, scenarios, opts):
    """Spawn ``target`` once, measure start-up, then run each scenario on it."""
    figures = {}
    with Peer(target) as peer:
        figures["cold_start_ms"] = peer.initialize(timeout=opts.phase_timeout) * 1e3
        time.sleep(0.1)   # let start-up work scheduled after the answer settle
        figures["rss_mb"] = peer.rss_mb()
        for s in scenarios:
            figures.update(s.run(peer, opts))
        figures["rss_after_mb"] = peer.rss_mb()
    return figures


def summarize(results):
    """Median over rounds of every figure."""
    summary = {}
    for name, rounds in results.items():
        keys = {k for r in rounds for k in r}
        summary[name] = {k: median([r.get(k) for r in rounds]) for k in sorted(keys)}
    return summary


def report(targets, scenarios, summary, opts, env, skipped, errors):
    metrics = SPAWN_METRICS + [m for s in scenarios for m in s.metrics]
    shown = [m for m in metrics if m.in_table]
    names = [t.name for t in targets if summary.get(t.name)]
    out = [f"## stdio: echo tools/call over pipes (median of {opts.rounds} rounds)", ""]
    rows = [[n, *(fmt(summary[n].get(m.key), m.digits) for m in shown)] for n in names]
    out.append(markdown_table(["target", *(m.label for m in shown)], rows))

    floor = summary.get("floor")
    ratio_metrics = [m for m in metrics if m.vs_floor]
    if floor and ratio_metrics:
        out += ["", "Ratios to the floor measured in the same run "
                "(latency and start-up: lower is better; throughput: higher is better):", ""]
        rows = [[n, *(fmt_ratio(ratio(summary[n].get(m.key), floor.get(m.key))) for m in ratio_metrics)]
                for n in names if n != "floor"]
        out.append(markdown_table(["target", *(f"{m.label.split(' ')[0]} vs floor" for m in ratio_metrics)], rows))

    core, pure = summary.get("bemcp"), summary.get("bemcp-py")
    if core and pure and ratio_metrics:
        out += ["", "Compiled core against the pure twins (bemcp / bemcp-py; same algorithm, only compilation differs):", ""]
        out.append(markdown_table([m.label for m in ratio_metrics],
                                  [[fmt_ratio(ratio(core.get(m.key), pure.get(m.key))) for m in ratio_metrics]],
                                  "r" * len(ratio_metrics)))

    goals = goal_rows(summary, opts.window == WINDOW)
    if goals:
        out += ["", "Targets from issue 2 (checked on this run's medians):", ""]
        out.append(markdown_table(["goal", "measured", "met"], goals, "lrl"))

    out += ["", "Targets:", ""]
    for t in targets:
        line = f"- `{t.name}`: {t.description}"
        if t.notes:
            line += f" ({'; '.join(t.notes)})"
        out.append(line)
    for name, why in skipped.items():
        out.append(f"- `{name}` skipped: {why}")
    for name, messages in errors.items():
        out.append(f"- `{name}` failed in {len(messages)} of {opts.rounds} rounds: {messages[0]}")
    out += ["", f"Load client: one Python process, {opts.latency_count} closed-loop calls after "
            f"{opts.latency_warmup} warm-up; {opts.window} in flight for {opts.pipeline_seconds:g} s "
            f"after {opts.pipeline_warmup:g} s warm-up. 'client busy' is the load client's CPU time "
            "over the wall time of the pipelined phase: well under 100% means the client was not the limit.",
            "", _common.reproducing_block(env)]
    return "\n".join(out)


def goal_rows(summary, issue_window):
    """Issue 2's performance targets, on this run's medians (throughput ones only at its window of 256)."""
    floor, core, pure = summary.get("floor"), summary.get("bemcp"), summary.get("bemcp-py")
    rows = []

    def check(goal, value, ok, shown):
        if value is not None:
            rows.append([goal, shown, "yes" if ok else "no"])

    if floor and core:
        r = ratio(core.get("p50_us"), floor.get("p50_us"))
        check("echo p50 ≤ 1.15x floor", r, r is not None and r <= 1.15, fmt_ratio(r))
        r = ratio(core.get("calls_per_s"), floor.get("calls_per_s")) if issue_window else None
        check("calls/s @256 ≥ 0.7x floor", r, r is not None and r >= 0.7, fmt_ratio(r))
        r = ratio(core.get("cold_start_ms"), floor.get("cold_start_ms"))
        check("cold start ≤ 2x floor", r, r is not None and r <= 2.0, fmt_ratio(r))
    if core and pure and issue_window:
        r = ratio(core.get("calls_per_s"), pure.get("calls_per_s"))
        check("compiled ≥ 1.3x pure twin, calls/s @256", r, r is not None and r >= 1.3, fmt_ratio(r))
    reference = summary.get("uvloop-eager")
    if core and reference and issue_window:
        r = ratio(core.get("calls_per_s"), reference.get("calls_per_s"))
        check("calls/s @256 above the plain-uvloop eager reference", r, r is not None and r > 1.0,
              fmt_ratio(r))
    if core and core.get("rss_mb") is not None:
        check("RSS after initialize ≤ 25 MB", core["rss_mb"], core["rss_mb"] <= 25, f"{core['rss_mb']:.1f} MB")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="", help="comma-separated (default: all): "
                        "floor, bemcp, bemcp-py, sdk, ts, and any --target")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=COMMAND",
                        help="an extra target: a command serving MCP on stdio (repeatable)")
    parser.add_argument("--canned-target", action="append", default=[], metavar="NAME=COMMAND",
                        help="an extra target that, like the floor, answers each line with a fixed line "
                             "(ids not checked, no handshake)")
    parser.add_argument("--scenarios", default="", help=f"comma-separated (default: {', '.join(n for n, s in SCENARIOS.items() if s.default)})")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-count", type=int, default=2000)
    parser.add_argument("--latency-warmup", type=int, default=200)
    parser.add_argument("--window", type=int, default=WINDOW, help="requests in flight when pipelined (256)")
    parser.add_argument("--pipeline-seconds", type=float, default=1.0)
    parser.add_argument("--pipeline-warmup", type=float, default=0.3)
    parser.add_argument("--phase-timeout", type=float, default=60.0, help="give up on a target stuck this long")
    parser.add_argument("--json", metavar="FILE", help="write every round's raw figures here")
    opts = parser.parse_args(argv)

    if not 1 <= opts.window <= RequestRing.SIZE:
        parser.error(f"--window must be 1..{RequestRing.SIZE}")
    for s in SCENARIOS.values():
        for m in s.metrics:
            if m.key == "calls_per_s":
                m.label = f"calls/s @{opts.window}"
    all_targets = (_common.standard_targets() + [_common.parse_extra_target(s) for s in opts.target]
                   + [_common.parse_extra_target(s, canned=True) for s in opts.canned_target])
    chosen = _common.select_targets(all_targets, opts.targets)
    skipped = {t.name: t.missing() for t in chosen if t.missing()}
    for name, why in skipped.items():
        log(f"skipping {name}: {why}")
    targets = [t for t in chosen if t.name not in skipped]
    if opts.scenarios:
        unknown = [n for n in opts.scenarios.split(",") if n not in SCENARIOS]
        if unknown:
            raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
        scenarios = [SCENARIOS[n] for n in opts.scenarios.split(",")]
    else:
        scenarios = [s for s in SCENARIOS.values() if s.default]
    if not targets:
        raise SystemExit("no target to run")

    env = _common.environment(_common.command_line())
    results, errors = _common.run_rounds(targets, opts.rounds, lambda t: run_target(t, scenarios, opts))
    summary = summarize(results)
    print(report(targets, scenarios, summary, opts, env, skipped, errors))
    if opts.json:
        _common.write_json(opts.json, {"environment": env, "options": vars(opts), "summary": summary,
                                       "rounds": results, "skipped": skipped, "errors": errors})
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
