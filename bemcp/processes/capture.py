"""Output capture: what is kept of a child's output, and how.

``Capture``: one stream of a foreground command, its first and last halves kept within a
limit and the rest counted. ``Spool``: background output in a private anonymous file, a
ring addressed by absolute offsets so that any recent part can be read again with the
server's memory flat. ``ProgressLines``: output lines turned into rate-limited progress
notifications. Why a disk ring: docs/processes.md.
"""

import os

MiB = 1024 * 1024
SPOOL_LIMIT = 64 * MiB     # bytes of background output kept per process
PROGRESS_INTERVAL = 0.2    # s between progress notifications
PROGRESS_MESSAGE = 4096    # characters of output lines per notification


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
    new lines, at most one per PROGRESS_INTERVAL, so they never starve the answer.

    ``ctx``: anything with ``report_progress(progress, message=...)`` (a tool's Context).
    """

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
