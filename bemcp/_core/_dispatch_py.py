"""JSON-RPC 2.0 dispatch (pure-Python twin of _dispatch.pyx).

Method strings in, encoded responses out. The layer above registers method
handlers ``handler(params, request)`` and tool slots; a handler returns a result,
or an awaitable that becomes a task, so a slow request never holds up the next one.
Of MCP it knows one method: ``tool_method`` ("tools/call") is a fast path straight
to the named tool's slot, with its limits, queue and deadline. The rest of MCP
lives in the layer above.
"""

import asyncio
from collections import deque
from operator import index
from time import monotonic
from types import CoroutineType

from orjson import OPT_APPEND_NEWLINE, JSONDecodeError, dumps, loads

from ..errors import (INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST,
                      METHOD_NOT_FOUND, PARSE_ERROR, REQUEST_TIMEOUT,
                      SERVER_BUSY, RpcError)
from ._consts import (FINISHED_ROW, HEAD_SIZE, RECENT, STATE_CANCELLED, STATE_ERROR,
                      STATE_KILLED, STATE_OK, STATE_REJECTED, STATE_RUNNING,
                      STATE_TIMED_OUT)
from ._framing_py import Framer, Oversized
from ._ids import recover_id
from ._inflight_py import InFlightTable, Request

_CancelledError = asyncio.CancelledError


class ToolSlot:
    """A registered tool as the dispatcher sees it.

    ``call(arguments, request)`` returns the tool's value or an awaitable of it;
    ``finish(value, request)`` turns the value into the result sent;
    ``fail(exc, request)`` turns an exception from the tool into a result.
    ``eager``: the coroutine is stepped inline and only becomes a task if it suspends.
    ``route(id, params)``: if set, sees each call first and returns True when it
    answered the request itself (the MCP layer uses it to start tasks).
    """

    __slots__ = ("name", "call", "finish", "fail", "eager", "timeout", "limit", "active", "route")

    def __init__(self, name, call, finish, fail, eager=False, timeout=None, limit=0):
        self.name = name
        self.call = call
        self.finish = finish
        self.fail = fail
        self.eager = eager
        self.timeout = timeout
        self.limit = 0 if limit is None else index(limit)   # 0 or None: no limit
        self.active = 0
        self.route = None


class _Resume:
    """Hands a coroutine that was stepped inline, and suspended, to a task.

    The first step already ran and yielded ``pending`` (a future); the task
    re-yields it, then drives the coroutine on as ``await`` would.
    """

    __slots__ = ("coro", "pending")

    def __init__(self, coro, pending):
        self.coro = coro
        self.pending = pending

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return self.send(None)

    def send(self, value):
        if self.pending is not None:
            pending = self.pending
            self.pending = None
            return pending
        return self.coro.send(value)

    def throw(self, typ, val=None, tb=None):
        self.pending = None
        return self.coro.throw(val if val is not None else typ)

    def close(self):
        self.coro.close()


class Batch:
    """A JSON-RPC batch (protocol 2025-03-26): its answers go out together, as one array."""

    __slots__ = ("lines", "open", "sealed")

    def __init__(self):
        self.lines = []         # its answers, each a JSON line
        self.open = 0           # its requests not yet ended
        self.sealed = False     # all its messages have been dispatched


class _RecentMessages:
    """The last RECENT messages in, for crash reports: (time, method, id, size) each
    (the compiled twin keeps them in a ring of C arrays: no object per message)."""

    __slots__ = ("_ring", "_count")

    def __init__(self):
        self._ring = deque(maxlen=RECENT)
        self._count = 0

    def add(self, method, id, size):
        self._ring.append((monotonic(), method, id, size))
        self._count += 1

    @property
    def count(self):
        """Messages in since the start."""
        return self._count

    def snapshot(self):
        """(time, method, id, size) of the last messages in, oldest first."""
        return list(self._ring)


class _FinishedCalls:
    """Finished tool calls kept for tasks.log until the logs take them: a FINISHED_ROW
    record and a copy of the request line each (the compiled twin keeps both in C
    buffers reused from tick to tick: no object per call)."""

    __slots__ = ("rows", "text", "details")

    def __init__(self):
        self.rows = bytearray()     # FINISHED_ROW records
        self.text = bytearray()     # their request lines, comma-separated
        self.details = []           # (row, request.detail) where the tool reported one

    def add(self, req, sent):
        if req.tool is None:
            return
        if req.detail is not None:
            self.details.append((len(self.rows) // FINISHED_ROW.size, req.detail))
        self.rows += FINISHED_ROW.pack(req.start, req.end, req.state, req.size, sent)
        line = req.line
        if line is None:   # started from Python (an MCP task) or re-dispatched: the same shape
            line = dumps({"id": req.id, "params": req.params})
        if self.text:
            self.text += b","
        self.text += line

    def clear(self):
        self.rows = bytearray()
        self.text = bytearray()
        self.details = []

    def take(self):
        if not self.rows:
            return None
        taken = (len(self.rows) // FINISHED_ROW.size, bytes(self.rows), bytes(self.text), self.details)
        self.clear()
        return taken


class Dispatcher:
    """Routes each incoming message and writes the answers, coalesced.

    Hooks for the layer above, each None or a callable:

    - ``timeout_result(request)``: what the client gets when a request's deadline
      passes (a result, or raise RpcError); None: a REQUEST_TIMEOUT error.
    - ``on_cancelled(request)``: a stopped request's task was just cancelled.
    - ``on_exception(request or None, exc)``: a handler or tool raised (crash reports).
    - ``on_protocol_error(kind, size)``: input that is "malformed" or "oversized".
    - ``on_client_response(message)``: a response to no request of ours.
    - ``on_unknown_tool(id, params)``: a tools/call for no registered tool; True if
      the hook answers it itself (later, through ``hold()`` and ``call_tool()``).
    """

    def __init__(self, loop, write=None, max_message_size=64 * 1024 * 1024):
        self.loop = loop
        self.write = write                 # callable(bytes): the transport
        self.methods = {}                  # method -> handler(params, request)
        self.notifications = {}            # method -> handler(params)
        self.tools = {}                    # name -> ToolSlot
        self.tool_method = "tools/call"
        self.table = InFlightTable(loop)
        self.table.on_expire = self._on_expire
        self.framer = Framer(max_message_size)
        self.default_timeout = None        # seconds; None: no deadline
        self.max_active = 0                # concurrent tool calls; 0: unlimited
        self.max_queued = 0                # tool calls waiting for a slot
        self.refusing = None               # a reason to refuse new tool calls (memory pressure)
        self.active = 0
        self.queue = deque()
        self._recent = _RecentMessages()
        self.timeout_result = None         # the hooks: see the class docstring
        self.on_cancelled = None
        self.on_exception = None
        self.on_protocol_error = None
        self.on_client_response = None
        self.on_unknown_tool = None
        self._line = None                  # the line being handled
        self._reply = None                 # the reply target of the message being dispatched
        self.batches = False               # JSON-RPC batches accepted (the 2025-03-26 revision has them)
        self._batch = None                 # the Batch whose messages are being dispatched
        self._ready = []                   # batches whose every answer is in, to go out at the next flush
        self._keeping = False              # keep a row per finished tool call (for the logs)
        self._calls = _FinishedCalls()
        self._out = []
        self._reading = False
        self._flush_handle = None
        self._pending = {}                 # future -> its request
        self._tasks = set()                # notification handlers' tasks
        self._discard = self._tasks.discard
        self._done = self._on_done         # one bound method for every future
        self._idle = None
        self._asked = {}                   # id of a request we sent the peer -> its future
        self._next_ask = 0

    # -- input -------------------------------------------------------------

    def feed(self, data):
        """Bytes from the transport (any bytes-like object): frame, dispatch, then write once."""
        if type(data) is not bytes:
            data = bytes(data)
        self._reading = True
        try:
            for item in self.framer.feed(data):
                if type(item) is Oversized:
                    self._oversized(item)
                else:
                    self.handle_line(item)
        finally:
            self._reading = False
        self.flush()

    def dispatch(self, msg, line=None, reply=None):
        """One message a transport already parsed (``line``: its bytes, for the logs):
        dispatch it, then write what it produced at once, as feed() does.

        ``reply``: where the message's answer goes instead of the write stream, for a
        transport that serves many clients through one dispatcher. It has ``id``, the id
        the answer carries (the message may carry one the transport gave it, unique
        among all clients), and ``answered(data, code)``, called once with the answer
        encoded (one JSON message, no newline) and its JSON-RPC error code (None for a
        result). One message, not a batch.
        """
        if reply is not None and type(msg) is not dict:
            raise TypeError("dispatch: a reply target is for one message (a dict)")
        self._reading = True
        self._line = line
        self._reply = reply
        try:
            self.handle_message(msg)
        finally:
            self._line = None
            self._reply = None
            self._reading = False
        self.flush()

    def handle_line(self, line):
        try:
            msg = loads(line)
        except JSONDecodeError as exc:
            self._recent.add(None, None, len(line))
            if self.on_protocol_error is not None:
                self.on_protocol_error("malformed", len(line))
            # Valid JSON the parser refuses (a number beyond a double's range) is still
            # a request: answer under its id, recovered as for an oversized line.
            self._send_error(recover_id(line[:HEAD_SIZE]), PARSE_ERROR, f"Parse error: {exc}")
            return
        if type(msg) is dict:
            self._recent.add(msg.get("method"), msg.get("id"), len(line))
        self._line = line
        try:
            self.handle_message(msg)
        finally:
            self._line = None

    @property
    def received(self):
        """How many messages have come in."""
        return self._recent.count

    @property
    def recent(self):
        """(time, method, id, size) of the last messages in, oldest first."""
        return self._recent.snapshot()

    def handle_message(self, msg):
        if type(msg) is list and self.batches:
            self._batch_messages(msg)
        else:
            self._message(msg)

    def _batch_messages(self, msgs):
        if not msgs:
            self._send_error(None, INVALID_REQUEST, "Invalid request: an empty batch")
            return
        batch = Batch()
        line = self._line
        self._batch = batch
        try:
            for msg in msgs:
                # Each request's own bytes, for its bytes in and tasks.log.
                self._line = dumps(msg) if type(msg) is dict else None
                self._message(msg)
        finally:
            self._batch = None
            self._line = line
            batch.sealed = True
        if batch.open == 0:
            self._batch_ready(batch)

    def _message(self, msg):
        if type(msg) is not dict:
            if type(msg) is list:
                self._send_error(None, INVALID_REQUEST,
                                 "Invalid request: a batch inside a batch" if self._batch is not None else
                                 "Invalid request: JSON-RPC batches are not part of this protocol version; "
                                 "send one message per line")
            else:
                self._send_error(None, INVALID_REQUEST, "Invalid request: a message must be a JSON object")
            return
        method = msg.get("method")
        has_id = "id" in msg
        id = msg.get("id")
        # MCP's RequestId is a string or a number (JSON-RPC: numbers should, not must, be integers).
        if has_id and not (type(id) is str or type(id) is int or type(id) is float):
            self._send_error(None, INVALID_REQUEST, "Invalid request: id must be a string or a number")
            return
        if method is None:
            if has_id and ("result" in msg or "error" in msg):
                self._response(id, msg)
                return
            self._send_error(id, INVALID_REQUEST, "Invalid request: no method")
            return
        if msg.get("jsonrpc") != "2.0":
            self._send_error(id, INVALID_REQUEST, 'Invalid request: "jsonrpc" must be "2.0"')
            return
        if type(method) is not str:
            self._send_error(id, INVALID_REQUEST, "Invalid request: method must be a string")
            return
        params = msg.get("params")
        if params is not None and type(params) is not dict and type(params) is not list:
            self._send_error(id, INVALID_REQUEST, "Invalid request: params must be an object or an array")
            return
        if not has_id:
            self._notification(method, params)
        elif method == self.tool_method:
            self._call_tool(id, params)
        else:
            self._request(id, method, params)

    def _request(self, id, method, params):
        handler = self.methods.get(method)
        if handler is None:
            self._send_error(id, METHOD_NOT_FOUND, f"Method not found: {method}")
            return
        try:
            req = self.table.open(id, method, None, params)
        except RpcError as exc:
            self._send_error(id, exc.code, exc.message)
            return
        self._answer_where(req)
        try:
            result = handler(params, req)
        except RpcError as exc:
            self._answer_error(req, exc)
            return
        except Exception as exc:
            self._fail(req, exc)
            return
        self._settle(req, result, None, None)

    def _call_tool(self, id, params):
        if type(params) is not dict:
            self._send_error(id, INVALID_PARAMS, "Invalid params: tools/call needs {name, arguments}")
            return
        name = params.get("name")
        slot = self.tools.get(name) if type(name) is str else None
        if slot is None:
            if self.on_unknown_tool is None or not self.on_unknown_tool(id, params):
                self._send_error(id, INVALID_PARAMS, f"Unknown tool: {name!r}")
            return
        if slot.route is not None:
            try:
                if slot.route(id, params):
                    return
            except RpcError as exc:
                self._send_error(id, exc.code, exc.message, exc.data)
                return
            except Exception as exc:
                if self.on_exception is not None:
                    self.on_exception(None, exc)
                self._send_error(id, INTERNAL_ERROR, f"Internal error: {type(exc).__name__}: {exc}")
                return
        self._begin_tool(id, slot, params, None)

    def call_tool(self, id, params, held=None):
        """Dispatch a tools/call again (after ``on_unknown_tool`` deferred it).

        ``held``: what ``hold()`` returned when it was deferred.
        """
        if held is None:
            self._call_tool(id, params)
            return
        if type(held) is not Batch:
            self._reply = held
            try:
                self._call_tool(id, params)
            finally:
                self._reply = None
            return
        batch = held
        self._batch = batch
        try:
            self._call_tool(id, params)
        finally:
            self._batch = None
        batch.open -= 1
        if batch.open == 0:
            self._batch_ready(batch)

    def hold(self):
        """The message being dispatched will be answered later: where its answer goes,
        to pass back to ``call_tool`` (its batch, which waits for it, or its reply
        target; None if neither)."""
        if self._batch is not None:
            self._batch.open += 1
            return self._batch
        return self._reply

    @property
    def in_batch(self):
        """True while the messages of a batch are being dispatched."""
        return self._batch is not None

    def begin_tool(self, id, name, params, on_outcome=None):
        """Run tool ``name`` for ``params`` as request ``id``.

        With ``on_outcome``, the outcome goes to ``on_outcome(result, error)`` instead of the
        client (error an RpcError; both None if the call was cancelled).
        """
        slot = self.tools.get(name)
        if slot is None:
            self._reject(id, on_outcome, RpcError(INVALID_PARAMS, f"Unknown tool: {name!r}"))
            return
        self._begin_tool(id, slot, params, on_outcome)

    def _begin_tool(self, id, slot, params, on_outcome):
        args = params.get("arguments")
        if args is None:
            args = {}
        elif type(args) is not dict:
            self._reject(id, on_outcome, RpcError(INVALID_PARAMS, "Invalid params: arguments must be an object"))
            return
        try:
            req = self.table.open(id, self.tool_method, slot.name, params)
        except RpcError as exc:
            self._reject(id, on_outcome, exc)
            return
        req.on_outcome = on_outcome
        if on_outcome is None:
            self._answer_where(req)
        if self._line is not None:
            # Bytes on the wire, with the newline (which the framer may have left on the line).
            req.size = len(self._line) + (not self._line.endswith(b"\n"))
            if self._keeping:
                req.line = self._line
        timeout = slot.timeout if slot.timeout is not None else self.default_timeout
        if self.refusing is not None:
            self._close(req, STATE_REJECTED)
            sent = self._reject(id, on_outcome, RpcError(SERVER_BUSY, self.refusing, self._busy_data(slot)))
            if self._keeping:
                self._calls.add(req, sent)
            return
        if (self.max_active and self.active >= self.max_active) or (slot.limit and slot.active >= slot.limit):
            if len(self.queue) >= self.max_queued:
                self._close(req, STATE_REJECTED)
                sent = self._reject(id, on_outcome, RpcError(SERVER_BUSY, self._busy_message(slot), self._busy_data(slot)))
                if self._keeping:
                    self._calls.add(req, sent)
                return
            self.table.arm(req, timeout)
            self.queue.append((req, slot, args))
            return
        self._start_tool(req, slot, args, timeout)

    def _reject(self, id, on_outcome, exc):
        """Send ``exc`` to the on_outcome callback or the client; the bytes sent (-1: to the callback)."""
        if on_outcome is not None:
            on_outcome(None, exc)
            return -1
        return self._send_error(id, exc.code, exc.message, exc.data)

    def _start_tool(self, req, slot, args, timeout):
        req.slot = slot
        slot.active += 1
        self.active += 1
        try:
            result = slot.call(args, req)
        except Exception as exc:
            self._tool_raised(req, slot, exc)
            return
        self._settle(req, result, slot, timeout)

    def _settle(self, req, result, slot, timeout):
        """Answer now if ``result`` is ready; otherwise a task finishes it."""
        if type(result) is CoroutineType:
            if slot is not None and slot.eager:
                # Fast path: step the coroutine here; most finish without waiting.
                try:
                    pending = result.send(None)
                except StopIteration as stop:
                    self._tool_outcome(req, slot.finish, stop.value)
                    return
                except Exception as exc:
                    self._tool_raised(req, slot, exc)
                    return
                result = _Resume(result, pending)
        elif not hasattr(result, "__await__"):
            if slot is None:
                self._answer(req, result)
            else:
                self._tool_outcome(req, slot.finish, result)
            return
        if timeout is not None and not req.armed:
            self.table.arm(req, timeout)
        if type(result) is CoroutineType or type(result) is _Resume:
            future = self.loop.create_task(result)
        elif isinstance(result, asyncio.Future):
            future = result  # e.g. a sync tool's executor future: no task needed
        else:
            future = asyncio.ensure_future(result, loop=self.loop)
        req.task = future
        self._pending[future] = req
        future.add_done_callback(self._done)

    def _on_done(self, future):
        req = self._pending.pop(future)
        slot = req.slot  # None for method handlers
        if future.cancelled():
            if req.state == STATE_RUNNING:
                # Cancelled by neither the client nor a deadline: the server is stopping.
                self._answer_error(req, RpcError(INTERNAL_ERROR, "Request cancelled: the server is shutting down"))
            return
        exc = future.exception()  # retrieved in every case, so asyncio never warns about it
        if req.state != STATE_RUNNING:
            return  # already answered (timed out, cancelled, stopped): nothing is owed
        if exc is None:
            if slot is None:
                self._answer(req, future.result())
            else:
                self._tool_outcome(req, slot.finish, future.result())
        elif isinstance(exc, RpcError):
            self._answer_error(req, exc)
        elif isinstance(exc, Exception):
            if slot is None:
                self._fail(req, exc)
            else:
                self._tool_outcome(req, slot.fail, exc)
        else:
            # CancelledError raised inside the work (a stopped thread), SystemExit, ...
            self._fail(req, exc)

    def _tool_raised(self, req, slot, exc):
        """A tool raised ``exc``: an RpcError is its answer; anything else goes to its fail()."""
        if isinstance(exc, RpcError):
            self._answer_error(req, exc)
        else:
            self._tool_outcome(req, slot.fail, exc)

    def _tool_outcome(self, req, make, arg):
        """Answer with ``make(arg, req)``: a slot's finish(value) or fail(exc)."""
        try:
            result = make(arg, req)
        except Exception as exc:
            self._fail(req, exc)
            return
        self._answer(req, result)

    def _notification(self, method, params):
        handler = self.notifications.get(method)
        if handler is None:
            return  # JSON-RPC: unknown notifications are ignored, never answered.
        try:
            result = handler(params)
            if result is not None and hasattr(result, "__await__"):
                task = self.loop.create_task(result)
                self._tasks.add(task)
                task.add_done_callback(self._discard)
        except Exception as exc:
            if self.on_exception is not None:
                self.on_exception(None, exc)

    def _oversized(self, item):
        self._recent.add(None, None, item.size)
        if self.on_protocol_error is not None:
            self.on_protocol_error("oversized", item.size)
        self._send_error(recover_id(item.head), INVALID_REQUEST,
                         f"Message of {item.size} bytes exceeds the limit of {self.framer.max_size} bytes",
                         {"size": item.size, "limit": self.framer.max_size})

    # -- ending requests ------------------------------------------------------

    def _close(self, req, state):
        if not self.table.close(req, state):
            return False
        if req.slot is not None:
            self._release(req)
        batch = req.batch
        if batch is not None:
            # Its answer (if any) joins the batch right after this; the batch goes out at the next flush.
            batch.open -= 1
            if batch.open == 0 and batch.sealed:
                self._batch_ready(batch)
        if self._idle is not None and not self.table.requests:
            self._idle.set()
        return True

    def _release(self, req):
        req.slot.active -= 1
        req.slot = None
        self.active -= 1
        if self.queue:
            self._pump()

    def _pump(self):
        queue = self.queue
        for _ in range(len(queue)):
            if self.max_active and self.active >= self.max_active:
                return
            req, slot, args = queue.popleft()
            if req.state != STATE_RUNNING:
                continue
            if slot.limit and slot.active >= slot.limit:
                queue.append((req, slot, args))
                continue
            self._start_tool(req, slot, args, None)
        self.flush_soon()

    def _answer(self, req, result):
        state = STATE_OK
        if type(result) is dict and result.get("isError") is True:
            state = STATE_ERROR
            if type(req.detail) is dict:   # how the call ended, if the tool or the watchdog said
                if "limit_s" in req.detail:
                    state = STATE_TIMED_OUT   # at a time limit of its own (Context.timed_out)
                elif "killed_by" in req.detail:
                    state = STATE_KILLED      # interrupted by the watchdog
        if not self._close(req, state):
            return
        if req.on_outcome is not None:
            if self._keeping:
                self._calls.add(req, -1)
            req.on_outcome(result, None)
            return
        sent = self._result_to(req.batch, req.reply, req.id, result)
        if self._keeping:
            self._calls.add(req, sent)

    def _answer_error(self, req, exc):
        if self._close(req, STATE_ERROR):
            sent = -1
            if req.on_outcome is not None:
                req.on_outcome(None, exc)
            else:
                sent = self._error_to(req.batch, req.reply, req.id, exc.code, exc.message, exc.data)
            if self._keeping:
                self._calls.add(req, sent)

    def _fail(self, req, exc):
        if self.on_exception is not None:
            self.on_exception(req, exc)
        self._answer_error(req, RpcError(INTERNAL_ERROR, f"Internal error: {type(exc).__name__}: {exc}"))

    def _on_expire(self, req):
        limit = round(req.deadline - req.start, 3)
        if type(req.detail) is dict:   # tasks.log: the limit the call ran into
            req.detail["limit_s"] = limit
        else:
            req.detail = {"limit_s": limit}
        if self.timeout_result is not None:
            try:
                outcome = self.timeout_result(req)
            except RpcError as exc:
                outcome = exc
        else:
            outcome = RpcError(REQUEST_TIMEOUT, f"Request timed out after {req.deadline - req.start:g} s")
        self.stop(req, STATE_TIMED_OUT, outcome)

    def stop(self, req, state, outcome=None):
        """End ``req`` now as ``state`` (a STATE_*) and cancel its work.

        ``outcome`` is what the client gets: a result, an RpcError, or None for
        no response at all (a cancelled request). False if ``req`` had already ended.
        """
        if type(req) is not Request:
            raise TypeError(f"req must be a Request, not {type(req).__name__}")
        if type(state) is not int:
            raise TypeError(f"state must be an int (a STATE_*), not {type(state).__name__}")
        if not self._close(req, state):
            return False
        error = outcome if type(outcome) is RpcError else None
        sent = 0   # a cancelled request gets no answer
        if req.on_outcome is not None:
            sent = -1
            req.on_outcome(None if error is not None else outcome, error)
        elif error is not None:
            sent = self._error_to(req.batch, req.reply, req.id, error.code, error.message, error.data)
        elif outcome is not None:
            sent = self._result_to(req.batch, req.reply, req.id, outcome)
        if self._keeping:
            self._calls.add(req, sent)
        self._cancel_task(req)
        self.flush_soon()
        return True

    def cancel(self, id, state=STATE_CANCELLED):
        """Stop request ``id``: no response is sent for it. False if unknown."""
        req = self.table.get(id)
        return req is not None and self.stop(req, state, None)

    def _cancel_task(self, req):
        if req.task is not None:
            req.task.cancel()
        if self.on_cancelled is not None:
            self.on_cancelled(req)

    def _busy_message(self, slot):
        if slot.limit and slot.active >= slot.limit:
            what = f"tool {slot.name!r} is at its limit of {slot.limit} concurrent calls"
        else:
            what = f"the server is at its limit of {self.max_active} concurrent tool calls"
        return (f"Server busy: {what}, and the queue is full ({len(self.queue)} waiting, "
                f"limit {self.max_queued}); retry later")

    def _busy_data(self, slot):
        return {"active": self.active, "limit": self.max_active, "queued": len(self.queue),
                "queue_limit": self.max_queued, "tool": slot.name,
                "tool_active": slot.active, "tool_limit": slot.limit}

    # -- output ------------------------------------------------------------------

    def _send_error(self, id, code, message, data=None):
        """Answer the message being dispatched with an error."""
        return self._error_to(self._batch, self._reply, id, code, message, data)

    def _result_to(self, batch, reply, id, result):
        """Send ``result`` as the answer to request ``id`` (see _respond); the bytes sent."""
        if reply is not None:
            id = reply.id
        try:
            data = dumps({"jsonrpc": "2.0", "id": id, "result": result},
                         option=OPT_APPEND_NEWLINE if reply is None else 0)
        except TypeError as exc:
            return self._error_to(batch, reply, id, INTERNAL_ERROR,
                                  f"Internal error: result is not JSON-serializable: {exc}", None)
        self._respond(batch, reply, data, None)
        return len(data)

    def _error_to(self, batch, reply, id, code, message, data):
        """Send an error as the answer to request ``id`` (see _respond); the bytes sent."""
        if reply is not None:
            id = reply.id
        encoded = _error_bytes(id, code, message, data, reply is None)
        self._respond(batch, reply, encoded, code)
        return len(encoded)

    def _answer_where(self, req):
        # A request is answered where the message it came in is: its batch, its reply target.
        if self._batch is not None:
            req.batch = self._batch
            self._batch.open += 1
        req.reply = self._reply

    def _respond(self, batch, reply, data, code):
        """An answer: to its reply target, into the batch its request came in, or to the client."""
        if reply is not None:
            if self._out:
                self.flush()   # what was written before it (a request to the client) goes first
            reply.answered(data, code)
        elif batch is None:
            self._emit(data)
        else:
            batch.lines.append(data)

    def _batch_ready(self, batch):
        self._ready.append(batch)
        if not self._reading and self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    # -- finished tool calls, for the logs ---------------------------------------

    def keep_finished(self, on):
        """Start (or stop) keeping a row per finished tool call for ``take_finished``."""
        self._keeping = bool(on)
        if not on:
            self._calls.clear()

    def take_finished(self):
        """The rows kept since the last call, as ``(count, records, lines, details)``; None if none.

        ``records``: ``count`` FINISHED_ROW records (start, end, state, bytes in, bytes
        out; -1 bytes out: the outcome went to the on_outcome callback); ``lines``: each call's
        request line, comma-separated (the body of a JSON array); ``details``: ``(row,
        request.detail)`` for the rows whose tool reported one.
        """
        return self._calls.take()

    # -- requests to the peer ------------------------------------------------------

    def send_request(self, method, params):
        """Send the peer a request of our own: ``(id, future)``; the future gets the
        response's result, or an RpcError for its error. Cancelling the future forgets
        the request: a response that comes later is one to no request of ours."""
        self._next_ask += 1
        id = self._next_ask
        future = self.loop.create_future()
        self._asked[id] = future
        future.add_done_callback(lambda f: self._asked.pop(id, None))
        message = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            message["params"] = params
        self._emit(dumps(message, option=OPT_APPEND_NEWLINE))
        return id, future

    def _response(self, id, msg):
        future = self._asked.pop(id, None)
        if future is None:
            if self.on_client_response is not None:
                self.on_client_response(msg)
            return
        if future.done():
            return
        error = msg.get("error")
        if error is None:
            future.set_result(msg.get("result"))
        elif type(error) is dict:
            future.set_exception(RpcError(error.get("code", INTERNAL_ERROR), str(error.get("message", "")),
                                          error.get("data")))
        else:
            future.set_exception(RpcError(INTERNAL_ERROR, f"Malformed error response: {error!r}"))

    def notify(self, method, params):
        """Send a notification to the client."""
        self._emit(dumps({"jsonrpc": "2.0", "method": method, "params": params}, option=OPT_APPEND_NEWLINE))

    def send(self, message):
        """Send an already-built answer (a dict) to the client; one given while a batch is
        being dispatched goes into that batch, one given while a message with a reply
        target is, to that target (under the id it carries)."""
        reply = self._reply
        if reply is None:
            self._respond(self._batch, None, dumps(message, option=OPT_APPEND_NEWLINE), None)
            return
        error = message.get("error")
        self._respond(None, reply, dumps(dict(message, id=reply.id)),
                      error.get("code") if type(error) is dict else None)

    def _emit(self, data):
        self._out.append(data)
        if not self._reading and self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    def flush_soon(self):
        if self._out and not self._reading and self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    def flush(self):
        self._flush_handle = None
        out = self._out
        if self._ready:
            for batch in self._ready:
                if batch.lines:   # a batch of notifications gets no answer at all
                    out.append(_batch_bytes(batch.lines))
            self._ready.clear()
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.write is not None:
            self.write(data)

    # -- lifecycle ------------------------------------------------------------------

    async def drain(self, timeout):
        """Let in-flight requests finish for up to ``timeout`` s, then cancel the rest."""
        if self.table.requests:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        for req in list(self.table.requests.values()):
            self.stop(req, STATE_KILLED, RpcError(INTERNAL_ERROR, "Request cancelled: the server is shutting down"))
        self.flush()
        work = list(self._pending) + list(self._tasks)
        if work:
            await asyncio.wait(work, timeout=1.0)

    def close(self):
        self.table.close_timer()
        for future in list(self._pending) + list(self._tasks):
            future.cancel()
        for future in list(self._asked.values()):
            if not future.done():
                future.set_exception(RpcError(INTERNAL_ERROR, "Connection closed before the peer answered"))


def _batch_bytes(lines):
    # One JSON array of the answers (each encoded with its newline), on one line.
    return b"[" + b",".join([line[:-1] for line in lines]) + b"]\n"


def _error_bytes(id, code, message, data, line=True):
    # ``line``: with the newline that ends it on the write stream.
    error = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return dumps({"jsonrpc": "2.0", "id": id, "error": error}, option=OPT_APPEND_NEWLINE if line else 0)
