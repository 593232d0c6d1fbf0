# cython: language_level=3
"""tasks.log lines from the core's finished rows (compiled; twin: _tasklog_py.py).

The log writer process calls ``format_tasks`` on each batch the server hands it
(``Dispatcher.take_finished``): one JSON line per tool call, written into one C
buffer, so a writer sharing two cores with the server and its client keeps up
with hundreds of thousands of calls a second without crowding them out.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.math cimport llround
from libc.string cimport memcpy

from orjson import OPT_SORT_KEYS, dumps, loads

STATUS = (b'"running"', b'"ok"', b'"error"', b'"timeout"', b'"cancelled"', b'"killed"', b'"rejected"')
DIGEST_CACHE = 4096      # argument digests remembered (repeated calls hash once)
_FIXED = frozenset(("time", "pid", "id", "tool", "status", "duration_ms", "arg_bytes", "arg_digest",
                    "bytes_in", "bytes_out"))

cdef object _loads = loads
cdef object _dumps = dumps
cdef int _SORTED = OPT_SORT_KEYS


# The server's Dispatcher.take_finished records: the same 40 bytes as _dispatch.pxd's
# FinishedRow (a test checks both twins against bemcp.logs.sink.RECORD).
cdef struct Row:
    double start
    double end
    long long state
    long long size
    long long sent


cdef struct Out:
    char* data
    Py_ssize_t len
    Py_ssize_t cap


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


def format_tasks(bytes payload, double offset, long long pid, dict details, dict digests, dict tools,
                 digest_of):
    """tasks.log lines for one batch: ``(lines, calls, errors)``.

    ``payload``: a 4-byte big-endian count, that many records, then the request
    lines comma-separated (``Dispatcher.take_finished``). ``offset`` turns the
    monotonic clock into wall time; ``details`` maps a row to what its tool
    reported; ``digests`` (argument JSON -> hex digest) and ``tools`` (name ->
    its JSON) are caches kept across batches; ``digest_of(raw)`` digests a miss.
    """
    cdef const unsigned char* base = <const unsigned char*>PyBytes_AS_STRING(payload)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t count, body, i
    cdef Py_ssize_t errors = 0
    cdef Row row
    cdef Out out
    cdef int overflow
    cdef long long number
    if size < 4:
        raise ValueError("a tasks batch needs its count")
    count = (base[0] << 24) | (base[1] << 16) | (base[2] << 8) | base[3]
    body = 4 + count * <Py_ssize_t>sizeof(Row)
    if body > size:
        raise ValueError(f"a tasks batch of {count} rows is cut short")
    messages = _loads(b"[" + payload[body:] + b"]")
    if len(messages) != count:
        raise ValueError(f"a tasks batch has {count} rows but {len(messages)} requests")
    out.data = NULL
    out.len = out.cap = 0
    try:
        for i in range(count):
            memcpy(&row, base + 4 + i * sizeof(Row), sizeof(Row))   # unaligned in the payload
            if row.state != 1:
                errors += 1
            message = messages[i]
            if type(message) is not dict:
                message = {}
            params = (<dict>message).get("params")
            if type(params) is not dict:
                params = {}
            args = (<dict>params).get("arguments")
            # Sorted keys: the same arguments give the same digest whatever their order.
            raw = _dumps(args, option=_SORTED) if args is not None else b"{}"
            digest = digests.get(raw)
            if digest is None:
                digest = digest_of(raw)
                if len(digests) >= DIGEST_CACHE:
                    digests.clear()
                digests[raw] = digest
            tool = (<dict>params).get("name")
            encoded_tool = tools.get(tool)
            if encoded_tool is None:
                encoded_tool = tools[tool] = _dumps(tool)
            id = (<dict>message).get("id")

            _put_text(&out, b'{"time":', 8)
            _put_milli(&out, row.end + offset)
            _put_text(&out, b',"pid":', 7)
            _put_int(&out, pid)
            _put_text(&out, b',"id":', 6)
            overflow = 1
            if type(id) is int:
                number = PyLong_AsLongLongAndOverflow(id, &overflow)
            if overflow == 0:
                _put_int(&out, number)
            else:
                _put(&out, _dumps(id))
            _put_text(&out, b',"tool":', 8)
            _put(&out, encoded_tool)
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
                    extra = {name: value for name, value in (<dict>detail).items()
                             if name not in _FIXED and (value is None or type(value) in (int, float, str, bool))}
                    if extra:
                        _put_text(&out, b",", 1)
                        _put(&out, _dumps(extra)[1:-1])
            _put_text(&out, b"}\n", 2)
        return PyBytes_FromStringAndSize(out.data, out.len), count, errors
    finally:
        PyMem_Free(out.data)
