"""The two twins of the core, loaded side by side for the tests that compare them.

Tests are the one place allowed to import a twin directly: ``load_core("c")`` is the
compiled core, ``load_core("py")`` the pure-Python twins, each as one namespace
holding the names the core exports (bemcp._core._consts.MODULES).
"""

import importlib
import types

from bemcp._core import _consts


def load_core(kind):
    """The core's modules for ``kind`` ("c": compiled, "py": the pure twins) as one namespace.

    An ImportError of the compiled modules is an error, never a skip: a failed
    build must not pass for a green suite.
    """
    suffix = "" if kind == "c" else "_py"
    mods = {name: importlib.import_module(f"bemcp._core.{name}{suffix}") for name in _consts.MODULES}
    ns = types.SimpleNamespace(kind=kind, modules=mods)
    for module, names in _consts.MODULES.items():
        for name in names:
            setattr(ns, name, getattr(mods[module], name))
    for name in dir(_consts):
        if name.startswith("STATE_") or name in ("HEAD_SIZE", "FINISHED_ROW"):
            setattr(ns, name, getattr(_consts, name))
    return ns
