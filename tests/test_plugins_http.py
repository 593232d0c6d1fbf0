"""The bundled `http` plugin through `bemcp serve`, against local servers on 127.0.0.1 only."""

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ENV = {"BEMCP_NO_PLUGINS": "", "no_proxy": "*", "NO_PROXY": "*"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    other_base = ""  # set to the second server's URL

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", ctype="text/plain; charset=utf-8", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def body(self):
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):
        path = self.path
        if path == "/json":
            self.reply(200, b'{"ok": true, "n": 1}', "application/json")
        elif path == "/latin1":
            self.reply(200, "café".encode("latin-1"), "text/plain; charset=latin-1")
        elif path == "/binary":
            self.reply(200, b"\x00\x01\x02\xff", "application/octet-stream")
        elif path == "/big":
            self.reply(200, b"y" * 100_000)
        elif path.startswith("/redirect/"):
            n = int(path.rsplit("/", 1)[1])
            if n == 0:
                self.reply(200, b"arrived")
            else:
                self.reply(302, b"", headers=[("Location", f"/redirect/{n - 1}")])
        elif path == "/loop":
            self.reply(302, b"", headers=[("Location", "/loop")])
        elif path == "/status/404":
            self.reply(404, b"not here")
        elif path == "/slow":
            time.sleep(1.5)
            self.reply(200, b"late")
        elif path == "/headers":
            self.reply(200, json.dumps(dict(self.headers)).encode(), "application/json")
        elif path == "/to-other":
            self.reply(302, b"", headers=[("Location", self.other_base + "/headers")])
        elif path == "/to-file":
            self.reply(302, b"", headers=[("Location", "file:///etc/passwd")])
        elif path == "/method":
            self.reply(200, json.dumps({"method": "GET", "body": ""}).encode(), "application/json")
        else:
            self.reply(404, b"no route")

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        data = self.body()
        if self.path == "/see-other":
            self.reply(303, b"", headers=[("Location", "/method")])
        elif self.path == "/temporary":
            self.reply(307, b"", headers=[("Location", "/method")])
        else:  # /method, /echo
            self.reply(200, json.dumps({"method": "POST", "body": data.decode(),
                                        "ctype": self.headers.get("Content-Type")}).encode(),
                       "application/json")

    do_PUT = do_POST


@pytest.fixture
def origins():
    servers = []
    for _ in range(2):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = False  # server_close() then joins the handler threads
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        servers.append((httpd, thread))
    bases = [f"http://127.0.0.1:{h.server_address[1]}" for h, _ in servers]
    Handler.other_base = bases[1]
    yield bases
    for httpd, thread in servers:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def server(spawn, origins):
    proc = spawn("--plugin", "http", env=ENV)
    proc.initialize()
    return proc


def fetch(server, **args):
    result = server.call_tool("http_request", args, timeout=20)["result"]
    return result


def ok(result):
    assert not result.get("isError"), result
    return result["structuredContent"]


def test_json_text_binary(server, origins):
    base = origins[0]
    got = ok(fetch(server, url=base + "/json"))
    assert got["status"] == 200 and got["json"] == {"ok": True, "n": 1} and got["content_type"] == "application/json"
    assert ok(fetch(server, url=base + "/latin1"))["text"] == "café"
    binary = ok(fetch(server, url=base + "/binary"))
    assert base64.b64decode(binary["base64"]) == b"\x00\x01\x02\xff" and "text" not in binary


def test_size_cap(server, origins):
    got = ok(fetch(server, url=origins[0] + "/big", max_bytes=1000))
    assert got["bytes"] == 1000 and got["truncated"] is True and got["text"] == "y" * 1000
    whole = ok(fetch(server, url=origins[0] + "/big"))
    assert whole["bytes"] == 100_000 and whole["truncated"] is False


def test_redirects_bounded(server, origins):
    base = origins[0]
    got = ok(fetch(server, url=base + "/redirect/3"))
    assert got["text"] == "arrived" and got["url"] == base + "/redirect/0"
    assert [h["status"] for h in got["redirects"]] == [302, 302, 302]
    too_many = fetch(server, url=base + "/redirect/3", max_redirects=2)
    assert too_many["isError"] and "more than 2 redirects" in too_many["content"][0]["text"]
    loop = fetch(server, url=base + "/loop")
    assert loop["isError"] and "more than 5 redirects" in loop["content"][0]["text"]
    unfollowed = ok(fetch(server, url=base + "/redirect/1", follow_redirects=False))
    assert unfollowed["status"] == 302 and unfollowed["headers"]["Location"] == "/redirect/0"
    bad_scheme = fetch(server, url=base + "/to-file")
    assert bad_scheme["isError"] and "only http:// and https://" in bad_scheme["content"][0]["text"]


def test_redirect_methods_and_credentials(server, origins):
    base = origins[0]
    see_other = ok(fetch(server, url=base + "/see-other", method="POST", body="payload"))
    assert see_other["json"]["method"] == "GET"
    temporary = ok(fetch(server, url=base + "/temporary", method="POST", body="payload"))
    assert temporary["json"] == {"method": "POST", "body": "payload",
                                 "ctype": "text/plain; charset=utf-8"}
    same = ok(fetch(server, url=base + "/headers", headers={"Authorization": "Bearer t", "X-Custom": "1"}))
    assert same["json"]["Authorization"] == "Bearer t" and same["json"]["X-Custom"] == "1"
    assert same["json"]["User-Agent"] == "bemcp-http/1"
    crossed = ok(fetch(server, url=base + "/to-other", headers={"Authorization": "Bearer t", "X-Custom": "1"}))
    assert crossed["url"] == origins[1] + "/headers"
    assert "Authorization" not in crossed["json"] and crossed["json"]["X-Custom"] == "1"


def test_bodies_methods_and_statuses(server, origins):
    base = origins[0]
    posted = ok(fetch(server, url=base + "/echo", method="POST", json={"a": [1, 2]}))
    assert json.loads(posted["json"]["body"]) == {"a": [1, 2]} and posted["json"]["ctype"] == "application/json"
    put = ok(fetch(server, url=base + "/echo", method="PUT", body="plain"))
    assert put["json"]["body"] == "plain"
    missing = ok(fetch(server, url=base + "/status/404"))
    assert missing["status"] == 404 and missing["text"] == "not here"  # a status, not a tool error
    head = ok(fetch(server, url=base + "/json", method="HEAD"))
    assert head["status"] == 200 and "json" not in head and "text" not in head
    both = fetch(server, url=base + "/echo", method="POST", body="x", json=1)
    assert both["isError"]


def test_timeouts_and_unreachable(server, origins):
    slow = fetch(server, url=origins[0] + "/slow", timeout=0.3)
    assert slow["isError"] and "timed out" in slow["content"][0]["text"]
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = fetch(server, url=f"http://127.0.0.1:{port}/", timeout=5)
    assert refused["isError"] and "failed" in refused["content"][0]["text"]
    assert fetch(server, url="ftp://127.0.0.1/x")["isError"]
