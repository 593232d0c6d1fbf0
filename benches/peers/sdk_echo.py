"""Echo (and sleep) MCP server on the official Python SDK's high-level API (mcp 2.x
MCPServer, formerly FastMCP), over stdio: the `sdk` peer of benches/stdio_bench.py
and benches/concurrency_bench.py."""

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("sdk-echo", log_level="WARNING")


# structured_output=False: plain text content, as bemcp and the TS peer answer
# (the SDK would otherwise add structuredContent for a `-> str` tool).
@server.tool(structured_output=False)
async def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool(structured_output=False)
async def sleep(seconds: float) -> str:
    """Sleep for the given number of seconds."""
    await anyio.sleep(seconds)
    return f"slept {seconds}"


if __name__ == "__main__":
    server.run()
