"""A bench run: every target through every section, round by round, order rotated; progress on stderr."""

import os
import sys
import time
import traceback

from . import sections as S
from .client import TargetError, open_session
from .stats import describe, median


class Options:
    """The run's settings: the quick or the full profile, then what the command line overrides."""

    PROFILES = {
        #                quick   full
        "rounds":         (1,     3),
        "latency_count":  (300,   2000),
        "latency_warmup": (50,    200),
        "shell_count":    (30,    200),
        "shell_warmup":   (5,     20),
        "surface_count":  (200,   1000),    # requests per figure of the surface section
        "surface_warmup": (20,    100),
        "phase":          (0.5,   2.0),     # seconds per pipelined phase (each in-flight level)
        "warmup":         (0.2,   0.5),
        "idle":           (0.5,   2.0),
        "duration":       (3.0,   20.0),    # the stress run
        "memory_calls":   (1000,  10000),
        "memory_sleep":   (1.0,   1.0),
        "async_ops":      (20,    50),
        "logging_phases": (2,     4),
        "tick":           (0.25,  1.0),
        "cold_spawns":    (2,     5),       # extra spawns per round timed for cold start alone
    }

    # What --scale may not shrink below: a phase must still see calls, a sleep must still be long.
    FLOORS = {"rounds": 1, "latency_count": 5, "latency_warmup": 1, "shell_count": 2, "shell_warmup": 1,
              "surface_count": 5, "surface_warmup": 1,
              "phase": 0.02, "warmup": 0.01, "idle": 0.02, "duration": 0.1, "memory_calls": 10,
              "memory_sleep": 0.3, "async_ops": 2, "logging_phases": 2, "tick": 0.05, "cold_spawns": 0}

    def __init__(self, quick, scale=1.0, **overrides):
        self.quick, self.scale = quick, scale
        for key, values in self.PROFILES.items():
            value = values[0 if quick else 1]
            if key not in ("rounds", "logging_phases") and scale != 1.0:
                value = max(self.FLOORS[key], type(value)(value * scale))
            setattr(self, key, value)
        self.stress_inflight = 275     # the report's concurrent tasks
        self.timeout = 30.0            # a target silent this long is taken as hung
        for key, value in overrides.items():
            if value is not None:
                setattr(self, key, value)

    def to_json(self):
        return dict(vars(self))

    def seconds(self, section, target):
        """A rough duration of ``section`` on ``target``, for the time left."""
        slow = 1.0 if target.name in ("floor", "bemcp", "bemcp-py", "uvloop") else 3.0
        return {"cold-start": 0.3 * slow * (1 + self.cold_spawns), "cpu": self.idle, "echo": self.latency_count * 1e-4 * slow,
                "shell": self.shell_count * (4e-3 if target.sandbox_argv else 2e-3),
                "surface": self.surface_count * 6 * 2e-4 * slow, "concurrency": len(S.WINDOWS) * (self.phase + self.warmup),
                "memory": self.memory_sleep + self.memory_calls * 2e-4 * slow,
                "async": self.async_ops * 0.1 + 0.2, "stress": self.duration + 0.3,
                "logging": 4 * self.phase * (self.logging_phases / 2) if target.logs_on_argv else 0.1}[section]


class Progress:
    """One line per step on stderr: the step, how far the run is, the time left (an estimate
    from each step's nominal length, scaled by how the run has gone so far)."""

    def __init__(self, plan):
        self.plan = plan                   # [(label, nominal seconds)]
        self.total = sum(s for _, s in plan) or 1.0
        self.done_nominal = 0.0
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def step(self, label, nominal):
        elapsed = time.perf_counter() - self.t0
        scale = elapsed / self.done_nominal if self.done_nominal > 1.0 else 1.0
        left = max(0.0, (self.total - self.done_nominal) * scale)
        pct = 100 * self.done_nominal / self.total
        line = f"[{pct:3.0f}%] {label} (~{_clock(left)} left)"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        self.done_nominal += nominal

    def note(self, text):
        sys.stderr.write(("\r\033[K" if self.tty else "") + text + "\n")
        sys.stderr.flush()

    def finish(self):
        if self.tty:
            sys.stderr.write("\r\033[K")
        self.note(f"done in {_clock(time.perf_counter() - self.t0)}")


def _clock(seconds):
    seconds = int(seconds + 0.5)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run(targets, chosen, opts, log):
    """Every round: every target once (spawned afresh, order rotated), through the chosen sections.

    Returns the rounds' raw figures: [{"order": [...], "targets": {name: {...}}}].
    """
    plan = []
    for r in range(opts.rounds):
        heavy_round = r == opts.rounds - 1
        for t in _rotated(targets, r):
            plan.append((f"round {r + 1}/{opts.rounds} · {t.name} · start", _start_seconds(opts, t, chosen)))
            for section in chosen:
                if section in S.HEAVY and not heavy_round:
                    continue
                plan.append((f"round {r + 1}/{opts.rounds} · {t.name} · {S.TITLES[section]}",
                             opts.seconds(section, t)))
    progress = Progress(plan)
    rings = {}
    rounds = []
    for r in range(opts.rounds):
        order = _rotated(targets, r)
        heavy_round = r == opts.rounds - 1
        figures = {}
        for t in order:
            wanted = [s for s in chosen if heavy_round or s not in S.HEAVY]
            figures[t.name] = run_target(t, wanted, opts, rings, progress, r)
        rounds.append({"round": r + 1, "order": [t.name for t in order], "targets": figures})
    progress.finish()
    return rounds


def _start_seconds(opts, target, sections):
    return opts.seconds("cold-start", target) if "cold-start" in sections else 0.5


def _cold_start(target, timeout):
    """ms from spawn to the initialize answer, on a spawn of its own."""
    session = open_session(target)
    try:
        return round(session.initialize(timeout) * 1e3, 3)
    finally:
        session.close(5.0)


def probe(target, timeout):
    """None if ``target`` starts and answers initialize and tools/list, else why not."""
    try:
        session = open_session(target)
    except (TargetError, OSError) as exc:
        return f"cannot be started: {exc}"
    try:
        session.initialize(timeout)
        if not target.canned:
            session.list_tools(timeout)
        return None
    except Exception as exc:   # noqa: BLE001
        return f"cannot be started: {_error(exc, session)['message']}"
    finally:
        session.close(1.0)


def _rotated(targets, r):
    shift = r % len(targets) if targets else 0
    return targets[shift:] + targets[:shift]


def run_target(target, wanted, opts, rings, progress, r):
    """One spawn of ``target`` through the ``wanted`` sections; a failure ends this spawn, not the run."""
    out = {"sections": {}, "skipped": {}, "errors": {}}
    label = f"round {r + 1}/{opts.rounds} · {target.name}"
    progress.step(f"{label} · start", _start_seconds(opts, target, wanted))
    cold_starts = []
    if "cold-start" in wanted and target.argv:
        try:
            cold_starts = [_cold_start(target, opts.timeout) for _ in range(opts.cold_spawns)]
        except Exception as exc:   # noqa: BLE001
            out["errors"]["start"] = _error(exc)
            return out
    try:
        session = open_session(target)
    except TargetError as exc:
        out["errors"]["start"] = _error(exc)
        return out
    except OSError as exc:
        out["errors"]["start"] = {"kind": "crashed", "message": f"cannot start: {exc}"}
        return out
    failed = None
    try:
        try:
            cold = session.initialize(opts.timeout)
            time.sleep(0.3)   # let start-up work scheduled after the answer settle
            if target.argv:
                cold_starts.append(round(cold * 1e3, 3))
            out["spawn"] = {"cold_start_ms": median(cold_starts), "cold_start_samples_ms": cold_starts,
                            "rss_start_mb": session.tree.rss_mb(), "processes": session.tree.count()}
            tools = S.Tools([] if target.canned else session.list_tools(opts.timeout))
            out["tools"] = tools.names
        except Exception as exc:   # noqa: BLE001 - any failure of the target is reported, not raised
            out["errors"]["start"] = _error(exc, session)
            failed = "start"
            return out
        ctx = S.Context(session, tools, opts, rings)
        for section in wanted:
            if section == "cold-start":
                continue
            if failed:
                out["skipped"][section] = f"not run: {target.name} failed in {failed}"
                continue
            progress.step(f"{label} · {S.TITLES[section]}", opts.seconds(section, target))
            try:
                figures = out["sections"][section] = S.SECTIONS[section](ctx)
                if figures.get("first_error"):   # the stress run counts bad answers rather than stopping
                    out["errors"][section] = {"kind": "wrong answer", "message": figures["first_error"]}
            except S.Skip as why:
                out["skipped"][section] = str(why)
            except Exception as exc:   # noqa: BLE001
                out["errors"][section] = _error(exc, session)
                progress.note(f"  {target.name} failed in {S.TITLES[section]}: {out['errors'][section]['message']}")
                failed = S.TITLES[section]
        out["calls"] = ctx.calls
        out["peak_rss_mb"] = max(ctx.peak_rss, session.tree.rss_mb() if not failed else 0.0)
    finally:
        session.close(1.0 if failed else 5.0)   # a target that failed gets no patience
    return out


def _error(exc, session=None):
    if isinstance(exc, TargetError):
        kind, message = exc.kind, exc.message
        if kind == "hung" and session is not None:
            message += "" if session.died() is None else f" ({session.died()})"
    else:
        crash = session.died() if session is not None else None
        if crash is not None:
            kind, message = "crashed", str(crash)
        else:
            kind, message = "error", f"{type(exc).__name__}: {exc}"
            if os.environ.get("BEMCP_BENCH_DEBUG"):
                traceback.print_exc()
    return {"kind": kind, "message": message}


# -- the figures, over rounds ------------------------------------------------------------------


def summarize(targets, rounds):
    """Per target: the medians over rounds, latency samples pooled, the heavy round's figures."""
    summary = {}
    for t in targets:
        per = [rd["targets"].get(t.name, {}) for rd in rounds]
        secs = [p.get("sections", {}) for p in per]
        s = {}
        spawn = [p.get("spawn", {}) for p in per]
        s["cold_start_ms"] = median([c for x in spawn for c in x.get("cold_start_samples_ms", [])])
        s["rss_start_mb"] = median([x.get("rss_start_mb") for x in spawn])
        s["processes"] = median([x.get("processes") for x in spawn])
        peaks = [p.get("peak_rss_mb") for p in per if p.get("peak_rss_mb")]
        s["peak_rss_mb"] = max(peaks) if peaks else None
        echo = [x for sec in secs for x in sec.get("echo", {}).get("samples_ms", [])]
        if echo:
            s["echo"] = describe(echo)
        shell = [x for sec in secs for x in sec.get("shell", {}).get("samples_ms", [])]
        local = [x for sec in secs for x in sec.get("shell", {}).get("subprocess_samples_ms", [])]
        if shell:
            s["shell"] = describe(shell)
            s["shell_tool"] = next((sec["shell"].get("tool") for sec in secs if "shell" in sec), None)
            if local:
                s["shell_subprocess"] = describe(local)
            boxed = [x for sec in secs for x in sec.get("shell", {}).get("sandbox_samples_ms", [])]
            if boxed:
                s["shell_sandbox"] = describe(boxed)
                s["shell_sandbox_p50_ratio"] = s["shell_sandbox"]["median"] / s["shell"]["median"]
            why = next((sec["shell"]["sandbox_error"] for sec in secs if sec.get("shell", {}).get("sandbox_error")), None)
            if why:
                s["shell_sandbox_error"] = why
        surface = {}
        for sec in secs:
            for label, f in sec.get("surface", {}).get("requests", {}).items():
                surface.setdefault(label, []).extend(f["samples_ms"])
        if surface:
            s["surface"] = {label: describe(v) for label, v in surface.items()}
            s["surface_not_measured"] = next(sec["surface"]["not_measured"] for sec in secs if "surface" in sec)
        windows = {}
        for sec in secs:
            for w, f in sec.get("concurrency", {}).get("windows", {}).items():
                windows.setdefault(w, []).append(f)
        if windows:
            s["concurrency"] = {w: {k: median([f[k] for f in fs]) for k in fs[0]} for w, fs in windows.items()}
        idle = [sec["cpu"]["idle_cpu_pct"] for sec in secs if "cpu" in sec]
        if idle:
            s["idle_cpu_pct"] = median(idle)
        for name in ("memory", "async", "stress", "logging"):
            found = [sec[name] for sec in secs if name in sec]
            if found:
                s[name] = found[-1]
        errors = {}
        skipped = {}
        for i, p in enumerate(per):
            for section, e in p.get("errors", {}).items():
                errors.setdefault(section, {**e, "rounds": []})["rounds"].append(i + 1)
            skipped.update(p.get("skipped", {}))
        s["errors"], s["skipped"] = errors, skipped
        summary[t.name] = s
    return summary
