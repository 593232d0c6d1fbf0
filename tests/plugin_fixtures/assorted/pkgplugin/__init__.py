"""A package plugin using a relative import."""

from .helpers import greet


def setup(server):
    @server.tool
    def pkg_greet(name: str) -> str:
        """Greets."""
        return greet(name)

    @server.resource("fixture://pkgplugin", mime_type="text/plain")
    def about():
        return "pkgplugin resource"
