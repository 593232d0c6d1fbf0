"""`bemcp logs`: a person's view of a log directory (``--json`` for scripts).

Recent tool calls, per-tool counts with p50/p99 durations, failed calls,
watchdog and plugin actions, protocol abuse, crash reports, the latest
performance sample. Reads every rotated generation, oldest first; lines it
cannot parse (a write cut short by a crash) are skipped and counted.
"""

import os
import sys

from ..percentiles import percentile

PROTOCOL_KINDS = ("protocol_error",)
LIFECYCLE_KINDS = ("start", "stop")


def add_arguments(parser):
    parser.add_argument("--log-dir", metavar="DIR", help="the log directory (default: as `bemcp serve` uses)")
    parser.add_argument("--config", metavar="FILE", help="TOML settings file to take log_dir from")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--limit", type=int, default=10, metavar="N", help="rows per list (10)")


def run(args):
    """The `bemcp logs` command; returns the exit status."""
    directory = args.log_dir
    if not directory:
        from ..config import Config
        try:
            directory = Config.load(args.config).log_dir
        except (OSError, ValueError) as exc:
            print(f"bemcp logs: {exc}", file=sys.stderr)
            return 2
        if not directory:
            from . import default_log_dir
            directory = default_log_dir()
    directory = os.path.abspath(os.path.expanduser(directory))
    if not os.path.isdir(directory):
        print(f"bemcp logs: no log directory at {directory}", file=sys.stderr)
        return 1
    summary = summarise(directory, max(1, args.limit))
    if args.json:
        from orjson import OPT_INDENT_2, dumps
        sys.stdout.write(dumps(summary, option=OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render(summary))
    return 0


def read_log(directory, name):
    """Records of one log, oldest first, and how many lines could not be read."""
    from orjson import JSONDecodeError, loads

    from .files import generations
    records, bad = [], 0
    for path in generations(directory, name):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                record = loads(line)
            except JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
    records.sort(key=lambda r: r.get("time") or 0)   # several servers may share the files
    return records, bad


def summarise(directory, limit=10):
    """The summary as plain data (what ``--json`` prints)."""
    from .crash import crash_files, summarize_crash
    from .files import _OURS
    tasks, bad_tasks = read_log(directory, "tasks")
    events, bad_events = read_log(directory, "forensics")
    perf, bad_perf = read_log(directory, "perf")

    by_tool = {}
    statuses = {}
    for t in tasks:
        tool = t.get("tool") or "?"
        entry = by_tool.setdefault(tool, {"calls": 0, "errors": 0, "durations": []})
        entry["calls"] += 1
        status = t.get("status") or "?"
        if status == "timeout":   # rows written before timed_out was the name
            status = t["status"] = "timed_out"
        statuses[status] = statuses.get(status, 0) + 1
        if status != "ok":
            entry["errors"] += 1
        if isinstance(t.get("duration_ms"), (int, float)):
            entry["durations"].append(t["duration_ms"])
    tools = []
    for tool, entry in sorted(by_tool.items(), key=lambda kv: -kv[1]["calls"]):
        durations = sorted(entry["durations"])
        tools.append({"tool": tool, "calls": entry["calls"], "errors": entry["errors"],
                      "p50_ms": percentile(durations, 50), "p99_ms": percentile(durations, 99),
                      "max_ms": durations[-1] if durations else None})

    kinds = {}
    actions, protocol, starts = [], [], []
    for e in events:
        kind = e.get("kind") or "?"
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind in PROTOCOL_KINDS:
            protocol.append(e)
        elif kind == "start":
            starts.append(e)
        elif kind not in LIFECYCLE_KINDS and kind != "crash":
            actions.append(e)

    crashes = []
    seen = _seen(directory)
    for name in reversed(crash_files(directory)):
        crashes.append({"file": name, "summary": summarize_crash(directory, name), "seen": name in seen})

    files = []
    for entry in sorted(os.listdir(directory)):
        if _OURS.match(entry):
            try:
                files.append({"name": entry, "bytes": os.path.getsize(os.path.join(directory, entry))})
            except OSError:
                pass

    lags = [p["lag_p99_ms"] for p in perf if isinstance(p.get("lag_p99_ms"), (int, float))]
    rss = [p["rss"] for p in perf if isinstance(p.get("rss"), int)]
    return {
        "log_dir": directory,
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files),
        "unreadable_lines": bad_tasks + bad_events + bad_perf,
        "tasks": {"count": len(tasks), "by_status": statuses,
                  "first": tasks[0].get("time") if tasks else None,
                  "last": tasks[-1].get("time") if tasks else None},
        "tools": tools,
        "recent": tasks[-limit:][::-1],
        "errors": [t for t in tasks if t.get("status") != "ok"][-limit:][::-1],
        "events_by_kind": kinds,
        "actions": actions[-limit:][::-1],
        "protocol_errors": protocol[-limit:][::-1],
        "servers": starts[-limit:][::-1],
        "crashes": crashes[:limit],
        "crash_count": len(crashes),
        "perf": {"samples": len(perf), "latest": perf[-1] if perf else None,
                 "max_lag_p99_ms": max(lags) if lags else None, "max_rss": max(rss) if rss else None},
    }


def _seen(directory):
    try:
        with open(os.path.join(directory, ".seen")) as f:
            return set(f.read().split())
    except OSError:
        return set()


# -- text ---------------------------------------------------------------------------------


def render(s):
    """The summary as text for a terminal."""
    out = [f"bemcp logs in {s['log_dir']}  ({_size(s['total_bytes'])} in {len(s['files'])} files)", ""]
    t = s["tasks"]
    if t["count"]:
        statuses = ", ".join(f"{n} {k}" for k, n in sorted(t["by_status"].items(), key=lambda kv: -kv[1]))
        out.append(f"Tool calls: {t['count']} ({statuses}), {_when(t['first'])} to {_when(t['last'])}")
        out.append("")
        rows = [[x["tool"], x["calls"], x["errors"], _num(x["p50_ms"]), _num(x["p99_ms"]), _num(x["max_ms"])]
                for x in s["tools"]]
        out += _table(["tool", "calls", "errors", "p50 ms", "p99 ms", "max ms"], rows)
        out.append("")
        out.append("Recent calls:")
        out += _table(["time", "id", "tool", "status", "ms"], [_task_row(x) for x in s["recent"]], indent=2)
    else:
        out.append("Tool calls: none logged")
    if s["errors"]:
        out += ["", "Failed calls (newest first):"]
        out += _table(["time", "id", "tool", "status", "ms"], [_task_row(x) for x in s["errors"]], indent=2)
    out += ["", "Watchdog and plugin actions:" if s["actions"] else "Watchdog and plugin actions: none"]
    for e in s["actions"]:
        out.append(f"  {_when(e.get('time'))}  {e.get('kind')}: {_event_text(e)}")
    if s["protocol_errors"]:
        out += ["", f"Protocol errors: {s['events_by_kind'].get('protocol_error', 0)}"]
        for e in s["protocol_errors"]:
            out.append(f"  {_when(e.get('time'))}  {e.get('problem')}, {e.get('size')} bytes")
    out += ["", f"Crash reports: {s['crash_count']}" if s["crash_count"] else "Crash reports: none"]
    for c in s["crashes"]:
        out.append(f"  {c['file']}{'' if c['seen'] else '  (new)'}")
        out.append(f"      {c['summary']}")
    p = s["perf"]["latest"]
    if p:
        out += ["", f"Performance (latest of {s['perf']['samples']} samples, {_when(p.get('time'))}):"]
        out.append(f"  RSS {_size(p.get('rss'))} (children {_size(p.get('rss_children'))}), "
                   f"CPU {_num(p.get('cpu_pct'))}%, loop lag p50 {_num(p.get('lag_p50_ms'))} ms "
                   f"p99 {_num(p.get('lag_p99_ms'))} ms, in flight {p.get('in_flight')}, "
                   f"{_num(p.get('calls_per_s'))} calls/s")
        out.append(f"  worst lag p99 {_num(s['perf']['max_lag_p99_ms'])} ms, "
                   f"largest RSS {_size(s['perf']['max_rss'])}")
    if s["unreadable_lines"]:
        out += ["", f"({s['unreadable_lines']} unreadable log lines skipped)"]
    return "\n".join(out) + "\n"


def _task_row(x):
    status = x.get("status")
    if isinstance(x.get("limit_s"), (int, float)):   # timed out: at which limit
        status = f"{status} ({x['limit_s']:g} s)"
    return [_when(x.get("time")), _short(x.get("id")), x.get("tool"), status, _num(x.get("duration_ms"))]


def _event_text(e):
    skip = {"time", "pid", "kind", "stack"}
    parts = [f"{k}={_short(v)}" for k, v in e.items() if k not in skip]
    text = ", ".join(parts)
    return text if len(text) <= 160 else text[:157] + "..."


def _short(value):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _table(headers, rows, indent=0):
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    pad = " " * indent
    lines = []
    for r in cells:
        line = "  ".join(c.ljust(w) if i == 0 or not _numeric(c) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths)))
        lines.append(pad + line.rstrip())
    return lines


def _numeric(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _when(t):
    if not isinstance(t, (int, float)):
        return "?"
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _num(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _size(n):
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
