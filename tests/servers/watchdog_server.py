"""A server for watchdog and task tests, built with the public API.

Settings come as `bemcp serve` flags; forensics events are appended as JSON lines
to $BEMCP_TEST_RECORDS (server.recorders is the public hook the logs use too).
"""

import asyncio
import os
import subprocess
import sys
import time

import orjson

from bemcp import Server, config
from bemcp.builtins.status import register_status

server = Server("watchdog-test", config=config.parse(sys.argv[1:]))
register_status(server)
if "--log-dir" in sys.argv:   # log files only when a test asks for them
    from bemcp.logs import setup_logging
    setup_logging(server)
STATE = {}
GATES = {}
RECORDS = os.environ.get("BEMCP_TEST_RECORDS")


def record(kind, fields):
    if RECORDS:
        fields = {k: (repr(v) if k in ("exc", "request") else v) for k, v in fields.items()}
        with open(RECORDS, "ab") as f:
            f.write(orjson.dumps({"kind": kind, **fields}, default=str) + b"\n")


server.recorders.append(record)


@server.tool
async def nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "rested"


@server.tool
async def swallow(seconds: float) -> str:
    """Ignores cancellation until ``seconds`` have passed."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            STATE["swallowed"] = STATE.get("swallowed", 0) + 1
    return "finished anyway"


@server.tool
def spin(seconds: float) -> str:
    """A pure-Python loop in a worker thread."""
    STATE["spin"] = "running"
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            pass
        STATE["spin"] = "finished"
    except BaseException as exc:
        STATE["spin"] = f"stopped by {type(exc).__name__}"
        raise
    return "spun"


@server.tool
async def block(seconds: float) -> str:
    """Blocks the event loop (what an async tool must never do)."""
    time.sleep(seconds)
    return "unblocked"


@server.tool
async def hold(key: str) -> str:
    """Waits until release(key)."""
    gate = GATES.setdefault(key, asyncio.Event())
    await gate.wait()
    return f"released {key}"


@server.tool
async def release(key: str) -> str:
    GATES.setdefault(key, asyncio.Event()).set()
    return "ok"


@server.tool
async def probe() -> dict:
    return dict(STATE)


@server.tool
def spawn_child() -> int:
    """Starts `sleep 60` in its own session and leaves it running."""
    child = subprocess.Popen(["sleep", "60"], start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    STATE["child"] = child  # kept so it can be reaped
    return child.pid


@server.tool(task_support="optional")
async def work(seconds: float) -> str:
    """Runs a child process for ``seconds``; cancelling stops it."""
    proc = await asyncio.create_subprocess_exec("sleep", str(seconds), start_new_session=True)
    STATE["work_pid"] = proc.pid
    try:
        await proc.wait()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        STATE["work"] = "killed"
        raise
    return f"worked {seconds}"


@server.tool(task_support="required")
async def only_task(x: int) -> int:
    return x * 2


def set_limits(params, req):
    """test/set_limits {soft_mb, hard_mb}: simulate a machine with little memory."""
    server.watchdog.soft_bytes = int(params["soft_mb"] * 2**20)
    server.watchdog.hard_bytes = int(params["hard_mb"] * 2**20)
    return {}


def release_gate(params, req):
    """test/release {key}: like the release tool, but not a tool call (limits do not apply)."""
    GATES.setdefault(params["key"], asyncio.Event()).set()
    return {}


def reap(params, req):
    child = STATE.pop("child", None)
    if child is not None:
        child.kill()
        child.wait()
    return {}


server.on_start(lambda: server.dispatcher.methods.update({"test/set_limits": set_limits, "test/reap": reap,
                                                                   "test/release": release_gate}))

if __name__ == "__main__":
    server.run()
