"""MCP protocol revisions (both eras) and the reserved `_meta` keys of 2026-07-28."""

from .errors import UNSUPPORTED_PROTOCOL_VERSION, RpcError

HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = ("2026-07-28",)
SUPPORTED_VERSIONS = HANDSHAKE_VERSIONS + MODERN_VERSIONS
LATEST_HANDSHAKE = HANDSHAKE_VERSIONS[-1]
BATCH_VERSIONS = ("2025-03-26",)   # the one revision with JSON-RPC batches (a MUST there)

# Reserved _meta keys of 2026-07-28.
VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
TASKS_EXTENSION = "io.modelcontextprotocol/tasks"


def request_version(params):
    """The 2026-07-28 version a request names in ``_meta``, or None for a handshake-era request.

    Raises -32022 (with the versions we speak) for a version we do not support.
    """
    if type(params) is not dict:
        return None
    meta = params.get("_meta")
    if type(meta) is not dict:
        return None
    version = meta.get(VERSION_KEY)
    if version is None:
        return None
    if version not in MODERN_VERSIONS:
        # ``supported`` lists every version, as server/discover does: a handshake-era one is
        # fine through initialize, so the message says which ones a request's _meta may name.
        how = " is agreed through initialize, not per request" if version in SUPPORTED_VERSIONS else ""
        raise RpcError(UNSUPPORTED_PROTOCOL_VERSION,
                       f"Unsupported protocol version: {version!r}{how}; in _meta: "
                       f"{', '.join(MODERN_VERSIONS)}",
                       {"supported": list(SUPPORTED_VERSIONS), "requested": str(version)})
    return version
