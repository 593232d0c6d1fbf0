"""Orphans: bemcp serve as the subreaper of every tree it starts (Linux).

A process that leaves its session and loses its parent (a double-forking daemon,
``setsid cmd &``) is re-parented to bemcp, not to init. Such adopted processes keep
running, are reaped when they exit (``Orphans`` tends them), and are stopped with
everything else when bemcp exits. Limits: docs/processes.md.
"""

import asyncio
import logging
import os
import signal
import time

from .. import procfs
from .._os import become_subreaper
from .child import POLL, REAP_WAIT

log = logging.getLogger("bemcp.processes")

TEND_SECONDS = 1.0         # s between reaping adopted orphans that exited

_adopting = False


def adopt_orphans():
    """Make this process the subreaper of the trees it starts; True if set.

    For a serving process only (``Orphans.start``): adopted orphans must be reaped.
    """
    global _adopting
    _adopting = become_subreaper()
    return _adopting


class Orphans:
    """The adopted orphans of a serving process: reaped while it serves, stopped at exit.

    ``known()`` returns the pids bemcp started itself: those are its children, not orphans.
    """

    def __init__(self, known):
        self.known = known
        self._tending = None           # the timer that reaps adopted orphans
        self._exited = set()           # adopted orphans seen exited at the last tending

    def start(self):
        """Adopt the orphans of every tree started from now on, and tend them."""
        if adopt_orphans():
            loop = asyncio.get_running_loop()
            self._tending = loop.call_later(TEND_SECONDS, self._tend, loop)

    def _tend(self, loop):
        # Adopted orphans that exited are zombies of ours until reaped. One seen exited a
        # tending ago too has nobody else waiting for it (a plugin's child that started its
        # own session would have been reaped by its waiter at once): reap it.
        exited = {pid for pid, gone in adopted(self.known()).items() if gone}
        for pid in exited & self._exited:
            _reap(pid)
        self._exited = exited
        self._tending = loop.call_later(TEND_SECONDS, self._tend, loop)

    def stop_tending(self):
        if self._tending is not None:
            self._tending.cancel()
            self._tending = None

    async def stop(self, grace):
        """Stop every adopted orphan and what it started: SIGTERM, SIGKILL after ``grace``, reap."""
        self.stop_tending()
        if _adopting:
            await _stop_adopted(self.known(), grace)


def adopted(known):
    """{pid: exited} of this process's children that it did not start (``known``: the pids
    it did) and that are in another session: orphans adopted as their subreaper. A child
    that shares bemcp's session was started by other code in the process (a plugin's
    subprocess) and is left to it."""
    kids = procfs.children_of("self")
    if not kids:
        return {}
    session = os.getsid(0)
    found = {}
    for pid in set(kids) - known:
        fields = procfs.stat_fields(pid)
        if fields is not None and len(fields) > 3 and int(fields[3]) != session:
            found[pid] = fields[0] == b"Z"
    return found


def _reap(pid):
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


async def _stop_adopted(known, grace):
    orphans = adopted(known)
    if not orphans:
        return
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while True:
        for pid, exited in orphans.items():
            if not exited:
                for member in {pid, *procfs.tree_members(pid)}:
                    try:
                        os.kill(member, sig)
                    except OSError:
                        pass
        await asyncio.sleep(POLL)
        orphans = {pid: exited for pid, exited in adopted(known).items() if not (exited and _reap(pid))}
        if not orphans:
            return
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                break
            sig = signal.SIGKILL
            deadline = time.monotonic() + REAP_WAIT
    log.warning("%d adopted process(es) survived SIGKILL at exit: %s", len(orphans), sorted(orphans))
