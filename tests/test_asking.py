"""Asking the client over raw JSON-RPC, both eras, both twins, on real pipes.

2026-07-28: input_required rounds, retries with inputResponses, signed requestState
(tampered, foreign, expired, and shared by two processes through --state-key-file),
capability gating, subscriptions/listen. Handshake era: server-to-client requests
bounded by the call's deadline and cancelled with it.
"""

import copy
import sys

import pytest

from stdio_client import MODERN_META

EVERYTHING = [sys.executable, "-m", "bemcp.examples.everything"]
ALL_CAPS = {"sampling": {}, "elicitation": {}, "roots": {}}


def meta(caps=ALL_CAPS, **extra):
    m = copy.deepcopy(MODERN_META)
    m["io.modelcontextprotocol/clientCapabilities"] = caps
    m.update(extra)
    return m


def call(server, name, arguments=None, **params):
    body = {"name": name, "arguments": arguments or {}, "_meta": meta()}
    body.update(params)
    return server.request("tools/call", body)


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "state.key"
    path.write_bytes(b"a shared secret for the fixtures, 32+ bytes long")
    return str(path)


def test_input_required_then_retry_completes(spawn):
    server = spawn(command=EVERYTHING)
    first = call(server, "test_input_required_result_elicitation")["result"]
    assert first["resultType"] == "input_required"
    ask = first["inputRequests"]["user_name"]
    assert ask["method"] == "elicitation/create"
    assert ask["params"]["requestedSchema"]["required"] == ["name"]
    assert "ttlMs" not in first and first["requestState"]
    answer = {"user_name": {"action": "accept", "content": {"name": "Alice"}}}
    done = call(server, "test_input_required_result_elicitation",
                inputResponses=answer, requestState=first["requestState"])["result"]
    assert done["resultType"] == "complete" and done["content"][0]["text"] == "Hello, Alice!"
    assert server.close() == 0


def test_rounds_carry_earlier_answers_in_the_signed_state(spawn):
    server = spawn(command=EVERYTHING)
    one = call(server, "test_input_required_result_multi_round")["result"]
    assert list(one["inputRequests"]) == ["step1"]
    two = call(server, "test_input_required_result_multi_round", requestState=one["requestState"],
               inputResponses={"step1": {"action": "accept", "content": {"name": "Ada"}}})["result"]
    assert two["resultType"] == "input_required" and list(two["inputRequests"]) == ["step2"]
    # The last retry carries only the new answer: the first comes from the state.
    three = call(server, "test_input_required_result_multi_round", requestState=two["requestState"],
                 inputResponses={"step2": {"action": "accept", "content": {"color": "blue"}}})["result"]
    assert three["content"][0]["text"] == "Ada likes blue."
    assert server.close() == 0


def test_asks_awaited_together_go_out_in_one_round(spawn):
    server = spawn(command=EVERYTHING)
    first = call(server, "test_input_required_result_multiple_inputs")["result"]
    assert {k: v["method"] for k, v in first["inputRequests"].items()} == {
        "user_name": "elicitation/create", "greeting": "sampling/createMessage", "client_roots": "roots/list"}
    answers = {"user_name": {"action": "accept", "content": {"name": "A"}},
               "greeting": {"role": "assistant", "content": {"type": "text", "text": "hi"}, "model": "m"},
               "client_roots": {"roots": []}}
    done = call(server, "test_input_required_result_multiple_inputs", inputResponses=answers,
                requestState=first["requestState"])["result"]
    assert done["content"][0]["text"] == "All inputs received."
    assert server.close() == 0


def test_missing_or_unknown_answers_ask_again_and_extra_ones_are_ignored(spawn):
    server = spawn(command=EVERYTHING)
    again = call(server, "test_input_required_result_elicitation",
                 inputResponses={"wrong_key": {"action": "accept", "content": {}}})["result"]
    assert again["resultType"] == "input_required" and "user_name" in again["inputRequests"]
    extra = call(server, "test_input_required_result_elicitation", inputResponses={
        "user_name": {"action": "accept", "content": {"name": "Bo"}},
        "unknown_extra_key": {"action": "accept", "content": {"foo": "bar"}}})["result"]
    assert extra["content"][0]["text"] == "Hello, Bo!"
    bad = call(server, "test_input_required_result_elicitation", inputResponses={"user_name": 12345})
    assert bad["error"]["code"] == -32602 and "user_name" in bad["error"]["message"]
    null = call(server, "test_input_required_result_elicitation", inputResponses=None)
    assert null["error"]["code"] == -32602
    assert server.close() == 0


def test_tampered_and_foreign_state_is_refused(spawn):
    server = spawn(command=EVERYTHING)
    first = call(server, "test_input_required_result_tampered_state")["result"]
    answer = {"confirm": {"action": "accept", "content": {"ok": True}}}
    tampered = call(server, "test_input_required_result_tampered_state", inputResponses=answer,
                    requestState=first["requestState"] + "-TAMPERED")
    assert tampered["error"]["code"] == -32602 and "integrity" in tampered["error"]["message"]
    body, _, mac = first["requestState"].partition(".")
    flipped = call(server, "test_input_required_result_tampered_state", inputResponses=answer,
                   requestState=body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac)
    assert flipped["error"]["code"] == -32602
    # Valid state, but issued for another tool: refused, not replayed there.
    foreign = call(server, "test_input_required_result_request_state", inputResponses=answer,
                   requestState=first["requestState"])
    assert foreign["error"]["code"] == -32602 and "another request" in foreign["error"]["message"]
    good = call(server, "test_input_required_result_tampered_state", inputResponses=answer,
                requestState=first["requestState"])["result"]
    assert good["content"][0]["text"].startswith("state-ok")
    assert server.close() == 0


def test_a_retry_completes_on_a_second_process_with_the_same_key(spawn, key_file, tmp_path):
    first_server = spawn(command=EVERYTHING + ["--state-key-file", key_file])
    one = call(first_server, "test_input_required_result_multi_round")["result"]
    two = call(first_server, "test_input_required_result_multi_round", requestState=one["requestState"],
               inputResponses={"step1": {"action": "accept", "content": {"name": "Ada"}}})["result"]
    assert first_server.close() == 0
    second_server = spawn(command=EVERYTHING + ["--state-key-file", key_file])
    done = call(second_server, "test_input_required_result_multi_round", requestState=two["requestState"],
                inputResponses={"step2": {"action": "accept", "content": {"color": "red"}}})["result"]
    assert done["content"][0]["text"] == "Ada likes red."
    assert second_server.close() == 0
    other_key = tmp_path / "other.key"
    other_key.write_bytes(b"another secret, also long enough to be a key")
    stranger = spawn(command=EVERYTHING + ["--state-key-file", str(other_key)])
    refused = call(stranger, "test_input_required_result_multi_round", requestState=two["requestState"],
                   inputResponses={"step2": {"action": "accept", "content": {"color": "red"}}})
    assert refused["error"]["code"] == -32602
    assert stranger.close() == 0


def test_only_declared_capabilities_are_asked_for(spawn):
    server = spawn(command=EVERYTHING)
    only_sampling = server.request("tools/call", {"name": "test_input_required_result_capabilities",
                                                  "arguments": {}, "_meta": meta({"sampling": {}})})["result"]
    assert [r["method"] for r in only_sampling["inputRequests"].values()] == ["sampling/createMessage"]
    # A handler that asks anyway gets -32021 naming what is missing, never a request the client cannot answer.
    refused = server.request("tools/call", {"name": "test_input_required_result_elicitation",
                                            "arguments": {}, "_meta": meta({"sampling": {}})})["error"]
    assert refused["code"] == -32021 and refused["data"] == {"requiredCapabilities": {"elicitation": {}}}
    assert server.close() == 0


def test_prompts_get_and_list_never_misuse_input_required(spawn):
    server = spawn(command=EVERYTHING)
    first = server.request("prompts/get", {"name": "test_input_required_result_prompt", "_meta": meta()})["result"]
    assert first["resultType"] == "input_required" and "user_context" in first["inputRequests"]
    done = server.request("prompts/get", {"name": "test_input_required_result_prompt", "_meta": meta(),
                                          "requestState": first["requestState"],
                                          "inputResponses": {"user_context": {"action": "accept",
                                                                              "content": {"context": "x"}}}})
    assert done["result"]["resultType"] == "complete"
    assert done["result"]["messages"][0]["content"]["text"] == "Use the following context: x"
    for method in ("tools/list", "prompts/list", "resources/list", "resources/templates/list"):
        listed = server.request(method, {"_meta": meta()})["result"]
        assert listed["resultType"] == "complete" and listed["ttlMs"] >= 0 and listed["cacheScope"]
    assert server.close() == 0


def test_request_state_expires():
    from bemcp._core import RpcError
    from bemcp.asking import RequestState
    params = {"name": "t", "arguments": {}}
    stale = RequestState(b"k" * 32, ttl=-5)
    with pytest.raises(RpcError, match="expired"):
        stale.verify("tools/call", params, stale.sign("tools/call", params, {}))
    fresh = RequestState(b"k" * 32)
    state = fresh.sign("tools/call", params, {"a": {"roots": []}})
    assert fresh.verify("tools/call", params, state) == {"a": {"roots": []}}
    with pytest.raises(RpcError, match="another request"):
        fresh.verify("prompts/get", params, state)   # same name and arguments, another method


def test_listen_acknowledges_first_tags_notifications_and_ends_on_cancel(spawn):
    server = spawn(command=EVERYTHING)
    server.send({"jsonrpc": "2.0", "id": "L1", "method": "subscriptions/listen",
                 "params": {"_meta": meta(), "notifications": {"promptsListChanged": True,
                                                               "resourceSubscriptions": ["test://watched-resource"]}}})
    ack = server.read_message()
    assert ack["method"] == "notifications/subscriptions/acknowledged"
    assert ack["params"]["_meta"] == {"io.modelcontextprotocol/subscriptionId": "L1"}
    assert ack["params"]["notifications"] == {"promptsListChanged": True,
                                              "resourceSubscriptions": ["test://watched-resource"]}
    call(server, "test_update_watched_resource", {"content": "new"})
    (note,) = [m for m in server.stray if m.get("method") == "notifications/resources/updated"]
    assert note["params"] == {"uri": "test://watched-resource",
                              "_meta": {"io.modelcontextprotocol/subscriptionId": "L1"}}
    server.notify("notifications/cancelled", {"requestId": "L1"})
    assert server.request("tools/list", {"_meta": meta()})["result"]["tools"]
    assert not [m for m in server.stray if m.get("id") == "L1"]
    # A listen still open at exit is ended with its result.
    server.send({"jsonrpc": "2.0", "id": "L2", "method": "subscriptions/listen",
                 "params": {"_meta": meta(), "notifications": {"toolsListChanged": True}}})
    assert server.read_message()["method"] == "notifications/subscriptions/acknowledged"
    server.proc.stdin.close()
    end = server.read_message()
    assert end == {"jsonrpc": "2.0", "id": "L2", "result": {
        "resultType": "complete", "_meta": {"io.modelcontextprotocol/subscriptionId": "L2"}}}
    assert server.close() == 0


def test_listen_and_subscribe_belong_to_their_era(spawn):
    server = spawn(command=EVERYTHING)
    server.initialize()
    assert server.request("subscriptions/listen", {"notifications": {}})["error"]["code"] == -32601
    assert server.request("resources/subscribe", {"uri": "test://x"})["result"] == {}
    gone = server.request("resources/subscribe", {"uri": "test://x", "_meta": meta()})["error"]
    assert gone["code"] == -32601
    assert server.close() == 0


# -- handshake era ---------------------------------------------------------------------------------

def initialize(server, caps):
    server.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": caps,
                                  "clientInfo": {"name": "raw", "version": "0"}})
    server.notify("notifications/initialized")


def test_unanswered_sampling_ends_at_the_calls_deadline_and_says_why(spawn):
    server = spawn("--timeout", "1", script="kitchen.py")
    initialize(server, {"sampling": {}})
    server.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                 "params": {"name": "ask_model", "arguments": {"prompt": "anyone there?"}}})
    asked = server.read_message()
    assert asked["method"] == "sampling/createMessage" and asked["params"]["maxTokens"] == 20
    result = server.wait_for(7, timeout=10)["result"]
    assert result["isError"] is True
    message = result["content"][0]["text"]
    assert "timed out after 1 s" in message and "sampling/createMessage" in message
    assert f"(id {asked['id']})" in message
    told = server.read_message()   # the client's pending request is withdrawn
    assert told["method"] == "notifications/cancelled" and told["params"]["requestId"] == asked["id"]
    # A late answer is dropped quietly; the server keeps serving.
    server.send({"jsonrpc": "2.0", "id": asked["id"], "result": {"role": "assistant", "model": "m",
                                                                  "content": {"type": "text", "text": "late"}}})
    assert server.request("ping")["result"] == {}
    assert server.close() == 0


def test_cancelling_the_call_cancels_its_request_to_the_client(spawn):
    server = spawn(script="kitchen.py")
    initialize(server, {"sampling": {}})
    server.send({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                 "params": {"name": "ask_model", "arguments": {"prompt": "?"}}})
    asked = server.read_message()
    server.notify("notifications/cancelled", {"requestId": 8})
    told = server.read_message()
    assert told["method"] == "notifications/cancelled" and told["params"]["requestId"] == asked["id"]
    assert server.request("ping")["result"] == {}
    assert not [m for m in server.stray if m.get("id") == 8]
    assert server.close() == 0


def test_answers_and_errors_from_the_client_reach_the_call(spawn):
    server = spawn(script="kitchen.py")
    initialize(server, {"sampling": {}})
    server.send({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                 "params": {"name": "ask_model", "arguments": {"prompt": "?"}}})
    asked = server.read_message()
    server.send({"jsonrpc": "2.0", "id": asked["id"], "result": {
        "role": "assistant", "model": "m", "content": {"type": "text", "text": "forty-two"}}})
    assert server.wait_for(9)["result"]["content"][0]["text"] == "forty-two"
    server.send({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
                 "params": {"name": "ask_model", "arguments": {"prompt": "?"}}})
    asked = server.read_message()
    server.send({"jsonrpc": "2.0", "id": asked["id"], "error": {"code": -1, "message": "User rejected sampling"}})
    failed = server.wait_for(10)["result"]   # the tool's result says what the client answered
    assert failed["isError"] is True
    assert failed["content"][0]["text"] == "The client answered sampling/createMessage with error -1: User rejected sampling"
    assert server.close() == 0


def test_a_client_without_the_capability_gets_a_clear_error(spawn):
    server = spawn(script="kitchen.py")
    initialize(server, {})
    error = server.call_tool("ask_model", {"prompt": "?"})["error"]
    assert error["code"] == -32021 and "'sampling' capability" in error["message"]
    assert server.close() == 0


@pytest.mark.parametrize("version, caps, mode", [("2025-06-18", {"elicitation": {}}, None),
                                                 ("2025-11-25", {"elicitation": {}}, "form"),
                                                 ("2025-11-25", {"elicitation": {"form": {}, "url": {}}}, "form"),
                                                 ("2025-11-25", {"elicitation": {"url": {}}}, "refused")])
def test_elicitation_speaks_the_agreed_revision(spawn, version, caps, mode):
    server = spawn(command=EVERYTHING)
    server.request("initialize", {"protocolVersion": version, "capabilities": caps,
                                  "clientInfo": {"name": "raw", "version": "0"}})
    server.notify("notifications/initialized")
    server.send({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                 "params": {"name": "test_elicitation", "arguments": {"message": "Who?"}}})
    if mode == "refused":   # a client with URL mode only cannot fill in a form
        assert server.wait_for(5)["error"]["code"] == -32021
    else:
        asked = server.read_message()
        assert asked["method"] == "elicitation/create" and asked["params"].get("mode") == mode
        server.send({"jsonrpc": "2.0", "id": asked["id"], "result": {"action": "decline"}})
        assert "action=decline" in server.wait_for(5)["result"]["content"][0]["text"]
    assert server.close() == 0


async def test_a_2026_task_that_asks_ends_with_a_clear_error():
    import asyncio

    from bemcp import Context, Server
    from test_tools_api import Session
    server = Server("t")

    @server.tool(task_support="optional")
    async def needs_input(ctx: Context) -> str:
        """Ask the user something."""
        await ctx.elicit("Sure?", {"type": "object", "properties": {"ok": {"type": "boolean"}}})
        return "done"
    s = Session(server)
    caps = {"elicitation": {}, "extensions": {"io.modelcontextprotocol/tasks": {}}}
    created = await s.call("needs_input", meta=meta(caps))
    assert created["resultType"] == "task"
    for _ in range(200):
        task = (await s.request("tasks/get", {"taskId": created["taskId"], "_meta": meta(caps)}))["result"]
        if task["status"] != "working":
            break
        await asyncio.sleep(0.01)
    assert task["status"] == "completed" and task["result"]["isError"] is True, task
    assert "asking the client from a 2026-07-28 task is not supported" in str(task["result"])
    await s.d.drain(0.5)
    await server.shutdown()
    s.d.close()


def test_a_bad_state_key_file_fails_at_start(tmp_path):
    import subprocess
    short = tmp_path / "short.key"
    short.write_bytes(b"tiny")
    for path in (str(short), str(tmp_path / "missing.key")):
        for argv in (EVERYTHING, [sys.executable, "-m", "bemcp", "serve", "--no-plugins"]):
            done = subprocess.run(argv + ["--state-key-file", path], input=b"", capture_output=True, timeout=30)
            assert done.returncode == 2 and done.stdout == b""
            assert path.encode() in done.stderr or b"16 bytes" in done.stderr
