# cython: language_level=3, cdivision=True
"""tasks.log from the core's finished rows, written by a native thread (compiled; twin: _calllog_py.py).

The event loop hands each batch of finished tool calls (``Dispatcher.take_finished``)
to a ``TaskWriter``: one copy into a C queue, one signal. The writer's own thread,
which never holds the GIL on its common path, formats one JSON line per call into a C
buffer, digests the arguments (keyed BLAKE2b, in C, with a small cache) and appends to
``tasks.log``; it takes the GIL only to open, rotate or cap the file (the directory's
bookkeeping lives in ``bemcp.logs.files``), after a write fails, and for a request line
its scanner leaves to orjson (an escaped key). ``format_tasks`` is the same formatter
for one batch, called directly.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.errno cimport EINTR, ETIMEDOUT, errno
from libc.math cimport llround
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memset, strerror
from posix.fcntl cimport O_APPEND, O_CREAT, O_WRONLY
from posix.stat cimport fstat, stat, struct_stat
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec
from posix.unistd cimport close, write
from posix.fcntl cimport open, O_CLOEXEC

from ._consts cimport N_STATES, STATE_OK, FinishedRow

import os
import struct

from orjson import dumps, loads

from ._consts import STATUS

SOURCE_HASH = BEMCP_SOURCE_HASH   # the sources this module was built from (setup.py)
cdef enum:
    C_DIGEST_CACHE = 4096        # argument digests remembered (repeated calls hash once)
    DIGEST_CACHE_BYTES = 512     # longer arguments are digested each time rather than copied
    OUT_KEEP = 1 << 20           # the line buffer is given back past this size (a burst is over)
    WRITE_CHUNK = 64 << 10       # lines formatted before each write (at most a quarter of a file)
DIGEST_CACHE = C_DIGEST_CACHE
cdef double RETRY_SECONDS = 10.0 # after a failed write, rows are dropped this long before a retry
WAIT_SECONDS = 2.0   # a submitter waits this long on a full queue before calling the thread stuck
_FIXED = frozenset(("time", "pid", "id", "tool", "status", "duration_ms", "arg_bytes", "arg_digest",
                    "bytes_in", "bytes_out"))
_DETAIL = struct.Struct("=qq")
cdef enum:
    BAD_BATCH = -1
    NO_MEMORY = -2   # a packed detail: row, length, then the JSON members

cdef object _loads = loads
cdef object _dumps = dumps
cdef const char* _HEX = b"0123456789abcdef"
_PAIRS_TEXT = "".join("%02d" % i for i in range(100)).encode()
cdef const char* _PAIRS = _PAIRS_TEXT   # "00" to "99": two digits a step
cdef uint64_t _ONE = 1
cdef bint _LITTLE = (<unsigned char*>&_ONE)[0] == 1   # message words load with one copy

cdef uint64_t _IV[8]
_IV[:] = [0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1,
          0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179]


# -- keyed BLAKE2b with an 8-byte digest (RFC 7693), the same as hashlib.blake2b(key=..., digest_size=8)

cdef extern from *:
    """
    /* BLAKE2b's compression (RFC 7693) with its twelve rounds written out, so that the
       message schedule is constant and the working state can live in registers. */
    static const unsigned char bemcp_sigma[12][16] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
        {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
        {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
        {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
        {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
        {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
        {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
        {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
        {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};
    #define BEMCP_ROTR(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
    #define BEMCP_G(r, i, a, b, c, d) do { \
        a = a + b + m[bemcp_sigma[r][2 * (i)]]; d = BEMCP_ROTR(d ^ a, 32); \
        c = c + d; b = BEMCP_ROTR(b ^ c, 24); \
        a = a + b + m[bemcp_sigma[r][2 * (i) + 1]]; d = BEMCP_ROTR(d ^ a, 16); \
        c = c + d; b = BEMCP_ROTR(b ^ c, 63); } while (0)
    #define BEMCP_ROUND(r) do { \
        BEMCP_G(r, 0, v0, v4, v8, v12); BEMCP_G(r, 1, v1, v5, v9, v13); \
        BEMCP_G(r, 2, v2, v6, v10, v14); BEMCP_G(r, 3, v3, v7, v11, v15); \
        BEMCP_G(r, 4, v0, v5, v10, v15); BEMCP_G(r, 5, v1, v6, v11, v12); \
        BEMCP_G(r, 6, v2, v7, v8, v13); BEMCP_G(r, 7, v3, v4, v9, v14); } while (0)
    static void bemcp_blake2b_compress(uint64_t *h, const uint64_t *m, const uint64_t *iv,
                                       uint64_t t, int last) {
        uint64_t v0 = h[0], v1 = h[1], v2 = h[2], v3 = h[3], v4 = h[4], v5 = h[5], v6 = h[6], v7 = h[7];
        uint64_t v8 = iv[0], v9 = iv[1], v10 = iv[2], v11 = iv[3];
        uint64_t v12 = iv[4] ^ t, v13 = iv[5], v14 = last ? ~iv[6] : iv[6], v15 = iv[7];
        BEMCP_ROUND(0); BEMCP_ROUND(1); BEMCP_ROUND(2); BEMCP_ROUND(3);
        BEMCP_ROUND(4); BEMCP_ROUND(5); BEMCP_ROUND(6); BEMCP_ROUND(7);
        BEMCP_ROUND(8); BEMCP_ROUND(9); BEMCP_ROUND(10); BEMCP_ROUND(11);
        h[0] ^= v0 ^ v8; h[1] ^= v1 ^ v9; h[2] ^= v2 ^ v10; h[3] ^= v3 ^ v11;
        h[4] ^= v4 ^ v12; h[5] ^= v5 ^ v13; h[6] ^= v6 ^ v14; h[7] ^= v7 ^ v15;
    }
    """
    void bemcp_blake2b_compress(uint64_t* h, const uint64_t* m, const uint64_t* iv, uint64_t t,
                                int last) noexcept nogil


cdef void _compress(uint64_t* h, const unsigned char* block, uint64_t t, bint last) noexcept nogil:
    cdef uint64_t m[16]
    cdef int i, j
    if _LITTLE:
        memcpy(m, block, 128)
    else:
        for i in range(16):
            m[i] = 0
            for j in range(8):   # little-endian words, whatever the host
                m[i] |= (<uint64_t>block[8 * i + j]) << (8 * j)
    bemcp_blake2b_compress(h, m, _IV, t, last)


cdef int _digests_init(Digests* dg, bytes key) except -1:
    cdef unsigned char block[128]
    cdef Py_ssize_t n = PyBytes_GET_SIZE(key)
    cdef int i
    if not 1 <= n <= 64:
        raise ValueError("a digest key is 1 to 64 bytes")
    for i in range(8):
        dg.keyed[i] = _IV[i]
    dg.keyed[0] ^= 0x01010000 ^ (<uint64_t>n << 8) ^ 8
    memset(block, 0, 128)
    memcpy(block, PyBytes_AS_STRING(key), n)
    _compress(dg.keyed, block, 128, False)   # arguments are never empty: the key block is not the last
    dg.cache = <DigestEntry*>calloc(C_DIGEST_CACHE, sizeof(DigestEntry))
    if dg.cache == NULL:
        raise MemoryError()
    return 0


cdef void _digests_free(Digests* dg) noexcept nogil:
    cdef Py_ssize_t i
    if dg.cache != NULL:
        for i in range(C_DIGEST_CACHE):
            free(dg.cache[i].raw)
        free(dg.cache)
        dg.cache = NULL


cdef void _digest(Digests* dg, const unsigned char* p, Py_ssize_t n, char* hex) noexcept nogil:
    # The hex digest of p[:n] (n > 0), from the cache when these arguments were seen lately.
    cdef uint64_t tag = 14695981039346656037ULL
    cdef uint64_t h[8]
    cdef uint64_t t = 128
    cdef unsigned char block[128]
    cdef Py_ssize_t i
    cdef DigestEntry* entry
    for i in range(n):
        tag = (tag ^ p[i]) * 1099511628211ULL
    entry = &dg.cache[tag & (C_DIGEST_CACHE - 1)]
    if entry.raw != NULL and entry.tag == tag and entry.len == n and memcmp(entry.raw, p, n) == 0:
        memcpy(hex, entry.hex, 16)
        return
    memcpy(h, dg.keyed, sizeof(h))
    while n > 128:
        t += 128
        _compress(h, p, t, False)
        p += 128
        n -= 128
    memset(block, 0, 128)
    memcpy(block, p, n)
    _compress(h, block, t + n, True)
    for i in range(8):
        hex[2 * i] = _HEX[(h[0] >> (8 * i + 4)) & 15]
        hex[2 * i + 1] = _HEX[(h[0] >> (8 * i)) & 15]
    p -= (t - 128)
    n += t - 128
    if n <= DIGEST_CACHE_BYTES:
        free(entry.raw)
        entry.raw = <char*>malloc(n)
        if entry.raw != NULL:
            memcpy(entry.raw, p, n)
            entry.tag = tag
            entry.len = n
            memcpy(entry.hex, hex, 16)


def digest(bytes key, bytes raw):
    """The hex digest tasks.log gives ``raw`` under ``key`` (keyed BLAKE2b, 8 bytes)."""
    cdef Digests dg
    cdef char hex[16]
    if not raw:
        raise ValueError("nothing to digest")
    _digests_init(&dg, key)
    _digest(&dg, <const unsigned char*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), hex)
    _digests_free(&dg)
    return PyBytes_FromStringAndSize(hex, 16)


# -- the line buffer ---------------------------------------------------------------------------

cdef bint _reserve(Out* out, Py_ssize_t more) noexcept nogil:
    # Room for ``more`` bytes; False (and ``out.failed`` set) when memory runs out.
    cdef Py_ssize_t cap = out.cap
    cdef char* grown
    if out.len + more <= cap:
        return True
    while cap < out.len + more:
        cap = cap * 2 if cap else 65536
    grown = <char*>realloc(out.data, cap)
    if grown == NULL:
        out.failed = True
        return False
    out.data = grown
    out.cap = cap
    return True


cdef inline void _put_text(Out* out, const char* text, Py_ssize_t n) noexcept nogil:
    if out.len + n <= out.cap or _reserve(out, n):
        memcpy(out.data + out.len, text, n)
        out.len += n


cdef void _put_int(Out* out, long long value) noexcept nogil:
    # printf is slow enough to show at this rate; digits are written right to left, two at a time.
    cdef char buf[24]
    cdef int i = 24
    cdef bint negative = value < 0
    cdef unsigned long long v = <unsigned long long>(-value if negative else value)
    cdef unsigned int pair
    while v >= 100:
        pair = <unsigned int>(v % 100)
        v //= 100
        i -= 2
        buf[i] = _PAIRS[2 * pair]
        buf[i + 1] = _PAIRS[2 * pair + 1]
    if v >= 10:
        i -= 2
        buf[i] = _PAIRS[2 * v]
        buf[i + 1] = _PAIRS[2 * v + 1]
    else:
        i -= 1
        buf[i] = <char>(c'0' + v)
    if negative:
        i -= 1
        buf[i] = c'-'
    _put_text(out, buf + i, 24 - i)


cdef void _put_milli(Out* out, double value) noexcept nogil:
    # ``value`` with three decimals (a JSON number): 1795511104.750, 0.002.
    cdef long long scaled = llround(value * 1000.0)
    cdef char buf[4]
    if scaled < 0:
        _put_text(out, b"-", 1)
        scaled = -scaled
    _put_int(out, scaled // 1000)
    scaled %= 1000
    buf[0] = c'.'
    buf[1] = <char>(c'0' + scaled // 100)
    buf[2] = <char>(c'0' + scaled // 10 % 10)
    buf[3] = <char>(c'0' + scaled % 10)
    _put_text(out, buf, 4)


# -- finding id, name and arguments in a request line as sent -----------------------------------

cdef inline Py_ssize_t _ws(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and (s[i] == c' ' or s[i] == c'\n' or s[i] == c'\r' or s[i] == c'\t'):
        i += 1
    return i


cdef Py_ssize_t _string_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    # s[i] is an opening quote: the index after the closing one, or -1.
    i += 1
    while i < n:
        if s[i] == c'\\':      # a backslash: the next byte is escaped
            i += 2
        elif s[i] == c'"':
            return i + 1
        else:
            i += 1
    return -1


cdef Py_ssize_t _value_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    # s[i] starts a JSON value: the index after it, or -1.
    cdef Py_ssize_t depth = 0
    cdef unsigned char c
    if i >= n:
        return -1
    c = s[i]
    if c == c'"':
        return _string_end(s, i, n)
    if c == c'{' or c == c'[':
        while i < n:
            c = s[i]
            if c == c'"':
                i = _string_end(s, i, n)
                if i < 0:
                    return -1
                continue
            if c == c'{' or c == c'[':
                depth += 1
            elif c == c'}' or c == c']':
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return -1
    while i < n:   # a number, true, false or null
        c = s[i]
        if c == c',' or c == c'}' or c == c']' or c == c' ' or c == c'\n' or c == c'\r' or c == c'\t':
            break
        i += 1
    return i


cdef inline bint _is(const unsigned char* s, Py_ssize_t start, Py_ssize_t end, const char* word,
                     Py_ssize_t length) noexcept nogil:
    return end - start == length and memcmp(s + start, word, length) == 0


cdef Py_ssize_t _members(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, bint top, Spans* spans) noexcept nogil:
    # The object at s[i] ("{"): note the spans wanted at this level (top: id and params;
    # params: name and arguments). The index after its "}", or -1 for anything this
    # scanner leaves to a real parser (an escaped key, malformed text).
    cdef Py_ssize_t key, key_end, value, value_end
    i = _ws(s, i + 1, n)
    if i < n and s[i] == c'}':
        return i + 1
    while i < n:
        if s[i] != c'"':
            return -1
        key_end = _string_end(s, i, n)
        if key_end < 0:
            return -1
        key = i + 1
        key_end -= 1
        if memchr(s + key, c'\\', key_end - key) != NULL:
            return -1
        i = _ws(s, key_end + 1, n)
        if i >= n or s[i] != 58:
            return -1
        value = _ws(s, i + 1, n)
        if top and _is(s, key, key_end, b"params", 6):
            spans.name_start = spans.args_start = -1   # the last "params" is the one that counts
            if value < n and s[value] == c'{':
                value_end = _members(s, value, n, False, spans)
            else:
                value_end = _value_end(s, value, n)
        else:
            value_end = _value_end(s, value, n)
        if value_end < 0:
            return -1
        if top:
            if _is(s, key, key_end, b"id", 2):
                spans.id_start = value
                spans.id_end = value_end
        elif _is(s, key, key_end, b"name", 4):
            spans.name_start = value
            spans.name_end = value_end
        elif _is(s, key, key_end, b"arguments", 9):
            spans.args_start = value
            spans.args_end = value_end
        i = _ws(s, value_end, n)
        if i < n and s[i] == c',':
            i = _ws(s, i + 1, n)
        elif i < n and s[i] == c'}':
            return i + 1
        else:
            return -1
    return -1


def _parsed(bytes line):
    """(id, name, arguments) as JSON for a line the scanner left to the parser."""
    message = _loads(line)
    if type(message) is not dict:
        message = {}
    params = (<dict>message).get("params")
    if type(params) is not dict:
        params = {}
    args = (<dict>params).get("arguments")
    return (_dumps((<dict>message).get("id")), _dumps((<dict>params).get("name")),
            _dumps(args) if args is not None else b"{}")


cdef int _parse_into(Out* scratch, const unsigned char* line, Py_ssize_t n, Spans* spans) except -1:
    # The scanner's fallback: orjson finds the three values; they are copied to ``scratch``
    # and ``spans`` point into it.
    cdef bytes part
    cdef Py_ssize_t at
    scratch.len = 0
    parts = _parsed(PyBytes_FromStringAndSize(<const char*>line, n))
    for i, part in enumerate(parts):
        at = scratch.len
        _put_text(scratch, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part))
        if i == 0:
            spans.id_start, spans.id_end = at, scratch.len
        elif i == 1:
            spans.name_start, spans.name_end = at, scratch.len
        else:
            spans.args_start, spans.args_end = at, scratch.len
    return 0


def pack_details(details):
    """What tools reported (``{row: detail}`` or ``[(row, detail), ...]``) as the formatter
    reads it: for each row with plain values to add, its row, length and JSON members."""
    items = details.items() if type(details) is dict else details
    packed = []
    for row, detail in sorted(items, key=lambda item: item[0]):
        if type(detail) is not dict or not detail:
            continue
        extra = {key: value for key, value in (<dict>detail).items()
                 if key not in _FIXED and (value is None or type(value) in (int, float, str, bool))}
        if extra:
            members = b"," + _dumps(extra)[1:-1]
            packed.append(_DETAIL.pack(row, len(members)) + members)
    return b"".join(packed)


cdef Py_ssize_t _format(const unsigned char* base, Py_ssize_t size, double offset, long long pid,
                        const unsigned char* details, Py_ssize_t dsize, Digests* dg, Out* out, Out* scratch,
                        long long* errors) noexcept nogil:
    # tasks.log lines for one batch (see format_tasks), appended to ``out``: the number of
    # calls, or BAD_BATCH (malformed) or NO_MEMORY, with ``out`` as it was.
    cdef Py_ssize_t count, pos, end, i, n
    cdef Py_ssize_t dpos = 0
    cdef long long drow, dlen
    cdef FinishedRow row
    cdef Spans spans
    cdef const unsigned char* text
    cdef char hex[16]
    cdef Py_ssize_t mark = out.len
    cdef bint parsed
    cdef char pid_buf[48]
    cdef Out pid_text   # the same on every line: written once
    if size < 4:
        return BAD_BATCH
    pid_text.data, pid_text.len, pid_text.cap, pid_text.failed = pid_buf, 0, 48, False
    _put_text(&pid_text, b',"pid":', 7)
    _put_int(&pid_text, pid)
    _put_text(&pid_text, b',"id":', 6)
    count = (base[0] << 24) | (base[1] << 16) | (base[2] << 8) | base[3]
    pos = 4 + count * <Py_ssize_t>sizeof(FinishedRow)
    if pos > size:
        return BAD_BATCH
    for i in range(count):
        memcpy(&row, base + 4 + i * sizeof(FinishedRow), sizeof(FinishedRow))   # unaligned in the payload
        if row.state != STATE_OK:
            errors[0] += 1
        pos = _ws(base, pos, size)
        if i and pos < size and base[pos] == c',':
            pos = _ws(base, pos + 1, size)
        if pos >= size or base[pos] != c'{':
            out.len = mark
            return BAD_BATCH
        spans.id_start = spans.name_start = spans.args_start = -1
        end = _members(base, pos, size, True, &spans)
        text = base
        if end < 0:
            end = _value_end(base, pos, size)
            if end < 0:
                out.len = mark
                return BAD_BATCH
            with gil:
                try:
                    _parse_into(scratch, base + pos, end - pos, &spans)
                    parsed = True
                except Exception:
                    parsed = False
            if not parsed:
                out.len = mark
                return BAD_BATCH
            text = <const unsigned char*>scratch.data
        pos = end

        _put_text(out, b'{"time":', 8)
        _put_milli(out, row.end + offset)
        _put_text(out, pid_text.data, pid_text.len)   # ,"pid":N,"id":
        if spans.id_start >= 0:
            _put_text(out, <const char*>text + spans.id_start, spans.id_end - spans.id_start)
        else:
            _put_text(out, b"null", 4)
        _put_text(out, b',"tool":', 8)
        if spans.name_start >= 0:
            _put_text(out, <const char*>text + spans.name_start, spans.name_end - spans.name_start)
        else:
            _put_text(out, b"null", 4)
        _put_text(out, b',"status":', 10)
        if 0 <= row.state < N_STATES:
            _put_status(out, row.state)
        else:
            _put_text(out, b'"', 1)
            _put_int(out, row.state)
            _put_text(out, b'"', 1)
        _put_text(out, b',"duration_ms":', 15)
        _put_milli(out, (row.end - row.start) * 1e3)
        _put_text(out, b',"arg_bytes":', 13)
        if spans.args_start >= 0:
            n = spans.args_end - spans.args_start
            _put_int(out, n)
            _digest(dg, text + spans.args_start, n, hex)
        else:
            _put_int(out, 2)
            _digest(dg, <const unsigned char*>b"{}", 2, hex)
        _put_text(out, b',"arg_digest":"', 15)
        _put_text(out, hex, 16)
        _put_text(out, b'","bytes_in":', 13)
        if row.size > 0:
            _put_int(out, row.size)
        else:
            _put_text(out, b"null", 4)
        _put_text(out, b',"bytes_out":', 13)
        if row.sent > 0:
            _put_int(out, row.sent)
        else:
            _put_text(out, b"null", 4)
        while dpos + 16 <= dsize:   # what the tool reported, e.g. an exit code
            memcpy(&drow, details + dpos, 8)
            memcpy(&dlen, details + dpos + 8, 8)
            if drow > i:
                break
            if drow == i:
                _put_text(out, <const char*>details + dpos + 16, dlen)
            dpos += 16 + dlen
        _put_text(out, b"}\n", 2)
    if out.failed:
        out.failed = False
        out.len = mark
        return NO_MEMORY
    return count


cdef const char* _STATUS_TEXT[N_STATES]
cdef Py_ssize_t _STATUS_LEN[N_STATES]
for _i, _s in enumerate(STATUS):
    _STATUS_TEXT[_i] = _s
    _STATUS_LEN[_i] = len(_s)


cdef inline void _put_status(Out* out, long long state) noexcept nogil:
    _put_text(out, _STATUS_TEXT[state], _STATUS_LEN[state])


def format_tasks(bytes payload, double offset, long long pid, details, bytes key):
    """tasks.log lines for one batch: ``(lines, calls, errors)``.

    ``payload``: a 4-byte big-endian count, that many records, then the request
    lines comma-separated (``Dispatcher.take_finished``). ``offset`` turns the
    monotonic clock into wall time; ``details`` maps a row to what its tool
    reported; ``key`` keys the argument digests.

    The id, tool name and arguments are taken from each line as it was sent (a
    scanner finds them; nothing is parsed into objects): the digest is of the
    arguments' JSON exactly as the client wrote it.
    """
    cdef Digests dg
    cdef Out out
    cdef Out scratch
    cdef long long errors = 0
    cdef Py_ssize_t count
    cdef bytes packed = pack_details(details) if details else b""
    memset(&out, 0, sizeof(Out))
    memset(&scratch, 0, sizeof(Out))
    _digests_init(&dg, key)
    try:
        count = _format(<const unsigned char*>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), offset,
                        pid, <const unsigned char*>PyBytes_AS_STRING(packed), PyBytes_GET_SIZE(packed),
                        &dg, &out, &scratch, &errors)
        if count == BAD_BATCH:
            raise ValueError("a malformed tasks batch: its count, rows and request lines do not agree")
        if count == NO_MEMORY:
            raise MemoryError()
        return PyBytes_FromStringAndSize(out.data, out.len), count, errors
    finally:
        free(out.data)
        free(scratch.data)
        _digests_free(&dg)


# -- the writer thread --------------------------------------------------------------------------

cdef inline double _clock(int which) noexcept nogil:
    cdef timespec ts
    clock_gettime(which, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline void _deadline(double at, timespec* ts) noexcept nogil:
    ts.tv_sec = <long>at
    ts.tv_nsec = <long>((at - ts.tv_sec) * 1e9)


cdef void* _run(void* arg) noexcept nogil:
    cdef WriterState* st = <WriterState*>arg
    cdef Pending* batch
    cdef Pending* next
    cdef long long rows, errors
    cdef Py_ssize_t freed
    cdef bint stopping
    cdef double began
    while True:
        pthread_mutex_lock(&st.lock)
        while st.head == NULL and not st.stopping:
            st.idle = True
            pthread_cond_wait(&st.wake, &st.lock)
        st.idle = False
        batch = st.head
        st.head = st.tail = NULL
        stopping = st.stopping
        pthread_mutex_unlock(&st.lock)
        if batch == NULL and stopping:
            return NULL
        while batch != NULL:   # a write per chunk of lines: the cap and rotation see each
            rows = errors = freed = 0
            began = _clock(CLOCK_MONOTONIC)
            while batch != NULL and st.out.len < st.chunk:
                next = batch.next
                if _format_pending(st, batch, &errors) == 0:
                    rows += batch.count
                freed += batch.size + batch.dsize
                free(batch)
                batch = next
            _write_out(st, rows)
            st.busy_seconds += _clock(CLOCK_MONOTONIC) - began
            pthread_mutex_lock(&st.lock)
            st.queued -= freed
            st.calls += rows
            st.errors += errors
            st.stuck = False   # moving again
            if st.waiting and st.queued <= st.limit // 2:
                pthread_cond_broadcast(&st.drained)
            pthread_mutex_unlock(&st.lock)


cdef bint _wait_drained(WriterState* st) noexcept nogil:
    # The queue is full: wait (no GIL, no lock held on return) until the thread has
    # written it down to half, at most ``st.wait`` seconds; False if it did not (stuck).
    cdef timespec until
    cdef double began = _clock(CLOCK_MONOTONIC)
    cdef bint drained
    _deadline(began + st.wait, &until)
    pthread_mutex_lock(&st.lock)
    st.waiting += 1
    st.waits += 1
    while st.queued > st.limit // 2 and not st.stuck:
        if pthread_cond_timedwait(&st.drained, &st.lock, &until) == ETIMEDOUT:
            if st.queued > st.limit // 2:
                st.stuck = True
            break
    drained = not st.stuck
    st.waiting -= 1
    st.wait_seconds += _clock(CLOCK_MONOTONIC) - began
    pthread_mutex_unlock(&st.lock)
    return drained


cdef int _format_pending(WriterState* st, Pending* batch, long long* errors) noexcept nogil:
    cdef const unsigned char* payload = <const unsigned char*>(batch + 1)
    cdef Py_ssize_t count = _format(payload, batch.size, batch.offset, st.pid, payload + batch.size,
                                    batch.dsize, &st.digests, &st.out, &st.scratch, errors)
    if count >= 0:
        return 0
    st.dropped += batch.count
    with gil:
        (<TaskWriter>st.owner)._report(count)
    return -1


cdef void _open_live(WriterState* st) noexcept nogil:
    # (Re)open tasks.log by its name: at first, after the directory's caretaker renamed it
    # away (rotation), or after another server did. The GIL only to create the directory.
    cdef struct_stat info
    cdef int fd = open(st.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
    if fd < 0:
        with gil:
            fd = (<TaskWriter>st.owner)._create()
        if fd < 0:
            return
    if fstat(fd, &info) != 0:
        close(fd)
        return
    if st.fd >= 0:
        close(st.fd)
    st.fd = fd
    st.ino = info.st_ino


cdef void _write_out(WriterState* st, long long rows) noexcept nogil:
    # Append the formatted lines, without the GIL: rotation and the directory's cap are
    # asked of the caretaker (TaskWriter.care, on another thread), which renames and
    # deletes by name while this thread writes on; the GIL only after a failure.
    cdef struct_stat info
    cdef Py_ssize_t done = 0
    cdef ssize_t n
    cdef bint poke = False
    if st.out.len == 0:
        return
    if st.fd < 0 and _clock(CLOCK_MONOTONIC) < st.retry_at:
        st.dropped += rows
        st.out.len = 0
        return
    if st.fd < 0 or stat(st.path, &info) != 0 or info.st_ino != st.ino:
        _open_live(st)
    if st.fd >= 0 and (st.total < 0 or st.total + st.out.len > st.max_total):
        with gil:   # the caretaker is behind (or the size is not known yet): the cap holds
            (<TaskWriter>st.owner)._make_room(st.out.len)
    if st.fd >= 0:
        while done < st.out.len:
            n = write(st.fd, st.out.data + done, st.out.len - done)
            if n < 0:
                if errno == EINTR:
                    continue
                with gil:
                    (<TaskWriter>st.owner)._failed(errno, rows)
                break
            done += n
        else:
            pthread_mutex_lock(&st.lock)
            st.total += st.out.len
            if fstat(st.fd, &info) == 0:
                st.size = info.st_size
            # Asked early (two files' worth of room left), so this thread need not wait
            # for the GIL to keep the cap itself.
            if not st.care and (st.size >= st.max_file or st.total + 2 * st.max_file > st.max_total):
                st.care = poke = True
            pthread_mutex_unlock(&st.lock)
            if poke and st.wake_fd >= 0:
                write(st.wake_fd, b"t", 1)   # the caretaker wakes (a full pipe: it is awake)
    else:
        st.dropped += rows
    st.out.len = 0
    if st.out.cap > OUT_KEEP:   # after a burst, do not hold its size
        free(st.out.data)
        st.out.data = NULL
        st.out.cap = 0


cdef class TaskWriter:
    """Writes ``tasks.log`` from batches of finished calls, on a native thread of its own.

    ``files``: a ``LogFiles`` for the log directory, used by this writer alone (its
    rotation, cap and failure bookkeeping); ``pid`` goes on every line; ``key`` keys
    the argument digests. ``submit`` is for the event loop: a copy, and a signal only
    when the thread is idle. With ``limit`` bytes waiting, the
    next submit waits (without the GIL) until the thread has written the queue down to
    half; a thread that has not done so in ``wait`` seconds is stuck, and batches that
    find the queue full are dropped (counted) until it moves again. Rotation and the cap are left to a caretaker that calls ``care()`` (with
    the GIL, on a thread of its own) whenever a byte arrives on ``wake_fd``, so the
    writer's thread never waits for the GIL while it keeps up. ``close`` writes
    everything submitted, then stops the thread.
    """

    def __cinit__(self):
        self.st = NULL
        self.running = False

    def __init__(self, files, long long pid, bytes key, Py_ssize_t limit, int wake_fd=-1,
                 double wait=WAIT_SECONDS):
        cdef WriterState* st = <WriterState*>calloc(1, sizeof(WriterState))
        cdef pthread_condattr_t monotonic
        if st == NULL:
            raise MemoryError()
        self.files = files
        self._path = os.fsencode(os.path.join(files.directory, "tasks.log"))
        try:
            _digests_init(&st.digests, key)
        except BaseException:
            free(st)
            raise
        pthread_mutex_init(&st.lock, NULL)
        pthread_condattr_init(&monotonic)
        pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC)   # the timed waits' deadlines
        pthread_cond_init(&st.wake, &monotonic)
        pthread_cond_init(&st.drained, &monotonic)
        pthread_condattr_destroy(&monotonic)
        st.limit = limit
        st.wait = wait
        st.pid = pid
        st.fd = -1
        st.wake_fd = wake_fd
        st.total = -1    # not known until the first write
        st.path = PyBytes_AS_STRING(self._path)
        st.max_file = files.max_file
        st.max_total = files.max_total
        st.chunk = max(1, min(WRITE_CHUNK, files.max_file // 4))
        st.owner = <PyObject*>self
        self.st = st
        if pthread_create(&self.thread, NULL, _run, st) != 0:
            raise OSError(errno, strerror(errno).decode())
        self.running = True
        Py_INCREF(self)   # the thread calls back into it until close()

    def submit(self, Py_ssize_t count, bytes records, bytes lines, details, double offset):
        """Queue one batch (``Dispatcher.take_finished``'s ``count, records, lines, details``;
        ``offset``: wall clock minus monotonic); False if it was dropped (a stuck writer)."""
        cdef WriterState* st = self.st
        cdef bint full, drained
        cdef bytes packed = pack_details(details) if details else b""
        cdef Py_ssize_t nrec = PyBytes_GET_SIZE(records), nlines = PyBytes_GET_SIZE(lines)
        cdef Py_ssize_t size = 4 + nrec + nlines, dsize = PyBytes_GET_SIZE(packed)
        cdef Pending* batch
        cdef unsigned char* at
        if not self.running:
            raise ValueError("the tasks.log writer is closed")
        pthread_mutex_lock(&st.lock)
        full = st.queued >= st.limit
        if full and (st.stuck or st.wait <= 0):
            st.dropped += count
            pthread_mutex_unlock(&st.lock)
            return False
        pthread_mutex_unlock(&st.lock)
        if full:
            with nogil:
                drained = _wait_drained(st)
            if not drained:
                pthread_mutex_lock(&st.lock)
                st.dropped += count
                pthread_mutex_unlock(&st.lock)
                return False
        batch = <Pending*>malloc(sizeof(Pending) + size + dsize)
        if batch == NULL:
            raise MemoryError()
        batch.next = NULL
        batch.offset = offset
        batch.count = count
        batch.size = size
        batch.dsize = dsize
        at = <unsigned char*>(batch + 1)
        at[0], at[1], at[2], at[3] = (count >> 24) & 255, (count >> 16) & 255, (count >> 8) & 255, count & 255
        memcpy(at + 4, PyBytes_AS_STRING(records), nrec)
        memcpy(at + 4 + nrec, PyBytes_AS_STRING(lines), nlines)
        memcpy(at + size, PyBytes_AS_STRING(packed), dsize)
        pthread_mutex_lock(&st.lock)
        if st.tail == NULL:
            st.head = batch
        else:
            st.tail.next = batch
        st.tail = batch
        st.queued += size + dsize
        if st.idle:   # a busy thread finds the batch on its own: no signal
            pthread_cond_signal(&st.wake)
        pthread_mutex_unlock(&st.lock)
        return True

    def stats(self):
        """``(calls, errors)`` written since the last call, and rows dropped in all."""
        cdef WriterState* st = self.st
        pthread_mutex_lock(&st.lock)
        calls, errors, dropped = st.calls, st.errors, st.dropped
        st.calls = st.errors = 0
        pthread_mutex_unlock(&st.lock)
        return calls, errors, dropped + self.files.dropped

    @property
    def dropped(self):
        """Rows that never reached tasks.log: too many waiting, or the directory failing."""
        return self.st.dropped + self.files.dropped

    @property
    def queued(self):
        """Bytes of rows waiting for the thread."""
        return self.st.queued

    @property
    def wait_seconds(self):
        """Seconds submitters spent waiting for a full queue to drain, in all."""
        return self.st.wait_seconds

    @property
    def waits(self):
        """Submits that found the queue full and waited."""
        return self.st.waits

    @property
    def busy_seconds(self):
        """The thread's seconds formatting and writing, in all."""
        return self.st.busy_seconds

    def close(self):
        """Write everything submitted, stop the thread and close the file."""
        cdef WriterState* st = self.st
        if not self.running:
            return
        pthread_mutex_lock(&st.lock)
        st.stopping = True
        pthread_cond_signal(&st.wake)
        pthread_mutex_unlock(&st.lock)
        with nogil:
            pthread_join(self.thread, NULL)
        self.running = False
        if st.fd >= 0:
            close(st.fd)
            st.fd = -1
        self.files.close()
        Py_DECREF(self)

    def __dealloc__(self):
        cdef WriterState* st = self.st
        if st == NULL or self.running:
            return
        _digests_free(&st.digests)
        free(st.out.data)
        free(st.scratch.data)
        pthread_mutex_destroy(&st.lock)
        pthread_cond_destroy(&st.wake)
        pthread_cond_destroy(&st.drained)
        free(st)
        self.st = NULL

    def care(self):
        """Rotate tasks.log once full and keep the directory under its cap: the caretaker's
        part, called with the GIL when ``wake_fd`` says so (or now and then)."""
        cdef WriterState* st = self.st
        pthread_mutex_lock(&st.lock)
        need, st.care = st.care, False
        size, ino, before = st.size, st.ino, st.total
        pthread_mutex_unlock(&st.lock)
        if not need:
            return
        try:
            if size >= st.max_file:
                self.files.rotate_away("tasks", ino)   # the thread follows the name to the new file
            total = self.files.make_room(3 * st.max_file)
        except OSError as exc:
            if self.files.warn is not None:
                self.files.warn(f"bemcp: tasks.log: {exc}")
            return
        pthread_mutex_lock(&st.lock)
        st.total = total + (st.total - before if before >= 0 else 0)   # and what was written meanwhile
        pthread_mutex_unlock(&st.lock)

    # -- called by the thread, with the GIL: failures --------------------------------------

    cdef void _make_room(self, Py_ssize_t room) noexcept:
        cdef WriterState* st = self.st
        try:
            total = self.files.make_room(room)
        except OSError as exc:
            self._lost(exc, 0)
            return
        except BaseException:
            return
        pthread_mutex_lock(&st.lock)
        st.total = total
        pthread_mutex_unlock(&st.lock)

    cdef int _create(self) noexcept:
        # tasks.log could not be opened: make the directory, or say why not.
        try:
            os.makedirs(self.files.directory, mode=0o700, exist_ok=True)
            return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._lost(exc, 0)
        except BaseException:
            pass
        return -1

    cdef void _failed(self, int err, long long rows) noexcept:
        self._lost(OSError(err, os.strerror(err)), rows)

    cdef void _lost(self, exc, long long rows) noexcept:
        try:
            self.st.retry_at = self.files.failed(exc, rows)
        except BaseException:
            self.st.retry_at = _clock(CLOCK_MONOTONIC) + RETRY_SECONDS
        if self.st.fd >= 0:
            close(self.st.fd)
        self.st.fd = -1

    cdef void _report(self, Py_ssize_t code) noexcept:
        try:
            if self.files.warn is not None:
                self.files.warn("bemcp: tasks.log writer: " + ("out of memory; a batch of rows was dropped"
                                if code == NO_MEMORY else "a malformed batch of rows was dropped"))
        except BaseException:
            pass
