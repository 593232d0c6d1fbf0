"""asyncio protocols joining stdio's pipe transports to a dispatcher.

Reading: data_received -> dispatcher.feed. Writing: when the peer stops reading
and the write buffer passes its high-water mark, reading pauses too, so a client
that never reads its answers cannot grow the server's buffers without bound.
Plain Python, and no cost for it: the transport calls the dispatcher's feed
directly, so no Python frame stands between a read and the compiled core.
"""


class ReaderProtocol:
    def __init__(self, dispatcher, on_close):
        self.dispatcher = dispatcher
        self.on_close = on_close
        self.transport = None
        # asyncio's data_received(data): each chunk read goes straight to the dispatcher.
        self.data_received = dispatcher.feed

    def connection_made(self, transport):
        self.transport = transport

    def eof_received(self):
        # A last message without its newline still counts: the end of input ends its line.
        self.dispatcher.feed(b"\n")
        self.on_close("eof")
        return False

    def connection_lost(self, exc):
        self.on_close("eof")

    def pause_reading(self):
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self):
        if self.transport is not None:
            self.transport.resume_reading()


class WriterProtocol:
    def __init__(self, reader, on_close):
        self.reader = reader
        self.on_close = on_close
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        self.reader.pause_reading()

    def resume_writing(self):
        self.reader.resume_reading()

    def connection_lost(self, exc):
        self.on_close("stdout closed")

    def eof_received(self):
        return False
