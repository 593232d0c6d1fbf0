"""Hangs for 10 s while being imported, then would register a tool (too late)."""

import time

time.sleep(10)


def setup(server):
    @server.tool
    def slow_tool() -> str:
        """Never registered: the loader gave up before this module finished importing."""
        return "too late"
