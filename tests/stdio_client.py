"""A small synchronous JSON-RPC client over a real `bemcp serve` subprocess, for tests."""

import os
import select
import subprocess
import sys
import time

import orjson

HANDSHAKE_PARAMS = {"protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "bemcp-tests", "version": "0"}}
MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientCapabilities": {},
               "io.modelcontextprotocol/clientInfo": {"name": "bemcp-tests", "version": "0"}}


def server_command(*args):
    return [sys.executable, "-m", "bemcp", "serve", *args]


class ServerProcess:
    """`bemcp serve` (or any command) on pipes; messages are dicts, one per line."""

    def __init__(self, *args, command=None, env=None, stderr=subprocess.PIPE, cwd=None):
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(command or server_command(*args), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=stderr, env=full_env, cwd=cwd)
        self._buf = b""
        self._next_id = 0
        self.stray = []  # messages read while waiting for another id

    def send(self, message):
        self.send_raw(orjson.dumps(message) + b"\n")

    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read_message(self, timeout=10.0):
        """The next message on stdout; raises TimeoutError, or EOFError at end of stream."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from the server in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise EOFError("server closed stdout")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return orjson.loads(line)

    def request(self, method, params=None, timeout=10.0):
        """Send a request and return its response (other messages go to ``stray``)."""
        self._next_id += 1
        rid = self._next_id
        message = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return self.wait_for(rid, timeout)

    def wait_for(self, rid, timeout=10.0):
        # The answer may already have arrived while another request was awaited.
        for msg in self.stray:
            if msg.get("id") == rid and ("result" in msg or "error" in msg):
                self.stray.remove(msg)
                return msg
        deadline = time.monotonic() + timeout
        while True:
            msg = self.read_message(max(0.01, deadline - time.monotonic()))
            if msg.get("id") == rid and ("result" in msg or "error" in msg):
                return msg
            self.stray.append(msg)

    def notify(self, method, params=None):
        message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    def initialize(self, version="2025-11-25"):
        response = self.request("initialize", dict(HANDSHAKE_PARAMS, protocolVersion=version))
        self.notify("notifications/initialized")
        return response

    def call_tool(self, name, arguments=None, timeout=10.0, meta=None):
        params = {"name": name, "arguments": arguments or {}}
        if meta:
            params["_meta"] = meta
        return self.request("tools/call", params, timeout)

    def close(self, timeout=5.0):
        """Close stdin and wait for exit; return the exit code."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for f in (self.proc.stdout, self.proc.stderr):
                if f is not None:
                    f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.close()
