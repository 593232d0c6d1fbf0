"""The watchdog: deadlines, escalation, lock-ups, limits and memory pressure, over real pipes."""

import os
import time

import orjson
import psutil
import pytest

SCRIPT = "watchdog_server.py"


def wait_until(check, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


@pytest.fixture
def records(tmp_path):
    path = tmp_path / "records.jsonl"

    def read(kind=None):
        if not path.exists():
            return []
        rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        return [r for r in rows if kind is None or r["kind"] == kind]
    read.path = str(path)
    return read


@pytest.fixture
def start(spawn, records):
    def start_server(*flags):
        server = spawn(*flags, script=SCRIPT, env={"BEMCP_TEST_RECORDS": records.path})
        server.initialize()
        return server
    return start_server


def text(response):
    return response["result"]["content"][0]["text"]


def status(server):
    return server.call_tool("server_status")["result"]["structuredContent"]


def assert_table_empty(server):
    # Only the status call itself is in flight.
    assert [r["tool"] for r in status(server)["in_flight"]] == ["server_status"]


def test_a_tool_past_its_deadline_gets_an_error_naming_the_timeout(start):
    server = start("--timeout", "0.5")
    began = time.monotonic()
    response = server.call_tool("nap", {"seconds": 30})
    assert time.monotonic() - began < 5
    assert response["result"]["isError"] is True
    assert "timed out after 0.5 s" in text(response)
    assert status(server)["requests"]["timed_out"] == 1
    assert_table_empty(server)
    assert server.close() == 0


def test_the_status_resource_is_the_server_status_report(start):
    server = start()
    server.call_tool("nap", {"seconds": 0})
    read = server.request("resources/read", {"uri": "bemcp://status"})["result"]["contents"][0]
    assert read["uri"] == "bemcp://status" and read["mimeType"] == "application/json"
    report = orjson.loads(read["text"])
    assert [e["method"] for e in report["in_flight"]] == ["resources/read"]   # the read itself
    assert report["requests"]["ok"] >= 1 and report["sandbox"] == {"sandboxed": False}
    assert set(report) == set(status(server))
    assert server.close() == 0


def test_an_async_tool_that_swallows_cancellation_is_released_and_recorded(start, records):
    server = start("--timeout", "0.3")
    response = server.call_tool("swallow", {"seconds": 3})
    assert "timed out" in text(response)
    # The slot is free at once: other calls are served while the runaway still runs.
    assert text(server.call_tool("nap", {"seconds": 0})) == "rested"
    runaway = wait_until(lambda: records("runaway"))[0]
    assert runaway["tool"] == "swallow" and runaway["state"] == "timed_out"
    assert "ignored cancellation" in runaway["action"]
    assert "swallow" in runaway["stack"]
    assert server.call_tool("probe")["result"]["structuredContent"]["swallowed"] >= 1
    assert status(server)["watchdog"]["runaways"] >= 1
    assert server.close() == 0


def test_a_sync_tool_spinning_in_python_is_stopped_in_its_thread(start, records):
    server = start("--timeout", "0.3")
    response = server.call_tool("spin", {"seconds": 60})
    assert "timed out" in text(response)
    state = wait_until(lambda: server.call_tool("probe")["result"]["structuredContent"].get("spin") != "running"
                       and server.call_tool("probe")["result"]["structuredContent"])
    assert state["spin"] == "stopped by ToolInterrupted"
    runaway = wait_until(lambda: records("runaway"))[0]
    assert runaway["tool"] == "spin" and "interrupted" in runaway["action"]
    assert "spin" in runaway["stack"]
    assert status(server)["watchdog"]["thread_interrupts"] == 1
    assert server.close() == 0


def test_a_tool_blocking_the_loop_is_recorded_with_its_stack(start, records):
    server = start()
    assert text(server.call_tool("block", {"seconds": 2})) == "unblocked"
    blocked = wait_until(lambda: records("loop_blocked"))[0]
    assert blocked["blocked_s"] >= 1.0
    assert "time.sleep(seconds)" in blocked["stack"] and "in block" in blocked["stack"]
    assert "_drive" not in blocked["stack"]
    assert status(server)["watchdog"]["lockups"] == 1
    assert server.close() == 0


def test_a_tool_blocking_the_loop_too_long_is_interrupted(start, records):
    server = start("--config", os.devnull)
    # lag_interrupt defaults to 5 s: a 30 s block is cut short with a clear error.
    began = time.monotonic()
    response = server.call_tool("block", {"seconds": 30}, timeout=20)
    assert time.monotonic() - began < 15
    assert response["result"]["isError"] is True
    assert "blocked the server's event loop" in text(response)
    assert records("loop_interrupted")
    assert server.request("ping")["result"] == {}
    assert server.close() == 0


def test_a_tool_limit_refuses_the_extra_call_and_frees_the_slot(start, tmp_path):
    config = tmp_path / "limits.toml"
    config.write_text("max_queued = 0\n[tool_limits]\nhold = 2\n")
    server = start("--config", str(config))
    server.send({"jsonrpc": "2.0", "id": "a", "method": "tools/call",
                 "params": {"name": "hold", "arguments": {"key": "a"}}})
    server.send({"jsonrpc": "2.0", "id": "b", "method": "tools/call",
                 "params": {"name": "hold", "arguments": {"key": "b"}}})
    refused = server.call_tool("hold", {"key": "c"})
    assert refused["error"]["code"] == -32000
    assert "limit of 2 concurrent calls" in refused["error"]["message"]
    assert refused["error"]["data"]["tool_active"] == 2
    server.call_tool("release", {"key": "a"})
    assert text(server.wait_for("a")) == "released a"
    # The slot is back: a new call is accepted.
    server.send({"jsonrpc": "2.0", "id": "c2", "method": "tools/call",
                 "params": {"name": "hold", "arguments": {"key": "c"}}})
    server.call_tool("release", {"key": "b"})
    server.call_tool("release", {"key": "c"})
    assert text(server.wait_for("b")) == "released b"
    assert text(server.wait_for("c2")) == "released c"
    assert status(server)["requests"]["rejected"] == 1
    assert_table_empty(server)
    assert server.close() == 0


def test_a_full_slot_queues_then_starts_the_waiting_call(start):
    server = start("--max-inflight", "2", "--max-queued", "1")
    for key in ("a", "b", "c"):
        server.send({"jsonrpc": "2.0", "id": key, "method": "tools/call",
                     "params": {"name": "hold", "arguments": {"key": key}}})
    # Two run and one waits in the queue, so the next is refused.
    refused = server.call_tool("hold", {"key": "d"})
    assert "queue is full" in refused["error"]["message"]
    assert refused["error"]["data"] == {"active": 2, "limit": 2, "queued": 1, "queue_limit": 1, "tool": "hold",
                                        "tool_active": 2, "tool_limit": 0}
    # Releasing "a" frees a slot: the queued "c" starts, and ends once released.
    for key in ("a", "c", "b"):
        server.request("test/release", {"key": key})
        assert text(server.wait_for(key)) == f"released {key}"
    assert server.close() == 0


def test_memory_pressure_refuses_then_kills_the_largest_child_then_the_newest_call(start, records):
    server = start()
    server.send({"jsonrpc": "2.0", "id": "held", "method": "tools/call",
                 "params": {"name": "hold", "arguments": {"key": "x"}}})
    child = int(text(server.call_tool("spawn_child")))
    assert psutil.pid_exists(child)
    assert server.request("test/set_limits", {"soft_mb": 1, "hard_mb": 2})["result"] == {}
    # Hard limit: the largest child tree goes first ...
    killed = wait_until(lambda: records("memory_hard_limit"))[0]
    assert killed["action"] == "killed the largest child process tree"
    assert killed["pgid"] == child and killed["rss_mb"] > 1
    # ... then, with no children left, the newest tool call is stopped with a clear result.
    stopped = server.wait_for("held", timeout=10)
    assert stopped["result"]["isError"] is True and "memory hard limit" in text(stopped)
    # Soft limit: new tool calls are refused, saying why.
    refused = server.call_tool("nap", {"seconds": 0})
    assert refused["error"]["code"] == -32000 and "memory pressure" in refused["error"]["message"]
    soft = records("memory_soft_limit")[0]
    assert soft["action"] == "refusing new tool calls" and soft["soft_limit_mb"] == 1
    server.request("test/reap")
    # Back to generous limits: calls are accepted again.
    server.request("test/set_limits", {"soft_mb": 100_000, "hard_mb": 200_000})
    wait_until(lambda: "error" not in server.call_tool("nap", {"seconds": 0}))
    assert records("memory_recovered")
    assert server.close() == 0


def test_memory_of_the_process_tree_comes_from_proc_without_psutil():
    # Tool processes are common children: "psutil only with children" would load it often.
    import subprocess
    import sys
    code = (
        "import os, signal, subprocess, sys, time\n"
        "from bemcp.watchdog import sample_memory\n"
        "tree = subprocess.Popen(['sh', '-c', 'sleep 30 & sleep 30; wait'], start_new_session=True,\n"
        "                        stdout=subprocess.DEVNULL)\n"
        "time.sleep(0.5)\n"
        "rss, count, below = sample_memory()\n"
        "os.killpg(tree.pid, signal.SIGKILL); tree.wait()\n"
        "print(rss, count, below, 'psutil' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    rss, count, below, loaded = out.stdout.split()
    assert int(rss) > 5 * 2**20 and int(count) == 3 and int(below) > 0 and loaded == "False", out.stderr
