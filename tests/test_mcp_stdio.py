"""The stdio transport over real pipes: volume, size, bad input, concurrency,
cancellation, timeouts, the fd 1 guard, stdin EOF, progress. Both twins.
"""

import os
import select
import threading
import time

import orjson
import pytest

from stdio_client import MODERN_META


def write_in_thread(server, data):
    """Write ``data`` to the server's stdin from a thread (the reader keeps reading meanwhile)."""
    errors = []

    def write():
        try:
            server.send_raw(data)
        except OSError as exc:
            errors.append(exc)
    thread = threading.Thread(target=write)
    thread.start()
    return thread, errors


def read_to_eof(server, timeout=15.0):
    """Close stdin, then every line the server writes until it closes stdout; and its exit code."""
    server.proc.stdin.close()
    fd = server.proc.stdout.fileno()
    data = server._buf
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "the server did not close stdout in time"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            data += chunk
    code = server.proc.wait(timeout)
    return data, code


def call_msg(rid, name, arguments, meta=None):
    params = {"name": name, "arguments": arguments}
    if meta:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


# -- volume and size ---------------------------------------------------------------------------


def test_2000_pipelined_calls_all_answered_with_matching_ids(spawn):
    server = spawn()
    server.initialize()
    n = 2000
    blob = b"".join(orjson.dumps(call_msg(f"c{i}", "echo", {"text": f"payload {i}"})) + b"\n" for i in range(n))
    thread, errors = write_in_thread(server, blob)
    answers = {}
    while len(answers) < n:
        msg = server.read_message(timeout=30)
        assert msg["id"] not in answers
        answers[msg["id"]] = msg
    thread.join()
    assert errors == []
    assert set(answers) == {f"c{i}" for i in range(n)}
    for i in range(n):
        assert answers[f"c{i}"]["result"]["content"][0]["text"] == f"payload {i}"
    assert server.close() == 0


def test_a_20_mb_argument_round_trips(spawn):
    server = spawn()
    server.initialize()
    text = ("0123456789abcdef" * (20 * 1024 * 1024 // 16))[:-3] + "end"
    thread, errors = write_in_thread(server, orjson.dumps(call_msg(7, "echo", {"text": text})) + b"\n")
    answer = server.wait_for(7, timeout=60)
    thread.join()
    assert errors == []
    assert answer["id"] == 7
    assert answer["result"]["content"][0]["text"] == text
    assert server.request("ping")["result"] == {}
    assert server.close() == 0


def test_a_large_result_is_written_whole(spawn):
    server = spawn(script="kitchen.py")
    answer = server.call_tool("big", {"size": 5_000_000}, timeout=30)
    assert answer["result"]["content"][0]["text"] == "x" * 5_000_000
    assert server.close() == 0


def test_malformed_line_gets_parse_error_and_the_next_request_is_served(spawn):
    server = spawn()
    server.initialize()
    server.send_raw(b'{"jsonrpc": "2.0", "id": 5, "method": "ping"\n')
    error = server.read_message()
    assert error["id"] == 5 and error["error"]["code"] == -32700   # its id, recovered
    # Valid JSON the parser refuses (beyond a double's range) is answered under its id too.
    server.send_raw(b'{"jsonrpc":"2.0","id":"a1","method":"ping","params":{"a":1e999999}}\n')
    error = server.read_message()
    assert error["id"] == "a1" and error["error"]["code"] == -32700
    server.send_raw(b"\xff\xfe not even utf-8\n")
    assert server.read_message()["error"]["code"] == -32700
    assert server.request("ping")["result"] == {}
    assert server.close() == 0


def test_oversized_message_gets_an_error_and_the_next_request_is_served(spawn):
    server = spawn("--max-message-size", "2000")
    server.initialize()
    big = orjson.dumps(call_msg(41, "echo", {"text": "y" * 50_000})) + b"\n"
    server.send_raw(big)
    error = server.read_message()
    assert error["id"] == 41
    assert error["error"]["code"] == -32600
    assert error["error"]["data"]["limit"] == 2000 and error["error"]["data"]["size"] == len(big) - 1
    answer = server.call_tool("echo", {"text": "small"})
    assert answer["result"]["content"][0]["text"] == "small"
    assert server.close() == 0


# -- concurrency -------------------------------------------------------------------------------


def test_while_a_slow_tool_runs_other_requests_are_answered(spawn):
    server = spawn(script="kitchen.py")
    server.initialize()
    server.send(call_msg("slow", "wait_release", {"key": "k"}))
    assert server.request("ping")["result"] == {}
    assert server.call_tool("echo", {"text": "meanwhile"})["result"]["content"][0]["text"] == "meanwhile"
    assert server.call_tool("inflight", {})["result"]["structuredContent"] == {"result": ["slow"]}
    # The slow one has not answered; it does once released.
    assert [m for m in server.stray if m.get("id") == "slow"] == []
    assert server.call_tool("release", {"key": "k"})["result"]["content"][0]["text"] == "ok"
    done = server.wait_for("slow")
    assert done["result"]["content"][0]["text"] == "released k"
    assert server.close() == 0


def test_a_sync_tool_runs_off_the_event_loop(spawn):
    server = spawn(script="kitchen.py")
    server.initialize()
    server.send(call_msg("sync", "sync_wait", {"timeout": 20}))
    # Were the sync tool on the loop, nothing else would be answered until it gave up.
    assert server.request("ping", timeout=10)["result"] == {}
    assert server.call_tool("sync_release", {})["result"]["content"][0]["text"] == "ok"
    result = server.wait_for("sync", timeout=10)["result"]["structuredContent"]
    assert result["released"] is True and result["on_main_thread"] is False
    assert server.close() == 0


def test_cancelled_call_gets_no_response_and_later_calls_work(spawn):
    server = spawn(script="kitchen.py")
    server.initialize()
    server.send(call_msg("doomed", "wait_release", {"key": "never"}))
    assert server.call_tool("inflight", {})["result"]["structuredContent"]["result"] == ["doomed"]
    server.notify("notifications/cancelled", {"requestId": "doomed", "reason": "user gave up"})
    assert server.request("ping")["result"] == {}
    # The tool was stopped (it saw CancelledError) and the request left the table.
    assert server.call_tool("cancelled", {})["result"]["structuredContent"]["result"] == ["wait_release:never"]
    assert server.call_tool("inflight", {})["result"]["structuredContent"]["result"] == []
    # Cancelling what is unknown or finished is harmless.
    server.notify("notifications/cancelled", {"requestId": "doomed"})
    server.notify("notifications/cancelled", {"requestId": 12345})
    server.notify("notifications/cancelled", None)
    assert server.call_tool("echo", {"text": "still here"})["result"]["content"][0]["text"] == "still here"
    data, code = read_to_eof(server)
    assert code == 0
    # Not even the shutdown drain answers it.
    everything = server.stray + [orjson.loads(line) for line in data.splitlines()]
    assert [m for m in everything if m.get("id") == "doomed"] == []


def test_initialize_cannot_be_cancelled(spawn):
    server = spawn()
    server.send({"jsonrpc": "2.0", "id": "init", "method": "initialize",
                 "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}})
    server.notify("notifications/cancelled", {"requestId": "init"})
    assert server.wait_for("init")["result"]["protocolVersion"] == "2025-11-25"
    assert server.close() == 0


def test_a_tool_past_the_timeout_returns_an_error_naming_the_timeout(spawn):
    server = spawn("--timeout", "0.3", script="kitchen.py")
    server.initialize()
    result = server.call_tool("sleep", {"seconds": 30}, timeout=10)["result"]
    assert result["isError"] is True
    message = result["content"][0]["text"]
    assert "timed out" in message and "sleep" in message and "0.3" in message
    assert server.call_tool("cancelled", {})["result"]["structuredContent"]["result"] == ["sleep"]
    # A modern request gets the same, with its resultType.
    result = server.call_tool("sleep", {"seconds": 30}, timeout=10, meta=MODERN_META)["result"]
    assert result["isError"] is True and result["resultType"] == "complete"
    assert server.call_tool("sleep", {"seconds": 0.01})["result"]["content"][0]["text"] == "slept 0.01"
    assert server.close() == 0


# -- stdout belongs to the protocol ------------------------------------------------------------------


def test_nothing_but_json_rpc_reaches_stdout(spawn):
    server = spawn(script="kitchen.py")
    server.initialize()
    noisy = ["noise_print", "noise_fd", "noise_c", "noise_child"]
    for i, name in enumerate(noisy):
        server.send(call_msg(f"n{i}", name, {"marker": f"MARK-{name}"}))
    server.send(call_msg("stdin", "child_stdin", {}))
    answers = {}
    while len(answers) < len(noisy) + 1:
        msg = server.read_message(timeout=30)
        answers[msg["id"]] = msg
    assert all("isError" not in m["result"] for m in answers.values()), answers
    # A child process finds nothing to read on the stdin it inherits: not the requests.
    assert answers["stdin"]["result"]["content"][0]["text"] == "b''"
    data, code = read_to_eof(server)
    assert code == 0
    for line in data.splitlines():
        message = orjson.loads(line)
        assert message["jsonrpc"] == "2.0" and ("id" in message or "method" in message)
        assert message.get("id") != 424242  # the fake message a tool wrote to fd 1
    assert b"MARK" not in data
    # The noise went somewhere harmless: stderr.
    err = server.proc.stderr.read()
    for name in noisy:
        assert f"MARK-{name}".encode() in err, name
    for piece in (b"print", b"sys.stdout", b"sys.__stdout__", b"fd1", b"libc", b"child fd1", b"child fd2",
                  b"child print"):
        assert piece in err, piece


# -- stdin EOF ---------------------------------------------------------------------------------------


def test_stdin_eof_answers_in_flight_requests_then_exits_0(spawn):
    server = spawn(script="kitchen.py")
    server.initialize()
    server.send(call_msg("short", "sleep", {"seconds": 0.3}))
    server.send(call_msg("long", "sleep", {"seconds": 60}))
    server.send(call_msg("sync", "sync_wait", {"timeout": 0.2}))
    started = time.monotonic()
    data, code = read_to_eof(server)
    elapsed = time.monotonic() - started
    assert code == 0
    answers = {m["id"]: m for m in map(orjson.loads, data.splitlines()) if "id" in m}
    assert answers["short"]["result"]["content"][0]["text"] == "slept 0.3"
    assert answers["sync"]["result"]["structuredContent"]["released"] is False
    # The long one could not finish within the bounded drain: it is answered, not dropped.
    assert "shutting down" in orjson.dumps(answers["long"]).decode()
    # Bounded: the drain is 2 s; allow for a loaded machine, never for the 60 s sleep.
    assert elapsed < 10


def test_stdin_eof_exits_even_while_a_sync_tool_is_stuck(spawn):
    # A worker thread blocked in C cannot be interrupted; the server must not outlive its client for it.
    server = spawn(script="kitchen.py")
    server.initialize()
    server.send(call_msg("stuck", "sync_wait", {"timeout": 120}))
    assert server.request("ping")["result"] == {}
    started = time.monotonic()
    data, code = read_to_eof(server, timeout=30)
    elapsed = time.monotonic() - started
    assert code == 0
    (answer,) = [orjson.loads(line) for line in data.splitlines()]
    assert answer["id"] == "stuck" and "shutting down" in answer["error"]["message"]
    assert elapsed < 10


@pytest.mark.parametrize("last, expect", [
    (b'{"jsonrpc":"2.0","id":"last","method":"ping"}', {"jsonrpc": "2.0", "id": "last", "result": {}}),
    (b'{"jsonrpc":"2.0","id":"last","method":"ping", "params": {"pad": "' + b"x" * 3000 + b'"}}', -32600),
    (b'{"jsonrpc":"2.0","id":"last",', -32700),
])
def test_a_last_message_without_its_newline_is_answered_at_eof(spawn, last, expect):
    server = spawn("--max-message-size", "2000")
    server.initialize()
    server.send_raw(last)                       # no newline: the end of input ends the line
    data, code = read_to_eof(server)
    assert code == 0
    (answer,) = [orjson.loads(line) for line in data.splitlines()]
    if isinstance(expect, dict):
        assert answer == expect
    else:
        assert answer["error"]["code"] == expect
        assert answer["id"] == "last"   # recovered from the line, oversized or cut short


def test_stdin_eof_with_nothing_in_flight_exits_at_once(spawn):
    server = spawn()
    server.initialize()
    started = time.monotonic()
    data, code = read_to_eof(server)
    assert code == 0 and data == b""
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("stdout", ["file", "/dev/null"])
def test_stdio_redirected_to_files_and_devices_is_served(twin_env, tmp_path, stdout):
    # `bemcp serve < requests.jsonl > answers.jsonl` (or > /dev/null): neither end is a
    # pipe the event loop can poll, and the server must still answer and exit 0.
    import subprocess
    import sys
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in (
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        call_msg(2, "echo", {"text": "from a file"}))))
    answers = tmp_path / "answers.jsonl" if stdout == "file" else stdout
    env = dict(os.environ, **twin_env)
    with open(requests, "rb") as stdin, open(answers, "wb") as out:
        done = subprocess.run([sys.executable, "-m", "bemcp", "serve", "--no-plugins"], stdin=stdin,
                              stdout=out, stderr=subprocess.PIPE, env=env, timeout=30)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    if stdout == "file":
        first, second = [orjson.loads(line) for line in answers.read_bytes().splitlines()]
        assert first["id"] == 1 and second["result"]["content"][0]["text"] == "from a file"


# -- progress ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["progress", "sync_progress"])
def test_progress_notifications_strictly_increase_and_precede_the_result(spawn, tool):
    server = spawn(script="kitchen.py")
    server.initialize()
    server.send({"jsonrpc": "2.0", "id": "p", "method": "tools/call",
                 "params": {"name": tool, "arguments": {"steps": 5}, "_meta": {"progressToken": "tok-1"}}})
    seen = []
    while True:
        msg = server.read_message(timeout=10)
        if msg.get("id") == "p":
            break
        seen.append(msg)
    assert msg["result"]["content"][0]["text"] == "done"
    assert all(m["method"] == "notifications/progress" for m in seen)
    assert all(m["params"]["progressToken"] == "tok-1" for m in seen)
    values = [m["params"]["progress"] for m in seen]
    assert values == [1, 2, 3, 4, 5]
    assert all(m["params"]["total"] == 5 for m in seen)
    # Without a progressToken, no notifications at all.
    assert server.call_tool(tool, {"steps": 3})["result"]["content"][0]["text"] == "done"
    assert server.stray == []
    assert server.close() == 0
