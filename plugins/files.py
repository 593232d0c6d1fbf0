"""Files inside the roots: list, read (paged by lines), find by name, write, inspect.

Roots are ``--root DIR`` (repeatable); with none configured, the directory bemcp was
started in. Every path is resolved with symlinks followed and must stay inside a root.
Caps: a read returns at most 256 KiB (page on with ``offset``), a line longer than
16 KiB is cut, a write takes at most 8 MiB, a listing or name search at most 5,000 entries.
"""

import collections
import os
import stat
import time
from typing import Annotated, Literal

from bemcp import ToolError, ToolResult, text

from ._roots import glob_matcher, plugin_roots

READ_MAX_BYTES = 256 * 1024
LINE_MAX_BYTES = 16 * 1024
WRITE_MAX_BYTES = 8 * 1024 * 1024
SNIFF_BYTES = 8192
SKIP_DIRS = frozenset((".git", ".hg", ".svn"))

READ_ONLY = {"readOnlyHint": True, "openWorldHint": False}


def setup(server):
    roots = plugin_roots(server.config)

    @server.tool(annotations=READ_ONLY)
    def files_list(path: str = ".", depth: Annotated[int, {"minimum": 1, "maximum": 10}] = 1,
                   include_hidden: bool = False,
                   limit: Annotated[int, {"minimum": 1, "maximum": 5000}] = 500) -> dict:
        """List a directory: names, types, sizes and modification times.

        Args:
            path: Directory to list, relative to the first root (or absolute inside a root).
            depth: 1 lists the directory itself; more descends into subdirectories.
            include_hidden: Include names starting with a dot.
            limit: At most this many entries.
        """
        top = roots.resolve(path)
        if not os.path.isdir(top):
            raise ToolError(f"{path!r} is not a directory")
        entries = []
        truncated = False
        for rel, entry in _walk(top, depth, include_hidden):
            if len(entries) >= limit:
                truncated = True
                break
            entries.append(_describe(entry, rel))
        return {"path": roots.display(top), "entries": entries, "truncated": truncated}

    @server.tool(annotations=READ_ONLY)
    def files_read(path: str, offset: Annotated[int, {"minimum": 0}] = 0,
                   limit: Annotated[int, {"minimum": 1, "maximum": 20000}] = 2000,
                   line_numbers: bool = False) -> ToolResult:
        """Read a text file, a page of lines at a time (at most 256 KiB per call).

        When more lines follow, a last note says which ``offset`` reads the next page.

        Args:
            path: File to read, relative to the first root (or absolute inside a root).
            offset: Lines to skip first (0 reads from the start).
            limit: At most this many lines.
            line_numbers: Prefix each line with its number (from 1), like `cat -n`.
        """
        real = roots.resolve(path)
        if os.path.isdir(real):
            raise ToolError(f"{path!r} is a directory; use files_list")
        with open(real, "rb") as f:
            if b"\0" in f.read(SNIFF_BYTES):
                size = os.fstat(f.fileno()).st_size
                raise ToolError(f"{path!r} looks binary ({size} bytes); files_read reads text")
            f.seek(0)
            lines = _lines(f)
            index = 0
            for index in range(offset):
                if next(lines, None) is None:
                    return ToolResult([text(f"[offset {offset} is past the end: the file has {index} lines]")])
            out = []
            size = 0
            cut = 0
            more = False
            for raw, was_cut in lines:
                if len(out) >= limit or (out and size + len(raw) > READ_MAX_BYTES):
                    more = True
                    break
                size += len(raw)
                cut += was_cut
                line = raw.decode("utf-8", "replace")
                if line_numbers:
                    line = f"{offset + len(out) + 1:6}\t{line}"
                out.append(line)
        blocks = [text("".join(out))]
        notes = []
        if cut:
            notes.append(f"{cut} line(s) longer than {LINE_MAX_BYTES} bytes were cut")
        if more:
            notes.append(f"lines {offset + 1}-{offset + len(out)} shown; more follow: "
                         f"read again with offset={offset + len(out)}")
        if notes:
            blocks.append(text("[" + "; ".join(notes) + "]"))
        return ToolResult(blocks)

    @server.tool(annotations=READ_ONLY)
    def files_search(pattern: str, path: str = ".", include_hidden: bool = False,
                     limit: Annotated[int, {"minimum": 1, "maximum": 5000}] = 200) -> dict:
        """Find files and directories by name (a glob such as ``*.py`` or ``src/**/test_*``).

        A pattern without "/" matches names; with "/" it matches paths relative to ``path``.
        Looks into every subdirectory except .git, .hg and .svn. For text inside files,
        use search_text.

        Args:
            pattern: Glob: * ? [abc]; case-sensitive.
            path: Directory to search under.
            include_hidden: Also look at names starting with a dot.
            limit: At most this many matches.
        """
        top = roots.resolve(path)
        if not os.path.isdir(top):
            raise ToolError(f"{path!r} is not a directory")
        match = glob_matcher(pattern)
        matches = []
        scanned = 0
        truncated = False
        for rel, entry in _walk(top, 64, include_hidden):
            scanned += 1
            if scanned > 200_000:
                truncated = True
                break
            if match(rel.replace(os.sep, "/")):
                if len(matches) >= limit:
                    truncated = True
                    break
                matches.append(_describe(entry, rel))
        return {"path": roots.display(top), "pattern": pattern, "matches": matches,
                "scanned": scanned, "truncated": truncated}

    @server.tool(annotations={"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False,
                              "openWorldHint": False})
    def files_write(path: str, content: str,
                    mode: Literal["overwrite", "append", "create"] = "overwrite",
                    make_dirs: bool = False) -> dict:
        """Write text (UTF-8) to a file inside the roots; at most 8 MiB.

        "overwrite" replaces the file atomically (keeping its permissions), "append" adds to
        the end, "create" fails if the file exists.

        Args:
            path: File to write, relative to the first root (or absolute inside a root).
            content: The text to write.
            mode: overwrite, append or create.
            make_dirs: Create missing parent directories.
        """
        data = content.encode("utf-8")
        if len(data) > WRITE_MAX_BYTES:
            raise ToolError(f"content is {len(data)} bytes; the limit is {WRITE_MAX_BYTES}")
        real = roots.resolve(path, must_exist=False)
        if os.path.isdir(real):
            raise ToolError(f"{path!r} is a directory")
        parent = os.path.dirname(real)
        if not os.path.isdir(parent):
            if not make_dirs:
                raise ToolError(f"directory {roots.display(parent)!r} does not exist (make_dirs creates it)")
            os.makedirs(parent, exist_ok=True)
        existed = os.path.exists(real)
        if mode == "create" and existed:
            raise ToolError(f"{path!r} already exists (mode 'create')")
        if mode == "append":
            fd = os.open(real, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        elif mode == "create":
            fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        else:
            _replace_atomically(real, data)
        return {"path": roots.display(real), "bytes_written": len(data), "created": not existed,
                "size": os.path.getsize(real)}

    @server.tool(annotations=READ_ONLY)
    def files_info(path: str) -> dict:
        """Type, size, permissions and times of a file or directory (symlinks resolved).

        Args:
            path: Path relative to the first root (or absolute inside a root).
        """
        real = roots.resolve(path)
        st = os.stat(real)
        info = {"path": roots.display(real), "real_path": real, "type": _kind(st.st_mode),
                "size": st.st_size, "mode": oct(stat.S_IMODE(st.st_mode)),
                "modified": _iso(st.st_mtime), "accessed": _iso(st.st_atime)}
        if stat.S_ISREG(st.st_mode):
            with open(real, "rb") as f:
                info["text"] = b"\0" not in f.read(SNIFF_BYTES)
        return info


def _walk(top, depth, include_hidden):
    """(relative path, DirEntry) under ``top``, sorted, breadth by directory; symlinks not followed."""
    queue = collections.deque([("", top, 1)])
    while queue:
        rel_dir, directory, level = queue.popleft()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if not include_hidden and entry.name.startswith("."):
                continue
            rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
            yield rel, entry
            if level < depth and entry.name not in SKIP_DIRS and entry.is_dir(follow_symlinks=False):
                queue.append((rel, entry.path, level + 1))


def _describe(entry, rel):
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return {"path": rel, "type": "unknown"}
    item = {"path": rel, "type": _kind(st.st_mode)}
    if stat.S_ISREG(st.st_mode):
        item["size"] = st.st_size
    item["modified"] = _iso(st.st_mtime)
    return item


def _kind(mode):
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _lines(f):
    """(line bytes, was_cut) for each line; a line over LINE_MAX_BYTES is cut there."""
    while True:
        line = f.readline(LINE_MAX_BYTES)
        if not line:
            return
        if len(line) == LINE_MAX_BYTES and not line.endswith(b"\n"):
            while True:  # skip the rest of the long line
                rest = f.readline(1 << 16)
                if not rest or rest.endswith(b"\n"):
                    break
            yield line + b"\n", True
        else:
            yield line, False


def _replace_atomically(real, data):
    directory, name = os.path.split(real)
    tmp = os.path.join(directory, f".{name}.bemcp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        mode = stat.S_IMODE(os.stat(real).st_mode)
    except FileNotFoundError:
        mode = None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, real)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _iso(timestamp):
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))
