"""The tools every `bemcp serve` has: echo here, run_command and process_* in
commands.py, server_status in status.py."""


def register_builtins(server):
    @server.tool(eager=True, annotations={"readOnlyHint": True, "openWorldHint": False})
    async def echo(text: str) -> str:
        """Return the text unchanged (a round-trip check for clients and benchmarks).

        Args:
            text: The text to send back.
        """
        return text

    from .commands import register_commands
    register_commands(server)
    if server.watchdog is not None:
        from .status import register_status
        register_status(server)
