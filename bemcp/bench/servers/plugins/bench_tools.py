"""The bench's extra tool for `bemcp serve`: a sleep to measure async against sync and
memory per in-flight call (the peers' servers have the same tool)."""

import asyncio


def setup(server):
    @server.tool
    async def sleep(seconds: float) -> str:
        """Sleep for the given number of seconds.

        Args:
            seconds: How long to sleep.
        """
        await asyncio.sleep(seconds)
        return f"slept {seconds}"
