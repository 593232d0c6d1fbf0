"""What the benchmark scripts share: targets, a raw-pipe peer, statistics, tables.

The scripts run as ``python benches/<name>.py``, so this module is imported as
``_common`` from benches/ (sys.path[0]). The load client here is deliberately
plain: blocking os.read/os.write on the pipes' file descriptors, requests encoded
before any clock starts, responses counted by newline and checked afterwards.
"""

import contextlib
import math
import os
import platform
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import orjson

BENCHES = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCHES)
PEERS = os.path.join(BENCHES, "peers")
PYTHON = sys.executable

HANDSHAKE_VERSION = "2025-11-25"
CLIENT_INFO = {"name": "bemcp-bench", "version": "0"}

# The flags the bemcp targets would like: no plugins and no log files, so the
# figures measure the core and the MCP layer, not optional extras.
BEMCP_SERVE_FLAGS = ("--no-plugins", "--no-log-files")


# -- targets -------------------------------------------------------------------


@dataclass
class Target:
    """A server to measure: how to spawn it, and what it can be asked."""

    name: str
    argv: list
    env: dict = field(default_factory=dict)
    description: str = ""
    canned: bool = False      # answers every line with one fixed line (the floor): no ids, no handshake
    needs: list = field(default_factory=list)   # paths that must exist (else: skipped)
    skip_hint: str = ""       # how to make it available
    notes: list = field(default_factory=list)   # caveats printed with the results

    def missing(self):
        """Why this target cannot run here, or None."""
        if shutil.which(self.argv[0]) is None:
            return f"{self.argv[0]} not found"
        for path in self.needs:
            if not os.path.exists(path):
                return f"{path} is missing" + (f" ({self.skip_hint})" if self.skip_hint else "")
        return None


_serve_flags_cache = None


def bemcp_serve_flags(wanted=BEMCP_SERVE_FLAGS):
    """The subset of ``wanted`` that this checkout's `bemcp serve` accepts.

    Flags come and go while bemcp is developed; a benchmark that dies on an
    unknown flag measures nothing, so unknown ones are dropped (and reported).
    """
    global _serve_flags_cache
    if _serve_flags_cache is None:
        proc = subprocess.run([PYTHON, "-m", "bemcp", "serve", "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        help_text = proc.stdout if proc.returncode == 0 else ""
        _serve_flags_cache = help_text
    kept = [f for f in wanted if f in _serve_flags_cache]
    dropped = [f for f in wanted if f not in kept]
    return kept, dropped


def compiled_core_available():
    """True if `import bemcp` here picks the compiled core."""
    proc = subprocess.run([PYTHON, "-c", "import bemcp; print(bemcp.USE_EXTENSIONS)"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "BEMCP_NO_EXTENSIONS"})
    return proc.stdout.strip() == "True"


def bemcp_env(pure):
    """The environment for a bemcp server: the compiled core, or the pure twins."""
    env = {"BEMCP_NO_EXTENSIONS": "1"} if pure else {"BEMCP_NO_EXTENSIONS": None}
    env["PYTHONPATH"] = ROOT   # this checkout, installed or not
    return env


def standard_targets():
    """floor, floor-batched, bemcp, bemcp-py, sdk, ts, and the plain uvloop references (in that order)."""
    flags, dropped = bemcp_serve_flags()
    serve = [PYTHON, "-m", "bemcp", "serve", *flags]
    notes = [f"`bemcp serve` does not know {', '.join(dropped)}: ran without"] if dropped else []
    compiled_notes = list(notes)
    if not compiled_core_available():
        compiled_notes.append("compiled core not built: `bemcp` ran the pure twins too")
    node_modules = os.path.join(PEERS, "node_modules", "@modelcontextprotocol", "sdk")
    return [
        Target("floor", [PYTHON, os.path.join(BENCHES, "floor.py")], canned=True,
               description="benches/floor.py: one canned line written per input line read (issue 2's floor)"),
        Target("floor-batched", [PYTHON, os.path.join(BENCHES, "floor.py"), "--batched"], canned=True,
               description="benches/floor.py --batched: one write of canned lines per read (stricter; no ratios)"),
        Target("bemcp", serve, bemcp_env(pure=False), description="bemcp serve, compiled core",
               notes=compiled_notes),
        Target("bemcp-py", serve, bemcp_env(pure=True),
               description="bemcp serve, pure-Python twins (BEMCP_NO_EXTENSIONS=1)", notes=notes),
        Target("sdk", [PYTHON, os.path.join(PEERS, "sdk_echo.py")],
               description=f"official Python SDK {package_version('mcp')} (MCPServer), benches/peers/sdk_echo.py"),
        Target("ts", ["node", os.path.join(PEERS, "ts_echo.mjs")], needs=[node_modules],
               skip_hint="run benches/peers/setup.sh",
               description=f"TypeScript SDK {ts_sdk_version()} (McpServer) on node, benches/peers/ts_echo.mjs"),
        Target("uvloop-eager", [PYTHON, os.path.join(PEERS, "uvloop_echo.py")],
               description="reference: plain uvloop echo, no validation or bookkeeping, handler run "
                           "inline (benches/peers/uvloop_echo.py)"),
        Target("uvloop-task", [PYTHON, os.path.join(PEERS, "uvloop_echo.py"), "--tasks"],
               description="reference: the same with an asyncio Task per request"),
    ]


def parse_extra_target(spec, canned=False):
    """``NAME=COMMAND`` from the command line: an ad-hoc target (e.g. a flag variant)."""
    name, sep, command = spec.partition("=")
    if not sep or not name or not command:
        raise ValueError(f"--target wants NAME=COMMAND, not {spec!r}")
    return Target(name, shlex.split(command), {"PYTHONPATH": ROOT}, description=command, canned=canned)


def run_rounds(targets, rounds, measure):
    """({target: [figures per round]}, {target: [errors]}): each round runs every target, order rotated.

    Rotating the order spreads any slow drift of the machine over all targets; one
    target's failure is recorded and never loses the others' figures.
    """
    results = {t.name: [] for t in targets}
    errors = {}
    for r in range(rounds):
        shift = r % len(targets)
        for target in targets[shift:] + targets[:shift]:
            log(f"round {r + 1}/{rounds}: {target.name} ...")
            try:
                results[target.name].append(measure(target))
            except Exception as exc:
                log(f"  {target.name} failed: {type(exc).__name__}: {exc}")
                errors.setdefault(target.name, []).append(f"{type(exc).__name__}: {exc}")
    return results, errors


def select_targets(all_targets, names):
    """The targets named (comma-separated; all if empty), in the order given."""
    by_name = {t.name: t for t in all_targets}
    if not names:
        return list(all_targets)
    chosen = []
    for name in names.split(","):
        name = name.strip()
        if name not in by_name:
            raise SystemExit(f"unknown target {name!r}; known: {', '.join(by_name)}")
        chosen.append(by_name[name])
    return chosen


# -- a server on raw pipes -------------------------------------------------------------


class PhaseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds, what):
    """Abort a blocking phase after ``seconds`` (SIGALRM), so a hung server cannot hang the run.

    A timer rather than poll() before each read keeps the hot loops to one
    syscall per read, the same for every target.
    """
    def expired(signum, frame):
        raise PhaseTimeout(f"{what}: no progress within {seconds:g} s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Peer:
    """A server process on pipes; messages are bytes lines."""

    def __init__(self, target, extra_env=None):
        env = dict(os.environ)
        for key, value in {**target.env, **(extra_env or {})}.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        self.target = target
        self.started = time.perf_counter()
        # stderr goes to a file: a pipe nobody drains would block a chatty server mid-run.
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(target.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=env, cwd=ROOT, bufsize=0)
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        self.pending = b""
        self.buffer = bytearray(1 << 20)   # reads land here: no allocation per read
        self.view = memoryview(self.buffer)

    # Raw I/O.

    def write(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view):]

    def read_line(self):
        """The next line (without its newline); blocks. EOFError if the server closed stdout."""
        while True:
            i = self.pending.find(b"\n")
            if i >= 0:
                line = self.pending[:i]
                self.pending = self.pending[i + 1:]
                return line
            n = os.readv(self.rfd, (self.buffer,))
            if not n:
                raise EOFError(f"{self.target.name} closed stdout{self.stderr_hint()}")
            self.pending += self.view[:n]

    def read_response(self, expect_id=None):
        """The next response (a message with an id), skipping notifications."""
        while True:
            line = self.read_line()
            msg = orjson.loads(line)
            if "id" not in msg or "method" in msg:
                continue
            if expect_id is not None and not self.target.canned and msg["id"] != expect_id:
                raise RuntimeError(f"{self.target.name}: expected the answer to id {expect_id}, got {line[:200]!r}")
            return msg

    def request(self, id, method, params, timeout=30.0):
        self.write(encode_request(id, method, params))
        with time_limit(timeout, f"{self.target.name} {method}"):
            msg = self.read_response(id)
        if "error" in msg and not self.target.canned:
            raise RuntimeError(f"{self.target.name}: {method} failed: {msg['error']}")
        return msg

    def notify(self, method, params=None):
        if not self.target.canned:   # the floor would answer it, and nobody reads that answer
            message = {"jsonrpc": "2.0", "method": method}
            if params is not None:
                message["params"] = params
            self.write(orjson.dumps(message) + b"\n")

    def initialize(self, timeout=60.0):
        """The handshake; returns seconds from spawn to the initialize answer."""
        self.request(0, "initialize", {"protocolVersion": HANDSHAKE_VERSION, "capabilities": {},
                                       "clientInfo": CLIENT_INFO}, timeout)
        ready = time.perf_counter() - self.started
        self.notify("notifications/initialized")
        return ready

    def list_tools(self):
        return self.request(1, "tools/list", {})["result"]["tools"]

    # Process facts (Linux /proc).

    def status_kb(self, key):
        """A /proc/PID/status size field in KiB (VmRSS, VmHWM, ...)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def rss_mb(self):
        return self.status_kb("VmRSS") / 1024

    def peak_rss_mb(self):
        return self.status_kb("VmHWM") / 1024

    def cpu_seconds(self):
        """User + system CPU time of the server process so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    # Ending.

    def stderr_hint(self):
        tail = self.stderr_tail()
        return f"; its stderr ends with: {tail!r}" if tail else ""

    def stderr_tail(self, size=500):
        """The last ``size`` bytes the server wrote to stderr."""
        try:
            end = self.stderr.seek(0, os.SEEK_END)
            self.stderr.seek(max(0, end - size))
            return self.stderr.read()
        except (OSError, ValueError):
            return b""

    def close(self, timeout=5.0):
        """Close stdin (EOF: the polite stop), wait, kill if needed; the exit code."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            # Keep reading stdout so a server flushing its last answers never blocks on a full pipe.
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                if select.select([self.rfd], [], [], 0.01)[0] and not os.read(self.rfd, 1 << 16):
                    time.sleep(0.01)   # EOF on stdout: just wait for the exit
            code = self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()
        return code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def encode_request(id, method, params):
    return orjson.dumps({"jsonrpc": "2.0", "id": id, "method": method, "params": params}) + b"\n"


def encode_call(id, tool, arguments):
    return encode_request(id, "tools/call", {"name": tool, "arguments": arguments})


def client_cpu_seconds():
    """User + system CPU time of this (load client) process."""
    t = os.times()
    return t.user + t.system


# -- statistics and output ---------------------------------------------------------------


def percentile(sorted_values, q):
    """The q-th percentile (0..100) by nearest rank of already-sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=0):
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def fmt_ratio(value):
    return "–" if value is None else f"{value:.2f}x"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def markdown_table(headers, rows, align=None):
    """A GitHub Markdown table; ``align`` is a string of l/r per column."""
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]

    def line(cells):
        out = []
        for cell, width, a in zip(cells, widths, align):
            cell = str(cell)
            out.append(cell.rjust(width) if a == "r" else cell.ljust(width))
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                         for w, a in zip(widths, align)) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def package_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return "?"


def ts_sdk_version():
    try:
        with open(os.path.join(PEERS, "node_modules", "@modelcontextprotocol", "sdk", "package.json"), "rb") as f:
            return orjson.loads(f.read())["version"]
    except OSError:
        return "(not installed)"


def _run(argv):
    try:
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def environment(command):
    """The facts a reader needs to reproduce a run."""
    commit = _run(["git", "rev-parse", "--short", "HEAD"]) or "?"
    if _run(["git", "status", "--porcelain", "--untracked-files=no"]):
        commit += " (with uncommitted changes)"
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu": f"{cpu_model()}, {os.cpu_count()} logical CPUs",
        "os": f"{platform.system()} {platform.release()}",
        "commit": commit,
        "compiled_core": compiled_core_available(),
        "uvloop": package_version("uvloop"),
        "orjson": package_version("orjson"),
        "mcp": package_version("mcp"),
        "node": _run(["node", "--version"]) or "(none)",
        "ts_sdk": ts_sdk_version(),
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def reproducing_block(env):
    return "\n".join([
        "Reproducing:",
        "",
        f"- {env['python']} (uvloop {env['uvloop']}, orjson {env['orjson']}), "
        f"compiled core: {'yes' if env['compiled_core'] else 'NO (pure twins only)'}",
        f"- {env['cpu']}; {env['os']}",
        f"- commit {env['commit']}; {env['date']}",
        f"- peers: mcp {env['mcp']}; node {env['node']}, @modelcontextprotocol/sdk {env['ts_sdk']}",
        f"- `{env['command']}`",
    ])


def command_line():
    return " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT)
                                             if sys.executable.startswith(ROOT) else sys.executable,
                                             os.path.relpath(os.path.abspath(sys.argv[0]), ROOT),
                                             *sys.argv[1:]])


def write_json(path, data):
    with open(path, "wb") as f:
        f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def log(*args):
    """Progress goes to stderr; stdout carries only the report."""
    print(*args, file=sys.stderr, flush=True)
