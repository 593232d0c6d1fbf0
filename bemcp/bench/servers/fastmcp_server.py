"""The `fastmcp` peer: echo and sleep on fastmcp's high-level API, over stdio."""

import asyncio

from fastmcp import FastMCP

server = FastMCP("fastmcp-echo")


@server.tool
async def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool
async def sleep(seconds: float) -> str:
    """Sleep for the given number of seconds."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


if __name__ == "__main__":
    server.run(show_banner=False, log_level="WARNING")
