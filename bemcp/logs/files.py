"""The log directory on disk: appends, size-based rotation, a cap on the total, failures.

Several bemcp servers (one per MCP client) may share one directory, so every
file is opened with O_APPEND (whole batches land as one write), a file renamed
away by another process's rotation is noticed and reopened, and rotation itself
happens under an flock on ``.lock``.

Nothing here may stop the server: an unwritable directory or a full disk turns
into one warning and a count of dropped records, and writing is retried now and
then in case the disk recovers.
"""

import errno
import os
import re
import time

MiB = 1024 * 1024
MAX_FILE = 8 * MiB        # a live log is rotated past this size
MAX_TOTAL = 64 * MiB      # everything bemcp keeps in the directory
RETRY_SECONDS = 10.0      # after a failed write, how long before trying again

LOG_NAMES = ("tasks", "perf", "forensics")
# Rotated logs go first when the cap is reached, then crash reports (oldest first).
_EVICTION_ORDER = {"tasks": 0, "perf": 0, "forensics": 1}
_OURS = re.compile(r"^(?:(tasks|perf|forensics)\.log(?:\.(\d+))?|crash-[^/]+\.(?:json|txt))$")


def log_path(directory, name, generation=0):
    """``tasks.log`` or, rotated, ``tasks.log.1`` (newest) ... ``tasks.log.N`` (oldest)."""
    base = os.path.join(directory, f"{name}.log")
    return f"{base}.{generation}" if generation else base


def generations(directory, name):
    """Paths of one log, oldest first, the live file last."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    found = []
    for entry in entries:
        m = _OURS.match(entry)
        if m and m.group(1) == name:
            found.append(int(m.group(2) or 0))
    # Generation 0 (the live file) is the newest; higher numbers are older.
    return [log_path(directory, name, g) for g in sorted(found, key=lambda g: (g == 0, -g))]


class LogFiles:
    """Appends to ``<name>.log`` files in ``directory``, rotating and capping them.

    ``warn(message)`` is called once, the first time writing fails; after that
    failures only add to ``dropped`` (records that never reached the disk).
    """

    def __init__(self, directory, max_file=MAX_FILE, max_total=MAX_TOTAL, warn=None):
        self.directory = directory
        self.max_total = max_total
        # Three live files must fit under the cap with room for rotated ones.
        self.max_file = max(4096, min(max_file, max_total // 6))
        self.warn = warn
        self.dropped = 0
        self.failing = False
        self.warned = False
        self.error = None
        self._fds = {}          # name -> (fd, inode)
        self._retry_at = 0.0
        self._total = None      # bytes in the directory as of the last check, plus ours since

    # -- appending ----------------------------------------------------------------

    def append(self, name, data, records=1):
        """Append ``data`` (whole lines) to the log ``name``; False if it was dropped."""
        if self.failing and time.monotonic() < self._retry_at:
            self.dropped += records
            return False
        try:
            fd = self._open(name)
            if self._total is None or self._total + len(data) > self.max_total:
                self.enforce_cap(room=len(data))
            self._write(fd, data)
            self._total += len(data)
            if os.fstat(fd).st_size >= self.max_file:
                self._rotate(name)
        except OSError as exc:
            self._failed(exc, records)
            return False
        self.failing = False
        return True

    def write_new(self, filename, data):
        """Create ``filename`` with ``data`` (a crash report); its path, or None."""
        path = os.path.join(self.directory, filename)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            self.enforce_cap(room=len(data))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                self._write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, path)   # readers never see half a report
            self._total += len(data)
        except OSError as exc:
            self._failed(exc, 1)
            return None
        return path

    # -- for a writer that appends on its own (bemcp._core's TaskWriter) ---------------

    def make_room(self, room):
        """Enforce the cap for ``room`` more bytes; the directory's total as now known."""
        self.enforce_cap(room)
        return self._total

    def rotate_away(self, name, inode):
        """Rotate ``<name>.log`` if it is still the file ``inode`` and has reached
        ``max_file``; its writer, which holds its own descriptor, follows the name."""
        with _DirLock(self.directory):
            self._shift(name, inode)

    def failed(self, exc, records):
        """A write failed (``records`` lost): warn once; when to try again (monotonic)."""
        self._failed(exc, records)
        return self._retry_at

    @staticmethod
    def _write(fd, data):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def _open(self, name):
        path = log_path(self.directory, name)
        entry = self._fds.get(name)
        if entry is not None:
            fd, inode = entry
            try:
                if os.stat(path).st_ino == inode:
                    return fd
            except FileNotFoundError:
                pass
            # Another server rotated the file away: follow the name.
            os.close(fd)
            del self._fds[name]
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._fds[name] = (fd, os.fstat(fd).st_ino)
        return fd

    def _failed(self, exc, records):
        self.dropped += records
        self.error = exc
        self._retry_at = time.monotonic() + RETRY_SECONDS
        self.close()
        self.failing = True
        if not self.warned:
            self.warned = True
            if self.warn is not None:
                reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
                    (exc.strerror or str(exc))
                self.warn(f"bemcp: cannot write logs in {self.directory}: {reason}; "
                          f"serving on without them (dropped records are counted)")

    # -- rotation and the cap ----------------------------------------------------------

    def _rotate(self, name):
        with _DirLock(self.directory):
            fd, inode = self._fds[name]
            self._shift(name, inode)
            os.close(fd)
            del self._fds[name]
            self._open(name)

    def _shift(self, name, inode):
        # Under the lock: the live file becomes .1, .1 becomes .2 ... if it is still the
        # full file ``inode`` (someone else may have rotated it while we waited).
        path = log_path(self.directory, name)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            return
        if current.st_ino == inode and current.st_size >= self.max_file:
            rotated = [p for p in generations(self.directory, name) if p != path]   # oldest first
            for old in rotated:
                n = int(old.rsplit(".", 1)[1])
                os.replace(old, log_path(self.directory, name, n + 1))
            os.replace(path, log_path(self.directory, name, 1))

    def enforce_cap(self, room=0):
        """Delete the oldest rotated logs, then the oldest crash reports, until ``room``
        more bytes fit under the cap."""
        with _DirLock(self.directory):
            self._total = self._enforce_cap_locked(self.max_total - room)

    def _enforce_cap_locked(self, limit):
        files = []
        total = 0
        for entry in os.listdir(self.directory):
            m = _OURS.match(entry)
            if not m:
                continue
            path = os.path.join(self.directory, entry)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            total += st.st_size
            if m.group(1) and not m.group(2):
                continue   # a live log: never deleted
            if entry.endswith(".txt") and st.st_size == 0:
                continue   # a running server's fatal-signal file
            rank = _EVICTION_ORDER[m.group(1)] if m.group(1) else 2
            files.append((rank, st.st_mtime, path, st.st_size))
        for _, _, path, size in sorted(files):
            if total <= limit:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            total -= size
        return total

    def close(self):
        for fd, _ in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()


class _DirLock:
    """An exclusive flock on ``<directory>/.lock`` (best effort where flock is missing)."""

    def __init__(self, directory):
        self.path = os.path.join(directory, ".lock")
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)   # closing releases the lock
            self.fd = None


def digest_key(directory):
    """The directory's key for argument digests, created on first use.

    Keyed, so a digest in a shared log cannot be matched against guessed values
    without the key file; the same arguments give the same digest across runs.
    """
    path = os.path.join(directory, ".digest-key")
    key = _read_key(path)
    if key is not None:
        return key
    key = os.urandom(16)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex())
    except FileExistsError:
        time.sleep(0.05)   # another server is writing it
        return _read_key(path) or key
    except OSError:
        pass
    return key


def _read_key(path):
    try:
        with open(path, "rb") as f:
            key = bytes.fromhex(f.read().decode().strip())
    except (OSError, ValueError):
        return None
    return key if 16 <= len(key) <= 64 else None
