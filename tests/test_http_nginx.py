"""Scale-out as docs/deploy.md configures it: several processes behind nginx (both twins).

2026-07-28 requests spread over every process and multi round-trip retries complete
on whichever process gets them (a shared --state-key-file); handshake-era sessions
stay with the process that opened them; the official SDK client works through nginx.
"""

import asyncio
import os

import httpx2 as httpx
import orjson
import pytest
from mcp import Client

from http_server import MODERN_META, HttpServer, Nginx, free_port, modern_post
from test_everything_sdk import Callbacks

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def farm(twin_env, tmp_path):
    """``farm(n, *args, module=...)``: n processes and nginx in front, as deploy.md says."""
    opened = []

    def start(n, *args, module=("bemcp", "serve")):
        ports = [free_port() for _ in range(n)]
        backends = [HttpServer(*args, port=p, env=twin_env, module=module, wait=False) for p in ports]
        opened.extend(backends)
        for b in backends:
            b.wait_ready()
        nginx = Nginx(str(tmp_path / f"nginx{len(opened)}"), free_port(), ports)
        opened.append(nginx)
        return nginx, backends
    yield start
    for thing in reversed(opened):
        thing.close()


def served_ok(client, backend):
    """How many calls a process answered, from its own server_status (asked directly)."""
    r = modern_post(client, backend.url, "tools/call", {"name": "server_status", "arguments": {}})
    return r.json()["result"]["structuredContent"]["requests"]["ok"]


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_sdk_client_through_nginx(farm, mode):
    nginx, backends = farm(2, "--no-plugins")
    for _ in range(2):      # two clients: least_conn may pick either process for each
        async with Client(nginx.url, mode=mode) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"echo", "run_command"} <= names
            for i in range(10):
                got = await client.call_tool("echo", {"text": f"hop {i}"})
                assert got.content[0].text == f"hop {i}"
            assert (await client.read_resource("bemcp://logs")).contents[0].text
            assert (await client.list_prompts()).prompts == []


def test_modern_requests_reach_every_process_and_sessions_stay_home(farm):
    nginx, backends = farm(2, "--no-plugins")

    async def burst():
        async with httpx.AsyncClient(timeout=30) as c:
            async def call(i):
                return await c.post(nginx.url, json={"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                                     "params": {"name": "echo", "arguments": {"text": str(i)},
                                                                "_meta": MODERN_META}},
                                    headers={"content-type": "application/json",
                                             "accept": "application/json, text/event-stream",
                                             "mcp-protocol-version": "2026-07-28",
                                             "mcp-method": "tools/call", "mcp-name": "echo"})
            return await asyncio.gather(*(call(i) for i in range(200)))
    replies = asyncio.run(burst())
    assert all(r.json()["result"]["content"][0]["text"] == str(r.json()["id"]) for r in replies)
    with httpx.Client(timeout=10) as c:
        counts = [served_ok(c, b) for b in backends]
        assert all(n > 0 for n in counts), counts

        # A session opened through nginx lives in one process; every later request
        # of it reaches that process, however busy the other one is.
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                           "clientInfo": {"name": "t", "version": "0"}}}
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        for _ in range(4):
            r = c.post(nginx.url, json=init, headers=headers)
            session = r.headers["mcp-session-id"]
            home = [b for b in backends if session.startswith(f"{b.port}.")]
            assert len(home) == 1
            with_session = dict(headers, **{"mcp-session-id": session})
            for i in range(6):
                r = c.post(nginx.url, json={"jsonrpc": "2.0", "id": 10 + i, "method": "tools/list"},
                           headers=with_session)
                assert r.status_code == 200 and b'"tools"' in r.content
            assert c.delete(nginx.url, headers=with_session).status_code == 204


def _mrtr_round_trips(url, times):
    """Run an elicitation round trip ``times`` times through ``url``; the outcomes."""
    caps = dict(MODERN_META, **{"io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}})
    params = {"name": "test_input_required_result_elicitation", "arguments": {}, "_meta": caps}
    outcomes = []
    with httpx.Client(timeout=10) as c:
        for i in range(times):
            first = modern_post(c, url, "tools/call", params, id=2 * i).json()["result"]
            assert first["resultType"] == "input_required"
            retry = dict(params, requestState=first["requestState"],
                         inputResponses={"user_name": {"action": "accept", "content": {"name": f"n{i}"}}})
            outcomes.append(modern_post(c, url, "tools/call", retry, id=2 * i + 1).json())
    return outcomes


def test_multi_round_retries_complete_on_any_process(farm, tmp_path):
    key = tmp_path / "state.key"
    key.write_bytes(os.urandom(32).hex().encode())
    nginx, _ = farm(2, "--state-key-file", str(key), module=("bemcp.examples.everything",))
    outcomes = _mrtr_round_trips(nginx.url, 12)
    assert [o["result"]["content"][0]["text"] for o in outcomes] == [f"Hello, n{i}!" for i in range(12)]

    # The control: processes with keys of their own refuse each other's state, so
    # retries did land on the other process above.
    nginx, _ = farm(2, module=("bemcp.examples.everything",))
    refused = [o for o in _mrtr_round_trips(nginx.url, 12) if "error" in o]
    assert refused and all("integrity" in o["error"]["message"] for o in refused)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_sdk_client_gets_prompts_and_asks_through_nginx(farm, tmp_path, mode):
    key = tmp_path / "state.key"
    key.write_bytes(os.urandom(32).hex().encode())
    nginx, _ = farm(2, "--state-key-file", str(key), module=("bemcp.examples.everything",))
    cb = Callbacks()
    async with Client(nginx.url, mode=mode, sampling_callback=cb.sampling,
                      elicitation_callback=cb.elicitation, list_roots_callback=cb.roots) as client:
        prompt = await client.get_prompt("test_prompt_with_arguments", {"arg1": "a1", "arg2": "a2"})
        assert "arg1='a1'" in prompt.messages[0].content.text
        asked = await client.get_prompt("test_input_required_result_prompt")
        assert "the release notes" in asked.messages[0].content.text
        rounds = await client.call_tool("test_input_required_result_multi_round", {})
        assert rounds.content[0].text == "Alice likes green."
        static = (await client.read_resource("test://static-text")).contents[0]
        assert static.text == "This is the content of the static text resource."
