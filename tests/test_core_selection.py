"""Which core runs: a normal install uses the compiled one (tests/test_twins.py compares them)."""

import os
import subprocess
import sys

import pytest

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

