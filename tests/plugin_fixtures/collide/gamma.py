"""Takes `gamma_shared` first, so its own `shared` has nowhere to go and is refused."""


def setup(server):
    @server.tool
    def gamma_shared() -> str:
        """gamma's own gamma_shared."""
        return "gamma own"

    @server.tool
    def shared() -> str:
        """gamma's shared."""
        return "gamma"
