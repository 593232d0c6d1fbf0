"""All five bundled plugins load from an installed wheel in a fresh virtual environment.

Builds the wheel from a copy of the source tree (so a build never touches the working
tree), installs it into a new venv (its dependencies come from the package index or
pip's cache), then runs `bemcp plugins` and `bemcp serve` from that venv, in a directory
where the source tree cannot be imported by accident, and calls a tool of every plugin.
"""

import glob
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from stdio_client import ServerProcess

SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = ["sysinfo", "files", "http", "git", "search"]

pytestmark = pytest.mark.slow


def run(*cmd, cwd=None, env=None, timeout=900):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def venv_env(venv):
    """The environment of a shell that activated ``venv``, without anything pointing at the source tree."""
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    # Emptied rather than removed, as ServerProcess merges its env into os.environ.
    env.update(PYTHONPATH="", BEMCP_NO_PLUGINS="", BEMCP_NO_EXTENSIONS="", VIRTUAL_ENV=str(venv))
    env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
    env["no_proxy"] = env["NO_PROXY"] = "*"
    return env


def _has_build_tools():
    import importlib.util
    if importlib.util.find_spec("Cython") is None or importlib.util.find_spec("setuptools") is None:
        return False
    from importlib.metadata import version
    return int(version("setuptools").split(".")[0]) >= 69


_BUILT = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.html",
                                "tests", "benches", ".pytest_cache", ".venv", "bemcp-sandbox-exec")


def _not_in_a_checkout(directory, names):
    """Build products: what a clean checkout lacks (the sandbox helper's C source stays)."""
    ignored = set(_BUILT(directory, names))
    if os.path.basename(directory) == "_core":   # Cython's generated C
        ignored.update(name for name in names if name.endswith(".c"))
    return ignored


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(SOURCE, src, ignore=_not_in_a_checkout)
    wheels = base / "wheels"
    # Build with this environment's Cython and setuptools when it has them (quick, offline);
    # otherwise (a CI venv made by `pip install -e .`) in pip's isolated build environment.
    isolation = ["--no-build-isolation"] if _has_build_tools() else []
    run(sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", *isolation, "-w", str(wheels), "-q")
    (wheel,) = glob.glob(str(wheels / "bemcp-*.whl"))
    venv = base / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = str(venv / "bin" / "python")
    # The wheel by path (never a same-named package from an index); its dependencies as pip finds them.
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", wheel)
    work = base / "work"
    work.mkdir()
    return venv, work


def test_wheel_ships_the_bundled_plugins_and_they_load(installed):
    venv, work = installed
    env = venv_env(venv)
    where = run(str(venv / "bin" / "python"), "-c",
                "import bemcp, bemcp_plugins; print(bemcp.__file__); print(bemcp_plugins.__file__)",
                cwd=work, env=env).split()
    site = os.path.join(str(venv), "lib")
    assert all(path.startswith(site) for path in where), where
    out = run(str(venv / "bin" / "bemcp"), "plugins", "--json", cwd=work, env=env)
    snap = orjson.loads(out)
    assert [(p["name"], p["source"], p["status"]) for p in snap["plugins"]] == \
        [(name, "bundled", "loaded") for name in BUNDLED]


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"hello": "wheel"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_every_plugin_answers_through_the_installed_server(installed):
    venv, work = installed
    (work / "notes.txt").write_text("alpha\nneedle here\n")
    git_env = dict(os.environ, GIT_AUTHOR_NAME="A", GIT_AUTHOR_EMAIL="a@example.invalid",
                   GIT_COMMITTER_NAME="A", GIT_COMMITTER_EMAIL="a@example.invalid", GIT_CONFIG_GLOBAL=os.devnull)
    for args in (["init", "-q"], ["add", "notes.txt"], ["commit", "-q", "-m", "from the wheel test"]):
        subprocess.run(["git", *args], cwd=work, env=git_env, check=True, capture_output=True)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with ServerProcess(command=[str(venv / "bin" / "bemcp"), "serve", "--no-log-files"],
                           env=venv_env(venv), cwd=str(work)) as server:
            server.initialize()
            tools = {t["name"] for t in server.request("tools/list")["result"]["tools"]}
            assert {"sysinfo_overview", "files_read", "http_request", "git_log", "search_text"} <= tools

            def ok(name, **args):
                result = server.call_tool(name, args, timeout=30)["result"]
                assert not result.get("isError"), result
                return result

            assert ok("sysinfo_overview")["structuredContent"]["cpu"]["logical"] >= 1
            assert ok("files_read", path="notes.txt")["content"][0]["text"] == "alpha\nneedle here\n"
            url = f"http://127.0.0.1:{httpd.server_address[1]}/"
            assert ok("http_request", url=url)["structuredContent"]["json"] == {"hello": "wheel"}
            log = ok("git_log")["structuredContent"]
            assert log["commits"][0]["subject"] == "from the wheel test"
            found = ok("search_text", pattern="needle")["structuredContent"]["matches"]
            assert [(m["path"], m["line"]) for m in found] == [("notes.txt", 2)]
            assert server.close() == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_the_installed_sandbox_helper_confines_commands(installed, tmp_path):
    """The wheel carries the exec helper, built from source, and `--sandbox` uses it."""
    venv, work = installed
    (helper,) = glob.glob(str(venv / "lib" / "python*" / "site-packages" / "bemcp" / "security" /
                               "bemcp-sandbox-exec"))
    assert os.access(helper, os.X_OK)
    root = work / "sandboxed"
    root.mkdir(exist_ok=True)
    (tmp_path / "secret.txt").write_text("secret")
    with ServerProcess(command=[str(venv / "bin" / "bemcp"), "serve", "--sandbox", "--root", str(root),
                                "--no-plugins", "--no-log-files"], env=venv_env(venv), cwd=str(root)) as server:
        server.initialize()
        out = server.call_tool("run_command", {"command": ["cat", str(tmp_path / "secret.txt")]},
                               timeout=30)["result"]["structuredContent"]
        assert out["exit_code"] != 0 and "Permission denied" in out["stderr"], out
        out = server.call_tool("run_command", {"command": ["ls"]}, timeout=30)["result"]["structuredContent"]
        assert out["exit_code"] == 0, out
        status = server.call_tool("server_status", {}, timeout=30)["result"]["structuredContent"]
        assert status["sandbox"]["spawner"] == "vfork"   # the compiled spawner was built and shipped
        assert server.close() == 0
