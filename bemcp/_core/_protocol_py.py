"""asyncio protocols joining pipe transports to a dispatcher (pure-Python twin of _protocol.pyx).

Reading: data_received -> dispatcher.feed. Writing: when the peer stops reading
and the write buffer passes its high-water mark, reading pauses too, so a client
that never reads its answers cannot grow the server's buffers without bound.
"""


import sys


def _libc():
    import ctypes
    import ctypes.util
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def tune_allocator():
    """Stop the C allocator returning memory to the OS after every burst (glibc). True if tuned.

    The same calls the compiled twin makes, through ctypes. Freed memory then stays
    with the process: call trim_allocator() when it is quiet.
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    M_TRIM_THRESHOLD = -1
    libc.malloc_trim(0)  # hand back what start-up freed first
    return bool(libc.mallopt(M_TRIM_THRESHOLD, 2 << 20))


def become_subreaper():
    """Have orphaned descendants re-parented to this process rather than to init (Linux).

    True if set. The process must then reap them: see bemcp.processes.adopt_orphans.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = _libc()
    PR_SET_CHILD_SUBREAPER = 36
    return libc is not None and libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def trim_allocator():
    """Return freed heap memory to the OS now (glibc); True if some was returned."""
    libc = _libc()
    return bool(libc is not None and hasattr(libc, "malloc_trim") and libc.malloc_trim(0))


class ReaderProtocol:
    def __init__(self, dispatcher, on_close):
        self.dispatcher = dispatcher
        self.on_close = on_close
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.dispatcher.feed(data)

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
