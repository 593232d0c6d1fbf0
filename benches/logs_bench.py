"""Logs on against logs off: echo throughput with 256 calls in flight (issue 6).

Every round spawns `bemcp serve --no-plugins` twice, in an order rotated from
round to round: once with ``--no-log-files`` and once with every log on
(``--log-dir`` in a temporary directory: tasks.log gets a line per call, perf.log
samples, the writer process runs). Each keeps 256 echo calls in flight for a
fixed time after a warm-up (stdio_bench's pipelined client), and we record:

- calls/s, and the ratio logs-on / logs-off (the issue's goal: at least 0.90);
- the server process's CPU per call (all its threads);
- the log writer process's CPU per call: that work runs beside the server, on
  another core when there is one, and is reported so nothing is hidden.

    python benches/logs_bench.py                 # compiled core, 5 rounds
    python benches/logs_bench.py --pure          # also the pure-Python twins
    python benches/logs_bench.py --rounds 9 --seconds 3

What it does not show: a machine with one core (the writer then competes with
the server for it), tools that do real work (the logs' share shrinks with the
work per call), or the cost of a slow disk (the writer falls behind and drops,
counted, rather than slowing the server).
"""

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time

import _common
import psutil
from _common import Peer, Target, fmt, fmt_ratio, markdown_table, median, ratio, time_limit
from stdio_bench import _pipeline

PYTHON = sys.executable


def targets(log_dir, pure):
    serve = [PYTHON, "-m", "bemcp", "serve", "--no-plugins"]
    found = []
    for core, env in (("", _common.bemcp_env(pure=False)), ("-py", _common.bemcp_env(pure=True))):
        if core and not pure:
            continue
        found.append(Target(f"logs-off{core}", serve + ["--no-log-files"], env,
                            description="bemcp serve --no-plugins --no-log-files"))
        found.append(Target(f"logs-on{core}", serve + ["--log-dir", log_dir], env,
                            description="bemcp serve --no-plugins --log-dir TMP (every log on)"))
    return found


def writer_cpu_seconds(server_pid):
    """CPU of the server's child processes (the log writer), in seconds."""
    total = 0.0
    try:
        for child in psutil.Process(server_pid).children(recursive=True):
            try:
                t = child.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def run_once(target, opts):
    with Peer(target) as peer:
        peer.initialize(timeout=opts.phase_timeout)
        time.sleep(0.3)   # the writer process starts in the background
        with time_limit(opts.phase_timeout, f"{target.name} warm-up"):
            _pipeline(peer, opts.warmup, opts.window, keep=False)
        gc.collect()
        gc.disable()
        try:
            server0, writer0 = peer.cpu_seconds(), writer_cpu_seconds(peer.proc.pid)
            with time_limit(opts.seconds + opts.phase_timeout, f"{target.name} pipelined"):
                sent, answered, wall, client_cpu, _ = _pipeline(peer, opts.seconds, opts.window, keep=False)
            time.sleep(0.3)   # let the writer catch up with what it was sent
            server1, writer1 = peer.cpu_seconds(), writer_cpu_seconds(peer.proc.pid)
        finally:
            gc.enable()
        if answered != sent:
            raise RuntimeError(f"{target.name}: {answered} answers for {sent} requests")
        return {"calls_per_s": answered / wall,
                "server_cpu_us": (server1 - server0) / answered * 1e6,
                "writer_cpu_us": (writer1 - writer0) / answered * 1e6,
                "client_cpu_us": client_cpu / answered * 1e6}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed phase per run")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--pure", action="store_true", help="also measure the pure-Python twins")
    parser.add_argument("--phase-timeout", type=float, default=60.0)
    parser.add_argument("--json", metavar="FILE")
    opts = parser.parse_args(argv)

    log_dir = tempfile.mkdtemp(prefix="bemcp-logs-bench-")
    env = _common.environment(_common.command_line())
    chosen = targets(log_dir, opts.pure)
    try:
        results, errors = _common.run_rounds(chosen, opts.rounds, lambda t: run_once(t, opts))
        if errors:   # a ratio needs both sides of every pair
            raise SystemExit(f"logs_bench: runs failed: {errors}")
        written = sum(os.path.getsize(os.path.join(log_dir, n)) for n in os.listdir(log_dir))
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)

    summary = {name: {k: median([r[k] for r in rounds]) for k in rounds[0]}
               for name, rounds in results.items() if rounds}
    out = [f"## Logs on against logs off: echo @{opts.window} in flight (median of {opts.rounds} rounds)", ""]
    rows = []
    for name, s in summary.items():
        base = summary.get(name.replace("logs-on", "logs-off"))
        rows.append([name, fmt(s["calls_per_s"]), fmt_ratio(ratio(s["calls_per_s"], base["calls_per_s"])),
                     fmt(s["server_cpu_us"], 2), fmt(s["writer_cpu_us"], 2), fmt(s["client_cpu_us"], 2)])
    out.append(markdown_table(["target", "calls/s", "vs logs off", "server CPU µs/call",
                               "log writer CPU µs/call", "client CPU µs/call"], rows))
    out.append("")
    for suffix in ("", "-py"):
        on, off = summary.get(f"logs-on{suffix}"), summary.get(f"logs-off{suffix}")
        if on and off:
            share = on["calls_per_s"] / off["calls_per_s"]
            out.append(f"- logs on{' (pure twins)' if suffix else ''}: {share:.1%} of logs-off throughput "
                       f"(goal: at least 90%): {'met' if share >= 0.9 else 'NOT met'}")
    out += [f"- the logs-on runs wrote {written / 1e6:.1f} MB into the log directory (rotated and capped)",
            "", _common.reproducing_block(env)]
    print("\n".join(out))
    if opts.json:
        _common.write_json(opts.json, {"environment": env, "options": vars(opts),
                                       "summary": summary, "rounds": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
