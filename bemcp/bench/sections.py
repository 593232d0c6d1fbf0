"""The measurements, one function per section, each run on a started, initialized target.

A section returns a dict of figures, raises Skip (with the reason) when the target cannot
take it (no such tool), or lets TargetError out when the target misbehaves.
"""

import gc
import os
import re
import shutil
import subprocess
import tempfile
import time

import orjson

from . import SECTIONS
from .client import (CLIENT_INFO, AnswerCheck, EchoRing, Sampler, TargetError, check_answer, encode_request, open_session,
                     time_limit)
from .stats import describe

SHELL_ARGV = ["/bin/echo", "hi"]
WINDOWS = (1, 15, 16, 256)      # the report's 15 concurrent tasks, and 1, 16, 256 in flight
HTTP_BURST = 1000               # sleeping calls at once over HTTP: one connection each
LOG_VOLUME_CALLS = 2000         # calls whose log volume is weighed (well within the logs' rotation)

ORDER = SECTIONS
HEAVY = ("memory", "async", "stress", "logging")   # run in one round only (the last)
TITLES = {"cold-start": "cold start", "cpu": "CPU", "echo": "echo latency", "shell": "shell command latency",
          "surface": "prompts, resources, asking",
          "concurrency": "concurrency", "memory": "memory", "async": "async vs sync", "stress": "stress",
          "logging": "logging"}


class Skip(Exception):
    """The section does not apply to this target (the message says why)."""


class Tools:
    """What a target offers the bench, found with tools/list: an echo, a command runner, a sleep."""

    def __init__(self, tools):
        by_name = {t.get("name"): t for t in tools if isinstance(t, dict)}
        self.names = sorted(n for n in by_name if isinstance(n, str))
        self.echo = self.echo_arg = self.command = self.command_args = self.sleep = self.sleep_arg = None
        self.sleep_scale = 1.0
        if "echo" in by_name:
            self.echo, self.echo_arg = "echo", _string_property(by_name["echo"]) or "text"
        for name in ("run_command", "shell", "execute_command", "run"):
            if name in by_name:
                args = _command_arguments(by_name[name])
                if args is not None:
                    self.command, self.command_args = name, args
                    break
        if "sleep" in by_name:
            props = _properties(by_name["sleep"])
            for key, scale in (("seconds", 1.0), ("duration", 1.0), ("ms", 1000.0), ("milliseconds", 1000.0)):
                if key in props:
                    self.sleep, self.sleep_arg, self.sleep_scale = "sleep", key, scale
                    break

    def sleep_arguments(self, seconds):
        return {self.sleep_arg: seconds * self.sleep_scale}


def _properties(tool):
    schema = tool.get("inputSchema") or {}
    return schema.get("properties") or {}


def _string_property(tool):
    props = _properties(tool)
    required = (tool.get("inputSchema") or {}).get("required") or list(props)
    for key in required:
        if (props.get(key) or {}).get("type") == "string":
            return key
    return None


def _command_arguments(tool):
    """Arguments that run SHELL_ARGV, shaped by the tool's inputSchema, or None."""
    props = _properties(tool)
    for key in ("command", "argv", "cmd", "args"):
        if key in props:
            schema = props[key]
            kinds = {schema.get("type")} if isinstance(schema.get("type"), str) else set(schema.get("type") or ())
            kinds |= {s.get("type") for s in [*schema.get("anyOf", ()), *schema.get("oneOf", ())]
                      if isinstance(s, dict)}
            if "array" in kinds:
                return {key: SHELL_ARGV}
            return {key: " ".join(SHELL_ARGV)}
    return None


class Context:
    """What the sections of one target's run share: the session, its tools, the options, the ring."""

    def __init__(self, session, tools, opts, rings):
        self.session, self.tools, self.opts, self.rings = session, tools, opts, rings
        self.canned = session.canned
        self.calls = 0            # tool calls answered in this session (for per-call figures)
        self.peak_rss = 0.0

    @property
    def name(self):
        return self.session.target.name

    def need_echo(self):
        if not self.canned and self.tools.echo is None:
            raise Skip(f"no echo tool (tools: {', '.join(self.tools.names) or 'none'})")

    def need_sleep(self):
        if self.canned:
            raise Skip("the floor has no tools")
        if self.tools.sleep is None:
            raise Skip("no sleep-like tool (`sleep` with a seconds or ms argument); tools: "
                       + (", ".join(self.tools.names) or "none"))

    def ring(self):
        key = (self.tools.echo or "echo", self.tools.echo_arg or "text")
        if key not in self.rings:
            self.rings[key] = EchoRing(*key)
        return self.rings[key]

    def pipelined(self, window, seconds, warmup=None):
        """calls/s with ``window`` echo calls in flight for ``seconds``; every answer checked."""
        s, ring = self.session, self.ring()
        warmup = self.opts.warmup if warmup is None else warmup
        if warmup:
            with time_limit(warmup + self.opts.timeout, f"{self.name} warm-up at {window} in flight"):
                check = AnswerCheck(self.canned)
                sent, _, _, _ = s.pipeline(ring, window, warmup, check)
                check.verify(ring, sent)
                self.calls += sent
        gc.collect()
        gc.disable()   # a collection in the client would be charged to the target
        try:
            cpu0 = s.tree.cpu_seconds()
            check = AnswerCheck(self.canned)
            with time_limit(seconds + self.opts.timeout, f"{self.name}: {window} calls in flight"):
                sent, answered, wall, client_cpu = s.pipeline(ring, window, seconds, check)
            server_cpu = s.tree.cpu_seconds() - cpu0
        finally:
            gc.enable()
        check.verify(ring, sent)
        self.calls += answered
        return {"calls_per_s": answered / wall, "calls": answered, "wall_s": wall,
                "server_cpu_us": server_cpu / answered * 1e6, "client_cpu_us": client_cpu / answered * 1e6,
                "client_busy_pct": 100 * client_cpu / wall}


# -- sections --------------------------------------------------------------------------------


def cpu_idle(ctx):
    """The target's CPU while nothing is asked of it."""
    tree, seconds = ctx.session.tree, ctx.opts.idle
    cpu0, t0 = tree.cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    return {"idle_cpu_pct": 100 * (tree.cpu_seconds() - cpu0) / (time.perf_counter() - t0)}


def echo_latency(ctx):
    """One echo call in flight at a time: write to answer, per call."""
    ctx.need_echo()
    s, opts = ctx.session, ctx.opts
    tool, arg = ctx.tools.echo or "echo", ctx.tools.echo_arg or "text"
    samples = []
    now = time.perf_counter_ns
    with time_limit(opts.timeout + opts.latency_count * 0.05, f"{ctx.name} echo latency"):
        for i in range(opts.latency_warmup + opts.latency_count):
            text = f"lat-{i}"
            t0 = now()
            s.call(tool, {arg: text}, opts.timeout, None if ctx.canned else text)
            t = now() - t0
            if i >= opts.latency_warmup:
                samples.append(round(t / 1e6, 4))
    ctx.calls += opts.latency_warmup + opts.latency_count
    return {"samples_ms": samples, **{f"{k}_ms": v for k, v in describe(samples).items() if k != "n"}}


def shell_latency(ctx):
    """run_command /bin/echo hi, against subprocess.run of the same in this process, blocks alternating;
    for bemcp also the same server started with --sandbox, in the same alternation."""
    if ctx.canned:
        return {"tool": "subprocess.run", **_subprocess_only(ctx)}   # a floor's row: the section's own floor
    if ctx.tools.command is None:
        raise Skip(f"no command tool (run_command or similar); tools: {', '.join(ctx.tools.names) or 'none'}")
    opts, tools, target = ctx.opts, ctx.tools, ctx.session.target
    tool_samples, local_samples, boxed_samples = [], [], []
    out = {"tool": tools.command}
    boxed = None
    if target.sandbox_argv:
        from .peers import Target
        try:
            boxed = open_session(Target(f"{target.name} --sandbox", argv=target.sandbox_argv, env=target.env,
                                        cwd=target.cwd))
            boxed.initialize(opts.timeout)
        except (TargetError, OSError) as exc:   # no Landlock here: the plain figures stand alone
            why = (boxed.died() if boxed is not None else None) or exc
            out["sandbox_error"] = str(getattr(why, "message", why))
            if boxed is not None:
                boxed.close(1.0)
            boxed = None

    def tool_block(session, count, keep):
        with time_limit(opts.timeout + count, f"{session.target.name} {tools.command}"):
            for _ in range(count):
                t0 = time.perf_counter_ns()
                result = session.call(tools.command, tools.command_args, opts.timeout)
                t = time.perf_counter_ns() - t0
                if result.get("isError") or "hi" not in str(result.get("content")) + str(result.get("structuredContent")):
                    raise TargetError("wrong answer", f"{session.target.name}: {tools.command} {SHELL_ARGV} "
                                                      f"did not print hi: {str(result)[:300]}")
                if keep is not None:
                    keep.append(round(t / 1e6, 4))
        ctx.calls += count

    try:
        half = opts.shell_count // 2
        blocks = [lambda: tool_block(ctx.session, half, tool_samples),
                  lambda: local_samples.extend(_subprocess_block(half))]
        tool_block(ctx.session, opts.shell_warmup, None)
        if boxed is not None:
            tool_block(boxed, opts.shell_warmup, None)
            blocks.append(lambda: tool_block(boxed, half, boxed_samples))
        _subprocess_block(opts.shell_warmup)
        for block in blocks + blocks[::-1]:
            block()
    finally:
        if boxed is not None:
            boxed.close()
    out.update({"samples_ms": tool_samples, "subprocess_samples_ms": local_samples,
                **{f"{k}_ms": v for k, v in describe(tool_samples).items() if k != "n"},
                **{f"subprocess_{k}_ms": v for k, v in describe(local_samples).items() if k != "n"}})
    if boxed_samples:
        out.update({"sandbox_samples_ms": boxed_samples,
                    **{f"sandbox_{k}_ms": v for k, v in describe(boxed_samples).items() if k != "n"}})
        out["sandbox_p50_ratio"] = out["sandbox_median_ms"] / out["median_ms"]
    return out


# The surface section's asking tool (the bench's convention, like `sleep`): it elicits an {"ok": bool}.
ASK_TOOL = "confirm"
ACCEPT = {"action": "accept", "content": {"ok": True}}
MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
               "io.modelcontextprotocol/clientInfo": CLIENT_INFO}


def surface(ctx):
    """prompts/get and resources/read beside an echo tools/call, and an elicitation's round trip in
    both protocol eras: one request (or exchange) in flight at a time, p50 and p90 of each."""
    if ctx.canned:
        raise Skip("the floor has no tools, prompts or resources")
    s, opts = ctx.session, ctx.opts
    exchanges, skipped = {}, {}
    if ctx.tools.echo:
        tool, arg = ctx.tools.echo, ctx.tools.echo_arg
        exchanges["tools/call echo"] = lambda i: s.call(tool, {arg: f"s-{i}"}, opts.timeout, f"s-{i}")
    prompts = _listed(s, "prompts/list", "prompts", opts.timeout)
    if prompts:
        prompt = _pick_prompt(prompts)
        if prompt:
            exchanges["prompts/get"] = lambda i: _expect(s.request("prompts/get", prompt, opts.timeout), "messages")
        else:
            skipped["prompts/get"] = "no prompt whose arguments the bench can fill"
    listed = _listed(s, "resources/list", "resources", opts.timeout)
    if listed:
        fixed = {"uri": listed[0].get("uri")}
        exchanges["resources/read"] = lambda i: _expect(s.request("resources/read", fixed, opts.timeout), "contents")
    templates = _listed(s, "resources/templates/list", "resourceTemplates", opts.timeout)
    if templates:
        filled = {"uri": re.sub(r"\{[^}]*\}", "42", str(templates[0].get("uriTemplate")))}
        exchanges["resources/read template"] = (
            lambda i: _expect(s.request("resources/read", filled, opts.timeout), "contents"))
    if ASK_TOOL in ctx.tools.names:
        if s.kind == "stdio":
            exchanges["elicit (handshake)"] = lambda i: _elicit_handshake(s, opts.timeout)
        else:
            skipped["elicit (handshake)"] = "measured over stdio only (over HTTP the ask comes on the call's stream)"
        exchanges["elicit (2026-07-28)"] = lambda i: _elicit_modern(s, opts.timeout)
    else:
        skipped["elicit"] = f"no `{ASK_TOOL}` tool that asks the user"
    if len(exchanges) < 2:   # an echo alone is the echo section
        raise Skip("no prompts, resources or asking tool to measure")
    out = {}
    with time_limit(opts.timeout + opts.surface_count * len(exchanges) * 0.05, f"{ctx.name} surface"):
        for label, exchange in exchanges.items():
            samples = []
            for i in range(opts.surface_warmup + opts.surface_count):
                t0 = time.perf_counter_ns()
                exchange(i)
                if i >= opts.surface_warmup:
                    samples.append(round((time.perf_counter_ns() - t0) / 1e6, 4))
            d = describe(samples)
            out[label] = {"samples_ms": samples, "median_ms": d["median"], "p90_ms": d["p90"]}
            ctx.calls += opts.surface_warmup + opts.surface_count
    return {"requests": out, "not_measured": skipped}


def _listed(s, method, key, timeout):
    """What ``method`` lists (its first page), or [] if the target does not offer it.

    Asked rather than read off the initialize capabilities: a plugin may add prompts after the handshake."""
    try:
        found = s.request(method, {}, timeout).get(key)
    except TargetError as exc:
        if exc.kind != "error":   # a crash or a hang is the target's failure, not an absence
            raise
        return []
    return [p for p in found if isinstance(p, dict)] if isinstance(found, list) else []


def _pick_prompt(prompts):
    """prompts/get params for the first prompt whose required arguments are all `name`-like strings, or None."""
    for p in prompts:
        required = [a.get("name") for a in p.get("arguments") or [] if a.get("required")]
        if all(isinstance(n, str) for n in required):
            return {"name": p.get("name"), "arguments": {n: "Ada" for n in required}}
    return None


def _expect(result, key):
    if not isinstance(result.get(key), list) or not result[key]:
        raise TargetError("wrong answer", f"an answer without {key}: {str(result)[:300]}")
    return result


def _elicit_handshake(s, timeout):
    """tools/call; the server's elicitation/create arrives and is answered; then the result."""
    id = s.next_id()
    s.write(encode_request(id, "tools/call", {"name": ASK_TOOL, "arguments": {}}) + b"\n")
    with time_limit(timeout, f"{s.target.name} elicitation"):
        while True:
            msg = orjson.loads(s.read_line())
            if msg.get("method") == "elicitation/create" and "id" in msg:
                s.write(orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": ACCEPT}) + b"\n")
            elif "id" in msg and "method" not in msg:
                break
    result = check_answer(msg, id, "accept")
    return result


def _elicit_modern(s, timeout):
    """tools/call answered input_required; the retry with inputResponses and requestState answered complete."""
    params = {"name": ASK_TOOL, "arguments": {}, "_meta": MODERN_META}
    saved = None
    if s.kind == "http":   # a 2026-07-28 request names its version and method in headers, and no session
        saved = s.headers
        s.headers = {k: v for k, v in saved.items() if k != "Mcp-Session-Id"}
        s.headers.update({"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": ASK_TOOL})
    try:
        first = s.request("tools/call", params, timeout)
        if first.get("resultType") != "input_required" or not isinstance(first.get("inputRequests"), dict):
            raise TargetError("wrong answer", f"2026-07-28 {ASK_TOOL}: expected input_required, got {str(first)[:300]}")
        retry = dict(params, inputResponses={k: ACCEPT for k in first["inputRequests"]},
                     requestState=first.get("requestState"))
        return s.request("tools/call", retry, timeout, "accept")
    finally:
        if saved is not None:
            s.headers = saved


def _subprocess_only(ctx):
    samples = _subprocess_block(ctx.opts.shell_count)
    return {"samples_ms": samples, **{f"{k}_ms": v for k, v in describe(samples).items() if k != "n"}}


def _subprocess_block(count):
    samples = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        proc = subprocess.run(SHELL_ARGV, capture_output=True)
        samples.append(round((time.perf_counter_ns() - t0) / 1e6, 4))
        if proc.stdout != b"hi\n":
            raise RuntimeError(f"{SHELL_ARGV} printed {proc.stdout!r}")
    return samples


def concurrency(ctx):
    """Echo calls kept in flight: the report's 15, and 1, 16 and 256; calls/s and CPU per call."""
    ctx.need_echo()
    out = {}
    for window in WINDOWS:
        sampler = Sampler(ctx.session.tree) if window == max(WINDOWS) else None
        if sampler:
            sampler.start()
        try:
            out[str(window)] = ctx.pipelined(window, ctx.opts.phase)
        finally:
            if sampler:
                ctx.peak_rss = max(ctx.peak_rss, sampler.stop())
    return {"windows": out}


def memory(ctx):
    """Many sleeping calls sent at once: the memory each one in flight holds, and the peak."""
    ctx.need_sleep()
    s, opts = ctx.session, ctx.opts
    count, seconds = opts.memory_calls, opts.memory_sleep
    if s.kind == "http":
        count = min(count, HTTP_BURST)   # a connection each: keep within the server's accept backlog
    time.sleep(0.2)
    before = s.tree.rss_mb()
    args = ctx.tools.sleep_arguments(seconds)
    lines = [encode_request(s.next_id(), "tools/call", {"name": ctx.tools.sleep, "arguments": args}) + b"\n"
             for _ in range(count)]
    sampler = Sampler(s.tree, 0.02)
    sampler.start()
    t0 = time.perf_counter()
    try:
        s.send_calls(lines)
        answers = s.read_answers(count, seconds + opts.timeout + count / 500,
                                 f"{ctx.name}: {count} sleeping calls")
    finally:
        peak = sampler.stop()
    wall = time.perf_counter() - t0
    errors = sum(1 for a in answers if "error" in a or (a.get("result") or {}).get("isError"))
    ids = {a.get("id") for a in answers}
    if errors or len(ids) != count:
        raise TargetError("error", f"{count} sleeping calls: {errors} failed, {len(ids)} distinct ids answered")
    ctx.calls += count
    ctx.peak_rss = max(ctx.peak_rss, peak)
    return {"calls": count, "sleep_s": seconds, "wall_s": wall, "rss_before_mb": before, "peak_mb": peak,
            "per_task_kb": max(0.0, peak - before) * 1024 / count, "samples": sampler.samples}


def async_vs_sync(ctx):
    """The report's 50 operations of a 100 ms tool: one at a time, then all at once."""
    ctx.need_sleep()
    s, opts = ctx.session, ctx.opts
    ops, seconds = opts.async_ops, 0.1
    args = ctx.tools.sleep_arguments(seconds)
    t0 = time.perf_counter()
    with time_limit(ops * seconds + opts.timeout, f"{ctx.name} sequential sleeps"):
        for _ in range(ops):
            s.call(ctx.tools.sleep, args, opts.timeout)
    sequential = time.perf_counter() - t0
    lines = [encode_request(s.next_id(), "tools/call", {"name": ctx.tools.sleep, "arguments": args}) + b"\n"
             for _ in range(ops)]
    t0 = time.perf_counter()
    s.send_calls(lines)
    answers = s.read_answers(ops, seconds + opts.timeout, f"{ctx.name}: {ops} concurrent sleeps")
    concurrent = time.perf_counter() - t0
    failed = [a for a in answers if "error" in a or (a.get("result") or {}).get("isError")]
    if failed:
        raise TargetError("error", f"{len(failed)} of {ops} concurrent sleeps failed: {str(failed[0])[:300]}")
    ctx.calls += 2 * ops
    return {"ops": ops, "op_s": seconds, "sequential_s": sequential, "concurrent_s": concurrent,
            "speedup": sequential / concurrent}


def stress(ctx):
    """N echo calls kept in flight for the duration: completions, errors and RSS over time."""
    ctx.need_echo()
    s, opts = ctx.session, ctx.opts
    ring, check = ctx.ring(), AnswerCheck(ctx.canned)
    series = []
    last = [0, 0.0]
    tree = s.tree

    def tick(elapsed, answered):
        rss = tree.rss_mb()
        series.append({"t": elapsed, "calls_per_s": (answered - last[0]) / (elapsed - last[1]),
                       "rss_mb": rss, "errors": check.errors})
        last[:] = [answered, elapsed]

    gc.collect()
    with time_limit(opts.duration + opts.timeout, f"{ctx.name} stress"):
        sent, answered, wall, client_cpu = s.pipeline(ring, opts.stress_inflight, opts.duration, check,
                                                      on_tick=tick, tick=opts.tick)
    ctx.calls += answered
    peak = max((p["rss_mb"] for p in series), default=tree.rss_mb())
    ctx.peak_rss = max(ctx.peak_rss, peak)
    if not ctx.canned and (check.errors or check.good != sent):
        completion_error = check.first_error or f"{sent - check.good} calls unanswered"
    else:
        completion_error = None
    return {"inflight": opts.stress_inflight, "duration_s": wall, "sent": sent, "answered": answered,
            "good": check.good, "errors": check.errors, "completion_pct": 100 * check.good / sent if sent else 0,
            "calls_per_s": answered / wall, "peak_mb": peak, "series": series,
            "client_busy_pct": 100 * client_cpu / wall, "first_error": completion_error}


def logging_volume(ctx):
    """What logging costs: stderr bytes per call for every target; for bemcp, every log file on vs off."""
    out = {}
    size = ctx.session.stderr_bytes()
    if size is not None and ctx.calls:
        out["stderr_bytes"] = size
        out["stderr_bytes_per_call"] = size / ctx.calls
    target = ctx.session.target
    if target.logs_on_argv is None:
        if size is None:
            raise Skip("not started by the bench: its stderr cannot be seen")
        if not out:
            raise Skip("no calls to weigh its stderr against (the echo and concurrency sections make them)")
        return out
    ctx.need_echo()
    on_argv = target.logs_on_argv
    figures = {}
    log_dir = tempfile.mkdtemp(prefix="bemcp-bench-logs-")
    try:
        on = _variant(target, [a.replace("{log_dir}", log_dir) for a in on_argv])
        for label, tgt in (("off", None), ("on", on), ("on", on), ("off", None))[:ctx.opts.logging_phases]:
            figures.setdefault(label, []).append(_logs_phase(ctx, tgt))
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    # The volume on a count of calls the logs keep whole (the throughput phases outgrow their rotation).
    log_dir = tempfile.mkdtemp(prefix="bemcp-bench-logs-")
    try:
        calls = _logs_volume(ctx, _variant(target, [a.replace("{log_dir}", log_dir) for a in on_argv]))
        written = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(log_dir) for f in files)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    rate = {k: sum(v["calls_per_s"] for v in vs) / len(vs) for k, vs in figures.items()}
    out.update({"logs_off_calls_per_s": rate["off"], "logs_on_calls_per_s": rate["on"],
                "logs_on_ratio": rate["on"] / rate["off"], "log_bytes": written, "log_calls": calls,
                "log_bytes_per_call": written / calls,
                "logs_on_server_cpu_us": sum(v["server_cpu_us"] for v in figures["on"]) / len(figures["on"]),
                "logs_off_server_cpu_us": sum(v["server_cpu_us"] for v in figures["off"]) / len(figures["off"])})
    return out


def _logs_volume(ctx, variant, calls=LOG_VOLUME_CALLS):
    """``calls`` echo calls on a fresh logs-on server, 16 in flight; the server is stopped so its logs are flushed."""
    ring = ctx.ring()
    with open_session(variant) as s:
        s.initialize(ctx.opts.timeout)
        lines = [bytes(ring.chunk(i, 1)) for i in range(calls)]
        for start in range(0, calls, 16):
            s.send_calls(lines[start:start + 16])
            answers = s.read_answers(min(16, calls - start), ctx.opts.timeout, f"{variant.name} echo")
            for a in answers:
                check_answer(a, a.get("id"), str(a.get("id")))
    return calls


def _variant(target, argv):
    from .peers import Target
    return Target(f"{target.name} (logs on)", argv=argv, env=target.env, cwd=target.cwd)


def _logs_phase(ctx, variant):
    """256 echo calls in flight on the target itself (logs off) or on a fresh logs-on variant."""
    if variant is None:
        return ctx.pipelined(256, ctx.opts.phase)
    with open_session(variant) as s:
        s.initialize(ctx.opts.timeout)
        time.sleep(0.2)
        sub = Context(s, ctx.tools, ctx.opts, ctx.rings)
        figures = sub.pipelined(256, ctx.opts.phase)
    time.sleep(0.1)   # the session closed: its last log lines are flushed
    return figures


SECTIONS = {"cpu": cpu_idle, "echo": echo_latency, "shell": shell_latency, "surface": surface, "concurrency": concurrency,
            "memory": memory, "async": async_vs_sync, "stress": stress, "logging": logging_volume}
