"""Logs and forensics: tasks.log (one line per tool call), perf.log, forensics.log, crash
reports, and a stderr that never blocks. What each file holds, where the directory is, and
how writing stays off the hot path: docs/logs.md.

``setup_logging(server)`` enables them (``server.logs``, a :class:`bemcp.logs.collector.Logs`);
``bemcp logs`` (:mod:`bemcp.logs.summary`) is the person's view of a directory.
"""

import os
import sys

__all__ = ["setup_logging", "default_log_dir"]


def default_log_dir():
    """Where logs go without ``--log-dir``: the platform's per-user state directory."""
    home = os.path.expanduser("~")
    if sys.platform == "darwin":
        return os.path.join(home, "Library", "Logs", "bemcp")
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
        return os.path.join(base, "bemcp", "Logs")
    state = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):   # the XDG spec: a relative value is ignored
        state = os.path.join(home, ".local", "state")
    return os.path.join(state, "bemcp")


def setup_logging(server, **options):
    """Attach logs, crash reports and the non-blocking stderr to ``server``.

    Call before the server starts serving (``make_server`` does). Settings come
    from ``server.config`` (log_dir, log_files, log_level, log_bodies); ``options``
    are for tests and embedders (see :class:`bemcp.logs.collector.Logs`). Returns the
    Logs object, also available as ``server.logs``.
    """
    from .collector import Logs
    server.logs = Logs(server, **options)
    return server.logs
