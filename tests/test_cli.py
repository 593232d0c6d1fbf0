"""The `bemcp` command: --version, tools, and `python -m bemcp` being the same program."""

import os
import subprocess
import sys

import orjson
import pytest

import bemcp

BEMCP = os.path.join(os.path.dirname(sys.executable), "bemcp")


def run(*argv, module=False):
    command = [sys.executable, "-m", "bemcp", *argv] if module else [BEMCP, *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture(params=["script", "module"])
def bemcp_cmd(request):
    """`bemcp` the console script, and `python -m bemcp`."""
    return lambda *argv: run(*argv, module=request.param == "module")


def test_console_script_is_installed():
    assert os.access(BEMCP, os.X_OK), BEMCP


def test_version(bemcp_cmd):
    out = bemcp_cmd("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"bemcp {bemcp.__version__}"


def test_tools_lists_echo(bemcp_cmd):
    out = bemcp_cmd("tools")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "echo(text: string)" in lines
    assert lines[lines.index("echo(text: string)") + 1].strip().startswith("Return the text unchanged")


def test_tools_json(bemcp_cmd):
    out = bemcp_cmd("tools", "--json")
    assert out.returncode == 0, out.stderr
    tools = orjson.loads(out.stdout)
    names = [t["name"] for t in tools]
    assert names == sorted(names) and "echo" in names
    echo = tools[names.index("echo")]
    assert echo["inputSchema"]["required"] == ["text"]


def test_tools_summary_is_the_whole_first_paragraph():
    """A docstring's first sentence may wrap; `bemcp tools` shows it unwrapped, not cut at a line end."""
    listing = run("tools").stdout.splitlines()
    for tool in orjson.loads(run("tools", "--json").stdout):
        first = " ".join(tool.get("description", "").strip().split("\n\n")[0].split())
        heads = [i for i, line in enumerate(listing) if line.startswith(tool["name"] + "(")]
        assert first, f"{tool['name']} has no description"   # every built-in and bundled tool has one
        assert len(heads) == 1, tool["name"]
        assert listing[heads[0] + 1] == "    " + first


@pytest.mark.parametrize("argv", [["tools"], ["tools", "--json"], ["plugins"]])
def test_closed_stdout_pipe_ends_quietly(argv):
    """`bemcp tools | head`: a reader that leaves early gets no traceback on stderr."""
    r, w = os.pipe()
    os.close(r)                  # nobody will ever read: the first write fails with EPIPE
    try:
        proc = subprocess.run([BEMCP, *argv], stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == 141     # 128 + SIGPIPE, what a shell shows for a piped-away command


def test_script_and_module_print_the_same():
    for argv in (["--version"], ["tools"], ["--help"]):
        script, module = run(*argv), run(*argv, module=True)
        assert (script.returncode, script.stdout) == (module.returncode, module.stdout), argv


def test_no_command_prints_help_and_fails(bemcp_cmd):
    out = bemcp_cmd()
    assert out.returncode == 2
    assert "serve" in out.stdout and "tools" in out.stdout


def test_bad_flag_is_a_usage_error(bemcp_cmd):
    out = bemcp_cmd("serve", "--timeout", "soon")
    assert out.returncode == 2 and "--timeout" in out.stderr


def test_serve_via_module_answers_initialize(spawn):
    # `python -m bemcp serve` is what ServerProcess spawns; the console script serves the same way.
    from stdio_client import ServerProcess
    for server in (spawn(), ServerProcess(command=[BEMCP, "serve"])):
        try:
            result = server.initialize()["result"]
            assert result["serverInfo"]["name"] == "bemcp"
            assert server.call_tool("echo", {"text": "cli"})["result"]["content"][0]["text"] == "cli"
        finally:
            assert server.close() == 0
