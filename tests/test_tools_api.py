"""The tool author's API in-process: schemas, validation, sync tools, results, Context.

A Server is wired to a dispatcher on the test's loop, and requests are fed to it as
the stdio transport would; answers are read from what it writes.
"""

import asyncio
import dataclasses
import enum
import logging
import threading
from typing import Annotated, Literal, Optional, TypedDict

import orjson
import pytest

from bemcp import (Context, Server, ToolError, ToolResult, audio, image, resource_link,
                   text)
from bemcp.schema import compile_validator

MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientCapabilities": {}}


class Session:
    """A Server's dispatcher fed in-process; ``call`` returns the response message."""

    def __init__(self, server):
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.writes = []
        self.d = server.build_dispatcher(self.loop)
        self.d.write = self.writes.append
        self._id = 0

    @property
    def messages(self):
        return [orjson.loads(line) for chunk in self.writes for line in chunk.splitlines()]

    def send(self, message):
        self.d.feed(orjson.dumps(message) + b"\n")

    def start(self, method, params=None):
        self._id += 1
        message = {"jsonrpc": "2.0", "id": self._id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return self._id

    def answer(self, rid):
        for message in self.messages:
            if message.get("id") == rid and ("result" in message or "error" in message):
                return message
        return None

    async def wait(self, rid, timeout=5.0):
        deadline = self.loop.time() + timeout
        while (found := self.answer(rid)) is None:
            assert self.loop.time() < deadline, f"no answer to {rid}: {self.messages}"
            await asyncio.sleep(0.001)
        return found

    async def request(self, method, params=None):
        return await self.wait(self.start(method, params))

    async def call(self, name, arguments=None, meta=None):
        params = {"name": name, "arguments": arguments if arguments is not None else {}}
        if meta is not None:
            params["_meta"] = meta
        return (await self.request("tools/call", params))["result"]

    def notifications(self, method):
        return [m["params"] for m in self.messages if m.get("method") == method]


@pytest.fixture
async def make_session():
    sessions = []

    def make(server):
        session = Session(server)
        sessions.append(session)
        return session
    yield make
    for session in sessions:
        await session.d.drain(0.5)
        await session.server.shutdown()
        session.d.close()


def definition(server, name):
    return server.tools[name].definition()


# -- schemas from signatures ------------------------------------------------------------------


class Mode(enum.Enum):
    FAST = "fast"
    SAFE = "safe"


class Address(TypedDict):
    street: str
    number: int


@dataclasses.dataclass
class Options:
    depth: int
    follow: bool = False


def test_input_schema_from_type_hints_and_docstring():
    server = Server("t")

    @server.tool
    def search(query: str, limit: int = 10, ratio: float = 0.5, exact: bool = False,
               tags: list[str] = None, weights: dict[str, int] = None, after: Optional[str] = None,
               order: Literal["asc", "desc"] = "asc", mode: Mode = Mode.FAST, address: Address = None,
               options: Options = None, label: Annotated[str, "A label from Annotated."] = "",
               ctx: Context = None) -> str:
        """Search for things.

        Args:
            query: What to look for.
            limit: At most this many.
            label: Overridden by Annotated.
        """
    d = definition(server, "search")
    assert d["name"] == "search" and d["description"] == "Search for things."
    schema = d["inputSchema"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == ["query"]
    props = schema["properties"]
    assert list(props) == ["query", "limit", "ratio", "exact", "tags", "weights", "after", "order", "mode",
                           "address", "options", "label"]
    assert props["query"] == {"type": "string", "description": "What to look for."}
    assert props["limit"] == {"type": "integer", "description": "At most this many.", "default": 10}
    assert props["ratio"] == {"type": "number", "default": 0.5}
    assert props["exact"] == {"type": "boolean", "default": False}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["weights"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert props["after"] == {"type": ["string", "null"]}
    assert props["order"] == {"enum": ["asc", "desc"], "type": "string", "default": "asc"}
    assert props["mode"] == {"enum": ["fast", "safe"], "type": "string", "default": "fast"}
    assert props["address"]["properties"] == {"street": {"type": "string"}, "number": {"type": "integer"}}
    assert props["options"]["required"] == ["depth"]
    assert props["label"]["description"] == "A label from Annotated."
    assert "ctx" not in props
    assert "outputSchema" not in d


def test_explicit_schemas_and_metadata():
    server = Server("t")
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"]}

    @server.tool(name="custom.name", title="Custom", description="Given.", input_schema=schema,
                 output_schema={"type": "object", "properties": {"m": {"type": "integer"}}},
                 annotations={"readOnlyHint": True}, task_support="optional")
    async def whatever(**kwargs) -> dict:
        """Ignored docstring."""
        return {"m": kwargs["n"]}
    d = definition(server, "custom.name")
    assert d == {"name": "custom.name", "title": "Custom", "description": "Given.", "inputSchema": schema,
                 "outputSchema": {"type": "object", "properties": {"m": {"type": "integer"}}},
                 "annotations": {"readOnlyHint": True}, "execution": {"taskSupport": "optional"}}


def test_bad_tool_names_and_duplicates_are_refused():
    server = Server("t")
    with pytest.raises(ValueError):
        server.tool(name="has space")(lambda: None)
    with pytest.raises(ValueError):
        server.tool(name="")(lambda: None)

    @server.tool
    def once() -> str:
        return ""
    with pytest.raises(ValueError, match="already registered"):
        server.tool(name="once")(lambda: "")


def test_unsupported_annotation_is_refused_at_registration():
    server = Server("t")
    with pytest.raises(TypeError):
        @server.tool
        def bad(x: complex) -> str:
            return ""


# -- validation -----------------------------------------------------------------------------------


async def test_invalid_arguments_come_back_as_an_error_result_a_model_can_act_on(make_session):
    server = Server("t")
    calls = []

    @server.tool
    async def add(a: int, b: int = 0, mode: Mode = Mode.FAST) -> str:
        calls.append((a, b))
        return str(a + b)
    s = make_session(server)
    cases = [({"b": 1}, "a: required argument missing"),
             ({"a": "1"}, "a: expected integer, got string"),
             ({"a": 1, "c": 2}, "c: unexpected argument (allowed: a, b, mode)"),
             ({"a": 1, "mode": "slow"}, "mode: must be one of 'fast', 'safe', got 'slow'")]
    for args, expected in cases:
        result = await s.call("add", args)
        assert result["isError"] is True
        assert result["content"] == [{"type": "text", "text": f"Invalid arguments for tool 'add': {expected}"}]
    assert calls == []
    modern = await s.call("add", {"a": "x"}, meta=MODERN_META)
    assert modern["isError"] is True and modern["resultType"] == "complete"
    assert (await s.call("add", {"a": 2, "b": 3}))["content"][0]["text"] == "5"


async def test_arguments_are_converted_to_the_annotated_types(make_session):
    server = Server("t")
    got = []

    @server.tool
    def convert(mode: Mode, options: Options, modes: list[Mode] = None, maybe: Optional[Mode] = None) -> str:
        got.append((mode, options, modes, maybe))
        return "ok"
    s = make_session(server)
    await s.call("convert", {"mode": "safe", "options": {"depth": 2}, "modes": ["fast", "safe"], "maybe": None})
    assert got == [(Mode.SAFE, Options(depth=2), [Mode.FAST, Mode.SAFE], None)]


async def test_json_integers_reach_float_parameters_as_floats(make_session):
    server = Server("t")

    @server.tool
    async def measure(x: float, xs: list[float], maybe: Optional[float] = None, n: int = 0) -> str:
        return " ".join(type(v).__name__ for v in (x, *xs, maybe, n))
    s = make_session(server)
    result = await s.call("measure", {"x": 3, "xs": [1, 2.5], "maybe": 4, "n": 5})
    assert result["content"][0]["text"] == "float float float float int"


# -- sync tools ----------------------------------------------------------------------------------------


async def test_sync_tools_run_off_the_event_loop(make_session):
    server = Server("t")
    gate = threading.Event()
    threads = []

    @server.tool
    def blocking(ctx: Context) -> str:
        threads.append(threading.current_thread())
        assert ctx._request.thread == threading.get_ident()   # the watchdog can interrupt this thread
        gate.wait(10)
        return "unblocked"
    s = make_session(server)
    rid = s.start("tools/call", {"name": "blocking", "arguments": {}})
    # The loop is free: ping is answered inside the very feed() that carries it.
    ping = s.start("ping")
    assert s.answer(ping) == {"jsonrpc": "2.0", "id": ping, "result": {}}
    for _ in range(500):
        if threads:
            break
        await asyncio.sleep(0.002)
    assert threads and threads[0] is not threading.current_thread()
    assert s.answer(rid) is None
    gate.set()
    assert (await s.wait(rid))["result"]["content"][0]["text"] == "unblocked"


async def test_a_sync_tool_sleeping_does_not_block_ping(make_session):
    server = Server("t")

    @server.tool
    def nap(seconds: float) -> str:
        import time
        time.sleep(seconds)
        return "rested"
    s = make_session(server)
    rid = s.start("tools/call", {"name": "nap", "arguments": {"seconds": 1.0}})
    ping = await s.request("ping")
    assert ping["result"] == {}
    assert s.answer(rid) is None  # the ping came back first
    assert (await s.wait(rid))["result"]["content"][0]["text"] == "rested"


# -- results ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    name: str
    score: float
    tags: list[str]


async def test_return_values_map_to_results(make_session):
    server = Server("t")

    @server.tool
    async def as_text() -> str:
        return "plain"

    @server.tool
    async def as_dict() -> dict:
        return {"a": 1, "b": [True, None]}

    @server.tool
    async def as_list() -> list[int]:
        return [1, 2, 3]

    @server.tool
    async def as_dataclass() -> Report:
        return Report("r", 0.5, ["x"])

    @server.tool
    async def as_typeddict() -> Address:
        return {"street": "Main", "number": 1}

    @server.tool
    async def as_none() -> None:
        return None

    @server.tool
    async def as_blocks() -> ToolResult:
        return ToolResult([text("one"), image(b"\x89PNG", "image/png"), audio("QUJD", "audio/wav"),
                           resource_link("file:///x", "x", mime_type="text/plain", description="the x"),
                           "coerced"], structured={"k": "v"})

    @server.tool
    async def as_error_result() -> ToolResult:
        return ToolResult([text("went wrong")], is_error=True)

    @server.tool
    async def as_content():
        return image("aGk=", "image/gif")

    @server.tool
    async def as_contents():
        return [text("a"), text("b")]

    s = make_session(server)
    assert await s.call("as_text") == {"content": [{"type": "text", "text": "plain"}]}
    d = await s.call("as_dict")
    assert d["structuredContent"] == {"a": 1, "b": [True, None]}
    assert orjson.loads(d["content"][0]["text"]) == {"a": 1, "b": [True, None]}
    lst = await s.call("as_list")
    assert lst["structuredContent"] == {"result": [1, 2, 3]}
    assert orjson.loads(lst["content"][0]["text"]) == {"result": [1, 2, 3]}
    dc = await s.call("as_dataclass")
    assert dc["structuredContent"] == {"name": "r", "score": 0.5, "tags": ["x"]}
    td = await s.call("as_typeddict")
    assert td["structuredContent"] == {"street": "Main", "number": 1}
    # structuredContent conforms to the advertised outputSchema.
    for name, result in (("as_dict", d), ("as_list", lst), ("as_dataclass", dc), ("as_typeddict", td)):
        schema = definition(server, name)["outputSchema"]
        assert schema["type"] == "object"
        assert compile_validator(schema)(result["structuredContent"], "out") is None, name
    assert definition(server, "as_dataclass")["outputSchema"]["required"] == ["name", "score", "tags"]
    assert await s.call("as_none") == {"content": []}
    blocks = await s.call("as_blocks")
    assert blocks["content"] == [
        {"type": "text", "text": "one"},
        {"type": "image", "data": "iVBORw==", "mimeType": "image/png"},
        {"type": "audio", "data": "QUJD", "mimeType": "audio/wav"},
        {"type": "resource_link", "uri": "file:///x", "name": "x", "mimeType": "text/plain",
         "description": "the x"},
        {"type": "text", "text": "coerced"}]
    assert blocks["structuredContent"] == {"k": "v"} and "isError" not in blocks
    assert await s.call("as_error_result") == {"content": [{"type": "text", "text": "went wrong"}], "isError": True}
    assert await s.call("as_content") == {"content": [{"type": "image", "data": "aGk=", "mimeType": "image/gif"}]}
    assert await s.call("as_contents") == {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    modern = await s.call("as_text", meta=MODERN_META)
    assert modern == {"content": [{"type": "text", "text": "plain"}], "resultType": "complete"}
    # Every call above ended, one way or the other.
    assert len(s.d.table) == 0


async def test_tool_errors_and_crashes(make_session):
    server = Server("t")
    events = []
    server.recorders.append(lambda kind, fields: events.append((kind, fields)))

    @server.tool
    async def refuse() -> str:
        raise ToolError("the file is locked; close it and retry")

    @server.tool
    def crash() -> str:
        raise ValueError("bad value")
    s = make_session(server)
    assert await s.call("refuse") == {"content": [{"type": "text", "text": "the file is locked; close it and retry"}],
                                      "isError": True}
    assert events == []  # a ToolError is an answer, not a crash
    crashed = await s.call("crash")
    assert crashed == {"content": [{"type": "text", "text": "Tool 'crash' failed: ValueError: bad value"}],
                       "isError": True}
    ((kind, fields),) = events
    assert kind == "crash" and isinstance(fields["exc"], ValueError) and fields["request"].tool == "crash"


async def test_per_tool_timeout(make_session):
    server = Server("t")

    @server.tool(timeout=0.05)
    async def stuck() -> str:
        await asyncio.sleep(30)
        return "never"
    s = make_session(server)
    result = await s.call("stuck")
    assert result["isError"] is True and "timed out after 0.05 s" in result["content"][0]["text"]


async def test_eager_tool_is_answered_inside_feed(make_session):
    server = Server("t")

    @server.tool(eager=True)
    async def fast(x: int) -> str:
        return str(x * 2)
    s = make_session(server)
    rid = s.start("tools/call", {"name": "fast", "arguments": {"x": 21}})
    assert s.answer(rid)["result"]["content"][0]["text"] == "42"


# -- Context ------------------------------------------------------------------------------------------------


async def test_context_progress(make_session):
    server = Server("t")
    returns = []

    @server.tool
    async def work(ctx: Context) -> str:
        returns.append(ctx.report_progress(1, total=3, message="first"))
        returns.append(ctx.report_progress(1, total=3))       # not above the last: dropped
        returns.append(ctx.report_progress(0.5))              # going back: dropped
        returns.append(ctx.report_progress(2.5))
        returns.append(ctx.report_progress(3, total=3))
        return "done"
    s = make_session(server)
    rid = s.start("tools/call", {"name": "work", "arguments": {}, "_meta": {"progressToken": 99}})
    await s.wait(rid)
    assert s.notifications("notifications/progress") == [
        {"progressToken": 99, "progress": 1, "total": 3, "message": "first"},
        {"progressToken": 99, "progress": 2.5},
        {"progressToken": 99, "progress": 3, "total": 3}]
    assert returns == [True, False, False, True, True]
    # The notifications come before the result.
    kinds = [m.get("method", "result") for m in s.messages]
    assert kinds == ["notifications/progress"] * 3 + ["result"]
    # Without a token there is nobody to tell.
    returns.clear()
    await s.call("work")
    assert returns == [False] * 5 and len(s.notifications("notifications/progress")) == 3


async def test_context_progress_from_a_worker_thread(make_session):
    server = Server("t")

    @server.tool
    def work(ctx: Context) -> str:
        for i in range(1, 4):
            ctx.report_progress(i, total=3)
        return "done"
    s = make_session(server)
    rid = s.start("tools/call", {"name": "work", "arguments": {}, "_meta": {"progressToken": "t"}})
    await s.wait(rid)
    assert [p["progress"] for p in s.notifications("notifications/progress")] == [1, 2, 3]
    kinds = [m.get("method", "result") for m in s.messages]
    assert kinds[-1] == "result"


async def test_context_facts_and_log(make_session, caplog):
    server = Server("t")
    facts = []

    @server.tool
    async def introspect(ctx: Context) -> str:
        facts.append((ctx.request_id, ctx.tool, ctx._server is server, ctx.cancelled, ctx.log.name))
        ctx.log.warning("from the tool")
        return "ok"
    s = make_session(server)
    with caplog.at_level(logging.WARNING):
        rid = s.start("tools/call", {"name": "introspect", "arguments": {}})
        await s.wait(rid)
    assert facts == [(rid, "introspect", True, False, "bemcp.tool.introspect")]
    assert any(r.name == "bemcp.tool.introspect" and r.getMessage() == "from the tool" for r in caplog.records)


async def test_context_cancellation_async_and_sync(make_session):
    server = Server("t")
    seen = []
    entered = threading.Event()

    @server.tool
    async def waits(ctx: Context) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append(("async", ctx.cancelled))
            raise
        return "never"

    @server.tool
    def polls(ctx: Context) -> str:
        entered.set()
        for _ in range(1000):
            if ctx.cancelled:
                seen.append(("sync", True))
                try:
                    ctx.check_cancelled()
                except asyncio.CancelledError:
                    seen.append(("sync raised", True))
                    raise
            threading.Event().wait(0.005)
        return "never"
    s = make_session(server)
    a = s.start("tools/call", {"name": "waits", "arguments": {}})
    b = s.start("tools/call", {"name": "polls", "arguments": {}})
    await asyncio.sleep(0.01)
    assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
    for rid in (a, b):
        s.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid}})
    for _ in range(1000):
        if len(seen) == 3:
            break
        await asyncio.sleep(0.005)
    assert sorted(seen) == [("async", True), ("sync", True), ("sync raised", True)]
    await asyncio.sleep(0.02)
    assert s.answer(a) is None and s.answer(b) is None
    assert len(s.d.table) == 0
