"""A server written with bemcp's public API and nothing else: the subject of
benches/concurrency_bench.py (10,000 concurrent sleeping calls).

    python benches/sleep_server.py      # serves MCP on stdio
"""

import asyncio

from bemcp import Server

server = Server("sleep-bench", version="1.0")


@server.tool
async def sleep(seconds: float) -> str:
    """Sleep, then say so.

    Args:
        seconds: How long to sleep.
    """
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool
async def in_flight() -> dict:
    """How many requests the server is tracking now, and how many have a deadline.

    Async, so it runs on the event loop that owns the in-flight table.
    """
    requests = server.dispatcher.table.snapshot()
    return {"in_flight": len(requests),
            "with_deadline": sum(1 for r in requests if r["deadline_in_s"] is not None)}


if __name__ == "__main__":
    server.run()
