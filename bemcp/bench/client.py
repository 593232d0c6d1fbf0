"""The load client: a target's process and its wire, stdio pipes or Streamable HTTP.

Deliberately plain, so the client is never what limits a target: blocking
os.read/os.write on the pipes (a selector over raw sockets for HTTP), requests
encoded before any clock starts, answers counted by newline while timed and every
one of them checked afterwards (id and content). A target that crashes, answers
wrongly or hangs raises TargetError with what it did; the run carries on without it.
"""

import collections
import contextlib
import os
import select
import selectors
import signal
import socket
import subprocess
import tempfile
import threading
import time
from urllib.parse import urlsplit

import orjson
import psutil

HANDSHAKE_VERSION = "2025-11-25"
CLIENT_INFO = {"name": "bemcp-bench", "version": "1"}


class TargetError(Exception):
    """What a target did wrong: ``kind`` is "crashed", "wrong answer", "hung" or "error"."""

    def __init__(self, kind, message):
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message


@contextlib.contextmanager
def time_limit(seconds, what):
    """Raise TargetError("hung") if the block runs longer than ``seconds`` (SIGALRM).

    A timer, rather than poll() before every read, keeps the hot loops to one system
    call per read, the same for every target. Main thread only; limits nest (an inner
    one never outlives or cancels the outer one).
    """
    def expired(signum, frame):
        raise TargetError("hung", f"{what}: no answer within {seconds:g} s")
    outer_left = signal.getitimer(signal.ITIMER_REAL)[0]
    if outer_left and outer_left < seconds:
        yield   # the outer limit comes first and speaks for both
        return
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(1e-3, outer_left - (time.monotonic() - started)))


def encode_request(id, method, params):
    return orjson.dumps({"jsonrpc": "2.0", "id": id, "method": method, "params": params})


def client_cpu_seconds():
    """User + system CPU time of this (load client) process, its threads included."""
    t = os.times()
    return t.user + t.system


class Pacing:
    """The clock of a pipelined run, shared by both transports: send for ``seconds``, call
    ``on_tick(elapsed, answered)`` every ``tick`` seconds, and time the run and the client's CPU."""

    __slots__ = ("on_tick", "tick", "t0", "cpu0", "stop_at", "next_tick", "sending")

    def __init__(self, seconds, on_tick, tick):
        self.on_tick = on_tick
        self.tick = tick
        self.cpu0 = client_cpu_seconds()
        self.t0 = time.perf_counter()
        self.stop_at = self.t0 + seconds
        self.next_tick = self.t0 + tick if on_tick else float("inf")
        self.sending = True

    def step(self, answered, before_tick=None):
        """Once per turn of the loop: tick when due (after ``before_tick()``), stop sending on time."""
        t = time.perf_counter()
        if t >= self.next_tick:
            if before_tick is not None:
                before_tick()
            self.on_tick(t - self.t0, answered)
            self.next_tick += self.tick
        if self.sending and t >= self.stop_at:
            self.sending = False

    def spent(self):
        """(wall seconds, client CPU seconds) since the start."""
        return time.perf_counter() - self.t0, client_cpu_seconds() - self.cpu0


def check_answer(msg, id, expect_text=None):
    """The answer to request ``id``: a result, not an error; with ``expect_text``, a
    tools/call result whose first content block is that text. The result, or TargetError."""
    if not isinstance(msg, dict) or msg.get("id") != id:
        raise TargetError("wrong answer", f"expected the answer to id {id}, got {_short(msg)}")
    if "error" in msg:
        raise TargetError("error", f"request {id} failed: {_short(msg['error'])}")
    result = msg.get("result")
    if not isinstance(result, dict):
        raise TargetError("wrong answer", f"answer to {id} has no result object: {_short(msg)}")
    if expect_text is not None:
        if result.get("isError"):
            raise TargetError("error", f"tool call {id} failed: {_short(result)}")
        content = result.get("content")
        if not (isinstance(content, list) and content and isinstance(content[0], dict)
                and content[0].get("text") == expect_text):
            raise TargetError("wrong answer", f"call {id} should echo {expect_text!r}, got {_short(result)}")
    return result


def _short(value, size=300):
    text = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else repr(value)
    return text if len(text) <= size else text[:size] + "..."


# -- the echo calls kept in flight ------------------------------------------------------------------


class EchoRing:
    """Pre-encoded echo calls with ids FIRST..FIRST+size-1, each echoing its own id as text,
    laid out twice so that any run of up to ``size`` consecutive requests is one slice."""

    FIRST = 1_000_000
    SIZE = 1 << 16

    def __init__(self, tool, argument, size=SIZE):
        self.size = size
        self.bodies = [encode_request(self.FIRST + i, "tools/call",
                                      {"name": tool, "arguments": {argument: str(self.FIRST + i)}})
                       for i in range(size)]
        lines = [b + b"\n" for b in self.bodies]
        self.data = memoryview(b"".join(lines) * 2)
        offsets = [0]
        for line in lines + lines:
            offsets.append(offsets[-1] + len(line))
        self.offsets = offsets

    def chunk(self, position, count):
        """Requests ``position .. position+count-1`` as newline-framed bytes (positions grow forever)."""
        start = position % self.size
        return self.data[self.offsets[start]:self.offsets[start + count]]

    def id_at(self, position):
        return self.FIRST + position % self.size


class AnswerCheck:
    """Checks echo answers against what was sent: each id answered as often as it was
    sent, each with its own text. Counts instead of raising, for the stress run."""

    def __init__(self, canned):
        self.canned = canned
        self.answered = collections.Counter()
        self.good = 0
        self.errors = 0
        self.first_error = None

    def lines(self, data):
        if self.canned:
            self.good += data.count(b"\n")
            return
        for line in data.split(b"\n"):
            if line:
                self.message(line)

    def fail(self, error):
        """An answer that could not even be read as one (HTTP status, body)."""
        self.errors += 1
        if self.first_error is None:
            self.first_error = str(error)

    def message(self, raw, msg=None):
        if self.canned:
            self.good += 1
            return
        try:
            msg = orjson.loads(raw) if msg is None else msg
            if "id" not in msg:
                return   # a notification (log, progress): not an answer
            id = msg["id"]
            self.answered[id] += 1
            check_answer(msg, id, str(id))
            self.good += 1
        except (TargetError, orjson.JSONDecodeError, TypeError) as exc:
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{exc} (in {_short(raw, 200)})"

    def verify(self, ring, sent):
        """Raise TargetError unless every one of ``sent`` requests had exactly one good answer."""
        if self.errors:
            raise TargetError("wrong answer", f"{self.errors} of {sent} answers wrong: {self.first_error}")
        if self.canned:
            if self.good != sent:
                raise TargetError("wrong answer", f"{self.good} answers for {sent} requests")
            return
        rounds, rest = divmod(sent, ring.size)
        for id, n in self.answered.items():
            expected = rounds + (1 if id - ring.FIRST < rest else 0)
            if n != expected:
                raise TargetError("wrong answer", f"id {id} answered {n} times, sent {expected} times")
        if sum(self.answered.values()) != sent:
            raise TargetError("wrong answer", f"{sum(self.answered.values())} answers for {sent} requests")


# -- process facts ------------------------------------------------------------------------


class ProcessTree:
    """A target's processes: the root and everything it started (helpers, children)."""

    def __init__(self, pid):
        self.pid = pid
        try:
            self.root = psutil.Process(pid)
        except psutil.Error:
            self.root = None

    def processes(self):
        if self.root is None:
            return []
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []

    def rss_mb(self):
        """Resident memory of every process of the tree, added up (MB)."""
        total = 0
        for p in self.processes():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def cpu_seconds(self):
        """CPU time of the tree so far: every thread's run time from the scheduler (ns; the
        clock-tick counters are too coarse for an idle server), plus children that have
        exited and been waited for."""
        total = 0.0
        for p in self.processes():
            ran = _schedstat_seconds(p.pid)
            try:
                t = p.cpu_times()
                total += (t.user + t.system) if ran is None else ran
                if p is self.root:
                    total += t.children_user + t.children_system
            except psutil.Error:
                pass
        return total

    def count(self):
        return len(self.processes())


def _schedstat_seconds(pid):
    """Seconds the threads of ``pid`` have run (Linux /proc/PID/task/*/schedstat), or None."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    ns = 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                ns += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass   # a thread that has just exited
    return ns / 1e9


class Sampler(threading.Thread):
    """The tree's RSS every ``interval`` seconds until stopped: [(t, MB)] and the peak."""

    def __init__(self, tree, interval=0.1):
        super().__init__(daemon=True)
        self.tree, self.interval = tree, interval
        self.samples = []
        self.peak = 0.0
        self.done = threading.Event()
        self.t0 = time.perf_counter()

    def run(self):
        while not self.done.is_set():
            rss = self.tree.rss_mb()
            self.samples.append((time.perf_counter() - self.t0, rss))
            self.peak = max(self.peak, rss)
            self.done.wait(self.interval)

    def stop(self):
        self.done.set()
        self.join()
        return self.peak


# -- sessions -----------------------------------------------------------------------------


class Session:
    """A started target: spawn (if it has a command), handshake, requests, process facts."""

    kind = "?"

    def __init__(self, target):
        self.target = target
        self.canned = target.canned
        self.proc = None
        self.stderr = None
        self.started = time.perf_counter()
        self.ids = 0
        self.server_capabilities = None
        if target.argv:
            env = dict(os.environ)
            for key, value in target.env.items():
                if value is None:
                    env.pop(key, None)
                else:
                    env[key] = value
            # stderr goes to a file: a pipe nobody drains would stall a chatty server mid-run.
            self.stderr = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(target.argv, stdin=self._stdin(), stdout=self._stdout(),
                                         stderr=self.stderr, env=env, cwd=target.cwd, bufsize=0)
        self.tree = ProcessTree(self.proc.pid if self.proc else target.find_pid())

    def _stdin(self):
        return subprocess.DEVNULL

    def _stdout(self):
        return subprocess.DEVNULL

    def next_id(self):
        self.ids += 1
        return self.ids

    def initialize(self, timeout):
        """The handshake; seconds from spawn to the initialize answer."""
        # elicitation: the surface section answers a tool's asks (nothing asks otherwise)
        result = self.request("initialize", {"protocolVersion": HANDSHAKE_VERSION,
                                             "capabilities": {"elicitation": {}}, "clientInfo": CLIENT_INFO}, timeout)
        self.server_capabilities = result.get("capabilities") if isinstance(result, dict) else None
        ready = time.perf_counter() - self.started
        self.notify("notifications/initialized")
        return ready

    def list_tools(self, timeout):
        return self.request("tools/list", {}, timeout).get("tools", [])

    def call(self, tool, arguments, timeout, expect_text=None):
        return self.request("tools/call", {"name": tool, "arguments": arguments}, timeout, expect_text)

    def stderr_bytes(self):
        if self.stderr is None:
            return None
        try:
            return os.fstat(self.stderr.fileno()).st_size
        except (OSError, ValueError):
            return None

    def stderr_tail(self, size=400):
        if self.stderr is None:
            return ""
        try:
            end = self.stderr.seek(0, os.SEEK_END)
            self.stderr.seek(max(0, end - size))
            return self.stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def died(self):
        """TargetError("crashed") with the exit status and last stderr, if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.stderr_tail()
            return TargetError("crashed", f"exited with status {self.proc.returncode}"
                               + (f"; its stderr ends with: {tail}" if tail else ""))
        return None

    def crashed(self, what):
        """The error for a closed connection: the exit, if the process is gone (given a moment)."""
        for _ in range(20):
            err = self.died()
            if err or self.proc is None:
                break
            time.sleep(0.01)
        return err or TargetError("crashed", f"{self.target.name} closed the connection during {what}")

    def close(self, timeout=5.0):
        """Stop the target: EOF (SIGTERM for an HTTP server) and up to ``timeout`` s to exit, then
        SIGKILL; whatever it started goes too."""
        deadline = time.monotonic() + timeout
        self._close_wire(deadline)
        if self.proc is None:
            return None
        survivors = self.tree.processes()[1:]
        if self.kind == "http":
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for p in survivors:   # a helper left behind would skew the next target's figures
            with contextlib.suppress(psutil.Error):
                p.kill()
        if self.stderr is not None:
            self.stderr.close()
        return code

    def _close_wire(self, deadline):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StdioSession(Session):
    """A server on stdin/stdout pipes; messages are lines."""

    kind = "stdio"

    def __init__(self, target):
        super().__init__(target)
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        self.pending = b""
        self.buffer = bytearray(1 << 20)   # reads land here: no allocation per read
        self.view = memoryview(self.buffer)

    def _stdin(self):
        return subprocess.PIPE

    def _stdout(self):
        return subprocess.PIPE

    def write(self, data):
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.wfd, view):]
        except (BrokenPipeError, ConnectionResetError):
            raise self.crashed("a write") from None

    def read_line(self):
        """The next line (without its newline); blocks."""
        while True:
            i = self.pending.find(b"\n")
            if i >= 0:
                line = self.pending[:i]
                self.pending = self.pending[i + 1:]
                return line
            n = os.readv(self.rfd, (self.buffer,))
            if not n:
                raise self.crashed("a read")
            self.pending += self.view[:n]

    def read_answer(self):
        """The next message with an id that is not a request of the server's own (notifications skipped)."""
        while True:
            line = self.read_line()
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise TargetError("wrong answer", f"not JSON on stdout: {_short(line)}") from None
            if not isinstance(msg, dict):
                raise TargetError("wrong answer", f"not a JSON-RPC message: {_short(line)}")
            if "id" in msg and "method" not in msg:
                return msg

    def request(self, method, params, timeout, expect_text=None):
        id = self.next_id()
        self.write(encode_request(id, method, params) + b"\n")
        with time_limit(timeout, f"{self.target.name} {method}"):
            msg = self.read_answer()
        if self.canned:
            return msg.get("result", {})
        return check_answer(msg, id, expect_text)

    def notify(self, method, params=None):
        if not self.canned:   # the floor would answer it, and nobody reads that answer
            message = {"jsonrpc": "2.0", "method": method}
            if params is not None:
                message["params"] = params
            self.write(orjson.dumps(message) + b"\n")

    def send_calls(self, lines):
        self.write(b"".join(lines))

    def read_answers(self, count, timeout, what):
        """``count`` answers, in the order they come."""
        out = []
        with time_limit(timeout, what):
            while len(out) < count:
                out.append(self.read_answer())
        return out

    def pipeline(self, ring, window, seconds, check, on_tick=None, tick=0.5):
        """Keep ``window`` echo calls in flight for ``seconds``, then collect the stragglers.

        Returns (sent, answered, wall, client CPU). Answers are counted by newline while
        timed; ``check`` (an AnswerCheck) sees every byte afterwards, or each ``tick``
        when ``on_tick(elapsed, answered)`` is given (the stress run: bounded memory).
        A canned target's answers are counted only (a floor's millions a second would
        otherwise be kept).
        """
        readv, write, rfd, wfd = os.readv, os.write, self.rfd, self.wfd
        buf, view = self.buffer, self.view
        target = (buf,)
        count = buf.count
        chunks = []
        keep = None if check.canned else chunks.append   # canned answers are only counted
        partial = b""

        def check_so_far():   # the complete lines read so far, each tick: bounded memory
            nonlocal partial
            data = partial + b"".join(chunks)
            chunks.clear()
            cut = data.rfind(b"\n") + 1
            partial = data[cut:]
            check.lines(data[:cut])
        before_tick = check_so_far if keep is not None else None
        sent = answered = 0
        pace = Pacing(seconds, on_tick, tick)
        try:
            while True:
                if pace.sending:
                    room = window - (sent - answered)
                    if room > 0:
                        out = ring.chunk(sent, room)
                        while out:
                            out = out[write(wfd, out):]
                        sent += room
                if answered >= sent:
                    break
                n = readv(rfd, target)
                if not n:
                    raise self.crashed("the pipelined calls")
                answered += count(b"\n", 0, n)
                if keep is not None:
                    keep(view[:n].tobytes())
                if pace.sending or on_tick:
                    pace.step(answered, before_tick)
        except (BrokenPipeError, ConnectionResetError):
            raise self.crashed("the pipelined calls") from None
        wall, cpu = pace.spent()
        if keep is None:
            check.good += answered
        else:
            check.lines(partial + b"".join(chunks))
        return sent, answered, wall, cpu

    def _close_wire(self, deadline):
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        # Keep reading stdout, so a server flushing its last answers never blocks on a full pipe.
        sel = selectors.DefaultSelector()
        sel.register(self.rfd, selectors.EVENT_READ)
        try:
            while self.proc.poll() is None and time.monotonic() < deadline:
                if sel.select(0.02) and not os.read(self.rfd, 1 << 16):
                    time.sleep(0.01)
        except OSError:
            pass
        finally:
            sel.close()
        self.proc.stdout.close()


# -- Streamable HTTP ------------------------------------------------------------------------


class _HttpConnection:
    """One keep-alive HTTP/1.1 connection: requests out, whole responses parsed in."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buffer = b""
        self.inflight = collections.deque()   # ids (or None for a notification) awaiting an answer

    def parse(self):
        """The next complete response as (status, headers, body), or None."""
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = self.buffer[:head_end].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        start = head_end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body, pos = [], start
            while True:
                line_end = self.buffer.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(self.buffer[pos:line_end].split(b";")[0], 16)
                if len(self.buffer) < line_end + 2 + size + 2:
                    return None
                if size == 0:
                    trailer_end = self.buffer.find(b"\r\n", line_end + 2)
                    if trailer_end < 0:
                        return None
                    self.buffer = self.buffer[trailer_end + 2:]
                    return status, headers, b"".join(body)
                body.append(self.buffer[line_end + 2:line_end + 2 + size])
                pos = line_end + 2 + size + 2
        length = int(headers.get("content-length", "0"))
        if len(self.buffer) < start + length:
            return None
        body = self.buffer[start:start + length]
        self.buffer = self.buffer[start + length:]
        return status, headers, body

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()


def messages_of(headers, body):
    """The JSON-RPC messages of an HTTP answer: a JSON body, or an SSE stream's data events."""
    if headers.get("content-type", "").startswith("text/event-stream"):
        out, data = [], []
        for line in body.split(b"\n"):
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))
            elif not line and data:
                if any(data):   # an event without data (a priming event) carries no message
                    out.append(orjson.loads(b"\n".join(data)))
                data = []
        if any(data):
            out.append(orjson.loads(b"\n".join(data)))
        return out
    if not body:
        return []
    msg = orjson.loads(body)
    return msg if isinstance(msg, list) else [msg]


class HttpSession(Session):
    """A Streamable HTTP server: one POST per message, a keep-alive connection per call in flight."""

    kind = "http"

    def __init__(self, target):
        parts = urlsplit(target.url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.headers = {"Host": f"{self.host}:{self.port}", "Content-Type": "application/json",
                        "Accept": "application/json, text/event-stream"}
        self.pool = []
        super().__init__(target)
        if self.proc is not None:
            self._wait_listening(60.0)
            self.tree = ProcessTree(self.proc.pid)

    def _wait_listening(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            err = self.died()
            if err:
                raise err
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TargetError("hung", f"nothing listens on {self.host}:{self.port} "
                                              f"{timeout:g} s after start") from None
                time.sleep(0.01)

    def _encode(self, body):
        head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        return (f"POST {self.path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n"
                .encode("latin-1") + body)

    def _connection(self, reuse=True):
        try:
            return self.pool.pop() if self.pool and reuse else _HttpConnection(self.host, self.port)
        except OSError as exc:
            raise self.crashed(f"connecting ({exc})") from None

    def _exchange(self, body, timeout, what):
        """POST one message; (status, headers, body) of the answer."""
        conn = self._connection()
        sel = selectors.DefaultSelector()
        try:
            self._send(conn, self._encode(body))
            sel.register(conn.sock, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while True:
                answer = conn.parse()
                if answer is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TargetError("hung", f"{what}: no answer within {timeout:g} s")
                data = conn.sock.recv(1 << 16)
                if not data:
                    conn.close()
                    raise self.crashed(what)
                conn.buffer += data
        except (ConnectionError, OSError) as exc:
            conn.close()
            raise self.crashed(f"{what} ({exc})") from None
        finally:
            sel.close()
        if answer[1].get("connection", "").lower() == "close":
            conn.close()
        else:
            self.pool.append(conn)
        return answer

    @staticmethod
    def _send(conn, data):
        view = memoryview(data)
        while view:
            try:
                view = view[conn.sock.send(view):]
            except BlockingIOError:
                select.select([], [conn.sock], [], 1.0)

    def request(self, method, params, timeout, expect_text=None):
        id = self.next_id()
        status, headers, body = self._exchange(encode_request(id, method, params), timeout,
                                               f"{self.target.name} {method}")
        if method == "initialize":
            session = headers.get("mcp-session-id")
            if session:
                self.headers["Mcp-Session-Id"] = session
            self.headers["MCP-Protocol-Version"] = HANDSHAKE_VERSION
        return check_answer(self._answer(status, headers, body, method), id, expect_text)

    def _answer(self, status, headers, body, what):
        try:
            answers = [m for m in messages_of(headers, body) if isinstance(m, dict) and "id" in m
                       and "method" not in m]
        except (orjson.JSONDecodeError, ValueError):
            raise TargetError("wrong answer", f"{what}: HTTP {status} with a body that is not JSON-RPC: "
                                              f"{_short(body)}") from None
        if not answers:
            raise TargetError("error" if status >= 400 else "wrong answer",
                              f"{what}: HTTP {status} without an answer: {_short(body)}")
        return answers[0]

    def notify(self, method, params=None):
        message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        status, _, body = self._exchange(orjson.dumps(message), 30.0, f"{self.target.name} {method}")
        if status >= 300:
            raise TargetError("error", f"notification {method}: HTTP {status} {_short(body)}")

    def _receive(self, conn, what):
        data = conn.sock.recv(1 << 16)
        if not data:
            raise self.crashed(what)
        conn.buffer += data

    def send_and_read(self, calls, timeout, what):
        """POST every (id, body) at once, one connection each; the answers by id."""
        conns = [self._connection() for _ in calls]
        sel = selectors.DefaultSelector()
        answers = {}
        try:
            for conn, (id, body) in zip(conns, calls):
                self._send(conn, self._encode(body))
                conn.inflight.append(id)
                sel.register(conn.sock, selectors.EVENT_READ, conn)
            deadline = time.monotonic() + timeout
            while len(answers) < len(calls):
                left = deadline - time.monotonic()
                events = sel.select(max(0.0, left)) if left > 0 else []
                if not events:
                    raise TargetError("hung", f"{what}: {len(calls) - len(answers)} of {len(calls)} "
                                              f"unanswered after {timeout:g} s")
                for key, _ in events:
                    conn = key.data
                    self._receive(conn, what)
                    answer = conn.parse()
                    if answer is not None:
                        id = conn.inflight.popleft()
                        answers[id] = self._answer(*answer, what)
                        sel.unregister(conn.sock)
        except OSError as exc:
            raise self.crashed(f"{what} ({exc})") from None
        finally:
            sel.close()
        self.pool.extend(c for c in conns if not c.inflight)
        for c in conns:
            if c.inflight:
                c.close()
        return answers

    def send_calls(self, lines):
        self._batch = [(orjson.loads(line)["id"], line.rstrip(b"\n")) for line in lines]

    def read_answers(self, count, timeout, what):
        answers = self.send_and_read(self._batch, timeout, what)
        return [answers[id] for id, _ in self._batch]

    def pipeline(self, ring, window, seconds, check, on_tick=None, tick=0.5):
        """The stdio pipeline's contract over HTTP: ``window`` connections, one call in flight on each."""
        while len(self.pool) < window:
            self.pool.append(self._connection(reuse=False))
        conns = self.pool[:window]
        sel = selectors.DefaultSelector()
        sent = answered = 0
        what = f"{self.target.name}: {window} calls in flight"

        def send_next(conn):
            nonlocal sent
            self._send(conn, self._encode(ring.bodies[sent % ring.size]))
            conn.inflight.append(ring.id_at(sent))
            sent += 1
        pace = Pacing(seconds, on_tick, tick)
        try:
            for conn in conns:
                send_next(conn)
                sel.register(conn.sock, selectors.EVENT_READ, conn)
            while answered < sent:
                events = sel.select(30.0)
                if not events:
                    raise TargetError("hung", f"{what}: no answer within 30 s")
                for key, _ in events:
                    conn = key.data
                    self._receive(conn, what)
                    while True:
                        answer = conn.parse()
                        if answer is None:
                            break
                        conn.inflight.popleft()
                        answered += 1
                        status, headers, body = answer
                        try:
                            check.message(body, self._answer(status, headers, body, what))
                        except TargetError as exc:
                            check.fail(exc)
                        if pace.sending:
                            send_next(conn)
                pace.step(answered)
        except OSError as exc:
            raise self.crashed(f"{what} ({exc})") from None
        finally:
            sel.close()
        return (sent, answered, *pace.spent())

    def _close_wire(self, deadline):
        if "Mcp-Session-Id" in self.headers:   # end the session: the server need not keep it until it idles out
            with contextlib.suppress(TargetError, OSError):
                conn = self._connection()
                head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items() if k != "Content-Type")
                self._send(conn, f"DELETE {self.path} HTTP/1.1\r\n{head}Content-Length: 0\r\n\r\n".encode("latin-1"))
                if select.select([conn.sock], [], [], 2.0)[0]:
                    conn.sock.recv(1 << 16)
                conn.close()
        for conn in self.pool:
            conn.close()
        self.pool.clear()


def open_session(target):
    return HttpSession(target) if target.url else StdioSession(target)


def listening_pid(port):
    """The process listening on TCP ``port`` on this machine, or None (not found or not allowed)."""
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid
    except (psutil.Error, OSError):
        pass
    return None
