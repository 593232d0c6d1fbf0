# cython: language_level=3
"""JSON-RPC 2.0 dispatch (compiled; twin: _dispatch_py.py).

Method strings in, encoded responses out. The layer above registers method
handlers ``handler(params, request)`` and tool slots; a handler returns a result,
or an awaitable that becomes a task, so a slow request never holds up the next one.
Of MCP it knows one method: ``tool_method`` ("tools/call") is a fast path straight
to the named tool's slot, with its limits, queue and deadline. The rest of MCP
lives in the layer above.
"""

import asyncio
from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.ref cimport PyObject, Py_XDECREF
from libc.string cimport memcpy
from operator import index
import orjson
from orjson import OPT_APPEND_NEWLINE, JSONDecodeError

from ..errors import (INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST,
                      METHOD_NOT_FOUND, PARSE_ERROR, REQUEST_TIMEOUT,
                      SERVER_BUSY, RpcError)
from ._consts cimport (HEAD_SIZE, RECENT, STATE_CANCELLED, STATE_ERROR,
                       STATE_KILLED, STATE_OK, STATE_REJECTED, STATE_RUNNING,
                       STATE_TIMED_OUT, FinishedRow)
from ._framing cimport Framer, Oversized
from ._ids import recover_id
from ._inflight cimport InFlightTable, Request, now


cdef extern from "Python.h":
    bint PyCoro_CheckExact(object o)
    # Python >= 3.10: steps a coroutine without raising StopIteration on return.
    int PyIter_Send(object iter, object arg, PyObject** presult) except -1

cdef int PYGEN_RETURN = 0

# Python callables looked up once and kept in C slots.
cdef object loads = orjson.loads
cdef object dumps = orjson.dumps
cdef object _CancelledError = asyncio.CancelledError
cdef Py_ssize_t _KEEP_TEXT = 1 << 20   # the finished rows' line buffer kept between ticks

SOURCE_HASH = BEMCP_SOURCE_HASH   # the sources this module was built from (setup.py)


cdef class ToolSlot:
    """A registered tool as the dispatcher sees it.

    ``call(arguments, request)`` returns the tool's value or an awaitable of it;
    ``finish(value, request)`` turns the value into the result sent;
    ``fail(exc, request)`` turns an exception from the tool into a result.
    ``eager``: the coroutine is stepped inline and only becomes a task if it suspends.
    ``route(id, params)``: if set, sees each call first and returns True when it
    answered the request itself (the MCP layer uses it to start tasks).
    """

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


cdef class _Resume:
    """Hands a coroutine that was stepped inline, and suspended, to a task.

    The first step already ran and yielded ``pending`` (a future); the task
    re-yields it, then drives the coroutine on as ``await`` would.
    """

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


cdef class Batch:
    """A JSON-RPC batch (protocol 2025-03-26): its answers go out together, as one array."""

    def __init__(self):
        self.lines = []
        self.open = 0
        self.sealed = False


cdef class _RecentMessages:
    """The last RECENT messages in, for crash reports: (time, method, id, size) each,
    in a ring that allocates nothing per message."""

    def __init__(self):
        self.methods = [None] * RECENT
        self.ids = [None] * RECENT

    cpdef void add(self, object method, object id, Py_ssize_t size):
        cdef Py_ssize_t i = self.count % RECENT
        self.times[i] = now()
        self.sizes[i] = size
        self.methods[i] = method
        self.ids[i] = id
        self.count += 1

    cpdef list snapshot(self):
        """(time, method, id, size) of the last messages in, oldest first."""
        return [(self.times[j % RECENT], self.methods[j % RECENT], self.ids[j % RECENT], self.sizes[j % RECENT])
                for j in range(max(0, self.count - RECENT), self.count)]


cdef class _FinishedCalls:
    """Finished tool calls kept for tasks.log until the logs take them: a FinishedRow
    and a copy of the request line each, in C buffers reused from tick to tick, so
    keeping thousands of rows until the logs' next tick costs no allocation per call."""

    def __cinit__(self):
        self.details = []

    def __dealloc__(self):
        PyMem_Free(self.rows)
        PyMem_Free(self.text)

    cdef add(self, Request req, Py_ssize_t sent):
        cdef FinishedRow* row
        cdef Py_ssize_t cap, size
        cdef char* text
        if req.tool is None:
            return
        line = req.line
        if line is None:   # started from Python (an MCP task) or re-dispatched: the same shape
            line = dumps({"id": req.id, "params": req.params})
        size = len(<bytes>line) + 1   # with the comma before it
        if self.count == self.rows_cap:
            cap = max(1024, 2 * self.rows_cap)
            row = <FinishedRow*>PyMem_Realloc(self.rows, cap * sizeof(FinishedRow))
            if row == NULL:
                raise MemoryError()
            self.rows = row
            self.rows_cap = cap
        if self.text_len + size > self.text_cap:
            cap = max(65536, 2 * self.text_cap, self.text_len + size)
            text = <char*>PyMem_Realloc(self.text, cap)
            if text == NULL:
                raise MemoryError()
            self.text = text
            self.text_cap = cap
        if self.count:
            self.text[self.text_len] = c","
            self.text_len += 1
        memcpy(self.text + self.text_len, PyBytes_AS_STRING(line), size - 1)
        self.text_len += size - 1
        row = &self.rows[self.count]
        row.start = req.start
        row.end = req.end
        row.state = req.state
        row.size = req.size
        row.sent = sent
        if req.detail is not None:
            self.details.append((self.count, req.detail))
        self.count += 1

    cdef clear(self):
        self.count = 0
        self.text_len = 0
        self.details = []

    cdef take(self):
        if self.count == 0:
            return None
        taken = (self.count, PyBytes_FromStringAndSize(<char*>self.rows, self.count * sizeof(FinishedRow)),
                 PyBytes_FromStringAndSize(self.text, self.text_len), self.details)
        self.clear()
        if self.text_cap > _KEEP_TEXT:   # a huge request passed: do not hold its size
            PyMem_Free(self.text)
            self.text = NULL
            self.text_cap = 0
        return taken


cdef class Dispatcher:
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

    def __init__(self, loop, write=None, Py_ssize_t max_message_size=64 * 1024 * 1024):
        self.loop = loop
        self.write = write
        self.methods = {}
        self.notifications = {}
        self.tools = {}
        self.tool_method = "tools/call"
        self.table = InFlightTable(loop)
        self.table.on_expire = self._on_expire
        self.framer = Framer(max_message_size)
        self.default_timeout = None
        self.max_active = 0
        self.max_queued = 0
        self.refusing = None
        self.active = 0
        self.queue = deque()
        self._recent = _RecentMessages()
        self.timeout_result = None
        self.on_cancelled = None
        self.on_exception = None
        self.on_protocol_error = None
        self.on_client_response = None
        self.on_unknown_tool = None
        self._line = None
        self._reply = None
        self.batches = False
        self._batch = None
        self._ready = []
        self._keeping = False
        self._calls = _FinishedCalls()
        self._out = []
        self._reading = False
        self._flush_handle = None
        self._pending = {}
        self._tasks = set()
        self._discard = self._tasks.discard
        self._done = self._on_done
        self._idle = None
        self._asked = {}
        self._next_ask = 0

    # -- input -------------------------------------------------------------

    cpdef feed(self, object data):
        """Bytes from the transport (any bytes-like object): frame, dispatch, then write once."""
        if type(data) is not bytes:
            data = bytes(data)
        self._reading = True
        try:
            for item in self.framer.feed(data):
                if type(item) is Oversized:
                    self._oversized(<Oversized>item)
                else:
                    self.handle_line(item)
        finally:
            self._reading = False
        self.flush()

    cpdef dispatch(self, object msg, object line=None, object reply=None):
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

    cpdef handle_line(self, object line):
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
            self._recent.add((<dict>msg).get("method"), (<dict>msg).get("id"), len(line))
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

    cpdef handle_message(self, object msg):
        if type(msg) is list and self.batches:
            self._batch_messages(<list>msg)
        else:
            self._message(msg)

    cdef _batch_messages(self, list msgs):
        cdef Batch batch
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

    cdef _message(self, object msg):
        cdef dict m
        if type(msg) is not dict:
            if type(msg) is list:
                self._send_error(None, INVALID_REQUEST,
                                 "Invalid request: a batch inside a batch" if self._batch is not None else
                                 "Invalid request: JSON-RPC batches are not part of this protocol version; "
                                 "send one message per line")
            else:
                self._send_error(None, INVALID_REQUEST, "Invalid request: a message must be a JSON object")
            return
        m = <dict>msg
        method = m.get("method")
        cdef bint has_id = "id" in m
        id = m.get("id")
        # MCP's RequestId is a string or a number (JSON-RPC: numbers should, not must, be integers).
        if has_id and not (type(id) is str or type(id) is int or type(id) is float):
            self._send_error(None, INVALID_REQUEST, "Invalid request: id must be a string or a number")
            return
        if method is None:
            if has_id and ("result" in m or "error" in m):
                self._response(id, m)
                return
            self._send_error(id, INVALID_REQUEST, "Invalid request: no method")
            return
        if m.get("jsonrpc") != "2.0":
            self._send_error(id, INVALID_REQUEST, 'Invalid request: "jsonrpc" must be "2.0"')
            return
        if type(method) is not str:
            self._send_error(id, INVALID_REQUEST, "Invalid request: method must be a string")
            return
        params = m.get("params")
        if params is not None and type(params) is not dict and type(params) is not list:
            self._send_error(id, INVALID_REQUEST, "Invalid request: params must be an object or an array")
            return
        if not has_id:
            self._notification(<str>method, params)
        elif <str>method == self.tool_method:
            self._call_tool(id, params)
        else:
            self._request(id, <str>method, params)

    cdef _request(self, object id, str method, object params):
        cdef Request req
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

    cdef _call_tool(self, object id, object params):
        cdef ToolSlot slot
        if type(params) is not dict:
            self._send_error(id, INVALID_PARAMS, "Invalid params: tools/call needs {name, arguments}")
            return
        name = (<dict>params).get("name")
        found = self.tools.get(name) if type(name) is str else None
        if found is None:
            if self.on_unknown_tool is None or not self.on_unknown_tool(id, params):
                self._send_error(id, INVALID_PARAMS, f"Unknown tool: {name!r}")
            return
        slot = <ToolSlot>found
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
        self._begin_tool(id, slot, <dict>params, None)

    def call_tool(self, id, params, held=None):
        """Dispatch a tools/call again (after ``on_unknown_tool`` deferred it).

        ``held``: what ``hold()`` returned when it was deferred.
        """
        cdef Batch batch
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
        batch = <Batch>held
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

    def begin_tool(self, id, name, dict params, on_outcome=None):
        """Run tool ``name`` for ``params`` as request ``id``.

        With ``on_outcome``, the outcome goes to ``on_outcome(result, error)`` instead of the
        client (error an RpcError; both None if the call was cancelled).
        """
        found = self.tools.get(name)
        if found is None:
            self._reject(id, on_outcome, RpcError(INVALID_PARAMS, f"Unknown tool: {name!r}"))
            return
        self._begin_tool(id, <ToolSlot>found, params, on_outcome)

    cdef _begin_tool(self, object id, ToolSlot slot, dict params, object on_outcome):
        cdef Request req
        cdef Py_ssize_t sent
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
            req.size = len(self._line)
            if req.size == 0 or (<bytes>self._line)[req.size - 1] != c'\n':
                req.size += 1
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
        self._start_tool(req, slot, <dict>args, timeout)

    cdef Py_ssize_t _reject(self, object id, object on_outcome, object exc) except -2:
        if on_outcome is not None:
            on_outcome(None, exc)
            return -1
        return self._send_error(id, exc.code, exc.message, exc.data)

    cdef _start_tool(self, Request req, ToolSlot slot, dict args, object timeout):
        req.slot = slot
        slot.active += 1
        self.active += 1
        try:
            result = slot.call(args, req)
        except Exception as exc:
            self._tool_raised(req, slot, exc)
            return
        self._settle(req, result, slot, timeout)

    cdef _settle(self, Request req, object result, ToolSlot slot, object timeout):
        """Answer now if ``result`` is ready; otherwise a task finishes it."""
        cdef PyObject* sent = NULL
        cdef int status
        if PyCoro_CheckExact(result):
            if slot is not None and slot.eager:
                # Fast path: step the coroutine here; most finish without waiting.
                try:
                    status = PyIter_Send(result, None, &sent)
                except Exception as exc:
                    self._tool_raised(req, slot, exc)
                    return
                value = <object>sent
                Py_XDECREF(sent)
                if status == PYGEN_RETURN:
                    self._tool_outcome(req, slot.finish, value)
                    return
                result = _Resume(result, value)
        elif not hasattr(result, "__await__"):
            if slot is None:
                self._answer(req, result)
            else:
                self._tool_outcome(req, slot.finish, result)
            return
        if timeout is not None and not req.armed:
            self.table.arm(req, timeout)
        if PyCoro_CheckExact(result) or type(result) is _Resume:
            future = self.loop.create_task(result)
        elif isinstance(result, asyncio.Future):
            future = result  # e.g. a sync tool's executor future: no task needed
        else:
            future = asyncio.ensure_future(result, loop=self.loop)
        req.task = future
        self._pending[future] = req
        future.add_done_callback(self._done)

    def _on_done(self, future):
        cdef Request req = <Request>self._pending.pop(future)
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
                self._tool_outcome(req, (<ToolSlot>slot).finish, future.result())
        elif isinstance(exc, RpcError):
            self._answer_error(req, exc)
        elif isinstance(exc, Exception):
            if slot is None:
                self._fail(req, exc)
            else:
                self._tool_outcome(req, (<ToolSlot>slot).fail, exc)
        else:
            # CancelledError raised inside the work (a stopped thread), SystemExit, ...
            self._fail(req, exc)

    cdef _tool_raised(self, Request req, ToolSlot slot, object exc):
        """A tool raised ``exc``: an RpcError is its answer; anything else goes to its fail()."""
        if isinstance(exc, RpcError):
            self._answer_error(req, exc)
        else:
            self._tool_outcome(req, slot.fail, exc)

    cdef _tool_outcome(self, Request req, object make, object arg):
        """Answer with ``make(arg, req)``: a slot's finish(value) or fail(exc)."""
        try:
            result = make(arg, req)
        except Exception as exc:
            self._fail(req, exc)
            return
        self._answer(req, result)

    cdef _notification(self, str method, object params):
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

    cdef _oversized(self, Oversized item):
        self._recent.add(None, None, item.size)
        if self.on_protocol_error is not None:
            self.on_protocol_error("oversized", item.size)
        self._send_error(recover_id(item.head), INVALID_REQUEST,
                         f"Message of {item.size} bytes exceeds the limit of {self.framer.max_size} bytes",
                         {"size": item.size, "limit": self.framer.max_size})

    # -- ending requests ------------------------------------------------------

    cdef bint _close(self, Request req, int state) except -1:
        cdef Batch batch
        if not self.table.close(req, state):
            return False
        if req.slot is not None:
            self._release(req)
        if req.batch is not None:
            # Its answer (if any) joins the batch right after this; the batch goes out at the next flush.
            batch = <Batch>req.batch
            batch.open -= 1
            if batch.open == 0 and batch.sealed:
                self._batch_ready(batch)
        if self._idle is not None and not self.table.requests:
            self._idle.set()
        return True

    cdef _release(self, Request req):
        cdef ToolSlot slot = <ToolSlot>req.slot
        slot.active -= 1
        req.slot = None
        self.active -= 1
        if self.queue:
            self._pump()

    cdef _pump(self):
        cdef Request req
        cdef ToolSlot slot
        queue = self.queue
        for _ in range(len(queue)):
            if self.max_active and self.active >= self.max_active:
                return
            entry = queue.popleft()
            req = <Request>entry[0]
            slot = <ToolSlot>entry[1]
            if req.state != STATE_RUNNING:
                continue
            if slot.limit and slot.active >= slot.limit:
                queue.append(entry)
                continue
            self._start_tool(req, slot, <dict>entry[2], None)
        self.flush_soon()

    cdef _answer(self, Request req, object result):
        cdef int state = STATE_OK
        if type(result) is dict and (<dict>result).get("isError") is True:
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
        cdef Py_ssize_t sent = self._result_to(req.batch, req.reply, req.id, result)
        if self._keeping:
            self._calls.add(req, sent)

    cdef _answer_error(self, Request req, object exc):
        cdef Py_ssize_t sent = -1
        if self._close(req, STATE_ERROR):
            if req.on_outcome is not None:
                req.on_outcome(None, exc)
            else:
                sent = self._error_to(req.batch, req.reply, req.id, exc.code, exc.message, exc.data)
            if self._keeping:
                self._calls.add(req, sent)

    cdef _fail(self, Request req, object exc):
        if self.on_exception is not None:
            self.on_exception(req, exc)
        self._answer_error(req, RpcError(INTERNAL_ERROR, f"Internal error: {type(exc).__name__}: {exc}"))

    def _on_expire(self, Request req):
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

    cpdef bint stop(self, Request req, object state, object outcome=None) except -1:
        """End ``req`` now as ``state`` (a STATE_*) and cancel its work.

        ``outcome`` is what the client gets: a result, an RpcError, or None for
        no response at all (a cancelled request). False if ``req`` had already ended.
        """
        cdef Py_ssize_t sent = 0   # a cancelled request gets no answer
        if req is None:
            raise TypeError("req must be a Request, not NoneType")
        if type(state) is not int:
            raise TypeError(f"state must be an int (a STATE_*), not {type(state).__name__}")
        if not self._close(req, state):
            return False
        error = outcome if type(outcome) is RpcError else None
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
        found = self.table.get(id)
        return found is not None and self.stop(<Request>found, state, None)

    cdef _cancel_task(self, Request req):
        if req.task is not None:
            req.task.cancel()
        if self.on_cancelled is not None:
            self.on_cancelled(req)

    cdef str _busy_message(self, ToolSlot slot):
        if slot.limit and slot.active >= slot.limit:
            what = f"tool {slot.name!r} is at its limit of {slot.limit} concurrent calls"
        else:
            what = f"the server is at its limit of {self.max_active} concurrent tool calls"
        return (f"Server busy: {what}, and the queue is full ({len(self.queue)} waiting, "
                f"limit {self.max_queued}); retry later")

    cdef dict _busy_data(self, ToolSlot slot):
        return {"active": self.active, "limit": self.max_active, "queued": len(self.queue),
                "queue_limit": self.max_queued, "tool": slot.name,
                "tool_active": slot.active, "tool_limit": slot.limit}

    # -- output ------------------------------------------------------------------

    cdef Py_ssize_t _send_error(self, object id, int code, str message, object data=None) except -2:
        """Answer the message being dispatched with an error."""
        return self._error_to(self._batch, self._reply, id, code, message, data)

    cdef Py_ssize_t _result_to(self, Batch batch, object reply, object id, object result) except -2:
        """Send ``result`` as the answer to request ``id`` (see _respond); the bytes sent."""
        cdef bytes data
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

    cdef Py_ssize_t _error_to(self, Batch batch, object reply, object id, int code, str message,
                              object data) except -2:
        """Send an error as the answer to request ``id`` (see _respond); the bytes sent."""
        if reply is not None:
            id = reply.id
        cdef bytes encoded = _error_bytes(id, code, message, data, reply is None)
        self._respond(batch, reply, encoded, code)
        return len(encoded)

    cdef inline _answer_where(self, Request req):
        # A request is answered where the message it came in is: its batch, its reply target.
        if self._batch is not None:
            req.batch = self._batch
            self._batch.open += 1
        req.reply = self._reply

    cdef _respond(self, Batch batch, object reply, bytes data, object code):
        """An answer: to its reply target, into the batch its request came in, or to the client."""
        if reply is not None:
            if self._out:
                self.flush()   # what was written before it (a request to the client) goes first
            reply.answered(data, code)
        elif batch is None:
            self._emit(data)
        else:
            batch.lines.append(data)

    cdef _batch_ready(self, Batch batch):
        self._ready.append(batch)
        if not self._reading and self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    # -- finished tool calls, for the logs ---------------------------------------

    def keep_finished(self, bint on):
        """Start (or stop) keeping a row per finished tool call for ``take_finished``."""
        self._keeping = on
        if not on:
            self._calls.clear()

    def take_finished(self):
        """The rows kept since the last call, as ``(count, records, lines, details)``; None if none.

        ``records``: ``count`` FinishedRow structs (start, end, state, bytes in, bytes
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
        asked = self._asked
        future.add_done_callback(lambda f: asked.pop(id, None))
        message = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            message["params"] = params
        self._emit(dumps(message, option=OPT_APPEND_NEWLINE))
        return id, future

    cdef _response(self, object id, dict msg):
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
            future.set_exception(RpcError((<dict>error).get("code", INTERNAL_ERROR),
                                           str((<dict>error).get("message", "")), (<dict>error).get("data")))
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
                      (<dict>error).get("code") if type(error) is dict else None)

    cdef _emit(self, bytes data):
        self._out.append(data)
        if not self._reading and self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    cpdef flush_soon(self):
        if self._out and not self._reading and self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    cpdef flush(self):
        self._flush_handle = None
        cdef list out = self._out
        if self._ready:
            for ready in self._ready:
                if (<Batch>ready).lines:   # a batch of notifications gets no answer at all
                    out.append(_batch_bytes((<Batch>ready).lines))
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


cdef bytes _batch_bytes(list lines):
    # One JSON array of the answers (each encoded with its newline), on one line.
    return b"[" + b",".join([line[:len(line) - 1] for line in lines]) + b"]\n"


cdef bytes _error_bytes(object id, int code, str message, object data, bint line=True):
    # ``line``: with the newline that ends it on the write stream.
    error = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return dumps({"jsonrpc": "2.0", "id": id, "error": error}, option=OPT_APPEND_NEWLINE if line else 0)
