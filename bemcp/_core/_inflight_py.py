"""The in-flight table (pure-Python twin of _inflight.pyx).

Every request the server is working on has one entry: id, method, tool, start,
deadline, state and the task doing the work. Deadlines sit in one heap served by
one timer handle, so a request costs a heap push, never a timer of its own.
"""

import heapq
from time import monotonic as now   # the clock the compiled twin reads in C

from ..errors import INVALID_REQUEST, RpcError
from ._consts import STATE_NAMES, STATE_RUNNING

N_STATES = len(STATE_NAMES)

# Rebuild the heap once this many finished requests still sit in it.
_COMPACT_MIN = 1024


class Request:
    """One in-flight request. ``state`` leaves RUNNING exactly once."""

    __slots__ = ("id", "method", "tool", "params", "start", "end", "deadline",
                 "state", "task", "thread", "armed", "slot", "on_outcome", "detail", "size", "line",
                 "batch", "reply", "_entry")

    def __init__(self, id, method, tool, params, start):
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
        self.detail = None      # what the tool reports for tasks.log, e.g. {"exit_code": 0}
        self.size = 0           # bytes in: the request's line, with its newline
        self.line = None        # that line, kept for tasks.log while the dispatcher keeps rows
        self.batch = None       # the JSON-RPC batch its answer belongs in (2025-03-26 only)
        self.reply = None       # the transport's target for its answer (Dispatcher.dispatch)
        self._entry = None      # its place in the deadline heap while armed

    @property
    def running(self):
        return self.state == STATE_RUNNING

    @property
    def state_name(self):
        return STATE_NAMES[self.state]

    def __repr__(self):
        return f"<Request id={self.id!r} method={self.method} tool={self.tool} {STATE_NAMES[self.state]}>"


class _Deadline:
    """An entry of the deadline heap. When its request ends, the entry stays until popped or
    compacted, but lets go of the request: a finished call's task, params and result are
    never kept alive by a deadline still far ahead."""

    __slots__ = ("at", "req")

    def __init__(self, at, req):
        self.at = at
        self.req = req          # None once the request has ended: a tombstone pins nothing

    def __lt__(self, other):
        return self.at < other.at


class InFlightTable:
    """Requests by id, their deadlines, and counts of how they ended."""

    def __init__(self, loop):
        self.loop = loop
        self.requests = {}
        self.on_expire = None   # called with a Request whose deadline passed
        self._counts = [0] * N_STATES
        self._heap = []
        self._stale = 0
        self._timer = None
        self._timer_at = 0.0

    def __len__(self):
        return len(self.requests)

    @property
    def counts(self):
        """How many requests ended in each state, by state."""
        return list(self._counts)

    def get(self, id):
        return self.requests.get(id)

    def open(self, id, method, tool, params):
        if id in self.requests:
            raise RpcError(INVALID_REQUEST, f"request id {id!r} is already in flight")
        req = Request(id, method, tool, params, now())
        self.requests[id] = req
        return req

    def close(self, req, state):
        """Take ``req`` out with its final state; False if it had already left."""
        if type(req) is not Request:
            raise TypeError(f"req must be a Request, not {type(req).__name__}")
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

    def _bury(self, req):
        req._entry.req = None
        req._entry = None
        self._stale += 1
        if self._stale > _COMPACT_MIN and self._stale * 2 > len(self._heap):
            self._compact()

    def arm(self, req, timeout):
        """Give ``req`` a deadline ``timeout`` seconds from its start."""
        if type(req) is not Request:
            raise TypeError(f"req must be a Request, not {type(req).__name__}")
        if timeout is None or timeout <= 0:
            return
        deadline = req.start + timeout
        if req._entry is not None:   # armed again: the new deadline replaces the old one
            self._bury(req)
        req.deadline = deadline
        req.armed = True
        req._entry = _Deadline(deadline, req)
        heapq.heappush(self._heap, req._entry)
        if self._timer is None or deadline < self._timer_at:
            self._schedule(deadline)

    def _schedule(self, when):
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_later(max(0.0, when - now()), self._on_timer)

    def _on_timer(self):
        self._timer = None
        t = now()
        heap = self._heap
        while heap and heap[0].at <= t:
            req = heapq.heappop(heap).req
            if req is None:
                self._stale -= 1
            else:
                req.armed = False
                req._entry = None
                self.on_expire(req)
        if heap:
            self._schedule(heap[0].at)

    def _compact(self):
        self._heap = [e for e in self._heap if e.req is not None]
        heapq.heapify(self._heap)
        self._stale = 0

    @property
    def heap_size(self):
        return len(self._heap)

    def snapshot(self):
        """The in-flight requests as plain dicts, oldest first."""
        t = now()
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

