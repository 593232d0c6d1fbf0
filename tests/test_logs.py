"""Logs and forensics, end to end over real pipes.

Every server here gets ``--log-dir`` under the test's tmp_path: nothing is ever
written into the real home. The servers are ``bemcp serve`` or a small script
(written to tmp_path) built with the public API plus ``setup_logging``.
"""

import glob
import json
import os
import subprocess
import sys
import time

import orjson
import pytest

from stdio_client import ServerProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import asyncio, logging, sys, threading
from bemcp import Server, ToolError
from bemcp.config import parse
from bemcp.logs import setup_logging

argv = sys.argv[1:]
options = {}
if "--perf-interval" in argv:
    i = argv.index("--perf-interval")
    options["perf_interval"] = float(argv[i + 1])
    argv = argv[:i] + argv[i + 2:]
server = Server("logs-test", version="1.0", config=parse(argv))
setup_logging(server, **options)
log = logging.getLogger("plugin.noisy")

@server.tool
async def echo(text: str) -> str:
    return text

@server.tool
async def explode(what: str) -> str:
    """Fails the way a bug does."""
    raise RuntimeError(f"boom: {len(what)}")

@server.tool
def shout(megabytes: int) -> str:
    """Write to stderr (print and logging) from a worker thread."""
    chunk = "x" * 65535
    for _ in range(megabytes * 16):
        print(chunk)
    for _ in range(megabytes * 8):
        log.warning(chunk)
    return "done"

@server.tool
async def shout_on_loop(megabytes: int) -> str:
    """The same, on the event loop itself."""
    chunk = "y" * 65535
    for _ in range(megabytes * 16):
        print(chunk, file=sys.stderr)
    return "done"

@server.tool
async def chat(level: str, message: str) -> str:
    log.log(logging.getLevelName(level.upper()), message)
    return "ok"

@server.tool
async def thread_crash() -> str:
    def run():
        raise ValueError("thread went wrong")
    t = threading.Thread(target=run, name="doomed")
    t.start()
    t.join()
    return "started"

@server.tool
def segfault() -> str:
    import faulthandler
    faulthandler._sigsegv()
    return "unreachable"

@server.tool
async def loop_crash() -> str:
    def bad_callback():
        raise KeyError("no such thing")
    asyncio.get_running_loop().call_soon(bad_callback)
    return "scheduled"

server.run()
'''


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "logs_server.py"
    path.write_text(SCRIPT)
    return str(path)


_started = []


@pytest.fixture(autouse=True)
def _close_servers():
    """A failing test must not leave its server running."""
    yield
    while _started:
        server = _started.pop()
        if server.proc.poll() is None or not server.proc.stdout.closed:
            server.close()


def start(command, env=None, **kwargs):
    full = {"PYTHONPATH": ROOT}
    full.update(env or {})
    server = ServerProcess(command=command, env=full, **kwargs)
    _started.append(server)
    return server


def serve_command(*args):
    return [sys.executable, "-m", "bemcp", "serve", "--no-plugins", *args]


def read_lines(path):
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f.read().splitlines() if line.strip()]


def finish(server):
    """Close stdin, wait for exit, return (exit code, stderr text)."""
    server.proc.stdin.close()
    try:
        err = server.proc.stderr.read().decode(errors="replace")
        code = server.proc.wait(15)
    finally:
        server.close()
    return code, err


def wait_for_file(pattern, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = glob.glob(pattern)
        if found:
            return found
        time.sleep(0.02)
    return []


# -- crash reports ---------------------------------------------------------------------------


def test_tool_failure_writes_a_crash_report_naming_request_and_tool(script, tmp_path, twin_env):
    logs = tmp_path / "logs"
    server = start([sys.executable, script, "--log-dir", str(logs)], env=twin_env)
    server.initialize()
    server.call_tool("echo", {"text": "before"})
    answer = server.call_tool("explode", {"what": "secret-value-123"})
    request_id = server._next_id
    assert answer["result"]["isError"] is True
    code, err = finish(server)
    assert code == 0

    reports = glob.glob(str(logs / "crash-*.json"))
    assert len(reports) == 1, os.listdir(logs)
    with open(reports[0], "rb") as f:
        report = orjson.loads(f.read())
    assert report["request"]["id"] == request_id
    assert report["request"]["tool"] == "explode"
    assert report["exception"]["type"] == "RuntimeError"
    assert "boom: 16" in report["exception"]["message"]
    assert "raise RuntimeError" in report["exception"]["traceback"]
    assert request_id in [row["id"] for row in report["in_flight"]]
    assert {"method": "tools/call", "id": request_id} in \
        [{"method": m["method"], "id": m["id"]} for m in report["recent_messages"]]
    assert report["versions"]["name"] == "logs-test"
    assert report["config"]["log_dir"] == str(logs)
    # Bodies stay out unless log_bodies is on.
    assert "secret-value-123" not in json.dumps(report)
    assert "params" not in report["request"]

    crashes = [e for e in read_lines(logs / "forensics.log") if e["kind"] == "crash"]
    assert crashes and crashes[0]["report"] == os.path.basename(reports[0])
    assert crashes[0]["request_id"] == request_id and crashes[0]["tool"] == "explode"

    # The next start mentions the report once; the one after that does not.
    for expect_mention in (True, False):
        again = start([sys.executable, script, "--log-dir", str(logs)], env=twin_env)
        again.initialize()
        _, err = finish(again)
        assert (os.path.basename(reports[0]) in err) is expect_mention, err


def test_an_exception_escaping_a_thread_writes_a_crash_report(script, tmp_path):
    logs = tmp_path / "logs"
    server = start([sys.executable, script, "--log-dir", str(logs)])
    server.initialize()
    assert server.call_tool("thread_crash")["result"]["content"][0]["text"] == "started"
    found = wait_for_file(str(logs / "crash-*.json"))
    code, err = finish(server)
    assert code == 0
    assert len(found) == 1
    with open(found[0], "rb") as f:
        report = orjson.loads(f.read())
    assert report["where"] == "thread doomed"
    assert report["exception"]["type"] == "ValueError"
    assert "thread went wrong" in err   # the usual traceback still reaches stderr


def test_an_exception_in_an_event_loop_callback_writes_a_crash_report(script, tmp_path):
    logs = tmp_path / "logs"
    server = start([sys.executable, script, "--log-dir", str(logs)])
    server.initialize()
    assert server.call_tool("loop_crash")["result"]["content"][0]["text"] == "scheduled"
    found = wait_for_file(str(logs / "crash-*.json"))
    assert server.request("ping")["result"] == {}   # the loop carries on
    finish(server)
    assert len(found) == 1
    with open(found[0], "rb") as f:
        report = orjson.loads(f.read())
    assert report["where"].startswith("event loop: ")
    assert report["exception"]["type"] == "KeyError"


def test_a_fatal_signal_leaves_stacks_that_the_next_start_mentions(script, tmp_path):
    logs = tmp_path / "logs"
    server = start([sys.executable, script, "--log-dir", str(logs)])
    server.initialize()
    server.send({"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": {"name": "segfault", "arguments": {}}})
    with pytest.raises(EOFError):
        server.read_message(timeout=10)
    assert server.proc.wait(10) < 0
    server.close()
    found = glob.glob(str(logs / "crash-*.txt"))
    assert len(found) == 1
    text = open(found[0]).read()
    assert "Segmentation fault" in text and "segfault" in text   # the stack names the tool's function
    again = start([sys.executable, script, "--log-dir", str(logs)])
    again.initialize()
    _, err = finish(again)
    assert os.path.basename(found[0]) in err and "Segmentation fault" in err


def test_a_clean_exit_leaves_no_fatal_signal_file(script, tmp_path):
    logs = tmp_path / "logs"
    server = start([sys.executable, script, "--log-dir", str(logs)])
    server.initialize()
    assert wait_for_file(str(logs / "crash-*.txt")), "faulthandler's file is opened at start"
    finish(server)
    assert not glob.glob(str(logs / "crash-*"))


# -- an unwritable directory ---------------------------------------------------------------------


def test_an_unwritable_log_directory_serves_normally_and_warns_once(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    logs = blocker / "logs"
    server = start(serve_command("--log-dir", str(logs)))
    server.initialize()
    for i in range(20):
        assert server.call_tool("echo", {"text": f"hi {i}"})["result"]["content"][0]["text"] == f"hi {i}"
    server.send_raw(b"not json\n")
    assert server.read_message()["error"]["code"] == -32700
    status = server.request("resources/read", {"uri": "bemcp://logs"})["result"]["contents"][0]["text"]
    assert server.request("ping")["result"] == {}
    code, err = finish(server)
    assert code == 0
    assert err.count("cannot write logs") == 1, err
    assert str(logs) in err
    assert orjson.loads(status)["log_dir"] == str(logs)
    assert not logs.exists()


# -- stderr nobody reads ---------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["shout", "shout_on_loop"])
def test_a_client_that_never_reads_stderr_does_not_block_the_server(script, tmp_path, tool):
    logs = tmp_path / "logs"
    # stderr is a pipe this test never reads: it fills after 64 KiB.
    server = start([sys.executable, script, "--log-dir", str(logs)])
    server.initialize()
    answer = server.call_tool(tool, {"megabytes": 10}, timeout=30)
    assert answer["result"]["content"][0]["text"] == "done"
    assert server.request("ping", timeout=5)["result"] == {}
    assert server.call_tool("echo", {"text": "still here"}, timeout=5)["result"]["content"][0]["text"] == "still here"
    status = orjson.loads(server.request("resources/read", {"uri": "bemcp://logs"})["result"]["contents"][0]["text"])
    assert status["stderr_dropped_bytes"] > 0
    # Exit stays prompt although stderr is still full.
    server.proc.stdin.close()
    assert server.proc.wait(15) == 0
    server.close()


# -- stdlib logging ----------------------------------------------------------------------------------


def test_logging_goes_to_stderr_at_the_level_and_to_clients_that_asked(script, tmp_path):
    logs = tmp_path / "logs"
    server = start([sys.executable, script, "--log-dir", str(logs), "--log-level", "warning"])
    server.initialize()
    assert server.request("logging/setLevel", {"level": "info"})["result"] == {}
    server.call_tool("chat", {"level": "info", "message": "info-for-the-client"})
    server.call_tool("chat", {"level": "warning", "message": "warning-for-everyone"})
    server.request("ping")
    notes = [m["params"] for m in server.stray if m.get("method") == "notifications/message"]
    assert {"level": "info", "logger": "plugin.noisy", "data": "info-for-the-client"} in notes
    assert any(n["data"] == "warning-for-everyone" for n in notes)
    _, err = finish(server)
    assert "warning-for-everyone" in err
    assert "info-for-the-client" not in err


# -- the logs themselves -------------------------------------------------------------------------------


def run_a_session(command, env=None):
    server = start(command, env=env)
    server.initialize()
    for i in range(5):
        server.call_tool("echo", {"text": "same words"})
    server.call_tool("echo", {"text": "other words"})
    assert server.call_tool("echo", {"wrong": "shape"})["result"]["isError"] is True
    server.send_raw(b"{broken\n")
    server.read_message()
    code, err = finish(server)
    assert code == 0, err
    return err


def test_tasks_log_has_a_record_per_call_with_digests_never_values(tmp_path, twin_env):
    logs = tmp_path / "logs"
    run_a_session(serve_command("--log-dir", str(logs)), env=twin_env)
    tasks = read_lines(logs / "tasks.log")
    assert [t["status"] for t in tasks] == ["ok"] * 6 + ["error"]
    assert all(t["tool"] == "echo" and t["pid"] > 0 and t["duration_ms"] >= 0 for t in tasks)
    assert [t["id"] for t in tasks] == list(range(2, 9))
    digests = [t["arg_digest"] for t in tasks]
    assert len(set(digests[:5])) == 1 and digests[5] != digests[0]
    assert tasks[0]["arg_bytes"] == len(b'{"text":"same words"}')
    # Bytes in: the request line with its newline; out: the answer (the same text comes back).
    assert all(t["bytes_in"] > t["arg_bytes"] and t["bytes_out"] > 40 for t in tasks)
    assert tasks[0]["bytes_out"] == tasks[1]["bytes_out"] and tasks[0]["bytes_in"] == tasks[1]["bytes_in"]
    text = (logs / "tasks.log").read_text()
    assert "same words" not in text and "other words" not in text
    events = read_lines(logs / "forensics.log")
    assert [e["kind"] for e in events] == ["start", "protocol_error", "stop"]
    assert events[1]["problem"] == "malformed" and events[1]["size"] in (7, 8)   # with or without the newline
    assert events[0]["writer"] == ("thread" if twin_env["BEMCP_NO_EXTENSIONS"] else "native thread")
    assert events[2]["requests"]["ok"] >= 6


def test_perf_log_samples_the_running_server(script, tmp_path):
    logs = tmp_path / "logs"
    server = start([sys.executable, script, "--log-dir", str(logs), "--perf-interval", "0.2"])
    server.initialize()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        server.call_tool("echo", {"text": "tick"})
        if (logs / "perf.log").exists() and len(read_lines(logs / "perf.log")) >= 3:
            break
        time.sleep(0.05)
    finish(server)
    samples = read_lines(logs / "perf.log")
    assert len(samples) >= 3
    busy = [s for s in samples if s["lag_p50_ms"] is not None]
    assert busy, samples
    for s in samples:
        assert s["rss"] > 0 and "cpu_pct" in s
        assert s["in_flight"] in (0, 1)   # the client waits for each call before the next
        assert s["children"] == s["rss_children"] == 0   # echo starts no program
        assert s["log_wait_ms"] >= 0 and s["log_waits"] >= 0 and s["dropped"] == 0
    assert sum(s["calls_per_s"] * s["interval_s"] for s in samples) > 0


def test_no_log_files_writes_nothing(tmp_path):
    logs = tmp_path / "logs"
    run_a_session(serve_command("--log-dir", str(logs), "--no-log-files"))
    assert not logs.exists()


# -- `bemcp logs` ---------------------------------------------------------------------------------------


def test_bemcp_logs_summarises_a_real_run(script, tmp_path):
    logs = tmp_path / "logs"
    run_a_session(serve_command("--log-dir", str(logs)))
    server = start([sys.executable, script, "--log-dir", str(logs)])
    server.initialize()
    server.call_tool("explode", {"what": "x"})
    finish(server)

    command = [sys.executable, "-m", "bemcp", "logs", "--log-dir", str(logs)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run(command + ["--json"], capture_output=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    summary = orjson.loads(out.stdout)
    tools = {t["tool"]: t for t in summary["tools"]}
    assert tools["echo"]["calls"] == 7 and tools["echo"]["errors"] == 1
    assert tools["echo"]["p50_ms"] is not None and tools["echo"]["p99_ms"] >= tools["echo"]["p50_ms"]
    assert tools["explode"]["calls"] == 1
    assert summary["tasks"]["count"] == 8
    assert summary["events_by_kind"]["protocol_error"] == 1
    assert summary["crash_count"] == 1 and "RuntimeError" in summary["crashes"][0]["summary"]
    assert summary["errors"][0]["tool"] == "explode"
    assert len(summary["servers"]) == 2
    assert summary["perf"]["samples"] >= 2

    text = subprocess.run(command, capture_output=True, env=env, timeout=60)
    assert text.returncode == 0, text.stderr
    shown = text.stdout.decode()
    for needle in ("echo", "explode", "Protocol errors: 1", "Crash reports: 1", "RuntimeError", "p99 ms"):
        assert needle in shown, shown


def test_bemcp_logs_without_a_directory_says_so(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bemcp", "logs", "--log-dir", str(tmp_path / "none")],
                         capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert out.returncode == 1
    assert b"no log directory" in out.stderr


def test_every_way_a_call_ends_has_its_status_in_tasks_log(spawn, tmp_path):
    logs = tmp_path / "logs"
    limits = tmp_path / "limits.toml"
    limits.write_text("[tool_timeouts]\nnap = 0.5\n")
    server = spawn("--log-dir", str(logs), "--config", str(limits), script="watchdog_server.py")
    server.initialize()
    assert server.call_tool("nap", {"seconds": 0})["result"]["content"][0]["text"] == "rested"   # ok
    assert server.call_tool("explode_never_registered")["error"]["code"] == -32602   # not a call: no row
    past = server.call_tool("nap", {"seconds": 30}, timeout=10)                       # its deadline
    assert past["result"]["isError"] is True
    server.send({"jsonrpc": "2.0", "id": "gone", "method": "tools/call",
                 "params": {"name": "hold", "arguments": {"key": "never"}}})
    server.notify("notifications/cancelled", {"requestId": "gone"})                   # the client's
    server.send({"jsonrpc": "2.0", "id": "held", "method": "tools/call",
                 "params": {"name": "hold", "arguments": {"key": "x"}}})
    assert server.request("test/set_limits", {"soft_mb": 1, "hard_mb": 2})["result"] == {}
    stopped = server.wait_for("held", timeout=15)                                     # the watchdog's
    assert stopped["result"]["isError"] is True
    refused = server.call_tool("nap", {"seconds": 0})                                 # refused
    assert refused["error"]["code"] == -32000
    server.request("test/set_limits", {"soft_mb": 100_000, "hard_mb": 200_000})
    code, _ = finish(server)
    assert code == 0

    commands = start(serve_command("--log-dir", str(logs)))
    commands.initialize()
    slow = commands.call_tool("run_command", {"command": ["sleep", "5"], "timeout": 0.3}, timeout=15)
    assert slow["result"]["isError"] is True                                          # the tool's own limit
    exited = commands.call_tool("run_command", {"command": ["false"]})
    assert not exited["result"].get("isError")                                        # ran; exit code 1
    failed = commands.call_tool("run_command", {"command": ["/nonexistent/bemcp-test-program"]})
    assert failed["result"]["isError"] is True                                        # could not run
    assert finish(commands)[0] == 0

    tasks = read_lines(logs / "tasks.log")
    ended = [(t["tool"], t["status"], t.get("limit_s"), t.get("killed_by")) for t in tasks]
    assert ended[:5] == [("nap", "ok", None, None), ("nap", "timed_out", 0.5, None),
                         ("hold", "cancelled", None, None), ("hold", "killed", None, "memory_hard_limit"),
                         ("nap", "rejected", None, None)], ended
    assert ended[5:] == [("run_command", "timed_out", 0.3, None), ("run_command", "ok", None, None),
                         ("run_command", "error", None, None)]
    assert tasks[5]["exit_code"] != 0 and tasks[6]["exit_code"] == 1
    # `bemcp logs` summarises by the same words.
    out = subprocess.run([sys.executable, "-m", "bemcp", "logs", "--log-dir", str(logs), "--json"],
                         capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
    summary = orjson.loads(out.stdout)
    assert summary["tasks"]["by_status"] == {"ok": 2, "timed_out": 2, "cancelled": 1, "killed": 1,
                                             "rejected": 1, "error": 1}
    text = subprocess.run([sys.executable, "-m", "bemcp", "logs", "--log-dir", str(logs)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": ROOT}).stdout
    assert "timed_out (0.3 s)" in text and "timed_out (0.5 s)" in text


def test_the_default_server_is_one_process_and_counts_its_children_apart(spawn, tmp_path):
    import psutil
    logs = tmp_path / "logs"
    server = spawn("--log-dir", str(logs), env={"BEMCP_NO_PLUGINS": ""})   # plugins and log files on
    server.initialize()
    tools = {t["name"] for t in server.request("tools/list")["result"]["tools"]}
    assert "sysinfo_overview" in tools   # the bundled plugins loaded
    for i in range(50):
        assert server.call_tool("echo", {"text": f"n{i}"})["result"]["content"][0]["text"] == f"n{i}"
    me = psutil.Process(server.proc.pid)
    assert me.children(recursive=True) == []   # no log writer, nothing else
    memory = server.call_tool("server_status")["result"]["structuredContent"]["memory"]
    assert memory["children"] == 0 and memory["children_rss_mb"] == 0
    assert memory["rss_mb"] > 5 and memory["total_rss_mb"] == memory["rss_mb"]
    started = server.call_tool("process_start", {"command": ["sleep", "30"]})["result"]["structuredContent"]
    sleeper = psutil.Process(started["pid"])
    deadline = time.monotonic() + 10
    while sleeper.name() != "sleep" or sleeper.memory_info().rss < 200_000:   # until exec has mapped it
        assert time.monotonic() < deadline, "the child never became a running sleep"
        time.sleep(0.01)
    memory = server.call_tool("server_status")["result"]["structuredContent"]["memory"]
    assert memory["children"] >= 1 and memory["children_rss_mb"] > 0
    assert abs(memory["total_rss_mb"] - memory["rss_mb"] - memory["children_rss_mb"]) <= 0.1 + 1e-9   # each figure rounded to 0.1 MB
    server.call_tool("process_kill", {"id": started["id"]})
    code, _ = finish(server)
    assert code == 0
    tasks = read_lines(logs / "tasks.log")
    assert [t["status"] for t in tasks if t["tool"] == "echo"] == ["ok"] * 50
    out = subprocess.run([sys.executable, "-m", "bemcp", "logs", "--log-dir", str(logs), "--json"],
                         capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
    assert orjson.loads(out.stdout)["tasks"]["count"] == len(tasks) >= 54


def test_a_killed_server_has_written_every_row_older_than_a_tick(spawn, tmp_path):
    import signal
    logs = tmp_path / "logs"
    server = spawn("--no-plugins", "--log-dir", str(logs))
    server.initialize()
    for i in range(300):
        server.send({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                     "params": {"name": "echo", "arguments": {"text": f"n{i}"}}})
    answered = {server.read_message()["id"] for _ in range(300)}
    assert answered == set(range(300))
    time.sleep(0.5)   # many ticks of the loop's hand-off and of the writer thread
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    tasks = read_lines(logs / "tasks.log")
    assert sorted(t["id"] for t in tasks) == list(range(300))
    assert all(t["status"] == "ok" for t in tasks)
