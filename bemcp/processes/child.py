"""Child: one process started in its own session, watched on the event loop until it and
everything it started are gone.

Its exit is watched with a pidfd (a thread waiting on the pid where pidfds are missing),
its pipes with ``add_reader``; ``kill`` stops the whole tree (its group, its session and
everything below it in /proc) with SIGTERM, then SIGKILL after a grace period, and
reaps it. Pipes are drained for a bounded time after the leader exits. The reasons and
limits are in docs/processes.md.
"""

import asyncio
import fcntl
import logging
import os
import signal
import sys
import threading
import time

from .. import procfs

log = logging.getLogger("bemcp.processes")

READ_CHUNK = 256 * 1024
DRAIN_AFTER_EXIT = 0.5     # s the pipes may stay open once the leader exited normally
DRAIN_AFTER_KILL = 0.25    # ... once it was killed
REAP_WAIT = 2.0            # s to wait for death after SIGKILL before giving up
POLL = 0.02                # s between checks while a tree dies

_LINUX = sys.platform.startswith("linux")


class Child:
    """A process started in its own session, watched on the event loop.

    ``on_output(stream, data)`` receives bytes as they arrive (stream 1: stdout,
    2: stderr). ``done`` resolves with the exit code once the process exited and
    its pipes are closed or abandoned; ``returncode`` is set at exit (negative: the
    signal that killed it).
    """

    def __init__(self, loop, pid, launch, pipes, stdin_fd, on_output, foreground,
                 on_exit=None, grace=2.0, popen=None, started=None):
        self.loop = loop
        self.popen = popen             # only where Popen spawned it
        self.pid = pid
        self.pgid = pid                # a new session: it leads its session and group
        self.launch = launch
        self.started = started or time.monotonic()
        self.started_wall = time.time()
        self.ended = None
        self.returncode = None
        self.stdin_fd = stdin_fd
        self.on_output = on_output
        self.foreground = foreground   # stop what is left in the group when it exits
        self.on_exit = on_exit
        self.grace = grace             # SIGTERM -> SIGKILL for kills it starts itself
        self.done = loop.create_future()
        self.killing = False
        self.kill_signal = None        # the signal that ended a kill: SIGTERM or SIGKILL
        self.timed_out = False
        self._pipes = pipes            # [stdout fd, stderr fd], None once closed
        self._drain_timer = None
        self._kill_task = None
        self._kill_deadline = 0.0
        self._escaped = set()          # pids of the tree outside its process group
        # Once nothing of the tree is left, its pid may be reused by a stranger: never
        # signal that group or scan below that pid again.
        self._tree_gone = False
        self._leftover_watch = None
        self._stdin_lock = None
        for index, fd in enumerate(pipes):
            fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK)   # a fresh pipe end has no other flag
            loop.add_reader(fd, self._on_readable, index)
        self._watch_exit()

    @property
    def running(self):
        return self.returncode is None

    def runtime(self):
        return (self.ended or time.monotonic()) - self.started

    # -- exit -----------------------------------------------------------------------

    def _watch_exit(self):
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            # No pidfd (old kernel, not Linux): a thread blocks in waitpid for us.
            threading.Thread(target=self._wait_in_thread, name=f"bemcp-wait-{self.pid}",
                             daemon=True).start()
            return
        self.loop.add_reader(pidfd, self._on_pidfd, pidfd)

    def _on_pidfd(self, pidfd):
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, None   # reaped by someone else: status unknown
        if pid == 0:
            return
        self.loop.remove_reader(pidfd)
        os.close(pidfd)
        self._exited(status)

    def _wait_in_thread(self):
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = None
        try:
            self.loop.call_soon_threadsafe(self._exited, status)
        except RuntimeError:
            pass   # the loop is closed: nobody is waiting any more

    def _exited(self, status):
        if self.returncode is not None:
            return
        self.returncode = os.waitstatus_to_exitcode(status) if status is not None else 255
        if self.popen is not None:
            self.popen.returncode = self.returncode   # Popen must not wait or warn later
        self.ended = time.monotonic()
        if not self._group_exists():
            self._tree_gone = True
        elif not self.foreground:
            self._leftover_watch = self.loop.call_later(1.0, self._watch_leftovers)
        if self.on_exit is not None:
            self.on_exit(self)
        if self._all_pipes_closed():
            self._finish()
        elif self.foreground or self.killing:
            self._drain_timer = self.loop.call_later(
                DRAIN_AFTER_KILL if self.killing else DRAIN_AFTER_EXIT, self._drain_expired)

    def _watch_leftovers(self):
        # A background leader exited, its descendants live on (they hold its pid as their
        # group id, so it cannot be reused): notice when the last one is gone.
        self._leftover_watch = None
        if self._tree_gone:
            return
        if not self._group_exists():
            self._tree_gone = True
            return
        self._leftover_watch = self.loop.call_later(1.0, self._watch_leftovers)

    def _drain_expired(self):
        # Something left behind still holds the pipes: stop reading them.
        self._drain_timer = None
        if self.foreground and not self.killing:
            self.kill(self.grace)
        self._abandon_pipes()
        self._finish()

    def _finish(self):
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        self.close_stdin()
        if not self.done.done():
            self.done.set_result(self.returncode)
        if self.foreground and not self.killing and self.group_running():
            self.kill(self.grace)   # a foreground command leaves nothing running

    # -- output -----------------------------------------------------------------------

    def _on_readable(self, index):
        fd = self._pipes[index]
        if fd is None:
            return
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.on_output(index + 1, data)
            return
        self._close_pipe(index)
        if self.returncode is not None and self._all_pipes_closed():
            self._finish()

    def _close_pipe(self, index):
        fd = self._pipes[index]
        if fd is not None:
            self._pipes[index] = None
            self.loop.remove_reader(fd)
            os.close(fd)

    def _abandon_pipes(self):
        for index in range(len(self._pipes)):
            self._close_pipe(index)

    def _all_pipes_closed(self):
        return all(fd is None for fd in self._pipes)

    # -- stdin ------------------------------------------------------------------------

    async def write_stdin(self, data, close=False):
        """Write ``data`` to the child's stdin without blocking the loop; bytes written.

        Raises BrokenPipeError if the child closed its stdin (or exited), and
        ValueError if there is no stdin pipe any more.
        """
        if self._stdin_lock is None:
            self._stdin_lock = asyncio.Lock()
        async with self._stdin_lock:
            if self.stdin_fd is None:
                raise ValueError("stdin is closed")
            view = memoryview(data)
            written = 0
            try:
                while written < len(view):
                    try:
                        written += os.write(self.stdin_fd, view[written:written + 65536])
                    except BlockingIOError:
                        await self._writable()
            finally:
                if close:
                    self.close_stdin()
            return written

    async def _writable(self):
        fd = self.stdin_fd
        if fd is None:
            raise BrokenPipeError("stdin was closed")
        ready = self.loop.create_future()
        self.loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            if self.stdin_fd == fd:
                self.loop.remove_writer(fd)

    def close_stdin(self):
        fd = self.stdin_fd
        if fd is not None:
            self.stdin_fd = None
            self.loop.remove_writer(fd)
            os.close(fd)

    # -- signals and killing -------------------------------------------------------------

    def send_signal(self, sig):
        """Send ``sig`` to the child's whole tree (group, session, descendants)."""
        if self.returncode is not None and not self._group_exists():
            self._tree_gone = True
        if self._tree_gone:
            return False
        pids = procfs.tree_members(self.pid) if _LINUX else {}
        self._escaped.update(p for p, (_, pgrp) in pids.items() if pgrp != self.pgid)
        sent = False
        try:
            os.killpg(self.pgid, sig)
            sent = True
        except (ProcessLookupError, PermissionError):
            pass
        for pid, (_, pgrp) in pids.items():
            if sent and pgrp == self.pgid:
                continue   # the group signal reached it: a second one could run a handler twice
            try:
                os.kill(pid, sig)
                sent = True
            except (ProcessLookupError, PermissionError):
                pass
        return sent

    def kill(self, grace):
        """Stop the whole tree: SIGTERM, SIGKILL after ``grace`` s, reap. Idempotent.

        Returns the task doing it; it finishes once the tree is gone (or, bounded,
        after REAP_WAIT s more) and the pipes are closed or abandoned. A second call
        can only shorten the grace period.
        """
        deadline = self.loop.time() + grace
        if self._kill_task is None:
            self.killing = True
            self._kill_deadline = deadline
            self._kill_task = self.loop.create_task(self._kill_tree())
            _KILL_TASKS.add(self._kill_task)
            self._kill_task.add_done_callback(_KILL_TASKS.discard)
        elif deadline < self._kill_deadline:
            self._kill_deadline = deadline
        return self._kill_task

    async def _kill_tree(self):
        loop = self.loop
        self.send_signal(signal.SIGTERM)
        self.kill_signal = signal.SIGTERM
        while not self._tree_ended():
            if loop.time() >= self._kill_deadline:
                self.kill_signal = signal.SIGKILL
                self.send_signal(signal.SIGKILL)
                give_up = loop.time() + REAP_WAIT
                while not self._tree_ended() and loop.time() < give_up:
                    await asyncio.sleep(POLL)
                    if self.returncode is not None:
                        self.send_signal(signal.SIGKILL)   # stragglers found since
                break
            await asyncio.sleep(POLL)
        self._tree_gone = self._tree_ended()
        if self._tree_gone and self._leftover_watch is not None:
            self._leftover_watch.cancel()
            self._leftover_watch = None
        if self.returncode is not None and not self._all_pipes_closed():
            if self._drain_timer is None or self._drain_timer.when() > loop.time() + DRAIN_AFTER_KILL:
                if self._drain_timer is not None:
                    self._drain_timer.cancel()
                self._drain_timer = loop.call_later(DRAIN_AFTER_KILL, self._drain_expired)
        if self.returncode is not None:
            await self.done
        else:
            log.error("process %d survived SIGKILL for %.1f s", self.pid, REAP_WAIT)

    def _tree_ended(self):
        """Whether nothing of the tree is left (the leader reaped, no live member)."""
        if self.returncode is None:
            return False
        if self.group_running():
            return False
        for pid in list(self._escaped):
            if not procfs.is_running(pid):
                self._escaped.discard(pid)
        return not self._escaped

    def _group_exists(self):
        """Whether any process, zombies included, still has the child's group id."""
        if self._tree_gone:
            return False
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def group_running(self):
        """Whether a running (non-zombie) process is left of the child's tree: its group
        still exists and, where /proc says so, not only zombies are in it.

        Only meaningful once the leader was reaped (it is the group's first member).
        """
        if not self._group_exists():
            self._tree_gone = self.returncode is not None
            return False
        if not _LINUX:
            return True
        # Zombies answer signals too; reparented ones may never be reaped here.
        return any(state != "Z" for state, _ in procfs.tree_members(self.pid).values())


_KILL_TASKS = set()   # kill tasks in progress (a cancelled tool must not take them along)


def kills_in_progress():
    """The tree kills still running, whoever started them (shutdown waits for them)."""
    return [task for task in _KILL_TASKS if not task.done()]
