"""The command tools: run_command and process_start/read/write/kill/list, built on the
process mechanics (bemcp.processes) and the command policy (bemcp.security). What the
tools promise is in their docstrings; the security model is in docs/security.md.
"""

import asyncio
import logging
import signal
import time

from .. import Context, ToolError, ToolResult, text
from ..processes import (REAP_WAIT, Capture, ProcessLimitError, ProcessRegistry, ProgressLines,
                         SpawnError)
from ..security import Policy, PolicyError

log = logging.getLogger("bemcp.commands")

RUN_OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "exit_code": {"type": ["integer", "null"],
                      "description": "Exit status; negative: killed by that signal number"},
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "duration_ms": {"type": "number"},
        "timed_out": {"type": "boolean"},
        "truncated": {"type": "boolean"},
        "stdout_bytes": {"type": "integer", "description": "Bytes written in all, kept or not"},
        "stderr_bytes": {"type": "integer"},
    },
    "required": ["exit_code", "stdout", "stderr", "duration_ms", "timed_out", "truncated",
                 "stdout_bytes", "stderr_bytes"],
}

_SIGNALS = {name: getattr(signal, name) for name in (
    "SIGTERM", "SIGKILL", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGSTOP",
    "SIGCONT", "SIGWINCH", "SIGALRM") if hasattr(signal, name)}


def _signal_name(code):
    try:
        return signal.Signals(-code).name
    except (ValueError, TypeError):
        return f"signal {-code}"


def _parse_signal(value):
    if isinstance(value, int) and not isinstance(value, bool):
        if value in _SIGNALS.values():
            return value
    elif isinstance(value, str):
        name = value.strip().upper()
        if name.isdigit():
            return _parse_signal(int(name))
        name = name if name.startswith("SIG") else "SIG" + name
        if name in _SIGNALS:
            return _SIGNALS[name]
    raise ValueError(f"unknown signal {value!r}: use one of "
                     f"{', '.join(n[3:] for n in _SIGNALS)} (or its number)")


def _status_text(code):
    if code is None:
        return "exit status unknown"
    if code < 0:
        return f"killed by {_signal_name(code)}"
    return f"exit code {code}"


def register_commands(server):
    """Register run_command and the process_* tools on ``server`` (settings from
    ``server.config``); stop every child when the server stops.

    Raises security.PolicyConfigError for settings that cannot be honoured together
    (``--shell`` with ``--allow``), and security.sandbox.SandboxError when ``--sandbox``
    cannot be honoured here (never a command less confined than asked).
    """
    cfg = server.config
    sandbox = None
    if cfg.sandbox:
        from ..security.sandbox import Sandbox
        sandbox = Sandbox.from_config(cfg)
        server.on_shutdown(sandbox.close)   # after the children are stopped (callbacks run last first)
        log.info("%s", sandbox.summary())
    else:
        log.info("commands run without a sandbox (--sandbox confines them to the roots)")
        if cfg.sandbox_allow_net or cfg.sandbox_read:
            log.warning("sandbox_allow_net and sandbox_read mean nothing without --sandbox")
    server.sandbox = sandbox
    policy = Policy.from_config(cfg, sandbox)
    for spec in policy.unresolved():
        log.warning("--allow %s: no such program on PATH at start; it will match nothing", spec)
    registry = ProcessRegistry(policy, cfg.max_processes, cfg.kill_grace)
    server.processes = registry
    server.on_start(registry.start_adopting)
    server.on_shutdown(registry.shutdown)
    # What runs where, in the tasks.log record of each call that starts a program.
    started = {"sandboxed": True} if sandbox is not None else None

    def prepare(command, cwd, env):
        try:
            return policy.prepare(command, cwd, env)
        except PolicyError as exc:
            raise ToolError(str(exc)) from None

    def start(launch, on_output, stdin=False, foreground=True):
        try:
            return registry.spawn(launch, on_output, stdin=stdin, foreground=foreground)
        except (ProcessLimitError, SpawnError) as exc:
            raise ToolError(str(exc)) from None

    def lookup(id):
        try:
            return registry.get(id)
        except KeyError as exc:
            raise ToolError(exc.args[0]) from None

    run_deadline = cfg.command_timeout_max + cfg.kill_grace + REAP_WAIT + 5

    @server.tool(eager=True, timeout=run_deadline, output_schema=RUN_OUTPUT_SCHEMA,
                 annotations={"destructiveHint": True, "openWorldHint": True})
    async def run_command(command: list[str] | str, cwd: str | None = None,
                          timeout: float | None = None, stdin: str | None = None,
                          env: dict[str, str] | None = None, ctx: Context = None) -> ToolResult:
        """Run a program and return its exit status and output.

        The program runs without a shell: a string is split into words like a shell
        would (quotes, backslashes) but pipes, redirections, variables, globs and
        `;`/`&&` are refused rather than reinterpreted (unless the server runs with
        --shell). A non-zero exit status is reported, not an error; a timeout is.

        Args:
            command: The program and its arguments, as a list (preferred) or one string.
            cwd: Working directory (relative to the server's); must lie inside the server's roots.
            timeout: Seconds before the command is stopped (its whole process group).
            stdin: Text written to the program's standard input (otherwise it reads nothing).
            env: Extra environment variables for the program.
        """
        launch = prepare(command, cwd, env)
        limit = _timeout(timeout, cfg.command_timeout, cfg.command_timeout_max, ToolError)
        out, err = Capture(cfg.max_output), Capture(cfg.max_output)
        progress = None
        if ctx is not None and ctx.progress_token is not None:
            progress = ProgressLines(ctx, asyncio.get_running_loop())
        captures = (None, out.feed, err.feed)
        if progress is None:
            def on_output(stream, data):
                captures[stream](data)
        else:
            def on_output(stream, data):
                captures[stream](data)
                progress.feed(stream, data)
        child = start(launch, on_output, stdin=stdin is not None)
        loop = child.loop
        feeder = None
        if stdin is not None:
            feeder = loop.create_task(_feed_stdin(child, stdin.encode()))
        timer = loop.call_later(limit, _on_timeout, child)
        try:
            # Shielded: cancelling this call must not cancel the child's own futures.
            await asyncio.shield(child.done)
            if child.timed_out:
                await asyncio.shield(child.kill(child.grace))   # reaped before we answer
        except asyncio.CancelledError:
            child.kill(cfg.kill_grace)           # finishes on its own; no answer is sent
            raise
        finally:
            timer.cancel()
            if feeder is not None and not feeder.done():
                feeder.cancel()
            if progress is not None:
                progress.close()
        duration = (child.ended or time.monotonic()) - child.started
        if ctx is not None:
            ctx.note(exit_code=child.returncode, **(started or {}))   # for tasks.log
            if child.timed_out:
                ctx.timed_out(limit)
        structured = {"exit_code": child.returncode, "stdout": out.text(), "stderr": err.text(),
                      "duration_ms": round(duration * 1000, 3), "timed_out": child.timed_out,
                      "truncated": out.truncated or err.truncated,
                      "stdout_bytes": out.total, "stderr_bytes": err.total}
        if child.timed_out:
            how = "SIGTERM" if child.kill_signal == signal.SIGTERM else \
                f"SIGTERM, then SIGKILL after {child.grace:g} s"
            head = (f"Timed out after {limit:g} s: the command and everything it started were "
                    f"stopped ({how}); {_status_text(child.returncode)}.")
        else:
            head = f"{_status_text(child.returncode)} ({duration:.3f} s)"
        return ToolResult([text(_run_text(head, structured))], structured, is_error=child.timed_out)

    @server.tool(eager=True, annotations={"destructiveHint": True, "openWorldHint": True})
    async def process_start(command: list[str] | str, cwd: str | None = None,
                            env: dict[str, str] | None = None, ctx: Context = None) -> dict:
        """Start a program in the background and return its id; read its output with process_read.

        Same rules as run_command (no shell unless the server has --shell). Its stdin
        is a pipe fed by process_write; stdout and stderr are kept together, in the
        order they arrive.

        Args:
            command: The program and its arguments, as a list (preferred) or one string.
            cwd: Working directory; must lie inside the server's roots.
            env: Extra environment variables for the program.
        """
        launch = prepare(command, cwd, env)
        try:
            entry = registry.start_background(launch)
        except (ProcessLimitError, SpawnError) as exc:
            raise ToolError(str(exc)) from None
        if started and ctx is not None:
            ctx.note(**started)
        return {"id": entry.id, "pid": entry.child.pid}

    @server.tool(eager=True, annotations={"readOnlyHint": True, "openWorldHint": False})
    async def process_read(id: str, offset: int | None = None, max_bytes: int = 65536) -> dict:
        """Read a background process's output from an offset, and whether it is still running.

        Output is numbered in bytes from 0. Without an offset, reading continues where
        the previous process_read of this process stopped. Page through a large output
        by passing next_offset back as offset until next_offset equals total_bytes.

        Args:
            id: The id process_start returned.
            offset: Byte offset to read from (default: where the last read stopped).
            max_bytes: Most bytes to return (up to the server's max_output).
        """
        entry = lookup(id)
        spool = entry.spool
        if max_bytes < 1:
            raise ToolError("max_bytes must be at least 1")
        if offset is not None and offset < 0:
            raise ToolError("offset must be 0 or more")
        wanted = entry.cursor if offset is None else offset
        start, data = spool.read(wanted, min(max_bytes, max(cfg.max_output, 1)))
        # Never end inside a UTF-8 character while more is coming: it is sent whole next time.
        if data and start + len(data) < spool.total:
            data = data[:_utf8_boundary(data)] or data
        next_offset = start + len(data)
        entry.cursor = next_offset
        child = entry.child
        result = {"id": id, "output": data.decode("utf-8", "replace"), "offset": start,
                  "next_offset": next_offset, "total_bytes": spool.total,
                  "dropped_bytes": max(0, start - wanted), "running": child.running,
                  "status": entry.status(), "exit_code": child.returncode}
        return result

    @server.tool(annotations={"destructiveHint": True, "openWorldHint": True})
    async def process_write(id: str, data: str, close: bool = False) -> dict:
        """Write text to a background process's standard input.

        Args:
            id: The id process_start returned.
            data: The text to write (add "\\n" to end a line).
            close: Close its stdin afterwards (the program then sees end of input).
        """
        entry = lookup(id)
        try:
            written = await entry.child.write_stdin(data.encode(), close=close)
        except ValueError:
            raise ToolError(f"{id}: its stdin is already closed") from None
        except BrokenPipeError:
            entry.child.close_stdin()
            raise ToolError(f"{id}: the process no longer reads its stdin "
                            f"({entry.status()})") from None
        return {"id": id, "written": written, "closed": entry.child.stdin_fd is None}

    @server.tool(annotations={"destructiveHint": True, "openWorldHint": False})
    async def process_kill(id: str, signal: str | None = None) -> dict:
        """Stop a background process and everything it started, or send it a signal.

        Without a signal: SIGTERM to its whole process tree, SIGKILL after the grace
        period, and wait until it is gone. With one (e.g. "INT", "HUP", "USR1",
        "STOP", "CONT"): send only that, to the whole tree.

        Args:
            id: The id process_start returned.
            signal: A signal name or number to send instead of stopping it.
        """
        entry = lookup(id)
        child = entry.child
        if signal is None:
            await asyncio.shield(child.kill(cfg.kill_grace))
            sent = "SIGTERM" if child.kill_signal is None or child.kill_signal == _SIGNALS["SIGTERM"] \
                else "SIGTERM, SIGKILL"
        else:
            try:
                signum = _parse_signal(signal)
            except ValueError as exc:
                raise ToolError(str(exc)) from None
            child.send_signal(signum)
            sent = _signal_name(-signum)
        return {"id": id, "pid": child.pid, "signal": sent, "running": child.running,
                "status": entry.status(), "exit_code": child.returncode}

    @server.tool(eager=True, annotations={"readOnlyHint": True, "openWorldHint": False})
    async def process_list() -> dict:
        """List the background processes: status, exit code, runtime, command, output size."""
        return {"processes": [entry.info() for entry in registry.background.values()],
                "running": registry.running, "limit": registry.max_processes}

    if sandbox is not None:   # the model learns where the wall is before it hits it
        for name in ("run_command", "process_start"):
            server.tools[name].description += sandbox.tool_note()
    return registry


def _timeout(value, default, maximum, error):
    if value is None:
        return min(default, maximum) if maximum else default
    if not value > 0:
        raise error("timeout must be more than 0 seconds")
    if maximum and value > maximum:
        raise error(f"timeout {value:g} s is above the server's maximum of {maximum:g} s "
                    f"(command_timeout_max)")
    return float(value)


def _on_timeout(child):
    if child.returncode is None or not child.done.done():
        child.timed_out = child.returncode is None
        if child.timed_out:
            child.kill(child.grace)


async def _feed_stdin(child, data):
    try:
        await child.write_stdin(data, close=True)
    except (BrokenPipeError, ValueError, OSError):
        child.close_stdin()   # the program did not read it all: that is its business


def _utf8_boundary(data):
    """Length of ``data`` without a UTF-8 sequence cut off at its end."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte < 0x80:
            return end
        if byte >= 0xC0:      # a lead byte: is its sequence complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return end if back >= need else end - back
    return end


def _run_text(head, structured):
    parts = [head]
    for name in ("stdout", "stderr"):
        body = structured[name]
        if body:
            parts.append(f"--- {name} ---\n{body.rstrip(chr(10))}")
    if len(parts) == 1:
        parts.append("(no output)")
    return "\n".join(parts)
