"""The `server_status` tool and the bemcp://status resource: one report, two ways to ask."""


def register_status(server):
    """The `server_status` tool and the bemcp://status resource: the watchdog's view of what
    runs now, and whether the programs tools start run sandboxed."""
    def report():
        return dict(server.watchdog.status(), sandbox=server.sandbox_status())

    @server.tool(annotations={"readOnlyHint": True, "openWorldHint": False})
    async def server_status() -> dict:
        """What the server is doing: in-flight tool calls (age, deadline), how requests ended,
        watchdog actions, memory of the server and its child processes, and whether the
        programs it starts run sandboxed."""
        return report()

    @server.resource("bemcp://status", name="status",
                     description="What the server is doing: the server_status tool's report")
    def status_resource():
        return report()
