"""The roots file-touching plugins (files, git, search) work in, and globs over paths.

The roots are ``--root DIR`` (repeatable; ``roots = [...]`` in the config file). With no
root configured, the one root is the directory the server was started in. Paths are
resolved with every symlink followed, then must lie inside a root (bemcp.security.Roots,
the same check the command policy makes): a symlink pointing out of the roots is refused
like any other outside path. A relative path is taken relative to the first root.
"""

import os

from bemcp import ToolError
from bemcp.security import Roots


def plugin_roots(config):
    """The plugins' Roots: ``--root``, else the start directory; outside paths raise ToolError."""
    return Roots(getattr(config, "roots", None) or [os.getcwd()], error=ToolError)


def glob_matcher(pattern):
    """A predicate ``match(relative_path)`` for a glob, case-sensitive.

    Without "/" the pattern matches the last name (``*.py``); with "/" it matches the whole
    relative path, where ``*`` and ``?`` stay inside one directory and ``**/`` spans any
    number of them (``src/**/test_*.py``).
    """
    import fnmatch
    import re
    if "/" not in pattern:
        return lambda rel: fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)
    out = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end].replace("\\", "\\\\")
            out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    regex = re.compile("".join(out) + r"\Z")
    return lambda rel: regex.match(rel) is not None
