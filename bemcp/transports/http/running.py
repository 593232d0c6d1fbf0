"""Serving the ASGI application under uvicorn (uvloop, httptools): where it binds, the
token, uvicorn's settings, and a guard against clients that send their request slowly.
"""

import ipaddress

from .app import HttpTransport

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
HEADER_SECONDS = 10.0            # a client gets this long to send a request's headers,
BODY_SECONDS = 30.0              # ... and this long for its body


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


MISSING_EXTRA = 'bemcp: serving over HTTP needs the HTTP extra: pip install "bemcp[http]"'


def parse_bind(text):
    """``[HOST:]PORT`` -> (host, port); the host defaults to loopback."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--http {text!r}: expected [HOST:]PORT, e.g. 8000 or 127.0.0.1:8000")
    return host or "127.0.0.1", int(port)


def read_token(path):
    """The bearer token: from ``path`` (its first line), else $BEMCP_HTTP_TOKEN; None if neither."""
    import os
    if path:
        with open(path, "rb") as f:
            token = f.read().strip()
        if len(token) < 16:
            raise ValueError(f"--http-token-file {path}: the token must be at least 16 characters")
        return token
    token = os.environ.get("BEMCP_HTTP_TOKEN", "").strip()
    if token and len(token) < 16:
        raise ValueError("BEMCP_HTTP_TOKEN: the token must be at least 16 characters")
    return token.encode() if token else None


def app_for(server, bind, token_file=None, origins=()):
    """The transport `bemcp serve --http` runs: its security follows from where it binds."""
    host, port = parse_bind(bind)
    token = read_token(token_file)
    loopback = is_loopback(host)
    if not loopback and token is None:
        raise ValueError(f"refusing to serve {host} (not a loopback address) without a token: "
                         "pass --http-token-file PATH or set BEMCP_HTTP_TOKEN")
    # On loopback, only loopback host names: a DNS-rebound name never reaches the server.
    hosts = set(LOOPBACK_HOSTS) | {host if ":" not in host else f"[{host}]"} if loopback else None
    return HttpTransport(server, token=token, allowed_hosts=hosts, allowed_origins=origins,
                         node=str(port)), host, port


def _request_guard():
    """uvicorn's httptools protocol, closing connections whose request does not arrive in time.

    uvicorn has no such limit: a client that connects and sends nothing, half a request
    line or half a body would keep its connection, and enough of them the server's
    slots. A request gets HEADER_SECONDS for its headers, then BODY_SECONDS for its body.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    begin = HttpToolsProtocol.on_message_begin   # by name, not super(): it runs on every request

    class Protocol(HttpToolsProtocol):
        # One callback of ours per request (its start); the rest is read off uvicorn's
        # state by a timer that runs only while a request is incomplete, once a second:
        # its headers are in once uvicorn made the request's cycle (cycle.scope is the
        # scope on_message_begin made), its body once the cycle has no more_body. The
        # body's time runs from the first tick that sees the headers in (within a second
        # of their arrival: never less than BODY_SECONDS).
        _timer = None
        _deadline = 0.0
        _body_of = None       # the cycle whose body the deadline is for

        def connection_made(self, transport):
            super().connection_made(transport)
            self._deadline = self.loop.time() + HEADER_SECONDS
            self._timer = self.loop.call_later(_TICK, self._check)

        def on_message_begin(self):
            begin(self)
            self._deadline = self.loop.time() + HEADER_SECONDS
            if self._timer is None:
                self._timer = self.loop.call_later(_TICK, self._check)

        def connection_lost(self, exc):
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._body_of = None
            super().connection_lost(exc)

        def _check(self):
            self._timer = None
            cycle = self.cycle
            now = self.loop.time()
            if cycle is not None and cycle.scope is self.scope:
                if not cycle.more_body:
                    return              # all in: being answered, or idle (uvicorn's keep-alive limit)
                if self._body_of is not cycle:
                    self._body_of = cycle
                    self._deadline = now + BODY_SECONDS
            if now >= self._deadline:
                self.transport.close()
                return
            self._timer = self.loop.call_later(min(_TICK, self._deadline - now), self._check)
    return Protocol


_TICK = 1.0   # how often the request guard looks at a request still arriving


def uvicorn_config(app, host, port, **more):
    """uvicorn as `bemcp serve --http` runs it (and the floor of benches/http_bench.py).

    uvloop and httptools. Proxy headers off: bemcp never reads the client's address or
    scheme (its checks are Host, Origin and the token), so rewriting them from
    X-Forwarded-* would cost a middleware call on every request for nothing. ``more``:
    further uvicorn settings (``http``: bemcp's protocol; ``lifespan``).
    """
    import uvicorn
    settings = dict(loop="uvloop", http="httptools", lifespan="on", log_level="warning", access_log=False,
                    proxy_headers=False, timeout_keep_alive=5, timeout_graceful_shutdown=3,
                    server_header=False, limit_concurrency=4096)
    settings.update(more)
    return uvicorn.Config(app, host=host, port=port, **settings)


def run_http(server, bind, token_file=None, origins=()):
    """Serve ``server`` over Streamable HTTP under uvicorn (uvloop, httptools); the exit code."""
    try:
        import httptools  # noqa: F401  (uvicorn would fall back to h11 silently)
        import uvicorn
    except ImportError:
        import sys
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    transport, host, port = app_for(server, bind, token_file, origins)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # Open SSE streams end now, so the graceful shutdown does not wait on them.
            if transport.loop is not None:
                transport.loop.call_soon_threadsafe(transport.begin_shutdown)
            super().handle_exit(sig, frame)
            # A stop asked for is a clean exit (status 0, as over stdio): uvicorn would
            # raise the signal again once it has shut down.
            getattr(self, "_captured_signals", []).clear()

    userver = Server(uvicorn_config(transport, host, port, http=_request_guard()))
    userver.run()
    return 0 if userver.started else 1
