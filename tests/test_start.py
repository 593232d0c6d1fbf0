"""A lean start: what `bemcp serve` over stdio imports, its flags, and the collector after start-up.

Checked on a running server (plugins and log files on, as by default) through a plugin
whose tool reports the server's own ``sys.modules`` and collector state; never by timing.
"""

import subprocess
import sys
import textwrap

import pytest

from bemcp.config import Config

# What serving MCP over stdio never needs: argparse (plain flags are parsed without it), the
# HTTP stack, the bench and its plots, the config file's parser (only with --config), the
# sandbox (only with --sandbox), the log reader of `bemcp logs`, psutil (the watchdog reads
# /proc; psutil only on other systems).
NOT_ON_STDIO = ("uvicorn", "starlette", "httptools", "h11", "bemcp.transports.http", "bemcp.bench",
                "matplotlib", "tomllib", "bemcp.security.sandbox", "bemcp.logs.summary", "psutil",
                "mcp", "pydantic", "http.server", "urllib.request", "email", "zipfile", "argparse")

PROBE = '''
    """Reports what the server process has imported, and its collector's state."""
    import gc
    import sys


    def setup(server):
        @server.tool
        def process_state() -> dict:
            "The modules imported so far and the cyclic collector's state."
            return {"modules": sorted(sys.modules), "gc_enabled": gc.isenabled(),
                    "frozen": gc.get_freeze_count()}
'''


@pytest.fixture
def probe_dir(tmp_path):
    directory = tmp_path / "probe"
    directory.mkdir()
    (directory / "probe.py").write_text(textwrap.dedent(PROBE))
    return str(directory)


def _state(server):
    assert "error" not in server.initialize()
    names = [t["name"] for t in server.request("tools/list")["result"]["tools"]]
    assert "echo" in names and "run_command" in names and "files_list" in names   # plugins loaded
    assert server.call_tool("echo", {"text": "hi"})["result"]["content"][0]["text"] == "hi"
    return server.call_tool("process_state")["result"]["structuredContent"]


def test_a_stdio_server_imports_only_what_serving_needs(spawn, probe_dir, tmp_path):
    server = spawn("--plugins-dir", probe_dir, "--log-dir", str(tmp_path / "logs"))
    state = _state(server)
    loaded = set(state["modules"])
    assert "bemcp_plugins.files" in loaded and "bemcp.logs.collector" in loaded   # the probe sees the server
    assert sorted(m for m in loaded if m in NOT_ON_STDIO or m.split(".")[0] in NOT_ON_STDIO) == []
    server.close()
    assert (tmp_path / "logs" / "tasks.log").exists()


def test_the_server_serves_with_the_collector_on(spawn, probe_dir):
    """`import bemcp` pauses the cyclic collector; the server runs with it on."""
    state = _state(spawn("--plugins-dir", probe_dir))
    assert state["gc_enabled"] is True
    assert state["frozen"] == 0   # start-up's objects stay collectable


@pytest.mark.parametrize("before", ["", "gc.disable()", "gc.freeze()"])
def test_importing_bemcp_leaves_the_collector_as_the_program_set_it(before):
    code = (f"import gc\n{before}\nenabled, frozen = gc.isenabled(), gc.get_freeze_count()\n"
            "import bemcp\n"
            "assert gc.isenabled() == enabled, 'collector state changed'\n"
            "assert bool(gc.get_freeze_count()) == bool(frozen), 'frozen objects thawed or others frozen'\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_config_defaults_overrides_and_copies():
    a, b = Config(), Config(timeout=5.0, allow=["git"])
    assert a.timeout == 300.0 and b.timeout == 5.0 and b.allow == ["git"] and a.allow == []
    a.deny.append("rm")
    assert Config().deny == [] and b.deny == []   # a list default is never shared
    assert b.as_dict()["allow"] == ["git"] and b.as_dict()["allow"] is not b.allow
    assert set(a.as_dict()) >= {"timeout", "allow", "plugins", "log_dir"}
    assert Config(timeout=5.0, allow=["git"]) == b and Config() != b
    assert "timeout=5.0" in repr(b)
    with pytest.raises(TypeError, match="no_such_setting"):
        Config(no_such_setting=1)
    with pytest.raises(ValueError, match="unknown setting 'nope'"):
        Config().update({"nope": 1}, source="test")


# -- `bemcp serve`'s flags without argparse ---------------------------------------------------

PLAIN_FLAGS = [
    [],
    ["--log-dir", "/tmp/x", "--plugins-dir", "a", "--plugins-dir=b", "--no-plugins", "--no-log-files"],
    ["--timeout", "2.5", "--max-message-size=1024", "--allow", "git", "--allow", "ls", "--deny=rm", "--shell"],
    ["--root", "/a", "--root=/b c", "--command-timeout", "7", "--max-output", "10", "--max-processes", "3",
     "--sandbox", "--sandbox-allow-net", "--sandbox-read", "/r", "--no-watchdog", "--max-inflight", "8",
     "--max-queued", "9", "--memory-soft-mb", "100", "--memory-hard-mb", "200", "--plugin", "git",
     "--disable-plugin", "files", "--log-level", "debug", "--log-level=error", "--config", "c.toml",
     "--state-key-file", "k", "--http", "8080", "--http-token-file=t", "--http-allow-origin", "http://x"],
    ["--log-dir=", "--timeout=-1", "--log-dir", "a=b", "--timeout", " 3 "],
]
# What only argparse parses (or refuses, with its message): the fast path steps aside.
OTHER_FLAGS = [["--help"], ["-h"], ["--version"], ["--log-d", "x"], ["--timeout", "soon"], ["--timeout"],
               ["--timeout", "-1"], ["--log-dir", "-x"], ["--shell=yes"], ["--log-level", "loud"],
               ["--max-output", "1.5"], ["--nope"], ["serve"], ["-x"], ["--"], ["--log-dir", "a", "extra"]]


def _argparse_serve(argv):
    from bemcp.cli import build_parser
    return vars(build_parser(only="serve").parse_args(["serve", *argv]))


@pytest.mark.parametrize("argv", PLAIN_FLAGS)
def test_plain_serve_flags_parse_as_argparse_parses_them(argv):
    from bemcp.config import parse_serve_flags
    fast = parse_serve_flags(argv)
    assert fast is not None
    assert vars(fast) == _argparse_serve(argv)


@pytest.mark.parametrize("argv", OTHER_FLAGS)
def test_anything_else_is_left_to_argparse(argv):
    from bemcp.config import parse_serve_flags
    assert parse_serve_flags(argv) is None


def test_every_serve_flag_has_a_plain_form():
    """The table behind both parsers: every flag of `bemcp serve --help` is in it."""
    from bemcp.cli import build_parser
    from bemcp.config import FLAGS
    parser = build_parser(only="serve")
    serve = next(a for a in parser._actions if a.dest == "command").choices["serve"]
    flags = {s for a in serve._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    assert flags == {row[0] for rows in FLAGS.values() for row in rows}


def test_a_mistake_in_plain_flags_is_still_a_usage_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bemcp", "serve", "--shell", "--allow", "git",
                          "--log-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("usage: bemcp") and "--allow" in out.stderr
