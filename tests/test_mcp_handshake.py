"""MCP over real pipes, both protocol eras: handshake, discover, versions, lists, logging.

Every test runs against both twins of the core (the ``spawn`` fixture).
"""

import pytest

from stdio_client import HANDSHAKE_PARAMS, MODERN_META

HANDSHAKE_VERSIONS = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]
MODERN = "2026-07-28"
VERSION_KEY = "io.modelcontextprotocol/protocolVersion"


def modern(params=None, **meta):
    """Params of a 2026-07-28 request (the version and client facts ride in _meta)."""
    params = dict(params or {})
    params["_meta"] = dict(MODERN_META, **meta)
    return params


@pytest.mark.parametrize("version", HANDSHAKE_VERSIONS)
def test_initialize_echoes_each_supported_version(spawn, version):
    server = spawn()
    response = server.initialize(version)
    result = response["result"]
    assert result["protocolVersion"] == version
    assert result["serverInfo"]["name"] == "bemcp" and result["serverInfo"]["version"]
    assert "tools" in result["capabilities"]
    assert server.request("ping") == {"jsonrpc": "2.0", "id": 2, "result": {}}
    assert server.close() == 0


def test_unknown_version_gets_the_latest_handshake_version(spawn):
    server = spawn()
    response = server.request("initialize", dict(HANDSHAKE_PARAMS, protocolVersion="2023-01-01"))
    assert response["result"]["protocolVersion"] == "2025-11-25"
    # Not a modern version either: a handshake never settles on 2026-07-28.
    response = server.request("initialize", dict(HANDSHAKE_PARAMS, protocolVersion=MODERN))
    assert response["result"]["protocolVersion"] in HANDSHAKE_VERSIONS
    assert server.close() == 0


def test_initialize_with_bad_params_is_invalid_params(spawn):
    server = spawn()
    for params in (None, {"capabilities": {}}, {"protocolVersion": 5}):
        response = server.request("initialize", params)
        assert response["error"]["code"] == -32602, params
    assert server.close() == 0


def test_server_discover(spawn):
    server = spawn(script="kitchen.py")
    result = server.request("server/discover", modern())["result"]
    assert result["resultType"] == "complete"
    assert MODERN in result["supportedVersions"]
    assert set(HANDSHAKE_VERSIONS) <= set(result["supportedVersions"])
    assert "tools" in result["capabilities"]
    assert result["ttlMs"] == 60_000 and result["cacheScope"] == "public"   # Server's list_ttl_ms default
    info = result["_meta"]["io.modelcontextprotocol/serverInfo"]
    assert info == {"name": "kitchen", "version": "1.2.3"}
    assert result["instructions"] == "A server for bemcp's tests."
    # Discover needs no _meta at all (it is how a client learns the versions).
    assert server.request("server/discover", {})["result"]["supportedVersions"] == result["supportedVersions"]
    assert server.close() == 0


def test_unsupported_modern_version_is_32022_with_supported_and_requested(spawn):
    server = spawn()
    for method, params in (("server/discover", {}), ("tools/list", {}),
                           ("tools/call", {"name": "echo", "arguments": {"text": "x"}})):
        response = server.request(method, modern(params, **{VERSION_KEY: "2099-01-01"}))
        error = response["error"]
        assert error["code"] == -32022, method
        assert error["data"]["requested"] == "2099-01-01"
        assert MODERN in error["data"]["supported"]
    # A handshake-era version is one this server speaks, but through initialize: the message says so.
    error = server.request("tools/list", modern({}, **{VERSION_KEY: "2025-06-18"}))["error"]
    assert error["code"] == -32022 and "through initialize" in error["message"] and MODERN in error["message"]
    assert server.close() == 0


def test_one_process_answers_both_eras(spawn):
    server = spawn()
    old = server.initialize("2025-06-18")["result"]
    assert old["protocolVersion"] == "2025-06-18" and "resultType" not in old
    new = server.call_tool("echo", {"text": "modern"}, meta=MODERN_META)["result"]
    assert new == {"content": [{"type": "text", "text": "modern"}], "resultType": "complete"}
    legacy = server.call_tool("echo", {"text": "legacy"})["result"]
    assert legacy == {"content": [{"type": "text", "text": "legacy"}]}
    assert server.close() == 0


def test_every_modern_result_carries_result_type(spawn):
    server = spawn(script="kitchen.py")
    calls = [
        ("server/discover", modern()),
        ("tools/list", modern()),
        ("tools/call", modern({"name": "echo", "arguments": {"text": "a"}})),
        ("tools/call", modern({"name": "point", "arguments": {"x": 1, "y": 2}})),
        ("tools/call", modern({"name": "refuse", "arguments": {"reason": "r"}})),
        ("tools/call", modern({"name": "crash", "arguments": {}})),
        ("tools/call", modern({"name": "echo", "arguments": {"text": 5}})),
        ("tools/call", modern({"name": "blocks", "arguments": {}})),
    ]
    for method, params in calls:
        response = server.request(method, params)
        assert response["result"]["resultType"] == "complete", (method, params, response)
    assert server.close() == 0


def test_modern_list_results_carry_ttl_and_cache_scope(spawn):
    server = spawn()
    result = server.request("tools/list", modern())["result"]
    assert result["ttlMs"] == 60_000 and result["cacheScope"] == "public"   # the same for every client
    # The handshake era has no such fields.
    server.initialize()
    legacy = server.request("tools/list")["result"]
    assert "ttlMs" not in legacy and "resultType" not in legacy
    assert [t["name"] for t in legacy["tools"]] == [t["name"] for t in result["tools"]]
    assert server.close() == 0


def test_methods_removed_in_2026_are_unknown_to_modern_requests(spawn):
    server = spawn()
    assert server.request("ping", modern())["error"]["code"] == -32601
    assert server.request("ping")["result"] == {}
    assert server.close() == 0


def test_tools_list_is_deterministic_and_paginates(spawn):
    server = spawn("--page-size", "4", script="kitchen.py")
    server.initialize()
    pages = []
    cursor = None
    while True:
        params = {"cursor": cursor} if cursor else {}
        result = server.request("tools/list", params)["result"]
        pages.append([t["name"] for t in result["tools"]])
        cursor = result.get("nextCursor")
        if cursor is None:
            break
        assert isinstance(cursor, str)
        assert len(pages) < 50
    names = [n for page in pages for n in page]
    assert all(len(page) == 4 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 4
    assert len(pages) > 2
    assert len(set(names)) == len(names) and "echo" in names and "wait_release" in names
    assert names == sorted(names)
    # Asking again gives the same pages, in the same order.
    again = server.request("tools/list", {})["result"]
    assert [t["name"] for t in again["tools"]] == pages[0]
    # Modern requests page the same way.
    first_modern = server.request("tools/list", modern())["result"]
    assert [t["name"] for t in first_modern["tools"]] == pages[0] and first_modern["nextCursor"]
    bad = server.request("tools/list", {"cursor": "not-a-cursor"})
    assert bad["error"]["code"] == -32602
    assert server.close() == 0


def test_tool_definitions(spawn):
    server = spawn(script="kitchen.py")
    tools = {t["name"]: t for t in server.request("tools/list", modern())["result"]["tools"]}
    echo = tools["echo"]
    assert echo["description"] == "Return the text unchanged."
    assert echo["inputSchema"] == {"type": "object", "properties": {"text": {"type": "string"}},
                                   "required": ["text"], "additionalProperties": False}
    assert "outputSchema" not in echo
    point = tools["point"]
    assert point["outputSchema"]["type"] == "object"
    assert set(point["outputSchema"]["properties"]) == {"x", "y"}
    # A Context parameter is the server's business, not the client's.
    assert "ctx" not in tools["progress"]["inputSchema"]["properties"]
    assert tools["log"]["inputSchema"]["properties"]["level"]["enum"] == ["debug", "info", "warning", "error"]
    assert server.close() == 0


def test_unknown_tool_is_invalid_params(spawn):
    server = spawn()
    response = server.call_tool("no_such_tool", {})
    assert response["error"]["code"] == -32602 and "no_such_tool" in response["error"]["message"]
    assert server.close() == 0


def test_json_rpc_errors_over_the_pipe(spawn):
    server = spawn()
    server.send({"jsonrpc": "2.0", "id": 1, "method": "no/such/method"})
    assert server.read_message()["error"]["code"] == -32601
    server.send([{"jsonrpc": "2.0", "id": 2, "method": "ping"}])
    batch = server.read_message()
    assert batch["id"] is None and batch["error"]["code"] == -32600
    server.send({"jsonrpc": "2.0", "id": 3, "method": 7})
    invalid = server.read_message()
    assert invalid["id"] == 3 and invalid["error"]["code"] == -32600
    assert server.request("ping")["result"] == {}
    assert server.close() == 0


def test_resource_not_found_has_each_era_s_code(spawn):
    server = spawn()
    server.initialize()
    missing = server.request("resources/read", {"uri": "bemcp://nope"})["error"]
    assert missing["code"] == -32002 and missing["data"] == {"uri": "bemcp://nope"}
    missing = server.request("resources/read", modern({"uri": "bemcp://nope"}))["error"]
    assert missing["code"] == -32602 and missing["data"] == {"uri": "bemcp://nope"}
    for params in ({}, {"uri": 7}, modern({})):
        assert server.request("resources/read", params)["error"]["code"] == -32602
    assert server.close() == 0


def batch_of(*messages):
    return [{"jsonrpc": "2.0", **m} for m in messages]


def test_batches_are_served_once_2025_03_26_is_agreed(spawn):
    # 2025-03-26 is the one revision with JSON-RPC batches, and there receiving them is a MUST.
    server = spawn()
    server.initialize("2025-03-26")
    server.send(batch_of({"id": "a", "method": "ping"},
                         {"id": "b", "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}},
                         {"id": "c", "method": "tools/call", "params": {"name": "echo", "arguments": {"text": 5}}},
                         {"id": "d", "method": "initialize", "params": dict(HANDSHAKE_PARAMS, protocolVersion="2025-03-26")},
                         {"method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}}))
    answers = server.read_message()
    by_id = {a["id"]: a for a in answers}
    assert set(by_id) == {"a", "b", "c", "d"}
    assert by_id["a"]["result"] == {}
    assert by_id["b"]["result"]["content"] == [{"type": "text", "text": "hi"}]
    assert by_id["c"]["result"]["isError"] is True                     # bad arguments: a result
    assert by_id["d"]["error"]["code"] == -32600                        # initialize is never batched
    server.send(batch_of({"method": "notifications/cancelled", "params": {"requestId": "zz"}}))
    assert server.request("ping") == {"jsonrpc": "2.0", "id": server._next_id, "result": {}}
    assert server.close() == 0


@pytest.mark.parametrize("version", [None] + [v for v in HANDSHAKE_VERSIONS if v != "2025-03-26"])
def test_batches_are_refused_in_every_other_revision(spawn, version):
    server = spawn()
    if version:
        server.initialize(version)
    server.send(batch_of({"id": 1, "method": "ping"}))
    refused = server.read_message()
    assert refused["id"] is None and refused["error"]["code"] == -32600
    assert "batch" in refused["error"]["message"]
    assert server.request("ping")["result"] == {}
    assert server.close() == 0


@pytest.mark.parametrize("level, sent", [("warning", True), ("error", False)])
def test_set_level_then_a_tool_logging_sends_notifications_message(spawn, level, sent):
    server = spawn(script="kitchen.py")
    server.initialize()
    assert server.request("logging/setLevel", {"level": level})["result"] == {}
    response = server.call_tool("log", {"level": "warning", "message": "careful now"})
    assert response["result"]["content"][0]["text"] == "logged"
    logs = [m for m in server.stray if m.get("method") == "notifications/message"]
    if sent:
        (note,) = logs
        assert note["params"]["level"] == "warning"
        assert note["params"]["data"] == "careful now"
        assert note["params"]["logger"].endswith("log")
    else:
        assert logs == []
    assert server.close() == 0


def test_set_level_info_forwards_info_records(spawn):
    server = spawn(script="kitchen.py")
    server.initialize()
    server.request("logging/setLevel", {"level": "info"})
    server.call_tool("log", {"level": "info", "message": "for your information"})
    logs = [m["params"] for m in server.stray if m.get("method") == "notifications/message"]
    assert [(p["level"], p["data"]) for p in logs] == [("info", "for your information")]
    assert server.close() == 0


def test_set_level_rejects_unknown_levels(spawn):
    server = spawn()
    server.initialize()
    assert server.request("logging/setLevel", {"level": "loud"})["error"]["code"] == -32602
    assert server.close() == 0
