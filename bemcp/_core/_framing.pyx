# cython: language_level=3, boundscheck=False, wraparound=False
"""Newline framing for JSON-RPC over stdio (compiled; twin: _framing_py.py).

One message per line. A line longer than the limit is dropped as it streams in
(never buffered whole); only its first bytes are kept so the id can be recovered
and the error can name the request.
"""

from cpython.bytes cimport PyBytes_AS_STRING
from libc.string cimport memchr
from operator import index

from ._consts cimport HEAD_SIZE

SOURCE_HASH = BEMCP_SOURCE_HASH   # the sources this module was built from (setup.py)


cdef class Oversized:
    """A message over the size limit: its length and first bytes."""

    def __init__(self, Py_ssize_t size, bytes head not None):
        self.size = size
        self.head = head


cdef inline Py_ssize_t _find_nl(const char* base, Py_ssize_t start, Py_ssize_t n):
    cdef const char* hit
    if start >= n:
        return -1
    hit = <const char*>memchr(base + start, 10, <size_t>(n - start))
    return -1 if hit == NULL else hit - base


cdef class Framer:
    """Splits a byte stream into lines; ``feed`` returns complete messages."""

    def __init__(self, max_size):
        self.max_size = index(max_size)
        self._buf = bytearray()
        self._dropping = False
        self._dropped = 0
        self._head = b""

    @property
    def buffered(self):
        return len(self._buf)

    cpdef list feed(self, object data):
        """Complete messages (and Oversized ones) from ``data``, any bytes-like object."""
        if type(data) is not bytes:
            data = bytes(data)
        cdef list out = []
        cdef Py_ssize_t start = 0
        cdef Py_ssize_t n = len(data)
        cdef Py_ssize_t nl
        cdef const char* base = PyBytes_AS_STRING(data)
        cdef bytes line
        if self._dropping:
            nl = _find_nl(base, 0, n)
            if nl < 0:
                self._dropped += n
                return out
            out.append(Oversized(self._dropped + nl, self._head))
            self._dropping = False
            self._dropped = 0
            self._head = b""
            start = nl + 1
        elif len(self._buf):
            nl = _find_nl(base, 0, n)
            if nl < 0:
                self._buffer(data, 0)
                return out
            self._buf += data[:nl]
            line = bytes(self._buf)
            del self._buf[:]
            self._emit(out, line, len(line))
            start = nl + 1
        while True:
            nl = _find_nl(base, start, n)
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

    cdef _emit(self, list out, object line, Py_ssize_t size):
        if size > self.max_size:
            out.append(Oversized(size, bytes(line[:HEAD_SIZE])))
        elif size and (<bytes>line)[0] == 0x7B or line[:size].strip():
            # A message starts with "{"; any other line counts unless it is blank.
            out.append(line)

    cdef _buffer(self, bytes data, Py_ssize_t start):
        self._buf += data[start:] if start else data
        if len(self._buf) > self.max_size:
            # Stop holding it: count the rest until the newline.
            self._dropping = True
            self._dropped = len(self._buf)
            self._head = bytes(self._buf[:HEAD_SIZE])
            self._buf = bytearray()
