"""The seam between transports and the core: one dispatcher, many connections.

The dispatcher and its in-flight table serve every client. A connection owns where
the messages of a request go besides its answer (its notifications, the server's
requests to the client): the stdio pipe, or an HTTP exchange. ``Peer`` is what a
handshake-era client agreed at ``initialize``: one per stdio process, one per HTTP
session; a 2026-07-28 request carries all of it in its ``_meta`` instead.
"""


class Peer:
    """What one handshake-era client declared at initialize, and the log level it set."""

    __slots__ = ("protocol_version", "client_capabilities", "client_info", "log_level", "initialized",
                 "resources", "listed")

    def __init__(self):
        self.resources = set()    # URIs it subscribed to
        self.listed = set()       # kinds of list it holds (told once when one changes)
        self.protocol_version = None
        self.client_capabilities = None
        self.client_info = None
        self.log_level = None
        self.initialized = False


class Connection:
    """Where a request's own messages go.

    ``notify(method, params)`` sends a notification related to the request;
    ``send_request(method, params)`` sends the client a request and returns
    ``(id, future)``, the future resolved by the dispatcher when the answer comes back.
    Both are called on the event loop's thread.
    """

    __slots__ = ("peer", "notify", "send_request")

    def __init__(self, peer, notify, send_request):
        self.peer = peer
        self.notify = notify
        self.send_request = send_request
