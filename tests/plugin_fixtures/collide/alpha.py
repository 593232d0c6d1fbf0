"""Registers `shared` (free) and `echo` (taken by the built-in tool)."""


def setup(server):
    @server.tool
    def shared() -> str:
        """alpha's shared."""
        return "alpha"

    @server.tool(name="echo")
    def alpha_echo_impl(text: str) -> str:
        """alpha's echo."""
        return f"alpha says {text}"
