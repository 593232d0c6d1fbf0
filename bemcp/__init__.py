"""bemcp: a fast, trustworthy stdio MCP server and framework."""

__version__ = "0.1.0"

from ._core import USE_EXTENSIONS, RpcError  # noqa: E402
from .server import Server  # noqa: E402
from .tools import (Content, Context, ToolError, ToolResult, audio,  # noqa: E402
                    embedded_resource, image, resource_link, text)
from .prompts import assistant, user  # noqa: E402
from .asking import ClientError, MissingCapability  # noqa: E402

__all__ = ["Server", "Context", "ToolError", "ToolResult", "Content", "RpcError", "MissingCapability", "ClientError",
           "text", "image", "audio", "embedded_resource", "resource_link", "user", "assistant",
           "USE_EXTENSIONS", "__version__"]
