"""The bench's extras for `bemcp serve`: a sleep to measure async against sync and memory per
in-flight call (the peers' servers have the same tool), and for the surface section a prompt, a
fixed and a templated resource, and a tool that asks the user to confirm (elicitation)."""

import asyncio

CONFIRM = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


def setup(server):
    from bemcp import Context

    @server.tool
    async def sleep(seconds: float) -> str:
        """Sleep for the given number of seconds.

        Args:
            seconds: How long to sleep.
        """
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool
    async def confirm(ctx: Context) -> str:
        """Ask the user to confirm; returns what they did (accept, decline or cancel)."""
        answer = await ctx.elicit("Go ahead?", CONFIRM, key="ok")
        return answer["action"]

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
