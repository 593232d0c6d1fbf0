"""The `uvloop` reference: a plain-Python uvloop echo server, the yardstick for the compiled core.

No validation, no in-flight table, no deadlines, no MCP beyond answering
initialize, tools/list and tools/call. Each request runs a coroutine handler, either

- ``--tasks``: as an asyncio Task per request (what a plain server does), or
- by default: stepped once on the spot, and made a Task only if it suspends
  (the "eager" trick; an echo never suspends).

Answers are gathered per read and written once, like bemcp's coalesced output.
"""

import asyncio
import os
import sys

import orjson
import uvloop

INIT_RESULT = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
               "serverInfo": {"name": "uvloop-echo", "version": "0"}}

TOOLS = {"tools": [{"name": "echo", "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}},
                                                    "required": ["text"]}}]}


async def handle(msg):
    method = msg.get("method")
    if method == "tools/call":
        return {"content": [{"type": "text", "text": msg["params"]["arguments"]["text"]}]}
    if method == "initialize":
        return INIT_RESULT
    if method == "tools/list":
        return TOOLS
    return {}


class EchoProtocol(asyncio.Protocol):
    def __init__(self, loop, write, tasks, stopped):
        self.loop = loop
        self.write = write
        self.tasks = tasks
        self.stopped = stopped
        self.partial = b""
        self.out = []
        self.flush_handle = None

    def data_received(self, data):
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            msg = orjson.loads(line)
            if "id" not in msg:
                continue
            coro = handle(msg)
            if self.tasks:
                task = self.loop.create_task(coro)
                task.add_done_callback(lambda t, id=msg["id"]: self.answer(id, t.result()))
                continue
            try:
                coro.send(None)
            except StopIteration as done:
                self.answer(msg["id"], done.value)
            else:
                raise RuntimeError("an echo handler never suspends")
        self.flush()

    def answer(self, id, result):
        self.out.append(orjson.dumps({"jsonrpc": "2.0", "id": id, "result": result},
                                     option=orjson.OPT_APPEND_NEWLINE))
        if self.flush_handle is None:
            self.flush_handle = self.loop.call_soon(self.flush)

    def flush(self):
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if self.out:
            self.write(b"".join(self.out))
            self.out.clear()

    def eof_received(self):
        self.stopped.set_result(None)

    def connection_lost(self, exc):
        if not self.stopped.done():
            self.stopped.set_result(None)


async def main(tasks):
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()
    wtransport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(1, "wb", buffering=0))
    await loop.connect_read_pipe(lambda: EchoProtocol(loop, wtransport.write, tasks, stopped),
                                 os.fdopen(0, "rb", buffering=0))
    await stopped
    await asyncio.sleep(0)


if __name__ == "__main__":
    uvloop.run(main("--tasks" in sys.argv[1:]))
