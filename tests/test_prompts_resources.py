"""The author's API for prompts, resources, templates, completion, change notifications and
the client log, in-process (both eras; the end-to-end runs are in test_everything_sdk.py)."""

import asyncio
import copy

import pytest

from bemcp import Context, Server, assistant, embedded_resource, image, user
from test_tools_api import MODERN_META, Session, make_session  # noqa: F401

META = dict(MODERN_META)


def modern(**extra):
    m = copy.deepcopy(META)
    m.update(extra)
    return m


# -- prompts ---------------------------------------------------------------------------------------


async def test_prompt_arguments_descriptions_and_results(make_session):
    server = Server("t")

    @server.prompt(title="Review")
    def review(code: str, language: str = "python") -> str:
        """Review some code.

        Args:
            code: The code to review.
            language: Its language.
        """
        return f"Review this {language}: {code}"

    @server.prompt(name="chat")
    async def conversation(topic: str):
        """A short exchange."""
        await asyncio.sleep(0)
        return [f"Tell me about {topic}", assistant("Gladly."), image(b"\x89PNG", "image/png"),
                user(embedded_resource("file:///a.txt", "A", mime_type="text/plain"))]

    @server.prompt
    def explicit():
        """An explicit result."""
        return {"description": "custom", "messages": [user("hi")]}

    s = Session(server)
    listed = (await s.request("prompts/list"))["result"]["prompts"]
    assert [p["name"] for p in listed] == ["chat", "explicit", "review"]
    assert listed[2] == {"name": "review", "title": "Review", "description": "Review some code.",
                         "arguments": [{"name": "code", "description": "The code to review.", "required": True},
                                       {"name": "language", "description": "Its language.", "required": False}]}
    got = (await s.request("prompts/get", {"name": "review", "arguments": {"code": "x = 1"}}))["result"]
    assert got["messages"] == [{"role": "user", "content": {"type": "text", "text": "Review this python: x = 1"}}]
    chat = (await s.request("prompts/get", {"name": "chat", "arguments": {"topic": "owls"}}))["result"]
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "user", "user"]
    assert chat["messages"][2]["content"] == {"type": "image", "data": "iVBORw==", "mimeType": "image/png"}
    assert chat["messages"][3]["content"]["resource"] == {"uri": "file:///a.txt", "mimeType": "text/plain",
                                                          "text": "A"}
    assert (await s.request("prompts/get", {"name": "explicit"}))["result"]["description"] == "custom"
    m = (await s.request("prompts/get", {"name": "explicit", "_meta": modern()}))["result"]
    assert m["resultType"] == "complete" and "ttlMs" not in m


@pytest.mark.parametrize("params, says", [
    ({"name": "nope"}, "Unknown prompt: 'nope'"),
    ({"name": "review"}, "missing required argument 'code'"),
    ({"name": "review", "arguments": {"code": 1}}, "argument 'code' must be a string"),
    ({"name": "review", "arguments": {"code": "x", "colour": "red"}}, "has no argument 'colour'"),
    ({}, "prompts/get needs params"),
])
async def test_prompts_get_errors_say_which(make_session, params, says):
    server = Server("t")

    @server.prompt
    def review(code: str) -> str:
        """Review some code."""
        return code
    error = (await Session(server).request("prompts/get", params))["error"]
    assert error["code"] == -32602 and says in error["message"]


def test_a_prompt_needs_a_description():
    server = Server("t")
    with pytest.raises(ValueError, match="needs a description"):
        server.prompt(name="bare")(lambda: "x")


async def test_prompts_list_pages_and_cache_hints(make_session):
    server = Server("t", page_size=2)
    for i in range(5):
        server.prompt(name=f"p{i}", description=f"prompt {i}")(lambda: "x")
    s = Session(server)
    names, cursor = [], None
    while True:
        params = {"_meta": modern()} if cursor is None else {"_meta": modern(), "cursor": cursor}
        page = (await s.request("prompts/list", params))["result"]
        assert page["resultType"] == "complete" and page["cacheScope"] and page["ttlMs"] >= 0
        names += [p["name"] for p in page["prompts"]]
        cursor = page.get("nextCursor")
        if cursor is None:
            break
    assert names == ["p0", "p1", "p2", "p3", "p4"]
    assert (await s.request("prompts/list", {"cursor": "bogus"}))["error"]["code"] == -32602


# -- resources and templates ---------------------------------------------------------------------------


async def test_fixed_and_templated_resources(make_session):
    server = Server("t")

    @server.resource("users://{user_id}/profile")
    def profile(user_id: int) -> dict:
        """A user's profile."""
        return {"id": user_id, "type": type(user_id).__name__}

    @server.resource("files://{+path}", mime_type="text/plain")
    async def read_file(path: str) -> str:
        """A file by path."""
        return f"contents of {path}"

    @server.resource("search://items{?q,limit}")
    def search(q: str = "", limit: int = 10) -> dict:
        """Search items."""
        return {"q": q, "limit": limit}

    @server.resource("blob://one")
    def one() -> bytes:
        """Some bytes."""
        return b"\x00\x01"

    s = Session(server)
    templates = (await s.request("resources/templates/list"))["result"]["resourceTemplates"]
    assert [t["uriTemplate"] for t in templates] == ["files://{+path}", "search://items{?q,limit}",
                                                    "users://{user_id}/profile"]
    assert (await s.request("resources/list"))["result"]["resources"] == [
        {"uri": "blob://one", "name": "one", "description": "Some bytes.", "mimeType": "application/octet-stream"}]

    async def read(uri, **params):
        return (await s.request("resources/read", dict(uri=uri, **params)))

    got = (await read("users://42/profile"))["result"]["contents"][0]
    assert got == {"uri": "users://42/profile", "mimeType": "application/json", "text": '{"id":42,"type":"int"}'}
    assert (await read("files://a/b%20c.txt"))["result"]["contents"][0]["text"] == "contents of a/b c.txt"
    assert (await read("search://items?q=owl&limit=3"))["result"]["contents"][0]["text"] == '{"q":"owl","limit":3}'
    assert (await read("search://items"))["result"]["contents"][0]["text"] == '{"q":"","limit":10}'
    assert (await read("blob://one"))["result"]["contents"][0]["blob"] == "AAE="
    # Not found: each era's code; a template whose variable does not convert does not match.
    assert (await read("users://abc/profile"))["error"]["code"] == -32002
    assert (await read("users://1/other"))["error"]["code"] == -32002
    modern_missing = await read("nope://x", _meta=modern())
    assert modern_missing["error"]["code"] == -32602
    ok = (await read("users://7/profile", _meta=modern()))["result"]
    assert ok["resultType"] == "complete" and ok["ttlMs"] == 0 and ok["cacheScope"] == "private"


def test_templates_expand_what_they_match():
    from bemcp.resources import Resource
    res = Resource("x://{a}/{+b}{?c}", lambda a, b, c="": None)
    uri = res.expand({"a": "one two", "b": "p/q", "c": "&"})
    assert uri == "x://one%20two/p/q?c=%26"
    assert res.match(uri) == {"a": "one two", "b": "p/q", "c": "&"}


# -- completion ------------------------------------------------------------------------------------------


async def test_completion_capability_only_when_a_completion_exists(make_session):
    server = Server("t")

    @server.prompt
    def plain(x: str) -> str:
        """Plain."""
        return x
    caps = (await Session(server).request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                                         "clientInfo": {"name": "c", "version": "0"}}))
    assert "completions" not in caps["result"]["capabilities"]
    assert caps["result"]["capabilities"]["prompts"] == {"listChanged": True}

    async def languages(value, arguments):
        await asyncio.sleep(0)
        base = ["python", "perl", "php"] if arguments.get("kind") != "compiled" else ["c", "cython"]
        return [v for v in base if v.startswith(value)]

    @server.prompt(completions={"language": languages, "name": lambda value, arguments: [f"n{i}" for i in range(150)]})
    def code(kind: str, language: str, name: str) -> str:
        """Code."""
        return language
    s = Session(server)
    caps = (await s.request("server/discover", {"_meta": modern()}))["result"]["capabilities"]
    assert caps["completions"] == {}

    async def complete(argument, context=None, **params):
        body = {"ref": {"type": "ref/prompt", "name": "code"}, "argument": argument, **params}
        if context is not None:
            body["context"] = {"arguments": context}
        return (await s.request("completion/complete", body))
    got = (await complete({"name": "language", "value": "p"}))["result"]["completion"]
    assert got == {"values": ["python", "perl", "php"], "total": 3, "hasMore": False}
    got = (await complete({"name": "language", "value": "c"}, {"kind": "compiled"}))["result"]["completion"]
    assert got["values"] == ["c", "cython"]
    many = (await complete({"name": "name", "value": ""}, _meta=modern()))["result"]
    assert len(many["completion"]["values"]) == 100 and many["completion"]["hasMore"] is True
    assert many["completion"]["total"] == 150 and many["resultType"] == "complete"
    none = (await complete({"name": "kind", "value": "x"}))["result"]["completion"]
    assert none == {"values": [], "total": 0, "hasMore": False}
    bad = await s.request("completion/complete", {"ref": {"type": "ref/prompt", "name": "zzz"},
                                                  "argument": {"name": "a", "value": ""}})
    assert bad["error"]["code"] == -32602 and "zzz" in bad["error"]["message"]


# -- change notifications ----------------------------------------------------------------------------------


async def test_list_changed_reaches_only_who_asked(make_session):
    server = Server("t")

    @server.prompt
    def first() -> str:
        """First."""
        return "1"
    s = Session(server)
    await s.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                   "clientInfo": {"name": "c", "version": "0"}})
    server.prompt(name="unseen", description="Added before any list")(lambda: "x")
    await asyncio.sleep(0.01)
    assert s.notifications("notifications/prompts/list_changed") == []
    await s.request("prompts/list")
    server.prompt(name="second", description="Two")(lambda: "2")
    server.remove_prompt("first")      # one notification for a burst of changes
    await asyncio.sleep(0.01)
    assert len(s.notifications("notifications/prompts/list_changed")) == 1
    assert s.notifications("notifications/resources/list_changed") == []

    # 2026-07-28: a listen stream that asked for tools hears about tools, and nothing else.
    rid = s.start("subscriptions/listen", {"_meta": modern(), "notifications": {"toolsListChanged": True}})
    await asyncio.sleep(0.01)
    server.tool(name="late", description="Late")(lambda: "x")
    server.prompt(name="third", description="Three")(lambda: "3")
    await asyncio.sleep(0.01)
    tools_changed = s.notifications("notifications/tools/list_changed")
    assert tools_changed == [{"_meta": {"io.modelcontextprotocol/subscriptionId": rid}}]
    assert len(s.notifications("notifications/prompts/list_changed")) == 1
    s.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid}})
    await asyncio.sleep(0.01)
    assert s.answer(rid) is None and server.subscriptions.listeners == {}


# -- the client log ---------------------------------------------------------------------------------------------


async def test_modern_requests_log_to_the_client_only_at_the_level_they_carry(make_session):
    server = Server("t")

    @server.tool
    async def chatty(ctx: Context) -> str:
        ctx.log("debug", "fine detail")
        ctx.log("info", {"step": 1})
        ctx.log.warning("careful: %s", "hot")
        return "ok"
    s = Session(server)
    await s.call("chatty", meta=modern())
    assert s.notifications("notifications/message") == []
    await s.call("chatty", meta=modern(**{"io.modelcontextprotocol/logLevel": "info"}))
    notes = s.notifications("notifications/message")
    assert [(n["level"], n["data"]) for n in notes] == [("info", {"step": 1}), ("warning", "careful: hot")]
    assert all(n["logger"] == "bemcp.tool.chatty" for n in notes)
    from bemcp.client_log import RequestLog
    with pytest.raises(ValueError, match="level must be one of"):
        RequestLog(server.tools["chatty"].log, server, None)("loud", "x")


@pytest.mark.parametrize("schema, says", [
    ({"properties": {}}, "'type': 'object'"),
    ({"type": "object", "properties": {"address": {"type": "object"}}}, "forms are flat"),
    ({"type": "object", "properties": {"tags": {"type": "array"}}}, "multi-select"),
])
async def test_elicitation_schemas_are_checked_before_asking(make_session, schema, says):
    server = Server("t")

    @server.tool
    async def ask(ctx: Context) -> str:
        """Ask with a bad form."""
        await ctx.elicit("?", schema)
        return "asked"
    s = Session(server)
    await s.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}},
                                   "clientInfo": {"name": "c", "version": "0"}})
    result = await s.call("ask")
    assert result["isError"] is True and says in result["content"][0]["text"]
    assert not [m for m in s.messages if m.get("method") == "elicitation/create"]
