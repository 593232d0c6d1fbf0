"""A plugin whose tool raises, next to one that works."""


def setup(server):
    @server.tool
    def raising_tool_boom(x: int = 1) -> str:
        """Always raises."""
        raise ValueError(f"boom {x}")

    @server.tool
    def raising_tool_ok(x: int = 1) -> int:
        """Works."""
        return x + 1
