"""The MCP surface beside tools: prompts/get and resources/read latency next to an echo
tools/call, and the round trip of an elicitation in both protocol eras.

The server is this file run with ``--serve`` (an echo tool, a prompt, a fixed and a
templated resource, and a tool that asks the user to confirm). Closed loop, one request
in flight, over real pipes; each figure is the median over rounds of the round's p50
(and p90), µs. Rounds spawn the compiled core and the pure twins in rotated order.

- ``elicit (handshake)``: tools/call, then the server's ``elicitation/create`` arrives and
  the client answers it, then the result: the whole exchange.
- ``elicit (2026-07-28)``: tools/call answered ``input_required``, then the retry with
  ``inputResponses`` and the signed ``requestState``, answered ``complete``: both requests.

    python benches/surface_bench.py                 # 3 rounds, 2000 requests per figure
    python benches/surface_bench.py --rounds 5 --count 5000

Not shown: throughput with many in flight (benches/stdio_bench.py measures that for
tools/call, which the other methods share the dispatch path with), and a client's own
time to build its answers.
"""

import argparse
import sys
import time

import _common
from _common import (PYTHON, Peer, Target, bemcp_env, fmt, log, markdown_table, median,
                     percentile, run_rounds, time_limit)

MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
               "io.modelcontextprotocol/clientInfo": _common.CLIENT_INFO}
CONFIRM = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
ACCEPT = {"action": "accept", "content": {"ok": True}}


def serve():
    from bemcp import Context, Server
    server = Server("surface-bench")

    @server.tool(eager=True)
    async def echo(text: str) -> str:
        """Return the text."""
        return text

    @server.prompt
    def greet(name: str) -> str:
        """Greet someone."""
        return f"Hello, {name}!"

    @server.resource("bench://static", mime_type="text/plain")
    def static() -> str:
        """A fixed resource."""
        return "static text"

    @server.resource("bench://item/{id}")
    def item(id: int) -> dict:
        """A templated resource."""
        return {"id": id}

    @server.tool
    async def confirm(ctx: Context) -> str:
        """Ask the user to confirm."""
        answer = await ctx.elicit("Go ahead?", CONFIRM, key="ok")
        return answer["action"]

    server.run()


def request(id, method, params):
    return _common.encode_request(id, method, params)


def closed_loop(peer, count, make, exchange):
    samples = []
    now = time.perf_counter_ns
    for i in range(count):
        t0 = now()
        exchange(peer, 1000 + i, make)
        samples.append(now() - t0)
    samples.sort()
    return percentile(samples, 50) / 1e3, percentile(samples, 90) / 1e3


def plain(peer, id, make):
    peer.write(make(id))
    msg = peer.read_response(id)
    assert "result" in msg, msg


def elicit_handshake(peer, id, make):
    peer.write(request(id, "tools/call", {"name": "confirm", "arguments": {}}))
    ask = _common.orjson.loads(peer.read_line())
    assert ask.get("method") == "elicitation/create", ask
    peer.write(_common.orjson.dumps({"jsonrpc": "2.0", "id": ask["id"], "result": ACCEPT}) + b"\n")
    msg = peer.read_response(id)
    assert msg["result"]["content"][0]["text"] == "accept", msg


def elicit_modern(peer, id, make):
    params = {"name": "confirm", "arguments": {}, "_meta": MODERN_META}
    peer.write(request(id, "tools/call", params))
    first = peer.read_response(id)["result"]
    assert first["resultType"] == "input_required", first
    retry = dict(params, inputResponses={"ok": ACCEPT}, requestState=first["requestState"])
    peer.write(request(-id, "tools/call", retry))
    msg = peer.read_response(-id)
    assert msg["result"]["resultType"] == "complete", msg


FIGURES = [
    ("tools/call echo", plain, lambda id: request(id, "tools/call", {"name": "echo", "arguments": {"text": "hi"}})),
    ("prompts/get", plain, lambda id: request(id, "prompts/get", {"name": "greet", "arguments": {"name": "Ada"}})),
    ("resources/read fixed", plain, lambda id: request(id, "resources/read", {"uri": "bench://static"})),
    ("resources/read template", plain, lambda id: request(id, "resources/read", {"uri": "bench://item/42"})),
    ("elicit (handshake)", elicit_handshake, None),
    ("elicit (2026-07-28)", elicit_modern, None),
]


def measure(target, opts):
    with Peer(target) as peer:
        peer.request(0, "initialize", {"protocolVersion": _common.HANDSHAKE_VERSION,
                                       "capabilities": {"elicitation": {}}, "clientInfo": _common.CLIENT_INFO})
        peer.notify("notifications/initialized")
        out = {}
        with time_limit(opts.phase_timeout, f"{target.name} surface"):
            for label, exchange, make in FIGURES:
                closed_loop(peer, opts.warmup, make, exchange)
                out[label] = closed_loop(peer, opts.count, make, exchange)
        return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--phase-timeout", type=float, default=300.0)
    opts = parser.parse_args(argv)
    if opts.serve:
        serve()
        return
    argv = [PYTHON, __file__, "--serve"]
    targets = [Target("bemcp", argv, bemcp_env(False)), Target("bemcp-py", argv, bemcp_env(True))]
    results, errors = run_rounds(targets, opts.rounds, lambda t: measure(t, opts))
    if errors:
        raise SystemExit(f"failed: {errors}")
    headers = ["request"] + [f"{t.name} {q}" for t in targets for q in ("p50 µs", "p90 µs")]
    rows = []
    for label, _, _ in FIGURES:
        row = [label]
        for t in targets:
            rounds = [r[label] for r in results[t.name]]
            row += [fmt(median([p50 for p50, _ in rounds])), fmt(median([p90 for _, p90 in rounds]))]
        rows.append(row)
    print(markdown_table(headers, rows))
    log(f"{opts.rounds} rounds x {opts.count} requests per figure; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
