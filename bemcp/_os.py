"""Process-wide OS calls made once per start or per quiet period, through ctypes.

Not on the hot path, so not compiled: the allocator's trim threshold (glibc), the
child subreaper flag (Linux), and raising an exception in another thread.
"""

import ctypes
import sys
from functools import cache

M_TRIM_THRESHOLD = -1          # glibc's mallopt parameter
PR_SET_CHILD_SUBREAPER = 36    # Linux prctl option


@cache
def _libc():
    # The symbols the process already has, libc's among them: ctypes.util.find_library
    # would import shutil, bz2 and lzma and run `ldconfig -p` (about 7 ms of every start).
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def tune_allocator():
    """Stop the C allocator returning memory to the OS after every burst (glibc). True if tuned.

    Hand back what start-up freed, then keep up to 2 MiB of freed heap for reuse: otherwise
    glibc trims the heap top after every burst and regrows it (brk plus fresh zeroed pages)
    on the next one. Freed memory then stays with the process: call trim_allocator() when
    it is quiet.
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    libc.malloc_trim(0)
    return bool(libc.mallopt(M_TRIM_THRESHOLD, 2 << 20))


def trim_allocator():
    """Return freed heap memory to the OS now (glibc); True if some was returned."""
    libc = _libc()
    return bool(libc is not None and hasattr(libc, "malloc_trim") and libc.malloc_trim(0))


def become_subreaper():
    """Have orphaned descendants re-parented to this process rather than to init (Linux).

    True if set. The process must then reap them: see bemcp.processes.adopt_orphans.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = _libc()
    return libc is not None and libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def interrupt_thread(ident, exc_type):
    """Raise ``exc_type`` in thread ``ident`` at its next bytecode; None clears a pending one.

    True if a thread with that id exists.
    """
    found = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type) if exc_type is not None else None)
    return found == 1
