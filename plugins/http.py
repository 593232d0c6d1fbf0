"""HTTP requests: any method, headers and body, bounded in time, redirects and size.

Redirects are followed by hand (at most ``max_redirects``, http and https only; 303, and
301/302 after a POST, become GET; the Authorization and Cookie headers are dropped when a
redirect leaves the origin). The body is read up to ``max_bytes`` (cap 10 MiB) and shown
as JSON when the server says JSON, as text when it is text, else as base64. HTTP error
statuses (4xx, 5xx) are results, not tool errors: the status and body are what a caller
needs. Proxies from the environment (``https_proxy``, ``no_proxy``...) apply.

With ``--sandbox`` and without ``--sandbox-allow-net`` the sandboxed programs have no
network, and this tool, which runs inside the server, refuses every request the same way.
"""

import functools
import time
from typing import Annotated, Any, Literal

from bemcp import ToolError

MAX_BYTES_CAP = 10 * 1024 * 1024
CHUNK = 64 * 1024
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
USER_AGENT = "bemcp-http/1"


def setup(server):
    sandbox = server.sandbox
    offline = sandbox is not None and not sandbox.allow_net

    @server.tool(annotations={"readOnlyHint": False, "openWorldHint": True})
    def http_request(url: str,
                     method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET",
                     headers: dict[str, str] | None = None,
                     body: str | None = None,
                     json: Any = None,
                     timeout: Annotated[float, {"exclusiveMinimum": 0, "maximum": 300}] = 30.0,
                     max_bytes: Annotated[int, {"minimum": 0, "maximum": MAX_BYTES_CAP}] = 1024 * 1024,
                     follow_redirects: bool = True,
                     max_redirects: Annotated[int, {"minimum": 0, "maximum": 20}] = 5) -> dict:
        """Send an HTTP(S) request and return the status, headers and body.

        Args:
            url: An http:// or https:// URL.
            method: The HTTP method.
            headers: Request headers.
            body: A text body (sent as UTF-8; Content-Type text/plain unless given).
            json: A JSON body (sets Content-Type: application/json); not with ``body``.
            timeout: Seconds for the whole exchange, redirects included.
            max_bytes: Keep at most this many bytes of the response body.
            follow_redirects: Follow 3xx responses with a Location.
            max_redirects: At most this many redirects.
        """
        if offline:
            raise ToolError(f"Not sent: the server runs with --sandbox and without "
                            f"--sandbox-allow-net, so neither its commands nor {method} {url} "
                            f"may reach the network.")
        if body is not None and json is not None:
            raise ToolError("give either body or json, not both")
        data = None
        headers = dict(headers or {})
        if json is not None:
            import orjson
            data = orjson.dumps(json)
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        elif body is not None:
            data = body.encode("utf-8")
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "text/plain; charset=utf-8"  # not urllib's form default
        return fetch(url, method, headers, data, timeout, max_bytes,
                     max_redirects if follow_redirects else 0, follow_redirects)


def fetch(url, method, headers, data, timeout, max_bytes, max_redirects, follow=True):
    """One exchange, redirects followed by hand; the tool's result dict."""
    import urllib.error
    import urllib.parse
    import urllib.request
    opener = urllib.request.build_opener(_no_redirect_handler())
    deadline = time.monotonic() + timeout
    if not any(k.lower() == "user-agent" for k in headers):
        headers["User-Agent"] = USER_AGENT
    hops = []
    while True:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ToolError(f"only http:// and https:// URLs are fetched, not {url!r}")
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        left = deadline - time.monotonic()
        if left <= 0:
            raise ToolError(f"timed out after {timeout:g} s")
        try:
            response = opener.open(request, timeout=left)
        except urllib.error.HTTPError as exc:
            response = exc  # a 4xx/5xx (or an unfollowed 3xx) is still a response
        except urllib.error.URLError as exc:
            raise ToolError(f"{method} {url} failed: {_reason(exc.reason)}") from None
        except (OSError, ValueError) as exc:
            raise ToolError(f"{method} {url} failed: {_reason(exc)}") from None
        with response:
            status = response.status if hasattr(response, "status") else response.code
            location = response.headers.get("Location")
            if follow and status in REDIRECT_STATUSES and location:
                target = urllib.parse.urljoin(url, location)
                hops.append({"status": status, "url": url, "location": target})
                if len(hops) > max_redirects:
                    raise ToolError(f"more than {max_redirects} redirects (last: {status} to {target})")
                if status == 303 or (status in (301, 302) and method not in ("GET", "HEAD")):
                    method, data = ("GET" if method != "HEAD" else "HEAD"), None
                    headers = {k: v for k, v in headers.items()
                               if k.lower() not in ("content-type", "content-length")}
                if _origin(target) != _origin(url):
                    headers = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "cookie")}
                url = target
                continue
            raw, truncated = _read(response, max_bytes, deadline, timeout)
            result = {"url": url, "status": status, "reason": response.reason or "",
                      "headers": _headers(response.headers),
                      "redirects": hops, "bytes": len(raw), "truncated": truncated}
            if method != "HEAD":
                result.update(_body(raw, response.headers, truncated))
            return result


def _read(response, max_bytes, deadline, timeout):
    """Up to ``max_bytes`` of the body, checking the overall deadline between chunks."""
    chunks = []
    size = 0
    while size <= max_bytes:
        if time.monotonic() > deadline:
            raise ToolError(f"timed out after {timeout:g} s while reading the body")
        try:
            chunk = response.read(min(CHUNK, max_bytes + 1 - size))
        except (OSError, ValueError) as exc:
            raise ToolError(f"reading the body failed: {_reason(exc)}") from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    raw = b"".join(chunks)
    return raw[:max_bytes], len(raw) > max_bytes


def _body(raw, headers, truncated):
    """{"json": ...} or {"text": ...} or {"base64": ...} for a response body."""
    ctype = (headers.get_content_type() or "").lower()
    charset = headers.get_content_charset()
    is_json = ctype == "application/json" or ctype.endswith("+json")
    if is_json and not truncated and raw:
        import orjson
        try:
            return {"content_type": ctype, "json": orjson.loads(raw)}
        except orjson.JSONDecodeError:
            pass
    textual = is_json or ctype.startswith("text/") or ctype.endswith(("+xml", "/xml", "/javascript")) or \
        ctype in ("application/x-www-form-urlencoded", "application/x-ndjson")
    if textual or (not headers.get("Content-Type") and b"\0" not in raw[:8192]):
        try:
            return {"content_type": ctype, "text": raw.decode(charset or "utf-8", "replace")}
        except LookupError:  # an unknown charset name
            return {"content_type": ctype, "text": raw.decode("utf-8", "replace")}
    import base64
    return {"content_type": ctype, "base64": base64.b64encode(raw).decode("ascii")}


def _headers(message):
    """Response headers as a dict; repeated ones (Set-Cookie...) joined with ", "."""
    out = {}
    for key, value in message.items():
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _origin(url):
    import urllib.parse
    p = urllib.parse.urlsplit(url)
    return (p.scheme, p.hostname, p.port)


def _reason(exc):
    import socket
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return str(exc) or type(exc).__name__


@functools.lru_cache(maxsize=1)
def _no_redirect_handler():
    """A urllib handler that leaves 3xx responses to ``fetch`` (urllib raises HTTPError)."""
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            return None
    return NoRedirect
