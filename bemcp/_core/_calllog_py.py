"""tasks.log from the core's finished rows (pure-Python twin of _calllog.pyx).

The event loop hands each batch of finished tool calls (``Dispatcher.take_finished``)
to a ``TaskWriter``, whose thread formats one JSON line per call and appends them to
``tasks.log`` through ``bemcp.logs.files``. ``format_tasks`` formats one batch.
"""

import hashlib
import re
import struct
import threading
import time
from collections import deque

from orjson import dumps, loads

from ._consts import FINISHED_ROW, STATE_OK, STATUS

DIGEST_CACHE = 4096      # argument digests remembered (repeated calls hash once)
WAIT_SECONDS = 2.0       # a submitter waits this long on a full queue before calling the thread stuck
_FIXED = frozenset(("time", "pid", "id", "tool", "status", "duration_ms", "arg_bytes", "arg_digest",
                    "bytes_in", "bytes_out"))
_PLAIN = (int, float, str, bool)
_DETAIL = struct.Struct("=qq")   # a packed detail: row, length, then the JSON members
_COUNT = struct.Struct("!I")
# Formatted, not built as a dict and encoded.
_LINE = (b'{"time":%b,"pid":%d,"id":%b,"tool":%b,"status":%b,"duration_ms":%b,'
         b'"arg_bytes":%d,"arg_digest":"%b","bytes_in":%b,"bytes_out":%b')
_WS = re.compile(rb"[ \t\r\n]*")
_SCALAR_END = re.compile(rb"[,}\] \t\r\n]|\Z")
_BRACKET = re.compile(rb'["{}\[\]]')


def _milli(value):
    # Three decimals as the compiled twin writes them (llround: halves away from zero).
    scaled = value * 1000.0
    whole = int(scaled)
    if abs(scaled - whole) >= 0.5:
        whole += 1 if scaled > 0 else -1
    return b"%s%d.%03d" % (b"-" if whole < 0 else b"", abs(whole) // 1000, abs(whole) % 1000)


def _ws(s, i):
    return _WS.match(s, i).end()


def _string_end(s, i):
    # s[i] is an opening quote: the index after the closing one, or -1.
    i += 1
    while True:
        quote = s.find(b'"', i)
        if quote < 0:
            return -1
        slash = s.find(b"\\", i, quote)
        if slash < 0:
            return quote + 1
        i = slash + 2      # a backslash: the next byte is escaped


def _value_end(s, i):
    # s[i] starts a JSON value: the index after it, or -1.
    if i >= len(s):
        return -1
    c = s[i]
    if c == 0x22:
        return _string_end(s, i)
    if c in b"{[":
        depth = 0
        while True:
            found = _BRACKET.search(s, i)
            if found is None:
                return -1
            i = found.start()
            c = s[i]
            if c == 0x22:
                i = _string_end(s, i)
                if i < 0:
                    return -1
                continue
            depth += 1 if c in b"{[" else -1
            i += 1
            if depth == 0:
                return i
    return _SCALAR_END.search(s, i).start()   # a number, true, false or null


def _members(s, i, top, spans):
    # The object at s[i] ("{"): note the spans wanted at this level (top: id and params;
    # params: name and arguments). The index after its "}", or -1 for anything this
    # scanner leaves to a real parser (an escaped key, malformed text).
    n = len(s)
    i = _ws(s, i + 1)
    if i < n and s[i] == 0x7D:
        return i + 1
    while i < n:
        if s[i] != 0x22:
            return -1
        key_end = _string_end(s, i)
        if key_end < 0:
            return -1
        key = s[i + 1:key_end - 1]
        if key.find(b"\\") >= 0:   # not `in`: bytes tries an int first, raising and clearing an error
            return -1
        i = _ws(s, key_end)
        if i >= n or s[i] != 0x3A:
            return -1
        value = _ws(s, i + 1)
        if top and key == b"params":
            spans["name"] = spans["arguments"] = None   # the last "params" is the one that counts
            if value < n and s[value] == 0x7B:
                value_end = _members(s, value, False, spans)
            else:
                value_end = _value_end(s, value)
        else:
            value_end = _value_end(s, value)
        if value_end < 0:
            return -1
        if top:
            if key == b"id":
                spans["id"] = (value, value_end)
        elif key in (b"name", b"arguments"):
            spans[key.decode()] = (value, value_end)
        i = _ws(s, value_end)
        if i < n and s[i] == 0x2C:
            i = _ws(s, i + 1)
        elif i < n and s[i] == 0x7D:
            return i + 1
        else:
            return -1
    return -1


def _parsed(line):
    """(id, name, arguments) as JSON for a line the scanner left to the parser."""
    message = loads(line)
    if type(message) is not dict:
        message = {}
    params = message.get("params")
    if type(params) is not dict:
        params = {}
    args = params.get("arguments")
    return dumps(message.get("id")), dumps(params.get("name")), dumps(args) if args is not None else b"{}"


def digest(key, raw):
    """The hex digest tasks.log gives ``raw`` under ``key`` (keyed BLAKE2b, 8 bytes)."""
    if not raw:
        raise ValueError("nothing to digest")
    return hashlib.blake2b(raw, key=key, digest_size=8).hexdigest().encode()


class _Digests:
    """Keyed digests of arguments, remembered: repeated calls hash once."""

    def __init__(self, key):
        if not 1 <= len(key) <= 64:
            raise ValueError("a digest key is 1 to 64 bytes")
        self._hasher = hashlib.blake2b(key=key, digest_size=8)
        self._cache = {}

    def __call__(self, raw):
        digest = self._cache.get(raw)
        if digest is None:
            h = self._hasher.copy()
            h.update(raw)
            digest = h.hexdigest().encode()
            if len(self._cache) >= DIGEST_CACHE:
                self._cache.clear()
            self._cache[raw] = digest
        return digest


def pack_details(details):
    """What tools reported (``{row: detail}`` or ``[(row, detail), ...]``) as the formatter
    reads it: for each row with plain values to add, its row, length and JSON members."""
    items = details.items() if type(details) is dict else details
    packed = []
    for row, detail in sorted(items, key=lambda item: item[0]):
        if type(detail) is not dict or not detail:
            continue
        extra = {key: value for key, value in detail.items()
                 if key not in _FIXED and (value is None or type(value) in _PLAIN)}
        if extra:
            members = b"," + dumps(extra)[1:-1]
            packed.append(_DETAIL.pack(row, len(members)) + members)
    return b"".join(packed)


def _unpack_details(packed):
    details = {}
    pos = 0
    while pos + _DETAIL.size <= len(packed):
        row, length = _DETAIL.unpack_from(packed, pos)
        pos += _DETAIL.size
        details[row] = details.get(row, b"") + packed[pos:pos + length]
        pos += length
    return details


def format_tasks(payload, offset, pid, details, key):
    """tasks.log lines for one batch: ``(lines, calls, errors)``.

    ``payload``: a 4-byte big-endian count, that many records, then the request
    lines comma-separated (``Dispatcher.take_finished``). ``offset`` turns the
    monotonic clock into wall time; ``details`` maps a row to what its tool
    reported; ``key`` keys the argument digests.

    The id, tool name and arguments are taken from each line as it was sent (a
    scanner finds them; nothing is parsed into objects): the digest is of the
    arguments' JSON exactly as the client wrote it.
    """
    return _format(payload, offset, pid, pack_details(details) if details else b"", _Digests(key))


def _format(payload, offset, pid, packed, digest_of):
    if len(payload) < _COUNT.size:
        raise ValueError("a tasks batch needs its count")
    (count,) = _COUNT.unpack_from(payload)
    pos = _COUNT.size + count * FINISHED_ROW.size
    if pos > len(payload):
        raise ValueError(f"a tasks batch of {count} rows is cut short")
    records = FINISHED_ROW.iter_unpack(memoryview(payload)[_COUNT.size:pos])
    out = []
    errors = 0
    details = _unpack_details(packed) if packed else None
    for i, (start, end, state, size, sent) in enumerate(records):
        if state != STATE_OK:
            errors += 1
        pos = _ws(payload, pos)
        if i and pos < len(payload) and payload[pos] == 0x2C:
            pos = _ws(payload, pos + 1)
        if pos >= len(payload) or payload[pos] != 0x7B:
            raise ValueError(f"a tasks batch has {count} rows but only {i} request lines")
        spans = {"id": None, "name": None, "arguments": None}
        line_end = _members(payload, pos, True, spans)
        if line_end >= 0:
            id, name, raw = (payload[spans[key][0]:spans[key][1]] if spans[key] else default
                             for key, default in (("id", b"null"), ("name", b"null"), ("arguments", b"{}")))
        else:
            line_end = _value_end(payload, pos)
            if line_end < 0:
                raise ValueError(f"request line {i} of a tasks batch is cut short")
            try:
                id, name, raw = _parsed(payload[pos:line_end])
            except ValueError:
                raise ValueError(f"request line {i} of a tasks batch is not JSON") from None
        pos = line_end
        digest = digest_of(raw)
        line = _LINE % (
            _milli(end + offset), pid, id, name, STATUS[state] if 0 <= state < len(STATUS) else b'"%d"' % state,
            _milli((end - start) * 1e3), len(raw), digest,
            b"%d" % size if size > 0 else b"null", b"%d" % sent if sent > 0 else b"null")
        if details:   # what the tool reported, e.g. an exit code
            line += details.get(i, b"")
        out.append(line + b"}\n")
    return b"".join(out), count, errors


class TaskWriter:
    """Writes ``tasks.log`` from batches of finished calls, on a thread of its own.

    ``files``: a ``LogFiles`` for the log directory, used by this writer alone; ``pid``
    goes on every line; ``key`` keys the argument digests. With ``limit`` bytes waiting, the next submit waits
    until the thread has written the queue down to half; a thread that has not done so
    in ``wait`` seconds is stuck, and batches that find the queue full are dropped
    (counted) until it moves again. ``close`` writes everything submitted, then stops
    the thread.
    """

    def __init__(self, files, pid, key, limit, wake_fd=-1, wait=WAIT_SECONDS):
        self._files = files
        self._pid = pid
        self._limit = limit
        self._wait = wait
        self._waiting = 0
        self._stuck = False
        self._wait_seconds = 0.0
        self._waits = 0
        self._digests = _Digests(key)
        self._pending = deque()
        self._queued = 0
        self._calls = self._errors = self._dropped = 0
        self._busy = 0.0
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)   # the queue fell to half its limit
        self._wake = threading.Event()
        self._stopping = False
        self._running = True
        self._thread = threading.Thread(target=self._run, name="bemcp-tasks-log", daemon=True)
        self._thread.start()

    @property
    def files(self):
        return self._files

    def submit(self, count, records, lines, details, offset):
        """Queue one batch (``Dispatcher.take_finished``'s ``count, records, lines, details``;
        ``offset``: wall clock minus monotonic); False if it was dropped (a stuck writer)."""
        if not self._running:
            raise ValueError("the tasks.log writer is closed")
        size = len(records) + len(lines)
        with self._lock:
            if self._queued >= self._limit and not self._wait_drained():
                self._dropped += count
                return False
            self._queued += size
        packed = pack_details(details) if details else b""
        self._pending.append((count, _COUNT.pack(count) + records + lines, packed, offset, size))
        self._wake.set()
        return True

    def _wait_drained(self):
        # The queue is full (the lock is held): wait until the thread has written it down
        # to half, at most ``wait`` seconds; False if it did not (stuck).
        if self._stuck or self._wait <= 0:
            return False
        began = time.monotonic()
        self._waiting += 1
        self._waits += 1
        if not self._drained.wait_for(lambda: self._queued <= self._limit // 2 or self._stuck, self._wait):
            self._stuck = True
        self._waiting -= 1
        self._wait_seconds += time.monotonic() - began
        return not self._stuck

    def _run(self):
        pending = self._pending
        while True:
            self._wake.wait()
            self._wake.clear()
            stopping = self._stopping
            while pending:   # one write per batch: the cap and rotation see each
                count, payload, packed, offset, size = pending.popleft()
                rows = errors = 0
                began = time.monotonic()
                try:
                    lines, _, errors = _format(payload, offset, self._pid, packed, self._digests)
                except (ValueError, MemoryError) as exc:
                    with self._lock:
                        self._dropped += count
                    if self._files.warn is not None:
                        self._files.warn(f"bemcp: tasks.log writer: a batch of rows was dropped: {exc}")
                else:
                    self._files.append("tasks", lines, count)
                    rows = count
                self._busy += time.monotonic() - began
                with self._lock:
                    self._queued -= size
                    self._calls += rows
                    self._errors += errors
                    self._stuck = False   # moving again
                    if self._waiting and self._queued <= self._limit // 2:
                        self._drained.notify_all()
            if stopping and not pending:
                return

    def stats(self):
        """``(calls, errors)`` written since the last call, and rows dropped in all."""
        with self._lock:
            calls, errors, self._calls, self._errors = self._calls, self._errors, 0, 0
            return calls, errors, self._dropped + self._files.dropped

    @property
    def dropped(self):
        """Rows that never reached tasks.log: too many waiting, or the directory failing."""
        return self._dropped + self._files.dropped

    @property
    def queued(self):
        """Bytes of rows waiting for the thread."""
        return self._queued

    @property
    def wait_seconds(self):
        """Seconds submitters spent waiting for a full queue to drain, in all."""
        return self._wait_seconds

    @property
    def waits(self):
        """Submits that found the queue full and waited."""
        return self._waits

    @property
    def busy_seconds(self):
        """The thread's seconds formatting and writing, in all."""
        return self._busy

    def care(self):
        """Nothing to do here: this twin's thread rotates and caps as it appends."""

    def close(self):
        """Write everything submitted, stop the thread and close the file."""
        if not self._running:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._running = False
        self._files.close()
