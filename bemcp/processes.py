"""Child processes: spawning, process groups, kill trees, bounded output capture,
the background process registry, and the tools built on them.

Spawning
    CPython's own spawner, ``_posixsubprocess.fork_exec`` (vfork, then exec; what
    makes ``subprocess.run`` fast), called directly with raw pipes, a new session and
    every inherited descriptor closed. Measured here: ``os.posix_spawn`` (the same
    vfork in glibc) is no faster and cannot set ``cwd`` or close stray descriptors;
    ``subprocess.Popen`` costs ~0.1 ms more per spawn in Python-level setup (re-encoding
    the environment, opening /dev/null, ...), 10% of a short command. The direct call
    is used on the CPython versions whose signature is known (3.11-3.13), Popen
    elsewhere. The exit is watched on the event loop with a pidfd
    (``os.pidfd_open`` + ``loop.add_reader``, then ``waitpid(WNOHANG)``), and the pipes
    with ``add_reader`` on non-blocking fds: no thread, no SIGCHLD handler, no child
    watcher. Where pidfds are missing (old kernels, other systems) a thread waits on
    the pid instead.

Hygiene
    Every child leads its own session and process group; stdin is /dev/null unless
    the call gives input; stdout and stderr are bemcp's own pipes (the protocol's
    descriptors were moved away by the transport and are close-on-exec anyway).
    Killing is SIGTERM to the group and to every process found in the child's
    session or below it in ``/proc`` (which catches descendants that moved to
    another group or session while their parent lived), SIGKILL after the grace
    period, then reaping. Pipes are drained for a short, bounded time after the
    leader exits: a grandchild still holding them cannot hang a tool. A foreground
    command (``run_command``) leaves nothing behind: what it left running in its
    group when it exited is stopped too. Background processes keep their
    descendants until ``process_kill`` or server exit. Server exit stops every tree.

Output
    ``run_command`` keeps the first and the last half of ``max_output`` bytes per
    stream (the start of a build log and its errors at the end), counts the rest,
    and puts a marker with the totals where bytes were dropped.

    Background output (stdout and stderr interleaved, as a terminal shows them) goes
    to a spool: an anonymous temporary file (``O_TMPFILE``, or created and unlinked at
    once), private to bemcp, gone when bemcp exits however it exits. It is a ring of
    ``SPOOL_LIMIT`` bytes addressed by absolute offsets, so ``process_read`` can page
    through any recent part of a large output with bemcp's memory flat: the page
    cache holds it, not the heap. A disk ring was chosen over a memory ring for that
    reason; offsets older than the ring's start are reported as dropped.

Orphans
    ``bemcp serve`` is the child subreaper of everything it starts (Linux,
    ``adopt_orphans``): a process that leaves its session and loses its parent (a
    double-forking daemon, ``setsid cmd &``) is re-parented to bemcp, not to init.
    Such adopted processes keep running (a server a command started may be the
    point of it), are reaped when they exit, and are stopped with everything else
    when bemcp exits.

Known limits
    An adopted process cannot be traced back to the call that started it, so it
    outlives that call (but not the server). If bemcp itself is SIGKILLed it cannot
    stop its children (they sit in their own sessions); any other exit, including
    the parent's death, does.
"""

import asyncio
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from ._os import become_subreaper
from .policy import Policy, PolicyError
from .procfs import children_of, stat_fields

log = logging.getLogger("bemcp.processes")

MiB = 1024 * 1024
READ_CHUNK = 256 * 1024
DRAIN_AFTER_EXIT = 0.5     # s the pipes may stay open once the leader exited normally
DRAIN_AFTER_KILL = 0.25    # ... once it was killed
SHUTDOWN_GRACE = 0.5       # SIGTERM -> SIGKILL at server exit (the server is going away)
TEND_SECONDS = 1.0         # s between reaping adopted orphans that exited
REAP_WAIT = 2.0            # s to wait for death after SIGKILL before giving up
POLL = 0.02                # s between checks while a tree dies
SPOOL_LIMIT = 64 * MiB     # bytes of background output kept per process
FINISHED_KEPT = 64         # finished background processes kept for process_read
PROGRESS_INTERVAL = 0.2    # s between progress notifications
PROGRESS_MESSAGE = 4096    # characters of output lines per notification

_LINUX = sys.platform.startswith("linux")


class ProcessLimitError(Exception):
    """Too many child processes are running."""


class SpawnError(Exception):
    """The program could not be started (the message says why)."""


# -- one child ---------------------------------------------------------------------------

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
        if self.foreground and not self.killing and self._group_alive():
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
        pids = _tree_pids(self.pid) if _LINUX else {}
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
        while not self._gone():
            if loop.time() >= self._kill_deadline:
                self.kill_signal = signal.SIGKILL
                self.send_signal(signal.SIGKILL)
                give_up = loop.time() + REAP_WAIT
                while not self._gone() and loop.time() < give_up:
                    await asyncio.sleep(POLL)
                    if self.returncode is not None:
                        self.send_signal(signal.SIGKILL)   # stragglers found since
                break
            await asyncio.sleep(POLL)
        self._tree_gone = self._gone()
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

    def _gone(self):
        """Whether nothing of the tree is left (the leader reaped, no live member)."""
        if self.returncode is None:
            return False
        if self._group_alive():
            return False
        for pid in list(self._escaped):
            if not _alive(pid):
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

    def _group_alive(self, scan=True):
        """Whether a live (non-zombie) process is left in the child's group.

        Only meaningful once the leader was reaped (it is the group's first member).
        """
        if not self._group_exists():
            self._tree_gone = self.returncode is not None
            return False
        if not (_LINUX and scan):
            return True
        # Zombies answer signals too; reparented ones may never be reaped here.
        return any(state != "Z" for state, _ in _tree_pids(self.pid).values())


_KILL_TASKS = set()   # kill tasks in progress (a cancelled tool must not take them along)


def _alive(pid):
    """Whether ``pid`` exists and is not a zombie."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != b"Z"


def _tree_pids(leader):
    """{pid: (state, pgrp)} of every process in ``leader``'s session or group, or
    below it or them in the process tree (read from /proc)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return {}
    procs = {}
    for name in names:
        if not name.isdigit():
            continue
        fields = stat_fields(name)
        if fields is None:
            continue
        try:
            procs[int(name)] = (fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]))
        except (IndexError, ValueError):
            continue
    members = {pid for pid, (_, _, pgrp, sid) in procs.items() if sid == leader or pgrp == leader}
    children = {}
    for pid, (_, ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    stack = [leader, *members]
    while stack:
        for kid in children.get(stack.pop(), ()):
            if kid not in members:
                members.add(kid)
                stack.append(kid)
    members.discard(os.getpid())
    members.discard(1)
    return {pid: (procs[pid][0], procs[pid][2]) for pid in members if pid in procs}


_adopting = False

def adopt_orphans():
    """Make this process the subreaper of the trees it starts (see "Orphans" above); True if set.

    For a serving process only (ProcessRegistry.start_adopting): adopted orphans must be reaped.
    """
    global _adopting
    _adopting = become_subreaper()
    return _adopting


def _adopted(known):
    """{pid: exited} of this process's children that it did not start (``known``: the pids
    it did) and that are in another session: orphans adopted as
    their subreaper. A child that shares bemcp's session was started by other code in
    the process (a plugin's subprocess) and is left to it."""
    kids = children_of("self")
    if not kids:
        return {}
    session = os.getsid(0)
    adopted = {}
    for pid in set(kids) - known:
        fields = stat_fields(pid)
        if fields is not None and len(fields) > 3 and int(fields[3]) != session:
            adopted[pid] = fields[0] == b"Z"
    return adopted


def _reap(pid):
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


def spawn(launch, on_output, stdin=False, foreground=True, on_exit=None, grace=2.0, sandbox=None):
    """Start ``launch`` (a policy.Launch) in its own session; a Child.

    ``stdin``: give the child a pipe as stdin (else /dev/null); ``sandbox``: run it
    confined (a security.sandbox.Sandbox). Must be called on the event loop. Raises
    SpawnError if the program cannot be started.
    """
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    fds = []
    try:
        out_r, out_w = os.pipe()       # close-on-exec on both ends (PEP 446)
        fds += (out_r, out_w)
        err_r, err_w = os.pipe()
        fds += (err_r, err_w)
        if stdin:
            in_r, in_w = os.pipe()
            fds += (in_r, in_w)
        if not stdin:
            in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            fds.append(in_r)
        if sandbox is None:
            pid, popen = _start(launch, in_r, out_w, err_w)
        else:
            pid, popen = _start_confined(launch, in_r, out_w, err_w, sandbox)
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        reason = exc.strerror or str(exc)
        if getattr(exc, "filename", None) == launch.cwd and launch.cwd:
            reason += f" (cwd {launch.cwd})"
        raise SpawnError(f"cannot run {launch.argv[0]}: {reason}") from None
    os.close(out_w)
    os.close(err_w)
    os.close(in_r)
    stdin_fd = None
    if stdin:
        os.set_blocking(in_w, False)
        stdin_fd = in_w
    return Child(loop, pid, launch, [out_r, err_r], stdin_fd, on_output, foreground,
                 on_exit, grace, popen, started)


_FORK_EXEC = None
if sys.implementation.name == "cpython" and (3, 11) <= sys.version_info[:2] <= (3, 13):
    try:
        from _posixsubprocess import fork_exec as _FORK_EXEC
    except ImportError:
        pass

_ENV_CACHE = (None, None)


def _env_list(env):
    """``env`` encoded for execve; the policy's shared environment is encoded once."""
    global _ENV_CACHE
    if _ENV_CACHE[0] is env:
        return _ENV_CACHE[1]
    encoded = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]
    _ENV_CACHE = (env, encoded)
    return encoded


def _start(launch, stdin_fd, out_w, err_w, argv=None, executable=None, keep=()):
    """Spawn the child with the given fds as 0, 1, 2; (pid, Popen or None).

    ``argv`` and ``executable`` replace the launch's (the sandbox's helper runs it),
    ``keep``: more descriptors the child inherits.
    """
    if argv is None:
        argv, executable = launch.argv, launch.executable
    if _FORK_EXEC is None:
        popen = subprocess.Popen(
            argv, executable=executable, cwd=launch.cwd, env=launch.env, pass_fds=keep,
            stdin=stdin_fd, stdout=out_w, stderr=err_w, close_fds=True, start_new_session=True)
        return popen.pid, popen
    sys.audit("subprocess.Popen", executable, argv, launch.cwd, launch.env)
    report_r, report_w = os.pipe()   # the child reports a failure before exec here
    try:
        # The argument order of CPython 3.11-3.13 (subprocess.Popen._execute_child).
        pid = _FORK_EXEC(
            argv, (os.fsencode(executable),), True,
            tuple(sorted((report_w, *keep))) if keep else (report_w,), launch.cwd,
            _env_list(launch.env), stdin_fd, -1, -1, out_w, -1, err_w, report_r, report_w,
            True, True, -1, None, None, None, -1, None, True)
    except BaseException:
        os.close(report_r)
        raise
    finally:
        os.close(report_w)
    try:
        report = b""
        while True:   # EOF once the child exec'd (the pipe is close-on-exec)
            chunk = os.read(report_r, 50000)
            if not chunk:
                break
            report += chunk
    finally:
        os.close(report_r)
    if report:
        os.waitpid(pid, 0)   # it exits at once
        _, hex_errno, detail = (report.split(b":", 2) + [b"", b""])[:3]
        code = int(hex_errno or b"0", 16)
        raise OSError(code, os.strerror(code) if code else detail.decode(errors="replace"),
                      launch.cwd if detail == b"noexec" else executable)   # noexec: chdir failed
    return pid, None


def _start_confined(launch, stdin_fd, out_w, err_w, sandbox):
    """``_start`` inside ``sandbox``: the compiled spawner confines its vfork child and
    execs the program, or (without it) the exec helper does. A confinement or exec that
    fails is the command's own: a line on its stderr, exit status 126 (127: no such
    program), as a shell reports it."""
    if sandbox.spawn is not None:
        sys.audit("subprocess.Popen", launch.executable, launch.argv, launch.cwd, launch.env)
        pid = sandbox.spawn(os.fsencode(launch.executable), [os.fsencode(a) for a in launch.argv],
                            _env_list(launch.env), os.fsencode(launch.cwd or ""), stdin_fd, out_w,
                            err_w, sandbox.fd, sandbox.allow_net)
        return pid, None
    from .security.sandbox import HELPER
    return _start(launch, stdin_fd, out_w, err_w, sandbox.command(launch.executable, launch.argv),
                  HELPER, (sandbox.fd,))


# -- output capture ---------------------------------------------------------------------

class Capture:
    """One stream of a foreground command: the first and last ``limit // 2`` bytes
    kept, everything counted."""

    __slots__ = ("limit", "head", "tail", "tail_size", "total")

    def __init__(self, limit):
        self.limit = max(0, int(limit))
        self.head = bytearray()
        self.tail = []                 # chunks; their sum stays near limit - limit // 2
        self.tail_size = 0
        self.total = 0

    def feed(self, data):
        self.total += len(data)
        room = self.limit // 2 - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
            if not data:
                return
        keep = self.limit - self.limit // 2
        if keep <= 0:
            return
        if len(data) >= keep:
            self.tail = [data[-keep:]]
            self.tail_size = keep
            return
        self.tail.append(data)
        self.tail_size += len(data)
        while self.tail_size - len(self.tail[0]) >= keep:
            self.tail_size -= len(self.tail.pop(0))

    @property
    def truncated(self):
        return self.total > self.limit

    def text(self):
        tail = b"".join(self.tail)
        if not self.truncated:
            return (bytes(self.head) + tail).decode("utf-8", "replace")
        keep = self.limit - self.limit // 2
        tail = tail[len(tail) - keep:] if keep else b""
        dropped = self.total - len(self.head) - len(tail)
        marker = (f"\n[... bemcp: output truncated: {dropped} bytes omitted here; "
                  f"{self.total} bytes in total, the first {len(self.head)} and the last "
                  f"{len(tail)} kept ...]\n")
        return bytes(self.head).decode("utf-8", "replace") + marker + tail.decode("utf-8", "replace")


class Spool:
    """Background output in a private anonymous file: a ring of ``limit`` bytes
    addressed by absolute offsets (``total`` bytes were written in all)."""

    def __init__(self, limit=SPOOL_LIMIT):
        import tempfile
        self.file = tempfile.TemporaryFile(buffering=0, prefix="bemcp-spool-")
        self.fd = self.file.fileno()
        self.limit = limit
        self.total = 0

    @property
    def start(self):
        """The oldest offset still held."""
        return max(0, self.total - self.limit)

    def write(self, data):
        if self.fd is None:
            self.total += len(data)
            return
        if len(data) > self.limit:
            self.total += len(data) - self.limit
            data = data[-self.limit:]
        view = memoryview(data)
        while view:
            pos = self.total % self.limit
            n = os.pwrite(self.fd, view[:self.limit - pos], pos)
            self.total += n
            view = view[n:]

    def read(self, offset, max_bytes):
        """(first offset returned, bytes) from ``offset`` (clamped to what is held)."""
        start = min(max(offset, self.start), self.total)
        end = min(self.total, start + max_bytes)
        if self.fd is None or end <= start:
            return start, b""
        pos = start % self.limit
        first = min(end - start, self.limit - pos)
        data = os.pread(self.fd, first, pos)
        if first < end - start:
            data += os.pread(self.fd, end - start - first, 0)
        return start, data

    def close(self):
        if self.fd is not None:
            self.fd = None
            self.file.close()


class ProgressLines:
    """Turns a foreground command's output into progress notifications carrying the
    new lines, at most one per PROGRESS_INTERVAL, so they never starve the answer."""

    def __init__(self, ctx, loop):
        self.ctx = ctx
        self.loop = loop
        self.partial = [b"", b""]
        self.lines = []
        self.size = 0
        self.total = 0
        self.timer = None

    def feed(self, stream, data):
        self.total += len(data)
        buf = self.partial[stream - 1] + data
        *complete, rest = buf.split(b"\n")
        if len(rest) > PROGRESS_MESSAGE:
            complete.append(rest)
            rest = b""
        self.partial[stream - 1] = rest
        if not complete:
            return
        prefix = "" if stream == 1 else "[stderr] "
        for line in complete:
            text = prefix + line[:PROGRESS_MESSAGE].decode("utf-8", "replace")
            self.lines.append(text)
            self.size += len(text) + 1
        while self.size > PROGRESS_MESSAGE and len(self.lines) > 1:
            self.size -= len(self.lines.pop(0)) + 1
        if self.timer is None:
            self.timer = self.loop.call_later(PROGRESS_INTERVAL, self.flush)

    def flush(self):
        self.timer = None
        if self.lines:
            message = "\n".join(self.lines)
            self.lines = []
            self.size = 0
            self.ctx.report_progress(self.total, message=message)

    def close(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.flush()


# -- the registry ------------------------------------------------------------------------

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
        self.policy = policy
        self.max_processes = max_processes
        self.kill_grace = kill_grace
        self.spool_limit = spool_limit
        self.live = set()              # children whose leader has not exited
        self.children = set()          # every child not yet done (incl. leftovers being killed)
        self.background = {}           # id -> Background
        self._next_id = 0
        self._tending = None           # the timer that reaps adopted orphans
        self._exited = set()           # adopted orphans seen exited at the last tending
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
        if adopt_orphans():
            loop = asyncio.get_running_loop()
            self._tending = loop.call_later(TEND_SECONDS, self._tend, loop)

    def _known(self):
        return {child.pid for child in self.children}

    def _tend(self, loop):
        # Adopted orphans that exited are zombies of ours until reaped. One seen exited a
        # tending ago too has nobody else waiting for it (a plugin's child that started its
        # own session would have been reaped by its waiter at once): reap it.
        exited = {pid for pid, gone in _adopted(self._known()).items() if gone}
        for pid in exited & self._exited:
            _reap(pid)
        self._exited = exited
        self._tending = None if self.closed else loop.call_later(TEND_SECONDS, self._tend, loop)

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
        grace = min(self.kill_grace, SHUTDOWN_GRACE)
        tasks = [child.kill(grace) for child in list(self.children)
                 if child.running or child._group_alive() or not child.done.done()]
        tasks += [t for t in _KILL_TASKS if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace + REAP_WAIT + 1.0)
        if self._tending is not None:
            self._tending.cancel()
            self._tending = None
        if _adopting:
            await _stop_adopted(self._known(), grace)
        for entry in self.background.values():
            entry.spool.close()
            entry.child.close_stdin()


async def _stop_adopted(known, grace):
    """Stop every adopted orphan and what it started: SIGTERM, SIGKILL after ``grace``, reap."""
    adopted = _adopted(known)
    if not adopted:
        return
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while True:
        for pid, exited in adopted.items():
            if not exited:
                for member in {pid, *_tree_pids(pid)}:
                    try:
                        os.kill(member, sig)
                    except OSError:
                        pass
        await asyncio.sleep(POLL)
        adopted = {pid: exited for pid, exited in _adopted(known).items() if not (exited and _reap(pid))}
        if not adopted:
            return
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                break
            sig = signal.SIGKILL
            deadline = time.monotonic() + REAP_WAIT
    log.warning("%d adopted process(es) survived SIGKILL at exit: %s", len(adopted), sorted(adopted))


# -- the tools -----------------------------------------------------------------------------

RUN_OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "exit_code": {"type": ["integer", "null"],
                      "description": "Exit status; negative: killed by that signal number"},
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "duration_ms": {"type": "number"},
        "timed_out": {"type": "boolean"},
        "truncated": {"type": "boolean"},
        "stdout_bytes": {"type": "integer", "description": "Bytes written in all, kept or not"},
        "stderr_bytes": {"type": "integer"},
    },
    "required": ["exit_code", "stdout", "stderr", "duration_ms", "timed_out", "truncated",
                 "stdout_bytes", "stderr_bytes"],
}

_SIGNALS = {name: getattr(signal, name) for name in (
    "SIGTERM", "SIGKILL", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGSTOP",
    "SIGCONT", "SIGWINCH", "SIGALRM") if hasattr(signal, name)}


def _signal_name(code):
    try:
        return signal.Signals(-code).name
    except (ValueError, TypeError):
        return f"signal {-code}"


def _parse_signal(value):
    if isinstance(value, int) and not isinstance(value, bool):
        if value in _SIGNALS.values():
            return value
    elif isinstance(value, str):
        name = value.strip().upper()
        if name.isdigit():
            return _parse_signal(int(name))
        name = name if name.startswith("SIG") else "SIG" + name
        if name in _SIGNALS:
            return _SIGNALS[name]
    raise ValueError(f"unknown signal {value!r}: use one of "
                     f"{', '.join(n[3:] for n in _SIGNALS)} (or its number)")


def _status_text(code):
    if code is None:
        return "exit status unknown"
    if code < 0:
        return f"killed by {_signal_name(code)}"
    return f"exit code {code}"


def register_process_tools(server):
    """Register run_command and the process_* tools on ``server`` (settings from
    ``server.config``); stop every child when the server stops.

    Raises policy.PolicyConfigError for settings that cannot be honoured together
    (``--shell`` with ``--allow``), and security.sandbox.SandboxError when ``--sandbox``
    cannot be honoured here (never a command less confined than asked).
    """
    from . import Context, ToolError, ToolResult, text

    cfg = server.config
    sandbox = None
    if cfg.sandbox:
        from .security.sandbox import Sandbox
        sandbox = Sandbox.from_config(cfg)
        server.on_shutdown(sandbox.close)   # after the children are stopped (callbacks run last first)
        log.info("%s", sandbox.summary())
    else:
        log.info("commands run without a sandbox (--sandbox confines them to the roots)")
        if cfg.sandbox_allow_net or cfg.sandbox_read:
            log.warning("sandbox_allow_net and sandbox_read mean nothing without --sandbox")
    server.sandbox = sandbox
    policy = Policy.from_config(cfg, sandbox)
    for spec in policy.unresolved():
        log.warning("--allow %s: no such program on PATH at start; it will match nothing", spec)
    registry = ProcessRegistry(policy, cfg.max_processes, cfg.kill_grace)
    server.processes = registry
    server.on_start(registry.start_adopting)
    server.on_shutdown(registry.shutdown)
    # What runs where, in the tasks.log record of each call that starts a program.
    started = {"sandboxed": True} if sandbox is not None else None

    def prepare(command, cwd, env):
        try:
            return policy.prepare(command, cwd, env)
        except PolicyError as exc:
            raise ToolError(str(exc)) from None

    def start(launch, on_output, stdin=False, foreground=True):
        try:
            return registry.spawn(launch, on_output, stdin=stdin, foreground=foreground)
        except (ProcessLimitError, SpawnError) as exc:
            raise ToolError(str(exc)) from None

    def lookup(id):
        try:
            return registry.get(id)
        except KeyError as exc:
            raise ToolError(exc.args[0]) from None

    run_deadline = cfg.command_timeout_max + cfg.kill_grace + REAP_WAIT + 5

    @server.tool(eager=True, timeout=run_deadline, output_schema=RUN_OUTPUT_SCHEMA,
                 annotations={"destructiveHint": True, "openWorldHint": True})
    async def run_command(command: list[str] | str, cwd: str | None = None,
                          timeout: float | None = None, stdin: str | None = None,
                          env: dict[str, str] | None = None, ctx: Context = None) -> ToolResult:
        """Run a program and return its exit status and output.

        The program runs without a shell: a string is split into words like a shell
        would (quotes, backslashes) but pipes, redirections, variables, globs and
        `;`/`&&` are refused rather than reinterpreted (unless the server runs with
        --shell). A non-zero exit status is reported, not an error; a timeout is.

        Args:
            command: The program and its arguments, as a list (preferred) or one string.
            cwd: Working directory (relative to the server's); must lie inside the server's roots.
            timeout: Seconds before the command is stopped (its whole process group).
            stdin: Text written to the program's standard input (otherwise it reads nothing).
            env: Extra environment variables for the program.
        """
        launch = prepare(command, cwd, env)
        limit = _timeout(timeout, cfg.command_timeout, cfg.command_timeout_max, ToolError)
        out, err = Capture(cfg.max_output), Capture(cfg.max_output)
        progress = None
        if ctx is not None and ctx.progress_token is not None:
            progress = ProgressLines(ctx, asyncio.get_running_loop())
        sinks = (None, out.feed, err.feed)
        if progress is None:
            def on_output(stream, data):
                sinks[stream](data)
        else:
            def on_output(stream, data):
                sinks[stream](data)
                progress.feed(stream, data)
        child = start(launch, on_output, stdin=stdin is not None)
        loop = child.loop
        feeder = None
        if stdin is not None:
            feeder = loop.create_task(_feed_stdin(child, stdin.encode()))
        timer = loop.call_later(limit, _on_timeout, child)
        try:
            # Shielded: cancelling this call must not cancel the child's own futures.
            await asyncio.shield(child.done)
            if child.timed_out:
                await asyncio.shield(child.kill(child.grace))   # reaped before we answer
        except asyncio.CancelledError:
            child.kill(cfg.kill_grace)           # finishes on its own; no answer is sent
            raise
        finally:
            timer.cancel()
            if feeder is not None and not feeder.done():
                feeder.cancel()
            if progress is not None:
                progress.close()
        duration = (child.ended or time.monotonic()) - child.started
        if ctx is not None:
            ctx.request.detail = {"exit_code": child.returncode, **(started or {})}   # for tasks.log
            if child.timed_out:
                ctx.timed_out(limit)
        structured = {"exit_code": child.returncode, "stdout": out.text(), "stderr": err.text(),
                      "duration_ms": round(duration * 1000, 3), "timed_out": child.timed_out,
                      "truncated": out.truncated or err.truncated,
                      "stdout_bytes": out.total, "stderr_bytes": err.total}
        if child.timed_out:
            how = "SIGTERM" if child.kill_signal == signal.SIGTERM else \
                f"SIGTERM, then SIGKILL after {child.grace:g} s"
            head = (f"Timed out after {limit:g} s: the command and everything it started were "
                    f"stopped ({how}); {_status_text(child.returncode)}.")
        else:
            head = f"{_status_text(child.returncode)} ({duration:.3f} s)"
        return ToolResult([text(_run_text(head, structured))], structured, is_error=child.timed_out)

    @server.tool(eager=True, annotations={"destructiveHint": True, "openWorldHint": True})
    async def process_start(command: list[str] | str, cwd: str | None = None,
                            env: dict[str, str] | None = None, ctx: Context = None) -> dict:
        """Start a program in the background and return its id; read its output with process_read.

        Same rules as run_command (no shell unless the server has --shell). Its stdin
        is a pipe fed by process_write; stdout and stderr are kept together, in the
        order they arrive.

        Args:
            command: The program and its arguments, as a list (preferred) or one string.
            cwd: Working directory; must lie inside the server's roots.
            env: Extra environment variables for the program.
        """
        launch = prepare(command, cwd, env)
        try:
            entry = registry.start_background(launch)
        except (ProcessLimitError, SpawnError) as exc:
            raise ToolError(str(exc)) from None
        if started and ctx is not None:
            ctx.request.detail = started
        return {"id": entry.id, "pid": entry.child.pid}

    @server.tool(eager=True, annotations={"readOnlyHint": True, "openWorldHint": False})
    async def process_read(id: str, offset: int | None = None, max_bytes: int = 65536) -> dict:
        """Read a background process's output from an offset, and whether it is still running.

        Output is numbered in bytes from 0. Without an offset, reading continues where
        the previous process_read of this process stopped. Page through a large output
        by passing next_offset back as offset until next_offset equals total_bytes.

        Args:
            id: The id process_start returned.
            offset: Byte offset to read from (default: where the last read stopped).
            max_bytes: Most bytes to return (up to the server's max_output).
        """
        entry = lookup(id)
        spool = entry.spool
        if max_bytes < 1:
            raise ToolError("max_bytes must be at least 1")
        if offset is not None and offset < 0:
            raise ToolError("offset must be 0 or more")
        wanted = entry.cursor if offset is None else offset
        start, data = spool.read(wanted, min(max_bytes, max(cfg.max_output, 1)))
        # Never end inside a UTF-8 character while more is coming: it is sent whole next time.
        if data and start + len(data) < spool.total:
            data = data[:_utf8_boundary(data)] or data
        next_offset = start + len(data)
        entry.cursor = next_offset
        child = entry.child
        result = {"id": id, "output": data.decode("utf-8", "replace"), "offset": start,
                  "next_offset": next_offset, "total_bytes": spool.total,
                  "dropped_bytes": max(0, start - wanted), "running": child.running,
                  "status": entry.status(), "exit_code": child.returncode}
        return result

    @server.tool(annotations={"destructiveHint": True, "openWorldHint": True})
    async def process_write(id: str, data: str, close: bool = False) -> dict:
        """Write text to a background process's standard input.

        Args:
            id: The id process_start returned.
            data: The text to write (add "\\n" to end a line).
            close: Close its stdin afterwards (the program then sees end of input).
        """
        entry = lookup(id)
        try:
            written = await entry.child.write_stdin(data.encode(), close=close)
        except ValueError:
            raise ToolError(f"{id}: its stdin is already closed") from None
        except BrokenPipeError:
            entry.child.close_stdin()
            raise ToolError(f"{id}: the process no longer reads its stdin "
                            f"({entry.status()})") from None
        return {"id": id, "written": written, "closed": entry.child.stdin_fd is None}

    @server.tool(annotations={"destructiveHint": True, "openWorldHint": False})
    async def process_kill(id: str, signal: str | None = None) -> dict:
        """Stop a background process and everything it started, or send it a signal.

        Without a signal: SIGTERM to its whole process tree, SIGKILL after the grace
        period, and wait until it is gone. With one (e.g. "INT", "HUP", "USR1",
        "STOP", "CONT"): send only that, to the whole tree.

        Args:
            id: The id process_start returned.
            signal: A signal name or number to send instead of stopping it.
        """
        entry = lookup(id)
        child = entry.child
        if signal is None:
            await asyncio.shield(child.kill(cfg.kill_grace))
            sent = "SIGTERM" if child.kill_signal is None or child.kill_signal == _SIGNALS["SIGTERM"] \
                else "SIGTERM, SIGKILL"
        else:
            try:
                signum = _parse_signal(signal)
            except ValueError as exc:
                raise ToolError(str(exc)) from None
            child.send_signal(signum)
            sent = _signal_name(-signum)
        return {"id": id, "pid": child.pid, "signal": sent, "running": child.running,
                "status": entry.status(), "exit_code": child.returncode}

    @server.tool(eager=True, annotations={"readOnlyHint": True, "openWorldHint": False})
    async def process_list() -> dict:
        """List the background processes: status, exit code, runtime, command, output size."""
        return {"processes": [entry.info() for entry in registry.background.values()],
                "running": registry.running, "limit": registry.max_processes}

    if sandbox is not None:   # the model learns where the wall is before it hits it
        for name in ("run_command", "process_start"):
            server.tools[name].description += sandbox.tool_note()
    return registry


def _timeout(value, default, maximum, error):
    if value is None:
        return min(default, maximum) if maximum else default
    if not value > 0:
        raise error("timeout must be more than 0 seconds")
    if maximum and value > maximum:
        raise error(f"timeout {value:g} s is above the server's maximum of {maximum:g} s "
                    f"(command_timeout_max)")
    return float(value)


def _on_timeout(child):
    if child.returncode is None or not child.done.done():
        child.timed_out = child.returncode is None
        if child.timed_out:
            child.kill(child.grace)


async def _feed_stdin(child, data):
    try:
        await child.write_stdin(data, close=True)
    except (BrokenPipeError, ValueError, OSError):
        child.close_stdin()   # the program did not read it all: that is its business


def _utf8_boundary(data):
    """Length of ``data`` without a UTF-8 sequence cut off at its end."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte < 0x80:
            return end
        if byte >= 0xC0:      # a lead byte: is its sequence complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return end if back >= need else end - back
    return end


def _run_text(head, structured):
    parts = [head]
    for name in ("stdout", "stderr"):
        body = structured[name]
        if body:
            parts.append(f"--- {name} ---\n{body.rstrip(chr(10))}")
    if len(parts) == 1:
        parts.append("(no output)")
    return "\n".join(parts)
