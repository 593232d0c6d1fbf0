"""What a Streamable HTTP response carries: the Stream of an SSE response, the Exchange
of one client request in flight (the Connection its messages go to and the dispatcher's
reply target), and the Session of a handshake-era client, with its resumable streams.
"""

import time

from orjson import dumps

from ...connection import Peer

KEPT_STREAMS = 32                # finished SSE streams a session keeps for resumption
REPLAY = 1024                    # events a stream keeps for resumption


class Stream:
    """Messages waiting for an SSE response (an exchange's, or a session's GET stream)."""

    __slots__ = ("frames", "base", "finished", "_changed", "no")

    def __init__(self, no=0):
        self.frames = []          # JSON lines, in order; a resumed stream replays from here
        self.base = 0             # how many older frames were dropped (kept: the last REPLAY)
        self.finished = False
        self._changed = None
        self.no = no              # its number in the session (event ids are "no-index")

    def push(self, line):
        frames = self.frames
        frames.append(line)
        if len(frames) > REPLAY:
            # A long stream (a GET stream, a listen) keeps only its recent events.
            drop = len(frames) - REPLAY // 2
            del frames[:drop]
            self.base += drop
        self.wake()

    def finish(self):
        self.finished = True
        self.wake()

    def wake(self):
        changed = self._changed
        if changed is not None and not changed.done():
            changed.set_result(None)

    def changed(self, loop):
        if self._changed is None or self._changed.done():
            self._changed = loop.create_future()
        return self._changed


class Exchange(Stream):
    """One client request in flight: a Connection for the server (its messages go here)."""

    __slots__ = ("transport", "session", "id", "iid", "peer", "modern", "answer", "code", "sse", "asks")

    def __init__(self, transport, session, msg_id, iid, peer, modern):
        # Stream's fields, set here: one call less on every request.
        self.frames = []
        self.base = 0
        self.finished = False
        self._changed = None
        self.no = 0
        self.transport = transport
        self.session = session
        self.id = msg_id          # the client's (the dispatcher answers under it: Dispatcher.dispatch)
        self.iid = iid
        self.peer = peer
        self.modern = modern
        self.answer = None        # the final JSON message, with the client's id
        self.code = None          # its JSON-RPC error code (None: a result)
        self.sse = False          # committed to an SSE response
        self.asks = None

    # -- Connection ------------------------------------------------------------------

    def notify(self, method, params):
        if self.answer is None:
            self.push(dumps({"jsonrpc": "2.0", "method": method, "params": params}))

    def send_request(self, method, params):
        id, future = self.transport.dispatcher.send_request(method, params)
        self.transport.routes[id] = self        # its line is on its way through write()
        if self.session is not None:
            self.session.asks.add(id)
        return id, future

    # -- its end: answered, cancelled, or its session ended ------------------------------

    def answered(self, data, code):
        """The dispatcher's answer (a reply target's end of Dispatcher.dispatch)."""
        self.answer = data
        self.code = code
        if self.sse or self.frames:
            self.push(data)     # the last event of its stream; alone, it goes out as JSON
        self.close()

    def close(self):
        if self.session is not None:
            self.session.exchanges.pop(self.id, None)
        self.finished = True
        if self._changed is not None:
            self.wake()


class Session:
    """A handshake-era client: what it agreed at initialize, its streams and its asks."""

    __slots__ = ("id", "peer", "exchanges", "asks", "streams", "get_stream", "last", "next_no")

    def __init__(self, id):
        self.id = id
        self.peer = Peer()
        self.exchanges = {}       # client request id -> Exchange in flight
        self.asks = set()         # ids of our requests to this client not yet answered
        self.streams = {}         # stream number -> Stream (for Last-Event-ID)
        self.get_stream = None
        self.last = time.monotonic()
        self.next_no = 0

    def notify(self, method, params):
        """A notification unrelated to any request: on the GET stream, if one is open."""
        if self.get_stream is not None and not self.get_stream.finished:
            self.get_stream.push(dumps({"jsonrpc": "2.0", "method": method, "params": params}))

    def new_stream_no(self):
        self.next_no += 1
        return self.next_no

    def keep(self, stream):
        streams = self.streams
        streams[stream.no] = stream
        over = len(streams) - KEPT_STREAMS
        if over > 0:
            # The oldest finished ones go (a dict keeps them oldest first), found without
            # copying the table: usually one over the limit, the first one finished.
            drop = []
            for no, kept in streams.items():
                if kept.finished:
                    drop.append(no)
                    if len(drop) == over:
                        break
            for no in drop:
                del streams[no]


def sse_events(stream, start, with_ids):
    """``stream``'s frames from ``start`` as SSE events, and the index after the last."""
    frames = stream.frames
    base = stream.base
    end = base + len(frames)
    parts = []
    for k in range(max(start, base), end):
        if with_ids:
            parts.append(b"id: %d-%d\n" % (stream.no, k + 1))
        parts.append(b"data: " + frames[k - base] + b"\n\n")
    return b"".join(parts), end
