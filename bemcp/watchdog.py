"""The watchdog: what happens to work that overruns, blocks the loop, or eats memory.

The bookkeeping (in-flight table, deadline heap, slot limits) is in the compiled
core; this module decides what happens on top of it:

- escalation: a request stopped by its deadline or the client gets ``escalate_after``
  seconds to end; an async task still running is recorded with its stack and
  cancelled again, a sync tool still running in a worker thread gets ToolInterrupted
  raised inside it (PyThreadState_SetAsyncExc, from the compiled core);
- lock-ups: a thread watches the event loop's heartbeat; a loop blocked past
  ``lag_threshold`` is recorded with the loop thread's stack, and past
  ``lag_interrupt`` the blocking Python code is interrupted with LoopBlocked;
- memory: RSS of the server and its children is sampled off the loop; above the
  soft limit new tool calls are refused, above the hard limit the largest child
  process tree is killed, then the newest tool calls are stopped, until usage is
  back under the soft limit. Every action is recorded with the figures behind it.
"""

import asyncio
import logging
import os
import signal
import sys
import threading
import traceback
from time import monotonic

from . import procfs
from ._core import STATE_KILLED, STATE_NAMES, RpcError
from ._os import interrupt_thread, trim_allocator
from .errors import SERVER_BUSY
from .tools import ToolError, ToolInterrupted, note

log = logging.getLogger("bemcp.watchdog")

HEARTBEAT = 0.1          # seconds between loop heartbeats
MEMORY_INTERVAL = 1.0    # seconds between memory samples
ESCALATE_AFTER = 1.0     # grace for stopped work before escalation
MAX_ESCALATIONS = 5


class LoopBlocked(ToolError):
    """Raised in code that blocked the event loop past the interrupt threshold.

    A ToolError: the call it interrupts ends as an isError result saying why (and as
    ``killed`` in tasks.log).
    """

    killed_by = "loop_blocked"


def _format_stack(frame, limit=40):
    return "".join(traceback.format_stack(frame, limit=limit)) if frame is not None else ""


def _task_stack(task):
    """Where a task is suspended: the chain of coroutines it awaits, outermost first."""
    lines = []
    obj = task.get_coro()
    for _ in range(64):
        if obj is None:
            break
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        if frame is not None:
            lines.extend(traceback.format_stack(frame, limit=1))
        obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None) or getattr(obj, "coro", None)
    return "".join(lines)


class Watchdog:
    """The watchdog of ``server`` (``server.watchdog``, made by the Server when
    ``config.watchdog`` is set); it starts and stops with the server."""

    def __init__(self, server):
        self.server = server
        cfg = server.config
        self.lag_threshold = cfg.lag_threshold
        self.lag_interrupt = cfg.lag_interrupt
        self.soft_bytes, self.hard_bytes = memory_limits(cfg.memory_soft_mb, cfg.memory_hard_mb)
        self.counts = {"runaways": 0, "thread_interrupts": 0, "lockups": 0, "loop_interrupts": 0,
                       "memory_refusals": 0, "memory_kills": 0, "memory_cancels": 0}
        self.memory = {"rss": 0, "children_rss": 0, "children": 0}
        self.lag = 0.0
        self._heartbeat = monotonic()
        self._beat_handle = None
        self._thread = None
        self._stop = threading.Event()
        self._blocked_since = None
        self._interrupting = False
        self._loop_ident = None
        self._use_signal = False
        self._refusal = None
        server.on_start(self.start)
        server.on_shutdown(self.stop)

    # -- lifecycle ---------------------------------------------------------------

    def start(self):
        self.loop = self.server.loop
        self.dispatcher = self.server.dispatcher
        self._loop_ident = threading.get_ident()
        if threading.current_thread() is threading.main_thread():
            # A signal handler can break a blocking sleep or syscall, not only bytecode.
            signal.signal(signal.SIGUSR2, self._on_interrupt_signal)
            self._use_signal = True
        self._beat()
        self._thread = threading.Thread(target=self._watch, name="bemcp-watchdog", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._beat_handle is not None:
            self._beat_handle.cancel()
        if self._thread is not None:
            self._thread.join(1.0)

    # -- escalation ----------------------------------------------------------------

    def escalate_later(self, req):
        """``req`` was stopped (deadline or client): escalate if it has not ended in time.
        The server makes this the dispatcher's ``on_cancelled``."""
        self.server.loop.call_later(ESCALATE_AFTER, self._escalate, req, 1)

    def _escalate(self, req, attempt):
        task = req.task
        if req.thread is not None:
            frame = sys._current_frames().get(req.thread)
            if self.server.interrupt_worker(req, ToolInterrupted):
                self.counts["thread_interrupts"] += 1
                self._runaway(req, "sync tool still running in its worker thread: interrupted", frame)
        elif task is not None and not task.done():
            self._runaway(req, "async tool ignored cancellation", None, _task_stack(task))
            task.cancel()
            if attempt < MAX_ESCALATIONS:
                self.loop.call_later(ESCALATE_AFTER * 2 ** attempt, self._escalate, req, attempt + 1)

    def _runaway(self, req, what, frame, stack=None):
        self.counts["runaways"] += 1
        log.warning("runaway request %r (tool %s): %s", req.id, req.tool, what)
        self.server.record("runaway", request_id=req.id, tool=req.tool, state=req.state_name,
                           action=what, age_s=round(monotonic() - req.start, 3),
                           stack=stack if stack is not None else _format_stack(frame))

    # -- the loop heartbeat and the watcher thread ---------------------------------------

    def _beat(self):
        self._heartbeat = monotonic()
        self._beat_handle = self.loop.call_later(HEARTBEAT, self._beat)

    def _watch(self):
        next_memory = 0.0
        last_received = -1
        trimmed = False
        while not self._stop.wait(HEARTBEAT):
            now = monotonic()
            self._check_lag(now - self._heartbeat - HEARTBEAT)
            if now < next_memory:
                continue
            next_memory = now + MEMORY_INTERVAL
            # Quiet for a second (no message in, nothing running): give freed memory back, once.
            received = self.dispatcher.received
            if received == last_received and not self.dispatcher.table.requests:
                if not trimmed:
                    trim_allocator()
                    trimmed = True
            else:
                trimmed = False
            last_received = received
            try:
                self._check_memory()
            except Exception:
                log.exception("memory sampling failed")

    def _check_lag(self, lag):
        self.lag = max(0.0, lag)
        if lag < self.lag_threshold:
            if self._blocked_since is not None:
                self._blocked_since = None
                self._interrupting = False
            return
        if self._blocked_since is None:
            self._blocked_since = lag
            self.counts["lockups"] += 1
            frame = sys._current_frames().get(self._loop_ident)
            task = asyncio.tasks._current_tasks.get(self.loop)
            requests = [r for r in self.dispatcher.table.snapshot()][:20]
            log.warning("event loop blocked for %.1f s", lag)
            self.server.record("loop_blocked", blocked_s=round(lag, 3), stack=_format_stack(frame),
                               task=repr(task) if task is not None else None, in_flight=requests)
        if self.lag_interrupt and lag >= self.lag_interrupt and not self._interrupting:
            self._interrupting = True
            self.counts["loop_interrupts"] += 1
            frame = sys._current_frames().get(self._loop_ident)
            self.server.record("loop_interrupted", blocked_s=round(lag, 3), stack=_format_stack(frame))
            if self._use_signal:
                signal.pthread_kill(self._loop_ident, signal.SIGUSR2)
            else:
                interrupt_thread(self._loop_ident, LoopBlocked)

    def _on_interrupt_signal(self, signum, frame):
        if self._interrupting:
            raise LoopBlocked(f"Interrupted: this call blocked the server's event loop for over "
                              f"{self.lag_interrupt:g} s (an async tool must await, not block; "
                              f"make blocking work a sync tool)")

    # -- memory ---------------------------------------------------------------------

    def _check_memory(self):
        rss, children, child_rss = sample_memory()
        self.memory = {"rss": rss, "children_rss": child_rss, "children": children}
        total = rss + child_rss
        figures = {"rss_mb": round(rss / 2**20, 1), "children_rss_mb": round(child_rss / 2**20, 1),
                   "soft_limit_mb": round(self.soft_bytes / 2**20), "hard_limit_mb": round(self.hard_bytes / 2**20)}
        if total > self.soft_bytes and self._refusal is None:
            self._refusal = (f"Server under memory pressure: {total / 2**20:.0f} MB in use "
                             f"(soft limit {self.soft_bytes / 2**20:.0f} MB); new tool calls are refused until it drops")
            self.server.refuse_tool_calls(self._refusal)
            self.counts["memory_refusals"] += 1
            log.warning("%s", self._refusal)
            self.server.record("memory_soft_limit", action="refusing new tool calls", **figures)
        elif total < self.soft_bytes * 0.9 and self._refusal is not None:
            self._refusal = None
            self.server.refuse_tool_calls(None)
            self.server.record("memory_recovered", action="accepting tool calls again", **figures)
        if total > self.hard_bytes:
            self.loop.call_soon_threadsafe(self._relieve, figures)

    def _relieve(self, figures):
        """Over the hard limit: kill the largest child tree, else stop the newest tool call."""
        victim = largest_child_tree()
        if victim is not None:
            pgid, tree_rss, cmdline = victim
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.counts["memory_kills"] += 1
            log.warning("memory hard limit: killed process group %d (%s, %.0f MB)", pgid, cmdline, tree_rss / 2**20)
            self.server.record("memory_hard_limit", action="killed the largest child process tree",
                               pgid=pgid, command=cmdline, tree_rss_mb=round(tree_rss / 2**20, 1), **figures)
            return
        tool_calls = [r for r in self.dispatcher.table.requests.values() if r.tool is not None]
        if not tool_calls:
            return
        newest = max(tool_calls, key=lambda r: r.start)
        message = (f"Stopped by the watchdog: the server passed its memory hard limit "
                   f"({self.hard_bytes / 2**20:.0f} MB)")
        outcome = self.server.tools[newest.tool].error_result(message, newest) \
            if newest.tool in self.server.tools else RpcError(SERVER_BUSY, message)
        note(newest, "killed_by", "memory_hard_limit")
        self.dispatcher.stop(newest, STATE_KILLED, outcome)
        self.counts["memory_cancels"] += 1
        self.server.record("memory_hard_limit", action="stopped the newest tool call",
                           request_id=newest.id, tool=newest.tool, **figures)

    # -- visibility -----------------------------------------------------------------

    def status(self):
        """What runs now and how requests ended: for `server_status` and bemcp://status."""
        table = self.dispatcher.table
        counts = dict(zip(STATE_NAMES, table.counts))
        counts.pop("running", None)
        try:   # as of now, not the last sample: every process of the server, itself and its children
            rss, children, child_rss = sample_memory()
        except Exception:
            rss, children, child_rss = self.memory["rss"], self.memory["children"], self.memory["children_rss"]
        return {
            "in_flight": [dict(entry, id=self.server.client_id(entry["id"])) for entry in table.snapshot()],
            "queued": len(self.dispatcher.queue),
            "requests": counts,
            "watchdog": dict(self.counts),
            "memory": {"rss_mb": round(rss / 2**20, 1),
                       "children_rss_mb": round(child_rss / 2**20, 1),
                       "total_rss_mb": round((rss + child_rss) / 2**20, 1),
                       "children": children,
                       "soft_limit_mb": round(self.soft_bytes / 2**20),
                       "hard_limit_mb": round(self.hard_bytes / 2**20),
                       "refusing_new_calls": self.dispatcher.refusing is not None},
            "loop_lag_s": round(self.lag, 3),
        }


def sample_memory():
    """(own RSS, number of descendants, their RSS) in bytes.

    On Linux /proc gives all three, so psutil (and its memory) stays out of the
    server, even with tool processes below it; elsewhere psutil.
    """
    pids = procfs.descendants()
    own = procfs.statm_rss("self") if pids is not None else None
    if own is not None:
        return own, len(pids), sum(procfs.statm_rss(pid) or 0 for pid in pids)
    import psutil
    me = psutil.Process()
    children = me.children(recursive=True)
    return me.memory_info().rss, len(children), _total_rss(children)


def _total_rss(processes):
    import psutil
    total = 0
    for p in processes:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass  # gone since it was listed
    return total


def memory_limits(soft_mb, hard_mb):
    """(soft, hard) in bytes: configured values, else half and three quarters of RAM."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    soft = soft_mb * 2**20 if soft_mb else total // 2
    hard = hard_mb * 2**20 if hard_mb else max(soft, total * 3 // 4)
    return soft, max(hard, soft)


def largest_child_tree():
    """(pgid, rss, command) of the direct child whose process tree uses most memory.

    psutil rather than procfs: this runs only above the hard limit, where its cost is moot.
    """
    import psutil
    best = None
    for child in psutil.Process().children():
        try:
            rss = _total_rss([child] + child.children(recursive=True))
            pgid = os.getpgid(child.pid)
            if pgid == os.getpgid(0):
                continue  # shares our group: not a tree we started in its own session
            if best is None or rss > best[1]:
                best = (pgid, rss, " ".join(child.cmdline())[:200])
        except (psutil.Error, ProcessLookupError):
            continue
    return best
