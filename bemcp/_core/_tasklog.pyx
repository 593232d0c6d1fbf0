# cython: language_level=3
"""tasks.log lines from the core's finished rows (compiled; twin: _tasklog_py.py).

The log writer process calls ``format_tasks`` on each batch the server hands it
(``Dispatcher.take_finished``): one JSON line per tool call, written into one C
buffer, so a writer sharing two cores with the server and its client keeps up
with hundreds of thousands of calls a second without crowding them out.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.math cimport llround
from libc.string cimport memchr, memcmp, memcpy

from orjson import dumps, loads

STATUS = (b'"running"', b'"ok"', b'"error"', b'"timeout"', b'"cancelled"', b'"killed"', b'"rejected"')
DIGEST_CACHE = 4096      # argument digests remembered (repeated calls hash once)
_FIXED = frozenset(("time", "pid", "id", "tool", "status", "duration_ms", "arg_bytes", "arg_digest",
                    "bytes_in", "bytes_out"))

cdef object _loads = loads
cdef object _dumps = dumps


cdef int _reserve(Out* out, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap = out.cap
    cdef char* grown
    if out.len + more <= cap:
        return 0
    while cap < out.len + more:
        cap = cap * 2 if cap else 65536
    grown = <char*>PyMem_Realloc(out.data, cap)
    if grown == NULL:
        raise MemoryError()
    out.data = grown
    out.cap = cap
    return 0


cdef int _put(Out* out, bytes data) except -1:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    _reserve(out, n)
    memcpy(out.data + out.len, PyBytes_AS_STRING(data), n)
    out.len += n
    return 0


cdef int _put_text(Out* out, const char* text, Py_ssize_t n) except -1:
    _reserve(out, n)
    memcpy(out.data + out.len, text, n)
    out.len += n
    return 0


cdef int _put_int(Out* out, long long value) except -1:
    # printf is slow enough to show at this rate; digits are written right to left.
    cdef char buf[24]
    cdef int i = 24
    cdef bint negative = value < 0
    cdef unsigned long long v = <unsigned long long>(-value if negative else value)
    while True:
        i -= 1
        buf[i] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    if negative:
        i -= 1
        buf[i] = 45
    return _put_text(out, buf + i, 24 - i)


cdef int _put_milli(Out* out, double value) except -1:
    # ``value`` with three decimals (a JSON number): 1795511104.750, 0.002.
    cdef long long scaled = llround(value * 1000.0)
    cdef char buf[4]
    if scaled < 0:
        _put_text(out, b"-", 1)
        scaled = -scaled
    _put_int(out, scaled // 1000)
    scaled %= 1000
    buf[0] = 46
    buf[1] = <char>(48 + scaled // 100)
    buf[2] = <char>(48 + scaled // 10 % 10)
    buf[3] = <char>(48 + scaled % 10)
    return _put_text(out, buf, 4)


cdef inline Py_ssize_t _ws(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and (s[i] == 32 or s[i] == 10 or s[i] == 13 or s[i] == 9):
        i += 1
    return i


cdef Py_ssize_t _string_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    # s[i] is an opening quote: the index after the closing one, or -1.
    i += 1
    while i < n:
        if s[i] == 92:      # a backslash: the next byte is escaped
            i += 2
        elif s[i] == 34:
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
    if c == 34:
        return _string_end(s, i, n)
    if c == 123 or c == 91:
        while i < n:
            c = s[i]
            if c == 34:
                i = _string_end(s, i, n)
                if i < 0:
                    return -1
                continue
            if c == 123 or c == 91:
                depth += 1
            elif c == 125 or c == 93:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return -1
    while i < n:   # a number, true, false or null
        c = s[i]
        if c == 44 or c == 125 or c == 93 or c == 32 or c == 10 or c == 13 or c == 9:
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
    if i < n and s[i] == 125:
        return i + 1
    while i < n:
        if s[i] != 34:
            return -1
        key_end = _string_end(s, i, n)
        if key_end < 0:
            return -1
        key = i + 1
        key_end -= 1
        if memchr(s + key, 92, key_end - key) != NULL:
            return -1
        i = _ws(s, key_end + 1, n)
        if i >= n or s[i] != 58:
            return -1
        value = _ws(s, i + 1, n)
        if top and _is(s, key, key_end, b"params", 6):
            spans.name_start = spans.args_start = -1   # the last "params" is the one that counts
            if value < n and s[value] == 123:
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
        if i < n and s[i] == 44:
            i = _ws(s, i + 1, n)
        elif i < n and s[i] == 125:
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


def format_tasks(bytes payload, double offset, long long pid, dict details, dict digests, digest_of):
    """tasks.log lines for one batch: ``(lines, calls, errors)``.

    ``payload``: a 4-byte big-endian count, that many records, then the request
    lines comma-separated (``Dispatcher.take_finished``). ``offset`` turns the
    monotonic clock into wall time; ``details`` maps a row to what its tool
    reported; ``digests`` (arguments -> hex digest) is a cache kept across
    batches; ``digest_of(raw)`` digests a miss.

    The id, tool name and arguments are taken from each line as it was sent (a
    scanner finds them; nothing is parsed into objects): the digest is of the
    arguments' JSON exactly as the client wrote it.
    """
    cdef const unsigned char* base = <const unsigned char*>PyBytes_AS_STRING(payload)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t count, pos, end, i
    cdef Py_ssize_t errors = 0
    cdef Row row
    cdef Out out
    cdef Spans spans
    if size < 4:
        raise ValueError("a tasks batch needs its count")
    count = (base[0] << 24) | (base[1] << 16) | (base[2] << 8) | base[3]
    pos = 4 + count * <Py_ssize_t>sizeof(Row)
    if pos > size:
        raise ValueError(f"a tasks batch of {count} rows is cut short")
    out.data = NULL
    out.len = out.cap = 0
    try:
        for i in range(count):
            memcpy(&row, base + 4 + i * sizeof(Row), sizeof(Row))   # unaligned in the payload
            if row.state != 1:
                errors += 1
            pos = _ws(base, pos, size)
            if i and pos < size and base[pos] == 44:
                pos = _ws(base, pos + 1, size)
            if pos >= size or base[pos] != 123:
                raise ValueError(f"a tasks batch has {count} rows but only {i} request lines")
            spans.id_start = spans.name_start = spans.args_start = -1
            end = _members(base, pos, size, True, &spans)
            if end >= 0:
                id = PyBytes_FromStringAndSize(<const char*>base + spans.id_start, spans.id_end - spans.id_start) \
                    if spans.id_start >= 0 else b"null"
                name = PyBytes_FromStringAndSize(<const char*>base + spans.name_start,
                                                 spans.name_end - spans.name_start) \
                    if spans.name_start >= 0 else b"null"
                raw = PyBytes_FromStringAndSize(<const char*>base + spans.args_start,
                                                spans.args_end - spans.args_start) \
                    if spans.args_start >= 0 else b"{}"
            else:
                end = _value_end(base, pos, size)
                if end < 0:
                    raise ValueError(f"request line {i} of a tasks batch is cut short")
                id, name, raw = _parsed(payload[pos:end])
            pos = end
            digest = digests.get(raw)
            if digest is None:
                digest = digest_of(raw)
                if len(digests) >= DIGEST_CACHE:
                    digests.clear()
                digests[raw] = digest

            _put_text(&out, b'{"time":', 8)
            _put_milli(&out, row.end + offset)
            _put_text(&out, b',"pid":', 7)
            _put_int(&out, pid)
            _put_text(&out, b',"id":', 6)
            _put(&out, id)
            _put_text(&out, b',"tool":', 8)
            _put(&out, name)
            _put_text(&out, b',"status":', 10)
            _put(&out, STATUS[row.state] if 0 <= row.state < 7 else b'"%d"' % row.state)
            _put_text(&out, b',"duration_ms":', 15)
            _put_milli(&out, (row.end - row.start) * 1e3)
            _put_text(&out, b',"arg_bytes":', 13)
            _put_int(&out, PyBytes_GET_SIZE(raw))
            _put_text(&out, b',"arg_digest":"', 15)
            _put(&out, digest)
            _put_text(&out, b'","bytes_in":', 13)
            if row.size > 0:
                _put_int(&out, row.size)
            else:
                _put_text(&out, b"null", 4)
            _put_text(&out, b',"bytes_out":', 13)
            if row.sent > 0:
                _put_int(&out, row.sent)
            else:
                _put_text(&out, b"null", 4)
            if details:
                detail = details.get(i)
                if type(detail) is dict and detail:   # what the tool reported, e.g. an exit code
                    extra = {key: value for key, value in (<dict>detail).items()
                             if key not in _FIXED and (value is None or type(value) in (int, float, str, bool))}
                    if extra:
                        _put_text(&out, b",", 1)
                        _put(&out, _dumps(extra)[1:-1])
            _put_text(&out, b"}\n", 2)
        return PyBytes_FromStringAndSize(out.data, out.len), count, errors
    finally:
        PyMem_Free(out.data)
