"""bemcp: a fast, trustworthy stdio MCP server and framework."""

__version__ = "0.1.0"

# Importing bemcp (asyncio, orjson and the core with it) allocates tens of thousands of
# long-lived objects and frees almost none: the cyclic collector's passes over them, a
# tenth of the import's time, would find nothing. It is paused during the import, and
# what the import built joins the oldest generation at once (freeze then unfreeze moves
# every tracked object there without a pass over them).
import gc as _gc  # noqa: E402

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
del _gc, _collecting

__all__ = ["Server", "Context", "ToolError", "ToolResult", "Content", "RpcError", "MissingCapability", "ClientError",
           "text", "image", "audio", "embedded_resource", "resource_link", "user", "assistant",
           "USE_EXTENSIONS", "__version__"]


def __getattr__(name):
    # Asking the client (elicitation, sampling) is imported on first use, not by every start.
    if name in ("ClientError", "MissingCapability"):
        from . import asking
        return getattr(asking, name)
    raise AttributeError(f"module 'bemcp' has no attribute {name!r}")
