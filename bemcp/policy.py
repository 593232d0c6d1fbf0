"""The security policy for commands: which programs may run, where, with what environment.

Every command passes through ``Policy.prepare`` before anything is spawned. It

1. turns a command string into words the way a POSIX shell would (quotes, escapes),
   and refuses, with an explanation, a string holding shell syntax (pipes, ``;``,
   ``&&``, redirections, ``$(...)``, variables, globs, newlines...) unless the server
   runs strings under ``/bin/sh -c`` (``--shell``): never a silent reinterpretation;
2. resolves the program: a bare name on the server's PATH, a path (relative to the
   command's working directory) as given, then its real path (symlinks resolved);
3. checks it against ``--deny`` and ``--allow``;
4. checks the working directory against ``--root`` (real paths, so a symlink cannot
   lead outside);
5. builds the child's environment through the filter.

The allowlist and launcher rule
-------------------------------
With ``--allow`` the program a command names must be one of the allowed programs:

- An allowed *name* is looked up on the server's PATH **when the server starts**; it
  allows the files found then (by real path), invoked under that name. A program
  invoked by absolute or relative path is allowed only if its real path is one of
  those files and its name is the allowed name. So ``/bin/echo`` is ``echo`` when
  both are the same file, while a script called ``echo`` written later into a PATH
  directory, a symlink named ``echo`` pointing at ``python3``, or ``sh`` from a
  multi-call binary that also provides ``ls`` are all refused.
- An allowed *path* (``--allow /opt/tool/bin/tool``) allows that file, by real path.
- Shells, interpreters and launchers (``sh``, ``bash``, ``python``, ``perl``,
  ``node``, ``env``, ``xargs``, ``find``, ``nice``, ``timeout``, ``nohup``, ``sudo``,
  ...) are programs like any other: they run only if they are allowed themselves.
  Nothing reaches a forbidden program *through* them, because they are refused first.
- When a launcher is allowed, the program it would start is found by reading its
  options (``env``, ``nice``, ``nohup``, ``timeout``, ``stdbuf``, ``setsid``,
  ``ionice``, ``taskset``, ``time``, ``xargs``, ``find -exec/-execdir/-ok/-okdir``,
  ``sudo``, ``doas``, ``pkexec``, ``flock``, ``strace``, ``ltrace``, ``unbuffer``,
  ``busybox``, ``watch -x``) and must pass the same checks, recursively, looked up on
  the child's PATH. If the options cannot be read with certainty (an unknown option,
  ``env -S``, ``env PATH=...``, ``flock -c``, ``watch`` without ``-x``) or the launcher
  is one whose program cannot be checked from here (``chroot``, ``su``, ``runuser``,
  ``unshare``, ``nsenter``, ``chrt``, ``script``), the command is refused.
- Allowing a shell or an interpreter allows whatever it runs: ``--allow python3``
  allows ``python3 -c 'import os; os.system(...)'``. Many ordinary programs can
  start others too (``git`` aliases and hooks, ``make``, ``awk``'s ``system()``, GNU
  ``sed``'s ``e``, ``tar --to-command``, pagers and editors): allow only programs you
  would trust with a shell, and programs the agent cannot overwrite.
- A command's ``env`` argument cannot set variables that make an allowed program
  load or run other code (``LD_PRELOAD``, ``BASH_ENV``, ``PYTHONPATH``,
  ``GIT_SSH_COMMAND``, ``PAGER``, ... see ``INJECTION_VARIABLES``) while an
  allowlist is in force.

``--deny NAME`` refuses a program by name and by real path (a symlink to it under
another name is refused; a copy is not). Launchers are read the same way, so
``env rm`` is refused with ``--deny rm``; but a shell or interpreter can still run
a denied program, so a deny list guards against mistakes, not against intent: use
``--allow`` for a boundary.

``--shell`` runs strings under ``/bin/sh -c``; a shell string can start anything,
so ``--shell`` together with ``--allow`` or ``--deny`` is refused at start.

``--root DIR`` constrains the working directory of commands (real path inside a
root). It does not confine what a program reads or writes once running; ``--sandbox``
does (``bemcp/security/sandbox.py``), and then brings its private HOME and TMPDIR
into the environment here.

Environment filter
------------------
Children get the server's environment, minus variables whose names look like
secrets (``DEFAULT_ENV_DENY``: ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``, ``*_KEY``,
...). With ``env_allow`` set, only the names matching one of its globs are passed
(and the built-in secret list no longer applies). Names matching ``env_deny`` are
never passed, and a command cannot set them through its ``env`` argument. The
``env`` argument of a call is applied last. The program itself is always found on
the *server's* PATH, whatever the call's ``env`` says.
"""

import fnmatch
import os
import re
import stat

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

# Programs that run code given to them: allowing one allows what it runs (documentation
# and error messages; the allowlist treats them like any other program).
INTERPRETERS = re.compile(
    r"(?:(?:ba|da|z|k|mk|c|tc|a|ya|fi)?sh|fish|python[0-9.]*|pypy[0-9.]*|perl[0-9.]*|ruby[0-9.]*|node(?:js)?|deno|bun"
    r"|php[0-9.]*|lua[0-9.]*|luajit|tclsh[0-9.]*|wish[0-9.]*|Rscript|R|[gmn]?awk|expect|pwsh"
    r"|make|gdb|osascript|busybox|toybox)")


class PolicyError(Exception):
    """A command refused by the policy, or one that cannot run; the message says why."""


class ShellSyntaxError(PolicyError):
    """A command string holds shell syntax and the server runs commands without a shell."""

    def __init__(self, what, position):
        self.what = what
        self.position = position
        super().__init__(f"{what} at position {position}")


class PolicyConfigError(ValueError):
    """Settings that cannot be honoured together (raised when the server is built)."""


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


# -- command strings -----------------------------------------------------------

_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_SPECIAL_PARAMS = frozenset("0123456789?#@*!$-")
_OPERATORS = {"|": "a pipe '|'", "||": "'||'", "&": "a background '&'", "&&": "'&&'",
              ";": "a command separator ';'", ";;": "';;'", "(": "a subshell '('", ")": "')'",
              "<": "a redirection '<'", ">": "a redirection '>'", ">>": "a redirection '>>'",
              "<<": "a here-document '<<'", "<&": "a redirection '<&'", ">&": "a redirection '>&'",
              "<>": "a redirection '<>'", ">|": "a redirection '>|'", "&>": "a redirection '&>'",
              "|&": "a pipe '|&'"}
_RESERVED = frozenset(("!", "{", "}", "if", "then", "else", "elif", "fi", "for", "while",
                       "until", "do", "done", "case", "esac", "in", "function", "select",
                       "[[", "]]"))
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def split_command(command):
    """Words of ``command`` as a POSIX shell would split them, without expanding anything.

    Raises ShellSyntaxError for anything a shell would interpret rather than pass on
    (operators, expansions, globs, comments, assignments, compound commands), and
    PolicyError for an unterminated quote or an empty command.
    """
    words = []
    raw_starts = []
    cur = []
    in_word = False
    i = 0
    n = len(command)
    while i < n:
        c = command[i]
        if c == " " or c == "\t":
            if in_word:
                words.append("".join(cur))
                cur = []
                in_word = False
            i += 1
            continue
        if not in_word:
            raw_starts.append(i)
            if c == "#":
                raise ShellSyntaxError("a comment '#'", i)
            if c == "~":
                raise ShellSyntaxError("tilde expansion '~'", i)
        if c == "\n" or c == "\r":
            raise ShellSyntaxError("a newline (a second command)", i)
        if c == "\\":
            if i + 1 < n:
                if command[i + 1] == "\n":   # line continuation
                    i += 2
                    continue
                cur.append(command[i + 1])
                i += 2
            else:
                cur.append("\\")
                i += 1
            in_word = True
            continue
        if c == "'":
            end = command.find("'", i + 1)
            if end < 0:
                raise PolicyError(f"unterminated single quote at position {i}")
            cur.append(command[i + 1:end])
            i = end + 1
            in_word = True
            continue
        if c == '"':
            i = _double_quoted(command, i + 1, cur)
            in_word = True
            continue
        if c in "|&;<>()":
            if command[i:i + 2] in ("<(", ">("):
                raise ShellSyntaxError(f"process substitution '{command[i:i + 2]}...)'", i)
            op = command[i:i + 2] if command[i:i + 2] in _OPERATORS else c
            raise ShellSyntaxError(_OPERATORS.get(op, f"the operator {op!r}"), i)
        if c == "$":
            what = _expansion(command, i)
            if what:
                raise ShellSyntaxError(what, i)
        elif c == "`":
            raise ShellSyntaxError("command substitution with backticks", i)
        elif c == "*" or c == "?":
            raise ShellSyntaxError(f"a glob pattern {c!r} (quote it to pass it literally)", i)
        elif c == "[" and _closes_bracket(command, i):
            raise ShellSyntaxError("a glob pattern '[...]' (quote it to pass it literally)", i)
        cur.append(c)
        in_word = True
        i += 1
    if in_word:
        words.append("".join(cur))
    if not words:
        raise PolicyError("the command is empty")
    first_raw = command[raw_starts[0]:]
    if _ASSIGNMENT.match(first_raw):
        raise ShellSyntaxError("a variable assignment before the command (use the env argument)",
                               raw_starts[0])
    if words[0] in _RESERVED and not first_raw[:1] in "'\"\\":
        raise ShellSyntaxError(f"the shell keyword {words[0]!r}", raw_starts[0])
    return words


def _double_quoted(command, i, cur):
    """Append the text of a double-quoted run starting at ``i``; the index after it."""
    n = len(command)
    start = i - 1
    while i < n:
        c = command[i]
        if c == '"':
            return i + 1
        if c == "\\" and i + 1 < n and command[i + 1] in '$`"\\\n':
            if command[i + 1] != "\n":
                cur.append(command[i + 1])
            i += 2
            continue
        if c == "$":
            what = _expansion(command, i)
            if what:
                raise ShellSyntaxError(what + " inside double quotes", i)
        elif c == "`":
            raise ShellSyntaxError("command substitution with backticks", i)
        cur.append(c)
        i += 1
    raise PolicyError(f"unterminated double quote at position {start}")


def _expansion(command, i):
    """What ``$`` at ``i`` would expand, or "" if the shell keeps it literally."""
    nxt = command[i + 1:i + 2]
    if nxt == "(":
        return "arithmetic expansion '$((...))'" if command[i + 2:i + 3] == "(" else \
            "command substitution '$(...)'"
    if nxt == "{" or (nxt and (nxt in _NAME_START or nxt in _SPECIAL_PARAMS)):
        return "a variable expansion '$...' (use a literal value, or the env argument)"
    if nxt == "'" or nxt == '"':
        return "bash quoting '$'...''"
    return ""


def _closes_bracket(command, i):
    """Whether the '[' at ``i`` starts a bracket expression (a ']' later in the same word)."""
    for c in command[i + 1:]:
        if c in " \t\n":
            return False
        if c == "]":
            return True
    return False


def shell_syntax_message(exc, allowlist, shell_available):
    """The isError text for a command string refused for its shell syntax."""
    hint = ("" if shell_available else
            " This server has an allowlist, so no shell is available." if allowlist else
            " A shell runs command strings only when the server is started with --shell.")
    return (f"Not run: the command string contains shell syntax ({exc.what} at character "
            f"{exc.position}), and this server runs commands without a shell. Pass the "
            f"program and its arguments as a list, e.g. [\"grep\", \"-rn\", \"TODO\", \"src\"], "
            f"run the parts of a pipeline or sequence as separate commands, and put the "
            f"literal value where a variable or glob was.{hint}")


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
        self.roots = []
        for root in roots or ():
            real = os.path.realpath(os.path.expanduser(root))
            if not os.path.isdir(real):
                raise PolicyConfigError(f"--root {root}: not a directory")
            self.roots.append(real)
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
        if _is_launcher(name, real) or INTERPRETERS.fullmatch(name) or INTERPRETERS.fullmatch(base):
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
        if self.roots and not self.inside_roots(real):
            raise PolicyError(f"Not run: cwd {cwd!r} (really {real}) is outside the server's roots: "
                              f"{', '.join(self.roots)}")
        return real

    def inside_roots(self, real):
        return any(real == root or real.startswith(root.rstrip("/") + "/") for root in self.roots)

    def _default_cwd(self, cwd):
        real = os.path.realpath(cwd)
        if self.roots and not self.inside_roots(real):
            return self.roots[0]
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


# -- launchers: which program they would start ----------------------------------------

_MULTICALL = frozenset(("busybox", "toybox"))


def _launcher_key(name, real):
    """The launcher a program is, if any: by its real name, except for multi-call
    binaries, which act on the name they were invoked by."""
    base = os.path.basename(real)
    key = name if base in _MULTICALL else base
    if key in _MULTICALL:
        return "busybox"
    return key if key in _LAUNCHERS else None


def _is_launcher(name, real):
    return _launcher_key(name, real) is not None


def launched_programs(name, real, args):
    """The argv lists a program invoked as ``name`` (real path ``real``) would start.

    Yields None when that cannot be told with certainty; yields nothing when the
    program is no launcher, or starts no program (``env`` alone prints the environment).
    """
    key = _launcher_key(name, real)
    if key is not None:
        yield from _LAUNCHERS[key](args)


class _Unsure(Exception):
    pass


def _options(args, flags="", with_arg="", long_flags=(), long_with_arg=(), long_optional=(),
             positional=0):
    """Skip a GNU-style option list; return (index of the command, positionals seen).

    Raises _Unsure at an option it does not know.
    """
    i = 0
    seen = []
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if a.startswith("--") and len(a) > 2:
            key, eq, _ = a[2:].partition("=")
            if key in long_with_arg:
                i += 1 if eq else 2
                continue
            if key in long_flags and not eq or key in long_optional:
                i += 1
                continue
            raise _Unsure(a)
        if a.startswith("-") and len(a) > 1:
            j = 1
            while j < len(a):
                c = a[j]
                if c in with_arg:
                    i += 1 if j + 1 < len(a) else 2
                    break
                if c not in flags:
                    raise _Unsure(a)
                j += 1
            else:
                i += 1
            continue
        break
    if i > len(args):
        raise _Unsure("missing option argument")
    while len(seen) < positional and i < len(args):
        seen.append(args[i])
        i += 1
    return i, seen


def _rest(args, **spec):
    """A launcher of the form ``launcher [options] [positionals] command [args]``."""
    try:
        i, _ = _options(args, **spec)
    except _Unsure:
        yield None
        return
    if i < len(args):
        yield args[i:]


def _env(args):
    i = 0
    chdir = False
    while i < len(args):
        a = args[i]
        if a in ("-i", "-0", "-v", "--ignore-environment", "--null", "--debug", "-"):
            i += 1
        elif a in ("-u", "-C", "--unset", "--chdir"):
            chdir = chdir or a in ("-C", "--chdir")
            i += 2
        elif a.startswith(("--unset=", "--chdir=")) or (a[:2] in ("-u", "-C") and len(a) > 2):
            chdir = chdir or a.startswith(("--chdir", "-C"))
            i += 1
        elif a == "--":
            i += 1
            break
        elif a.startswith("-"):
            yield None     # -S/--split-string and anything unknown
            return
        elif "=" in a:
            if a.startswith("PATH="):
                yield None     # the command would be looked up on another PATH
                return
            i += 1
        else:
            break
    if i < len(args):
        if chdir and "/" in args[i] and not args[i].startswith("/"):
            yield None         # a relative program path, relative to another directory
            return
        yield args[i:]


def _xargs(args):
    try:
        i, _ = _options(args, flags="0prtx", with_arg="adEILnPs", long_flags=(
            "null", "no-run-if-empty", "verbose", "interactive", "exit", "open-tty",
            "show-limits"), long_with_arg=("arg-file", "delimiter", "max-args", "max-procs",
                                           "max-chars", "process-slot-var"),
            long_optional=("replace", "eof", "max-lines"))
    except _Unsure:
        yield None
        return
    yield args[i:] if i < len(args) else ["echo"]


def _find(args):
    for i, a in enumerate(args):
        if a in ("-exec", "-execdir", "-ok", "-okdir"):
            if i + 1 >= len(args) or (a.endswith("dir") and "/" in args[i + 1]
                                      and not args[i + 1].startswith("/")):
                yield None     # -execdir ./x runs relative to each directory found
                return
            yield args[i + 1:]


def _timeout(args):
    yield from _rest(args, flags="v", with_arg="sk", long_flags=("preserve-status", "foreground", "verbose"),
                     long_with_arg=("signal", "kill-after"), positional=1)


def _nice(args):
    rest = list(args)
    if rest and re.fullmatch(r"-[0-9]+", rest[0]):
        rest = rest[1:]
    yield from _rest(rest, with_arg="n", long_with_arg=("adjustment",))


def _taskset(args):
    if any(a in ("-p", "--pid") or (a.startswith("-") and not a.startswith("--") and "p" in a)
           for a in args[:3]):
        return   # operates on an existing process
    yield from _rest(args, flags="ac", long_flags=("all-tasks", "cpu-list"), positional=1)


def _ionice(args):
    if any(a.startswith(("-p", "-P", "-u", "--pid", "--pgid", "--uid")) for a in args):
        return
    yield from _rest(args, flags="t", with_arg="cn", long_flags=("ignore",),
                     long_with_arg=("class", "classdata"))


def _flock(args):
    if any(a in ("-c", "--command") or a.startswith("--command=") for a in args):
        yield None
        return
    yield from _rest(args, flags="sxeunoFhV", with_arg="wE",
                     long_flags=("shared", "exclusive", "unlock", "nonblock", "close", "no-fork", "verbose"),
                     long_with_arg=("timeout", "conflict-exit-code"), positional=1)


def _watch(args):
    if not any(a in ("-x", "--exec") for a in args):
        yield None   # watch runs its command through "sh -c"
        return
    yield from _rest(args, flags="bcCdeghptxr", with_arg="nq",
                     long_flags=("beep", "color", "no-color", "differences", "errexit", "chgexit",
                                 "no-title", "precise", "exec", "no-wrap", "no-rerun"),
                     long_with_arg=("interval", "equexit"))


def _sudo(args):
    yield from _rest(args, flags="AbEHiKklnPSsV", with_arg="CDghpRrTtUu",
                     long_flags=("askpass", "background", "preserve-env", "set-home", "login",
                                 "non-interactive", "preserve-groups", "stdin", "shell"),
                     long_with_arg=("close-from", "chdir", "group", "host", "prompt", "chroot",
                                    "role", "type", "command-timeout", "other-user", "user"))


def _busybox(args):
    if args and not args[0].startswith("-"):
        yield args
    elif args:
        yield None


def _strace(args):
    yield from _rest(args, flags="cCdDfFhiqrtTvVwxyzZk", with_arg="abeEIoOpPsSuUX",
                     long_with_arg=("output", "trace", "signal", "expr"))


_LAUNCHERS = {
    "env": _env,
    "nohup": lambda args: _rest(args),
    "nice": _nice,
    "timeout": _timeout,
    "stdbuf": lambda args: _rest(args, with_arg="ioe", long_with_arg=("input", "output", "error")),
    "setsid": lambda args: _rest(args, flags="cfw", long_flags=("ctty", "fork", "wait")),
    "ionice": _ionice,
    "taskset": _taskset,
    "time": lambda args: _rest(args, flags="pvaq", with_arg="fo",
                               long_flags=("portability", "verbose", "append", "quiet"),
                               long_with_arg=("format", "output")),
    "xargs": _xargs,
    "find": _find,
    "sudo": _sudo,
    "doas": lambda args: _rest(args, flags="ns", with_arg="uC"),
    "chroot": lambda args: (None for _ in (0,)),   # the program is looked up in another root
    "flock": _flock,
    "watch": _watch,
    "strace": _strace,
    "ltrace": _strace,
    "busybox": _busybox,
    "unbuffer": lambda args: _rest(args, flags="p"),
    "chrt": lambda args: (None for _ in (0,)),
    "unshare": lambda args: (None for _ in (0,)),
    "nsenter": lambda args: (None for _ in (0,)),
    "runuser": lambda args: (None for _ in (0,)),
    "su": lambda args: (None for _ in (0,)),
    "script": lambda args: (None for _ in (0,)),
    "pkexec": lambda args: _rest(args, with_arg="", long_with_arg=("user",),
                                 long_flags=("disable-internal-agent", "keep-cwd")),
}
