"""Echo MCP server on the official Python SDK over Streamable HTTP, stateless with JSON
responses: the `sdk` peer of benches/http_bench.py. Usage: python sdk_http_echo.py PORT

uvicorn as the SDK runs itself (MCPServer.run's streamable-http transport builds
uvicorn.Config(app, host, port, log_level) and leaves the rest at uvicorn's defaults:
uvloop and httptools when installed, as here by name, and proxy headers on), with the
access log off as for every target of the bench."""

import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer(name="sdk-http-echo", version="1.0")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


app = server.streamable_http_app(stateless_http=True, json_response=True)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            log_level="warning", access_log=False)
