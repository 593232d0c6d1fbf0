"""A stderr that never blocks the server, and stdlib logging on top of it.

A client that spawns bemcp and never reads its stderr leaves a pipe that fills
after 64 KiB; a plain ``print()`` or log call would then block whatever thread
made it, the event loop included. The pump takes every write into a bounded
queue that one background thread copies to fd 2: when the reader stalls, the
thread blocks, the queue fills, and further output is dropped and counted, with
a note once the pipe drains again.

The stdio transport points fd 1 and ``sys.stdout`` at stderr (fd 1 is not the
protocol's), so ``sys.stdout`` and ``sys.stderr`` both become the pump while serving.
"""

import atexit
import io
import logging
import os
import sys
import threading
from collections import deque

PENDING_LIMIT = 1 << 20      # bytes queued for stderr before output is dropped
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StderrPump(io.TextIOBase):
    """A text stream whose ``write`` queues and returns at once (see the module doc)."""

    def __init__(self, fd=2, limit=PENDING_LIMIT):
        super().__init__()
        self.fd = fd
        self.limit = limit
        self.dropped_bytes = 0      # over the whole run
        self._dropped_note = 0      # since the last note
        self._chunks = deque()
        self._pending = 0
        self._lock = threading.RLock()   # re-entrant: a signal handler may print mid-write
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = None
        self._closed = False
        try:
            self._isatty = os.isatty(fd)
        except OSError:
            self._isatty = False
        self.buffer = _BinaryView(self)

    # -- the TextIO surface ----------------------------------------------------------

    encoding = "utf-8"
    errors = "backslashreplace"
    name = "<stderr>"

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.write_bytes(text.encode("utf-8", "backslashreplace"))
        return len(text)

    def write_bytes(self, data):
        if not data:
            return 0
        with self._lock:
            if self._pending + len(data) > self.limit:
                self.dropped_bytes += len(data)
                self._dropped_note += len(data)
            else:
                self._chunks.append(bytes(data))
                self._pending += len(data)
            self._idle.clear()
            if self._thread is None:
                self._start()
        self._wake.set()   # after a drop too: the note follows once the pipe drains
        return len(data)

    def flush(self):
        pass   # never waits for the reader; drain() does, with a bound

    def fileno(self):
        return self.fd

    def isatty(self):
        return self._isatty

    def writable(self):
        return True

    def readable(self):
        return False

    # -- the copying thread ------------------------------------------------------------

    def _start(self):
        self._thread = threading.Thread(target=self._run, name="bemcp-stderr", daemon=True)
        self._thread.start()
        atexit.register(self.drain, 0.5)

    def _run(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                chunks = list(self._chunks)
                self._chunks.clear()
                note = self._dropped_note
                self._dropped_note = 0
            if chunks:
                self._write_all(b"".join(chunks))
                with self._lock:
                    self._pending -= sum(map(len, chunks))
            if note:
                self._write_all(f"[bemcp: {note} bytes of stderr output dropped: "
                                f"nobody was reading stderr]\n".encode())
            with self._lock:
                if not self._chunks and not self._dropped_note:
                    self._idle.set()

    def _write_all(self, data):
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]   # blocks this thread only
            except InterruptedError:
                continue
            except OSError:
                return   # stderr closed: the output has nowhere to go

    def drain(self, timeout):
        """Wait up to ``timeout`` seconds for queued output to reach fd 2; True if it did."""
        return self._idle.wait(timeout)


class _BinaryView:
    """``sys.stderr.buffer`` for code that writes bytes."""

    def __init__(self, pump):
        self._pump = pump

    def write(self, data):
        return self._pump.write_bytes(data)

    def flush(self):
        pass

    def fileno(self):
        return self._pump.fd


_pump = None
_handler = None


def pump():
    """The process's one StderrPump (its thread starts on the first write)."""
    global _pump
    if _pump is None:
        _pump = StderrPump()
    return _pump


def install_pump():
    """Make ``sys.stderr`` (and ``sys.stdout``, if it is stderr) the pump; returns it.

    Call after the transport took fd 1 for the protocol and pointed ``sys.stdout``
    at stderr. Streams that are something else (a test's capture, an embedder's
    own) are left alone. The pump stays for the rest of the process: output at
    exit must not block either.
    """
    p = pump()
    real = sys.__stderr__
    if sys.stdout is real or (sys.stdout is sys.stderr and sys.stderr is real):
        sys.stdout = p
    if sys.stderr is real:
        sys.stderr = p
    return p


def install_logging(level_name):
    """Send stdlib logging records at ``level_name`` and above to the pump (once)."""
    global _handler
    level = logging.getLevelName(level_name.upper())
    if not isinstance(level, int):
        level = logging.WARNING
    if _handler is None:
        _handler = logging.StreamHandler(pump())
        _handler.setFormatter(logging.Formatter(FORMAT))
        logging.getLogger().addHandler(_handler)
    _handler.setLevel(level)
    # The root level gates every handler; lower it to ours, never raise it (a
    # client's logging/setLevel may have lowered it further).
    root = logging.getLogger()
    if root.getEffectiveLevel() > level:
        root.setLevel(level)
    return _handler
