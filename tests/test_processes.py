"""Spawning, killing and capturing in-process (bemcp/processes/), on uvloop and on
the standard asyncio loop. End-to-end behaviour over stdio is in test_run_command_e2e.py."""

import asyncio
import os
import signal
import sys
import time

import pytest
import uvloop

from bemcp import processes
from bemcp.builtins.commands import _utf8_boundary
from bemcp.procfs import is_running, tree_members
from bemcp.processes import (Capture, ProcessLimitError, ProcessRegistry, ProgressLines,
                             SpawnError, Spool, registry, spawn, spawning)
from bemcp.security import Launch, Policy

PY = sys.executable


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request):
    """Run a coroutine to completion on a fresh loop of the parametrized kind."""
    def runner(coro):
        if request.param == "uvloop":
            return uvloop.run(coro)
        return asyncio.run(coro)
    return runner


def launch(argv, cwd=None, env=None):
    return Policy(cwd=cwd).prepare(argv, env=env)


class Collected:
    """An on_output callback keeping both streams."""

    def __init__(self):
        self.streams = {1: bytearray(), 2: bytearray()}

    def __call__(self, stream, data):
        self.streams[stream] += data

    @property
    def out(self):
        return bytes(self.streams[1])

    @property
    def err(self):
        return bytes(self.streams[2])


def live(pids):
    """The pids of ``pids`` still running (zombies are dead, whoever reaps them)."""
    return [pid for pid in pids if is_running(pid)]


async def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# -- spawning and capturing ----------------------------------------------------------------


def test_output_status_and_streams(run):
    async def main():
        output = Collected()
        child = spawn(launch([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"]),
                      output)
        assert await child.done == 3
        return child, output
    child, output = run(main())
    assert child.returncode == 3 and not child.running
    assert output.out == b"out\n" and output.err == b"err\n"


def test_stdin_is_dev_null_unless_given(run):
    async def main():
        output = Collected()
        child = spawn(launch(["cat"]), output)
        started = time.monotonic()
        await asyncio.wait_for(asyncio.shield(child.done), 5)
        assert time.monotonic() - started < 5
        assert child.stdin_fd is None
        fed = Collected()
        cat = spawn(launch(["cat"]), fed, stdin=True)
        assert await cat.write_stdin(b"hello ", close=False) == 6
        await cat.write_stdin(b"world", close=True)
        await cat.done
        return output, fed
    output, fed = run(main())
    assert output.out == b"" and fed.out == b"hello world"


def test_large_stdin_does_not_block_the_loop(run):
    data = os.urandom(3 * 1024 * 1024)

    async def main():
        output = Collected()
        child = spawn(launch(["cat"]), output, stdin=True)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while not child.done.done():
                ticks += 1
                await asyncio.sleep(0)
        tick = asyncio.ensure_future(ticker())
        await child.write_stdin(data, close=True)
        await child.done
        await tick
        return output, ticks
    output, ticks = run(main())
    assert output.out == data
    assert ticks > 1


def test_writing_to_a_process_that_stopped_reading_raises_broken_pipe(run):
    async def main():
        child = spawn(launch(["true"]), Collected(), stdin=True)
        await child.done
        with pytest.raises((BrokenPipeError, ValueError)):
            await child.write_stdin(b"x" * 200000)
    run(main())


def test_a_signal_death_is_a_negative_code(run):
    async def main():
        child = spawn(launch(["sh", "-c", "kill -9 $$"]), Collected())
        return await child.done
    assert run(main()) == -signal.SIGKILL


def test_each_child_leads_its_own_session(run):
    async def main():
        child = spawn(launch(["sleep", "5"]), Collected())
        try:
            assert os.getsid(child.pid) == child.pid
            assert os.getpgid(child.pid) == child.pid
            assert os.getsid(child.pid) != os.getsid(0)
        finally:
            await child.kill(0.5)
        assert child.returncode == -signal.SIGTERM
    run(main())


def test_no_descriptor_of_ours_leaks_into_a_child(run):
    inheritable = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(inheritable, True)
    try:
        async def main():
            output = Collected()
            child = spawn(launch([PY, "-c", "import os; print(sorted(map(int, os.listdir('/proc/self/fd'))))"
                                  "; print(os.readlink('/proc/self/fd/0'))"]), output)
            await child.done
            return output.out.decode().split("\n")
        fds, stdin = run(main())[:2]
    finally:
        os.close(inheritable)
    assert stdin == "/dev/null"
    assert inheritable not in eval(fds)
    assert set(eval(fds)) <= {0, 1, 2, 3}      # 3: the listing's own directory fd


def test_spawn_failures_are_spawn_errors(run, tmp_path):
    script = tmp_path / "noshebang"
    script.write_bytes(b"\x7fELF garbage")
    script.chmod(0o755)
    gone = tmp_path / "gone"
    gone.mkdir()

    async def main():
        with pytest.raises(SpawnError, match="cannot run"):
            spawn(Launch([str(script)], str(script), str(tmp_path), dict(os.environ), "x"), Collected())
        with pytest.raises(SpawnError, match="No such file"):
            spawn(Launch(["nope"], str(tmp_path / "nope"), str(tmp_path), {}, "nope"), Collected())
        good = launch(["true"], cwd=str(gone))
        gone.rmdir()
        with pytest.raises(SpawnError, match="cwd"):
            spawn(good, Collected())
    run(main())


def test_the_env_and_cwd_reach_the_child(run, tmp_path):
    async def main():
        output = Collected()
        child = spawn(launch([PY, "-c", "import os; print(os.getcwd()); print(os.environ['BEMCP_T_X'])"],
                             cwd=str(tmp_path), env={"BEMCP_T_X": "42"}), output)
        await child.done
        return output.out.decode().split()
    assert run(main()) == [os.path.realpath(tmp_path), "42"]


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="the fallback is what runs anyway")
def test_the_thread_fallback_without_pidfd(run, monkeypatch):
    monkeypatch.delattr(os, "pidfd_open")

    async def main():
        output = Collected()
        child = spawn(launch(["echo", "hi"]), output)
        return await child.done, output.out
    assert run(main()) == (0, b"hi\n")


def test_the_popen_fallback(run, monkeypatch):
    monkeypatch.setattr(spawning, "_FORK_EXEC", None)

    async def main():
        output = Collected()
        child = spawn(launch(["sh", "-c", "echo hi; exit 4"]), output)
        code = await child.done
        with pytest.raises(SpawnError):
            spawn(Launch(["nope"], "/nonexistent/nope", "/", {}, "nope"), Collected())
        return code, output.out, child.popen.returncode
    assert run(main()) == (4, b"hi\n", 4)


# -- killing trees ----------------------------------------------------------------------------------


def test_kill_stops_a_tree_that_ignores_sigterm(run):
    async def main():
        child = spawn(launch(["sh", "-c", "trap '' TERM; sleep 60 & sleep 60 & wait"]), Collected())
        assert await wait_until(lambda: len(tree_members(child.pid)) >= 3)
        tree = list(tree_members(child.pid))
        started = time.monotonic()
        await child.kill(0.3)
        took = time.monotonic() - started
        return child, tree, took
    child, tree, took = run(main())
    assert child.returncode == -signal.SIGKILL and child.kill_signal == signal.SIGKILL
    assert live(tree) == []
    assert took < 3.0


def test_kill_reaches_descendants_that_left_the_session(run):
    async def main():
        child = spawn(launch(["sh", "-c", "setsid sleep 60 & sleep 60"]), Collected())
        assert await wait_until(lambda: any(pgrp != child.pid for _, pgrp in tree_members(child.pid).values()))
        tree = list(tree_members(child.pid))
        await child.kill(0.5)
        return tree
    tree = run(main())
    assert len(tree) >= 3 and live(tree) == []


def test_a_grandchild_holding_the_pipes_cannot_hang_a_foreground_command(run):
    async def main():
        output = Collected()
        child = spawn(launch(["sh", "-c", "sleep 60 & echo started"]), output, grace=0.3)
        assert await wait_until(lambda: len(tree_members(child.pid)) >= 2 or child.returncode is not None)
        tree = set(tree_members(child.pid))
        started = time.monotonic()
        code = await child.done
        took = time.monotonic() - started
        # What it left behind is stopped too.
        assert await wait_until(lambda: not live(tree - {child.pid}))
        await child.kill(0.3)
        return code, took, output.out
    code, took, out = run(main())
    assert code == 0 and out == b"started\n"
    assert took < 3.0


def test_a_background_child_keeps_its_descendants_until_killed(run):
    async def main():
        output = Collected()
        child = spawn(launch(["sh", "-c", "sleep 60 & echo $!"]), output, foreground=False)
        assert await wait_until(lambda: child.returncode is not None and output.out)
        grandchild = int(output.out)
        await asyncio.sleep(processes.DRAIN_AFTER_EXIT + 0.2)
        assert live([grandchild]) == [grandchild]
        assert not child.done.done()       # the grandchild still holds the pipes
        await child.kill(0.5)
        return grandchild
    grandchild = run(main())
    assert live([grandchild]) == []


def test_send_signal_reaches_the_group(run):
    async def main():
        output = Collected()
        child = spawn(launch([PY, "-c", "import signal, sys, time\n"
                              "signal.signal(signal.SIGUSR1, lambda *a: (print('usr1', flush=True), sys.exit(7)))\n"
                              "print('ready', flush=True)\ntime.sleep(30)"]), output)
        # The whole line: unbuffered (PYTHONUNBUFFERED), print writes "ready" and its newline
        # apart, and a signal between the two would cut the line short.
        assert await wait_until(lambda: b"ready\n" in output.out)
        assert child.send_signal(signal.SIGUSR1)
        return await child.done, output.out
    assert run(main()) == (7, b"ready\nusr1\n")


def test_a_second_kill_can_only_shorten_the_grace(run):
    async def main():
        child = spawn(launch(["sh", "-c", "trap '' TERM; sleep 60"]), Collected())
        await asyncio.sleep(0.1)
        first = child.kill(30)
        started = time.monotonic()
        second = child.kill(0.2)
        assert first is second
        await first
        return time.monotonic() - started
    assert run(main()) < 5


# -- capture, spool, progress --------------------------------------------------------------------------


def test_capture_keeps_head_and_tail_and_counts_everything():
    cap = Capture(10)
    for chunk in (b"abc", b"defgh", b"ijklmnop", b"qrstuvwxyz"):
        cap.feed(chunk)
    assert cap.total == 26 and cap.truncated
    text = cap.text()
    assert text.startswith("abcde") and text.endswith("vwxyz")
    assert "16 bytes omitted" in text and "26 bytes in total" in text


def test_capture_untruncated_is_exact():
    cap = Capture(10)
    cap.feed(b"0123")
    cap.feed(b"456789")
    assert not cap.truncated and cap.text() == "0123456789"
    big = Capture(1 << 20)
    for _ in range(100):
        big.feed(b"x" * 100_000)
    assert big.total == 10_000_000
    assert len(big.head) + big.tail_size <= (1 << 20) + 100_000


def test_capture_of_zero_counts_only():
    cap = Capture(0)
    cap.feed(b"abc")
    assert cap.total == 3 and cap.truncated and "3 bytes omitted" in cap.text()


def test_spool_is_a_ring_addressed_by_offsets():
    spool = Spool(limit=10)
    try:
        spool.write(b"0123456")
        assert spool.read(0, 100) == (0, b"0123456")
        spool.write(b"789abcd")              # wraps: 14 written, the last 10 kept
        assert spool.total == 14 and spool.start == 4
        assert spool.read(0, 100) == (4, b"456789abcd")
        assert spool.read(8, 3) == (8, b"89a")
        assert spool.read(14, 5) == (14, b"")
        spool.write(b"Z" * 25)               # more than the ring in one write
        assert spool.total == 39 and spool.read(0, 100) == (29, b"Z" * 10)
    finally:
        spool.close()
    assert spool.read(0, 10)[1] == b""          # closed: nothing is held any more


def test_utf8_boundary_never_cuts_a_character():
    text = "aé€😀".encode()
    for end in range(len(text) + 1):
        cut = _utf8_boundary(text[:end])
        text[:cut].decode()                 # never raises
        assert end - cut < 4


class FakeContext:
    def __init__(self):
        self.sent = []

    def report_progress(self, progress, total=None, message=None):
        self.sent.append((progress, message))


def test_progress_lines_are_batched_and_carry_new_lines(run):
    async def main():
        ctx = FakeContext()
        lines = ProgressLines(ctx, asyncio.get_running_loop())
        lines.feed(1, b"one\ntw")
        lines.feed(2, b"oops\n")
        lines.feed(1, b"o\n")
        assert ctx.sent == []                 # batched: nothing before the interval
        await asyncio.sleep(processes.PROGRESS_INTERVAL * 2)
        lines.feed(1, b"three\n")
        lines.close()
        return ctx.sent
    sent = run(main())
    assert sent[0][1] == "one\n[stderr] oops\ntwo"
    assert sent[1][1] == "three"
    assert sent[0][0] < sent[1][0]


# -- the registry -----------------------------------------------------------------------------------------


def test_the_registry_caps_running_processes(run):
    async def main():
        reg = ProcessRegistry(Policy(), max_processes=1, kill_grace=0.5)
        first = reg.spawn(launch(["sleep", "30"]), Collected())
        with pytest.raises(ProcessLimitError, match="max_processes = 1"):
            reg.spawn(launch(["true"]), Collected())
        await first.kill(0.5)
        second = reg.spawn(launch(["true"]), Collected())
        await second.done
        await reg.shutdown()
    run(main())


def test_registry_shutdown_stops_every_tree(run):
    async def main():
        reg = ProcessRegistry(Policy(), kill_grace=5.0)
        fg = reg.spawn(launch(["sh", "-c", "trap '' TERM; sleep 60 & sleep 60"]), Collected())
        bg = reg.start_background(launch(["sh", "-c", "sleep 60 & sleep 60"]))
        assert await wait_until(lambda: len(tree_members(fg.pid)) >= 2 and len(tree_members(bg.child.pid)) >= 2)
        tree = list(tree_members(fg.pid)) + list(tree_members(bg.child.pid))
        started = time.monotonic()
        await reg.shutdown()
        took = time.monotonic() - started
        with pytest.raises(ProcessLimitError):
            reg.spawn(launch(["true"]), Collected())
        return tree, took
    tree, took = run(main())
    assert live(tree) == []
    assert took < processes.SHUTDOWN_GRACE + 2.5    # not the 5 s kill_grace


def test_background_output_goes_to_the_spool_and_old_entries_are_forgotten(run, monkeypatch):
    monkeypatch.setattr(registry, "FINISHED_KEPT", 2)

    async def main():
        reg = ProcessRegistry(Policy())
        entries = []
        for i in range(4):
            entry = reg.start_background(launch(["echo", f"run {i}"]))
            await entry.child.done
            entries.append(entry)
        kept = list(reg.background)
        assert entries[-1].spool.read(0, 100) == (0, b"run 3\n")
        assert entries[-1].info()["status"] == "exited"
        await reg.shutdown()
        return kept
    # At the 4th start, three had finished: the oldest was forgotten, two kept.
    assert run(main()) == ["p2", "p3", "p4"]


def test_a_finished_tree_is_never_signalled_again(run):
    # Its pid and group id may belong to a stranger by now.
    async def main():
        child = spawn(launch(["true"]), Collected())
        await child.done
        assert child._tree_gone
        assert child.send_signal(signal.SIGTERM) is False
        await child.kill(0.1)            # a kill after the end is harmless and immediate
        return child.returncode
    assert run(main()) == 0


def test_the_mechanisms_import_nothing_from_the_api():
    # Process mechanics, command security and /proc sit below the API: the tools built on
    # them (bemcp/builtins/) import them, never the other way round.
    import ast
    import pathlib
    root = pathlib.Path(processes.__file__).parent.parent
    api = ("bemcp.server", "bemcp.tools", "bemcp.plugins", "bemcp.builtins")
    sources = [*root.glob("processes/*.py"), *root.glob("security/*.py"), root / "procfs.py"]
    offenders = []
    for path in sources:
        package = ["bemcp"] if path.parent == root else ["bemcp", path.parent.name]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = ".".join(package[:len(package) - node.level + 1] if node.level else [])
                module = ".".join(filter(None, (module, node.module)))
                # bemcp's root is the API; its submodules (procfs, _core) are not.
                names = [f"{module}.{a.name}" for a in node.names if module == "bemcp" and not (
                    (root / f"{a.name}.py").exists() or (root / a.name).is_dir())] + [module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names
                          if n.startswith(api) or n.startswith("bemcp.") and n.count(".") == 1
                          and not ((root / f"{n[6:]}.py").exists() or (root / n[6:]).is_dir())]
    assert len(sources) >= 11 and offenders == []
