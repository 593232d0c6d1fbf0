"""Logs and forensics: task, performance and forensics logs, crash reports, stderr.

The directory (``--log-dir``; by default the platform's per-user state directory,
e.g. ``~/.local/state/bemcp``) holds:

- ``tasks.log``: one JSON line per finished tool call: time, pid, request id, tool,
  status (ok, error, timed_out, cancelled, killed, rejected; a timed-out call also
  has ``limit_s``), duration, argument
  size and a keyed digest of the arguments as sent (never their values), bytes in and out
  (the request line and the answer, from the core), and what the tool reported in
  ``request.detail`` (e.g. ``run_command``'s exit code);
- ``perf.log``: a JSON line every few seconds: RSS of the server and its children,
  CPU, event-loop lag p50/p99, tool calls in flight and per second, errors, drops;
- ``forensics.log``: every ``server.record(kind, ...)`` event (watchdog actions,
  plugin failures, protocol abuse with sizes, crashes), plus start and stop;
- ``crash-<time>-<pid>.json`` reports, and ``crash-<time>-<pid>.txt`` for fatal signals.

Off the hot path: as each tool call ends, the core copies a fixed-size record and
the request line into C buffers (``Dispatcher.keep_finished``: no Python call, no
object); every few milliseconds the loop hands them, as two byte strings, to the
core's tasks.log writer, a native thread that formats, digests, rotates and writes
without the GIL (:class:`bemcp.logs.collector.Logs` wires it; the pure twins use a
Python thread). The server is one process.
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
