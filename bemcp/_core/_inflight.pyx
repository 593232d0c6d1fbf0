# cython: language_level=3
"""The in-flight table (compiled; twin: _inflight_py.py).

Every request the server is working on has one entry: id, method, tool, start,
deadline, state and the task doing the work. Deadlines sit in one heap served by
one timer handle, so a request costs a heap push, never a timer of its own.
"""

from heapq import heapify, heappop, heappush

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from ..errors import INVALID_REQUEST, RpcError
from ._consts cimport N_STATES, STATE_RUNNING
from ._consts import STATE_NAMES

SOURCE_HASH = BEMCP_SOURCE_HASH   # the sources this module was built from (setup.py)

# Rebuild the heap once this many finished requests still sit in it.
cdef Py_ssize_t _COMPACT_MIN = 1024


cdef double now() noexcept nogil:
    # The clock time.monotonic() reads, without a Python call.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class Request:
    """One in-flight request. ``state`` leaves RUNNING exactly once."""

    def __init__(self, id, method, tool, params, double start):
        self.id = id
        self.method = method
        self.tool = tool
        self.params = params
        self.start = start
        self.end = 0.0
        self.deadline = 0.0
        self.state = STATE_RUNNING
        self.task = None
        self.thread = None
        self.armed = False
        self.slot = None
        self.on_outcome = None
        self.detail = None
        self.size = 0
        self.line = None
        self.batch = None
        self.reply = None

    @property
    def running(self):
        return self.state == STATE_RUNNING

    @property
    def state_name(self):
        return STATE_NAMES[self.state]

    def __repr__(self):
        return f"<Request id={self.id!r} method={self.method} tool={self.tool} {STATE_NAMES[self.state]}>"


cdef class _Deadline:
    """An entry of the deadline heap. When its request ends, the entry stays until popped or
    compacted, but lets go of the request: a finished call's task, params and result are
    never kept alive by a deadline still far ahead."""

    def __lt__(self, _Deadline other):
        return self.at < other.at


cdef class InFlightTable:
    """Requests by id, their deadlines, and counts of how they ended."""

    def __init__(self, loop):
        self.loop = loop
        self.requests = {}
        self.on_expire = None
        for i in range(N_STATES):
            self._counts[i] = 0
        self._heap = []
        self._stale = 0
        self._timer = None
        self._timer_at = 0.0

    def __len__(self):
        return len(self.requests)

    @property
    def counts(self):
        """How many requests ended in each state, by state."""
        return [self._counts[i] for i in range(N_STATES)]

    def get(self, id):
        return self.requests.get(id)

    cpdef Request open(self, object id, object method, object tool, object params):
        if id in self.requests:
            raise RpcError(INVALID_REQUEST, f"request id {id!r} is already in flight")
        cdef Request req = Request.__new__(Request)
        req.id = id
        req.method = method
        req.tool = tool
        req.params = params
        req.start = now()
        req.state = STATE_RUNNING
        self.requests[id] = req
        return req

    cpdef bint close(self, Request req, int state) except -1:
        """Take ``req`` out with its final state; False if it had already left."""
        if req is None:
            raise TypeError("req must be a Request, not NoneType")
        if not STATE_RUNNING < state < N_STATES:
            raise ValueError(f"not an end state: {state!r}")
        if req.state != STATE_RUNNING:
            return False
        req.state = state
        req.end = now()
        del self.requests[req.id]
        self._counts[state] += 1
        if req._entry is not None:
            self._bury(req)
        return True

    cdef _bury(self, Request req):
        req._entry.req = None
        req._entry = None
        self._stale += 1
        if self._stale > _COMPACT_MIN and self._stale * 2 > len(self._heap):
            self._compact()

    cpdef arm(self, Request req, object timeout):
        """Give ``req`` a deadline ``timeout`` seconds from its start."""
        if req is None:
            raise TypeError("req must be a Request, not NoneType")
        if timeout is None or timeout <= 0:
            return
        cdef double deadline = req.start + <double>timeout
        cdef _Deadline entry = _Deadline.__new__(_Deadline)
        if req._entry is not None:   # armed again: the new deadline replaces the old one
            self._bury(req)
        req.deadline = deadline
        req.armed = True
        entry.at = deadline
        entry.req = req
        req._entry = entry
        heappush(self._heap, entry)
        if self._timer is None or deadline < self._timer_at:
            self._schedule(deadline)

    cdef _schedule(self, double when):
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_later(max(0.0, when - now()), self._on_timer)

    def _on_timer(self):
        self._timer = None
        cdef double t = now()
        cdef list heap = self._heap
        cdef Request req
        while heap and (<_Deadline>heap[0]).at <= t:
            req = (<_Deadline>heappop(heap)).req
            if req is None:
                self._stale -= 1
            else:
                req.armed = False
                req._entry = None
                self.on_expire(req)
        if heap:
            self._schedule((<_Deadline>heap[0]).at)

    cdef _compact(self):
        self._heap = [e for e in self._heap if (<_Deadline>e).req is not None]
        heapify(self._heap)
        self._stale = 0

    @property
    def heap_size(self):
        return len(self._heap)

    def snapshot(self):
        """The in-flight requests as plain dicts, oldest first."""
        cdef double t = now()
        rows = []
        for req in sorted(self.requests.values(), key=lambda r: r.start):
            rows.append({
                "id": req.id,
                "method": req.method,
                "tool": req.tool,
                "age_s": round(t - req.start, 3),
                "deadline_in_s": round(req.deadline - t, 3) if req.armed else None,
                "async": req.task is not None,
            })
        return rows

    def close_timer(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

