"""The command policy: ``Policy.prepare(command, cwd, env)`` turns a tool's command into
a Launch (argv, the resolved program, cwd, environment) or refuses it with PolicyError.

It splits strings (shellwords.py) unless the server runs them under ``/bin/sh -c``
(``--shell``), resolves the program on the server's PATH, checks it and what a
launcher would start (launchers.py) against ``--deny`` and ``--allow``, checks the
working directory against the roots (roots.py), and filters the environment. The
rules, and where they stop, are in docs/security.md.
"""

import fnmatch
import os
import stat

from .errors import PolicyConfigError, PolicyError, ShellSyntaxError
from .launchers import INTERPRETERS, is_launcher, launched_programs
from .roots import Roots
from .shellwords import shell_syntax_message, split_command

SHELL = "/bin/sh"

# Names whose values are likely secrets: not passed to children unless env_allow says so.
DEFAULT_ENV_DENY = ("*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*CREDENTIAL*",
                    "*_KEY", "*_KEY_ID", "*APIKEY*", "*API_KEY*", "*PRIVATE_KEY*",
                    "*COOKIE*", "BEMCP_*")

# Variables that make a program load or execute other code; a call may not set them
# while an allowlist is in force (defense in depth, not an exhaustive list).
INJECTION_VARIABLES = ("PATH", "LD_*", "DYLD_*", "BASH_ENV", "ENV", "BASH_FUNC_*", "SHELLOPTS",
                       "BASHOPTS", "PS4", "PROMPT_COMMAND", "IFS", "CDPATH", "GCONV_PATH",
                       "LOCPATH", "NLSPATH", "HOSTALIASES", "PYTHON*", "PERL*", "RUBY*",
                       "NODE_OPTIONS", "NODE_PATH", "GIT_*", "PAGER", "MANPAGER", "EDITOR",
                       "VISUAL", "LESSOPEN", "LESSCLOSE", "LESSKEY*", "SHELL", "TMPDIR",
                       "MALLOC_*", "GLIBC_TUNABLES", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
                       "JDK_JAVA_OPTIONS", "LUA_*", "TCLLIBPATH", "R_PROFILE*", "XDG_CONFIG_*")


class Launch:
    """A command ready to spawn: argv, the resolved executable, cwd and environment."""

    __slots__ = ("argv", "executable", "cwd", "env", "_display")

    def __init__(self, argv, executable, cwd, env, display=None):
        self.argv = argv
        self.executable = executable
        self.cwd = cwd
        self.env = env
        self._display = display

    @property
    def display(self):
        """The command as a user would type it (the string given, or argv quoted)."""
        if self._display is None:
            self._display = _display(self.argv)
        return self._display

    def __repr__(self):
        return f"<Launch {self.display!r} cwd={self.cwd!r}>"


# -- the policy ----------------------------------------------------------------------

class _Allowed:
    """One --allow/--deny entry, resolved when the server starts."""

    __slots__ = ("spec", "name", "reals", "is_path")

    def __init__(self, spec, path_dirs):
        self.spec = spec
        self.is_path = "/" in spec
        if self.is_path:
            real = os.path.realpath(os.path.expanduser(spec))
            self.name = os.path.basename(real)
            self.reals = frozenset((real,)) if _is_executable_file(real) else frozenset()
        else:
            self.name = spec
            self.reals = frozenset(os.path.realpath(p) for p in _path_matches(spec, path_dirs))

    def allows(self, name, real):
        if self.is_path:
            return real in self.reals
        return name == self.name and real in self.reals

    def matches_any(self, name, real):
        """For deny entries: by name or by real path."""
        return (not self.is_path and name == self.name) or real in self.reals


class Policy:
    """Allow/deny lists, roots, shell mode and the environment filter, from a Config.

    ``prepare(command, cwd, env)`` returns a Launch or raises PolicyError.
    """

    def __init__(self, allow=(), deny=(), roots=(), shell=False, env_allow=(), env_deny=(),
                 environ=None, cwd=None, sandbox=None):
        allow = list(allow or ())
        deny = list(deny or ())
        if shell and (allow or deny):
            flag = "--allow" if allow else "--deny"
            raise PolicyConfigError(
                f"--shell cannot be combined with {flag}: a shell command string can start "
                f"any program, so the {'allowlist' if allow else 'deny list'} would be a pretence. "
                f"Drop --shell (commands then run without a shell, checked against the list) "
                f"or drop {flag}.")
        self.environ = dict(os.environ if environ is None else environ)
        self.path_dirs = _path_dirs(self.environ.get("PATH"))
        self.allow = [_Allowed(spec, self.path_dirs) for spec in allow]
        self.deny = [_Allowed(spec, self.path_dirs) for spec in deny]
        self.shell = bool(shell)
        # No --root: commands may start anywhere (the file plugins default differently).
        self.roots = Roots(roots)
        for root, real in zip(roots or (), self.roots.dirs):
            if not os.path.isdir(real):
                raise PolicyConfigError(f"--root {root}: not a directory")
        self.env_allow = tuple(env_allow or ())
        self.env_deny = tuple(env_deny or ())
        # --sandbox: its private HOME and TMPDIR replace the server's (security/sandbox.py).
        self.sandbox = sandbox
        self._base_env = None
        self.default_cwd = self._default_cwd(cwd or os.getcwd())

    @classmethod
    def from_config(cls, cfg, sandbox=None):
        """The policy ``cfg`` asks for; with a sandbox, its roots (the working directory
        when none was given) bound where commands start too."""
        return cls(allow=cfg.allow, deny=cfg.deny, roots=sandbox.roots if sandbox else cfg.roots,
                   shell=cfg.shell, env_allow=cfg.env_allow, env_deny=cfg.env_deny,
                   sandbox=sandbox)

    @property
    def restricted(self):
        """Whether an allow or deny list is in force (launchers are then read)."""
        return bool(self.allow or self.deny)

    def unresolved(self):
        """--allow entries that matched no file at start (they can never match)."""
        return [a.spec for a in self.allow if not a.reals]

    # -- preparing a command -----------------------------------------------------------

    def prepare(self, command, cwd=None, env=None):
        """Check ``command`` (argv list or string) and build its Launch."""
        workdir = self.resolve_cwd(cwd)
        child_env = self.child_env(env)
        if isinstance(command, str):
            if self.shell:
                argv = [SHELL, "-c", command]
                return Launch(argv, SHELL, workdir, child_env, command)
            try:
                argv = split_command(command)
            except ShellSyntaxError as exc:
                raise PolicyError(shell_syntax_message(exc, bool(self.allow), self.shell)) from None
            display = command
        elif isinstance(command, (list, tuple)):
            if not command:
                raise PolicyError("the command is empty: give the program and its arguments")
            if not all(isinstance(word, str) for word in command):
                raise PolicyError("every word of an argv list must be a string")
            argv = list(command)
            display = None     # quoted from argv when someone asks
        else:
            raise PolicyError("command must be a list of strings or a string")
        if any("\0" in word for word in argv):
            raise PolicyError("the command contains a NUL character")
        executable = self.check_program(argv, workdir, child_env)
        return Launch(argv, executable, workdir, child_env, display)

    def check_program(self, argv, cwd, env=None, depth=0, path_dirs=None):
        """Resolve argv[0], check it (and what a launcher would start); its path.

        ``env`` is the child's environment (launchers search its PATH).
        """
        word = argv[0]
        path = self.resolve_program(word, cwd, path_dirs)
        if not self.restricted:
            return path
        real = os.path.realpath(path)
        name = os.path.basename(path)
        for entry in self.deny:
            if entry.matches_any(name, real):
                raise PolicyError(f"Not run: {word!r} is denied by the server's policy (--deny {entry.spec}).")
        if self.allow and not any(entry.allows(name, real) for entry in self.allow):
            raise PolicyError(self._not_allowed(word, name, real))
        if depth > 8:
            raise PolicyError("Not run: launchers nested too deep to check")
        child_path = None
        for launched in launched_programs(name, real, argv[1:]):
            if launched is None:
                raise PolicyError(
                    f"Not run: cannot tell with certainty which program {_display(argv[:4])} "
                    f"would start, so it cannot be checked against the server's policy. "
                    f"Run the program directly.")
            if child_path is None:
                # A launcher looks its program up on the child's PATH, not the server's.
                child_path = _path_dirs((env or {}).get("PATH", os.defpath))
            self.check_program(launched, cwd, env, depth + 1, child_path)
        return path

    def _not_allowed(self, word, name, real):
        allowed = ", ".join(a.spec for a in self.allow)
        why = ""
        base = os.path.basename(real)
        if is_launcher(name, real) or INTERPRETERS.fullmatch(name) or INTERPRETERS.fullmatch(base):
            why = (f" {name} can start other programs, so it runs only if it is allowed itself"
                   f" (see docs/security.md).")
        elif any(a.name == name for a in self.allow if not a.is_path):
            why = f" {word} is not the file the allowed name {name!r} resolved to when the server started."
        return f"Not run: {word!r} is not in the server's allowlist (allowed: {allowed}).{why}"

    def resolve_program(self, word, cwd, path_dirs=None):
        """The path of the program ``word`` names (PATH lookup for a bare name)."""
        if not word:
            raise PolicyError("the program name is empty")
        if "/" in word:
            path = os.path.normpath(os.path.join(cwd, word))
            try:
                st = os.stat(path)
            except (OSError, ValueError):
                raise PolicyError(f"Not run: {word}: no such file") from None
            if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
                raise PolicyError(f"Not run: {word}: not an executable file")
            return path
        for path in _path_matches(word, self.path_dirs if path_dirs is None else path_dirs):
            return path
        raise PolicyError(f"Not run: {word}: command not found on the server's PATH")

    def resolve_cwd(self, cwd):
        """The real working directory for a command; it must lie inside a root."""
        if cwd is None or cwd == "":
            return self.default_cwd
        if not isinstance(cwd, str):
            raise PolicyError("cwd must be a string")
        if "\0" in cwd:
            raise PolicyError("cwd contains a NUL character")
        path = os.path.join(self.default_cwd, os.path.expanduser(cwd))
        real = os.path.realpath(path)
        if not os.path.isdir(real):
            raise PolicyError(f"Not run: cwd {cwd!r} is not a directory")
        if self.roots.dirs and not self.roots.contains(real):
            raise PolicyError(f"Not run: cwd {cwd!r} (really {real}) is outside the server's roots: "
                              f"{', '.join(self.roots.dirs)}")
        return real

    def _default_cwd(self, cwd):
        real = os.path.realpath(cwd)
        if self.roots.dirs and not self.roots.contains(real):
            return self.roots.default
        return real

    # -- environment -----------------------------------------------------------------

    def base_env(self):
        """The filtered server environment (computed once: the server's does not change)."""
        if self._base_env is None:
            env = {}
            for name, value in self.environ.items():
                if self.env_allow:
                    if not _matches(name, self.env_allow):
                        continue
                elif _matches(name, DEFAULT_ENV_DENY):
                    continue
                if self.env_deny and _matches(name, self.env_deny):
                    continue
                env[name] = value
            self._base_env = env if self.sandbox is None else self.sandbox.confine_env(env)
        return self._base_env

    def child_env(self, extra=None):
        """The environment a child gets: the filtered server environment, then ``extra``."""
        env = self.base_env()
        if extra:
            env = dict(env)
            if not isinstance(extra, dict):
                raise PolicyError("env must be an object of NAME: value strings")
            for name, value in extra.items():
                if not isinstance(value, str) or not name or "=" in name or "\0" in name or "\0" in value:
                    raise PolicyError(f"env: {name!r} must be a name without '=' with a string value")
                if self.env_deny and _matches(name, self.env_deny):
                    raise PolicyError(f"Not run: env: {name} is never passed to commands (env_deny)")
                if self.allow and _matches(name, INJECTION_VARIABLES):
                    raise PolicyError(
                        f"Not run: env: {name} could make an allowed program load or run other "
                        f"code, so a command may not set it while an allowlist is in force.")
                env[name] = value
        return env


def _matches(name, patterns):
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, p.upper()) for p in patterns)


def _display(argv):
    import shlex
    return " ".join(shlex.quote(word) for word in argv)


def _path_dirs(path):
    return [d for d in (path if path is not None else os.defpath).split(os.pathsep) if d]


def _path_matches(name, dirs):
    """Executable files called ``name`` in the PATH directories, in PATH order."""
    seen = set()
    for d in dirs:
        path = os.path.join(d, name)
        if path not in seen and _is_executable_file(path):
            seen.add(path)
            yield os.path.abspath(path)


def _is_executable_file(path):
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK)
