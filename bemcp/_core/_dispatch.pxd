cimport cython

from ._consts cimport RECENT, FinishedRow
from ._framing cimport Framer, Oversized
from ._inflight cimport InFlightTable, Request


cdef class ToolSlot:
    cdef public object name
    cdef public object call
    cdef public object finish
    cdef public object fail
    cdef public bint eager
    cdef public object timeout
    cdef public Py_ssize_t limit
    cdef public Py_ssize_t active
    cdef public object route


cdef class _Resume:
    cdef readonly object coro
    cdef object pending


cdef class Batch:
    cdef list lines          # its answers, each a JSON line
    cdef Py_ssize_t open     # its requests not yet ended
    cdef bint sealed         # all its messages have been dispatched


# Final: the Dispatcher's add() calls are plain C calls (no look-up for a Python override).
@cython.final
cdef class _RecentMessages:
    cdef double times[RECENT]
    cdef Py_ssize_t sizes[RECENT]
    cdef list methods
    cdef list ids
    cdef readonly Py_ssize_t count   # messages in since the start

    cpdef void add(self, object method, object id, Py_ssize_t size)
    cpdef list snapshot(self)


cdef class _FinishedCalls:
    cdef FinishedRow* rows
    cdef Py_ssize_t count
    cdef Py_ssize_t rows_cap
    cdef char* text              # their request lines, comma-separated
    cdef Py_ssize_t text_len
    cdef Py_ssize_t text_cap
    cdef list details            # (row, request.detail) where the tool reported one

    cdef add(self, Request req, Py_ssize_t sent)
    cdef clear(self)
    cdef take(self)


cdef class Dispatcher:
    cdef public object loop
    cdef public object write
    cdef public dict methods
    cdef public dict notifications
    cdef public dict tools
    cdef public str tool_method
    cdef public InFlightTable table
    cdef public Framer framer
    cdef public object default_timeout
    cdef public Py_ssize_t max_active
    cdef public Py_ssize_t max_queued
    cdef public object refusing
    cdef public Py_ssize_t active
    cdef public object queue
    cdef _RecentMessages _recent
    # Hooks (None or a callable; the class docstring says when each is called).
    cdef public object timeout_result      # (request) -> the outcome sent at its deadline
    cdef public object on_cancelled        # (request) after its task was cancelled
    cdef public object on_exception        # (request or None, exc) for crash reports
    cdef public object on_protocol_error   # (kind, size) for malformed or oversized input
    cdef public object on_client_response  # (message) for a response to no request of ours
    cdef public object on_unknown_tool     # (id, params) -> True if it answers the call itself
    cdef object _line
    cdef object _reply           # the reply target of the message being dispatched
    cdef public bint batches     # JSON-RPC batches accepted (the 2025-03-26 revision has them)
    cdef Batch _batch            # the Batch whose messages are being dispatched
    cdef list _ready             # batches whose every answer is in, to go out at the next flush
    cdef bint _keeping           # keep a row per finished tool call (for the logs)
    cdef _FinishedCalls _calls
    cdef list _out
    cdef bint _reading
    cdef object _flush_handle
    cdef dict _pending
    cdef set _tasks
    cdef object _idle
    cdef dict _asked             # id of a request we sent the peer -> its future
    cdef Py_ssize_t _next_ask
    cdef object _discard
    cdef object _done

    cpdef feed(self, object data)
    cpdef dispatch(self, object msg, object line=*, object reply=*)
    cpdef handle_line(self, object line)
    cpdef handle_message(self, object msg)
    cdef _batch_messages(self, list msgs)
    cdef _message(self, object msg)
    cdef _request(self, object id, str method, object params)
    cdef _call_tool(self, object id, object params)
    cdef _begin_tool(self, object id, ToolSlot slot, dict params, object on_outcome)
    cdef Py_ssize_t _reject(self, object id, object on_outcome, object exc) except -2
    cdef _start_tool(self, Request req, ToolSlot slot, dict args, object timeout)
    cdef _settle(self, Request req, object result, ToolSlot slot, object timeout)
    cdef _tool_raised(self, Request req, ToolSlot slot, object exc)
    cdef _tool_outcome(self, Request req, object make, object arg)
    cdef _notification(self, str method, object params)
    cdef _response(self, object id, dict msg)
    cdef _oversized(self, Oversized item)
    cdef bint _close(self, Request req, int state) except -1
    cdef _release(self, Request req)
    cdef _pump(self)
    cdef _answer(self, Request req, object result)
    cdef _answer_error(self, Request req, object exc)
    cdef _fail(self, Request req, object exc)
    cdef _cancel_task(self, Request req)
    cdef str _busy_message(self, ToolSlot slot)
    cdef dict _busy_data(self, ToolSlot slot)
    cpdef bint stop(self, Request req, object state, object outcome=*) except -1
    cdef Py_ssize_t _send_error(self, object id, int code, str message, object data=*) except -2
    cdef Py_ssize_t _result_to(self, Batch batch, object reply, object id, object result) except -2
    cdef Py_ssize_t _error_to(self, Batch batch, object reply, object id, int code, str message,
                              object data) except -2
    cdef inline _answer_where(self, Request req)
    cdef _respond(self, Batch batch, object reply, bytes data, object code)
    cdef _batch_ready(self, Batch batch)
    cdef _emit(self, bytes data)
    cpdef flush_soon(self)
    cpdef flush(self)
