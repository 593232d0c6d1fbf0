"""Takes half a second to import, then registers a prompt and a resource template: it is
still loading when the client's initialize is answered."""

import time

time.sleep(0.5)


def setup(server):
    @server.prompt
    def plugin_greeting(name: str) -> str:
        """Greet someone by name."""
        return f"Say hello to {name}."

    @server.resource("notes://{topic}", name="note", mime_type="text/plain")
    def note(topic: str) -> str:
        """A note about a topic."""
        return f"notes on {topic}"
