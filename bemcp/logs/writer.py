"""The server's side of the logs: collecting records cheaply and handing them on.

Threads and what each may do:

- the event loop: the core keeps a C record and the request line of each tool
  call as it ends (``Dispatcher.keep_finished``: no Python call, no object made);
  a timer every few milliseconds measures the loop's lag and takes the rows as
  two byte strings, so nothing per request is left for another thread to touch;
- any thread: ``record(kind, fields)`` (forensics events, crashes) appends to a deque;
- the feeder thread (``bemcp-logs``): sends frames to the writer process, writes
  crash reports, assembles perf samples; it never formats a task record.
"""

import faulthandler
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from time import monotonic

from orjson import OPT_NON_STR_KEYS, dumps

from . import default_log_dir
from .crash import (CrashReporter, close_fatal_file, crash_filename, open_fatal_file,
                    plain, summarize_crash, unseen_crashes)
from .files import MAX_FILE, MAX_TOTAL, LogFiles
from .sink import COUNT, FRAME, Sink
from .stderr import install_logging, install_pump, pump

log = logging.getLogger("bemcp.logs")

PERF_INTERVAL = 5.0      # seconds between perf.log samples
TICK_BUSY = 0.002        # loop timer while requests finish: lag sample + flush (small batches: no big buffers)
TICK_IDLE = 0.1          # ... while nothing finishes
FEED_BUSY = 0.005        # feeder wake-ups while rows come in: little held, each batch freed soon
FEED_IDLE = 0.1          # ... while nothing does
OUTBOX_LIMIT = 32 << 20  # bytes of task rows waiting for the writer before new ones are dropped
EVENTS_LIMIT = 10000     # forensics records waiting
RETRY_SECONDS = 30.0     # an unwritable directory is tried again this often
STOP_SECONDS = 3.0       # the most shutdown waits for the feeder and writer process
IOV_MAX = 1024           # pieces per writev (Linux's limit)


class Logs:
    """Logs for one server (see the package doc). Built by ``setup_logging(server)``.

    Options: ``directory`` (overrides config.log_dir), ``perf_interval`` (seconds),
    ``max_file``/``max_total`` (bytes: rotation size, cap on the directory),
    ``in_process`` (write from a thread instead of the writer process).
    """

    def __init__(self, server, directory=None, *, perf_interval=PERF_INTERVAL,
                 max_file=MAX_FILE, max_total=MAX_TOTAL, in_process=False):
        cfg = server.config
        self.server = server
        self.enabled = bool(cfg.log_files)
        self.directory = os.path.abspath(os.path.expanduser(directory or cfg.log_dir or default_log_dir()))
        self.perf_interval = perf_interval
        self.max_file = max_file
        self.max_total = max_total
        self.in_process = in_process
        self.pid = os.getpid()
        self.writer = None            # "process", "thread", or None (not writing)
        self.writer_pid = None
        self.dropped = 0              # records dropped on this side (outbox full, directory unwritable)
        self.files = LogFiles(self.directory, max_file, max_total, warn=self._warn)
        self.reporter = CrashReporter(server, self.files)
        self._outbox = deque()        # (kind, rows, parts) for the writer
        self._queued = 0              # bytes put in the outbox (by the loop's thread only)
        self._taken = 0               # bytes taken out (by the feeder thread only)
        self._events = deque()        # forensics records (dicts)
        self._crashes = deque()       # (file name, report) to write
        self._crash_names = set()
        self._lags = []
        self._due = 0.0
        self._tick_handle = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._feeder = None
        self._feeding = False
        self._sink = None
        self._unwritable_until = 0.0
        self._fatal = (None, None)
        self._hooks = None
        self._dropped_events = 0
        server.logs = self
        install_logging(cfg.log_level)
        if self.enabled:
            server.recorders.append(self.record)
            server.keep_finished = True
        server.on_start(self._start)
        server.on_shutdown(self._stop)
        server.resource("bemcp://logs", name="logs",
                        description="Where bemcp's logs are and what was dropped")(self.status)

    # -- lifecycle ----------------------------------------------------------------------

    def _start(self):
        install_pump()
        self.loop = self.server.loop
        self._faulthandler_before = faulthandler.is_enabled()
        if not self.enabled:
            faulthandler.enable(file=sys.__stderr__ or 2, all_threads=True)
            return
        self._started_at = time.time()
        self._fatal = open_fatal_file(self.directory, self._started_at)
        faulthandler.enable(file=self._fatal[0] or sys.__stderr__ or 2, all_threads=True)
        self._install_hooks()
        self._due = monotonic() + TICK_IDLE
        self._tick_handle = self.loop.call_later(TICK_IDLE, self._tick)
        self._feeding = True
        self._feeder = threading.Thread(target=self._feed, name="bemcp-logs", daemon=True)
        self._feeder.start()

    def _stop(self):
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
            self._flush_finished()
            self.server.dispatcher.keep_finished(False)
        if self._feeder is not None:
            self._stopping.set()
            self._wake.set()
            self._feeder.join(STOP_SECONDS)
        self._uninstall_hooks()
        if getattr(self, "_faulthandler_before", False):
            faulthandler.enable(file=sys.__stderr__ or 2, all_threads=True)   # as it was (e.g. pytest's)
        else:
            faulthandler.disable()
        if self._fatal[0] is not None:
            close_fatal_file(*self._fatal)
            self._fatal = (None, None)
        pump().drain(1.0)

    # -- the event loop's part: cheap, and nothing per request ---------------------------------

    def _tick(self):
        now = monotonic()
        self._lags.append(now - self._due)
        busy = self._flush_finished()
        delay = TICK_BUSY if busy else TICK_IDLE
        self._due = now + delay
        self._tick_handle = self.loop.call_later(delay, self._tick)

    def _flush_finished(self):
        """Queue the tool calls finished since the last tick for the writer; False if none."""
        taken = self.server.dispatcher.take_finished()
        if taken is None:
            return False
        count, records, lines, details = taken
        if self._queued - self._taken >= OUTBOX_LIMIT:   # the writer is not keeping up
            self.dropped += count
            return True
        if details:   # before the T frame they belong to
            self._outbox.append((b"D", 0, (dumps(details, default=repr, option=OPT_NON_STR_KEYS),)))
        self._queued += len(records) + len(lines)
        self._outbox.append((b"T", count, (COUNT.pack(count), records, lines)))
        return True

    # -- events and crashes (any thread) ------------------------------------------------------

    def record(self, kind, fields):
        """A recorder for ``server.recorders``: one forensics line; a crash also gets a report."""
        when = time.time()
        if kind == "crash":
            self._crash(fields, when)
            return
        event = {"time": round(when, 3), "pid": self.pid, "kind": kind}
        for key, value in fields.items():
            event.setdefault(key, plain(value))
        self._queue_event(event)

    def _queue_event(self, event):
        if len(self._events) < EVENTS_LIMIT:
            self._events.append(event)
        else:
            self._dropped_events += 1

    def _crash(self, fields, when, sync=False):
        exc = fields.get("exc")
        req = fields.get("request")
        where = fields.get("where") or ""
        name = None
        if self.reporter.allowed(monotonic()):
            report = self.reporter.build(exc, req, where, when)
            name = self._unique_name(when)
            report["file"] = name
            if self._feeding and not sync:
                self._crashes.append((name, report))
                self._wake.set()
            elif self.reporter.write(name, report) is None:
                name = None
        event = {"time": round(when, 3), "pid": self.pid, "kind": "crash", "where": where,
                 "exception": f"{type(exc).__name__}: {exc}"[:500] if exc is not None else None,
                 "request_id": plain(getattr(req, "id", None)), "tool": getattr(req, "tool", None),
                 "report": name}
        if name is None:
            event["suppressed"] = True
        if sync:   # O_APPEND: safe alongside the writer process
            self.files.append("forensics", dumps(event, default=repr) + b"\n")
        else:
            self._queue_event(event)

    def _unique_name(self, when):
        name = crash_filename(when, self.pid)
        while name in self._crash_names:
            when += 0.001
            name = crash_filename(when, self.pid)
        self._crash_names.add(name)
        return name

    # -- hooks: exceptions that escape ----------------------------------------------------------

    def _install_hooks(self):
        server = self.server
        previous_thread_hook = threading.excepthook
        previous_sys_hook = sys.excepthook

        def thread_hook(args):
            if args.exc_type is not SystemExit:
                name = args.thread.name if args.thread is not None else "?"
                server.record("crash", exc=args.exc_value, request=None, where=f"thread {name}")
            previous_thread_hook(args)

        def sys_hook(exc_type, exc, tb):
            if not issubclass(exc_type, KeyboardInterrupt):
                # The process is going down: write the report now, not via the feeder.
                self._crash({"exc": exc, "request": None, "where": "main thread"}, time.time(), sync=True)
            previous_sys_hook(exc_type, exc, tb)

        loop = self.loop
        previous_loop_handler = loop.get_exception_handler()

        def loop_handler(loop, context):
            exc = context.get("exception")
            if isinstance(exc, Exception):
                server.record("crash", exc=exc, request=None,
                              where=f"event loop: {context.get('message') or 'unhandled exception'}")
            if previous_loop_handler is not None:
                previous_loop_handler(loop, context)
            else:
                loop.default_exception_handler(context)

        threading.excepthook = thread_hook
        sys.excepthook = sys_hook
        loop.set_exception_handler(loop_handler)
        self._hooks = (thread_hook, previous_thread_hook, sys_hook, previous_sys_hook)

    def _uninstall_hooks(self):
        if self._hooks is None:
            return
        thread_hook, previous_thread_hook, sys_hook, previous_sys_hook = self._hooks
        if threading.excepthook is thread_hook:
            threading.excepthook = previous_thread_hook
        if sys.excepthook is sys_hook:
            sys.excepthook = previous_sys_hook
        self._hooks = None

    # -- the feeder thread ---------------------------------------------------------------------

    def _feed(self):
        try:
            self._announce_crashes()
            self._open_sink()
            # First in forensics.log, before whatever was recorded while the writer started.
            self._events.appendleft({"time": round(self._started_at, 3), "pid": self.pid, "kind": "start",
                                     "versions": plain(self.server.describe()), "log_dir": self.directory,
                                     "writer": self.writer, "writer_pid": self.writer_pid})
            next_perf = monotonic() + self.perf_interval
            last_perf = monotonic()
            busy = False
            while True:
                stopping = self._stopping.is_set()
                if not stopping:
                    self._wake.wait(FEED_BUSY if busy else FEED_IDLE)
                    self._wake.clear()
                    stopping = self._stopping.is_set()
                try:
                    self._write_crashes()
                    now = monotonic()
                    if stopping:
                        self._queue_event(self._stop_event())
                    if now >= next_perf or stopping:
                        perf = self._perf_sample(now - last_perf)
                        last_perf = now
                        next_perf = now + self.perf_interval
                    else:
                        perf = None
                    busy = self._send_all(perf)
                except Exception as exc:   # the logs must never take the server down
                    self._warn(f"bemcp: log writer error: {type(exc).__name__}: {exc}")
                if stopping:
                    break
        finally:
            self._feeding = False
            self._close_sink()
            self._write_crashes()

    def _send_all(self, perf):
        """Hand everything waiting to the writer; True if there were task rows."""
        if self._sink is None and monotonic() >= self._unwritable_until:
            self._open_sink()
        frames = []
        outbox, events = self._outbox, self._events
        busy = bool(outbox)
        for _ in range(len(events)):
            frames.append((b"E", 1, (dumps(events.popleft(), default=repr, option=OPT_NON_STR_KEYS),)))
        for _ in range(len(outbox)):
            frame = outbox.popleft()
            if frame[0] == b"T":
                self._taken += len(frame[2][1]) + len(frame[2][2])
            frames.append(frame)
        if perf is not None:
            frames.append((b"P", 0, (dumps(perf),)))
        if self._sink is None:
            self.dropped += sum(rows for kind, rows, _ in frames if kind != b"P")
            return busy
        offset = time.time() - monotonic()
        unsent = self._sink.send(frames, offset)
        if unsent:
            # The writer process is gone: carry on in this thread.
            self._fallback_to_thread()
            try:
                self._sink.send(unsent, offset)
            except OSError:
                self.dropped += sum(rows for _, rows, _ in unsent)
        return busy

    def _open_sink(self):
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            if not os.access(self.directory, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied", self.directory)
        except OSError as exc:
            self._unwritable_until = monotonic() + RETRY_SECONDS
            if not self.files.warned:
                self.files.warned = True
                self._warn(f"bemcp: cannot write logs in {self.directory}: {exc.strerror or exc}; "
                           f"serving on without them (dropped records are counted)")
            return
        if not self.in_process:
            try:
                self._sink = ProcessSink(self.directory, self.max_file, self.max_total)
                self.writer, self.writer_pid = "process", self._sink.pid
                return
            except OSError:
                pass
        self._sink = Sink(self.files, self.pid)
        self.writer, self.writer_pid = "thread", None

    def _fallback_to_thread(self):
        lost = self._sink
        self._sink = Sink(self.files, self.pid)
        self.writer, self.writer_pid = "thread", None
        if isinstance(lost, ProcessSink):
            lost.close(0.1)
            self._queue_event({"time": round(time.time(), 3), "pid": self.pid, "kind": "log_writer_lost",
                               "writer_pid": lost.pid, "exit_code": lost.proc.poll(),
                               "action": "writing logs from a thread of the server"})

    def _close_sink(self):
        if self._sink is not None:
            try:
                self._sink.close()
            except Exception:
                pass
            self._sink = None

    def _write_crashes(self):
        crashes = self._crashes
        for _ in range(len(crashes)):
            name, report = crashes.popleft()
            self.reporter.write(name, report)

    def _perf_sample(self, interval):
        lags, self._lags = self._lags, []
        lags.sort()
        dispatcher = self.server.dispatcher
        sample = {"time": round(time.time(), 3), "pid": self.pid, "interval_s": round(interval, 3),
                  "lag_p50_ms": _ms(_pick(lags, 50)), "lag_p99_ms": _ms(_pick(lags, 99)),
                  "lag_max_ms": _ms(lags[-1] if lags else None),
                  "in_flight": len(dispatcher.table) if dispatcher is not None else 0,
                  "queued": len(getattr(dispatcher, "queue", ())) if dispatcher is not None else 0,
                  "dropped": self.dropped + self._dropped_events,
                  "stderr_dropped_bytes": pump().dropped_bytes}
        return sample

    def _stop_event(self):
        counts = getattr(getattr(self.server.dispatcher, "table", None), "counts", None)
        event = {"time": round(time.time(), 3), "pid": self.pid, "kind": "stop",
                 "dropped": self.dropped + self._dropped_events,
                 "stderr_dropped_bytes": pump().dropped_bytes,
                 "crash_reports": self.reporter.written, "crash_reports_suppressed": self.reporter.suppressed}
        if counts is not None:
            from .._core import STATE_NAMES
            event["requests"] = {name: n for name, n in zip(STATE_NAMES, counts) if n and name != "running"}
        return event

    def _announce_crashes(self):
        names = unseen_crashes(self.directory, self.pid)
        if not names:
            return
        lines = [f"bemcp: {len(names)} crash report{'s' if len(names) > 1 else ''} you have not seen "
                 f"(in {self.directory}):"]
        for name in names[-10:]:
            lines.append(f"  {name}: {summarize_crash(self.directory, name)}")
        if len(names) > 10:
            lines.append(f"  ... and {len(names) - 10} older")
        lines.append("bemcp: `bemcp logs` summarises them.")
        pump().write("\n".join(lines) + "\n")

    def _warn(self, message):
        pump().write(message + "\n")

    # -- status ----------------------------------------------------------------------------

    def status(self):
        """Where the logs are and what was lost (the ``bemcp://logs`` resource)."""
        return {"log_dir": self.directory, "log_files": self.enabled, "writer": self.writer,
                "writer_pid": self.writer_pid,
                "dropped_records": self.dropped + self._dropped_events + self.files.dropped,
                "stderr_dropped_bytes": pump().dropped_bytes,
                "crash_reports_written": self.reporter.written,
                "crash_reports_suppressed": self.reporter.suppressed,
                "directory_error": str(self.files.error) if self.files.error else None}


class ProcessSink:
    """The writer process, fed through a pipe (frames as in bemcp.logs.sink)."""

    def __init__(self, directory, max_file, max_total):
        read_fd, self.fd = os.pipe()   # both ends close-on-exec: tools' children never inherit them
        try:
            _grow_pipe(self.fd)
            env = dict(os.environ)
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bemcp.logs.sink", directory, str(os.getpid()),
                 str(max_file), str(max_total)],
                stdin=read_fd, stdout=subprocess.DEVNULL, stderr=None, env=env,
                close_fds=True, start_new_session=True)
        except BaseException:
            os.close(self.fd)
            raise
        finally:
            os.close(read_fd)
        from ..processes import leave_alone
        leave_alone(self.proc.pid)   # its own session, waited for here: not an adopted orphan
        self.pid = self.proc.pid

    def send(self, frames, offset):
        """Write ``frames`` ((kind, rows, parts), ...) in as few system calls as the pipe takes.

        Few calls matter: each time this thread returns from one it must take the GIL
        back from the busy event loop. It blocks (without the GIL) while the pipe is
        full. Returns the frames not wholly written if the writer process is gone.
        """
        iov = []
        owner = []   # the frame each piece belongs to
        for i, (kind, _, parts) in enumerate(frames):
            iov.append(FRAME.pack(kind, offset, sum(map(len, parts))))
            iov.extend(parts)
            owner.extend([i] * (len(parts) + 1))
        done = 0
        try:
            while done < len(iov):
                written = os.writev(self.fd, iov[done:done + IOV_MAX])
                while done < len(iov) and written >= len(iov[done]):
                    written -= len(iov[done])
                    done += 1
                if written:
                    iov[done] = memoryview(iov[done])[written:]
        except OSError:
            return frames[owner[done]:]
        return []

    def close(self, timeout=STOP_SECONDS - 0.5):
        if self.fd is not None:
            try:
                os.close(self.fd)   # EOF: the writer finishes what it has and exits
            except OSError:
                pass
            self.fd = None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _grow_pipe(fd, size=1 << 20):
    """A bigger pipe buffer (Linux) absorbs bursts while the writer catches up."""
    try:
        import fcntl
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (ImportError, OSError):
        pass





def _pick(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


def _ms(seconds):
    return None if seconds is None else round(max(0.0, seconds) * 1000.0, 2)

