"""The ASGI application: the endpoint, both eras chosen per request, which response stream
a message goes on, the headers each era requires, and the security checks (the package's
docstring says how requests reach the shared dispatcher).
"""

import asyncio
import base64
import hmac
import secrets
import time

from orjson import JSONDecodeError, dumps, loads

from ...connection import Peer
from ...errors import (HEADER_MISMATCH, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST,
                       METHOD_NOT_FOUND, MISSING_CLIENT_CAPABILITY, PARSE_ERROR,
                       UNSUPPORTED_PROTOCOL_VERSION)
from ...revisions import (CLIENT_CAPABILITIES_KEY, HANDSHAKE_VERSIONS, MODERN_VERSIONS,
                          SUPPORTED_VERSIONS, VERSION_KEY)
from .streams import Exchange, Session, Stream, sse_events

PATH = "/mcp"
KEEPALIVE_SECONDS = 15.0
STALL_SECONDS = 60.0             # a client gets this long to take an SSE event off the server's hands
SESSION_IDLE_SECONDS = 1800.0
MAX_SESSIONS = 4096
RETRY_MS = 1000
_PREFIX = b'{"jsonrpc":"2.0","id":'
_NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_MIRRORED = frozenset((b"mcp-method", b"mcp-name", b"mcp-protocol-version"))   # headers the body must match
_MODERN = frozenset(MODERN_VERSIONS)
_SUPPORTED = frozenset(SUPPORTED_VERSIONS)
# 2026-07-28: the HTTP status of a JSON-RPC error.
_STATUS = {PARSE_ERROR: 400, INVALID_REQUEST: 400, INVALID_PARAMS: 400, HEADER_MISMATCH: 400,
           MISSING_CLIENT_CAPABILITY: 400, UNSUPPORTED_PROTOCOL_VERSION: 400, METHOD_NOT_FOUND: 404}
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no")]
_NO_PRIMING = HANDSHAKE_VERSIONS[:-1]   # priming events came with 2025-11-25


class HttpTransport:
    """The ASGI application (``server.asgi_app()`` makes one)."""

    def __init__(self, server, *, path=PATH, token=None, allowed_hosts=None, allowed_origins=None,
                 max_body=None, session_idle=SESSION_IDLE_SECONDS, max_sessions=MAX_SESSIONS,
                 node=None):
        self.server = server
        self.path = path
        self.token = token.encode() if isinstance(token, str) else token
        # None: any Host (behind a proxy that checks it); a list: only these host names.
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.allowed_origins = {o.lower().rstrip("/") for o in (allowed_origins or ())}
        self.max_body = max_body or server.config.max_message_size
        self.session_idle = session_idle
        self.max_sessions = max_sessions
        # Session ids start with the node name: a load balancer can send a session home.
        self.node = node or secrets.token_hex(4)
        self._good_hosts = set()  # Host headers that passed the check
        self._good_accepts = set()   # POST Accept headers that passed the check
        self.dispatcher = None
        self.loop = None
        self.routes = {}          # id of our request to a client -> the Exchange it goes out on
        self.sessions = {}
        self._next_iid = 0
        self._starting = None
        self._sweeper = None
        self._draining = None
        self.closing = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self):
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await self._starting

    async def _start(self):
        loop = self.loop = asyncio.get_running_loop()
        server = self.server
        self.dispatcher = server.build_dispatcher(loop)
        self.dispatcher.write = self._write
        server.route = self._route
        server.broadcast = self._broadcast
        server.peers_of_transport = self._peers
        self._sweeper = loop.call_later(60.0, self._sweep)
        await server.started()
        # What start-up built lives as long as the process: keep the collector's full
        # passes, which every few thousand requests would otherwise walk it all, off it.
        import gc
        gc.freeze()

    def begin_shutdown(self):
        """Stop taking requests, end every open stream, and answer what is in flight
        (within half a second) while the connections are still there (SIGTERM)."""
        if self.closing or self.dispatcher is None:
            return
        self.closing = True
        for session in list(self.sessions.values()):
            if session.get_stream is not None:
                session.get_stream.finish()
        self.server.stopping()
        self._draining = self.loop.create_task(self.dispatcher.drain(0.5))

    async def stop(self):
        if self.dispatcher is None:
            return
        self.begin_shutdown()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self._draining
        await self.server.shutdown()
        self.dispatcher.close()
        self.dispatcher.flush()

    # -- routing what the dispatcher writes --------------------------------------------

    def _route(self, req):
        return req.reply     # the Exchange it came in on

    def _write(self, data):
        # Answers go to their exchanges directly (Exchange.answered): what comes this way
        # is our requests to clients, each to go out on the exchange that asked.
        last = len(data) - 1
        if data.find(b"\n") == last:
            self._deliver(data, last)
            return
        start = 0
        while start <= last:
            end = data.find(b"\n", start)
            if end < 0:
                end = last + 1
            self._deliver(data[start:end], end - start)
            start = end + 1

    def _deliver(self, line, size):
        """Route a line the dispatcher wrote (``size`` bytes, without its newline) to its exchange."""
        if not line.startswith(_PREFIX):
            return        # a notification for everyone goes through _broadcast instead
        end = line.find(b",", 22)
        try:
            key = int(line[22:end])
        except ValueError:
            return
        exchange = self.routes.pop(key, None)
        if exchange is not None:
            exchange.push(line[:size])

    def _broadcast(self, method, params):
        line = dumps({"jsonrpc": "2.0", "method": method, "params": params})
        for session in self.sessions.values():
            if session.get_stream is not None and session.peer.initialized:
                session.get_stream.push(line)

    def _peers(self):
        """Each session's Peer, with a notify that reaches its GET stream (if it keeps one)."""
        return [(session.peer, session.notify) for session in self.sessions.values()]

    def _sweep(self):
        now = time.monotonic()
        for session in list(self.sessions.values()):
            if now - session.last > self.session_idle and not session.exchanges \
                    and session.get_stream is None:
                self._end_session(session)
        self._sweeper = self.loop.call_later(60.0, self._sweep)

    def _end_session(self, session):
        self.sessions.pop(session.id, None)
        for exchange in list(session.exchanges.values()):
            self.dispatcher.cancel(exchange.iid)
            exchange.close()
        if session.get_stream is not None:
            session.get_stream.finish()
        for id in session.asks:
            self.routes.pop(id, None)

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        # The whole exchange in one coroutine: the checks and the dispatch are plain
        # calls that return the reply (status, headers, body), or a coroutine for the
        # rest (a stream, GET, DELETE) when there is more to it.
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        if self.dispatcher is None:
            await self.start()     # mounted in an app that does not pass lifespan on
        headers, dup, outcome = self._open(scope, receive, send)
        if outcome is None:        # a POST that passed the checks: its body, then its reply
            message = await receive()
            body = message.get("body", b"")
            if message.get("more_body") or message["type"] != "http.request" or len(body) > self.max_body:
                body = await self._body(headers, body, message, receive, send)
                if body is None:
                    return
            outcome = self._post(headers, dup, body, receive, send)
        if type(outcome) is tuple:
            await send({"type": "http.response.start", "status": outcome[0], "headers": outcome[1]})
            await send({"type": "http.response.body", "body": outcome[2]})
        else:
            await outcome

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _open(self, scope, receive, send):
        """(headers, a header sent twice, outcome): the checks every request passes; outcome
        None for a POST whose body is to be read next."""
        path = scope["path"]
        raw = scope["headers"]
        headers = dict(raw)
        dup = None
        if len(headers) != len(raw):
            headers, dup = _joined(raw)
        if path != self.path and not self._mounted_here(path, scope.get("root_path", "")):
            return headers, dup, _error(404, None, "Not found: the MCP endpoint is " + self.path)
        refusal = self._check_security(headers)
        if refusal is not None:
            return headers, dup, _error(refusal[0], None, refusal[1], extra=refusal[2])
        if self.closing:
            return headers, dup, _error(503, None, "The server is shutting down")
        method = scope["method"]
        if method == "POST":
            ctype = headers.get(b"content-type", b"")
            if ctype != b"application/json" and not ctype.startswith(b"application/json"):
                return headers, dup, _error(415, None, "Unsupported Media Type: the body must be application/json")
            accept = headers.get(b"accept", b"")
            if accept not in self._good_accepts and not self._accepts(accept):
                return headers, dup, _error(406, None, "Not Acceptable: Accept must list application/json "
                                                       "and text/event-stream")
            return headers, dup, None
        if method == "GET":
            return headers, dup, self._get(headers, receive, send)
        if method == "DELETE":
            return headers, dup, self._delete(headers, send)
        return headers, dup, _error(405, None, f"Method not allowed: {method}",
                                    extra=[(b"allow", b"GET, POST, DELETE")])

    def _mounted_here(self, path, root):
        if root and path.startswith(root):
            path = path[len(root):]     # mounted under a prefix
        return path.rstrip("/") == self.path.rstrip("/") or (root and path in ("", "/"))

    def _accepts(self, accept):
        """Whether a POST's Accept takes both JSON and SSE answers (remembered if so)."""
        # find(), not `in`: `in` on bytes first tries its operand as an int, and that
        # failure (an exception made and cleared) costs more than the search.
        if accept.find(b"*/*") < 0 and (accept.find(b"application/json") < 0
                                        or accept.find(b"text/event-stream") < 0):
            return False
        if len(self._good_accepts) < 64:
            self._good_accepts.add(accept)
        return True

    def _check_security(self, headers):
        """(status, message, extra headers) to refuse the request with, or None."""
        if self.token is not None:
            given = headers.get(b"authorization", b"")
            scheme, _, credential = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self.token):
                challenge = b'Bearer realm="bemcp"' + (b', error="invalid_token"' if given else b"")
                return 401, "Unauthorized: send Authorization: Bearer <token>", \
                    [(b"www-authenticate", challenge)]
        raw_host = headers.get(b"host", b"")
        origin = headers.get(b"origin")
        if origin is None and raw_host in self._good_hosts:
            return None        # fast path: a Host seen before, no Origin
        host = raw_host.decode("latin-1").lower()
        if self.allowed_hosts is not None and _host_name(host) not in self.allowed_hosts:
            return 421, f"Invalid Host header: {host!r}", None
        if origin is None and len(self._good_hosts) < 64:
            self._good_hosts.add(raw_host)
        if origin is not None:
            text = origin.decode("latin-1").lower().rstrip("/")
            if text not in self.allowed_origins and not self._own_origin(text, host):
                return 403, f"Forbidden: Origin {text!r} is not allowed", None
        return None

    def _own_origin(self, origin, host):
        # A page served from this server's own host name (a loopback one unless configured).
        scheme, _, rest = origin.partition("://")
        if scheme not in ("http", "https"):
            return False
        name = _host_name(rest)
        if self.allowed_hosts is not None:
            return name in self.allowed_hosts
        return name == _host_name(host)

    # -- POST ------------------------------------------------------------------------------

    def _post(self, headers, dup, body, receive, send):
        """A POST's reply: (status, headers, body), or a coroutine that sends it."""
        try:
            msg = loads(body)
        except JSONDecodeError as exc:
            return _error(400, None, f"Parse error: {exc}", code=PARSE_ERROR)
        if type(msg) is not dict:
            what = "a batch" if type(msg) is list else "not a JSON object"
            return _error(400, None, f"Invalid request: the body is {what}; send one message per POST")
        version = headers.get(b"mcp-protocol-version")
        if version is not None:
            version = version.decode("latin-1")
        session_id = headers.get(b"mcp-session-id")
        # 2026-07-28 by its header (a stray Mcp-Session-Id is ignored, as the spec asks),
        # or by its _meta when the header is missing (then answered -32020).
        if version in _MODERN or (session_id is None and msg.get("method") != "initialize"
                                  and _meta_version(msg) is not None):
            return self._modern(headers, dup, version, msg, body, receive, send)
        return self._handshake(headers, version, session_id, msg, body, receive, send)

    async def _body(self, headers, first, message, receive, send):
        """The rest of a body that did not come in one piece (``first``, from ``message``);
        None if the client left or the body is too large (answered 413).

        Slow bodies are the ASGI server's to bound (bemcp serve --http: _request_guard).
        """
        size = headers.get(b"content-length")
        limit = self.max_body
        if size is not None and size.isdigit() and int(size) > limit:
            await _reply(send, 413, None, f"Message of {int(size)} bytes exceeds the limit of {limit} bytes",
                         code=INVALID_REQUEST)
            return None
        chunks = []
        total = 0
        while True:
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                await _reply(send, 413, None, f"Message exceeds the limit of {limit} bytes",
                             code=INVALID_REQUEST)
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                break
            message = await receive()
        return b"".join(chunks)

    # -- 2026-07-28 -------------------------------------------------------------------------

    def _modern(self, headers, dup, version, msg, body, receive, send):
        method = msg.get("method")
        msg_id = msg.get("id")
        if method is None:
            return _error(400, msg_id, "Invalid request: a 2026-07-28 client sends requests and notifications only")
        if "id" not in msg:
            return 202, [], b""       # no notification means anything over HTTP here
        error = self._check_modern(headers, dup, version, method, msg)
        if error is not None:
            return _error(404 if error[0] == METHOD_NOT_FOUND else 400, msg_id, error[1],
                          code=error[0], data=error[2])
        listen = method == "subscriptions/listen"
        if listen and b"text/event-stream" not in headers.get(b"accept", b""):
            return _error(406, msg_id, "Not Acceptable: subscriptions/listen answers with an SSE stream")
        exchange = self._exchange(None, msg, _MODERN_PEER, True)
        if exchange is None:
            return _error(400, msg_id, "Invalid request: id must be a string or a number")
        if listen:
            exchange.sse = True
        self.dispatcher.dispatch(msg, body, exchange)
        return self._respond(exchange, receive, send, None)

    def _check_modern(self, headers, dup, version, method, msg):
        """(code, message, data) if the request's headers do not match its body."""
        if dup is not None and (dup in _MIRRORED or dup.startswith(b"mcp-param-")):
            return HEADER_MISMATCH, f"Header {dup.decode()} appears more than once", None
        if type(method) is not str:
            return INVALID_REQUEST, "Invalid request: method must be a string", None
        if version is None:
            return HEADER_MISMATCH, "The MCP-Protocol-Version header is required", None
        if version not in _SUPPORTED:
            return UNSUPPORTED_PROTOCOL_VERSION, f"Unsupported protocol version: {version!r}", \
                {"supported": list(MODERN_VERSIONS), "requested": version}
        params = msg.get("params")
        meta = params.get("_meta") if type(params) is dict else None
        body_version = meta.get(VERSION_KEY) if type(meta) is dict else None
        if body_version is None:
            return INVALID_PARAMS, (f"params._meta must carry {VERSION_KEY} "
                                    "(and the client's capabilities) in 2026-07-28"), None
        if type(meta.get(CLIENT_CAPABILITIES_KEY)) is not dict:
            return INVALID_PARAMS, f"params._meta must carry {CLIENT_CAPABILITIES_KEY} in 2026-07-28", None
        if body_version != version:
            return HEADER_MISMATCH, (f"MCP-Protocol-Version {version!r} does not match "
                                     f"{VERSION_KEY} {body_version!r} in the body"), None
        if body_version not in _MODERN:
            return UNSUPPORTED_PROTOCOL_VERSION, f"Unsupported protocol version: {body_version!r}", \
                {"supported": list(MODERN_VERSIONS), "requested": body_version}
        given = headers.get(b"mcp-method")
        if given is None or given.decode("latin-1") != method:
            return HEADER_MISMATCH, f"The Mcp-Method header does not match the body's method {method!r}", None
        key = _NAMED.get(method)
        if key is not None:
            value = params.get(key)
            raw = headers.get(b"mcp-name")
            # A plain value read here; None and =?base64?...?= through _header_value.
            name = raw.decode("latin-1").strip() if raw is not None and not raw.startswith(b"=?") \
                else _header_value(raw)
            if name is None or name != value:
                return HEADER_MISMATCH, f"The Mcp-Name header does not match the body's {key} {value!r}", None
            if method == "tools/call":
                tool = self.server.tools.get(value)
                mirrored = tool.header_arguments if tool is not None else None
                return self._check_params(headers, params, mirrored) if mirrored else None
        if method == "initialize" or method not in self.dispatcher.methods and method != "tools/call":
            return METHOD_NOT_FOUND, f"Method not found: {method}", None
        return None

    def _check_params(self, headers, params, mirrored):
        """Mcp-Param-* headers against the arguments a tool marked with x-mcp-header (``mirrored``)."""
        args = params.get("arguments")
        args = args if type(args) is dict else {}
        for header, arg, kind in mirrored:
            value = args.get(arg)
            given = _header_value(headers.get(b"mcp-param-" + header))
            if value is None:
                if given is None:
                    continue
                return HEADER_MISMATCH, f"Mcp-Param-{header.decode()} is sent but {arg!r} is not", None
            if given is None or not _same(value, given, kind):
                return HEADER_MISMATCH, f"Mcp-Param-{header.decode()} does not match the argument {arg!r}", None
        return None

    # -- handshake era ----------------------------------------------------------------------

    def _handshake(self, headers, version, session_id, msg, body, receive, send):
        msg_id = msg.get("id")
        if version is not None and version not in _SUPPORTED:
            return _error(400, msg_id, f"Bad Request: unsupported MCP-Protocol-Version {version!r}",
                          code=UNSUPPORTED_PROTOCOL_VERSION,
                          data={"supported": list(SUPPORTED_VERSIONS), "requested": version})
        method = msg.get("method")
        if session_id is None:
            if method != "initialize":
                return _error(400, msg_id, "Bad Request: no Mcp-Session-Id (initialize first)")
            if len(self.sessions) >= self.max_sessions:
                return _error(503, msg_id, f"Too many open sessions ({self.max_sessions}); retry later",
                              code=-32000)
            session = Session(f"{self.node}.{secrets.token_urlsafe(24)}")
            exchange = self._exchange(session, msg, session.peer, False)
            if exchange is None or "id" not in msg:
                return _error(400, msg_id, "Invalid request: initialize needs an id")
            self.dispatcher.dispatch(msg, body, exchange)
            if exchange.answer is not None and exchange.code is None:
                self.sessions[session.id] = session
                return 200, _sized(len(exchange.answer)) + [(b"mcp-session-id", session.id.encode())], \
                    exchange.answer
            return self._respond(exchange, receive, send, None)
        session = self.sessions.get(session_id.decode("latin-1"))
        if session is None:
            return _error(404, msg_id, "Not Found: no such session (it ended or expired); initialize again")
        session.last = time.monotonic()
        if method is None:
            return self._client_answer(session, msg)
        if "id" not in msg:
            self._notification(session, msg, body)
            return 202, [], b""
        if method == "initialize":
            return _error(400, msg_id, "Invalid request: this session is initialized already")
        if msg_id in session.exchanges:
            return _error(400, msg_id, f"Invalid request: request id {msg_id!r} is already in use")
        exchange = self._exchange(session, msg, session.peer, False)
        if exchange is None:
            return _error(400, None, "Invalid request: id must be a string or a number")
        session.exchanges[msg_id] = exchange
        self.dispatcher.dispatch(msg, body, exchange)
        return self._respond(exchange, receive, send, session)

    def _client_answer(self, session, msg):
        id = msg.get("id")
        if ("result" not in msg and "error" not in msg) or id not in session.asks:
            return _error(400, id, "Invalid request: not an answer to a request of this session")
        session.asks.discard(id)
        self.dispatcher.dispatch(msg)
        return 202, [], b""

    def _notification(self, session, msg, body):
        method = msg.get("method")
        if method == "notifications/initialized":
            session.peer.initialized = True
            return
        params = msg.get("params")
        if method == "notifications/cancelled" and type(params) is dict:
            exchange = session.exchanges.get(params.get("requestId"))
            if exchange is None:
                return
            msg = dict(msg, params=dict(params, requestId=exchange.iid))
            self.dispatcher.dispatch(msg)
            if self.dispatcher.table.get(exchange.iid) is None and exchange.answer is None:
                exchange.close()       # cancelled: no answer comes, its stream ends
            return
        self.dispatcher.dispatch(msg)

    # -- both eras --------------------------------------------------------------------------

    def _exchange(self, session, msg, peer, modern):
        msg_id = msg.get("id")
        t = type(msg_id)
        if t is not str and t is not int and t is not float:
            return None
        self._next_iid -= 1
        iid = self._next_iid
        exchange = Exchange(self, session, msg_id, iid, peer, modern)
        # A session's requests always stream (resumable, primed); see _respond.
        exchange.sse = session is not None and msg.get("method") != "initialize"
        msg["id"] = iid
        return exchange

    def _respond(self, exchange, receive, send, session):
        """Answer as JSON if nothing came before the answer, else stream it as SSE: the
        reply, or a coroutine that streams it while the request runs.

        A handshake-era session's requests always stream: the stream is resumable
        (Last-Event-ID), and from 2025-11-25 on it starts with a priming event.
        """
        if session is None and exchange.answer is not None and not exchange.frames:
            return self._answer_reply(exchange)     # answered at once (an eager tool)
        if session is not None:
            exchange.sse = True
        if exchange.finished and exchange.answer is not None:
            # Answered during dispatch: its whole stream goes out in one piece, with no
            # task watching for the client to leave and none waiting on the stream; sized,
            # as a JSON answer is (no chunked framing, nothing a proxy could hold back).
            body = self._open_stream(exchange, session) + sse_events(exchange, 0, session is not None)[0]
            return 200, _sized(len(body), _EVENT_STREAM), body
        return self._stream(exchange, receive, send, session)

    async def _stream(self, exchange, receive, send, session):
        gone = []
        watcher = asyncio.ensure_future(_watch_disconnect(receive, exchange, gone))
        try:
            while exchange.answer is None and not exchange.sse and not exchange.frames and not gone:
                await exchange.changed(self.loop)
            if gone:
                self._abandon(exchange)
                return
            if not exchange.sse and exchange.answer is not None and not exchange.frames:
                status, headers, body = self._answer_reply(exchange)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            exchange.sse = True
            await send({"type": "http.response.start", "status": 200, "headers": list(_SSE)})
            first = self._open_stream(exchange, session)
            await self._pump(exchange, send, 0, session is not None, gone, first)
            if gone:
                self._abandon(exchange)
        finally:
            watcher.cancel()

    def _open_stream(self, exchange, session):
        """What an exchange's SSE stream starts with; a session keeps the stream for resumption."""
        if session is None:
            return b""
        exchange.no = session.new_stream_no()
        session.keep(exchange)
        if session.peer.protocol_version in _NO_PRIMING:
            return b""
        # A priming event: an id to resume from, and how soon to come back.
        return b"id: %d-0\nretry: %d\ndata: \n\n" % (exchange.no, RETRY_MS)

    def _answer_reply(self, exchange):
        """A JSON answer: 200, or in 2026-07-28 the HTTP status of its JSON-RPC error."""
        body = exchange.answer
        status = 200
        if exchange.code is not None and exchange.modern:
            status = _STATUS.get(exchange.code, 200)
        return status, _sized(len(body)), body

    def _abandon(self, exchange):
        # 2026-07-28: closing the response stream cancels the request. A handshake-era
        # client may come back for its answer (Last-Event-ID); the stream keeps filling.
        if exchange.modern and exchange.answer is None:
            self.dispatcher.cancel(exchange.iid)
            self.dispatcher.flush()
            exchange.close()

    async def _pump(self, stream, send, start, with_ids, gone, first=b""):
        """Send ``stream``'s frames from ``start`` as SSE events until it finishes or the client goes."""
        i = start         # the next frame to send, counted from the stream's first
        pending = first
        while True:
            if i < stream.base + len(stream.frames):
                events, i = sse_events(stream, i, with_ids)
                pending += events
            if pending:
                try:
                    # A client that stops reading its stream is let go, not waited on.
                    await asyncio.wait_for(send({"type": "http.response.body", "body": pending,
                                                 "more_body": True}), STALL_SECONDS)
                except (TimeoutError, asyncio.TimeoutError):
                    gone.append(True)
                    return
                pending = b""
                continue
            if stream.finished or gone:
                break
            try:
                await asyncio.wait_for(asyncio.shield(stream.changed(self.loop)), KEEPALIVE_SECONDS)
            except TimeoutError:
                pending = b": keep-alive\n\n"
        if not gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- GET and DELETE -------------------------------------------------------------------------

    def _session_of(self, headers):
        session_id = headers.get(b"mcp-session-id")
        if session_id is None:
            return None, (400, "Bad Request: no Mcp-Session-Id")
        session = self.sessions.get(session_id.decode("latin-1"))
        if session is None:
            return None, (404, "Not Found: no such session (it ended or expired)")
        session.last = time.monotonic()
        return session, None

    async def _get(self, headers, receive, send):
        version = headers.get(b"mcp-protocol-version", b"").decode("latin-1")
        if version in MODERN_VERSIONS or b"mcp-session-id" not in headers:
            await _reply(send, 405, None, "Method not allowed: a 2026-07-28 client POSTs its requests; "
                                          "listen with subscriptions/listen", extra=[(b"allow", b"POST")])
            return
        if b"text/event-stream" not in headers.get(b"accept", b""):
            await _reply(send, 406, None, "Not Acceptable: a GET stream is text/event-stream")
            return
        session, refusal = self._session_of(headers)
        if refusal is not None:
            await _reply(send, refusal[0], None, refusal[1], code=INVALID_REQUEST)
            return
        last = headers.get(b"last-event-id")
        stream, start = None, 0
        if last is not None:
            no, _, index = last.decode("latin-1").partition("-")
            if no.isdigit() and index.isdigit():
                stream = session.streams.get(int(no))
                start = int(index)
        if stream is None:
            if session.get_stream is not None and not session.get_stream.finished:
                await _reply(send, 409, None, "Conflict: this session's GET stream is open already")
                return
            stream = session.get_stream = Stream(session.new_stream_no())
            session.keep(stream)
        gone = []
        watcher = asyncio.ensure_future(_watch_disconnect(receive, stream, gone))
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": _SSE + [(b"mcp-session-id", session.id.encode())]})
            await self._pump(stream, send, start, True, gone)
        finally:
            watcher.cancel()
            if session.get_stream is stream and gone:
                session.get_stream = None

    async def _delete(self, headers, send):
        session, refusal = self._session_of(headers)
        if refusal is not None:
            await _reply(send, refusal[0], None, refusal[1], code=INVALID_REQUEST)
            return
        self._end_session(session)
        self.dispatcher.flush()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


_MODERN_PEER = Peer()   # nothing is agreed at initialize in 2026-07-28; per-request _meta says it


def _joined(raw):
    """Headers sent more than once, joined with commas (RFC 9110); and one such name."""
    headers = {}
    dup = None
    for name, value in raw:
        if name in headers:
            dup = name
            headers[name] = headers[name] + b", " + value
        else:
            headers[name] = value
    return headers, dup


async def _watch_disconnect(receive, stream, gone):
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.append(True)
            stream.wake()
            return


def _meta_version(msg):
    params = msg.get("params")
    meta = params.get("_meta") if type(params) is dict else None
    return meta.get(VERSION_KEY) if type(meta) is dict else None


def _host_name(host):
    # "127.0.0.1:3001" -> "127.0.0.1"; "[::1]:80" -> "[::1]"
    if host.startswith("["):
        return host[:host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _header_value(raw):
    """A header's text; ``=?base64?...?=`` carries a value headers cannot (2026-07-28)."""
    if raw is None:
        return None
    text = raw.decode("latin-1")
    if text.startswith("=?base64?") and text.endswith("?="):
        try:
            return base64.b64decode(text[9:-2], validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return "\x00invalid"
    return text.strip()


def _same(value, given, kind):
    if type(value) is bool:
        return given == ("true" if value else "false")
    if type(value) in (int, float):
        try:
            return float(given) == float(value)
        except ValueError:
            return False
    return given == str(value)


_JSON = (b"content-type", b"application/json")
_EVENT_STREAM = (b"content-type", b"text/event-stream")
_LENGTHS = {}


def _sized(size, kind=_JSON):
    """The headers of a body of ``size`` bytes (a new list: a middleware may change it)."""
    length = _LENGTHS.get(size)
    if length is None:
        length = (b"content-length", b"%d" % size)
        if len(_LENGTHS) < 4096:    # answers repeat their sizes
            _LENGTHS[size] = length
    return [kind, length]


def _error(status, id, message, code=INVALID_REQUEST, data=None, extra=None):
    """An HTTP error with a JSON-RPC error body: (status, headers, body)."""
    error = {"code": code if status != 500 else INTERNAL_ERROR, "message": message}
    if data is not None:
        error["data"] = data
    body = dumps({"jsonrpc": "2.0", "id": id, "error": error})
    headers = _sized(len(body))
    if extra:
        headers += extra
    return status, headers, body


async def _reply(send, status, id, message, code=INVALID_REQUEST, data=None, extra=None):
    """Send an HTTP error with a JSON-RPC error body."""
    status, headers, body = _error(status, id, message, code, data, extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
