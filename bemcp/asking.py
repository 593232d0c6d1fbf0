"""Asking the client from a tool, a prompt or a resource: sampling, elicitation, roots.

One handler code path serves both protocol eras:

- Handshake era: each ask is a real request to the client (``sampling/createMessage``,
  ``elicitation/create``, ``roots/list``) sent on the request's connection; the core
  routes the response back by id. The wait is bounded by the call's deadline and ends
  with it (the client is told with ``notifications/cancelled``).
- 2026-07-28: the server keeps nothing between requests. An ask with no answer yet
  ends the handler; the request is answered ``resultType: "input_required"`` with the
  asks collected in that round (``inputRequests``) and a ``requestState`` carrying the
  answers given so far, HMAC-signed, bound to the request and short-lived. The client
  retries with ``inputResponses``; the handler runs again from the top and each ask it
  already had an answer for returns at once. Handlers therefore ask before they act:
  whatever runs ahead of the last ask may run once per round.
"""

import asyncio
import os
import time

from orjson import OPT_SORT_KEYS, dumps, loads

from ._core import RpcError
from .errors import INVALID_PARAMS, MISSING_CLIENT_CAPABILITY
from .revisions import CLIENT_CAPABILITIES_KEY, VERSION_KEY
from .tools import NeedInput, ToolError

# The client capability each request to the client needs.
CAPABILITY = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation",
              "roots/list": "roots"}
STATE_TTL = 600.0          # seconds a requestState stays valid
ASK_TIMEOUT = 600.0        # a handshake-era ask from a request with no deadline of its own
_STATE_VERSION = 1


class MissingCapability(RpcError):
    """The client did not declare the capability an ask needs (-32021).

    Raised by ``ctx.sample``/``ctx.elicit``/``ctx.list_roots``; left uncaught, the
    request is answered with this error (``data.requiredCapabilities`` names it).
    Check ``ctx.client_supports(...)`` first to do without.
    """

    def __init__(self, capability, method):
        super().__init__(MISSING_CLIENT_CAPABILITY,
                         f"The client did not declare the {capability!r} capability, "
                         f"which {method} needs",
                         {"requiredCapabilities": {capability: {}}})
        self.capability = capability


class ClientError(ToolError):
    """The client answered an ask with an error (the user declined sampling, ...).

    Left uncaught in a tool, the call's result is an ``isError`` result saying so.
    """

    def __init__(self, method, error):
        super().__init__(f"The client answered {method} with error {error.code}: {error.message}")
        self.method = method
        self.code = error.code
        self.data = error.data


class InputRequired(BaseException):
    """Ends a 2026-07-28 handler that asked for input it has no answer to yet.

    A BaseException, so ``except Exception`` in a handler does not swallow it.
    """

    def __init__(self, result):
        super().__init__("input required")
        self.result = result


def is_modern(params):
    meta = params.get("_meta") if type(params) is dict else None
    return type(meta) is dict and VERSION_KEY in meta


def client_capabilities(server, req):
    """The capabilities the client of ``req`` declared: per request (2026-07-28) or at initialize."""
    params = req.params
    meta = params.get("_meta") if type(params) is dict else None
    if type(meta) is dict and VERSION_KEY in meta:
        caps = meta.get(CLIENT_CAPABILITIES_KEY)
    else:
        caps = server.connection(req).peer.client_capabilities
    return caps if type(caps) is dict else {}


class Asker:
    """The asks of one request (made on first use by its Context)."""

    __slots__ = ("server", "req", "modern", "count", "_answers", "_used", "_round", "_round_future",
                 "_close_handle")

    def __init__(self, server, req):
        self.server = server
        self.req = req
        self.modern = is_modern(req.params)
        self.count = 0
        self._answers = None          # 2026-07-28: key -> answer (signed state, then this retry's)
        self._used = {}               # answers the handler consumed: carried into the next state
        self._round = {}              # asks of the round being collected: key -> request
        self._round_future = None
        self._close_handle = None

    async def ask(self, method, params, key):
        capability = CAPABILITY[method]
        declared = client_capabilities(self.server, self.req).get(capability)
        # Elicitation modes came with 2025-11-25: {} still means form; {"url": {}} alone does not.
        if declared is None or (method == "elicitation/create" and type(declared) is dict
                                and declared and "form" not in declared):
            raise MissingCapability(capability, method)
        if method == "elicitation/create" and not self.modern and \
                self.server.connection(self.req).peer.protocol_version != "2025-11-25":
            params = {k: v for k, v in params.items() if k != "mode"}   # no modes before 2025-11-25
        self.count += 1
        if key is None:
            key = f"{capability}-{self.count}"
        if self.modern:
            return await self._ask_in_rounds(method, params, key)
        return await self._ask_now(method, params)

    # -- handshake era: a request to the client ------------------------------------------

    async def _ask_now(self, method, params):
        server = self.server
        conn = server.connection(self.req)
        id, future = conn.send_request(method, params)
        server.waiting_on_client[self.req] = (method, id)
        try:
            if not self.req.armed:
                # Nothing waits forever: a request with no deadline of its own gets the default.
                return await asyncio.wait_for(future, server.config.timeout or ASK_TIMEOUT)
            return await future
        except RpcError as error:
            raise ClientError(method, error) from None
        except (asyncio.CancelledError, asyncio.TimeoutError):
            conn.notify("notifications/cancelled",
                        {"requestId": id, "reason": "the request that asked was stopped"})
            raise
        finally:
            future.cancel()
            server.waiting_on_client.pop(self.req, None)

    # -- 2026-07-28: multi round-trip requests ----------------------------------------------

    async def _ask_in_rounds(self, method, params, key):
        if self.req.on_outcome is not None:
            # A task's work has no request of its own to answer input_required on.
            raise ToolError(f"{method}: asking the client from a 2026-07-28 task is not supported")
        answers = self.answers()
        if key in answers:
            answer = answers[key]
            _check_answer(key, method, answer)
            self._used[key] = answer
            return answer
        if key in self._round:
            raise RuntimeError(f"two asks in one round share the key {key!r}")
        self._round[key] = {"method": method, "params": params}
        if self._round_future is None:
            self._round_future = self.server.loop.create_future()
        # Asks made together (asyncio.gather) land in the same loop pass: the round
        # closes on the pass after the last one, and they all go out together.
        if self._close_handle is not None:
            self._close_handle.cancel()
        self._close_handle = self.server.loop.call_soon(self._close_round)
        return await self._round_future

    def _close_round(self):
        self._close_handle = None
        future = self._round_future
        if future is None or future.done():
            return
        result = {"resultType": "input_required", "inputRequests": self._round,
                  "requestState": self.server.request_state.sign(self.req.method, self.req.params,
                                                                 self._used)}
        future.set_exception(InputRequired(result))

    def answers(self):
        if self._answers is None:
            params = self.req.params
            answers = {}
            state = params.get("requestState")
            if state is not None:
                answers.update(self.server.request_state.verify(self.req.method, params, state))
            responses = params.get("inputResponses", {})
            if type(responses) is not dict:
                raise RpcError(INVALID_PARAMS, "inputResponses must be an object of answers by key")
            for key, answer in responses.items():
                answers.setdefault(key, answer)  # signed answers from earlier rounds win
            self._answers = answers
        return self._answers


def _check_answer(key, method, answer):
    ok = type(answer) is dict
    if ok and method == "elicitation/create":
        ok = answer.get("action") in ("accept", "decline", "cancel")
    elif ok and method == "roots/list":
        ok = type(answer.get("roots")) is list
    elif ok:
        ok = "content" in answer
    if not ok:
        raise RpcError(INVALID_PARAMS, f"inputResponses[{key!r}] is not a valid answer to {method}")


async def complete_or_ask(awaitable):
    """Await a handler; an unanswered ask becomes its ``input_required`` result."""
    try:
        return await awaitable
    except InputRequired as need:
        return NeedInput(need.result)


class RequestState:
    """Signs and verifies ``requestState``: integrity, binding and expiry (not secrecy).

    The key comes from ``--state-key-file`` (so a retry may reach another process
    started with the same key) or is random for this process.
    """

    def __init__(self, key=None, ttl=STATE_TTL):
        self.key = key if key is not None else os.urandom(32)
        self.ttl = ttl

    @classmethod
    def from_file(cls, path):
        with open(path, "rb") as f:
            key = f.read().strip()
        if len(key) < 16:
            raise ValueError(f"state key file {path}: the key must be at least 16 bytes")
        return cls(key)

    @staticmethod
    def _binding(method, params):
        import hashlib
        # What the state is good for: this method, its target and arguments, nothing else.
        bound = {k: params.get(k) for k in ("name", "uri", "arguments")}
        bound["method"] = method
        return hashlib.sha256(dumps(bound, option=OPT_SORT_KEYS)).hexdigest()[:32]

    def sign(self, method, params, answers):
        import hashlib
        import hmac
        payload = dumps({"v": _STATE_VERSION, "b": self._binding(method, params),
                         "exp": int(time.time() + self.ttl), "a": answers})
        mac = hmac.new(self.key, payload, hashlib.sha256).digest()
        return _b64(payload) + "." + _b64(mac)

    def verify(self, method, params, state):
        """The answers ``state`` carries; -32602 for state that is forged, stale or foreign."""
        import hashlib
        import hmac
        try:
            body, _, mac = state.partition(".")
            payload = _unb64(body)
            good = hmac.compare_digest(hmac.new(self.key, payload, hashlib.sha256).digest(), _unb64(mac))
        except (AttributeError, ValueError, TypeError):
            good = False
        if not good:
            raise RpcError(INVALID_PARAMS, "requestState failed its integrity check (altered, or "
                                           "signed with another key); start the request again")
        data = loads(payload)
        if data.get("exp", 0) < time.time():
            raise RpcError(INVALID_PARAMS, "requestState has expired; start the request again")
        if data.get("b") != self._binding(method, params):
            raise RpcError(INVALID_PARAMS, "requestState belongs to another request "
                                           "(a different method, name, uri or arguments)")
        return data.get("a") or {}


def _b64(data):
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text):
    import base64
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
