"""Broken, hanging, raising and noisy plugins, through a real `bemcp serve`.

A plugin raising at import, one sleeping 10 s at import, one whose tool raises and one that
prints: initialize is answered without waiting for them, every other tool works, each failure
shows in `bemcp plugins`, on stderr and in the bemcp://plugins resource, and stdout stays pure.
"""

import os
import subprocess
import sys
import time

import orjson

from stdio_client import HANDSHAKE_PARAMS

ACCEPTANCE = os.path.join(os.path.dirname(__file__), "plugin_fixtures", "acceptance")
ENV = {"BEMCP_NO_PLUGINS": ""}  # an empty value does not disable plugins
BUDGET = 2.0   # plugin_timeout's default: what the hanging plugin makes the loader wait


def clean_env():
    env = dict(os.environ)
    env.pop("BEMCP_NO_PLUGINS", None)
    return env


def test_broken_plugins_do_not_delay_or_break_the_server(spawn):
    server = spawn("--plugins-dir", ACCEPTANCE, env=ENV)
    try:
        # Both at once: initialize is answered first; plugins start loading only then, and the
        # list waits for them, i.e. for the budget the hanging plugin spends. Had initialize
        # waited for the plugins, the two answers would arrive together.
        server.send({"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": HANDSHAKE_PARAMS})
        server.send({"jsonrpc": "2.0", "id": "list", "method": "tools/list"})
        init = server.read_message(timeout=15)
        initialized_at = time.monotonic()
        assert init["id"] == "init" and init["result"]["serverInfo"]["name"] == "bemcp"
        server.notify("notifications/initialized")
        listed = server.wait_for("list", timeout=15)
        assert time.monotonic() - initialized_at > BUDGET / 2, "initialize waited for a hanging plugin"

        tools = {t["name"] for t in listed["result"]["tools"]}
        assert {"echo", "raising_tool_ok", "raising_tool_boom", "noisy_shout",
                "files_read", "git_status", "http_request", "search_text", "sysinfo_overview"} <= tools
        assert "slow_tool" not in tools

        boom = server.call_tool("raising_tool_boom", {"x": 7})["result"]
        assert boom["isError"] is True and "boom 7" in boom["content"][0]["text"]
        ok = server.call_tool("raising_tool_ok", {"x": 2})["result"]
        assert not ok.get("isError") and ok["content"][0]["text"] == "3"
        shout = server.call_tool("noisy_shout", {"word": "hey"})["result"]
        assert shout["content"] == [{"type": "text", "text": "shouted hey"}]
        assert server.call_tool("echo", {"text": "still here"})["result"]["content"][0]["text"] == "still here"

        read = server.request("resources/read", {"uri": "bemcp://plugins"})["result"]
        snap = orjson.loads(read["contents"][0]["text"])
        states = {p["name"]: p for p in snap["plugins"]}
        assert states["broken_import"]["status"] == "failed"
        assert states["broken_import"]["reason"] == "import failed: RuntimeError: broken at import on purpose"
        assert states["slow_import"]["status"] == "failed"
        assert states["slow_import"]["reason"].startswith("timed out after 2 s")
        assert states["raising_tool"]["status"] == states["noisy"]["status"] == "loaded"

        # Everything left on stdout is protocol: read to the end after closing stdin.
        server.proc.stdin.close()
        rest = server._buf + server.proc.stdout.read()
        for line in rest.splitlines():
            orjson.loads(line)
        assert server.proc.wait(10) == 0
        err = server.proc.stderr.read().decode()
    finally:
        server.close()
    for text in ("noisy: print at import", "noisy: os.write(1) at import", "noisy: child process at import",
                 "noisy: buffered on sys.__stdout__ at import",
                 "noisy: print in tool hey", "noisy: os.write(1) in tool"):
        assert text in err
    assert "plugin 'broken_import'" in err and "broken at import on purpose" in err
    assert "plugin 'slow_import'" in err and "timed out after 2 s" in err


def test_a_batch_waits_for_a_plugin_tool_still_loading(spawn):
    # 2025-03-26 batches: a call to a tool whose plugin is still loading is answered, in the
    # batch's one array, once loading ends (the hanging plugin bounds that at 2 s).
    server = spawn("--plugins-dir", ACCEPTANCE, env=ENV)
    server.initialize("2025-03-26")
    server.send([{"jsonrpc": "2.0", "id": "tool", "method": "tools/call",
                  "params": {"name": "raising_tool_ok", "arguments": {"x": 4}}},
                 {"jsonrpc": "2.0", "id": "ping", "method": "ping"}])
    answers = {a["id"]: a for a in server.read_message(timeout=15)}
    assert answers["tool"]["result"]["content"] == [{"type": "text", "text": "5"}]
    assert answers["ping"]["result"] == {}
    assert server.close() == 0


def test_bemcp_plugins_lists_failures_with_reasons_and_tools():
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bemcp", "plugins", "--plugins-dir", ACCEPTANCE],
                          capture_output=True, text=True, timeout=30, env=clean_env())
    assert time.monotonic() - started < 8.0  # the hanging plugin is abandoned, not awaited
    assert proc.returncode == 1  # a plugin failed
    out = proc.stdout
    assert "broken_import FAILED" in out and "reason: import failed: RuntimeError: broken at import" in out
    assert "slow_import  FAILED" in out and "reason: timed out after 2 s" in out
    assert "tools: raising_tool_boom, raising_tool_ok" in out and "tools: noisy_shout" in out
    assert "noisy:" not in out  # plugin output went to stderr
    assert "7 loaded, 2 failed, 0 disabled" in out

    proc = subprocess.run([sys.executable, "-m", "bemcp", "plugins", "--json", "--plugin", "files",
                           "--plugins-dir", ACCEPTANCE], capture_output=True, text=True, timeout=30,
                          env=clean_env())
    snap = orjson.loads(proc.stdout)
    assert proc.returncode == 0 and snap["loaded"] == 1
    assert {p["name"] for p in snap["plugins"] if p["status"] == "disabled"} >= {"slow_import", "git"}


def _stderr_lines(proc, seen):
    """Collect ``proc``'s stderr lines with the time each arrived, in a thread."""
    import threading

    def read():
        for line in iter(proc.stderr.readline, b""):
            seen.append((time.monotonic(), line.decode(errors="replace")))
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_a_plugin_failure_is_said_at_once_and_a_hanging_one_is_named_at_exit(spawn, tmp_path):
    # A budget far beyond every bound below: nothing here may wait for it.
    config = tmp_path / "bemcp.toml"
    config.write_text("plugin_timeout = 30\n")
    logs = tmp_path / "logs"
    started = time.monotonic()
    server = spawn("--plugins-dir", ACCEPTANCE, "--config", str(config), "--log-dir", str(logs), env=ENV)
    seen = []
    reader = _stderr_lines(server.proc, seen)
    init = server.initialize()
    up = time.monotonic()
    assert init["result"]["serverInfo"]["name"] == "bemcp"
    assert up - started < 10.0, "initialize waited for the plugin budget"
    deadline = time.monotonic() + 10
    while not any("broken at import on purpose" in line for _, line in seen) and time.monotonic() < deadline:
        time.sleep(0.01)
    said = [when for when, line in seen if "broken at import on purpose" in line]
    assert said, seen
    # Within 0.3 s of the server's start (counted from its answer to initialize, so a slow
    # interpreter start on a busy machine is not held against it): not at the budget's end.
    assert said[0] - up < 0.3, (said[0] - started, up - started)
    # stdin closes while slow_import still hangs: the server exits and names it.
    server.proc.stdin.close()
    assert server.proc.wait(20) == 0
    reader.join(5)
    err = "".join(line for _, line in seen)
    assert "plugin 'broken_import'" in err and "broken at import on purpose" in err
    assert "plugin 'slow_import'" in err and "abandoned at exit" in err
    assert err.count("broken at import on purpose") == 1   # said once, not again at the end
    events = [orjson.loads(line) for line in (logs / "forensics.log").read_bytes().splitlines()]
    failed = {e["plugin"]: e["reason"] for e in events if e["kind"] == "plugin_failed"}
    assert failed["broken_import"] == "import failed: RuntimeError: broken at import on purpose"
    assert failed["slow_import"].startswith("abandoned at exit after ")


def test_prompts_and_resources_of_a_plugin_still_loading_are_declared_and_listed(spawn):
    # initialize is answered before the plugin has loaded: the capabilities say prompts and
    # resources may come, and the lists and lookups wait for the plugin instead of missing it.
    prompting = os.path.join(os.path.dirname(__file__), "plugin_fixtures", "prompting")
    server = spawn("--plugins-dir", prompting, "--no-log-files", env=ENV)
    caps = server.initialize()["result"]["capabilities"]
    assert caps["prompts"] == {"listChanged": True} and caps["resources"]["listChanged"] is True
    names = [p["name"] for p in server.request("prompts/list")["result"]["prompts"]]
    assert "plugin_greeting" in names
    got = server.request("prompts/get", {"name": "plugin_greeting", "arguments": {"name": "Ada"}})
    assert got["result"]["messages"][0]["content"]["text"] == "Say hello to Ada."
    templates = server.request("resources/templates/list")["result"]["resourceTemplates"]
    assert "notes://{topic}" in [t["uriTemplate"] for t in templates]
    read = server.request("resources/read", {"uri": "notes://cats"})["result"]
    assert read["contents"][0]["text"] == "notes on cats"


def test_a_plugin_loading_in_the_background_gets_its_start_and_shutdown_callbacks(spawn, tmp_path):
    # Under `bemcp serve` plugins load after the server started: a start callback they
    # register runs at once, not never; a shutdown callback runs at exit.
    marker = tmp_path / "stopped"
    (tmp_path / "lifecycle.py").write_text(
        "import pathlib\n"
        "events = []\n\n"
        "def setup(server):\n"
        "    @server.tool\n"
        "    def lifecycle_events() -> list:\n"
        "        'The lifecycle callbacks that ran.'\n"
        "        return events\n"
        "    server.on_start(lambda: events.append('started'))\n"
        f"    server.on_shutdown(lambda: pathlib.Path({str(marker)!r}).write_text('stopped'))\n")
    server = spawn("--plugin", "lifecycle", "--plugins-dir", str(tmp_path), env=ENV)
    server.initialize()
    result = server.call_tool("lifecycle_events")["result"]
    assert result["structuredContent"] == {"result": ["started"]}, result
    assert server.close() == 0
    assert marker.read_text() == "stopped"
