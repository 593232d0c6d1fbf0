"""The bench's outputs: results.json (every raw figure), report.md (the report's shape), the console table."""

import os
import platform
import subprocess
import time

import orjson

from .sections import ORDER, SHELL_ARGV, TITLES
from .stats import ratio

FORMAT = "bemcp-bench/1"

# The BE-MCP v0.11 report's figures, quoted beside every target's (its own column).
BE_MCP = {"echo_mean_ms": 0.04, "shell_mean_ms": 1.06, "ops15": 754, "stress_tasks": 275,
          "rss_start_mb": 59, "peak_rss_mb": 1400, "async_speedup": 33.8}


# -- environment ---------------------------------------------------------------------------


def environment(command, out_dir=None):
    """The machine, the versions and the source a reader needs to reproduce the run."""
    import bemcp
    source = os.path.dirname(os.path.dirname(os.path.abspath(bemcp.__file__)))
    commit = _git(source, "rev-parse", "HEAD")
    # Changes under the output directory (a report being rewritten in the checkout) are not the source's.
    outside = [f":(exclude){os.path.abspath(out_dir)}"] if out_dir else []
    dirty = bool(_git(source, "status", "--porcelain", "--untracked-files=no", "--", ".", *outside)) if commit else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
        "cpu": _cpu_model(), "cpus": os.cpu_count(), "memory_gb": _memory_gb(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "bemcp": bemcp.__version__, "compiled_core": bemcp.USE_EXTENSIONS,
        "commit": commit or None, "uncommitted_changes": dirty,
        "packages": {name: _version(name) for name in ("uvloop", "orjson", "psutil", "mcp", "matplotlib")},
        "node": _output(["node", "--version"]) or None,
    }


def _git(cwd, *args):
    if not os.path.isdir(os.path.join(cwd, ".git")) and not os.path.isfile(os.path.join(cwd, ".git")):
        return ""
    return _output(["git", "-C", cwd, *args])


def _output(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(name):
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gb():
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def write_json(path, data):
    with open(path, "wb") as f:
        f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


# -- formatting ---------------------------------------------------------------------------


def num(value, digits=0, unit=""):
    if value is None:
        return "–"
    if abs(value) >= 100 and digits:
        digits = 0 if abs(value) >= 1000 else 1
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}" if unit else text


def x(value):
    if value is None:
        return "–"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def table(headers, rows, align=None):
    """A GitHub Markdown table; ``align``: one l/r per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(r, widths, align)) + " |"
    sep = "|" + "|".join("-" * (w + 1) + ":" if a == "r" else "-" * (w + 2) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


# -- the summary table ---------------------------------------------------------------------------


def _cell(s, key):
    """One summary cell of a target (``s``: its summary), or None if not measured."""
    conc = s.get("concurrency", {})
    if key == "echo_mean_ms":
        return num(s.get("echo", {}).get("mean"), 3, "ms") if s.get("echo") else None
    if key == "echo_p50_ms":
        return num(s.get("echo", {}).get("median"), 3, "ms") if s.get("echo") else None
    if key == "shell_mean_ms":
        return num(s["shell"]["mean"], 2, "ms") if s.get("shell") else None
    if key == "shell_sandbox":
        return x(s["shell_sandbox_p50_ratio"]) if s.get("shell_sandbox") else None
    if key == "ops15":
        return num(conc["15"]["calls_per_s"]) if "15" in conc else None
    if key == "ops256":
        return num(conc["256"]["calls_per_s"]) if "256" in conc else None
    if key == "stress_tasks":
        st = s.get("stress")
        return f"{st['inflight']} ({st['completion_pct']:.1f}% done)" if st else None
    if key == "rss_start_mb":
        return num(s.get("rss_start_mb"), 1, "MB")
    if key == "peak_rss_mb":
        return num(s.get("peak_rss_mb"), 1, "MB") if s.get("peak_rss_mb") else None
    if key == "async_speedup":
        a = s.get("async")
        return f"{a['speedup']:.1f}x" if a else None
    if key == "cold_start_ms":
        return num(s.get("cold_start_ms"), 1, "ms")
    if key == "cpu_per_call_us":
        return num(conc["256"]["server_cpu_us"], 2, "µs") if "256" in conc else None
    if key == "idle_cpu_pct":
        return num(s.get("idle_cpu_pct"), 2, "%") if s.get("idle_cpu_pct") is not None else None
    if key == "log_bytes_per_call":
        lg = s.get("logging", {})
        parts = []
        if lg.get("log_bytes_per_call") is not None:
            parts.append(f"{lg['log_bytes_per_call']:.0f} B files")
        if lg.get("stderr_bytes_per_call") is not None:
            parts.append(f"{lg['stderr_bytes_per_call']:.1f} B stderr")
        return ", ".join(parts) or None
    raise KeyError(key)


SUMMARY_ROWS = [
    ("echo_mean_ms", "echo latency, mean", "0.04 ms"),
    ("echo_p50_ms", "echo latency, median", ""),
    ("shell_mean_ms", "shell command latency, mean", "1.06 ms"),
    ("shell_sandbox", "shell command with --sandbox, vs without (median)", ""),
    ("ops15", "throughput, 15 concurrent tasks (calls/s)", "754"),
    ("ops256", "throughput, 256 in flight (calls/s)", ""),
    ("stress_tasks", "concurrent tasks sustained (stress)", "275"),
    ("rss_start_mb", "memory after start", "59 MB"),
    ("peak_rss_mb", "memory peak under load", "~1.4 GB"),
    ("async_speedup", "async vs sync, {ops} × 100 ms", "33.8x (50 ops)"),
    ("cold_start_ms", "cold start", ""),
    ("cpu_per_call_us", "CPU per call, 256 in flight", ""),
    ("idle_cpu_pct", "CPU when idle", ""),
    ("log_bytes_per_call", "log volume per call", ""),
]


def summary_table(targets, summary):
    names = [t.name for t in targets]
    ops = next((summary[n]["async"]["ops"] for n in names if summary[n].get("async")), 50)
    rows = []
    for key, label, be in SUMMARY_ROWS:
        label = label.format(ops=ops)
        cells = []
        for t in targets:
            s = summary[t.name]
            value = _cell(s, key)
            if key == "shell_mean_ms" and t.canned and s.get("shell"):
                value += " (subprocess.run)"
            cells.append(value if value is not None else _absent(s, key))
        if any(c != "–" for c in cells):
            rows.append([label, be or "–", *cells])
    return table(["measurement", "BE-MCP v0.11", *names], rows)


_SECTION_OF = {"echo_mean_ms": "echo", "echo_p50_ms": "echo", "shell_mean_ms": "shell", "ops15": "concurrency",
               "ops256": "concurrency", "stress_tasks": "stress", "async_speedup": "async",
               "cpu_per_call_us": "concurrency", "idle_cpu_pct": "cpu", "log_bytes_per_call": "logging",
               "peak_rss_mb": "memory"}


def _absent(s, key):
    section = _SECTION_OF.get(key)
    if section and section in s.get("errors", {}):
        return "failed"
    if "start" in s.get("errors", {}):
        return "failed"
    if section and section in s.get("skipped", {}):
        return "n/a"
    return "–"


# -- report.md ---------------------------------------------------------------------------


METHODS = {
    "echo": "One `echo` tools/call in flight at a time, timed from the write of the request to the read of its "
            "answer (after a warm-up); each answer's id and echoed text are checked. Samples of all rounds pooled.",
    "shell": f"`run_command {SHELL_ARGV}` over the wire, one at a time, in blocks alternating with "
             "`subprocess.run` of the same argv in the bench process (the floor of this section); for bemcp "
             "also with blocks on a second server started with `--sandbox`.",
    "surface": "One request in flight at a time: an echo tools/call beside prompts/get (the first prompt the "
               "bench can fill), resources/read (the first resource, the first template with each variable 42), "
               "and a `confirm` tool's elicitation: answered by the client as a server request (handshake era) "
               "or as an input_required result and its retry (2026-07-28).",
    "concurrency": "Echo calls kept in flight (15, the report's concurrent tasks, and 1, 16, 256) for a fixed time "
                   "after a warm-up; every answer checked afterwards. CPU per call is the target's (all its processes).",
    "stress": "N echo calls kept in flight for the whole duration, each answer checked as it comes; calls/s, "
              "errors and the RSS of every process of the target sampled at each tick.",
    "memory": "RSS of every process of the target (helpers and children included) after start; then a burst of "
              "sleeping calls sent at once: growth per call in flight, and the peak over the whole run.",
    "async": "The report's operations of a 100 ms `sleep` tool, one at a time and then all sent at once; the "
             "speedup is the ratio of the two wall times.",
    "logging": "Bytes the target wrote to stderr per call over its whole session; for bemcp also calls/s with "
               "256 in flight with every log file on against `--no-log-files`, alternated, and the bytes its log "
               "files got per call over 2,000 calls on a fresh server.",
    "cpu": "The target's CPU time (every process) over an idle interval after start, and per call while "
           "256 calls are in flight (from the concurrency section).",
    "cold-start": "From just before the process is spawned to the `initialize` answer being read: the median "
                  "over every round's spawns (the measured one and a few more of their own).",
}


def markdown(targets, skipped, summary, rounds, opts, env, plots):
    names = [t.name for t in targets]
    floor = summary.get("floor")
    out = ["# bemcp bench report", "",
           f"{env['date']} · {env['cpu']}, {env['cpus']} CPUs · {env['python']} · bemcp {env['bemcp']} "
           f"(compiled core: {'yes' if env['compiled_core'] else 'no'}) · "
           f"{opts.rounds} round{'s' if opts.rounds != 1 else ''}, targets interleaved, order rotated "
           f"· load average at start {_load(env.get('load_average'))}", "",
           "## Summary", "", summary_table(targets, summary), "",
           "Columns: the BE-MCP v0.11 report's figures, then every target of this run, measured by the same "
           "load client in the same run. `–`: not measured; `n/a`: the target lacks what the section needs "
           "(see below); `failed`: see Errors.", ""]

    sec = {k: [n for n in names if _has(summary[n], k)] for k in ORDER}
    if sec["echo"]:
        out += _section("echo", opts)
        rows = []
        for n in sec["echo"]:
            e = summary[n]["echo"]
            rows.append([n, *(num(e[k], 3) for k in ("mean", "median", "min", "max", "stdev", "p90", "p99")),
                         x(ratio(e["median"], floor["echo"]["median"])) if floor and floor.get("echo") else "–"])
        out += [table(["target", "mean ms", "median ms", "min ms", "max ms", "stdev ms", "p90 ms", "p99 ms",
                       "median vs floor"], rows), ""]
        out += _plot(plots, "latency")
    if sec["shell"]:
        out += _section("shell", opts)
        rows = []
        for n in sec["shell"]:
            s = summary[n]
            sh, sub = s["shell"], s.get("shell_subprocess")
            tool = s.get("shell_tool") or "?"
            rows.append([n, tool, num(sh["mean"], 3), num(sh["median"], 3), num(sh["p90"], 3), num(sh["p99"], 3),
                         num(sub["mean"], 3) if sub else "–", x(ratio(sh["mean"], sub["mean"])) if sub else "–"])
        out += [table(["target", "how", "mean ms", "median ms", "p90 ms", "p99 ms", "subprocess.run mean ms",
                       "vs subprocess.run"], rows), ""]
        boxed = [n for n in sec["shell"] if summary[n].get("shell_sandbox") or summary[n].get("shell_sandbox_error")]
        if boxed:
            rows = []
            for n in boxed:
                s = summary[n]
                if s.get("shell_sandbox"):
                    rows.append([n, num(s["shell"]["median"], 3), num(s["shell_sandbox"]["median"], 3),
                                 num(s["shell_sandbox"]["p90"], 3), x(s["shell_sandbox_p50_ratio"])])
                else:
                    rows.append([n, num(s["shell"]["median"], 3), f"not run: {s['shell_sandbox_error']}", "–", "–"])
            out += [f"With `--sandbox` (Landlock): the same server started sandboxed, its blocks of "
                    f"`run_command` alternating with the plain server's in the same run.", "",
                    table(["target", "plain median ms", "--sandbox median ms", "--sandbox p90 ms",
                           "--sandbox / plain (median)"], rows), ""]
    if sec["surface"]:
        out += _section("surface", opts)
        labels = list(dict.fromkeys(label for n in sec["surface"] for label in summary[n]["surface"]))
        rows = [[label, *(f"{num(summary[n]['surface'][label]['median'], 3)} / "
                          f"{num(summary[n]['surface'][label]['p90'], 3)}" if label in summary[n]["surface"] else "–"
                          for n in sec["surface"])] for label in labels]
        out += [table(["request (median / p90 ms)", *sec["surface"]], rows), ""]
        notes = [f"- `{n}` · {label}: {why}" for n in sec["surface"]
                 for label, why in summary[n].get("surface_not_measured", {}).items()]
        out += (["Not measured:", "", *notes, ""] if notes else [])
    if sec["concurrency"]:
        out += _section("concurrency", opts)
        rows = []
        base = floor.get("concurrency", {}).get("256", {}).get("calls_per_s") if floor else None
        for n in sec["concurrency"]:
            c = summary[n]["concurrency"]
            rows.append([n, *(num(c[w]["calls_per_s"]) if w in c else "–" for w in ("15", "1", "16", "256")),
                         x(ratio(c.get("256", {}).get("calls_per_s"), base)),
                         num(c.get("256", {}).get("server_cpu_us"), 2),
                         num(c.get("256", {}).get("client_cpu_us"), 2),
                         num(c.get("256", {}).get("client_busy_pct"), 0)])
        out += [table(["target", "15 in flight", "1", "16", "256", "256 vs floor", "target CPU µs/call @256",
                       "client CPU µs/call @256", "client busy % @256"], rows), ""]
        out += _client_note(targets, summary) + _plot(plots, "throughput")
    if sec["stress"]:
        out += _section("stress", opts)
        rows = []
        for n in sec["stress"]:
            st = summary[n]["stress"]
            rows.append([n, st["inflight"], num(st["duration_s"], 1), num(st["sent"]), num(st["good"]),
                         f"{st['completion_pct']:.2f}%", st["errors"], num(st["calls_per_s"]), num(st["peak_mb"], 1),
                         num(st["client_busy_pct"], 0)])
        out += [table(["target", "in flight", "seconds", "calls sent", "answered right", "completion", "errors",
                       "calls/s", "peak RSS MB", "client busy %"], rows), ""]
        out += _plot(plots, "stress_throughput") + _plot(plots, "stress_rss")
    if sec["memory"]:
        out += _section("memory", opts)
        rows = []
        for n in sec["memory"]:
            s = summary[n]
            m = s.get("memory")
            rows.append([n, num(s.get("rss_start_mb"), 1), num(s.get("processes")),
                         num(m["per_task_kb"], 1) if m else "n/a",
                         f"{m['calls']:,} × {m['sleep_s']:g} s in {m['wall_s']:.2f} s" if m else "n/a",
                         num(s.get("peak_rss_mb"), 1)])
        out += [table(["target", "after start MB", "processes", "KB per call in flight", "burst", "peak MB"],
                      rows), ""]
    if sec["async"]:
        out += _section("async", opts)
        rows = [[n, summary[n]["async"]["ops"], num(summary[n]["async"]["sequential_s"], 2),
                 num(summary[n]["async"]["concurrent_s"], 3), f"{summary[n]['async']['speedup']:.1f}x"]
                for n in sec["async"]]
        out += [table(["target", "operations", "one at a time s", "all at once s", "speedup"], rows), ""]
    if sec["logging"]:
        out += _section("logging", opts)
        rows = []
        for n in sec["logging"]:
            lg = summary[n]["logging"]
            rows.append([n, num(lg.get("stderr_bytes_per_call"), 2), num(lg.get("log_bytes_per_call"), 0),
                         num(lg.get("logs_off_calls_per_s")), num(lg.get("logs_on_calls_per_s")),
                         x(lg.get("logs_on_ratio")), num(lg.get("logs_on_server_cpu_us"), 2)])
        out += [table(["target", "stderr B/call", "log files B/call", "calls/s logs off", "calls/s logs on",
                       "on / off", "CPU µs/call logs on"], rows), ""]
    if sec["cpu"]:
        out += _section("cpu", opts)
        rows = [[n, num(summary[n].get("idle_cpu_pct"), 2),
                 num(summary[n].get("concurrency", {}).get("1", {}).get("server_cpu_us"), 2),
                 num(summary[n].get("concurrency", {}).get("256", {}).get("server_cpu_us"), 2)] for n in sec["cpu"]]
        out += [table(["target", "idle CPU %", "CPU µs/call @1", "CPU µs/call @256"], rows), ""]
    if sec["cold-start"]:
        out += _section("cold-start", opts)
        base = floor.get("cold_start_ms") if floor else None
        rows = [[n, num(summary[n]["cold_start_ms"], 1), x(ratio(summary[n]["cold_start_ms"], base))]
                for n in sec["cold-start"]]
        out += [table(["target", "cold start ms", "vs floor"], rows), ""]

    out += ["## Targets", ""]
    for t in targets:
        line = f"- `{t.name}`: {t.description}"
        if t.notes:
            line += f" ({'; '.join(t.notes)})"
        if t.installed_with:
            line += f"; installed with `{t.installed_with}`"
        out.append(line)
    for name, why in skipped.items():
        out.append(f"- `{name}`: skipped, {why}")
    not_applicable = [(n, k, why) for n in names for k, why in summary[n]["skipped"].items()]
    if not_applicable:
        out += ["", "Sections a target could not take:", ""]
        out += [f"- `{n}` · {TITLES.get(k, k)}: {why}" for n, k, why in not_applicable]
    errors = [(n, k, e) for n in names for k, e in summary[n]["errors"].items()]
    if errors:
        out += ["", "## Errors", ""]
        out += [f"- `{n}` · {TITLES.get(k, k)} ({e['kind']}, round {', '.join(map(str, e['rounds']))}): {e['message']}"
                for n, k, e in errors]
    out += ["", "## Reproducing", "",
            f"- `{env['command']}`",
            f"- {env['python']}; {env['os']}; {env['cpu']}, {env['cpus']} CPUs, {env['memory_gb']} GB",
            f"- bemcp {env['bemcp']}, commit {env['commit'] or '(not a git checkout)'}"
            + (" with uncommitted changes" if env.get("uncommitted_changes") else ""),
            "- " + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v) + (f", node {env['node']}" if env["node"] else ""),
            f"- load average at start {_load(env.get('load_average'))}, at the end {_load(env.get('load_average_end'))}",
            "", "Every raw figure is in `results.json` (format: docs/bench.md).", ""]
    return "\n".join(out)


def _has(s, section):
    if section == "cold-start":
        return s.get("cold_start_ms") is not None
    if section == "cpu":
        return s.get("idle_cpu_pct") is not None
    return bool(s.get(section))


def _section(name, opts):
    extra = ""
    if name == "stress":
        extra = f" Here: {opts.stress_inflight} in flight for {opts.duration:g} s."
    if name == "async":
        extra = f" Here: {opts.async_ops} operations."
    return [f"## {TITLES[name][0].upper()}{TITLES[name][1:]}", "", METHODS[name] + extra, ""]


def _plot(plots, name):
    path = plots.get(name)
    return [f"![{name}]({os.path.basename(path)})", ""] if path else []


def _client_note(targets, summary):
    """Whether the load client stayed ahead: its CPU share, and how much faster than bemcp it drove a floor."""
    floors = [(summary[t.name]["concurrency"]["256"], t.name) for t in targets
              if t.canned and "256" in summary[t.name].get("concurrency", {})]
    if not floors:
        return []
    f, name = max(floors, key=lambda p: p[0]["calls_per_s"])
    line = (f"Load client: at 256 in flight it drove `{name}` at {f['calls_per_s']:,.0f} calls/s, using "
            f"{f['client_busy_pct']:.0f}% of a core")
    b = summary.get("bemcp", {}).get("concurrency", {}).get("256")
    if b:
        line += (f": {f['calls_per_s'] / b['calls_per_s']:.1f}x bemcp's {b['calls_per_s']:,.0f} calls/s, for "
                 f"which it used {b['client_busy_pct']:.0f}% of a core")
    return [line + ". The client was not what limited the targets slower than that.", ""]


def _load(values):
    return " / ".join(f"{v:.2f}" for v in values) if values else "?"


# -- the console ----------------------------------------------------------------------------


def console(targets, skipped, summary, out_dir):
    lines = ["", summary_table(targets, summary), ""]
    for name, why in skipped.items():
        lines.append(f"skipped {name}: {why}")
    for t in targets:
        for section, e in summary[t.name]["errors"].items():
            lines.append(f"{t.name} failed in {TITLES.get(section, section)} ({e['kind']}): {e['message']}")
    lines.append(f"report: {os.path.join(out_dir, 'report.md')}")
    lines.append(f"results: {os.path.join(out_dir, 'results.json')}")
    return "\n".join(lines)
