"""run_command and the process_* tools through a real `bemcp serve` on real pipes:
cancellation, timeouts, exit with children running, the parent dying, 200 MB of
output, paging, the allowlist; on both twins of the core."""

import os
import shutil
import signal
import subprocess
import sys
import time

import orjson
import psutil
import pytest

from bemcp.procfs import is_running

PY = sys.executable
BASE = ("--no-plugins", "--no-log-files")


def result(response):
    assert "result" in response, response
    return response["result"]


def call(server, name, args, timeout=10.0, **kw):
    return result(server.call_tool(name, args, timeout=timeout, **kw))


def descendants(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def running(pids):
    return [pid for pid in pids if is_running(pid)]


def named_children(server, name, count=1, timeout=5.0):
    """Pids of the server's descendants called ``name`` (waits for ``count`` of them)."""
    found = []

    def look():
        found[:] = [p.pid for p in descendants(server.proc.pid) if _name(p) == name]
        return len(found) >= count
    assert wait_for(look, timeout), f"no {name} under the server"
    return list(found)


def _name(proc):
    try:
        return proc.name()
    except psutil.Error:
        return None


# -- basics ---------------------------------------------------------------------------------


def test_echo_and_a_simple_command(spawn):
    server = spawn(*BASE)
    server.initialize()
    assert call(server, "echo", {"text": "hi"})["content"] == [{"type": "text", "text": "hi"}]
    res = call(server, "run_command", {"command": ["echo", "hello", "world"]})
    sc = res["structuredContent"]
    assert sc["exit_code"] == 0 and sc["stdout"] == "hello world\n" and sc["stderr"] == ""
    assert sc["timed_out"] is False and sc["truncated"] is False
    assert sc["stdout_bytes"] == 12 and sc["stderr_bytes"] == 0 and sc["duration_ms"] > 0
    assert "isError" not in res and "hello world" in res["content"][0]["text"]
    tools = {t["name"]: t for t in result(server.request("tools/list"))["tools"]}
    assert {"run_command", "process_start", "process_read", "process_write", "process_kill",
            "process_list"} <= set(tools)
    assert set(tools["run_command"]["outputSchema"]["required"]) == set(sc)


def test_strings_exit_codes_stdin_and_stderr(spawn):
    server = spawn(*BASE)
    server.initialize()
    sc = call(server, "run_command", {"command": "printf '%s|%s' 'a b' \"c\\\"d\""})["structuredContent"]
    assert sc["stdout"] == 'a b|c"d'
    res = call(server, "run_command", {"command": [PY, "-c", "import sys; print('e', file=sys.stderr); sys.exit(5)"]})
    assert "isError" not in res         # a failing program is a result, not a tool error
    assert res["structuredContent"]["exit_code"] == 5 and res["structuredContent"]["stderr"] == "e\n"
    assert "exit code 5" in res["content"][0]["text"]
    sc = call(server, "run_command", {"command": ["cat"], "stdin": "fed\n"})["structuredContent"]
    assert sc["stdout"] == "fed\n"
    sc = call(server, "run_command", {"command": ["sh", "-c", "kill -TERM $$"]})["structuredContent"]
    assert sc["exit_code"] == -signal.SIGTERM


def test_cat_with_no_input_returns_at_once(spawn):
    server = spawn(*BASE)
    server.initialize()
    started = time.monotonic()
    sc = call(server, "run_command", {"command": ["cat"]}, timeout=5)["structuredContent"]
    assert sc["exit_code"] == 0 and sc["stdout"] == ""
    assert time.monotonic() - started < 3


def test_shell_syntax_is_an_error_that_says_how_to_proceed(spawn):
    server = spawn(*BASE)
    server.initialize()
    res = call(server, "run_command", {"command": "ls | wc -l"})
    assert res["isError"] is True
    text = res["content"][0]["text"]
    assert "shell syntax" in text and "as a list" in text and "--shell" in text


def test_shell_mode_runs_strings_under_sh(spawn):
    server = spawn(*BASE, "--shell")
    server.initialize()
    sc = call(server, "run_command", {"command": "echo hi | tr a-z A-Z"})["structuredContent"]
    assert sc["stdout"] == "HI\n"


def test_children_get_dev_null_and_no_protocol_fd(spawn):
    server = spawn(*BASE)
    server.initialize()
    code = ("import os; print(sorted(map(int, os.listdir('/proc/self/fd')))); "
            "print(os.readlink('/proc/self/fd/0'))")
    out = call(server, "run_command", {"command": [PY, "-c", code]})["structuredContent"]["stdout"]
    fds, stdin = out.split("\n")[:2]
    assert stdin == "/dev/null"
    assert set(orjson.loads(fds)) <= {0, 1, 2, 3}


def test_secrets_in_the_server_environment_do_not_reach_children(spawn):
    server = spawn(*BASE, env={"GITHUB_TOKEN": "s3cret", "PROBE_VISIBLE": "yes"})
    server.initialize()
    out = call(server, "run_command", {"command": ["env"], "env": {"PROBE_CALL": "1"}})["structuredContent"]["stdout"]
    assert "PROBE_VISIBLE=yes" in out and "PROBE_CALL=1" in out and "s3cret" not in out


def test_timeout_argument_bounds(spawn):
    server = spawn(*BASE)
    server.initialize()
    too_long = call(server, "run_command", {"command": ["true"], "timeout": 1e9})
    assert too_long["isError"] is True and "above the server's maximum" in too_long["content"][0]["text"]
    assert call(server, "run_command", {"command": ["true"], "timeout": 0})["isError"] is True


# -- cancellation, timeouts, exits ------------------------------------------------------------


def test_cancelling_a_running_sleep_kills_it_and_sends_no_response(spawn):
    server = spawn(*BASE)
    server.initialize()
    server.send({"jsonrpc": "2.0", "id": "slow", "method": "tools/call",
                 "params": {"name": "run_command", "arguments": {"command": ["sleep", "30"]}}})
    pids = named_children(server, "sleep")
    server.notify("notifications/cancelled", {"requestId": "slow", "reason": "test"})
    assert wait_for(lambda: not running(pids), 1.0), "sleep 30 survived its cancellation by 1 s"
    assert call(server, "echo", {"text": "after"})["content"][0]["text"] == "after"
    with pytest.raises(TimeoutError):
        server.read_message(timeout=0.5)
    assert all(m.get("id") != "slow" for m in server.stray)


def test_a_timeout_on_a_tree_ignoring_sigterm_leaves_nothing(spawn):
    server = spawn(*BASE)
    server.initialize()
    started = time.monotonic()
    res = call(server, "run_command", {"command": ["sh", "-c", 'trap "" TERM; sleep 60 & sleep 60'],
                                       "timeout": 1}, timeout=10)
    took = time.monotonic() - started
    assert res["isError"] is True and took < 4.0
    sc = res["structuredContent"]
    assert sc["timed_out"] is True and sc["exit_code"] == -signal.SIGKILL
    assert "Timed out after 1 s" in res["content"][0]["text"]
    assert not [p for p in descendants(server.proc.pid) if is_running(p.pid)]


def test_closing_stdin_with_children_running_leaves_none(spawn):
    server = spawn(*BASE)
    server.initialize()
    server.send({"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                 "params": {"name": "run_command", "arguments": {"command": ["sleep", "60"]}}})
    call(server, "process_start", {"command": ["sh", "-c", "trap '' TERM; sleep 60 & sleep 60"]})
    pids = named_children(server, "sleep", count=3) + [p.pid for p in descendants(server.proc.pid)]
    started = time.monotonic()
    server.proc.stdin.close()
    assert wait_for(lambda: server.proc.poll() is not None and not running(pids), 3.0), \
        f"left alive after 3 s: {running(pids)}"
    assert time.monotonic() - started < 3.0
    server.close()


def proc_stat(pid):
    """(state, ppid) from /proc, or None once the process is gone (reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def test_daemons_that_leave_the_session_are_adopted_reaped_and_stopped_at_exit(spawn):
    # setsid + a parent that exits: the classic escape from process-group and session kills.
    server = spawn(*BASE, "--shell")
    server.initialize()
    # The shell waits until the daemon has its own session (field 6 of /proc/PID/stat): a
    # child still in the command's session when the shell exits is stopped with it, rightly.
    text = call(server, "run_command", {"command": "setsid sleep 3600 >/dev/null 2>&1 </dev/null & d=$!; "
                                                   "until [ \"$(cut -d' ' -f6 /proc/$d/stat)\" = $d ]; "
                                                   "do sleep 0.01; done; "
                                                   "setsid sh -c 'sleep 0.2' >/dev/null 2>&1 </dev/null & "
                                                   "echo $!"})["structuredContent"]["stdout"]
    short = int(text.split()[-1])
    # The shell is gone once the call returns, but its background child may still be on
    # its way to exec'ing sleep. Adopted by bemcp, not by init: its parent is the server.
    adopted = lambda: [p.pid for p in psutil.process_iter(["cmdline", "ppid"])
                       if p.info["cmdline"] == ["sleep", "3600"] and p.info["ppid"] == server.proc.pid]
    assert wait_for(adopted, 5.0), [(p.pid, p.ppid()) for p in psutil.process_iter(["cmdline"])
                                    if p.info["cmdline"] == ["sleep", "3600"]]
    (daemon,) = adopted()
    # The short one exits: bemcp reaps it (no zombie left under the server).
    assert wait_for(lambda: proc_stat(short) is None, 5.0), proc_stat(short)
    assert call(server, "echo", {"text": "serving"})["content"][0]["text"] == "serving"
    server.proc.stdin.close()
    assert server.proc.wait(10) == 0
    assert wait_for(lambda: proc_stat(daemon) is None or proc_stat(daemon)[0] == "Z", 3.0), proc_stat(daemon)
    server.close()


PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-m", "bemcp", "serve", "--no-plugins", "--no-log-files"],
                         stdin=int(sys.argv[1]), stdout=open(sys.argv[2], "wb"), pass_fds=(int(sys.argv[1]),))
print(child.pid, flush=True)
time.sleep(120)
"""


def test_killing_the_process_that_started_bemcp_leaves_nothing_alive(tmp_path, twin_env):
    # The parent holds bemcp's stdin open for it through a pipe we keep: bemcp sees no EOF,
    # only its parent dying.
    read_end, write_end = os.pipe()
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, **twin_env)
    parent = subprocess.Popen([PY, "-c", PARENT, str(read_end), str(out)], stdout=subprocess.PIPE,
                              pass_fds=(read_end,), env=env)
    os.close(read_end)
    try:
        bemcp = int(parent.stdout.readline())
        lines = [{"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                             "clientInfo": {"name": "t", "version": "0"}}},
                 {"jsonrpc": "2.0", "method": "notifications/initialized"},
                 {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                  "params": {"name": "process_start", "arguments": {"command": ["sleep", "60"]}}},
                 {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                  "params": {"name": "run_command", "arguments": {"command": ["sleep", "61"]}}}]
        os.write(write_end, b"".join(orjson.dumps(m) + b"\n" for m in lines))
        assert wait_for(lambda: len([p for p in descendants(bemcp) if _name(p) == "sleep"]) == 2, 10)
        pids = [bemcp] + [p.pid for p in descendants(bemcp)]
        parent.kill()
        parent.wait()
        assert wait_for(lambda: not running(pids), 3.0), f"left alive after 3 s: {running(pids)}"
    finally:
        os.close(write_end)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()


# -- output --------------------------------------------------------------------------------------

BIG = ("import sys\nb = b'y' * 65535 + b'\\n'\nw = sys.stdout.buffer.write\n"
       "for _ in range(3052): w(b)\nsys.stderr.write('done')")


def test_200_mb_of_output_keeps_memory_flat_and_reports_truncation(spawn):
    server = spawn(*BASE)
    server.initialize()
    sc = call(server, "run_command", {"command": [PY, "-c", BIG]}, timeout=60)["structuredContent"]
    assert sc["exit_code"] == 0 and sc["truncated"] is True
    assert sc["stdout_bytes"] == 3052 * 65536 and sc["stderr"] == "done" and sc["stderr_bytes"] == 4
    assert "output truncated" in sc["stdout"] and f"{3052 * 65536} bytes in total" in sc["stdout"]
    assert len(sc["stdout"]) < 1.1 * 1024 * 1024
    with open(f"/proc/{server.proc.pid}/status") as f:
        peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    assert peak_kb < 200 * 1024, f"peak RSS {peak_kb} kB"


def test_max_output_is_configurable(spawn):
    server = spawn(*BASE, "--max-output", "100")
    server.initialize()
    sc = call(server, "run_command", {"command": [PY, "-c", "print('x' * 1000)"]})["structuredContent"]
    assert sc["truncated"] and sc["stdout_bytes"] == 1001
    assert sc["stdout"].startswith("x" * 50) and sc["stdout"].endswith("x" * 49 + "\n")


def test_process_read_pages_through_a_large_output(spawn):
    server = spawn(*BASE)
    server.initialize()
    count = 300_000
    started = call(server, "process_start",
                   {"command": [PY, "-c", f"for i in range({count}): print(f'{{i:09d}}')"]})["structuredContent"]
    assert set(started) == {"id", "pid"}
    pid = started["id"]
    assert wait_for(lambda: call(server, "process_read", {"id": pid, "max_bytes": 1})["structuredContent"]["running"]
                    is False, 20)
    pages, offset = [], 0
    while True:
        page = call(server, "process_read", {"id": pid, "offset": offset, "max_bytes": 256 * 1024})["structuredContent"]
        assert page["offset"] == offset and page["dropped_bytes"] == 0
        pages.append(page["output"])
        offset = page["next_offset"]
        if offset >= page["total_bytes"]:
            break
    assert len(pages) > 5
    assert "".join(pages) == "".join(f"{i:09d}\n" for i in range(count))
    assert page["exit_code"] == 0 and page["status"] == "exited"
    # Without an offset, reading continues where the last read stopped.
    again = call(server, "process_read", {"id": pid, "offset": 20})["structuredContent"]
    assert again["offset"] == 20
    follow = call(server, "process_read", {"id": pid, "max_bytes": 10})["structuredContent"]
    assert follow["offset"] == again["next_offset"]


def test_background_stdin_kill_and_list(spawn):
    server = spawn(*BASE)
    server.initialize()
    cat = call(server, "process_start", {"command": ["cat"]})["structuredContent"]["id"]
    written = call(server, "process_write", {"id": cat, "data": "ping\n"})["structuredContent"]
    assert written == {"id": cat, "written": 5, "closed": False}
    assert wait_for(lambda: call(server, "process_read", {"id": cat, "offset": 0})["structuredContent"]["output"]
                    == "ping\n", 5)
    listed = call(server, "process_list", {})["structuredContent"]["processes"]
    assert [(p["id"], p["status"], p["command"]) for p in listed] == [(cat, "running", "cat")]
    killed = call(server, "process_kill", {"id": cat})["structuredContent"]
    assert killed["running"] is False and killed["exit_code"] == -signal.SIGTERM
    assert call(server, "process_write", {"id": cat, "data": "x"})["isError"] is True
    assert call(server, "process_read", {"id": "p999"})["isError"] is True

    eof = call(server, "process_start", {"command": ["wc", "-c"]})["structuredContent"]["id"]
    assert call(server, "process_write", {"id": eof, "data": "abc", "close": True})["structuredContent"]["closed"]
    assert wait_for(lambda: call(server, "process_read", {"id": eof, "offset": 0})["structuredContent"]["exit_code"]
                    == 0, 5)
    assert call(server, "process_read", {"id": eof, "offset": 0})["structuredContent"]["output"].strip() == "3"

    code = ("import signal, time\n"
            "signal.signal(signal.SIGUSR1, lambda *a: print('usr1', flush=True))\n"
            "print('ready', flush=True)\ntime.sleep(60)")
    sleeper = call(server, "process_start", {"command": [PY, "-c", code]})["structuredContent"]["id"]

    def output():
        return call(server, "process_read", {"id": sleeper, "offset": 0})["structuredContent"]["output"]
    assert wait_for(lambda: "ready" in output(), 5)
    sent = call(server, "process_kill", {"id": sleeper, "signal": "USR1"})["structuredContent"]
    assert sent["signal"] == "SIGUSR1" and sent["running"] is True
    assert wait_for(lambda: "usr1" in output(), 5)
    assert call(server, "process_kill", {"id": sleeper, "signal": "NOPE"})["isError"] is True
    call(server, "process_kill", {"id": sleeper})


def test_progress_notifications_carry_new_lines(spawn):
    server = spawn(*BASE)
    server.initialize()
    code = "import time\nfor i in range(3):\n    print(f'line {i}', flush=True)\n    time.sleep(0.3)"
    res = call(server, "run_command", {"command": [PY, "-c", code]}, meta={"progressToken": "tok"})
    assert res["structuredContent"]["stdout"] == "line 0\nline 1\nline 2\n"
    progress = [m["params"] for m in server.stray if m.get("method") == "notifications/progress"]
    assert progress and all(p["progressToken"] == "tok" for p in progress)
    assert "line 0" in progress[0]["message"]
    values = [p["progress"] for p in progress]
    assert values == sorted(set(values))


def test_the_process_cap(spawn):
    server = spawn(*BASE, "--max-processes", "1")
    server.initialize()
    sleeper = call(server, "process_start", {"command": ["sleep", "30"]})["structuredContent"]["id"]
    refused = call(server, "run_command", {"command": ["true"]})
    assert refused["isError"] is True and "max_processes = 1" in refused["content"][0]["text"]
    call(server, "process_kill", {"id": sleeper})
    assert call(server, "run_command", {"command": ["true"]})["structuredContent"]["exit_code"] == 0


def test_roots_constrain_the_working_directory(spawn, tmp_path):
    (tmp_path / "sub").mkdir()
    server = spawn(*BASE, "--root", str(tmp_path))
    server.initialize()
    assert call(server, "run_command", {"command": ["pwd"]})["structuredContent"]["stdout"].strip() == str(tmp_path)
    assert call(server, "run_command", {"command": ["pwd"], "cwd": "sub"})["structuredContent"]["stdout"].strip() \
        == str(tmp_path / "sub")
    refused = call(server, "run_command", {"command": ["pwd"], "cwd": "/"})
    assert refused["isError"] is True and "outside the server's roots" in refused["content"][0]["text"]


# -- the allowlist ------------------------------------------------------------------------------------


def test_allowlist_leaves_no_route_to_a_forbidden_program(spawn, tmp_path):
    server = spawn(*BASE, "--allow", "echo", "--allow", "ls")
    server.initialize()
    assert call(server, "run_command", {"command": ["echo", "ok"]})["structuredContent"]["stdout"] == "ok\n"
    assert call(server, "run_command", {"command": "ls -d /"})["structuredContent"]["stdout"] == "/\n"
    echo = shutil.which("echo")
    assert call(server, "run_command", {"command": [echo, "abs"]})["structuredContent"]["stdout"] == "abs\n"
    marker = tmp_path / "ran"
    forbidden = [
        [shutil.which("touch"), str(marker)],                          # absolute path
        ["touch", str(marker)],
        ["sh", "-c", f"touch {marker}"],                                # shells
        "sh -c 'touch x'",
        ["bash", "-c", f"touch {marker}"],
        [PY, "-c", f"open({str(marker)!r}, 'w')"],                     # interpreters
        ["python3", "-c", f"open({str(marker)!r}, 'w')"],
        ["env", "touch", str(marker)],                                  # launchers
        ["xargs", "touch"],
        ["find", str(tmp_path), "-exec", "touch", str(marker), ";"],
        ["nice", "touch", str(marker)],
        ["timeout", "5", "touch", str(marker)],
        ["nohup", "touch", str(marker)],
        f"echo hi; touch {marker}",                                     # shell syntax
        f"echo hi && touch {marker}",
        f"echo $(touch {marker})",
        f"ls | touch {marker}",
        f"echo `touch {marker}`",
    ]
    for command in forbidden:
        for tool in ("run_command", "process_start"):
            res = call(server, tool, {"command": command})
            assert res.get("isError") is True, (tool, command, res)
            assert "Not run" in res["content"][0]["text"], (command, res)
    assert not marker.exists()
    assert call(server, "run_command", {"command": ["echo", "x"], "env": {"LD_PRELOAD": "/x.so"}})["isError"]


def test_shell_with_allow_fails_at_start_with_a_clear_message(twin_env):
    proc = subprocess.run([PY, "-m", "bemcp", "serve", "--shell", "--allow", "ls", *BASE],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, **twin_env))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "--shell cannot be combined with --allow" in proc.stderr
