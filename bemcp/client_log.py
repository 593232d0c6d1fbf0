"""A request's log: Python logging for the server, ``notifications/message`` for the client.

Each era decides what reaches the client: in the handshake era, records at or above
the level the client set with ``logging/setLevel``; in 2026-07-28, only for requests
whose ``_meta`` carries ``io.modelcontextprotocol/logLevel``, at or above that level.
"""

import logging

from .revisions import LOG_LEVEL_KEY, VERSION_KEY

# MCP log levels (RFC 5424 names) and the stdlib levels they map to.
LOG_LEVELS = {"debug": 10, "info": 20, "notice": 25, "warning": 30, "error": 40,
              "critical": 50, "alert": 55, "emergency": 60}
_NAMES = {10: "debug", 20: "info", 25: "notice", 30: "warning", 40: "error", 50: "critical",
          55: "alert", 60: "emergency"}

SENT = "bemcp_sent"   # a record's attribute: already sent to the client by its request


def level_name(levelno):
    return _NAMES.get(levelno) or _NAMES.get(levelno - levelno % 10, "info")


class RequestLog(logging.LoggerAdapter):
    """``ctx.log``: a logger (``ctx.log.info(...)``) and ``ctx.log(level, data)``.

    ``data`` may be any JSON value; it goes to the client as it is.
    """

    def __init__(self, logger, server, request):
        super().__init__(logger, {})
        self.server = server
        self.request = request
        self.params = request.params if request is not None else None

    def __call__(self, level, data, logger=None):
        """Log ``data`` at MCP ``level`` ("debug" ... "emergency")."""
        if level not in LOG_LEVELS:
            raise ValueError(f"level must be one of {', '.join(LOG_LEVELS)}")
        levelno = LOG_LEVELS[level]
        self.to_client(levelno, data, logger)
        if self.logger.isEnabledFor(levelno):
            self.logger.log(levelno, "%s", data, extra={SENT: True})

    def log(self, level, msg, *args, **kwargs):
        self.to_client(level, (msg % args) if args else str(msg))
        extra = dict(kwargs.pop("extra", None) or {})
        extra[SENT] = True
        if self.logger.isEnabledFor(level):
            self.logger.log(level, msg, *args, extra=extra, **kwargs)

    def threshold(self):
        """The lowest level the client wants from this request, or None for nothing."""
        params = self.params
        meta = params.get("_meta") if type(params) is dict else None
        if type(meta) is dict and VERSION_KEY in meta:
            return LOG_LEVELS.get(meta.get(LOG_LEVEL_KEY))
        peer = self.server.connection(self.request).peer if self.request is not None else None
        level = peer.log_level if peer is not None else self.server.log_level
        return LOG_LEVELS[level] if level is not None else None

    def to_client(self, levelno, data, logger=None):
        threshold = self.threshold()
        if threshold is None or levelno < threshold:
            return False
        self.server.notify("notifications/message", {"level": level_name(levelno),
                                                     "logger": logger or self.logger.name, "data": data},
                           self.request)
        return True
