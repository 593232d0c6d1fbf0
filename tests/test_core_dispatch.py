"""Dispatcher contract: both twins answer the same messages the same way, on both loops.

The dispatcher knows JSON-RPC, not MCP: these tests register plain handlers and
tool slots and read the bytes it writes.
"""

import asyncio
import gc
import weakref

import orjson
import pytest

from bemcp._pipes import ReaderProtocol, WriterProtocol
from bemcp.errors import RpcError

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700, -32600, -32601, -32602, -32603)
SERVER_BUSY, REQUEST_TIMEOUT = -32000, -32001


class Wire:
    """A dispatcher with a recording transport."""

    def __init__(self, core, max_message_size=1 << 20):
        self.core = core
        self.writes = []
        self.loop = asyncio.get_running_loop()
        self.d = core.Dispatcher(self.loop, self.writes.append, max_message_size)
        self.d.methods["ping"] = lambda params, req: {}
        self.exceptions = []
        self.d.on_exception = lambda req, exc: self.exceptions.append((req, exc))
        self._seen = 0

    def gated(self, method):
        """Register ``method``: an async handler answering with what the returned future gets."""
        gate = self.loop.create_future()

        async def handler(params, req):
            return await gate
        self.d.methods[method] = handler
        return gate

    def send(self, *messages):
        self.d.feed(b"".join(m if type(m) is bytes else orjson.dumps(m) + b"\n" for m in messages))

    @property
    def out(self):
        return [orjson.loads(line) for chunk in self.writes for line in chunk.splitlines()]

    def new(self):
        """Messages written since the last call."""
        out = self.out
        fresh = out[self._seen:]
        self._seen = len(out)
        return fresh

    async def settle(self, n=None, timeout=2.0):
        """Let the loop run until ``n`` messages in all were written (or just a few turns)."""
        if n is None:
            for _ in range(5):
                await asyncio.sleep(0)
            return self.out
        deadline = self.loop.time() + timeout
        while len(self.out) < n:
            if self.loop.time() > deadline:
                raise AssertionError(f"expected {n} messages, got {self.out}")
            await asyncio.sleep(0.001)
        return self.out

    def slot(self, name, call, finish=None, fail=None, **kw):
        finish = finish or (lambda value, req: {"content": [{"type": "text", "text": str(value)}]})
        fail = fail or (lambda exc, req: {"content": [{"type": "text", "text": f"failed: {exc}"}], "isError": True})
        slot = self.core.ToolSlot(name, call, finish, fail, **kw)
        self.d.tools[name] = slot
        return slot


def request(id, method, params=None):
    msg = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def call(id, name, arguments=None, **extra):
    params = {"name": name, **extra}
    if arguments is not None:
        params["arguments"] = arguments
    return request(id, "tools/call", params)


def text_of(msg):
    return msg["result"]["content"][0]["text"]


# -- envelopes ----------------------------------------------------------------------------


async def test_parse_error_answers_under_the_recovered_id_and_the_next_line_is_served(core):
    w = Wire(core)
    w.send(b'{"jsonrpc": "2.0", "id": 1, "method": \n', b"not json\n", request(2, "ping"))
    first, second, third = w.out
    assert first["id"] == 1 and first["error"]["code"] == PARSE_ERROR
    assert first["jsonrpc"] == "2.0"
    assert second["id"] is None and second["error"]["code"] == PARSE_ERROR   # no id to find
    assert third == {"jsonrpc": "2.0", "id": 2, "result": {}}


async def test_valid_json_the_parser_refuses_is_answered_under_its_own_id(core):
    # A number beyond a double's range is valid JSON that orjson refuses.
    w = Wire(core)
    w.send(b'{"jsonrpc":"2.0","id":"a1","method":"ping","params":{"a":1e999999}}\n',
           b'{"jsonrpc":"2.0","params":{"id":"inner","a":-1e400},"id":7,"method":"ping"}\n',
           b'{"jsonrpc":"2.0","id":1e999,"method":"ping"}\n',
           request(2, "ping"))
    refused, later_id, no_id, served = w.out
    assert refused["id"] == "a1" and refused["error"]["code"] == PARSE_ERROR
    assert later_id["id"] == 7 and later_id["error"]["code"] == PARSE_ERROR   # never params' "id"
    assert no_id["id"] is None and no_id["error"]["code"] == PARSE_ERROR   # the id itself is refused
    assert served == {"jsonrpc": "2.0", "id": 2, "result": {}}


async def test_batch_is_answered_invalid_request_never_silence(core):
    w = Wire(core)
    called = []
    w.d.methods["ping"] = lambda params, req: called.append(req.id) or {}
    w.send([request(1, "ping"), request(2, "ping")])
    (answer,) = w.out
    assert answer["id"] is None and answer["error"]["code"] == INVALID_REQUEST
    assert "batch" in answer["error"]["message"]
    assert called == []


# -- batches (accepted only where the protocol revision has them: 2025-03-26) --------


def batch_answers(w):
    """The one array written since the last look, as {id: answer}; asserts it is one line."""
    (line,) = [line for chunk in w.writes[-1:] for line in chunk.splitlines()]
    answers = orjson.loads(line)
    assert type(answers) is list
    return answers


async def test_batch_answers_come_back_together_in_one_array(core):
    w = Wire(core)
    w.d.batches = True
    gates, started = gated_tool(w, "slow")
    w.slot("quick", lambda args, req: args["text"])
    w.send([call(1, "quick", {"text": "a"}), call(2, "slow"), request(3, "nope"),
            {"jsonrpc": "2.0", "method": "notifications/whatever"}, 7, [request(4, "ping")],
            request(5, "ping"), {"jsonrpc": "2.0", "id": 6}])
    await w.settle()
    assert w.writes == [] and started == [2]      # held until every answer is in
    gates[2].set_result("done")
    await w.settle()
    answers = batch_answers(w)
    by_id = {a["id"]: a for a in answers if a["id"] is not None}
    assert text_of(by_id[1]) == "a" and text_of(by_id[2]) == "done"
    assert by_id[3]["error"]["code"] == METHOD_NOT_FOUND
    assert by_id[5]["result"] == {}
    assert by_id[6]["error"]["code"] == INVALID_REQUEST        # no method
    nulls = [a["error"] for a in answers if a["id"] is None]   # 7, and the batch inside the batch
    assert [e["code"] for e in nulls] == [INVALID_REQUEST, INVALID_REQUEST]
    assert len(answers) == 7                                   # the notification: no answer
    w.send(request(8, "ping"))                                 # single messages still work
    assert w.new()[-1] == {"jsonrpc": "2.0", "id": 8, "result": {}}


async def test_batch_of_notifications_gets_nothing_and_an_empty_batch_one_error(core):
    w = Wire(core)
    w.d.batches = True
    heard = []
    w.d.notifications["n"] = heard.append
    w.send([{"jsonrpc": "2.0", "method": "n", "params": {"k": 1}}] * 2)
    await w.settle()
    assert w.out == [] and heard == [{"k": 1}, {"k": 1}]
    w.send([])
    (answer,) = w.new()
    assert answer["id"] is None and answer["error"]["code"] == INVALID_REQUEST


async def test_batch_members_end_every_way_and_the_batch_still_completes(core):
    # Cancelled (no answer), timed out (an error), queued then run, refused: all in one array.
    w = Wire(core)
    w.d.batches = True
    w.d.max_active = 1
    w.d.max_queued = 1
    gates, started = gated_tool(w, "g")
    hanging_tool(w, "h", timeout=0.05)
    hanging_tool(w, "forever")
    w.send([call(1, "g"), call(2, "g"), call(3, "g")])  # 1 runs, 2 queues, 3 is refused
    await w.settle()
    assert started == [1] and w.writes == []
    assert w.d.cancel(1) is True                        # no answer for 1; 2 starts
    await w.settle()
    assert started == [1, 2] and w.writes == []
    gates[2].set_result("two")
    await w.settle(1)
    by_id = {a["id"]: a for a in batch_answers(w)}
    assert set(by_id) == {2, 3}
    assert text_of(by_id[2]) == "two" and by_id[3]["error"]["code"] == SERVER_BUSY
    w.d.max_active = 0
    w.send([call(4, "h"), request(5, "ping")])
    await w.settle(2)
    by_id = {a["id"]: a for a in batch_answers(w)}
    assert by_id[4]["error"]["code"] == REQUEST_TIMEOUT and by_id[5]["result"] == {}
    w.send([call(6, "forever")])
    await w.settle()
    assert w.d.cancel(6) is True                        # every member cancelled: no answer at all
    await w.settle()
    assert len(w.out) == 2


async def test_a_deferred_batch_member_is_awaited_by_its_batch(core):
    # on_unknown_tool defers a call (tools still loading); hold() keeps the batch open for it.
    w = Wire(core)
    w.d.batches = True
    deferred = []
    w.d.on_unknown_tool = lambda id, params: deferred.append((id, params, w.d.hold())) or True
    w.send([call(1, "later", {"text": "x"}), request(2, "ping")])
    await w.settle()
    assert w.writes == [] and len(deferred) == 1
    w.slot("later", lambda args, req: args["text"])
    w.d.call_tool(*deferred[0])
    await w.settle(1)
    by_id = {a["id"]: a for a in batch_answers(w)}
    assert text_of(by_id[1]) == "x" and by_id[2]["result"] == {}
    assert w.d.hold() is None                            # outside a batch there is none to hold


async def test_batch_members_are_logged_each_with_its_own_bytes(core):
    w = Wire(core)
    w.d.batches = True
    w.d.keep_finished(True)
    w.slot("quick", lambda args, req: args["text"])
    members = [call(1, "quick", {"text": "a"}), call(2, "quick", {"text": "bb"})]
    w.send(members)
    await w.settle()
    from bemcp._core import FINISHED_ROW as RECORD
    count, records, lines, details = w.d.take_finished()
    assert count == 2
    assert orjson.loads(b"[" + lines + b"]") == members
    sizes = [row[3] for row in RECORD.iter_unpack(records)]   # bytes in: each member's own
    assert sizes == [len(orjson.dumps(m)) + 1 for m in members]


async def test_dispatch_answers_a_parsed_message_at_once_and_logs_its_bytes(core):
    """What a transport that parses its own messages (HTTP) hands the core."""
    w = Wire(core)
    w.d.keep_finished(True)
    w.slot("quick", lambda args, req: args["text"])
    line = orjson.dumps(call(-3, "quick", {"text": "now"}))
    w.d.dispatch(orjson.loads(line), line)
    assert [text_of(m) for m in w.out] == ["now"]     # written before any loop turn
    w.d.dispatch(request(4, "ping"))
    assert w.out[-1] == {"jsonrpc": "2.0", "id": 4, "result": {}}
    from bemcp._core import FINISHED_ROW as RECORD
    count, records, lines, details = w.d.take_finished()
    assert count == 1 and lines == line
    assert [row[3] for row in RECORD.iter_unpack(records)] == [len(line) + 1]


class Reply:
    """A reply target, as a transport serving many clients passes one to dispatch()."""

    def __init__(self, id):
        self.id = id
        self.answers = []

    def answered(self, data, code):
        self.answers.append((data, code))


async def test_a_reply_target_gets_its_answer_under_its_own_id_and_nothing_else_does(core):
    """Each way a request ends reaches the target once, encoded under the target's id,
    with the error code; the write stream carries none of it."""
    w = Wire(core)
    w.d.keep_finished(True)
    w.slot("quick", lambda args, req: args["text"])
    w.d.methods["boom"] = lambda params, req: 1 / 0
    w.d.methods["bad"] = lambda params, req: {"x": object()}
    w.d.methods["refuse"] = lambda params, req: (_ for _ in ()).throw(RpcError(-32042, "no", {"k": 1}))
    gate = w.gated("slow")
    cases = [(call(-1, "quick", {"text": "hi"}), None), (request(-2, "nothing"), METHOD_NOT_FOUND),
             (request(-3, "boom"), INTERNAL_ERROR), (request(-4, "bad"), INTERNAL_ERROR),
             (request(-5, "refuse"), -32042), (call(-6, "quick", 1), INVALID_PARAMS),
             ({"jsonrpc": "1.0", "id": -7, "method": "ping"}, INVALID_REQUEST)]
    answers = []
    for n, (msg, code) in enumerate(cases):
        reply = Reply(f"client-{n}")
        w.d.dispatch(msg, None, reply)
        [(data, got)] = reply.answers
        answer = orjson.loads(data)
        assert not data.endswith(b"\n") and answer["id"] == f"client-{n}" and got == code, (msg, answer)
        assert ("error" in answer) == (code is not None)
        answers.append(data)
    assert text_of(orjson.loads(answers[0])) == "hi"
    assert orjson.loads(answers[4])["error"] == {"code": -32042, "message": "no", "data": {"k": 1}}
    assert w.writes == [] and len(w.exceptions) == 1
    # Answered later, from a task: still to its target, and a timeout the same way.
    reply = Reply("late")
    w.d.dispatch(request(-8, "slow"), None, reply)
    assert reply.answers == []
    gate.set_result({"done": True})
    await w.settle()
    assert [orjson.loads(a) for a, _ in reply.answers] == [{"jsonrpc": "2.0", "id": "late", "result": {"done": True}}]
    w.slot("stuck", lambda args, req: asyncio.sleep(10), timeout=0.01)
    reply = Reply(0)
    w.d.dispatch(call(-9, "stuck", {}), None, reply)
    for _ in range(200):
        if reply.answers:
            break
        await asyncio.sleep(0.005)
    assert reply.answers[0][1] == REQUEST_TIMEOUT and orjson.loads(reply.answers[0][0])["id"] == 0
    assert w.writes == []
    count, records, lines, details = w.d.take_finished()
    from bemcp._core import FINISHED_ROW as RECORD
    sent = [row[4] for row in RECORD.iter_unpack(records)]
    assert sent[0] == len(answers[0])     # bytes out: the answer as the target got it
    with pytest.raises(TypeError):
        w.d.dispatch([request(-10, "ping")], None, Reply(1))


async def test_a_reply_target_follows_a_deferred_call_and_an_answer_sent_for_it(core):
    w = Wire(core)
    deferred = []
    w.d.on_unknown_tool = lambda id, params: deferred.append((id, params, w.d.hold())) or True
    reply = Reply("c1")
    w.d.dispatch(call(-1, "later", {"text": "x"}), None, reply)
    assert reply.answers == [] and deferred[0][2] is reply
    w.slot("later", lambda args, req: args["text"])
    w.d.call_tool(*deferred[0])
    assert [orjson.loads(a)["id"] for a, _ in reply.answers] == ["c1"] and w.writes == []
    # An answer built by the layer above (a task created for the call) goes to the target too.
    w.d.methods["made"] = lambda params, req: w.d.send({"jsonrpc": "2.0", "id": req.id, "error":
                                                        {"code": -32050, "message": "m"}}) or asyncio.sleep(10)
    reply = Reply("c2")
    w.d.dispatch(request(-2, "made"), None, reply)
    assert [(orjson.loads(a)["id"], code) for a, code in reply.answers] == [("c2", -32050)]
    w.d.cancel(-2)


async def test_what_was_written_before_a_reply_reaches_the_write_stream_first(core):
    # A request to the client a tool sent goes out before the answer that follows it.
    w = Wire(core)
    order = []
    w.d.write = lambda data: order.append(("write", orjson.loads(data)["method"]))

    def ask_and_answer(args, req):
        w.d.send_request("roots/list", {})
        return "done"
    w.slot("asks", ask_and_answer)
    reply = Reply(7)
    reply.answered = lambda data, code: order.append(("answer", orjson.loads(data)["id"]))
    w.d.dispatch(call(-1, "asks", {}), None, reply)
    assert order == [("write", "roots/list"), ("answer", 7)]


@pytest.mark.parametrize("id", [1.5, -2.25, 1e2, 0, -7, "", "x" * 300])
async def test_any_string_or_number_is_an_id_and_comes_back_as_sent(core, id):
    w = Wire(core)
    w.send({"jsonrpc": "2.0", "id": id, "method": "ping"})
    (answer,) = w.out
    assert answer == {"jsonrpc": "2.0", "id": id, "result": {}} and type(answer["id"]) is type(id)


@pytest.mark.parametrize("message, answer_id", [
    (42, None),
    ("ping", None),
    (None, None),
    ({"jsonrpc": "2.0", "id": True, "method": "ping"}, None),
    ({"jsonrpc": "2.0", "id": None, "method": "ping"}, None),
    ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}, None),
    ({"jsonrpc": "2.0", "id": [1], "method": "ping"}, None),
    ({"jsonrpc": "1.0", "id": 3, "method": "ping"}, 3),
    ({"id": 3, "method": "ping"}, 3),
    ({"jsonrpc": "2.0", "id": 3, "method": 5}, 3),
    ({"jsonrpc": "2.0", "id": "s", "method": "ping", "params": "x"}, "s"),
    ({"jsonrpc": "2.0", "id": 3, "method": "ping", "params": 7}, 3),
    ({"jsonrpc": "2.0", "id": 3}, 3),
])
async def test_invalid_envelopes(core, message, answer_id):
    w = Wire(core)
    called = []
    w.d.methods["ping"] = lambda params, req: called.append(req.id) or {}
    w.send(message, request(99, "ping"))
    bad, good = w.out
    assert bad["error"]["code"] == INVALID_REQUEST
    assert bad["id"] == answer_id and "id" in bad
    assert bad["error"]["message"].startswith("Invalid request")
    assert good["id"] == 99 and called == [99]


async def test_params_may_be_an_array(core):
    w = Wire(core)
    w.d.methods["sum"] = lambda params, req: sum(params)
    w.send(request(1, "sum", [1, 2, 3]))
    assert w.out == [{"jsonrpc": "2.0", "id": 1, "result": 6}]


async def test_unknown_method(core):
    w = Wire(core)
    w.send(request(5, "no/such"))
    (answer,) = w.out
    assert answer["id"] == 5 and answer["error"]["code"] == METHOD_NOT_FOUND
    assert "no/such" in answer["error"]["message"]


async def test_notifications_get_no_answer(core):
    w = Wire(core)
    got = []
    w.d.notifications["note"] = lambda params: got.append(params)

    async def later(params):
        await asyncio.sleep(0)
        got.append(("async", params))
    w.d.notifications["later"] = later

    def broken(params):
        raise KeyError("boom")
    w.d.notifications["broken"] = broken
    w.send({"jsonrpc": "2.0", "method": "note", "params": {"a": 1}},
           {"jsonrpc": "2.0", "method": "unknown/notification"},
           {"jsonrpc": "2.0", "method": "broken"},
           {"jsonrpc": "2.0", "method": "later", "params": {"b": 2}})
    await w.settle()
    assert w.out == []
    assert got == [{"a": 1}, ("async", {"b": 2})]
    ((req, exc),) = w.exceptions
    assert req is None and isinstance(exc, KeyError)


async def test_responses_from_the_client_go_to_their_hook(core):
    w = Wire(core)
    seen = []
    w.d.on_client_response = seen.append
    w.send({"jsonrpc": "2.0", "id": "s1", "result": {"ok": True}},
           {"jsonrpc": "2.0", "id": "s2", "error": {"code": 1, "message": "no"}})
    await w.settle()
    assert w.out == []
    assert [m["id"] for m in seen] == ["s1", "s2"]


# -- method handlers ----------------------------------------------------------------------


async def test_handler_results_errors_and_crashes(core):
    w = Wire(core)

    def refuse(params, req):
        raise RpcError(INVALID_PARAMS, "bad thing", {"field": "x"})

    def crash(params, req):
        raise KeyError("missing")
    w.d.methods.update(echo=lambda params, req: params, refuse=refuse, crash=crash,
                       opaque=lambda params, req: {"x": object()})
    w.send(request(1, "echo", {"v": [1, "2"]}), request(2, "refuse"), request(3, "crash"),
           request(4, "opaque"))
    a, b, c, d = w.out
    assert a == {"jsonrpc": "2.0", "id": 1, "result": {"v": [1, "2"]}}
    assert b == {"jsonrpc": "2.0", "id": 2,
                 "error": {"code": INVALID_PARAMS, "message": "bad thing", "data": {"field": "x"}}}
    assert c["id"] == 3 and c["error"]["code"] == INTERNAL_ERROR and "KeyError" in c["error"]["message"]
    assert d["id"] == 4 and d["error"]["code"] == INTERNAL_ERROR
    ((req, exc),) = w.exceptions
    assert req.id == 3 and isinstance(exc, KeyError)
    assert len(w.d.table) == 0


async def test_async_handler_is_answered_from_a_task(core):
    w = Wire(core)
    gate = w.gated("slow")
    w.send(request(1, "slow"), request(2, "ping"))
    # The slow request does not hold up the next one.
    assert [m["id"] for m in w.out] == [2]
    assert w.d.table.get(1).task is not None
    gate.set_result({"done": True})
    out = await w.settle(2)
    assert out[1] == {"jsonrpc": "2.0", "id": 1, "result": {"done": True}}
    assert len(w.d.table) == 0


async def test_duplicate_id_in_flight_is_refused_and_the_first_still_answers(core):
    w = Wire(core)
    gate = w.gated("slow")
    w.send(request("dup", "slow"), request("dup", "ping"))
    (refused,) = w.new()
    assert refused["id"] == "dup" and refused["error"]["code"] == INVALID_REQUEST
    assert "already in flight" in refused["error"]["message"]
    gate.set_result(1)
    await w.settle(2)
    assert w.new() == [{"jsonrpc": "2.0", "id": "dup", "result": 1}]
    # Once answered, the id may be used again.
    w.send(request("dup", "ping"))
    assert w.new() == [{"jsonrpc": "2.0", "id": "dup", "result": {}}]


async def test_answers_of_one_read_are_coalesced_into_one_write(core):
    w = Wire(core)

    async def quick(params, req):
        return "q"
    w.d.methods["quick"] = quick
    w.send(request(1, "ping"), request(2, "ping"), request(3, "ping"))
    assert len(w.writes) == 1 and [m["id"] for m in w.out] == [1, 2, 3]
    w.writes.clear()
    w.send(request(4, "quick"), request(5, "quick"), request(6, "quick"))
    await w.settle(3)
    assert len(w.writes) == 1 and sorted(m["id"] for m in w.out) == [4, 5, 6]


async def test_notify_and_send(core):
    w = Wire(core)
    w.d.notify("notifications/message", {"level": "info", "data": "x"})
    w.d.send({"jsonrpc": "2.0", "id": "srv-1", "method": "roots/list"})
    await w.settle()
    assert w.out == [{"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}},
                     {"jsonrpc": "2.0", "id": "srv-1", "method": "roots/list"}]


async def test_requests_to_the_peer_get_their_responses_by_id(core):
    w = Wire(core)
    stray = []
    w.d.on_client_response = stray.append
    id1, first = w.d.send_request("roots/list", {})
    id2, second = w.d.send_request("sampling/createMessage", None)
    id3, dropped = w.d.send_request("roots/list", {})
    await w.settle()
    assert w.new() == [{"jsonrpc": "2.0", "id": id1, "method": "roots/list", "params": {}},
                       {"jsonrpc": "2.0", "id": id2, "method": "sampling/createMessage"},
                       {"jsonrpc": "2.0", "id": id3, "method": "roots/list", "params": {}}]
    assert len({id1, id2, id3}) == 3
    dropped.cancel()   # the waiter gave up: a late response is one to no request of ours
    await asyncio.sleep(0)
    w.send({"jsonrpc": "2.0", "id": id2, "error": {"code": -1, "message": "no", "data": {"why": 1}}},
           {"jsonrpc": "2.0", "id": id1, "result": {"roots": []}},
           {"jsonrpc": "2.0", "id": id3, "result": {}},
           {"jsonrpc": "2.0", "id": 999, "result": {}})
    assert await first == {"roots": []}
    with pytest.raises(RpcError) as err:
        await second
    assert (err.value.code, err.value.message, err.value.data) == (-1, "no", {"why": 1})
    assert [m["id"] for m in stray] == [id3, 999]   # not ours (any more): the hook sees them
    assert w.new() == [] and w.exceptions == []
    # Closing the connection fails whatever still waits for the peer.
    _, waiting = w.d.send_request("roots/list", {})
    w.d.close()
    with pytest.raises(RpcError, match="Connection closed"):
        await waiting


# -- tool slots ------------------------------------------------------------------------------


async def test_tool_slot_call_finish_fail(core):
    w = Wire(core)
    calls = []

    def add(args, req):
        calls.append((dict(args), req.id, req.tool, req.method))
        if args.get("boom"):
            raise ValueError("boom")
        if args.get("refuse"):
            raise RpcError(INVALID_PARAMS, "refused", {"why": "test"})
        return args.get("a", 0) + args.get("b", 0)
    finished = []
    failed = []

    def finish(value, req):
        finished.append((value, req.id))
        return {"content": [{"type": "text", "text": str(value)}]}

    def fail(exc, req):
        failed.append((type(exc), req.id))
        return {"content": [{"type": "text", "text": str(exc)}], "isError": True}
    w.slot("add", add, finish, fail)
    w.send(call(1, "add", {"a": 2, "b": 3}), call(2, "add"), call(3, "add", {"boom": True}),
           call(4, "add", {"refuse": True}))
    a, b, c, d = w.out
    assert text_of(a) == "5" and a["id"] == 1
    assert text_of(b) == "0"  # no arguments: an empty object
    assert c["result"] == {"content": [{"type": "text", "text": "boom"}], "isError": True}
    assert d["error"] == {"code": INVALID_PARAMS, "message": "refused", "data": {"why": "test"}}
    assert calls[0] == ({"a": 2, "b": 3}, 1, "add", "tools/call")
    assert calls[1][0] == {}
    assert finished == [(5, 1), (0, 2)] and failed == [(ValueError, 3)]
    counts = list(w.d.table.counts)
    assert counts[core.STATE_OK] == 2 and counts[core.STATE_ERROR] == 2
    assert w.d.active == 0


@pytest.mark.parametrize("params, fragment", [
    ({"name": "nope", "arguments": {}}, "nope"),
    ({"name": 5, "arguments": {}}, "5"),
    ({"arguments": {}}, "None"),
    ({"name": "t", "arguments": [1, 2]}, "arguments"),
    ({"name": "t", "arguments": "x"}, "arguments"),
])
async def test_tool_call_invalid_params(core, params, fragment):
    w = Wire(core)
    w.slot("t", lambda args, req: "ok")
    w.send(request(1, "tools/call", params), request(2, "tools/call", [1]))
    a, b = w.out
    assert a["id"] == 1 and a["error"]["code"] == INVALID_PARAMS and fragment in a["error"]["message"]
    assert b["id"] == 2 and b["error"]["code"] == INVALID_PARAMS
    assert len(w.d.table) == 0 and w.d.active == 0


async def test_finish_or_fail_raising_is_an_internal_error(core):
    w = Wire(core)

    def bad_finish(value, req):
        raise TypeError("cannot map")

    def bad_fail(exc, req):
        raise TypeError("cannot map the failure")

    def boom(args, req):
        raise ValueError("x")
    w.slot("a", lambda args, req: 1, finish=bad_finish)
    w.slot("b", boom, fail=bad_fail)
    w.send(call(1, "a"), call(2, "b"))
    a, b = w.out
    assert a["error"]["code"] == INTERNAL_ERROR and "cannot map" in a["error"]["message"]
    assert b["error"]["code"] == INTERNAL_ERROR and "cannot map the failure" in b["error"]["message"]
    assert [type(exc) for _, exc in w.exceptions] == [TypeError, TypeError]
    assert w.d.active == 0 and len(w.d.table) == 0


async def test_eager_coroutine_that_does_not_wait_is_answered_inline(core):
    w = Wire(core)
    tasks = []

    async def quick(args, req):
        tasks.append(asyncio.current_task())
        return args["x"]
    w.slot("quick", quick, eager=True)
    w.send(call(1, "quick", {"x": "now"}))
    # Answered within feed(): no task of its own, no loop turn.
    (answer,) = w.out
    assert text_of(answer) == "now"
    assert tasks == [asyncio.current_task()]


async def test_non_eager_coroutine_runs_in_a_task(core):
    w = Wire(core)
    tasks = []

    async def lazy(args, req):
        tasks.append(asyncio.current_task())
        return "later"
    w.slot("lazy", lazy)
    w.send(call(1, "lazy"))
    assert w.out == []
    (answer,) = await w.settle(1)
    assert text_of(answer) == "later" and tasks[0] is not None


async def test_eager_coroutine_that_suspends_continues_in_a_task(core):
    w = Wire(core)
    loop = asyncio.get_running_loop()
    gate = loop.create_future()
    steps = []

    async def waits(args, req):
        steps.append("start")
        await asyncio.sleep(0)          # a bare yield
        steps.append("after yield")
        value = await gate              # a future
        steps.append("after gate")
        await asyncio.sleep(0.001)      # a timer
        return f"got {value}"
    w.slot("waits", waits, eager=True)
    w.send(call(1, "waits"), request(2, "ping"))
    assert steps == ["start"]
    assert [m["id"] for m in w.out] == [2]
    req = w.d.table.get(1)
    assert req is not None and req.task is not None
    await w.settle()
    assert steps == ["start", "after yield"]
    gate.set_result("it")
    out = await w.settle(2)
    assert text_of(out[1]) == "got it" and steps[-1] == "after gate"
    assert len(w.d.table) == 0 and w.d.active == 0


async def test_eager_coroutine_errors_before_and_after_suspending(core):
    w = Wire(core)

    async def early(args, req):
        raise ValueError("early")

    async def late(args, req):
        await asyncio.sleep(0)
        raise ValueError("late")

    async def rpc(args, req):
        raise RpcError(INVALID_PARAMS, "no", None)
    for name, fn in (("early", early), ("late", late), ("rpc", rpc)):
        w.slot(name, fn, eager=True)
    w.send(call(1, "early"), call(2, "late"), call(3, "rpc"))
    out = await w.settle(3)
    by_id = {m["id"]: m for m in out}
    assert by_id[1]["result"]["isError"] and "early" in text_of(by_id[1])
    assert by_id[2]["result"]["isError"] and "late" in text_of(by_id[2])
    assert by_id[3]["error"]["code"] == INVALID_PARAMS


@pytest.mark.parametrize("eager", [False, True])
async def test_cancelled_call_gets_no_response(core, eager):
    w = Wire(core)
    seen = []
    stopped = []
    w.d.on_cancelled = stopped.append

    async def forever(args, req):
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
    w.slot("forever", forever, eager=eager)
    w.send(call(1, "forever"), call(2, "forever"))
    await w.settle()
    assert w.d.cancel(1) is True
    assert w.d.cancel(1) is False          # already gone
    assert w.d.cancel("unknown") is False
    await w.settle()
    assert seen == ["cancelled"]
    assert [r.id for r in stopped] == [1]
    assert w.out == []
    assert list(w.d.table.requests) == [2]
    assert list(w.d.table.counts)[core.STATE_CANCELLED] == 1
    assert w.d.active == 1
    w.d.cancel(2)
    await w.settle()
    assert w.out == [] and w.d.active == 0


def hanging_tool(w, name, **kw):
    """A tool whose calls never finish by themselves; returns (started, cancelled) request ids."""
    started = []
    cancelled = []

    async def hang(args, req):
        started.append(req.id)
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            cancelled.append(req.id)
            raise
    w.slot(name, hang, **kw)
    return started, cancelled


@pytest.mark.parametrize("eager", [False, True])
async def test_call_cancelled_before_its_task_ran_still_cleans_up(core, eager):
    # A tool that has started (an eager one runs up to its first await inside feed)
    # must see CancelledError, whenever the cancellation comes, so it can clean up.
    w = Wire(core)
    started, seen = hanging_tool(w, "forever", eager=eager)
    w.send(call(1, "forever"))
    assert w.d.cancel(1) is True
    await w.settle()
    assert seen == started
    assert w.out == [] and w.d.active == 0


async def test_finished_request_cannot_be_cancelled(core):
    w = Wire(core)
    w.send(request(1, "ping"))
    assert w.d.cancel(1) is False
    assert len(w.out) == 1


async def test_timeout_answers_with_timeout_result_and_cancels_the_work(core):
    w = Wire(core)

    def timeout_result(req):
        return {"content": [{"type": "text", "text": f"{req.tool} timed out"}], "isError": True}
    w.d.timeout_result = timeout_result
    w.d.default_timeout = 0.02
    _, seen = hanging_tool(w, "forever")
    w.send(call(1, "forever"))
    (answer,) = await w.settle(1)
    assert answer["result"] == {"content": [{"type": "text", "text": "forever timed out"}], "isError": True}
    await w.settle()
    assert seen == [1]
    assert list(w.d.table.counts)[core.STATE_TIMED_OUT] == 1
    assert w.d.active == 0 and len(w.d.table) == 0
    await asyncio.sleep(0.03)
    assert len(w.out) == 1  # answered once


async def test_timeout_without_a_hook_is_an_error_and_the_slot_timeout_wins(core):
    w = Wire(core)
    w.d.default_timeout = 60.0
    hanging_tool(w, "forever", timeout=0.02)
    w.send(call(1, "forever"))
    (answer,) = await w.settle(1)
    assert answer["error"]["code"] == REQUEST_TIMEOUT
    assert "timed out" in answer["error"]["message"]


async def test_timeout_hook_may_raise_an_rpc_error(core):
    w = Wire(core)

    def timeout_result(req):
        raise RpcError(-32050, "custom timeout", {"id": req.id})
    w.d.timeout_result = timeout_result
    hanging_tool(w, "forever", timeout=0.01)
    w.send(call("t", "forever"))
    (answer,) = await w.settle(1)
    assert answer["error"] == {"code": -32050, "message": "custom timeout", "data": {"id": "t"}}


# -- limits and the queue -----------------------------------------------------------------------


async def test_a_finished_call_is_not_kept_alive_by_its_deadline(core):
    # A far deadline stays in the heap after the call ends; it must not pin the request,
    # its task and its result (megabytes of command output, say) until it comes due.
    class Output:
        pass

    w = Wire(core)
    results = []

    async def produce(args, req):
        await asyncio.sleep(0)                  # a real task, not the eager path
        out = Output()
        results.append(weakref.ref(out))
        return out
    w.slot("produce", produce, finish=lambda value, req: {"content": []}, timeout=3600)
    gc.disable()                                # only reference counting may free them
    try:
        w.send(*[call(i, "produce") for i in range(50)])
        await w.settle(50)
        await asyncio.sleep(0)
        assert len(results) == 50 and all(ref() is None for ref in results)
    finally:
        gc.enable()


def gated_tool(w, name, **kw):
    """A tool whose calls wait on a future per request id; returns (gates, started)."""
    loop = asyncio.get_running_loop()
    gates = {}
    started = []

    async def gated(args, req):
        started.append(req.id)
        gates[req.id] = loop.create_future()
        return await gates[req.id]
    w.slot(name, gated, **kw)
    return gates, started


async def test_limits_queue_then_reject_and_a_freed_slot_starts_queued_work(core):
    w = Wire(core)
    w.d.max_active = 1
    w.d.max_queued = 1
    gates, started = gated_tool(w, "g")
    w.send(call(1, "g"), call(2, "g"), call(3, "g"))
    await w.settle()
    (busy,) = w.new()
    assert busy["id"] == 3 and busy["error"]["code"] == SERVER_BUSY
    data = busy["error"]["data"]
    assert data["active"] == 1 and data["limit"] == 1 and data["queued"] == 1 and data["queue_limit"] == 1
    assert data["tool"] == "g"
    assert "busy" in busy["error"]["message"].lower()
    assert started == [1] and len(w.d.queue) == 1
    assert list(w.d.table.counts)[core.STATE_REJECTED] == 1
    gates[1].set_result("one")
    await w.settle(2)
    await w.settle()
    assert [text_of(m) for m in w.new()] == ["one"]
    assert started == [1, 2] and len(w.d.queue) == 0
    gates[2].set_result("two")
    await w.settle(3)
    assert [text_of(m) for m in w.new()] == ["two"]
    assert w.d.active == 0 and len(w.d.table) == 0


async def test_finished_tool_calls_are_kept_for_the_logs_as_records_and_lines(core):
    from bemcp._core import FINISHED_ROW as RECORD

    def taken(w):
        count, records, lines, details = w.d.take_finished()
        assert len(records) == count * RECORD.size and w.d.take_finished() is None
        requests = orjson.loads(b"[" + lines + b"]")   # comma-separated lines
        assert len(requests) == count
        return list(zip(RECORD.iter_unpack(records), requests)), details

    w = Wire(core)
    w.send(call(100, "nope"))
    assert w.d.take_finished() is None          # nothing is kept until asked
    w.d.keep_finished(True)
    w.d.max_active = 1
    w.d.max_queued = 0
    gates, _ = gated_tool(w, "g")

    def note(args, req):
        req.detail = {"exit_code": 3}
        return "noted"
    w.slot("note", note)
    lines = [orjson.dumps(m) + b"\n" for m in (
        call(1, "g", {"b": 2, "a": 1}), call("two", "g"), request(3, "ping"), call(4, "nope"))]
    w.send(*lines)
    await w.settle(4)
    rejected, pong, unknown = w.new()[-3:]
    assert rejected["id"] == "two" and pong["id"] == 3 and unknown["id"] == 4
    assert w.d.cancel(1) is True
    w.send(call(5, "note", {"x": [1]}))
    await w.settle(5)
    rows, details = taken(w)
    assert len(rows) == 3   # tools only: no row for ping or an unknown tool
    (start, end, state, bytes_in, bytes_out), sent = rows[0]
    assert state == core.STATE_REJECTED and sent == orjson.loads(lines[1]) and bytes_in == len(lines[1])
    assert bytes_out == len(orjson.dumps(rejected)) + 1 and 0 < start <= end
    (_, _, state, bytes_in, bytes_out), sent = rows[1]
    assert state == core.STATE_CANCELLED and sent == orjson.loads(lines[0]) and bytes_out == 0   # no answer
    (_, _, state, bytes_in, bytes_out), sent = rows[2]
    assert state == core.STATE_OK and bytes_out == len(w.writes[-1])
    assert bytes_in == len(orjson.dumps(call(5, "note", {"x": [1]}))) + 1   # alone in its read
    assert sent["params"] == {"name": "note", "arguments": {"x": [1]}}
    assert details == [(2, {"exit_code": 3})]
    # Work started from Python (an MCP task) reports to its on_outcome callback: a line of the same
    # shape stands in for the one never read, and no bytes are counted.
    outcomes = []
    w.d.begin_tool(6, "note", {"name": "note"}, lambda result, error: outcomes.append(result))
    assert outcomes
    rows, details = taken(w)
    (_, _, state, bytes_in, bytes_out), sent = rows[0]
    assert (state, bytes_in, bytes_out) == (core.STATE_OK, 0, -1) and details == [(0, {"exit_code": 3})]
    assert sent == {"id": 6, "params": {"name": "note"}}
    w.d.keep_finished(False)
    w.send(call(7, "note"))
    assert w.d.take_finished() is None


async def test_per_tool_limit_leaves_other_tools_free(core):
    w = Wire(core)
    w.d.max_queued = 10
    gates, started = gated_tool(w, "limited", limit=1)
    w.slot("free", lambda args, req: "free")
    w.send(call(1, "limited"), call(2, "limited"), call(3, "free"))
    await w.settle()
    assert [text_of(m) for m in w.new()] == ["free"]
    assert started == [1]
    gates[1].set_result("a")
    await w.settle(2)
    await w.settle()
    assert started == [1, 2]
    gates[2].set_result("b")
    await w.settle(3)
    assert [text_of(m) for m in w.new()] == ["a", "b"]


async def test_queued_call_cancelled_before_it_starts_never_runs(core):
    w = Wire(core)
    w.d.max_active = 1
    w.d.max_queued = 5
    gates, started = gated_tool(w, "g")
    w.send(call(1, "g"), call(2, "g"), call(3, "g"))
    await w.settle()
    assert w.d.cancel(2) is True
    gates[1].set_result("one")
    await w.settle()
    assert started == [1, 3]
    gates[3].set_result("three")
    await w.settle(2)
    assert [(m["id"], text_of(m)) for m in w.out] == [(1, "one"), (3, "three")]


async def test_queued_call_can_time_out_in_the_queue(core):
    w = Wire(core)
    w.d.max_active = 1
    w.d.max_queued = 5
    gates, started = gated_tool(w, "g")
    w.d.default_timeout = 0.03
    w.send(call(1, "g"))
    await w.settle()
    w.d.default_timeout = None
    w.send(call(2, "g"))
    w.d.default_timeout = 0.02
    w.send(call(3, "g"))
    # Both deadlines may pass within one turn of a busy machine: wait for the two answers.
    await w.settle(2)
    assert sorted(m["id"] for m in w.out) == [1, 3]
    assert all(m["error"]["code"] == REQUEST_TIMEOUT for m in w.out)
    await w.settle()
    # 3 expired while waiting; 2 got the slot 1 freed.
    assert started == [1, 2]
    gates[2].set_result("two")
    await w.settle(3)
    assert text_of(w.out[-1]) == "two"


# -- size limit ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rid", [9, "req-9", 2.5, -1e3])
async def test_oversized_message_error_carries_the_recovered_id(core, rid):
    w = Wire(core, max_message_size=200)
    big = orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": "ping", "params": {"s": "x" * 1000}}) + b"\n"
    # In pieces, as a pipe delivers it.
    for i in range(0, len(big), 128):
        w.d.feed(big[i:i + 128])
    w.send(request(10, "ping"))
    err, ok = w.out
    assert err["id"] == rid and err["error"]["code"] == INVALID_REQUEST
    assert err["error"]["data"] == {"size": len(big) - 1, "limit": 200}
    assert "200" in err["error"]["message"]
    assert ok == {"jsonrpc": "2.0", "id": 10, "result": {}}


async def test_oversized_message_id_is_the_top_level_one(core):
    w = Wire(core, max_message_size=100)
    nested_first = (b'{"jsonrpc":"2.0","method":"ping","params":{"id":5,"s":"' + b"y" * 300 +
                    b'"},"id":6}\n')
    far_id = b'{"jsonrpc":"2.0","params":{"s":"' + b"z" * 10_000 + b'"},"id":7}\n'
    w.send(nested_first, far_id)
    a, b = w.out
    # The id inside params is not the request's; one past the kept head is unknown.
    assert a["id"] == 6
    assert b["id"] is None
    assert a["error"]["code"] == b["error"]["code"] == INVALID_REQUEST


# -- drain -------------------------------------------------------------------------------------------


async def test_drain_waits_for_work_that_finishes_in_time(core):
    w = Wire(core)

    async def quick(args, req):
        await asyncio.sleep(0.02)
        return "finished"
    w.slot("quick", quick)
    w.send(call(1, "quick"))
    await w.d.drain(5.0)
    (answer,) = w.out
    assert text_of(answer) == "finished"
    assert list(w.d.table.counts)[core.STATE_KILLED] == 0


async def test_drain_answers_what_is_left_when_time_is_up(core):
    w = Wire(core)
    _, seen = hanging_tool(w, "forever")
    w.send(call(1, "forever"), call(2, "forever"))
    await w.settle()
    start = asyncio.get_running_loop().time()
    await w.d.drain(0.05)
    assert asyncio.get_running_loop().time() - start < 2.0
    out = w.out
    assert sorted(m["id"] for m in out) == [1, 2]
    assert all(m["error"]["code"] == INTERNAL_ERROR and "shutting down" in m["error"]["message"] for m in out)
    assert sorted(seen) == [1, 2]
    assert list(w.d.table.counts)[core.STATE_KILLED] == 2
    assert len(w.d.table) == 0
    w.d.close()


async def test_drain_with_nothing_in_flight_returns_at_once(core):
    w = Wire(core)
    drain = w.d.drain(30.0)
    with pytest.raises(StopIteration):
        drain.send(None)   # done in its first step: it never waited on the loop
    assert w.writes == [] and len(w.d.table) == 0


# -- the protocol objects ----------------------------------------------------------------------------


async def test_protocols_feed_the_dispatcher_and_propagate_back_pressure(core):
    w = Wire(core)
    closed = []

    class Transport:
        def __init__(self):
            self.calls = []

        def pause_reading(self):
            self.calls.append("pause")

        def resume_reading(self):
            self.calls.append("resume")
    reader = ReaderProtocol(w.d, closed.append)
    writer = WriterProtocol(reader, closed.append)
    rt = Transport()
    reader.connection_made(rt)
    writer.connection_made(Transport())
    reader.data_received(orjson.dumps(request(1, "ping")) + b"\n")
    assert [m["id"] for m in w.out] == [1]
    writer.pause_writing()
    writer.resume_writing()
    assert rt.calls == ["pause", "resume"]
    assert not reader.eof_received()
    assert closed == ["eof"]
    writer.connection_lost(None)
    assert len(closed) == 2
