"""The two twins of the core, loaded side by side for the tests that compare them.

Tests are the one place allowed to import a twin directly: ``load_core("c")`` is the
compiled core, ``load_core("py")`` the pure-Python twins, each as one namespace.
"""

import importlib
import types

# The core's modules, without their "_py" suffix.
CORE_MODULES = ("_dispatch", "_framing", "_watchdog", "_protocol", "_tasklog")

# name -> the module that defines it
EXPORTS = {
    "Dispatcher": "_dispatch", "ToolSlot": "_dispatch",
    "Framer": "_framing", "Oversized": "_framing", "HEAD_SIZE": "_framing",
    "InFlightTable": "_watchdog", "Request": "_watchdog", "STATE_NAMES": "_watchdog",
    "STATE_RUNNING": "_watchdog", "STATE_OK": "_watchdog", "STATE_ERROR": "_watchdog",
    "STATE_TIMED_OUT": "_watchdog", "STATE_CANCELLED": "_watchdog", "STATE_KILLED": "_watchdog",
    "STATE_REJECTED": "_watchdog",
    "ReaderProtocol": "_protocol", "WriterProtocol": "_protocol",
    "format_tasks": "_tasklog", "digest": "_tasklog", "TaskWriter": "_tasklog",
}


def load_core(kind):
    """The core's modules for ``kind`` ("c": compiled, "py": the pure twins) as one namespace.

    An ImportError of the compiled modules is an error, never a skip: a failed
    build must not pass for a green suite.
    """
    suffix = "" if kind == "c" else "_py"
    mods = {name: importlib.import_module(f"bemcp._core.{name}{suffix}") for name in CORE_MODULES}
    ns = types.SimpleNamespace(kind=kind, modules=mods)
    for name, module in EXPORTS.items():
        setattr(ns, name, getattr(mods[module], name))
    return ns
