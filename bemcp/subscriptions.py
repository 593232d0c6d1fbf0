"""Change notifications, sent only to the clients that asked for them.

- Handshake era: ``resources/subscribe``/``unsubscribe`` pick the URIs whose
  ``notifications/resources/updated`` the client gets; a list-changed notification
  goes to a client that holds a list of that kind (and once per burst of changes).
- 2026-07-28: ``subscriptions/listen`` is a request that stays open. It is
  acknowledged first; every notification on it carries its id in ``_meta``, and only
  the kinds its filter asked for are sent. The client ends it with
  ``notifications/cancelled``; the server ends it (at shutdown) with its result.
"""

from ._core import RpcError
from .errors import INVALID_PARAMS
from .revisions import request_version

SUBSCRIPTION_KEY = "io.modelcontextprotocol/subscriptionId"
LIST_FLAGS = {"tools": "toolsListChanged", "prompts": "promptsListChanged",
              "resources": "resourcesListChanged"}


class Listener:
    __slots__ = ("conn", "id", "honored", "uris", "done")

    def __init__(self, conn, id, honored, done):
        self.conn = conn
        self.id = id
        self.honored = honored
        self.uris = frozenset(honored.get("resourceSubscriptions", ()))
        self.done = done

    def send(self, method, params):
        params = dict(params or {})
        params["_meta"] = {SUBSCRIPTION_KEY: self.id}
        self.conn.notify(method, params)


class Subscriptions:
    """Who asked for which change notifications, for one server."""

    def __init__(self, server):
        self.server = server
        self.listeners = {}           # 2026-07-28: listen request id -> Listener
        self._pending = set()

    # -- handshake era --------------------------------------------------------------------

    def _uri(self, params, method):
        uri = params.get("uri") if type(params) is dict else None
        if type(uri) is not str:
            raise RpcError(INVALID_PARAMS, f"{method} needs params {{uri}}")
        return uri

    # Each client's subscriptions and lists live in its Peer (server.connection(req).peer).

    def subscribe(self, params, req):
        self.server.connection(req).peer.resources.add(self._uri(params, req.method))
        return {}

    def unsubscribe(self, params, req):
        self.server.connection(req).peer.resources.discard(self._uri(params, req.method))
        return {}

    # -- 2026-07-28 -------------------------------------------------------------------------

    def listen(self, params, req):
        if request_version(params) is None:
            raise RpcError(-32601, "Method not found: subscriptions/listen (a 2026-07-28 method; "
                                   "use resources/subscribe with initialize)")
        wanted = params.get("notifications")
        if type(wanted) is not dict:
            raise RpcError(INVALID_PARAMS, "subscriptions/listen needs params {notifications: {...}}")
        honored = {flag: True for flag in LIST_FLAGS.values() if wanted.get(flag) is True}
        uris = wanted.get("resourceSubscriptions")
        if uris is not None:
            if type(uris) is not list or not all(type(u) is str for u in uris):
                raise RpcError(INVALID_PARAMS, "notifications.resourceSubscriptions must be a list of URIs")
            honored["resourceSubscriptions"] = uris
        return self._listen(req, honored)

    async def _listen(self, req, honored):
        done = self.server.loop.create_future()
        listener = Listener(self.server.connection(req), req.id, honored, done)
        self.listeners[req.id] = listener
        try:
            listener.send("notifications/subscriptions/acknowledged", {"notifications": honored})
            await done
            return {"resultType": "complete", "_meta": {SUBSCRIPTION_KEY: req.id}}
        finally:
            if self.listeners.get(req.id) is listener:
                del self.listeners[req.id]

    def close(self):
        """End every listen stream with its result (the server is stopping)."""
        for listener in list(self.listeners.values()):
            if not listener.done.done():
                listener.done.set_result(None)

    # -- sending ------------------------------------------------------------------------------

    def wants(self, kind):
        flag = LIST_FLAGS[kind]
        return any(kind in peer.listed for peer, _ in self.server.peers()) or \
            any(flag in l.honored for l in self.listeners.values())

    def resource_updated(self, uri):
        for peer, notify in self.server.peers():
            if uri in peer.resources:
                notify("notifications/resources/updated", {"uri": uri})
        for listener in list(self.listeners.values()):
            if uri in listener.uris:
                listener.send("notifications/resources/updated", {"uri": uri})

    def list_changed(self, kind):
        """Tell who asked that the list of ``kind`` changed: once per burst, from any thread."""
        if self.server.dispatcher is None or kind in self._pending or not self.wants(kind):
            return
        self._pending.add(kind)
        self.server.loop.call_soon_threadsafe(self._send_list_changed, kind)

    def _send_list_changed(self, kind):
        self._pending.discard(kind)
        method = f"notifications/{kind}/list_changed"
        for peer, notify in self.server.peers():
            if kind in peer.listed:
                peer.listed.discard(kind)   # told once; a new list re-arms it
                notify(method, None)
        flag = LIST_FLAGS[kind]
        for listener in list(self.listeners.values()):
            if flag in listener.honored:
                listener.send(method, None)

