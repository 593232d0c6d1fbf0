"""A test server built with the public API only: tools that behave, and misbehave, on purpose.

Run: ``python tests/servers/kitchen.py [--page-size N] [bemcp serve flags...]``.
The end-to-end tests spawn it on real pipes (see tests/test_mcp_*.py).
"""

import asyncio
import ctypes
import dataclasses
import logging
import os
import subprocess
import sys
import threading
from typing import Literal

from bemcp import Context, Server, ToolError, ToolResult, text
from bemcp.config import parse


@dataclasses.dataclass
class Point:
    """A point on the plane."""

    x: int
    y: int


def build(argv):
    page_size = 500
    if "--page-size" in argv:
        i = argv.index("--page-size")
        page_size = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    server = Server("kitchen", version="1.2.3", config=parse(argv), page_size=page_size,
                    instructions="A server for bemcp's tests.")
    events = {}                 # key -> asyncio.Event, for calls that wait to be released
    sync_gate = threading.Event()
    seen_cancelled = []         # tools that received CancelledError, in order

    def event(key):
        if key not in events:
            events[key] = asyncio.Event()
        return events[key]

    @server.tool
    async def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool
    async def wait_release(key: str = "default") -> str:
        """Wait until `release` is called with the same key."""
        try:
            await event(key).wait()
        except asyncio.CancelledError:
            seen_cancelled.append(f"wait_release:{key}")
            raise
        return f"released {key}"

    @server.tool
    async def release(key: str = "default") -> str:
        """Let the `wait_release` calls with this key finish."""
        event(key).set()
        return "ok"

    @server.tool
    async def sleep(seconds: float) -> str:
        """Sleep, then answer."""
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            seen_cancelled.append("sleep")
            raise
        return f"slept {seconds}"

    @server.tool
    def sync_wait(timeout: float = 10.0) -> dict:
        """A sync tool that blocks its thread until `sync_release` (or the timeout)."""
        released = sync_gate.wait(timeout)
        return {"released": released, "thread": threading.current_thread().name,
                "on_main_thread": threading.current_thread() is threading.main_thread()}

    @server.tool
    def sync_release() -> str:
        """Let `sync_wait` finish."""
        sync_gate.set()
        return "ok"

    @server.tool
    async def cancelled() -> list[str]:
        """The tools that received CancelledError so far."""
        return list(seen_cancelled)

    @server.tool
    async def inflight() -> list:
        """The ids of the requests in flight (this one excluded)."""
        return [row["id"] for row in server.dispatcher.table.snapshot() if row["tool"] != "inflight"]

    # -- noise on the standard descriptors ------------------------------------------

    @server.tool
    def noise_print(marker: str) -> str:
        """print(), sys.stdout, sys.__stdout__: none of it may reach the protocol."""
        print(f"{marker} print")
        sys.stdout.write(f"{marker} sys.stdout\n")
        sys.stdout.flush()
        sys.__stdout__.write(f"{marker} sys.__stdout__\n")
        sys.__stdout__.flush()
        return "printed"

    @server.tool
    async def noise_fd(marker: str) -> str:
        """os.write to fd 1 from the event loop's thread."""
        os.write(1, f"{marker} fd1\n".encode())
        os.write(1, b'{"jsonrpc": "2.0", "id": 424242, "result": {}}\n')
        return "written"

    @server.tool
    def noise_c(marker: str) -> str:
        """write(1, ...) through libc, as a C extension would."""
        libc = ctypes.CDLL(None)
        data = f"{marker} libc\n".encode()
        libc.write(1, data, len(data))
        return "written"

    @server.tool
    def noise_child(marker: str) -> str:
        """A child process writing to the fd 1 and fd 2 it inherits."""
        code = ("import os, sys; os.write(1, sys.argv[1].encode() + b' child fd1\\n'); "
                "os.write(2, sys.argv[1].encode() + b' child fd2\\n'); print(sys.argv[1], 'child print')")
        subprocess.run([sys.executable, "-c", code, marker], timeout=20, check=True)
        return "ran"

    @server.tool
    def child_stdin() -> str:
        """What a child process reads from the stdin it inherits (must be nothing: EOF)."""
        out = subprocess.run([sys.executable, "-c", "import sys; print(repr(sys.stdin.buffer.read()))"],
                             stdout=subprocess.PIPE, timeout=20, check=True)
        return out.stdout.decode().strip()

    # -- results, errors, progress, logs ------------------------------------------------

    @server.tool
    async def progress(steps: int, ctx: Context) -> str:
        """Report progress `steps` times (plus reports that must be dropped), then answer."""
        for i in range(1, steps + 1):
            ctx.report_progress(i, total=steps, message=f"step {i}")
            ctx.report_progress(i - 0.5, total=steps)   # not above the last: dropped
            await asyncio.sleep(0)
        return "done"

    @server.tool
    def sync_progress(steps: int, ctx: Context) -> str:
        """Report progress from a worker thread."""
        for i in range(1, steps + 1):
            ctx.report_progress(i, total=steps)
        return "done"

    @server.tool
    async def log(level: Literal["debug", "info", "warning", "error"], message: str, ctx: Context) -> str:
        """Log `message` at `level` through the tool's logger."""
        ctx.log.log(getattr(logging, level.upper()), message)
        return "logged"

    @server.tool
    async def ask_model(prompt: str, ctx: Context) -> str:
        """Ask the client's model (sampling) and return its text."""
        answer = await ctx.sample(prompt, max_tokens=20)
        return answer["content"]["text"]

    @server.tool
    async def point(x: int, y: int) -> Point:
        """A dataclass result (structured content with an output schema)."""
        return Point(x, y)

    @server.tool
    async def blocks() -> ToolResult:
        """Explicit content blocks."""
        return ToolResult([text("one"), text("two")], structured={"n": 2})

    @server.tool
    async def refuse(reason: str) -> str:
        """Raise ToolError."""
        raise ToolError(f"refused: {reason}")

    @server.tool
    async def crash() -> str:
        """Raise ValueError."""
        raise ValueError("something broke")

    @server.tool
    async def big(size: int) -> str:
        """A large text result."""
        return "x" * size

    return server


if __name__ == "__main__":
    build(sys.argv[1:]).run()
