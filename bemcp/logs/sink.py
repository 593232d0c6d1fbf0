"""The log writer: turns batches from the server into JSON lines on disk.

It runs as its own process (``python -m bemcp.logs.sink``, fed through a pipe),
so formatting, hashing and psutil sampling cost the server's event loop nothing,
not even a share of the GIL; if that process cannot run, the same ``Sink`` runs
in a thread of the server instead.

The pipe carries frames: ``kind`` (1 byte), a clock offset (8-byte double:
wall time minus monotonic time, on the server's clocks), a payload length
(4 bytes), then the payload:

- ``T``: finished tool calls, as the core keeps them (``Dispatcher.take_finished``):
  their count (``COUNT``), that many ``RECORD``s (start and end on the monotonic
  clock, state, bytes in, bytes out; 0 or less: unknown, e.g. an outcome kept
  for ``tasks/result``), then each call's request line, comma-separated;
- ``D``: ``[[row, detail], ...]`` for the next T frame: what tools reported, JSON;
- ``E``: one forensics record, JSON;
- ``P``: the server's half of a perf sample (event-loop lag, in-flight, ...), JSON.
"""

import gc
import os
import struct
import sys
import time

from orjson import dumps, loads

from .. import _core
from .files import LogFiles

FRAME = struct.Struct("!cdI")
COUNT = struct.Struct("!I")
RECORD = struct.Struct("=ddqqq")   # bemcp._core's FinishedRow, in the server's byte order


def digest_key(directory):
    """The directory's key for argument digests, created on first use.

    Keyed, so a digest in a shared log cannot be matched against guessed values
    without the key file; the same arguments give the same digest across runs.
    """
    path = os.path.join(directory, ".digest-key")
    key = _read_key(path)
    if key is not None:
        return key
    key = os.urandom(16)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex())
    except FileExistsError:
        time.sleep(0.05)   # another server is writing it
        return _read_key(path) or key
    except OSError:
        pass
    return key


def _read_key(path):
    try:
        with open(path, "rb") as f:
            key = bytes.fromhex(f.read().decode().strip())
    except (OSError, ValueError):
        return None
    return key if 16 <= len(key) <= 64 else None


class Sink:
    """Formats frames into ``tasks.log``, ``forensics.log`` and ``perf.log`` lines."""

    def __init__(self, files, server_pid, exclude_pids=()):
        self.files = files
        self.server_pid = server_pid
        self.exclude_pids = set(exclude_pids)
        self._hasher = None     # blake2b keyed with the directory's key, copied per digest
        self._digests = {}      # arguments as sent -> digest: repeated calls hash once
        self._details = {}      # row -> detail, for the next T frame
        self._calls = 0
        self._errors = 0
        self._process = None
        self._last_perf = time.monotonic()

    def send(self, frames, offset):
        """Handle ``frames`` ((kind, rows, parts), ...) as the writer process would; none is left."""
        for kind, _, parts in frames:
            self.handle(kind, offset, *parts)
        return []

    def handle(self, kind, offset, *parts):
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        if kind == b"T":
            self.tasks(offset, payload)
        elif kind == b"E":
            self.files.append("forensics", payload + b"\n")
        elif kind == b"P":
            self.perf(loads(payload))
        elif kind == b"D":
            self._details = {row: detail for row, detail in loads(payload)}

    # -- tasks.log -----------------------------------------------------------------------

    def tasks(self, offset, payload):
        if self._hasher is None:
            import hashlib   # here: the server imports this module too, and hashlib costs it 0.6 MB
            self._hasher = hashlib.blake2b(key=digest_key(self.files.directory), digest_size=8)
        details, self._details = self._details, {}
        lines, calls, errors = _core.format_tasks(payload, offset, self.server_pid, details,
                                                  self._digests, self._digest)
        self._calls += calls
        self._errors += errors
        if lines:
            self.files.append("tasks", lines, calls)

    def _digest(self, raw):
        h = self._hasher.copy()
        h.update(raw)
        return h.hexdigest().encode()

    # -- perf.log ------------------------------------------------------------------------

    def perf(self, record):
        now = time.monotonic()
        elapsed = max(now - self._last_perf, 1e-3)
        self._last_perf = now
        record.update(self.process_figures())
        record["calls_per_s"] = round(self._calls / elapsed, 1)
        record["errors"] = self._errors
        record["log_dropped"] = self.files.dropped
        self._calls = self._errors = 0
        self.files.append("perf", dumps(record) + b"\n")

    def process_figures(self):
        """RSS of the server and of its children (this writer excluded), CPU %, threads."""
        try:
            import psutil
        except ImportError:
            return {}
        try:
            if self._process is None:
                self._process = psutil.Process(self.server_pid)
                self._process.cpu_percent(None)   # the first call only sets the baseline
            proc = self._process
            with proc.oneshot():
                figures = {"rss": proc.memory_info().rss, "cpu_pct": proc.cpu_percent(None),
                           "threads": proc.num_threads()}
            children = [c for c in proc.children(recursive=True) if c.pid not in self.exclude_pids]
        except psutil.Error:
            return {}
        rss = 0
        for child in children:
            try:
                rss += child.memory_info().rss
            except psutil.Error:
                pass
        figures["rss_children"] = rss
        figures["children"] = len(children)
        return figures

    def close(self):
        self.files.close()


def read_frames(stream):
    """(kind, offset, payload) from a binary stream until EOF."""
    header_size = FRAME.size
    while True:
        header = stream.read(header_size)
        if len(header) < header_size:
            return
        kind, offset, length = FRAME.unpack(header)
        payload = stream.read(length)
        if len(payload) < length:
            return
        yield kind, offset, payload


def main(argv=None):
    """The writer process: ``python -m bemcp.logs.sink DIR SERVER_PID MAX_FILE MAX_TOTAL``."""
    import signal
    argv = sys.argv[1:] if argv is None else argv
    directory, server_pid, max_file, max_total = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    # Stop only when the server closes the pipe, after writing everything it sent.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    # Each batch parses thousands of requests: left alone, the collector would run again
    # and again over them. What this process keeps is acyclic, so it can wait.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    # Where cores are scarce the server goes first; the writer still gets a share, so it
    # keeps up. (SCHED_IDLE was worse: the scheduler then stacks it on the server's core.)
    try:
        os.nice(5)
    except (AttributeError, OSError):
        pass

    def warn(message):
        try:
            os.write(2, message.encode() + b"\n")
        except OSError:
            pass
    files = LogFiles(directory, max_file, max_total, warn=warn)
    sink = Sink(files, server_pid, exclude_pids=(os.getpid(),))
    stream = os.fdopen(0, "rb", buffering=1 << 20)
    for kind, offset, payload in read_frames(stream):
        try:
            sink.handle(kind, offset, payload)
        except Exception as exc:   # a bad frame must not lose the ones after it
            warn(f"bemcp log writer: {type(exc).__name__}: {exc}")
    sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
