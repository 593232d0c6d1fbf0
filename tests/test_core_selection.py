"""Which core runs: a normal install uses the compiled one; the twins look alike."""

import asyncio
import os
import subprocess
import sys

import pytest

from _twins import load_core

from bemcp.logs.files import LogFiles

SELECTED = "import bemcp, bemcp._core as c; print(bemcp.USE_EXTENSIONS, c.Dispatcher.__module__)"


def selected_core(no_extensions):
    env = {k: v for k, v in os.environ.items() if k != "BEMCP_NO_EXTENSIONS"}
    if no_extensions is not None:
        env["BEMCP_NO_EXTENSIONS"] = no_extensions
    out = subprocess.run([sys.executable, "-c", SELECTED], env=env, capture_output=True,
                         text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.compiled
def test_a_normal_install_runs_the_compiled_core():
    # An optional build that silently fell back to the twins must fail here.
    assert selected_core(None) == ["True", "bemcp._core._dispatch"]


def test_bemcp_no_extensions_selects_the_pure_twins():
    assert selected_core("1") == ["False", "bemcp._core._dispatch_py"]


@pytest.mark.compiled
def test_an_empty_bemcp_no_extensions_keeps_the_compiled_core():
    assert selected_core("") == ["True", "bemcp._core._dispatch"]


def _closed(writer):
    writer.close()
    return writer


def _public(obj):
    return {name for name in dir(obj) if not name.startswith("_")}


@pytest.mark.compiled
def test_twins_have_the_same_public_surface(tmp_path):
    loop = asyncio.new_event_loop()
    try:
        makers = {
            "Dispatcher": lambda k: k.Dispatcher(loop, None, 100),
            "ToolSlot": lambda k: k.ToolSlot("n", None, None, None),
            "Framer": lambda k: k.Framer(10),
            "Oversized": lambda k: k.Oversized(1, b"x"),
            "InFlightTable": lambda k: k.InFlightTable(loop),
            "Request": lambda k: k.InFlightTable(loop).open(1, "m", None, None),
            "TaskWriter": lambda k: _closed(k.TaskWriter(LogFiles(str(tmp_path)), 1, b"k" * 16, 1)),
        }
        c, py = load_core("c"), load_core("py")
        for name, make in makers.items():
            assert _public(make(c)) == _public(make(py)), name
        for name in ("STATE_NAMES", "STATE_RUNNING", "STATE_REJECTED", "HEAD_SIZE"):
            assert getattr(c, name) == getattr(py, name), name
        for name in ("STATUS", "DIGEST_CACHE"):
            assert getattr(c.modules["_tasklog"], name) == getattr(py.modules["_tasklog"], name), name
    finally:
        loop.close()
