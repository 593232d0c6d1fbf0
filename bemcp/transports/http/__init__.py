"""Streamable HTTP: an ASGI application serving both MCP eras on one endpoint.

No JSON-RPC logic lives in this package: the dispatcher every connection shares answers the
requests. This package owns what HTTP adds: the endpoint, sessions, which response
stream a message goes on, the headers each era requires, and the security checks.

- Each request's id is swapped for a process-unique internal one (a negative int)
  before it reaches the dispatcher, so the in-flight table serves every client
  without id clashes; its exchange is the dispatch's reply target, so the answer is
  encoded once, under the client's own id, and handed straight to it.
- The era is chosen per request: an ``initialize`` or a ``Mcp-Session-Id`` means the
  handshake era (sessions, the GET stream, resumable SSE, requests to the client);
  ``MCP-Protocol-Version: 2026-07-28`` means a stateless exchange.
- An answer with nothing before it goes out as ``application/json``; the first
  notification or request to the client for an open request turns its response into
  an SSE stream.

The modules: app (the ASGI application), streams (SSE streams, exchanges, sessions),
running (uvicorn: `bemcp serve --http`).
"""

from .app import PATH, HttpTransport  # noqa: F401
from .running import MISSING_EXTRA, app_for, parse_bind, run_http, uvicorn_config  # noqa: F401
