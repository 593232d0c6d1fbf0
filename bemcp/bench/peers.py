"""What `bemcp bench` measures: the peers it knows (installed on demand into a cache
directory) and the targets a user names with ``--target NAME=COMMAND`` or ``NAME=URL``."""

import importlib.util
import os
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata

import orjson

from . import EXTRA_PEERS, PEERS

SERVERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "servers")
PYTHON = sys.executable

FASTMCP_VERSION = "4.1.6"
# fastmcp's own requirements (its `client` and `server` extras) but for certifi, which it
# pins newer than some registries serve: the fallback when a plain install fails.
FASTMCP_DEPS = ["mcp>=2.3.0,<3", "mcp-types>=2.0.0,<3", "platformdirs>=4.0.0", "pydantic-settings>=2.0.0",
                "pydantic[email]>=2.12.0", "python-dotenv>=1.1.0", "rich>=13.9.4", "typing-extensions>=4.0.0",
                "authlib>=1.6.11", "exceptiongroup>=1.2.2", "httpx2>=2.5.0", "opentelemetry-api>=1.28.0",
                "py-key-value-aio[filetree,memory]>=0.4.4,<0.5.0", "starlette>=1.0.1", "cyclopts>=4.0.0",
                "griffelib>=2.0.0", "joserfc>=1.5.0", "jsonref>=1.1.0", "jsonschema-path>=0.3.4",
                "openapi-pydantic>=0.6.0", "packaging>=24.0", "pyperclip>=1.9.0", "python-multipart>=0.0.26",
                "pyyaml>=6.0,<7.0", "uncalled-for>=0.4.0", "uvicorn>=0.35", "watchfiles>=1.0.0",
                "websockets>=15.0.1", "certifi"]


class Unavailable(Exception):
    """A peer that cannot be installed or started here, and why."""


@dataclass
class Target:
    """A server to measure: how to start it (``argv``), or where it listens (``url``), or both."""

    name: str
    argv: list = None
    url: str = None
    env: dict = field(default_factory=dict)
    cwd: str = None
    description: str = ""
    version: str = ""
    canned: bool = False        # answers every line with one fixed line (the floor): answers not checked
    logs_on_argv: list = None   # bemcp: the same server with every log file on ("{log_dir}" is filled in)
    sandbox_argv: list = None   # bemcp: the same server with --sandbox (the shell section runs both)
    notes: list = field(default_factory=list)
    installed_with: str = ""    # the command that installed it, when the bench did

    @property
    def kind(self):
        return "http" if self.url else "stdio"

    def find_pid(self):
        """The process of a URL target the bench did not start (for its memory and CPU), or None."""
        if not self.url:
            return None
        from urllib.parse import urlsplit

        from .client import listening_pid
        return listening_pid(urlsplit(self.url).port or 80)

    def to_json(self):
        return {"kind": self.kind, "command": shlex.join(self.argv) if self.argv else None, "url": self.url,
                "description": self.description, "version": self.version, "canned": self.canned,
                "notes": self.notes, "installed_with": self.installed_with or None}


def parse_target(spec):
    """``NAME=COMMAND`` (a stdio server) or ``NAME=URL`` (a running Streamable HTTP server)."""
    name, sep, rest = spec.partition("=")
    name, rest = name.strip(), rest.strip()
    if not sep or not name or not rest:
        raise ValueError(f"--target wants NAME=COMMAND or NAME=URL, not {spec!r}")
    if rest.startswith(("http://", "https://")):
        if rest.startswith("https://"):
            raise ValueError(f"--target {name}: https is not supported; serve plain HTTP on localhost")
        return Target(name, url=rest, description=f"Streamable HTTP server at {rest}")
    argv = shlex.split(rest)
    if shutil.which(argv[0]) is None and not os.path.exists(argv[0]):
        raise ValueError(f"--target {name}: {argv[0]} not found")
    return Target(name, argv=argv, description=f"`{rest}`")


# -- the peers ----------------------------------------------------------------------------


def resolve(name, cache_dir, log):
    """The Target of peer ``name``, installing it into ``cache_dir`` the first time; Unavailable if it cannot be."""
    makers = {"floor": _floor, "floor-batched": _floor_batched, "bemcp": lambda c, l: _bemcp(False), "bemcp-py": lambda c, l: _bemcp(True),
              "bemcp-http": _bemcp_http, "sdk": _sdk, "sdk-http": _sdk_http, "fastmcp": _fastmcp, "ts": _ts, "uvloop": _uvloop}
    if name not in makers:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS + EXTRA_PEERS)}")
    return makers[name](cache_dir, log)


def _floor(cache_dir, log):
    return Target("floor", [PYTHON, os.path.join(SERVERS, "floor.py")], canned=True,
                  description="a Python process writing one canned echo answer per line read "
                              "(no parsing, no event loop): the yardstick, its answers not checked")


def _floor_batched(cache_dir, log):
    return Target("floor-batched", [PYTHON, os.path.join(SERVERS, "floor.py"), "--batched"], canned=True,
                  description="the floor answering all the lines of a read with one write: the least a "
                              "server that coalesces its writes could cost; its answers not checked")


def _bemcp(pure):
    import bemcp
    serve = [PYTHON, "-m", "bemcp", "serve", "--plugins-dir", os.path.join(SERVERS, "plugins"),
             "--plugin", "bench_tools"]
    env = {"BEMCP_NO_EXTENSIONS": "1" if pure else None, "BEMCP_NO_PLUGINS": None}
    notes = []
    if not pure and not _compiled_core_built():
        notes.append("compiled core not built: this row ran the pure twins")
    what = "pure-Python twins (BEMCP_NO_EXTENSIONS=1)" if pure else "compiled core"
    return Target("bemcp-py" if pure else "bemcp", serve + ["--no-log-files"], env=env,
                  version=bemcp.__version__, logs_on_argv=serve + ["--log-dir", "{log_dir}"], notes=notes,
                  sandbox_argv=serve + ["--no-log-files", "--sandbox"],
                  description=f"`bemcp serve --no-log-files`, {what}, with the bench's tools as a plugin "
                              "(a sleep, a prompt, two resources, a tool that asks the user)")


def _bemcp_http(cache_dir, log):
    import bemcp
    port = free_port()
    notes = [] if _compiled_core_built() else ["compiled core not built: this row ran the pure twins"]
    return Target("bemcp-http", [PYTHON, "-m", "bemcp", "serve", "--plugins-dir", os.path.join(SERVERS, "plugins"),
                                 "--plugin", "bench_tools", "--no-log-files", "--http", f"127.0.0.1:{port}"],
                  url=f"http://127.0.0.1:{port}/mcp", env={"BEMCP_NO_EXTENSIONS": None, "BEMCP_NO_PLUGINS": None},
                  version=bemcp.__version__, notes=notes,
                  description="`bemcp serve --no-log-files --http`, compiled core, Streamable HTTP "
                              "(handshake-era sessions), with the bench's tools as a plugin")


def _compiled_core_built():
    proc = subprocess.run([PYTHON, "-c", "import bemcp; print(bemcp.USE_EXTENSIONS)"], capture_output=True,
                          text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "BEMCP_NO_EXTENSIONS"})
    return proc.stdout.strip() == "True"


def sdk_python(cache_dir, log):
    """A Python with the official SDK: this one if it has it (the bench extra), else a venv in the cache."""
    if importlib.util.find_spec("mcp") is not None and importlib.util.find_spec("mcp.server.mcpserver"):
        return PYTHON, metadata.version("mcp"), ""
    python, command = _venv(cache_dir, "sdk", [["mcp>=2.3"]], log)
    return python, _version_in(python, "mcp"), command


def _sdk(cache_dir, log):
    python, version, command = sdk_python(cache_dir, log)
    return Target("sdk", [python, os.path.join(SERVERS, "sdk_server.py")], version=version, installed_with=command,
                  description=f"official Python SDK {version} (MCPServer), stdio")


def _sdk_http(cache_dir, log):
    python, version, command = sdk_python(cache_dir, log)
    port = free_port()
    return Target("sdk-http", [python, os.path.join(SERVERS, "sdk_server.py"), "--http", str(port)],
                  url=f"http://127.0.0.1:{port}/mcp", version=version, installed_with=command,
                  description=f"official Python SDK {version} (MCPServer), Streamable HTTP "
                              "(stateless, JSON answers) under uvicorn")


def _fastmcp(cache_dir, log):
    python, command = _venv(cache_dir, f"fastmcp-{FASTMCP_VERSION}",
                            [[f"fastmcp=={FASTMCP_VERSION}"],
                             # fallback: its requirements, then fastmcp itself without them
                             FASTMCP_DEPS, ["--no-deps", f"fastmcp=={FASTMCP_VERSION}",
                                            f"fastmcp-slim[client,server]=={FASTMCP_VERSION}"]], log)
    return Target("fastmcp", [python, os.path.join(SERVERS, "fastmcp_server.py")], installed_with=command,
                  version=FASTMCP_VERSION, description=f"fastmcp {FASTMCP_VERSION} (FastMCP), stdio")


def _uvloop(cache_dir, log):
    return Target("uvloop", [PYTHON, os.path.join(SERVERS, "uvloop_echo.py")],
                  description="reference: a plain uvloop echo server with no validation or bookkeeping "
                              "(echo only)")


def _ts(cache_dir, log):
    node, home, wanted, command = ts_sdk(cache_dir, log, "ts_server.mjs")
    return Target("ts", [node, os.path.join(home, "ts_server.mjs")], version=wanted, installed_with=command,
                  description=f"official TypeScript SDK {wanted} (McpServer) on node "
                              f"{_output([node, '--version'])}, stdio")


def ts_sdk(cache_dir, log, script):
    """The TypeScript SDK installed in the cache (once), with servers/``script`` copied next to its
    node_modules: (node, that directory, the SDK version, the install command); Unavailable without node."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise Unavailable("node and npm are needed for the TypeScript SDK (not found on PATH)")
    with open(os.path.join(SERVERS, "package.json"), "rb") as f:
        wanted = orjson.loads(f.read())["dependencies"]["@modelcontextprotocol/sdk"]
    home = os.path.join(cache_dir, f"ts-{wanted}")
    command = f"cd {shlex.quote(home)} && npm ci --no-audit --no-fund --loglevel=error"
    marker = os.path.join(home, ".installed")
    if not os.path.exists(marker):
        os.makedirs(home, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(os.path.join(SERVERS, name), home)
        log(f"installing the ts peer: {command}")
        _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], home, "npm ci")
        open(marker, "w").close()
    shutil.copy(os.path.join(SERVERS, script), home)   # next to its node_modules
    return node, home, wanted, command


# -- installing ----------------------------------------------------------------------------


def _venv(cache_dir, name, plans, log):
    """A venv in the cache with ``plans[0]`` installed (or, if that fails, every later plan in turn).

    Returns (its python, the install command shown)."""
    home = os.path.join(cache_dir, name)
    python = os.path.join(home, "bin", "python")
    marker = os.path.join(home, ".installed")
    shown = f"{PYTHON} -m venv {home} && {python} -m pip install {shlex.join(plans[0])}"
    if os.path.exists(marker):
        return python, shown
    log(f"installing the {name} peer: {shown}")
    shutil.rmtree(home, ignore_errors=True)
    _run([PYTHON, "-m", "venv", home], cache_dir, "python -m venv")
    _run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], home, "pip install --upgrade pip")
    try:
        _run([python, "-m", "pip", "install", "-q", *plans[0]], home, "pip install")
    except Unavailable as first:
        if len(plans) == 1:
            raise
        fallback = " && ".join(f"{python} -m pip install {shlex.join(p)}" for p in plans[1:])
        log(f"  {first}; trying: {fallback}")
        for plan in plans[1:]:
            _run([python, "-m", "pip", "install", "-q", *plan], home, "pip install")
        shown = f"{PYTHON} -m venv {home} && {fallback}"
    open(marker, "w").close()
    return python, shown


def _run(argv, cwd, what, timeout=900):
    os.makedirs(cwd, exist_ok=True)
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{what} failed: {exc}") from None
    if proc.returncode:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines()
                 if line.strip() and not line.startswith("WARNING: Location")]
        raise Unavailable(f"{what} failed (status {proc.returncode}): {' / '.join(lines[-3:])}")
    return proc.stdout


def _version_in(python, package):
    return _output([python, "-c", f"import importlib.metadata as m; print(m.version({package!r}))"]) or "?"


def _output(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

