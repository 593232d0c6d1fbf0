"""Newline framing for JSON-RPC over stdio (pure-Python twin of _framing.pyx).

One message per line. A line longer than the limit is dropped as it streams in
(never buffered whole); only its first bytes are kept so the id can be recovered
and the error can name the request.
"""

from operator import index

from ._consts import HEAD_SIZE


class Oversized:
    """A message over the size limit: its length and first bytes."""

    __slots__ = ("_size", "_head")

    def __init__(self, size, head):
        self._size = index(size)
        if type(head) is not bytes:
            raise TypeError(f"head must be bytes, not {type(head).__name__}")
        self._head = head

    @property
    def size(self):
        return self._size

    @property
    def head(self):
        return self._head


class Framer:
    """Splits a byte stream into lines; ``feed`` returns complete messages."""

    def __init__(self, max_size):
        self._max_size = index(max_size)
        self._buf = bytearray()
        self._dropping = False
        self._dropped = 0
        self._head = b""

    @property
    def max_size(self):
        return self._max_size

    @property
    def buffered(self):
        return len(self._buf)

    def feed(self, data):
        """Complete messages (and Oversized ones) from ``data``, any bytes-like object."""
        if type(data) is not bytes:
            data = bytes(data)
        out = []
        start = 0
        n = len(data)
        if self._dropping:
            nl = data.find(b"\n")
            if nl < 0:
                self._dropped += n
                return out
            out.append(Oversized(self._dropped + nl, self._head))
            self._dropping = False
            self._dropped = 0
            self._head = b""
            start = nl + 1
        elif self._buf:
            nl = data.find(b"\n")
            if nl < 0:
                self._buffer(data, 0)
                return out
            self._buf += data[:nl]
            line = bytes(self._buf)
            self._buf.clear()
            self._emit(out, line, len(line))
            start = nl + 1
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if start == 0 and nl == n - 1:
                # Fast path: one whole message in this chunk; orjson ignores the newline.
                self._emit(out, data, nl)
            else:
                self._emit(out, data[start:nl], nl - start)
            start = nl + 1
        if start < n:
            self._buffer(data, start)
        return out

    def _emit(self, out, line, size):
        if size > self._max_size:
            out.append(Oversized(size, bytes(line[:HEAD_SIZE])))
        elif size and line[0] == 0x7B or line[:size].strip():
            # A message starts with "{"; any other line counts unless it is blank.
            out.append(line)

    def _buffer(self, data, start):
        self._buf += data[start:] if start else data
        if len(self._buf) > self._max_size:
            # Stop holding it: count the rest until the newline.
            self._dropping = True
            self._dropped = len(self._buf)
            self._head = bytes(self._buf[:HEAD_SIZE])
            self._buf = bytearray()
