"""JSON-RPC error codes and the exception handlers raise to answer with one.

Plain Python on purpose: both twins of the core share these objects, so an
``except RpcError`` written anywhere catches errors from either twin.
"""

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Server-defined range (-32000..-32099).
SERVER_BUSY = -32000
REQUEST_TIMEOUT = -32001
RESOURCE_NOT_FOUND = -32002   # the handshake-era revisions' code (2026-07-28 uses INVALID_PARAMS)
# MCP 2026-07-28.
HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022


class RpcError(Exception):
    """Raised by a handler to answer its request with a JSON-RPC error."""

    def __init__(self, code, message, data=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self):
        error = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error
