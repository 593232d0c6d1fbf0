"""ProcessRegistry: every child bemcp runs, the concurrency cap, the background
processes by id, and stopping every tree (and adopted orphan) at server exit.

A mechanism only: the MCP tools built on it are in bemcp/builtins/commands.py.
"""

import asyncio
import time

from .capture import SPOOL_LIMIT, Spool
from .child import REAP_WAIT, kills_in_progress
from .orphans import Orphans
from .spawning import spawn

SHUTDOWN_GRACE = 0.5       # SIGTERM -> SIGKILL at server exit (the server is going away)
FINISHED_KEPT = 64         # finished background processes kept for process_read


class ProcessLimitError(Exception):
    """Too many child processes are running."""


class Background:
    """A process started with process_start: its child, spool and bookkeeping."""

    __slots__ = ("id", "child", "spool", "cursor")

    def __init__(self, id, child, spool):
        self.id = id
        self.child = child
        self.spool = spool
        self.cursor = 0                # where the next process_read without offset starts

    def status(self):
        child = self.child
        if child.running:
            return "killing" if child.killing else "running"
        if child.killing and child.returncode is not None and child.returncode < 0:
            return "killed"
        return "exited"

    def info(self):
        child = self.child
        return {"id": self.id, "pid": child.pid, "command": child.launch.display,
                "cwd": child.launch.cwd, "status": self.status(), "running": child.running,
                "exit_code": child.returncode, "runtime_s": round(child.runtime(), 3),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(child.started_wall)),
                "output_bytes": self.spool.total}


class ProcessRegistry:
    """Every child bemcp runs: the concurrency cap, the background table, shutdown."""

    def __init__(self, policy, max_processes=64, kill_grace=2.0, spool_limit=SPOOL_LIMIT):
        self.policy = policy           # its sandbox confines every child
        self.max_processes = max_processes
        self.kill_grace = kill_grace
        self.spool_limit = spool_limit
        self.live = set()              # children whose leader has not exited
        self.children = set()          # every child not yet done (incl. leftovers being killed)
        self.background = {}           # id -> Background
        self._next_id = 0
        self.orphans = Orphans(self._known)
        self.closed = False

    @property
    def running(self):
        return len(self.live)

    def spawn(self, launch, on_output, stdin=False, foreground=True):
        """Start ``launch`` within the cap; a Child."""
        if self.closed:
            raise ProcessLimitError("the server is shutting down")
        if self.max_processes and len(self.live) >= self.max_processes:
            raise ProcessLimitError(
                f"Not run: {len(self.live)} processes are running, the server's limit "
                f"(max_processes = {self.max_processes}). Wait for one to finish, or stop a "
                f"background process with process_kill.")
        child = spawn(launch, on_output, stdin=stdin, foreground=foreground,
                      on_exit=self.live.discard, grace=self.kill_grace, sandbox=self.policy.sandbox)
        self.live.add(child)
        self.children.add(child)
        child.done.add_done_callback(lambda _: self._settled(child))
        return child

    def start_adopting(self):
        """At server start: adopt the orphans of every tree started here, and tend them."""
        self.orphans.start()

    def _known(self):
        return {child.pid for child in self.children}

    def _settled(self, child):
        if child.foreground:
            self.children.discard(child)

    def start_background(self, launch):
        spool = Spool(self.spool_limit)
        try:
            child = self.spawn(launch, lambda stream, data: spool.write(data), stdin=True,
                               foreground=False)
        except BaseException:
            spool.close()
            raise
        self._next_id += 1
        entry = Background(f"p{self._next_id}", child, spool)
        self.background[entry.id] = entry
        self._forget_old()
        return entry

    def get(self, id):
        entry = self.background.get(id)
        if entry is None:
            known = ", ".join(self.background) or "none"
            raise KeyError(f"no background process {id!r} (known: {known})")
        return entry

    def _forget_old(self):
        finished = [e for e in self.background.values() if not e.child.running]
        for entry in finished[:max(0, len(finished) - FINISHED_KEPT)]:
            del self.background[entry.id]
            entry.spool.close()
            self.children.discard(entry.child)

    async def shutdown(self):
        """Stop every child tree (grace at most SHUTDOWN_GRACE), reap, close spools."""
        self.closed = True
        self.orphans.stop_tending()
        grace = min(self.kill_grace, SHUTDOWN_GRACE)
        tasks = [child.kill(grace) for child in list(self.children)
                 if child.running or child.group_running() or not child.done.done()]
        tasks += kills_in_progress()
        if tasks:
            await asyncio.wait(tasks, timeout=grace + REAP_WAIT + 1.0)
        await self.orphans.stop(grace)
        for entry in self.background.values():
            entry.spool.close()
            entry.child.close_stdin()

