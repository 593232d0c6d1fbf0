"""Fast text search across a root, ripgrep-style: literal or regex, with globs and limits.

Walks the tree in sorted order without following symlinked directories, skipping .git,
.hg, .svn, node_modules and __pycache__ (and hidden names unless asked), binary files (a
NUL byte in the first 8 KiB) and files over 8 MiB. A file is first searched whole; only a
file that matches is split into lines, so misses cost one scan. Matches are per line (a
pattern does not span lines). Bounded by ``max_matches``, ``max_files`` and 512 MiB read
per call; the result says which limit stopped it.
"""

import os
import re
from typing import Annotated

from bemcp import Context, ToolError

from ._roots import glob_matcher, plugin_roots

SKIP_DIRS = frozenset((".git", ".hg", ".svn", "node_modules", "__pycache__"))
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_TOTAL_BYTES = 512 * 1024 * 1024
SNIFF_BYTES = 8192
LINE_SHOWN = 400   # characters of a matching line kept in a result


def setup(server):
    roots = plugin_roots(server.config)

    @server.tool(annotations={"readOnlyHint": True, "openWorldHint": False})
    def search_text(pattern: str, path: str = ".", regex: bool = False, ignore_case: bool = False,
                    glob: str | None = None,
                    context: Annotated[int, {"minimum": 0, "maximum": 10}] = 0,
                    include_hidden: bool = False,
                    max_matches: Annotated[int, {"minimum": 1, "maximum": 5000}] = 200,
                    max_files: Annotated[int, {"minimum": 1, "maximum": 200000}] = 20000,
                    ctx: Context = None) -> dict:
        """Search file contents under a directory for a literal text or a regular expression.

        Args:
            pattern: The text to find (or a Python regular expression with ``regex``).
            path: A directory (or one file) to search, relative to the first root.
            regex: Treat ``pattern`` as a regular expression.
            ignore_case: Match regardless of case.
            glob: Only files matching this glob (``*.py``; with "/" it matches the path, e.g. ``src/**/*.ts``).
            context: Lines of context to include before and after each match.
            include_hidden: Also search names starting with a dot (.git and the like stay skipped).
            max_matches: Stop after this many matching lines.
            max_files: Stop after reading this many files.
        """
        if not pattern:
            raise ToolError("pattern must not be empty")
        flags = re.MULTILINE | (re.IGNORECASE if ignore_case else 0)
        try:
            compiled = re.compile(pattern if regex else re.escape(pattern), flags)
        except re.error as exc:
            raise ToolError(f"invalid regular expression: {exc}") from None
        # Fast reject on bytes for a case-sensitive literal; a whole-file search rejects the rest
        # (with MULTILINE, ^ and $ work at line ends; \A and \Z would not, so no pre-check then).
        needle = pattern.encode("utf-8") if not regex and not ignore_case else None
        whole_file_check = not (regex and re.search(r"\\[AZz]", pattern))
        top = roots.resolve(path)
        match_glob = glob_matcher(glob) if glob else None
        stats = {"files_searched": 0, "files_matched": 0, "skipped_binary": 0, "skipped_large": 0,
                 "bytes_searched": 0}
        matches = []
        stopped = None
        for rel, full in _files(top, include_hidden, roots):
            if match_glob is not None and not match_glob(rel):
                continue
            if ctx is not None:
                ctx.check_cancelled()
            if stats["files_searched"] >= max_files:
                stopped = "max_files"
                break
            if stats["bytes_searched"] >= MAX_TOTAL_BYTES:
                stopped = "max_total_bytes"
                break
            data = _read(full, stats)
            if data is None:
                continue
            stats["files_searched"] += 1
            if needle is not None and needle not in data:
                continue
            content = data.decode("utf-8", "replace")
            if "\r" in content:
                content = content.replace("\r\n", "\n")
            if whole_file_check and not compiled.search(content):
                continue
            shown = roots.display(full)
            matched = False
            lines = content.split("\n")
            if lines[-1] == "":
                lines.pop()  # the end of the last line, not an empty line after it
            for number, line in enumerate(lines):
                found = compiled.search(line)
                if not found:
                    continue
                if len(matches) >= max_matches:
                    stopped = "max_matches"
                    break
                matched = True
                item = {"path": shown, "line": number + 1, "column": found.start() + 1,
                        "text": _clip(line)}
                if context:
                    item["before"] = [_clip(s) for s in lines[max(0, number - context):number]]
                    item["after"] = [_clip(s) for s in lines[number + 1:number + 1 + context]]
                matches.append(item)
            stats["files_matched"] += matched
            if stopped:
                break
        return {"pattern": pattern, "path": roots.display(top), "matches": matches,
                "truncated": stopped is not None, "stopped_by": stopped, **stats}


def _files(top, include_hidden, roots):
    """(path relative to ``top`` with "/", full path) of each file, in sorted path order.

    Symlinked directories are not entered; a symlinked file is searched only if its
    target lies inside the roots.
    """
    if not os.path.isdir(top):
        yield os.path.basename(top), top
        return
    stack = [("", iter(_sorted_entries(top)))]
    while stack:
        rel_dir, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        name = entry.name
        if not include_hidden and name.startswith("."):
            continue
        rel = f"{rel_dir}/{name}" if rel_dir else name
        try:
            if entry.is_dir(follow_symlinks=False):
                if name not in SKIP_DIRS:
                    stack.append((rel, iter(_sorted_entries(entry.path))))
                continue
            if entry.is_symlink() and not roots.contains(os.path.realpath(entry.path)):
                continue
        except OSError:
            continue
        yield rel, entry.path


def _sorted_entries(directory):
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def _read(full, stats):
    """The bytes of a searchable file, or None (not a regular file, too large, binary)."""
    try:
        with open(full, "rb") as f:
            st = os.fstat(f.fileno())
            if not (st.st_mode & 0o170000 == 0o100000):
                return None
            if st.st_size > MAX_FILE_BYTES:
                stats["skipped_large"] += 1
                return None
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    if b"\0" in data[:SNIFF_BYTES]:
        stats["skipped_binary"] += 1
        return None
    stats["bytes_searched"] += len(data)
    return data


def _clip(line):
    return line if len(line) <= LINE_SHOWN else line[:LINE_SHOWN] + "…"
