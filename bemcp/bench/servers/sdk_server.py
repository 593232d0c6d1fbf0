"""The `sdk` peer: echo and sleep on the official Python SDK's high-level API (mcp 2.x
MCPServer). Serves stdio, or with ``--http PORT`` Streamable HTTP (stateless, JSON
answers) under uvicorn on 127.0.0.1, at /mcp."""

import sys

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("sdk-echo", log_level="WARNING")


# structured_output=False: plain text content, as bemcp and the TypeScript peer answer
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


def serve_http(port):
    import uvicorn
    app = server.streamable_http_app(stateless_http=True, json_response=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--http"]:
        serve_http(int(sys.argv[2]))
    else:
        server.run()
