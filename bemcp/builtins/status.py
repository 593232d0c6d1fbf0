"""The `server_status` tool and the bemcp://tasks resource: the watchdog's view of what
runs now, and whether commands run sandboxed."""


def register_status(server):
    """The `server_status` tool and the bemcp://tasks resource."""
    @server.tool(annotations={"readOnlyHint": True, "openWorldHint": False})
    async def server_status() -> dict:
        """What the server is doing: in-flight tool calls (age, deadline), how requests ended,
        watchdog actions, memory of the server and its child processes, and whether the
        programs it starts run sandboxed."""
        return dict(server.watchdog.status(), sandbox=server.sandbox_status())

    @server.resource("bemcp://tasks", name="tasks", description="In-flight requests, counters and watchdog state")
    def tasks_resource():
        return server.watchdog.status()
