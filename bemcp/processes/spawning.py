"""Starting a program: ``spawn(launch, on_output, ...)`` returns a running Child.

The child gets raw pipes for stdout and stderr, a pipe or /dev/null as stdin, a new
session, and no other inherited descriptor. On CPython 3.11-3.13 it is started with
``_posixsubprocess.fork_exec`` called directly (vfork, then exec), elsewhere with
``subprocess.Popen``; with a sandbox, by the compiled sandbox spawner or its exec
helper. Why fork_exec, and what was measured against it: docs/processes.md.
"""

import asyncio
import os
import subprocess
import sys
import time

from .child import Child


class SpawnError(Exception):
    """The program could not be started (the message says why)."""


def spawn(launch, on_output, stdin=False, foreground=True, on_exit=None, grace=2.0, sandbox=None):
    """Start ``launch`` (a security.Launch) in its own session; a Child.

    ``stdin``: give the child a pipe as stdin (else /dev/null); ``sandbox``: run it
    confined (a security.sandbox.Sandbox). Must be called on the event loop. Raises
    SpawnError if the program cannot be started.
    """
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    fds = []
    try:
        out_r, out_w = os.pipe()       # close-on-exec on both ends (PEP 446)
        fds += (out_r, out_w)
        err_r, err_w = os.pipe()
        fds += (err_r, err_w)
        if stdin:
            in_r, in_w = os.pipe()
            fds += (in_r, in_w)
        if not stdin:
            in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            fds.append(in_r)
        if sandbox is None:
            pid, popen = _start(launch, in_r, out_w, err_w)
        else:
            pid, popen = _start_confined(launch, in_r, out_w, err_w, sandbox)
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        reason = exc.strerror or str(exc)
        if getattr(exc, "filename", None) == launch.cwd and launch.cwd:
            reason += f" (cwd {launch.cwd})"
        raise SpawnError(f"cannot run {launch.argv[0]}: {reason}") from None
    os.close(out_w)
    os.close(err_w)
    os.close(in_r)
    stdin_fd = None
    if stdin:
        os.set_blocking(in_w, False)
        stdin_fd = in_w
    return Child(loop, pid, launch, [out_r, err_r], stdin_fd, on_output, foreground,
                 on_exit, grace, popen, started)



_FORK_EXEC = None
if sys.implementation.name == "cpython" and (3, 11) <= sys.version_info[:2] <= (3, 13):
    try:
        from _posixsubprocess import fork_exec as _FORK_EXEC
    except ImportError:
        pass

_ENV_CACHE = (None, None)


def _env_list(env):
    """``env`` encoded for execve; the policy's shared environment is encoded once."""
    global _ENV_CACHE
    if _ENV_CACHE[0] is env:
        return _ENV_CACHE[1]
    encoded = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]
    _ENV_CACHE = (env, encoded)
    return encoded


def _start(launch, stdin_fd, out_w, err_w, argv=None, executable=None, keep=()):
    """Spawn the child with the given fds as 0, 1, 2; (pid, Popen or None).

    ``argv`` and ``executable`` replace the launch's (the sandbox's helper runs it),
    ``keep``: more descriptors the child inherits.
    """
    if argv is None:
        argv, executable = launch.argv, launch.executable
    if _FORK_EXEC is None:
        popen = subprocess.Popen(
            argv, executable=executable, cwd=launch.cwd, env=launch.env, pass_fds=keep,
            stdin=stdin_fd, stdout=out_w, stderr=err_w, close_fds=True, start_new_session=True)
        return popen.pid, popen
    sys.audit("subprocess.Popen", executable, argv, launch.cwd, launch.env)
    report_r, report_w = os.pipe()   # the child reports a failure before exec here
    try:
        # The argument order of CPython 3.11-3.13 (subprocess.Popen._execute_child).
        pid = _FORK_EXEC(
            argv, (os.fsencode(executable),), True,
            tuple(sorted((report_w, *keep))) if keep else (report_w,), launch.cwd,
            _env_list(launch.env), stdin_fd, -1, -1, out_w, -1, err_w, report_r, report_w,
            True, True, -1, None, None, None, -1, None, True)
    except BaseException:
        os.close(report_r)
        raise
    finally:
        os.close(report_w)
    try:
        report = b""
        while True:   # EOF once the child exec'd (the pipe is close-on-exec)
            chunk = os.read(report_r, 50000)
            if not chunk:
                break
            report += chunk
    finally:
        os.close(report_r)
    if report:
        os.waitpid(pid, 0)   # it exits at once
        _, hex_errno, detail = (report.split(b":", 2) + [b"", b""])[:3]
        code = int(hex_errno or b"0", 16)
        raise OSError(code, os.strerror(code) if code else detail.decode(errors="replace"),
                      launch.cwd if detail == b"noexec" else executable)   # noexec: chdir failed
    return pid, None


def _start_confined(launch, stdin_fd, out_w, err_w, sandbox):
    """``_start`` inside ``sandbox``: the compiled spawner confines its vfork child and
    execs the program, or (without it) the exec helper does. A confinement or exec that
    fails is the command's own: a line on its stderr, exit status 126 (127: no such
    program), as a shell reports it."""
    if sandbox.spawn is not None:
        sys.audit("subprocess.Popen", launch.executable, launch.argv, launch.cwd, launch.env)
        pid = sandbox.spawn(os.fsencode(launch.executable), [os.fsencode(a) for a in launch.argv],
                            _env_list(launch.env), os.fsencode(launch.cwd or ""), stdin_fd, out_w,
                            err_w, sandbox.fd, sandbox.allow_net)
        return pid, None
    from ..security.sandbox import HELPER
    return _start(launch, stdin_fd, out_w, err_w, sandbox.command(launch.executable, launch.argv),
                  HELPER, (sandbox.fd,))

