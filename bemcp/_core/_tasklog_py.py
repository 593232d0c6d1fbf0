"""tasks.log lines from the core's finished rows (pure-Python twin of _tasklog.pyx).

The log writer process calls ``format_tasks`` on each batch the server hands it
(``Dispatcher.take_finished``): one JSON line per tool call.
"""

import struct

from orjson import OPT_SORT_KEYS, dumps, loads

STATUS = (b'"running"', b'"ok"', b'"error"', b'"timeout"', b'"cancelled"', b'"killed"', b'"rejected"')
DIGEST_CACHE = 4096      # argument digests remembered (repeated calls hash once)
_FIXED = frozenset(("time", "pid", "id", "tool", "status", "duration_ms", "arg_bytes", "arg_digest",
                    "bytes_in", "bytes_out"))
_PLAIN = (int, float, str, bool)
_COUNT = struct.Struct("!I")
_ROW = struct.Struct("=ddqqq")   # the compiled twin's Row; Dispatcher.take_finished's records
# Formatted, not built as a dict and encoded; %.3f floats are JSON numbers.
_LINE = (b'{"time":%.3f,"pid":%d,"id":%b,"tool":%b,"status":%b,"duration_ms":%.3f,'
         b'"arg_bytes":%d,"arg_digest":"%b","bytes_in":%b,"bytes_out":%b')


def format_tasks(payload, offset, pid, details, digests, tools, digest_of):
    """tasks.log lines for one batch: ``(lines, calls, errors)``.

    ``payload``: a 4-byte big-endian count, that many records, then the request
    lines comma-separated (``Dispatcher.take_finished``). ``offset`` turns the
    monotonic clock into wall time; ``details`` maps a row to what its tool
    reported; ``digests`` (argument JSON -> hex digest) and ``tools`` (name ->
    its JSON) are caches kept across batches; ``digest_of(raw)`` digests a miss.
    """
    if len(payload) < _COUNT.size:
        raise ValueError("a tasks batch needs its count")
    (count,) = _COUNT.unpack_from(payload)
    body = _COUNT.size + count * _ROW.size
    if body > len(payload):
        raise ValueError(f"a tasks batch of {count} rows is cut short")
    messages = loads(b"[" + payload[body:] + b"]")
    if len(messages) != count:
        raise ValueError(f"a tasks batch has {count} rows but {len(messages)} requests")
    out = []
    errors = 0
    records = _ROW.iter_unpack(memoryview(payload)[_COUNT.size:body])
    for i, ((start, end, state, size, sent), message) in enumerate(zip(records, messages)):
        if state != 1:
            errors += 1
        if type(message) is not dict:
            message = {}
        params = message.get("params")
        if type(params) is not dict:
            params = {}
        args = params.get("arguments")
        # Sorted keys: the same arguments give the same digest whatever their order.
        raw = dumps(args, option=OPT_SORT_KEYS) if args is not None else b"{}"
        digest = digests.get(raw)
        if digest is None:
            digest = digest_of(raw)
            if len(digests) >= DIGEST_CACHE:
                digests.clear()
            digests[raw] = digest
        tool = params.get("name")
        encoded_tool = tools.get(tool)
        if encoded_tool is None:
            encoded_tool = tools[tool] = dumps(tool)
        id = message.get("id")
        line = _LINE % (
            end + offset, pid, b"%d" % id if type(id) is int else dumps(id), encoded_tool,
            STATUS[state] if 0 <= state < 7 else b'"%d"' % state, (end - start) * 1e3,
            len(raw), digest, b"%d" % size if size > 0 else b"null", b"%d" % sent if sent > 0 else b"null")
        detail = details.get(i) if details else None
        if type(detail) is dict and detail:   # what the tool reported, e.g. an exit code
            extra = {name: value for name, value in detail.items()
                     if name not in _FIXED and (value is None or type(value) in _PLAIN)}
            if extra:
                line += b"," + dumps(extra)[1:-1]
        out.append(line + b"}\n")
    return b"".join(out), count, errors
