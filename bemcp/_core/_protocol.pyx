# cython: language_level=3
"""asyncio protocols joining pipe transports to a dispatcher (compiled; twin: _protocol_py.py).

Reading: data_received -> dispatcher.feed. Writing: when the peer stops reading
and the write buffer passes its high-water mark, reading pauses too, so a client
that never reads its answers cannot grow the server's buffers without bound.
"""

from ._dispatch cimport Dispatcher

cdef extern from *:
    """
    #if defined(__GLIBC__)
    #include <malloc.h>
    static int bemcp_tune_allocator(void) {
        /* Hand back what start-up freed, then keep up to 2 MiB of freed heap for reuse:
           otherwise glibc trims the heap top after every burst and regrows it (brk plus
           fresh zeroed pages) on the next one, which cost a third of the server's time. */
        malloc_trim(0);
        return mallopt(M_TRIM_THRESHOLD, 2 << 20);
    }
    static int bemcp_trim_allocator(void) { return malloc_trim(0); }
    #else
    static int bemcp_tune_allocator(void) { return 0; }
    static int bemcp_trim_allocator(void) { return 0; }
    #endif
    """
    int bemcp_tune_allocator()
    int bemcp_trim_allocator() nogil

cdef extern from *:
    """
    #if defined(__linux__)
    #include <sys/prctl.h>
    static int bemcp_become_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0; }
    #else
    static int bemcp_become_subreaper(void) { return 0; }
    #endif
    """
    int bemcp_become_subreaper()


def become_subreaper():
    """Have orphaned descendants re-parented to this process rather than to init (Linux).

    True if set. The process must then reap them: see bemcp.processes.adopt_orphans.
    """
    return bemcp_become_subreaper() == 1


def tune_allocator():
    """Stop the C allocator returning memory to the OS after every burst (glibc). True if tuned.

    Freed memory then stays with the process: call trim_allocator() when it is quiet.
    """
    return bemcp_tune_allocator() == 1


def trim_allocator():
    """Return freed heap memory to the OS now (glibc); True if some was returned."""
    cdef int released
    with nogil:
        released = bemcp_trim_allocator()
    return released == 1


cdef class ReaderProtocol:
    def __init__(self, Dispatcher dispatcher, on_close):
        self.dispatcher = dispatcher
        self.on_close = on_close
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, bytes data):
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


cdef class WriterProtocol:
    def __init__(self, ReaderProtocol reader, on_close):
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
