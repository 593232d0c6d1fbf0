"""run_command round trip over stdio against Python's own subprocess.run, in one run.

Issue 3's target: `run_command ['/bin/echo', 'hi']` over stdio, p50 ≤ 1.2x the p50
of `subprocess.run(['/bin/echo', 'hi'])` measured in the same run. Blocks of each
kind alternate within every round (bemcp over stdio, subprocess.run in this
process, and for reference asyncio's create_subprocess_exec on uvloop), so both
sides see the same machine; the table gives medians over rounds of each block's
percentiles.

If `bemcp serve` offers no run_command tool yet (found with tools/list), the
script says so and still reports the local reference figures.

    python benches/command_bench.py [--rounds 5] [--count 200] [--json FILE]
"""

import argparse
import asyncio
import shlex
import subprocess
import sys
import time

import orjson

import _common
from _common import Peer, Target, fmt, fmt_ratio, log, markdown_table, median, percentile, ratio, time_limit

ARGV = ["/bin/echo", "hi"]


def command_arguments(tool):
    """Arguments for running ARGV, shaped by the tool's inputSchema."""
    props = tool.get("inputSchema", {}).get("properties", {})
    for key in ("argv", "command", "cmd", "args"):
        if key in props:
            schema = props[key]
            kinds = {schema.get("type")} if isinstance(schema.get("type"), str) else set(schema.get("type") or ())
            kinds |= {s.get("type") for s in [*schema.get("anyOf", ()), *schema.get("oneOf", ())] if isinstance(s, dict)}
            if "array" in kinds or not kinds - {None}:
                return {key: ARGV}
            return {key: " ".join(ARGV)}
    raise SystemExit(f"run_command's inputSchema has no argv/command property: {props}; "
                     "pass --arguments '{...}'")


def stdio_block(peer, arguments, count, first_id):
    samples = []
    with time_limit(60 + count, "run_command block"):
        for i in range(count):
            line = _common.encode_call(first_id + i, "run_command", arguments)
            t0 = time.perf_counter_ns()
            peer.write(line)
            msg = peer.read_response(first_id + i)
            samples.append(time.perf_counter_ns() - t0)
            if i == 0:
                check_answer(msg)
    return samples


def check_answer(msg):
    """The first answer of each block: a result that mentions the output "hi"."""
    result = msg.get("result")
    if not isinstance(result, dict) or result.get("isError") or b"hi" not in orjson.dumps(result):
        raise SystemExit(f"run_command did not run {ARGV}: {msg}")


def subprocess_block(count):
    samples = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        proc = subprocess.run(ARGV, capture_output=True)
        samples.append(time.perf_counter_ns() - t0)
        assert proc.stdout == b"hi\n"
    return samples


def asyncio_block(loop, count):
    async def run():
        samples = []
        for _ in range(count):
            t0 = time.perf_counter_ns()
            proc = await asyncio.create_subprocess_exec(*ARGV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, _ = await proc.communicate()
            samples.append(time.perf_counter_ns() - t0)
            assert out == b"hi\n"
        return samples
    return loop.run_until_complete(run())


def stats(samples):
    samples = sorted(samples)
    return {"p50_us": percentile(samples, 50) / 1e3, "p90_us": percentile(samples, 90) / 1e3,
            "p99_us": percentile(samples, 99) / 1e3}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=200, help="calls per block (default 200)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--arguments", help="run_command arguments as JSON (default: from its inputSchema)")
    parser.add_argument("--serve-args", default="", help="extra `bemcp serve` flags")
    parser.add_argument("--server", metavar="COMMAND", help="serve with this command instead of `bemcp serve`")
    parser.add_argument("--json", metavar="FILE")
    opts = parser.parse_args(argv)

    flags, _ = _common.bemcp_serve_flags(("--no-log-files",))   # plugins stay on: run_command may be one
    target = Target("bemcp", [_common.PYTHON, "-m", "bemcp", "serve", *flags, *opts.serve_args.split()],
                    _common.bemcp_env(pure=False))
    if opts.server:
        target.argv = shlex.split(opts.server)
    env = _common.environment(_common.command_line())
    import uvloop
    loop = uvloop.new_event_loop()
    runs = {"bemcp run_command (stdio)": [], "subprocess.run": [], "asyncio create_subprocess_exec (uvloop)": []}
    missing = None
    with Peer(target) as peer:
        peer.initialize()
        tools = {t["name"]: t for t in peer.list_tools()}
        if "run_command" not in tools:
            missing = "`bemcp serve` has no run_command tool (tools/list offers: " + ", ".join(sorted(tools)) + ")"
            log(missing)
            runs.pop("bemcp run_command (stdio)")
        else:
            arguments = orjson.loads(opts.arguments) if opts.arguments else command_arguments(tools["run_command"])
            stdio_block(peer, arguments, opts.warmup, 10)
        subprocess_block(opts.warmup)
        asyncio_block(loop, opts.warmup)
        next_id = 100_000
        for r in range(opts.rounds):
            log(f"round {r + 1}/{opts.rounds} ...")
            blocks = [("subprocess.run", lambda: subprocess_block(opts.count)),
                      ("asyncio create_subprocess_exec (uvloop)", lambda: asyncio_block(loop, opts.count))]
            if missing is None:
                blocks.insert(0, ("bemcp run_command (stdio)",
                                  lambda first=next_id: stdio_block(peer, arguments, opts.count, first)))
                next_id += opts.count
            if r % 2:
                blocks.reverse()
            for name, run in blocks:
                runs[name].append(stats(run()))
    loop.close()

    summary = {name: {k: median([r[k] for r in rs]) for k in ("p50_us", "p90_us", "p99_us")}
               for name, rs in runs.items()}
    base = summary["subprocess.run"]["p50_us"]
    rows = [[name, fmt(s["p50_us"]), fmt(s["p90_us"]), fmt(s["p99_us"]), fmt_ratio(ratio(s["p50_us"], base))]
            for name, s in summary.items()]
    print(f"## run_command {ARGV} round trip (µs, median of {opts.rounds} rounds of {opts.count} calls)\n")
    print(markdown_table(["path", "p50 µs", "p90 µs", "p99 µs", "p50 vs subprocess.run"], rows))
    print()
    if missing:
        print(f"Not measured: {missing}.")
    else:
        r = ratio(summary["bemcp run_command (stdio)"]["p50_us"], base)
        print(f"Issue 3's target, run_command p50 ≤ 1.2x subprocess.run p50: {fmt_ratio(r)}, "
              f"{'met' if r <= 1.2 else 'not met'}.")
    print("\nThe stdio figure includes the JSON-RPC round trip over pipes; the other two rows spawn "
          "from this process with no protocol at all.\n")
    print(_common.reproducing_block(env))
    if opts.json:
        _common.write_json(opts.json, {"environment": env, "options": vars(opts), "summary": summary,
                                       "rounds": runs, "missing": missing})
    return 0


if __name__ == "__main__":
    sys.exit(main())
