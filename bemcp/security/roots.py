"""Roots: the directories a path must lie in, compared by real path (every symlink
followed, so a symlink pointing out of the roots leads nowhere).

The one "inside the roots" check: the command policy uses it for where a command may
start, the file plugins (files, git, search) for every path they touch. What no
``--root`` means is the caller's to state: commands may then start anywhere (the policy
skips the check), file plugins stay in the directory the server started in. See
docs/security.md.
"""

import os


class Roots:
    """Directories by real path; ``contains(real)`` when ``real`` is one of them or lies
    below one (no directory: nothing is inside). ``error`` is the exception ``resolve``
    raises for a path outside them."""

    def __init__(self, dirs, error=ValueError):
        self.dirs = [os.path.realpath(os.path.expanduser(d)) for d in dirs or ()]
        self.error = error

    @property
    def default(self):
        """The first root: relative paths are taken from it."""
        return self.dirs[0]

    def contains(self, real):
        return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.dirs)

    def resolve(self, path, must_exist=True):
        """The real path of ``path`` (relative to the first root); ``error`` outside the roots."""
        if not isinstance(path, str) or "\0" in path:
            raise self.error("path must be a string without NUL characters")
        joined = os.path.join(self.default, os.path.expanduser(path or "."))
        real = os.path.realpath(joined)
        if not self.contains(real):
            raise self.error(f"{path!r} resolves to {real}, outside the allowed roots "
                             f"({', '.join(self.dirs)}); configure more with --root")
        if must_exist and not os.path.lexists(real):
            raise self.error(f"{path!r} does not exist ({real})")
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
