"""`bemcp bench` end to end, in tiny configurations: the outputs and their structure (never timings),
other SDKs' servers over stdio and Streamable HTTP, and targets that crash, answer wrongly or hang."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import bemcp.bench as bemcp_bench

TINY = ["--quick", "--scale", "0.05", "--duration", "0.3", "--timeout", "20"]


def bench(tmp_path, *args, timeout=240):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bemcp", "bench", "--out", str(out), *TINY, *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    return proc, out, results


def test_a_tiny_run_writes_the_report_the_results_and_the_plots(tmp_path):
    proc, out, results = bench(tmp_path, "--peers", "floor,bemcp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert len(list(out.glob("*.png"))) >= 3
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png.name})" in report

    # results.json: the documented top-level keys, one entry per target, every section's figures.
    assert results["format"] == "bemcp-bench/1"
    assert {"environment", "options", "sections", "targets", "skipped", "be_mcp_v0_11", "summary",
            "rounds", "plots"} <= set(results)
    env = results["environment"]
    assert env["command"].startswith("bemcp bench") and env["python"] and env["cpus"]
    assert set(results["targets"]) == {"floor", "bemcp"}
    assert results["targets"]["bemcp"]["kind"] == "stdio"
    bemcp, floor = results["summary"]["bemcp"], results["summary"]["floor"]
    assert bemcp["errors"] == {} and floor["errors"] == {}
    assert {"mean", "median", "min", "max", "stdev", "p90", "p99"} <= set(bemcp["echo"])
    assert bemcp["shell"]["mean"] > 0 and bemcp["shell_subprocess"]["mean"] > 0
    # The same server with --sandbox, in the same run; where Landlock is missing, the reason instead.
    assert bemcp.get("shell_sandbox_p50_ratio", 0) > 0 or bemcp["shell_sandbox_error"]
    # prompts, resources and asking beside tools/call, the elicitation in both eras.
    assert set(bemcp["surface"]) == {"tools/call echo", "prompts/get", "resources/read", "resources/read template",
                                     "elicit (handshake)", "elicit (2026-07-28)"}
    assert all(d["n"] == results["options"]["surface_count"] for d in bemcp["surface"].values())
    assert set(bemcp["concurrency"]) == {"1", "15", "16", "256"}
    assert bemcp["concurrency"]["256"]["client_busy_pct"] >= 0
    assert bemcp["stress"]["inflight"] == 275 and bemcp["stress"]["completion_pct"] == 100
    assert bemcp["stress"]["series"] and "rss_mb" in bemcp["stress"]["series"][0]
    assert bemcp["memory"]["per_task_kb"] >= 0 and bemcp["peak_rss_mb"] >= bemcp["rss_start_mb"] > 0
    assert bemcp["async"]["ops"] >= 2 and bemcp["async"]["speedup"] > 1
    assert bemcp["logging"]["log_bytes_per_call"] > 0 and bemcp["logging"]["logs_on_ratio"] > 0
    assert bemcp["cold_start_ms"] > 0 and bemcp["idle_cpu_pct"] >= 0
    # The floor has no tools: the sections that need one say so instead of a figure.
    assert "no tools" in floor["skipped"]["async"]
    # Raw figures are kept: every latency sample of the round.
    echo = results["rounds"][0]["targets"]["bemcp"]["sections"]["echo"]
    assert len(echo["samples_ms"]) == results["options"]["latency_count"]

    # report.md: the summary with the BE-MCP v0.11 column, then a section per measurement.
    assert "| measurement" in report and "BE-MCP v0.11" in report and "33.8x" in report
    for heading in ("## Echo latency", "## Shell command latency", "## Prompts, resources, asking", "## Concurrency", "## Stress", "## Memory",
                    "## Async vs sync", "## Logging", "## CPU", "## Cold start", "## Reproducing"):
        assert heading in report
    assert "Load client: at 256 in flight it drove `floor`" in report
    # The console table on stdout, the directory named at the end, progress on stderr.
    assert "| measurement" in proc.stdout and str(out) in proc.stderr
    assert "left)" in proc.stderr


SDK_SERVER = """
    import sys
    import anyio
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("mine")

    @server.tool()
    async def echo(text: str) -> str:
        return text

    @server.tool()
    async def sleep(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "slept"

    if len(sys.argv) > 1:   # Streamable HTTP on this port: stateless with JSON answers, or sessions and SSE
        import uvicorn
        json_mode = sys.argv[2] == "json"
        uvicorn.run(server.streamable_http_app(stateless_http=json_mode, json_response=json_mode),
                    host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    else:
        server.run()
"""


def test_a_server_written_with_the_official_sdk_is_measured_over_stdio(tmp_path):
    (tmp_path / "my_server.py").write_text(textwrap.dedent(SDK_SERVER))
    proc, out, results = bench(tmp_path, "--peers", "none", "--sections", "echo,concurrency,async,stress",
                               "--target", f"mine={sys.executable} {tmp_path / 'my_server.py'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    mine = results["summary"]["mine"]
    assert mine["errors"] == {}
    assert mine["echo"]["n"] > 0 and mine["concurrency"]["15"]["calls_per_s"] > 0
    assert mine["stress"]["completion_pct"] == 100 and mine["async"]["speedup"] > 1
    assert results["targets"]["mine"]["command"].endswith("my_server.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(server, port):
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "the HTTP server did not start"
            time.sleep(0.05)


@contextlib.contextmanager
def serving_http(*argv, port):
    """An HTTP MCP server started from ``argv``, listening on ``port``: (process, URL); stopped after."""
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_listening(server, port)
        yield server, f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        server.wait(10)
        server.stderr.close()


@pytest.mark.parametrize("mode", ["json", "sse"])
def test_a_streamable_http_server_is_measured_at_its_url(tmp_path, mode):
    (tmp_path / "my_server.py").write_text(textwrap.dedent(SDK_SERVER))
    port = _free_port()
    with serving_http(sys.executable, str(tmp_path / "my_server.py"), str(port), mode, port=port) as (server, url):
        proc, out, results = bench(tmp_path, "--peers", "none", "--sections", "echo,concurrency,memory,async,cpu",
                                   "--target", f"web={url}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        web = results["summary"]["web"]
        assert results["targets"]["web"] == {**results["targets"]["web"], "kind": "http", "url": url}
        assert web["errors"] == {}
        assert web["echo"]["n"] > 0 and web["concurrency"]["256"]["calls_per_s"] > 0
        assert web["async"]["speedup"] > 1 and web["memory"]["calls"] > 0
        # The bench did not start it, so no cold start; its process was found by its port.
        assert web["cold_start_ms"] is None and web["rss_start_mb"] > 0
        assert server.poll() is None   # left running: it is not the bench's to stop


def test_bemcp_serving_http_is_measured_at_its_url(tmp_path):
    port = _free_port()
    plugins = os.path.join(os.path.dirname(bemcp_bench.__file__), "servers", "plugins")
    with serving_http(sys.executable, "-m", "bemcp", "serve", "--no-log-files", "--http", f"127.0.0.1:{port}",
                      "--plugins-dir", plugins, "--plugin", "bench_tools", port=port) as (server, url):
        proc, out, results = bench(tmp_path, "--peers", "none", "--sections", "echo,shell,surface,concurrency,async",
                                   "--target", f"mine={url}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        mine = results["summary"]["mine"]
        assert results["targets"]["mine"]["kind"] == "http" and mine["errors"] == {}
        assert mine["echo"]["n"] > 0 and mine["concurrency"]["256"]["calls_per_s"] > 0
        assert mine["shell"]["n"] > 0 and mine["async"]["speedup"] > 1
        # Over HTTP the 2026-07-28 ask is a result and a retry; the handshake-era one is left out, and said so.
        assert {"prompts/get", "resources/read", "elicit (2026-07-28)"} <= set(mine["surface"])
        assert "stdio only" in mine["surface_not_measured"]["elicit (handshake)"]
        assert "## Prompts, resources, asking" in (out / "report.md").read_text()
        assert server.poll() is None   # left running: it is not the bench's to stop


# A raw stdio server that misbehaves as told: after `ok` echo calls it crashes, answers wrongly or hangs.
BAD_SERVER = """
    import json, os, sys, time
    mode, ok = sys.argv[1], int(sys.argv[2])
    calls = 0
    for line in sys.stdin:
        msg = json.loads(line)
        if "id" not in msg:
            continue
        result = {}
        if msg["method"] == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                      "serverInfo": {"name": mode, "version": "0"}}
        elif msg["method"] == "tools/list":
            result = {"tools": [{"name": "echo", "inputSchema": {"type": "object",
                      "properties": {"text": {"type": "string"}}, "required": ["text"]}}]}
        elif msg["method"] == "tools/call":
            calls += 1
            text = msg["params"]["arguments"]["text"]
            if calls > ok:
                if mode == "crash":
                    print("giving up", file=sys.stderr, flush=True)
                    os._exit(3)
                if mode == "hang":
                    time.sleep(3600)
                if mode == "wrong":
                    text = "hi"   # fast, and wrong
            result = {"content": [{"type": "text", "text": text}]}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\\n")
        sys.stdout.flush()
"""


def test_targets_that_crash_answer_wrongly_or_hang_are_reported_and_the_others_finish(tmp_path):
    (tmp_path / "bad.py").write_text(textwrap.dedent(BAD_SERVER))
    bad = f"{sys.executable} {tmp_path / 'bad.py'}"
    proc, out, results = bench(tmp_path, "--peers", "floor", "--sections", "echo,concurrency", "--timeout", "2",
                               "--target", f"crash={bad} crash 10", "--target", f"wrong={bad} wrong 10",
                               "--target", f"hang={bad} hang 10")
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = results["summary"]
    assert summary["floor"]["errors"] == {} and summary["floor"]["concurrency"]["256"]["calls_per_s"] > 0
    crash, wrong, hang = (summary[n]["errors"]["echo"] for n in ("crash", "wrong", "hang"))
    assert crash["kind"] == "crashed" and "status 3" in crash["message"] and "giving up" in crash["message"]
    assert wrong["kind"] == "wrong answer" and "'hi'" in wrong["message"]
    assert hang["kind"] == "hung" and "2 s" in hang["message"]
    # The sections after a failure are not run on that spawn, and say why.
    assert "failed in echo latency" in summary["crash"]["skipped"]["concurrency"]
    report = (out / "report.md").read_text()
    assert "## Errors" in report and "`wrong` · echo latency (wrong answer" in report
    assert "failed" in report.split("## Summary")[1].split("##")[0]
    for name in ("crash", "wrong", "hang"):
        assert f"{name} failed in echo latency" in proc.stdout


@pytest.mark.parametrize("section", ["concurrency", "stress"])
def test_a_fast_wrong_answer_under_load_is_caught(tmp_path, section):
    """Right one call at a time, wrong only when many are in flight: the pipelined check finds it."""
    (tmp_path / "bad.py").write_text(textwrap.dedent(BAD_SERVER))
    proc, out, results = bench(tmp_path, "--peers", "none", "--sections", f"echo,{section}",
                               "--target", f"wrong={sys.executable} {tmp_path / 'bad.py'} wrong 1000")
    assert proc.returncode == 1
    summary = results["summary"]["wrong"]
    err = summary["errors"][section]
    assert err["kind"] == "wrong answer" and "should echo" in err["message"]
    if section == "stress":   # counted, not stopped: the run's figures say how much was wrong
        assert summary["stress"]["errors"] > 0 and summary["stress"]["completion_pct"] < 100


@pytest.mark.parametrize("args, message", [
    (["--target", "nameless"], "NAME=COMMAND or NAME=URL"),
    (["--target", "x=/no/such/server"], "not found"),
    (["--peers", "nosuch"], "unknown peer"),
    (["--sections", "nosuch"], "unknown section"),
])
def test_bad_arguments_are_refused_with_a_clear_error(tmp_path, args, message):
    proc, _, _ = bench(tmp_path, *args, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr


def test_a_peer_that_cannot_be_installed_is_listed_as_skipped_with_the_reason(tmp_path):
    env_path = os.path.dirname(sys.executable)   # no node, no npm
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bemcp", "bench", "--out", str(out), *TINY,
                           "--peers", "floor,ts", "--sections", "cold-start"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": env_path, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert "node and npm are needed" in results["skipped"]["ts"]
    assert list(results["targets"]) == ["floor"]
    assert "- `ts`: skipped, node and npm are needed" in (out / "report.md").read_text()
    assert "skipping peer ts" in proc.stderr


def test_a_peer_that_does_not_start_is_found_before_the_run():
    from bemcp.bench.peers import Target
    from bemcp.bench.runner import probe
    why = probe(Target("dies", argv=[sys.executable, "-c", "import sys; print('no', file=sys.stderr); sys.exit(4)"]),
                timeout=10)
    assert why.startswith("cannot be started") and "status 4" in why and "no" in why
    assert probe(Target("fine", argv=[sys.executable, "-m", "bemcp", "serve", "--no-plugins", "--no-log-files"]),
                 timeout=30) is None


def test_the_bench_stays_off_the_serve_start_path():
    """`bemcp serve` builds the same parser; only the bench's light command-line module comes with it."""
    code = ("import sys, bemcp.cli; bemcp.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith('bemcp.bench') or m in ('matplotlib', 'psutil')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['bemcp.bench']"
