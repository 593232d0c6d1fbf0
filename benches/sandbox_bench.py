"""What `--sandbox` costs a command: `run_command ['/bin/echo', 'hi']` over stdio, with and
without it, in one run.

Two `bemcp serve --no-plugins --no-log-files` servers, one of them with `--sandbox`
(its root: the checkout), answer calls in turn, one each, the first of the pair
alternating: both see the same machine from one call to the next, which blocks of calls
do not on a shared machine. The table gives medians over rounds of each round's
percentiles. The target: sandboxed p50 ≤ 1.15x the plain p50.

What it shows: the per-spawn price of the exec helper (an extra exec of a small static
program, no_new_privs, dropping capabilities, the seccomp filter, landlock_restrict_self).
What it does not: the cost inside a program that the wall refuses (nothing: a refused
open is one failed system call), or the once-per-start cost of building the ruleset
(tens of milliseconds, paid before the first call).

    python benches/sandbox_bench.py [--rounds 5] [--count 200] [--json FILE]
"""

import argparse
import sys
import time

import _common
from _common import Peer, Target, fmt, fmt_ratio, log, markdown_table, median, ratio, time_limit
from command_bench import ARGV, check_answer, stats, stdio_block

FLAGS = ["--no-plugins", "--no-log-files"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=200, help="calls per block (default 200)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", metavar="FILE")
    opts = parser.parse_args(argv)

    serve = [_common.PYTHON, "-m", "bemcp", "serve", *FLAGS]
    targets = {"plain": Target("plain", serve, _common.bemcp_env(pure=False)),
               "--sandbox": Target("--sandbox", serve + ["--sandbox"], _common.bemcp_env(pure=False))}
    env = _common.environment(_common.command_line())
    arguments = {"command": ARGV}
    runs = {name: [] for name in targets}
    with Peer(targets["plain"]) as plain, Peer(targets["--sandbox"]) as boxed:
        peers = {"plain": plain, "--sandbox": boxed}
        for peer in peers.values():
            peer.initialize()
            stdio_block(peer, arguments, opts.warmup, 10)
        next_id = 100_000
        for r in range(opts.rounds):
            log(f"round {r + 1}/{opts.rounds} ...")
            samples = {name: [] for name in peers}
            order = list(peers.items())
            with time_limit(60 + opts.count, "sandbox round"):
                for i in range(opts.count):
                    for name, peer in (order if i % 2 else order[::-1]):
                        line = _common.encode_call(next_id, "run_command", arguments)
                        t0 = time.perf_counter_ns()
                        peer.write(line)
                        msg = peer.read_response(next_id)
                        samples[name].append(time.perf_counter_ns() - t0)
                        if i == 0:
                            check_answer(msg)
                        next_id += 1
            for name, values in samples.items():
                runs[name].append(stats(values))

    summary = {name: {k: median([r[k] for r in rs]) for k in ("p50_us", "p90_us", "p99_us")}
               for name, rs in runs.items()}
    base = summary["plain"]["p50_us"]
    rows = [[f"bemcp serve {name}" if name != "plain" else "bemcp serve", fmt(s["p50_us"]),
             fmt(s["p90_us"]), fmt(s["p99_us"]), fmt_ratio(ratio(s["p50_us"], base))]
            for name, s in summary.items()]
    print(f"## run_command {ARGV} round trip, with and without --sandbox "
          f"(µs, median of {opts.rounds} rounds of {opts.count} calls)\n")
    print(markdown_table(["server", "p50 µs", "p90 µs", "p99 µs", "p50 vs plain"], rows))
    r = ratio(summary["--sandbox"]["p50_us"], base)
    print(f"\nTarget, sandboxed p50 ≤ 1.15x plain p50: {fmt_ratio(r)}, {'met' if r <= 1.15 else 'not met'}.\n")
    print(_common.reproducing_block(env))
    if opts.json:
        _common.write_json(opts.json, {"environment": env, "options": vars(opts), "summary": summary,
                                       "rounds": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
