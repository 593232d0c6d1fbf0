"""The official Python SDK client (package ``mcp``) against ``bemcp serve``, both modes, both twins."""

import sys

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def serve_params(twin_env, *args, script=None):
    if script is not None:
        import os
        argv = [os.path.join(os.path.dirname(__file__), "servers", script), *args]
    else:
        argv = ["-m", "bemcp", "serve", *args]
    # The SDK passes a minimal environment plus ``env``.
    return StdioServerParameters(command=sys.executable, args=argv, env=dict(twin_env))


@pytest.mark.parametrize("mode, version", [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
async def test_sdk_client_lists_and_calls_tools_on_bemcp_serve(twin_env, mode, version):
    async with Client(serve_params(twin_env), mode=mode) as client:
        assert client.protocol_version == version
        assert client.server_info.name == "bemcp"
        listed = await client.list_tools()
        names = [tool.name for tool in listed.tools]
        assert "echo" in names and names == sorted(names)
        echo = next(t for t in listed.tools if t.name == "echo")
        assert echo.input_schema["properties"]["text"]["type"] == "string"
        result = await client.call_tool("echo", {"text": "héllo, wörld"})
        assert result.is_error is False
        assert result.content[0].text == "héllo, wörld"
        bad = await client.call_tool("echo", {"text": 42})
        assert bad.is_error is True and "text" in bad.content[0].text


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_sdk_client_structured_results_and_errors(twin_env, mode):
    async with Client(serve_params(twin_env, script="kitchen.py"), mode=mode) as client:
        point = await client.call_tool("point", {"x": 3, "y": -4})
        assert point.structured_content == {"x": 3, "y": -4}
        assert point.is_error is False
        refused = await client.call_tool("refuse", {"reason": "not today"})
        assert refused.is_error is True and refused.content[0].text == "refused: not today"
        crashed = await client.call_tool("crash", {})
        assert crashed.is_error is True and "ValueError: something broke" in crashed.content[0].text


async def test_sdk_client_receives_progress(twin_env):
    updates = []

    async def on_progress(progress, total, message):
        updates.append((progress, total, message))
    async with Client(serve_params(twin_env, script="kitchen.py"), mode="legacy") as client:
        result = await client.call_tool("progress", {"steps": 3}, progress_callback=on_progress)
        assert result.content[0].text == "done"
    assert [u[0] for u in updates] == [1, 2, 3]
    assert updates[-1] == (3, 3, "step 3")


async def test_every_builtin_and_bundled_tool_and_prompt_is_described(twin_env):
    # What clients and the conformance suite check of every tool and prompt, not only fixtures.
    async with Client(serve_params(twin_env), mode="legacy") as client:
        tools = (await client.list_tools()).tools
        assert {"echo", "run_command", "server_status"} <= {t.name for t in tools}
        for tool in tools:
            assert tool.description and tool.description.strip(), tool.name
            assert tool.input_schema.get("type") == "object", tool.name
        for prompt in (await client.list_prompts()).prompts:
            assert prompt.description and prompt.description.strip(), prompt.name
