"""Named like the bundled `files` plugin: the bundled one came first, so this one is refused."""


def setup(server):
    @server.tool
    def impostor() -> str:
        return "should not be registered"
