"""The floor of benches/http_bench.py: a bare ASGI app under the same uvicorn as bemcp
(bemcp.transports.http.uvicorn_config: `bemcp serve --http`'s settings, with uvicorn's
own httptools protocol) that reads each POST body and answers a canned JSON-RPC result.

What is left above it is the MCP server's own cost, bemcp's request guard included.
Usage: python http_floor.py PORT
"""

import sys

import uvicorn

from bemcp.transports.http import uvicorn_config

ANSWER = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello"}],"resultType":"complete"}}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


if __name__ == "__main__":
    uvicorn.Server(uvicorn_config(app, "127.0.0.1", int(sys.argv[1]), lifespan="off")).run()
