"""The compiled core, or its pure-Python twins.

``BEMCP_NO_EXTENSIONS=1`` (or a non-CPython interpreter) selects the twins.
Nothing outside this package imports a twin directly.
"""

import os
import sys

from ._errors import RpcError  # noqa: F401  (shared by both twins)

# Request states, the same numbers in both twins.
STATE_RUNNING, STATE_OK, STATE_ERROR, STATE_TIMED_OUT, STATE_CANCELLED, STATE_KILLED, STATE_REJECTED = range(7)

NO_EXTENSIONS = bool(os.environ.get("BEMCP_NO_EXTENSIONS")) or sys.implementation.name != "cpython"
USE_EXTENSIONS = False

if not NO_EXTENSIONS:
    try:
        from ._dispatch import Dispatcher, ToolSlot
        from ._framing import Framer, Oversized
        from ._protocol import (ReaderProtocol, WriterProtocol, become_subreaper, trim_allocator,
                                tune_allocator)
        from ._watchdog import STATE_NAMES, InFlightTable, Request, interrupt_thread
        USE_EXTENSIONS = True
    except ImportError:
        pass

if not USE_EXTENSIONS:
    from ._dispatch_py import Dispatcher, ToolSlot  # noqa: F401
    from ._framing_py import Framer, Oversized  # noqa: F401
    from ._protocol_py import (ReaderProtocol, WriterProtocol, become_subreaper,  # noqa: F401
                               trim_allocator, tune_allocator)
    from ._watchdog_py import STATE_NAMES, InFlightTable, Request, interrupt_thread  # noqa: F401


def __getattr__(name):
    # tasks.log's writer loads when log files are on, not with the rest of the core.
    if name in ("TaskWriter", "format_tasks", "digest"):
        if USE_EXTENSIONS:
            from . import _tasklog as tasklog
        else:
            from . import _tasklog_py as tasklog
        return getattr(tasklog, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
