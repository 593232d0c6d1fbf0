"""InFlightTable contract: entries, states, counts, and one heap of deadlines."""

import asyncio
import time

import pytest

from _twins import load_core

from bemcp.errors import INVALID_REQUEST, RpcError


class FakeHandle:
    def __init__(self, loop, when, callback):
        self.loop = loop
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class FakeLoop:
    """Records call_later; a test fires the timers itself."""

    def __init__(self):
        self.handles = []

    def call_later(self, delay, callback, *args):
        handle = FakeHandle(self, delay, lambda: callback(*args))
        self.handles.append(handle)
        return handle

    @property
    def pending(self):
        return [h for h in self.handles if not h.cancelled]

    def fire(self):
        """Run the one live timer (the table keeps at most one)."""
        (handle,) = self.pending
        handle.cancelled = True
        handle.callback()


def make(core, loop=None):
    table = core.InFlightTable(loop if loop is not None else FakeLoop())
    expired = []
    table.on_expire = expired.append
    return table, expired


def test_open_and_close(core):
    table, _ = make(core)
    req = table.open(1, "tools/call", "echo", {"name": "echo"})
    assert (req.id, req.method, req.tool, req.params) == (1, "tools/call", "echo", {"name": "echo"})
    assert req.running and req.state == core.STATE_RUNNING and req.state_name == "running"
    assert req.start <= time.monotonic()
    assert len(table) == 1 and table.get(1) is req and table.requests == {1: req}
    assert table.close(req, core.STATE_OK) is True
    assert not req.running and req.state_name == "ok" and req.end >= req.start
    assert len(table) == 0 and table.get(1) is None
    assert table.counts[core.STATE_OK] == 1
    # A request leaves exactly once: a second close changes nothing.
    assert table.close(req, core.STATE_ERROR) is False
    assert req.state == core.STATE_OK and table.counts[core.STATE_OK] == 1
    assert table.counts[core.STATE_ERROR] == 0


def test_string_and_integer_ids_are_distinct(core):
    table, _ = make(core)
    a = table.open(1, "ping", None, None)
    b = table.open("1", "ping", None, None)
    assert table.get(1) is a and table.get("1") is b and len(table) == 2


def test_duplicate_id_in_flight_is_refused(core):
    table, _ = make(core)
    first = table.open("x", "ping", None, None)
    with pytest.raises(RpcError) as info:
        table.open("x", "ping", None, None)
    assert info.value.code == INVALID_REQUEST
    assert "'x'" in info.value.message
    assert table.get("x") is first
    # Once the first has left, the id is free again.
    table.close(first, core.STATE_OK)
    assert table.open("x", "ping", None, None) is not first


def test_counts_by_final_state(core):
    table, _ = make(core)
    states = [core.STATE_OK, core.STATE_OK, core.STATE_ERROR, core.STATE_TIMED_OUT,
              core.STATE_CANCELLED, core.STATE_KILLED, core.STATE_REJECTED, core.STATE_OK]
    for i, state in enumerate(states):
        table.close(table.open(i, "m", None, None), state)
    assert list(table.counts) == [0, 3, 1, 1, 1, 1, 1]
    assert list(core.STATE_NAMES) == ["running", "ok", "error", "timed_out", "cancelled", "killed", "rejected"]


def test_arm_without_timeout_sets_no_deadline(core):
    loop = FakeLoop()
    table, _ = make(core, loop)
    req = table.open(1, "m", None, None)
    table.arm(req, None)
    table.arm(req, 0)
    assert not req.armed and table.heap_size == 0 and loop.handles == []


def test_deadlines_expire_in_deadline_order(core):
    loop = FakeLoop()
    table, expired = make(core, loop)
    reqs = {}
    # Deadlines 30 ms apart: a busy machine may pause between two arm() calls, but not that long.
    for name, timeout in (("c", 0.09), ("a", 0.03), ("d", 0.12), ("b", 0.06)):
        reqs[name] = table.open(name, "m", None, None)
        table.arm(reqs[name], timeout)
    assert reqs["a"].deadline == pytest.approx(reqs["a"].start + 0.03)
    assert all(r.armed for r in reqs.values())
    time.sleep(0.15)
    loop.fire()
    assert [r.id for r in expired] == ["a", "b", "c", "d"]
    # The table hands them over; closing them is the caller's business.
    assert not any(r.armed for r in reqs.values())
    assert all(r.running for r in reqs.values())
    assert table.heap_size == 0 and loop.pending == []


def test_one_timer_follows_the_earliest_deadline(core):
    loop = FakeLoop()
    table, expired = make(core, loop)
    late = table.open("late", "m", None, None)
    table.arm(late, 1000.0)
    assert len(loop.pending) == 1 and loop.pending[0].when == pytest.approx(1000.0, abs=1.0)
    later = table.open("later", "m", None, None)
    table.arm(later, 2000.0)
    assert len(loop.pending) == 1  # a later deadline needs no new timer
    soon = table.open("soon", "m", None, None)
    table.arm(soon, 1e-6)
    (timer,) = loop.pending
    assert timer.when < 1.0  # rescheduled for the earlier deadline, old handle cancelled
    time.sleep(0.002)
    loop.fire()
    assert expired == [soon]
    # The timer moves on to the next deadline.
    (timer,) = loop.pending
    assert timer.when == pytest.approx(1000.0, abs=1.0)
    table.close_timer()
    assert loop.pending == []


def test_closed_requests_do_not_expire(core):
    loop = FakeLoop()
    table, expired = make(core, loop)
    done = table.open(1, "m", None, None)
    live = table.open(2, "m", None, None)
    table.arm(done, 1e-6)
    table.arm(live, 2e-6)
    table.close(done, core.STATE_OK)
    time.sleep(0.002)
    loop.fire()
    assert expired == [live]
    assert table.heap_size == 0


async def test_expiry_on_a_real_loop(core):
    table, expired = make(core, asyncio.get_running_loop())
    fired = asyncio.Event()

    def on_expire(req):
        expired.append(req.id)
        table.close(req, core.STATE_TIMED_OUT)
        if not table.requests:
            fired.set()
    table.on_expire = on_expire
    for rid, timeout in ((1, 0.03), (2, 0.01), (3, 0.02)):
        table.arm(table.open(rid, "m", None, None), timeout)
    await asyncio.wait_for(fired.wait(), 5)
    assert expired == [2, 3, 1]
    assert list(table.counts)[core.STATE_TIMED_OUT] == 3
    table.close_timer()


def test_heap_is_compacted_when_finished_requests_pile_up(core):
    loop = FakeLoop()
    table, expired = make(core, loop)
    reqs = [table.open(i, "m", None, None) for i in range(6000)]
    for req in reqs:
        table.arm(req, 1000.0)
    assert table.heap_size == 6000
    for req in reqs[:5000]:
        table.close(req, core.STATE_OK)
    # Finished entries do not stay in the heap without bound.
    assert table.heap_size < 6000
    assert table.heap_size >= len(table) == 1000
    # The live ones still expire, in order, after the compaction.
    short = reqs[5000:5003]
    for req in reversed(short):
        table.arm(req, 0.001 * (1 + req.id - 5000))  # an earlier second deadline
    time.sleep(0.01)
    loop.fire()
    assert [r.id for r in expired] == [5000, 5001, 5002]
    table.close_timer()


@pytest.mark.compiled
def test_twins_compact_alike():
    sizes = []
    for kind in ("c", "py"):
        c = load_core(kind)
        table = c.InFlightTable(FakeLoop())
        reqs = [table.open(i, "m", None, None) for i in range(3000)]
        for req in reqs:
            table.arm(req, 1000.0)
        row = []
        for n, req in enumerate(reqs):
            table.close(req, c.STATE_OK)
            if n % 250 == 0:
                row.append(table.heap_size)
        sizes.append(row)
    assert sizes[0] == sizes[1]


def test_snapshot(core):
    loop = FakeLoop()
    table, _ = make(core, loop)
    a = table.open("a", "tools/call", "echo", {})
    b = table.open("b", "ping", None, None)
    table.arm(a, 100.0)
    rows = table.snapshot()
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["method"] == "tools/call" and rows[0]["tool"] == "echo"
    assert 99.0 < rows[0]["deadline_in_s"] <= 100.0
    assert rows[1]["deadline_in_s"] is None and rows[1]["tool"] is None
    assert rows[0]["age_s"] >= 0 and rows[0]["async"] is False
    table.close(b, core.STATE_OK)
    assert [r["id"] for r in table.snapshot()] == ["a"]
    table.close_timer()
