"""bemcp: a fast, trustworthy stdio MCP server and framework."""

__version__ = "0.1.0"

from ._core import USE_EXTENSIONS, RpcError  # noqa: E402
from .server import Server  # noqa: E402
from .tools import (Content, Context, ToolError, ToolResult, audio, image,  # noqa: E402
                    resource_link, text)

__all__ = ["Server", "Context", "ToolError", "ToolResult", "Content", "RpcError",
           "text", "image", "audio", "resource_link", "USE_EXTENSIONS", "__version__"]
