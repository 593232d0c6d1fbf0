"""MCP tasks over real pipes: 2025-11-25 tasks/* and the 2026-07-28 tasks extension."""

import time

import psutil

from stdio_client import MODERN_META

SCRIPT = "watchdog_server.py"
TASKS_META = dict(MODERN_META, **{"io.modelcontextprotocol/clientCapabilities":
                                  {"extensions": {"io.modelcontextprotocol/tasks": {}}}})


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def poll(server, task_id, meta=None, timeout=10.0):
    params = {"taskId": task_id}
    if meta:
        params["_meta"] = meta
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = server.request("tasks/get", params)["result"]
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never finished")


def test_capabilities_announce_tasks_in_both_eras(spawn):
    server = spawn(script=SCRIPT)
    caps = server.initialize()["result"]["capabilities"]
    assert caps["tasks"] == {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
    discover = server.request("server/discover", {"_meta": MODERN_META})["result"]
    assert discover["capabilities"]["extensions"] == {"io.modelcontextprotocol/tasks": {}}
    tools = {t["name"]: t for t in server.request("tools/list")["result"]["tools"]}
    assert tools["work"]["execution"] == {"taskSupport": "optional"}
    assert tools["only_task"]["execution"] == {"taskSupport": "required"}
    assert server.close() == 0


def test_task_flow_2025_create_poll_result(spawn):
    server = spawn(script=SCRIPT)
    server.initialize()
    created = server.request("tools/call", {"name": "work", "arguments": {"seconds": 0.3},
                                            "task": {"ttl": 60000}})["result"]["task"]
    assert created["status"] == "working" and created["ttl"] == 60000 and created["pollInterval"] > 0
    assert created["createdAt"].endswith("Z")
    task = poll(server, created["taskId"])
    assert task["status"] == "completed"
    result = server.request("tasks/result", {"taskId": created["taskId"]})["result"]
    assert result["content"][0]["text"] == "worked 0.3"
    assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": created["taskId"]}
    statuses = [m for m in server.stray if m.get("method") == "notifications/tasks/status"]
    assert statuses and statuses[-1]["params"]["status"] == "completed"
    listed = server.request("tasks/list")["result"]["tasks"]
    assert [t["taskId"] for t in listed] == [created["taskId"]]
    assert server.close() == 0


def test_tasks_result_waits_for_the_end(spawn):
    server = spawn(script=SCRIPT)
    server.initialize()
    created = server.request("tools/call", {"name": "work", "arguments": {"seconds": 0.5},
                                            "task": {}})["result"]["task"]
    began = time.monotonic()
    result = server.request("tasks/result", {"taskId": created["taskId"]})["result"]
    assert time.monotonic() - began > 0.2
    assert result["content"][0]["text"] == "worked 0.5"
    assert server.close() == 0


def test_cancelling_a_task_kills_its_work(spawn):
    server = spawn(script=SCRIPT)
    server.initialize()
    created = server.request("tools/call", {"name": "work", "arguments": {"seconds": 60},
                                            "task": {}})["result"]["task"]
    deadline = time.monotonic() + 5
    pid = None
    while pid is None and time.monotonic() < deadline:
        pid = server.call_tool("probe")["result"]["structuredContent"].get("work_pid")
    assert pid and psutil.pid_exists(pid)
    cancelled = server.request("tasks/cancel", {"taskId": created["taskId"]})["result"]
    assert cancelled["status"] == "cancelled"
    deadline = time.monotonic() + 5
    while not gone(pid):
        assert time.monotonic() < deadline, "the task's process survived its cancellation"
        time.sleep(0.05)
    deadline = time.monotonic() + 5
    while server.call_tool("probe")["result"]["structuredContent"].get("work") != "killed":
        assert time.monotonic() < deadline, "the tool never saw its cancellation"
        time.sleep(0.05)
    # Terminal tasks stay terminal; cancelling again is an error in 2025-11-25.
    again = server.request("tasks/cancel", {"taskId": created["taskId"]})
    assert again["error"]["code"] == -32602
    failed = server.request("tasks/result", {"taskId": created["taskId"]})
    assert "cancelled" in failed["error"]["message"]
    assert server.request("tasks/get", {"taskId": "nope"})["error"]["code"] == -32602
    assert server.close() == 0


def test_task_support_required_and_optional(spawn):
    server = spawn(script=SCRIPT)
    server.initialize()
    # A required-task tool called plainly: -32601 (2025-11-25).
    assert server.call_tool("only_task", {"x": 2})["error"]["code"] == -32601
    # An optional one called plainly runs as an ordinary call.
    assert server.call_tool("work", {"seconds": 0.0})["result"]["content"][0]["text"] == "worked 0.0"
    # 2026-07-28 without the extension: the required tool names the capability it needs.
    missing = server.call_tool("only_task", {"x": 2}, meta=MODERN_META)["error"]
    assert missing["code"] == -32021
    assert missing["data"]["requiredCapabilities"]["extensions"] == {"io.modelcontextprotocol/tasks": {}}
    assert server.close() == 0


def test_task_flow_2026_extension(spawn):
    server = spawn(script=SCRIPT)
    created = server.call_tool("work", {"seconds": 0.2}, meta=TASKS_META)["result"]
    assert created["resultType"] == "task" and created["status"] == "working"
    assert created["ttlMs"] > 0 and created["pollIntervalMs"] > 0
    task = poll(server, created["taskId"], meta=TASKS_META)
    assert task["status"] == "completed" and task["resultType"] == "complete"
    assert task["result"]["content"][0]["text"] == "worked 0.2"
    update = server.request("tasks/update", {"taskId": created["taskId"], "inputResponses": {},
                                             "_meta": TASKS_META})["result"]
    assert update == {"resultType": "complete"}
    doubled = server.call_tool("only_task", {"x": 21}, meta=TASKS_META)["result"]
    task = poll(server, doubled["taskId"], meta=TASKS_META)
    assert task["result"]["content"][0]["text"] == "42"
    # Cancelling in 2026-07-28 acknowledges, also when the task already ended.
    assert server.request("tasks/cancel", {"taskId": created["taskId"], "_meta": TASKS_META})["result"] == \
        {"resultType": "complete"}
    assert server.close() == 0
