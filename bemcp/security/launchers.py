"""Launchers: which program a launcher (env, nice, timeout, xargs, find -exec, sudo, ...)
would start, read from its options, so that the allow and deny lists check it too.
Where the options cannot be read with certainty, the answer is None (the command is
refused). The rule and the list are in docs/security.md.
"""

import os
import re

# Programs that run code given to them: allowing one allows what it runs (documentation
# and error messages; the allowlist treats them like any other program).
INTERPRETERS = re.compile(
    r"(?:(?:ba|da|z|k|mk|c|tc|a|ya|fi)?sh|fish|python[0-9.]*|pypy[0-9.]*|perl[0-9.]*|ruby[0-9.]*|node(?:js)?|deno|bun"
    r"|php[0-9.]*|lua[0-9.]*|luajit|tclsh[0-9.]*|wish[0-9.]*|Rscript|R|[gmn]?awk|expect|pwsh"
    r"|make|gdb|osascript|busybox|toybox)")

_MULTICALL = frozenset(("busybox", "toybox"))


def _launcher_key(name, real):
    """The launcher a program is, if any: by its real name, except for multi-call
    binaries, which act on the name they were invoked by."""
    base = os.path.basename(real)
    key = name if base in _MULTICALL else base
    if key in _MULTICALL:
        return "busybox"
    return key if key in _LAUNCHERS else None


def is_launcher(name, real):
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
