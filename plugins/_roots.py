"""The directories file-touching plugins may use, and paths resolved inside them.

The roots are ``--root DIR`` (repeatable; ``roots = [...]`` in the config file). With no
root configured, the one root is the directory the server was started in. Paths are
resolved with every symlink followed, then must lie inside a root: a symlink pointing
out of the roots is refused like any other outside path. A relative path is taken
relative to the first root.
"""

import os

from bemcp import ToolError


class Roots:
    def __init__(self, config):
        dirs = list(getattr(config, "roots", None) or []) or [os.getcwd()]
        self.dirs = [os.path.realpath(os.path.expanduser(d)) for d in dirs]

    @property
    def default(self):
        return self.dirs[0]

    def contains(self, real):
        return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.dirs)

    def resolve(self, path, must_exist=True):
        """The real path of ``path`` (relative to the first root); ToolError outside the roots."""
        if not isinstance(path, str) or "\0" in path:
            raise ToolError("path must be a string without NUL characters")
        joined = os.path.join(self.default, os.path.expanduser(path or "."))
        real = os.path.realpath(joined)
        if not self.contains(real):
            raise ToolError(f"{path!r} resolves to {real}, outside the allowed roots "
                            f"({', '.join(self.dirs)}); configure more with --root")
        if must_exist and not os.path.lexists(real):
            raise ToolError(f"{path!r} does not exist ({real})")
        return real

    def display(self, real):
        """``real`` relative to the root holding it (for compact results)."""
        for root in self.dirs:
            if real == root:
                return "."
            if real.startswith(root.rstrip(os.sep) + os.sep):
                rel = os.path.relpath(real, root)
                return rel if root == self.default else real
        return real


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
