"""`bemcp bench`: a load tool for MCP servers, over stdio or Streamable HTTP.

It measures bemcp, its peers (a raw-pipe floor, the official Python and TypeScript
SDKs, fastmcp) and any server named with ``--target`` with one load client in one
run, round by round, and writes results.json, report.md and plots. The machinery:
client (the wire and the process facts), peers (what to measure, installed on
demand), sections (the measurements), runner (rounds, progress), report, plots.
"""

import os
import shlex
import sys
import time

# What the command line names; this module stays light (`bemcp serve` builds the same parser).
PEERS = ("floor", "floor-batched", "bemcp", "bemcp-py", "sdk", "fastmcp", "ts")   # the default, in column order
QUICK_PEERS = ("floor", "floor-batched", "bemcp", "bemcp-py", "sdk")
# Known but run only when named: bemcp and the SDK over Streamable HTTP, and a plain-uvloop echo
# (a reference for what the compiled core adds over a server that validates nothing).
EXTRA_PEERS = ("bemcp-http", "sdk-http", "uvloop")
# The sections, in the order they run on each target.
SECTIONS = ("cold-start", "cpu", "echo", "shell", "surface", "concurrency", "memory", "async", "stress", "logging")


def default_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bemcp", "bench")


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="about a minute: one round, short phases, peers floor,bemcp,bemcp-py,sdk")
    parser.add_argument("--out", metavar="DIR", help="where results.json, report.md and the plots go "
                        "(default: a new bemcp-bench-DATE-TIME directory here)")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=COMMAND|NAME=URL",
                        help="also measure this server: a command serving MCP on stdio, or the URL of a "
                             "running Streamable HTTP server (repeatable)")
    parser.add_argument("--peers", metavar="LIST", help="comma-separated peers, or 'none' (default: "
                        f"{','.join(PEERS)}; also known: {','.join(EXTRA_PEERS)})")
    parser.add_argument("--sections", metavar="LIST",
                        help=f"comma-separated sections (default: all: {','.join(SECTIONS)})")
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="the stress run's length (3 quick, 20 full; the report's five minutes: 300)")
    parser.add_argument("--stress-inflight", type=int, metavar="N", help="calls in flight in the stress run (275)")
    parser.add_argument("--rounds", type=int, metavar="N", help="rounds (1 quick, 3 full)")
    parser.add_argument("--scale", type=float, default=1.0, metavar="FACTOR",
                        help="multiply every phase's length and count (0.1: a smoke run; 2: steadier figures)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="a target silent this long is reported as hung (30)")
    parser.add_argument("--cache-dir", metavar="DIR", help=f"where peers are installed ({default_cache_dir()})")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs (matplotlib not needed)")


def run(args):
    """Run the bench as the command line ``args`` asks; the exit status."""
    from . import peers as P
    from . import report, runner

    def log(text):
        print(text, file=sys.stderr, flush=True)

    try:
        chosen = _sections(args.sections)
        wanted_peers = _peers(args.peers, args.quick)
        custom = [P.parse_target(spec) for spec in args.target]
    except ValueError as exc:
        log(f"bemcp bench: {exc}")
        return 2
    names = wanted_peers + [t.name for t in custom]
    if len(set(names)) != len(names):
        log(f"bemcp bench: two targets share a name: {', '.join(names)}")
        return 2
    if args.rounds is not None and args.rounds < 1 or args.scale <= 0:
        log("bemcp bench: --rounds must be at least 1 and --scale above 0")
        return 2
    _raise_fd_limit()   # every HTTP call in flight holds a connection
    opts = runner.Options(args.quick, args.scale, rounds=args.rounds, duration=args.duration, timeout=args.timeout,
                          stress_inflight=args.stress_inflight)
    plots_ok = args.no_plots or _matplotlib_or_warning(log)
    out_dir = args.out or os.path.abspath(time.strftime("bemcp-bench-%Y%m%d-%H%M%S"))
    os.makedirs(out_dir, exist_ok=True)
    cache_dir = args.cache_dir or default_cache_dir()

    targets, skipped = [], {}
    for name in wanted_peers:
        try:
            target = P.resolve(name, cache_dir, log)
        except P.Unavailable as why:
            skipped[name] = str(why)
        else:   # a peer that does not start is skipped; a --target that does not is reported failed
            why = runner.probe(target, opts.timeout)
            if why is None:
                targets.append(target)
            else:
                skipped[name] = why
        if name in skipped:
            log(f"skipping peer {name}: {skipped[name]}")
    targets += custom
    if not targets:
        log("bemcp bench: no target to measure")
        return 2
    command = shlex.join(["bemcp", "bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else shlex.join(sys.argv)
    env = report.environment(command, out_dir)
    log(f"bemcp bench: {len(targets)} targets ({', '.join(t.name for t in targets)}), sections "
        f"{','.join(chosen)}, {opts.rounds} round{'s' if opts.rounds != 1 else ''}; output in {out_dir}")

    rounds = runner.run(targets, chosen, opts, log)
    summary = runner.summarize(targets, rounds)
    env["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    plots = {}
    if plots_ok and not args.no_plots:
        from . import plots as plotting
        plots = plotting.draw(targets, summary, rounds, out_dir)
    report.write_json(os.path.join(out_dir, "results.json"), {
        "format": report.FORMAT, "environment": env, "options": opts.to_json(), "sections": chosen,
        "targets": {t.name: t.to_json() for t in targets}, "skipped": skipped,
        "be_mcp_v0_11": report.BE_MCP, "summary": summary, "rounds": rounds,
        "plots": {k: os.path.basename(v) for k, v in plots.items()}})
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(report.markdown(targets, skipped, summary, rounds, opts, env, plots))
    print(report.console(targets, skipped, summary, out_dir))
    log(f"bemcp bench: wrote {out_dir}")
    failed = any(summary[t.name]["errors"] for t in targets)
    return 1 if failed else 0


def _raise_fd_limit():
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    except (ImportError, ValueError, OSError):
        pass


def _sections(text):
    if not text:
        return list(SECTIONS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    return [n for n in SECTIONS if n in names]


def _peers(text, quick):
    if text is None:
        return list(QUICK_PEERS if quick else PEERS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in PEERS + EXTRA_PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS + EXTRA_PEERS)}")
    return list(dict.fromkeys(names))


def _matplotlib_or_warning(log):
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        log('bemcp bench: matplotlib is missing, so no plots: pip install "bemcp[bench]" (or pass --no-plots)')
        return False
    return True
