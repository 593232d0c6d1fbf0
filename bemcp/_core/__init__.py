"""The compiled core, or its pure-Python twins.

``BEMCP_NO_EXTENSIONS=1`` (or a non-CPython interpreter) selects the twins.
Nothing outside this package imports a twin directly; _consts.MODULES lists what
each module exports.
"""

import importlib
import os
import sys

from ..errors import RpcError  # noqa: F401  (shared by both twins)
from ._consts import (FINISHED_ROW, LAZY, MODULES, STATE_CANCELLED, STATE_ERROR,  # noqa: F401
                      STATE_KILLED, STATE_NAMES, STATE_OK, STATE_REJECTED, STATE_RUNNING,
                      STATE_TIMED_OUT)

NO_EXTENSIONS = bool(os.environ.get("BEMCP_NO_EXTENSIONS")) or sys.implementation.name != "cpython"
USE_EXTENSIONS = False


def _load(suffix):
    return {name: getattr(importlib.import_module(f"{__name__}.{module}{suffix}"), name)
            for module, names in MODULES.items() if module not in LAZY for name in names}


if not NO_EXTENSIONS:
    try:
        globals().update(_load(""))
        USE_EXTENSIONS = True
    except ImportError:
        pass

if not USE_EXTENSIONS:
    globals().update(_load("_py"))


def __getattr__(name):
    for module in LAZY:
        if name in MODULES[module]:
            suffix = "" if USE_EXTENSIONS else "_py"
            return getattr(importlib.import_module(f"{__name__}.{module}{suffix}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
