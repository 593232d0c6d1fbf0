"""bemcp: a fast, trustworthy MCP server (stdio and Streamable HTTP) and framework."""

__version__ = "0.1.0"

# asyncio and orjson are imported with the cyclic collector on: their imports leave
# garbage (enum conversions, datetime's pure-Python classes) best freed as they go. bemcp's
# own modules then allocate thousands of long-lived objects and free almost none: the
# collector's passes over them would find nothing. It is paused while they load, and what
# they built joins the oldest generation at once (freeze then unfreeze moves every tracked
# object there without a pass over them).
import asyncio as _asyncio  # noqa: E402
import gc as _gc  # noqa: E402

import orjson as _orjson  # noqa: E402

_collecting = _gc.isenabled()
_gc.disable()
try:
    from ._core import USE_EXTENSIONS, RpcError  # noqa: E402
    from .server import Server  # noqa: E402
    from .tools import (Content, Context, ToolError, ToolResult, audio,  # noqa: E402
                        embedded_resource, image, resource_link, text)
    from .prompts import assistant, user  # noqa: E402
finally:
    if not _gc.get_freeze_count():   # never thaw what the program froze itself
        _gc.freeze()
        _gc.unfreeze()
    if _collecting:
        _gc.enable()
del _asyncio, _gc, _collecting, _orjson

__all__ = ["Server", "Context", "ToolError", "ToolResult", "Content", "RpcError", "MissingCapability", "ClientError",
           "text", "image", "audio", "embedded_resource", "resource_link", "user", "assistant",
           "USE_EXTENSIONS", "__version__"]


def __getattr__(name):
    # Asking the client (elicitation, sampling) is imported on first use, not by every start.
    if name in ("ClientError", "MissingCapability"):
        from . import asking
        return getattr(asking, name)
    raise AttributeError(f"module 'bemcp' has no attribute {name!r}")
