"""Crash reports: what escaped, where, and the state of the server at that moment.

``crash-<time>-<pid>.json`` holds the exception and traceback, the request and
tool it happened in, the in-flight table, the last protocol messages (method,
id, size: never bodies, unless ``log_bodies``), versions and configuration.
A fatal signal (segfault, abort) cannot run Python code, so faulthandler writes
the stacks of every thread into ``crash-<start time>-<pid>.txt``, a file opened
at start and removed at a clean exit when it stayed empty.

On the next start, reports nobody has been told about yet are listed on stderr
(``.seen`` in the directory remembers which were).
"""

import os
import re
import threading
import time
import traceback

from orjson import OPT_INDENT_2, OPT_NON_STR_KEYS, dumps, loads

RECENT_LIMIT = 32            # protocol messages kept in a report
RATE_LIMIT = 10              # full reports per minute; more are only counted
_NAME = re.compile(r"^crash-(\d{8}T\d{9})Z-(\d+)\.(json|txt)$")


def crash_filename(when, pid, ext="json"):
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)) + f"{int(when * 1000) % 1000:03d}"
    return f"crash-{stamp}Z-{pid}.{ext}"


def iso_time(when):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z"


def describe_request(req, bodies=False, now=None):
    """A request (the core's in-flight entry) as plain values."""
    if req is None:
        return None
    now = time.monotonic() if now is None else now
    info = {"id": _plain(req.id), "method": req.method, "tool": req.tool,
            "state": getattr(req, "state_name", None),
            "age_s": round((req.end or now) - req.start, 3) if req.start else None}
    if bodies:
        info["params"] = _plain(req.params)
    return info


def _plain(value, depth=0):
    """Anything as JSON-ready values (exceptions as text, unknown objects as repr)."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if depth > 8:
        return repr(value)[:200]
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, depth + 1) for v in value]
    if hasattr(value, "method") and hasattr(value, "start") and hasattr(value, "id"):
        return describe_request(value)
    return repr(value)[:1000]


plain = _plain


class CrashReporter:
    """Builds reports on the thread where the crash happened; formats and writes them later."""

    def __init__(self, server, files):
        self.server = server
        self.files = files
        self.written = 0
        self.suppressed = 0
        self._window_start = 0.0
        self._window_count = 0
        self._lock = threading.Lock()

    def allowed(self, now):
        """Rate limit: a tool that fails on every call must not fill the disk with reports."""
        with self._lock:
            if now - self._window_start >= 60.0:
                self._window_start = now
                self._window_count = 0
            if self._window_count >= RATE_LIMIT:
                self.suppressed += 1
                return False
            self._window_count += 1
            return True

    def build(self, exc, req, where, when):
        """The parts of a report that change if we wait: taken now, cheaply."""
        server = self.server
        bodies = bool(getattr(server.config, "log_bodies", False))
        now = time.monotonic()
        report = {
            "report": "bemcp crash report",
            "time": iso_time(when),
            "pid": os.getpid(),
            "where": where,
            "thread": threading.current_thread().name,
            "exception": {"type": _type_name(exc), "message": str(exc)[:10000]},
            "request": describe_request(req, bodies, now),
            "in_flight": _retry(lambda: server.dispatcher.table.snapshot()) if server.dispatcher else [],
            "recent_messages": self._recent(now),
            "log_bodies": bodies,
        }
        # Source lines are looked up when the report is written, off this thread.
        report["_traceback"] = traceback.TracebackException.from_exception(exc, lookup_lines=False) \
            if exc is not None else None
        return report

    def _recent(self, now):
        recent = getattr(self.server.dispatcher, "recent", None)
        if recent is None:
            return None
        rows = _retry(lambda: list(recent)[-RECENT_LIMIT:]) or []
        return [{"age_s": round(now - t, 3), "method": method, "id": _plain(id), "size": size}
                for t, method, id, size in rows]

    def render(self, report):
        """The report as JSON bytes (tracebacks formatted, versions and config added)."""
        report = dict(report)
        te = report.pop("_traceback", None)
        if te is not None:
            report["exception"]["traceback"] = "".join(te.format())
        try:
            report["versions"] = self.server.describe()
        except Exception as exc:
            report["versions"] = {"error": repr(exc)}
        try:
            report["config"] = _plain(self.server.config.as_dict())
        except Exception as exc:
            report["config"] = {"error": repr(exc)}
        return dumps(report, option=OPT_INDENT_2 | OPT_NON_STR_KEYS, default=repr) + b"\n"

    def write(self, name, report):
        path = self.files.write_new(name, self.render(report))
        if path is not None:
            self.written += 1
        return path


def _type_name(exc):
    if exc is None:
        return None
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _retry(fn, attempts=3):
    """Read a structure another thread may be changing (RuntimeError: changed size)."""
    for _ in range(attempts):
        try:
            return fn()
        except RuntimeError:
            continue
        except Exception:
            return None
    return None


# -- fatal signals ----------------------------------------------------------------------


def open_fatal_file(directory, when):
    """The file faulthandler writes to on a fatal signal; (file, path) or (None, None)."""
    path = os.path.join(directory, crash_filename(when, os.getpid(), "txt"))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return open(path, "w"), path
    except OSError:
        return None, None


def close_fatal_file(f, path):
    """At a clean exit: close it, and remove it if nothing was written."""
    try:
        f.close()
        if os.path.getsize(path) == 0:
            os.unlink(path)
    except OSError:
        pass


# -- telling a person about reports they have not seen ----------------------------------------


def crash_files(directory):
    """Crash report names in ``directory``, oldest first."""
    try:
        names = [n for n in os.listdir(directory) if _NAME.match(n)]
    except OSError:
        return []
    return sorted(names, key=lambda n: _NAME.match(n).group(1))


def summarize_crash(directory, name):
    """One line about a report: what escaped, where."""
    path = os.path.join(directory, name)
    try:
        if name.endswith(".txt"):
            with open(path, errors="replace") as f:
                first = f.readline().strip()
            return first or "fatal signal"
        with open(path, "rb") as f:
            report = loads(f.read())
    except (OSError, ValueError):
        return "unreadable report"
    exc = report.get("exception") or {}
    text = f"{exc.get('type')}: {exc.get('message', '')}".strip()
    if len(text) > 160:
        text = text[:157] + "..."
    req = report.get("request") or {}
    where = report.get("where") or ""
    if req.get("id") is not None:
        where = f"{where}, request {req['id']!r}".lstrip(", ")
    return f"{text} ({where})" if where else text


def unseen_crashes(directory, own_pid):
    """Reports not mentioned before (then marked as mentioned); stale empty fatal files go."""
    seen_path = os.path.join(directory, ".seen")
    try:
        with open(seen_path) as f:
            seen = set(f.read().split())
    except OSError:
        seen = set()
    new = []
    for name in crash_files(directory):
        m = _NAME.match(name)
        pid = int(m.group(2))
        if pid == own_pid or name in seen:
            continue
        if name.endswith(".txt"):
            path = os.path.join(directory, name)
            try:
                empty = os.path.getsize(path) == 0
            except OSError:
                continue
            if empty:
                if not _pid_exists(pid):
                    _unlink(path)   # a server that was killed before it could tidy up
                continue
            if _pid_exists(pid):
                continue
        new.append(name)
    if new:
        try:
            with open(seen_path, "a") as f:
                f.write("".join(n + "\n" for n in new))
        except OSError:
            pass
    return new


def _pid_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass
