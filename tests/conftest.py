"""Shared fixtures: the two twins of the core, spawned servers, and leak checks.

- ``core``: the compiled core and its pure-Python twin, for contract tests that
  import the twins explicitly (tests are the one place allowed to). An async test
  that takes it runs on both event loops, asyncio's and uvloop's, and must end
  with no task left behind.
- ``twin_env``: the environment that makes a spawned server run one twin; every
  end-to-end test that takes it runs against both.
- ``spawn``: start a server on real pipes (``bemcp serve`` or a script under
  tests/servers/) with that environment; every server is closed at teardown.
- an autouse check that each test leaves no child process and no open fd behind.
"""

import asyncio
import gc
import os
import subprocess
import sys
import time

import psutil
import pytest
import pytest_asyncio
import uvloop

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from _twins import load_core  # noqa: E402
from stdio_client import ServerProcess  # noqa: E402

SERVERS = os.path.join(TESTS, "servers")

# -- the twins of the core, in-process ----------------------------------------------


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_asyncio_loop_factories(config, item):
    """The core's contract tests run on both loops; other async tests on asyncio's."""
    if "core" in getattr(item, "fixturenames", ()):
        return LOOPS
    return {"asyncio": LOOPS["asyncio"]}


@pytest_asyncio.fixture(params=[pytest.param("c", marks=pytest.mark.compiled), "py"])
async def core(request):
    """Both twins of the core: the compiled modules ("c") and the pure-Python ones ("py")."""
    yield load_core(request.param)
    # Every test ends with no task left behind (a request's work always ends).
    for _ in range(10):
        await asyncio.sleep(0)
    left = asyncio.all_tasks() - {asyncio.current_task()}
    assert not left, left


# -- spawned servers, both twins --------------------------------------------------------


@pytest.fixture(params=[pytest.param("compiled", marks=pytest.mark.compiled), "pure"])
def twin_env(request, tmp_path_factory):
    """Environment for a spawned server: the compiled core or the pure twins.

    An empty BEMCP_NO_EXTENSIONS selects the compiled core even when the suite
    itself runs with BEMCP_NO_EXTENSIONS=1. Log files land in a temporary directory.
    """
    state = tmp_path_factory.mktemp("state")
    env = {"BEMCP_NO_EXTENSIONS": "" if request.param == "compiled" else "1",
           "XDG_STATE_HOME": str(state)}
    _check_twin(request.param, env["BEMCP_NO_EXTENSIONS"])
    return env


_TWINS_CHECKED = {}


def _check_twin(name, no_extensions):
    """Once per run: a server spawned with this environment really runs that twin."""
    if name not in _TWINS_CHECKED:
        env = dict(os.environ, BEMCP_NO_EXTENSIONS=no_extensions)
        out = subprocess.run([sys.executable, "-c", "import bemcp; print(bemcp.USE_EXTENSIONS)"],
                             env=env, capture_output=True, text=True, timeout=60)
        _TWINS_CHECKED[name] = out.stdout.strip()
    expected = "True" if name == "compiled" else "False"
    if _TWINS_CHECKED[name] != expected:
        pytest.fail(f"a spawned server would not run the {name} core (USE_EXTENSIONS={_TWINS_CHECKED[name]!r})")


@pytest.fixture
def spawn(twin_env):
    """``spawn(*serve_args, script=None, env=None, command=None)``: a ServerProcess on real pipes.

    Without ``script`` it runs ``python -m bemcp serve *serve_args``; with one, the
    named script under tests/servers/ gets the arguments; ``command`` runs a whole
    command line instead. Closed at teardown.
    """
    started = []

    def start(*args, script=None, env=None, command=None, **kwargs):
        full_env = dict(twin_env)
        if env:
            full_env.update(env)
        if script is not None:
            command = [sys.executable, os.path.join(SERVERS, script), *args]
        server = ServerProcess(*args, command=command, env=full_env, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.returncode is None or not server.proc.stdout.closed:
            server.close()


# -- leak checks ------------------------------------------------------------------------


def _fd_table():
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the listing's own fd, closed already
    return fds


@pytest.fixture(scope="session", autouse=True)
def _process_globals():
    """Allocate what lives as long as the process before the first leak check.

    libuv opens its signal pipe once per process, on the first uvloop loop.
    """
    import uvloop
    uvloop.new_event_loop().close()


@pytest.fixture(autouse=True)
def no_leaks(_process_globals):
    """After each test: no child process left, and the open fd count back where it was."""
    me = psutil.Process()
    before = _fd_table()
    yield
    deadline = time.monotonic() + 3.0
    children = me.children(recursive=True)
    while children and time.monotonic() < deadline:
        time.sleep(0.02)
        children = [c for c in me.children(recursive=True) if _unreaped(c)]
    if children:
        described = [_describe(c) for c in children]
        for child in children:
            try:
                child.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(children, timeout=2)
        pytest.fail(f"test left child processes behind: {described}")
    after = _fd_table()
    deadline = time.monotonic() + 1.0
    while len(after) != len(before) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.02)
        after = _fd_table()
    if len(after) != len(before):
        opened = {fd: path for fd, path in after.items() if before.get(fd) != path}
        closed = {fd: path for fd, path in before.items() if after.get(fd) != path}
        pytest.fail(f"open fds went from {len(before)} to {len(after)}: new {opened}, gone {closed}")


def _unreaped(proc):
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            # A zombie is a child nobody waited for: a leak unless its Popen is reaped soon.
            return True
        return proc.is_running()
    except psutil.NoSuchProcess:
        return False


def _describe(proc):
    try:
        return f"pid {proc.pid} {proc.status()} {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {proc.pid}"
