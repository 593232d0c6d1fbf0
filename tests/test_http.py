"""Streamable HTTP end to end: the official SDK client in both eras, bad input, the
watchdog over HTTP, and a clean exit (both twins, real processes, loopback)."""

import asyncio
import os
import signal
import time

import httpx2 as httpx
import mcp_types as types
import psutil
import pytest
from mcp import Client

from http_server import ACCEPT, MODERN, MODERN_META, HttpServer, modern_headers, modern_post
from test_everything_sdk import Callbacks

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MODES = [("legacy", "2025-11-25"), ("2026-07-28", "2026-07-28")]
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "0"}}}
JSON_HEADERS = {"content-type": "application/json", "accept": ACCEPT}


@pytest.fixture
def http_server(twin_env):
    started = []

    def start(*args, **kwargs):
        kwargs.setdefault("env", {})
        kwargs["env"] = dict(twin_env, **kwargs["env"])
        server = HttpServer(*args, **kwargs)
        started.append(server)
        return server
    yield start
    for server in started:
        server.close()


def everything(start, *args):
    return start(*args, module=("bemcp.examples.everything",))


def sse_messages(response):
    """The JSON-RPC messages of an SSE body (priming and keep-alive events skipped)."""
    import orjson
    out = []
    for event in response.text.split("\n\n"):
        data = [line[5:].strip() for line in event.split("\n") if line.startswith("data:")]
        if data and data[0]:
            out.append(orjson.loads(data[0]))
    return out


# -- the official SDK client -------------------------------------------------------------------

@pytest.mark.parametrize("mode, version", MODES)
async def test_sdk_client_on_the_everything_example(http_server, mode, version):
    server = everything(http_server)
    cb = Callbacks()
    async with Client(server.url, mode=mode, sampling_callback=cb.sampling,
                      elicitation_callback=cb.elicitation, list_roots_callback=cb.roots,
                      logging_callback=cb.logging) as client:
        assert client.protocol_version == version
        names = [t.name for t in (await client.list_tools()).tools]
        assert "test_simple_text" in names and "test_sampling" in names
        simple = await client.call_tool("test_simple_text", {})
        assert simple.content[0].text == "This is a simple text response for testing."
        failing = await client.call_tool("test_error_handling", {})
        assert failing.is_error
        sampled = await client.call_tool("test_sampling", {"prompt": "Capital of France?"})
        assert sampled.content[0].text == "LLM response: Paris, of course"
        elicited = await client.call_tool("test_elicitation", {"message": "Who are you?"})
        assert "testuser" in elicited.content[0].text
        rounds = await client.call_tool("test_input_required_result_multi_round", {})
        assert rounds.content[0].text == "Alice likes green."
        static = (await client.read_resource("test://static-text")).contents[0]
        assert static.text == "This is the content of the static text resource."
        templated = (await client.read_resource("test://template/123/data")).contents[0]
        assert '"id":"123"' in templated.text
        prompt = await client.get_prompt("test_prompt_with_arguments", {"arg1": "a1", "arg2": "a2"})
        assert "arg1='a1'" in prompt.messages[0].content.text
        asked = await client.get_prompt("test_input_required_result_prompt")
        assert "the release notes" in asked.messages[0].content.text

        progress = []

        async def on_progress(value, total, message):
            progress.append(value)
        await client.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)
        assert progress == [0, 50, 100]


@pytest.mark.parametrize("mode, version", MODES)
async def test_sdk_client_on_bemcp_serve(http_server, mode, version):
    server = http_server("--no-plugins")
    async with Client(server.url, mode=mode) as client:
        assert client.protocol_version == version
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"echo", "run_command", "server_status"} <= names
        echoed = await client.call_tool("echo", {"text": "over http"})
        assert echoed.content[0].text == "over http"
        ran = await client.call_tool("run_command", {"command": ["echo", "hello"]})
        assert "hello" in ran.content[0].text
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        assert "bemcp://logs" in uris
        assert (await client.read_resource("bemcp://logs")).contents[0].text
        assert (await client.list_prompts()).prompts == []


async def test_many_clients_at_once_get_their_own_answers(http_server):
    """Every client numbers its requests from 1: the shared in-flight table keeps them apart."""
    server = http_server("--no-plugins")

    async def one(i):
        async with Client(server.url, mode="legacy" if i % 2 else MODERN) as client:
            for j in range(5):
                got = await client.call_tool("echo", {"text": f"{i}-{j}"})
                assert got.content[0].text == f"{i}-{j}"
    await asyncio.gather(*(one(i) for i in range(8)))


# -- bad input gets the spec's status and a JSON-RPC error; the server keeps serving ------------

def test_bad_input_over_http(http_server):
    server = http_server("--no-plugins", "--max-message-size", "4096")
    url = server.url
    with httpx.Client(timeout=10) as c:
        r = c.post(url, content=b"{not json", headers=modern_headers("tools/list"))
        assert r.status_code == 400 and r.json()["error"]["code"] == -32700
        r = c.post(url, content=b"{}", headers={"content-type": "text/plain", "accept": ACCEPT})
        assert r.status_code == 415 and "error" in r.json()
        r = c.post(url, json=INIT, headers={"content-type": "application/json", "accept": "text/html"})
        assert r.status_code == 406 and "error" in r.json()
        r = c.post(url, content=b'{"x":"' + b"a" * 5000 + b'"}', headers=modern_headers("tools/list"))
        assert r.status_code == 413 and r.json()["error"]["code"] == -32600
        r = c.post(url, json=[INIT], headers=JSON_HEADERS)
        assert r.status_code == 400 and r.json()["error"]["code"] == -32600
        # Sessions: unknown, then deleted.
        r = c.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                   headers=dict(JSON_HEADERS, **{"mcp-session-id": "nope"}))
        assert r.status_code == 404 and "error" in r.json()
        r = c.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=JSON_HEADERS)
        assert r.status_code == 400 and "error" in r.json()
        r = c.post(url, json=INIT, headers=JSON_HEADERS)
        session = r.headers["mcp-session-id"]
        assert r.status_code == 200 and len(session) > 30
        with_session = dict(JSON_HEADERS, **{"mcp-session-id": session})
        r = c.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                   headers=dict(with_session, **{"mcp-protocol-version": "1999-01-01"}))
        assert r.status_code == 400 and "error" in r.json()
        assert c.delete(url, headers=with_session).status_code == 204
        r = c.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers=with_session)
        assert r.status_code == 404 and "error" in r.json()
        # 2026-07-28 headers that do not match the body.
        r = modern_post(c, url, "tools/list", headers=modern_headers("tools/call"))
        assert r.status_code == 400 and r.json()["error"]["code"] == -32020
        params = {"name": "echo", "arguments": {"text": "x"}}
        r = modern_post(c, url, "tools/call", params, headers=dict(modern_headers("tools/call", params),
                                                                   **{"mcp-name": "other"}))
        assert r.status_code == 400 and r.json()["error"]["code"] == -32020
        r = modern_post(c, url, "tools/list", headers=dict(modern_headers("tools/list"),
                                                           **{"mcp-protocol-version": "2030-01-01"}))
        assert r.status_code == 400 and r.json()["error"]["code"] == -32022
        r = c.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
                   headers=modern_headers("tools/list"))
        assert r.status_code == 400 and r.json()["error"]["code"] == -32602
        r = modern_post(c, url, "no/such/method")
        assert r.status_code == 404 and r.json()["error"]["code"] == -32601
        assert c.get(url, headers={"accept": "text/event-stream", "mcp-protocol-version": MODERN}).status_code == 405
        assert c.put(url, json={}).status_code == 405
        # Still serving.
        r = modern_post(c, url, "tools/call", {"name": "echo", "arguments": {"text": "alive"}})
        assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == "alive"


def test_security_origin_host_and_token(http_server, tmp_path):
    server = http_server("--no-plugins")
    with httpx.Client(timeout=10) as c:
        assert c.post(server.url, json=INIT, headers=dict(JSON_HEADERS, origin="http://evil.example.com")
                      ).status_code == 403
        assert c.post(server.url, json=INIT, headers=dict(JSON_HEADERS, host="evil.example.com")
                      ).status_code == 421
        ok = c.post(server.url, json=INIT, headers=dict(JSON_HEADERS, origin=f"http://localhost:{server.port}"))
        assert ok.status_code == 200
        assert c.post(server.url, json=INIT, headers=JSON_HEADERS).status_code == 200   # no Origin: allowed

    token = "s3cret-token-" + "x" * 20
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    guarded = http_server("--no-plugins", "--http-token-file", str(token_file))
    with httpx.Client(timeout=10) as c:
        r = c.post(guarded.url, json=INIT, headers=JSON_HEADERS)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert "error" in r.json()
        r = c.post(guarded.url, json=INIT, headers=dict(JSON_HEADERS, authorization="Bearer wrong"))
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
        r = c.post(guarded.url, json=INIT, headers=dict(JSON_HEADERS, authorization=f"Bearer {token}"))
        assert r.status_code == 200
    guarded.close()
    assert token not in guarded.stderr


def test_non_loopback_bind_needs_a_token(twin_env):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "bemcp", "serve", "--no-plugins", "--http", "0.0.0.0:0"],
                         env=dict(os.environ, **twin_env), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--http-token-file" in out.stderr and out.stdout == ""


def test_missing_extra_names_the_install_command(tmp_path, twin_env):
    import subprocess
    import sys
    blocker = tmp_path / "uvicorn.py"
    blocker.write_text("raise ImportError('no uvicorn here')\n")
    env = dict(os.environ, **twin_env, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "bemcp", "serve", "--no-plugins", "--http", "0"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == 'bemcp: serving over HTTP needs the HTTP extra: pip install "bemcp[http]"'


def test_stdio_serve_imports_no_http_dependency(twin_env):
    import subprocess
    import sys
    code = ("import sys, bemcp.cli, bemcp.transports.stdio, bemcp.server\n"
            "print(sorted(m for m in ('uvicorn', 'httptools', 'starlette', 'bemcp.transports.http') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **twin_env),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]"


# -- the watchdog over HTTP ---------------------------------------------------------------------

def _sleepers(pid):
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if "sleep" in p.name()]
    except psutil.NoSuchProcess:
        return []


def _wait_for(check, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_deadline_answers_with_the_timeout(http_server):
    server = http_server("--timeout", "1", script=os.path.join(os.path.dirname(__file__), "servers",
                                                                "watchdog_server.py"))
    with httpx.Client(timeout=30) as c:
        for era in ("modern", "handshake"):
            started = time.monotonic()
            if era == "modern":
                r = modern_post(c, server.url, "tools/call", {"name": "nap", "arguments": {"seconds": 60}})
                result = r.json()["result"]
            else:
                session = c.post(server.url, json=INIT, headers=JSON_HEADERS).headers["mcp-session-id"]
                call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                        "params": {"name": "nap", "arguments": {"seconds": 60}}}
                r = c.post(server.url, json=call, headers=dict(JSON_HEADERS, **{"mcp-session-id": session}))
                result = sse_messages(r)[-1]["result"]
            assert time.monotonic() - started < 20
            assert result["isError"] is True and "timed out after 1 s" in result["content"][0]["text"]


def test_server_status_sees_http_requests_by_their_own_ids(http_server):
    server = http_server("--no-plugins")
    params = {"name": "run_command", "arguments": {"command": ["sleep", "30"]}}

    async def run():
        async with httpx.AsyncClient(timeout=30) as c:
            body = {"jsonrpc": "2.0", "id": "long-one", "method": "tools/call",
                    "params": dict(params, _meta=MODERN_META)}
            task = asyncio.ensure_future(c.post(server.url, json=body, headers=modern_headers("tools/call", params)))
            await asyncio.to_thread(_wait_for, lambda: _sleepers(server.proc.pid))
            r = await c.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "server_status", "arguments": {}, "_meta": MODERN_META}},
                headers=modern_headers("tools/call", {"name": "server_status"}))
            task.cancel()
            return r.json()["result"]["structuredContent"]["in_flight"]
    in_flight = asyncio.run(run())
    assert {(e["id"], e.get("tool")) for e in in_flight} >= {("long-one", "run_command"), (1, "server_status")}


def test_modern_client_disconnecting_kills_the_process_tree(http_server):
    server = http_server("--no-plugins")
    params = {"name": "run_command", "arguments": {"command": ["sh", "-c", "sleep 300 & sleep 301; wait"]}}

    async def call_then_leave():
        async with httpx.AsyncClient(timeout=30) as c:
            body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                    "params": dict(params, _meta=MODERN_META)}
            task = asyncio.ensure_future(c.post(server.url, json=body,
                                                headers=modern_headers("tools/call", params)))
            assert await asyncio.to_thread(_wait_for, lambda: len(_sleepers(server.proc.pid)) == 2)
            task.cancel()      # the client goes away: its connection closes
            try:
                await task
            except asyncio.CancelledError:
                pass
    asyncio.run(call_then_leave())
    assert _wait_for(lambda: not _sleepers(server.proc.pid)), "the call's processes outlived its client"
    with httpx.Client(timeout=10) as c:
        r = modern_post(c, server.url, "tools/call", {"name": "echo", "arguments": {"text": "still here"}})
        assert r.json()["result"]["content"][0]["text"] == "still here"


def test_sigterm_leaves_no_child(http_server):
    server = http_server("--no-plugins")
    params = {"name": "run_command", "arguments": {"command": ["sh", "-c", "sleep 300 & sleep 301; wait"]}}

    async def call():
        async with httpx.AsyncClient(timeout=30) as c:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": dict(params, _meta=MODERN_META)}
            return await c.post(server.url, json=body, headers=modern_headers("tools/call", params))

    async def run():
        task = asyncio.ensure_future(call())
        assert await asyncio.to_thread(_wait_for, lambda: len(_sleepers(server.proc.pid)) == 2)
        children = psutil.Process(server.proc.pid).children(recursive=True)
        server.proc.send_signal(signal.SIGTERM)
        response = await task
        return children, response
    children, response = asyncio.run(run())
    assert server.proc.wait(20) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left behind: {alive}"
    assert response.status_code == 200 and "error" in response.json() or \
        response.json()["result"]["isError"] is True


# -- 2026-07-28 specifics --------------------------------------------------------------------------

def test_modern_progress_streams_as_sse_and_listen_acknowledges(http_server):
    server = everything(http_server)
    with httpx.Client(timeout=10) as c:
        params = {"name": "test_tool_with_progress", "arguments": {},
                  "_meta": dict(MODERN_META, progressToken="p1")}
        r = modern_post(c, server.url, "tools/call", params)
        assert r.headers["content-type"] == "text/event-stream"
        messages = sse_messages(r)
        assert [m["params"]["progress"] for m in messages[:-1]] == [0, 50, 100]
        assert messages[-1]["id"] == 1 and messages[-1]["result"]["resultType"] == "complete"
        quick = modern_post(c, server.url, "tools/call", {"name": "test_simple_text", "arguments": {}})
        assert quick.headers["content-type"] == "application/json"
        listen = {"jsonrpc": "2.0", "id": 9, "method": "subscriptions/listen",
                  "params": {"notifications": {"toolsListChanged": True}, "_meta": MODERN_META}}
        with c.stream("POST", server.url, json=listen, headers=modern_headers("subscriptions/listen")) as s:
            assert s.headers["content-type"] == "text/event-stream"
            first = next(s.iter_lines())
            assert "notifications/subscriptions/acknowledged" in first


def test_multi_round_retries_may_reach_another_process(http_server, tmp_path):
    """requestState is signed with the shared key: round two on another process completes."""
    key = tmp_path / "state.key"
    key.write_bytes(os.urandom(32).hex().encode())
    a = everything(http_server, "--state-key-file", str(key))
    b = everything(http_server, "--state-key-file", str(key))
    caps = dict(MODERN_META, **{"io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}})
    params = {"name": "test_input_required_result_elicitation", "arguments": {}, "_meta": caps}
    with httpx.Client(timeout=10) as c:
        first = modern_post(c, a.url, "tools/call", params).json()["result"]
        assert first["resultType"] == "input_required"
        retry = dict(params, inputResponses={"user_name": {"action": "accept", "content": {"name": "Bo"}}},
                     requestState=first["requestState"])
        done = modern_post(c, b.url, "tools/call", retry, id=2).json()["result"]
        assert done["resultType"] == "complete" and done["content"][0]["text"] == "Hello, Bo!"


def test_handshake_stream_resumes_with_last_event_id(http_server):
    server = everything(http_server)
    with httpx.Client(timeout=10) as c:
        session = c.post(server.url, json=INIT, headers=JSON_HEADERS).headers["mcp-session-id"]
        headers = dict(JSON_HEADERS, **{"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"})
        call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                "params": {"name": "test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": 5}}}
        ids = []
        with c.stream("POST", server.url, json=call, headers=headers) as s:
            for line in s.iter_lines():
                if line.startswith("id:"):
                    ids.append(line[3:].strip())
                if len(ids) == 2:
                    break      # leave after the priming event and the first progress
        # The call goes on; its stream is replayed after the last id seen.
        time.sleep(0.5)
        r = c.get(server.url, headers={"accept": "text/event-stream", "mcp-session-id": session,
                                       "last-event-id": ids[-1]})
        messages = sse_messages(r)
        assert [m["params"]["progress"] for m in messages if "method" in m] == [50, 100]
        assert messages[-1]["id"] == 5 and "result" in messages[-1]


def test_a_silent_client_is_let_go(http_server):
    """A connection that never sends its headers is closed; others are served meanwhile."""
    import socket
    server = http_server("--no-plugins")
    silent = socket.create_connection(("127.0.0.1", server.port))
    half = socket.create_connection(("127.0.0.1", server.port))
    half.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    # A kept-alive connection that serves requests for longer than a request's headers
    # may take, then stalls in the next one's headers.
    later = socket.create_connection(("127.0.0.1", server.port))
    later.settimeout(10)
    until = time.monotonic() + 12
    while time.monotonic() < until:
        later.sendall(b"DELETE /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):     # the whole answer: its JSON-RPC error ends it
            answer += later.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400")
        time.sleep(1)
    later.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    with httpx.Client(timeout=10) as c:
        r = modern_post(c, server.url, "tools/call", {"name": "echo", "arguments": {"text": "served"}})
        assert r.json()["result"]["content"][0]["text"] == "served"
    for sock in (silent, half, later):
        sock.settimeout(30)
        assert sock.recv(100) == b""     # closed by the server
        sock.close()


MOUNTED = '''
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from bemcp import Server

server = Server("mounted")


@server.tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


app = Starlette(routes=[Mount("/mcp", app=server.asgi_app())])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
'''


@pytest.mark.parametrize("mode", ["legacy", MODERN])
async def test_asgi_app_mounts_in_starlette(http_server, tmp_path, mode):
    script = tmp_path / "mounted.py"
    script.write_text(MOUNTED)
    server = http_server(script=str(script))
    async with Client(server.url + "/", mode=mode) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["add"]
        assert (await client.call_tool("add", {"a": 2, "b": 3})).content[0].text == "5"


async def test_resource_updates_reach_only_the_session_that_subscribed(http_server):
    server = everything(http_server)
    seen = {"a": [], "b": []}

    def handler(name):
        async def on_message(message):
            if isinstance(message, types.ResourceUpdatedNotification):
                seen[name].append(str(message.params.uri))
        return on_message
    async with Client(server.url, mode="legacy", message_handler=handler("a")) as a, \
            Client(server.url, mode="legacy", message_handler=handler("b")) as b:
        await a.subscribe_resource("test://watched-resource")
        await b.call_tool("test_update_watched_resource", {"content": "changed"})
        for _ in range(100):
            if seen["a"]:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert seen == {"a": ["test://watched-resource"], "b": []}
