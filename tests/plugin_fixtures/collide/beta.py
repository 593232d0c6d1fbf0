"""Registers `shared`, already taken by alpha."""


def setup(server):
    @server.tool
    def shared() -> str:
        """beta's shared."""
        return "beta"
