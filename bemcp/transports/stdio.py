"""The stdio transport: fd 0 and fd 1 belong to the protocol, and to nothing else.

At start the protocol's pipes are moved to private descriptors; fd 0 becomes
/dev/null and fd 1 a copy of stderr. So print() in a tool, a C extension writing
to fd 1, or a child process that inherits the standard descriptors can never
write into the protocol stream or read the client's requests.
"""

import asyncio
import logging
import os
import signal
import stat
import sys
import threading

from .._os import tune_allocator
from .._pipes import ReaderProtocol, WriterProtocol

log = logging.getLogger("bemcp.transport")

DRAIN_SECONDS = 2.0
PARENT_POLL_SECONDS = 0.5


def take_stdio():
    """Move the protocol to private fds; return (read_fd, write_fd)."""
    read_fd = os.dup(0)
    write_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    # Python-level stdout follows fd 1, now stderr.
    sys.stdout = sys.stderr
    return read_fd, write_fd


def _is_pipe_like(fd):
    # What the event loop can poll. Other character devices (/dev/null, /dev/zero) are
    # not: libuv aborts the process on them, so they get the blocking paths, like files.
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


class _FileWriter:
    """Blocking writes for a stdout redirected to a file or a device (never blocks for long)."""

    def __init__(self, fd):
        self.fd = fd

    def write(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self):
        pass


def _read_file_in_thread(loop, fd, reader):
    """Feed a stdin the loop cannot poll (`bemcp serve < requests.jsonl`) from a thread."""
    def pump():
        try:
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                loop.call_soon_threadsafe(reader.data_received, chunk)
        finally:
            loop.call_soon_threadsafe(reader.eof_received)
    threading.Thread(target=pump, name="bemcp-stdin", daemon=True).start()


async def serve_stdio(server):
    """Serve until stdin closes, stdout breaks, a signal arrives or the parent dies."""
    loop = asyncio.get_running_loop()
    tune_allocator()
    dispatcher = server.build_dispatcher(loop)
    read_fd, write_fd = take_stdio()
    stopped = loop.create_future()

    def stop(reason):
        if not stopped.done():
            stopped.set_result(reason)

    reader = ReaderProtocol(dispatcher, stop)
    writer = WriterProtocol(reader, stop)
    if _is_pipe_like(write_fd):
        wtransport, _ = await loop.connect_write_pipe(lambda: writer, os.fdopen(write_fd, "wb", buffering=0))
    else:
        wtransport = _FileWriter(write_fd)
    dispatcher.write = wtransport.write
    if _is_pipe_like(read_fd):
        rtransport, _ = await loop.connect_read_pipe(lambda: reader, os.fdopen(read_fd, "rb", buffering=0))
    else:
        rtransport = None
        _read_file_in_thread(loop, read_fd, reader)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop, signal.Signals(sig).name)
    parent = os.getppid()
    watch = loop.call_later(PARENT_POLL_SECONDS, _watch_parent, loop, parent, stop)
    await server.started()

    reason = await stopped
    log.info("stopping: %s", reason)
    watch.cancel()
    if rtransport is not None:
        rtransport.pause_reading()
    server.stopping()
    # Answer what is in flight (bounded), then stop every child and task.
    await dispatcher.drain(DRAIN_SECONDS if reason == "eof" else 0.5)
    await server.shutdown()
    dispatcher.close()
    dispatcher.flush()
    if rtransport is not None:
        rtransport.close()
    wtransport.close()
    return 0


def _watch_parent(loop, parent, stop):
    # The client that spawned us is gone (we were re-parented): nobody will read our answers.
    if os.getppid() != parent:
        stop("parent exited")
        return
    loop.call_later(PARENT_POLL_SECONDS, _watch_parent, loop, parent, stop)


def run_stdio(server):
    """Run ``server`` on uvloop over stdio; the process exit code."""
    import uvloop
    return uvloop.run(serve_stdio(server))
