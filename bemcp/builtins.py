"""The tools every `bemcp serve` has."""


def register_builtins(server):
    @server.tool(eager=True, annotations={"readOnlyHint": True, "openWorldHint": False})
    async def echo(text: str) -> str:
        """Return the text unchanged (a round-trip check for clients and benchmarks).

        Args:
            text: The text to send back.
        """
        return text

    from .processes import register_process_tools
    register_process_tools(server)
    if server.watchdog is not None:
        from .watchdog import register_status
        register_status(server)
