"""Logs: collects what the log files hold (finished tool calls, forensics events, crashes,
perf samples) inside the server and hands it to the threads that write it, off the event loop.

Threads and what each may do:

- the event loop: the core keeps a C record and the request line of each tool
  call as it ends (``Dispatcher.keep_finished``: no Python call, no object made);
  a timer every few milliseconds measures the loop's lag and hands the rows, as
  two byte strings, to the core's ``TaskWriter``;
- the core's tasks.log writer: a native thread (the pure twins: a Python thread)
  that formats, digests and appends the rows, never waiting for the GIL on its way;
- any thread: ``record(kind, fields)`` (forensics events, crashes) appends to a deque;
- the feeder thread (``bemcp-logs``): appends forensics events, writes crash reports
  and perf samples; all of these are few.
"""

import faulthandler
import logging
import os
import struct
import sys
import threading
import time
from collections import deque
from time import monotonic

from orjson import OPT_NON_STR_KEYS, dumps

from .._core import FINISHED_ROW
from ..percentiles import percentile
from . import default_log_dir
from .crash import (CrashReporter, close_fatal_file, crash_filename, open_fatal_file,
                    plain, summarize_crash, unseen_crashes)
from .files import MAX_FILE, MAX_TOTAL, LogFiles, digest_key
from .stderr import install_logging, install_pump, pump

log = logging.getLogger("bemcp.logs")

# A batch of finished calls as Dispatcher.take_finished gives it: the count (big-endian,
# as TaskWriter's payload starts), then that many records (the core's FinishedRow, in the
# server's byte order).
COUNT = struct.Struct("!I")
RECORD = FINISHED_ROW

PERF_INTERVAL = 5.0      # seconds between perf.log samples
TICK_BUSY = 0.002        # loop timer while requests finish: lag sample + hand-off (small batches)
TICK_IDLE = 0.1          # ... while nothing finishes
FEED_WAKE = 0.1          # the feeder's wake-ups for forensics events
CALL_LOG_LIMIT = 4 << 20  # bytes of tool-call rows (tasks.log) waiting for the writer before the loop waits for it
                         # (~25k calls, ~90 ms at full speed: most stalls of the writer thread on a
                         # busy machine pass without a wait, and the server's RSS stays bounded)
EVENTS_LIMIT = 10000     # forensics records waiting
STOP_SECONDS = 3.0       # the most shutdown waits for the feeder


class Logs:
    """Logs for one server (see the package doc). Built by ``setup_logging(server)``.

    Options: ``directory`` (overrides config.log_dir), ``perf_interval`` (seconds),
    ``max_file``/``max_total`` (bytes: rotation size, cap on the directory).
    """

    def __init__(self, server, directory=None, *, perf_interval=PERF_INTERVAL,
                 max_file=MAX_FILE, max_total=MAX_TOTAL):
        cfg = server.config
        self.server = server
        self.enabled = bool(cfg.log_files)
        self.directory = os.path.abspath(os.path.expanduser(directory or cfg.log_dir or default_log_dir()))
        self.perf_interval = perf_interval
        self.max_file = max_file
        self.max_total = max_total
        self.pid = os.getpid()
        self.writer = None            # what writes tasks.log: "native thread", "thread", or None
        self._dir_warned = False
        self.files = LogFiles(self.directory, max_file, max_total, warn=self._warn_dir)
        self.reporter = CrashReporter(server, self.files)
        self._call_log = None         # the core's TaskWriter: writes tasks.log (tool calls)
        self._files_lock = threading.Lock()   # the feeder and a dying main thread share self.files
        self._events = deque()        # forensics records (dicts)
        self._crashes = deque()       # (file name, report) to write
        self._crash_names = set()
        self._lags = []
        self._due = 0.0
        self._tick_handle = None
        self._wake = None              # the feeder's wake-up (a _Waker); the tasks.log writer pokes it too
        self._stopping = threading.Event()
        self._feeder = None
        self._feeding = False
        self._calls = 0               # for perf.log: tool calls and errors since the last sample
        self._errors = 0
        self._cpu = None              # (monotonic, process CPU seconds) at the last sample
        self._writer_busy = 0.0         # the writer thread's busy seconds at the last sample
        self._writer_wait = (0.0, 0)    # the loop's seconds and waits on a full queue, at the last sample
        self._fatal = (None, None)
        self._hooks = None
        self._dropped_events = 0
        install_logging(cfg.log_level)
        if self.enabled:
            server.recorders.append(self.record)
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
        self._wake = _Waker()
        self._open_call_log()
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
            self.server.keep_finished_calls(False)
        if self._call_log is not None:
            self._call_log.close()   # everything handed over is written
        if self._feeder is not None:
            self._stopping.set()
            self._wake.set()
            self._feeder.join(STOP_SECONDS)
            if not self._feeder.is_alive():
                self._wake.close()
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
        """Hand the tool calls finished since the last tick to the writer; False if none."""
        taken = self.server.dispatcher.take_finished()
        if taken is None:
            return False
        count, records, lines, details = taken
        self._call_log.submit(count, records, lines, details, time.time() - monotonic())
        return True

    def _open_call_log(self):
        from .. import _core
        files = LogFiles(self.directory, self.max_file, self.max_total, warn=self._warn_dir)
        self._call_log = _core.TaskWriter(files, self.pid, digest_key(self.directory), CALL_LOG_LIMIT,
                                       self._wake.fileno())
        self.writer = "native thread" if _core.USE_EXTENSIONS else "thread"

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
        if sync:
            with self._files_lock:
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
            # First in forensics.log, before whatever was recorded while the server started.
            self._events.appendleft({"time": round(self._started_at, 3), "pid": self.pid, "kind": "start",
                                     "versions": plain(self.server.describe()), "log_dir": self.directory,
                                     "writer": self.writer})
            next_perf = monotonic() + self.perf_interval
            last_perf = monotonic()
            self._cpu = (last_perf, sum(os.times()[:2]))
            while True:
                stopping = self._stopping.is_set()
                if not stopping:
                    self._wake.wait(FEED_WAKE)
                    stopping = self._stopping.is_set()
                try:
                    if self._call_log is not None:
                        self._call_log.care()   # rotation and the cap, for the writer thread
                    self._write_crashes()
                    now = monotonic()
                    if stopping:
                        self._queue_event(self._stop_event())
                    self._write_events()
                    if now >= next_perf or stopping:
                        self._write_perf(now - last_perf)
                        last_perf = now
                        next_perf = now + self.perf_interval
                except Exception as exc:   # the logs must never take the server down
                    self._warn(f"bemcp: log feeder error: {type(exc).__name__}: {exc}")
                if stopping:
                    break
        finally:
            self._feeding = False
            self._write_crashes()
            with self._files_lock:
                self.files.close()

    def _write_events(self):
        events = self._events
        lines = [dumps(events.popleft(), default=repr, option=OPT_NON_STR_KEYS) for _ in range(len(events))]
        if lines:
            with self._files_lock:
                self.files.append("forensics", b"\n".join(lines) + b"\n", len(lines))

    def _write_perf(self, interval):
        sample = self._perf_sample(interval)
        with self._files_lock:
            self.files.append("perf", dumps(sample) + b"\n")

    def _write_crashes(self):
        crashes = self._crashes
        for _ in range(len(crashes)):
            name, report = crashes.popleft()
            self.reporter.write(name, report)

    def _perf_sample(self, interval):
        from ..watchdog import sample_memory
        lags, self._lags = self._lags, []
        lags.sort()
        dispatcher = self.server.dispatcher
        calls, errors, _ = self._call_log.stats() if self._call_log is not None else (0, 0, 0)
        sample = {"time": round(time.time(), 3), "pid": self.pid, "interval_s": round(interval, 3),
                  "lag_p50_ms": _ms(percentile(lags, 50)), "lag_p99_ms": _ms(percentile(lags, 99)),
                  "lag_max_ms": _ms(lags[-1] if lags else None),
                  "in_flight": len(dispatcher.table) if dispatcher is not None else 0,
                  "queued": len(getattr(dispatcher, "queue", ())) if dispatcher is not None else 0}
        try:
            rss, children, child_rss = sample_memory()
            sample.update(rss=rss, rss_children=child_rss, children=children)
        except Exception:
            pass
        now, cpu = monotonic(), sum(os.times()[:2])
        if self._cpu is not None:
            sample["cpu_pct"] = round(100.0 * (cpu - self._cpu[1]) / max(now - self._cpu[0], 1e-3), 1)
        self._cpu = (now, cpu)
        sample["threads"] = threading.active_count() if not os.path.isdir("/proc/self/task") \
            else len(os.listdir("/proc/self/task"))
        sample.update(calls_per_s=round(calls / max(interval, 1e-3), 1), errors=errors,
                      log_queued_bytes=self._call_log.queued if self._call_log is not None else 0,
                      **self._writer_load(interval),
                      dropped=self.dropped, log_dropped=self.files.dropped,
                      stderr_dropped_bytes=pump().dropped_bytes)
        return sample

    def _writer_load(self, interval):
        """The tasks.log writer thread's busy share of the interval (%), and how long the
        loop waited in it for a full queue to drain (ms, and how many times)."""
        if self._call_log is None:
            return {}
        writer = self._call_log
        busy, waited, waits = writer.busy_seconds, writer.wait_seconds, writer.waits
        share = (busy - self._writer_busy) * 100.0 / max(interval, 1e-3)
        self._writer_busy = busy
        before, self._writer_wait = self._writer_wait, (waited, waits)
        return {"log_writer_busy_pct": round(share, 1),
                "log_wait_ms": round((waited - before[0]) * 1e3, 1), "log_waits": waits - before[1]}

    @property
    def dropped(self):
        """Records that never reached the disk: task rows and forensics events."""
        return (self._call_log.dropped if self._call_log is not None else 0) + self._dropped_events

    def _stop_event(self):
        counts = getattr(getattr(self.server.dispatcher, "table", None), "counts", None)
        event = {"time": round(time.time(), 3), "pid": self.pid, "kind": "stop",
                 "dropped": self.dropped,
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

    def _warn_dir(self, message):
        # The directory's trouble, once: tasks.log's writer has its own LogFiles.
        if not self._dir_warned:
            self._dir_warned = True
            self._warn(message)

    def _warn(self, message):
        pump().write(message + "\n")

    # -- status ----------------------------------------------------------------------------

    def status(self):
        """Where the logs are and what was lost (the ``bemcp://logs`` resource)."""
        return {"log_dir": self.directory, "log_files": self.enabled, "writer": self.writer,
                "dropped_records": self.dropped + self.files.dropped,
                "stderr_dropped_bytes": pump().dropped_bytes,
                "crash_reports_written": self.reporter.written,
                "crash_reports_suppressed": self.reporter.suppressed,
                "directory_error": str(self.files.error) if self.files.error else None}


class _Waker:
    """A wake-up for the feeder thread that a native thread can give without the GIL:
    a byte down a non-blocking pipe."""

    def __init__(self):
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def fileno(self):
        """The end to write a byte to."""
        return self._w

    def set(self):
        try:
            os.write(self._w, b"w")
        except (BlockingIOError, OSError):
            pass   # full: a wake-up is pending anyway

    def wait(self, timeout):
        import select
        ready, _, _ = select.select([self._r], [], [], timeout)
        if ready:
            try:
                while os.read(self._r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass

    def close(self):
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


def _ms(seconds):
    return None if seconds is None else round(max(0.0, seconds) * 1000.0, 2)

