"""`bemcp serve --sandbox`: every program it starts is confined by the kernel (Landlock,
no capabilities, a seccomp filter) to the roots and a private temporary directory.

Everything runs through a real `bemcp serve` on pipes, on both twins of the core. The
wall must hold as root too (CI runs these tests as root): root keeps CAP_SYS_ADMIN
unless the helper drops it, and with it /proc/<pid>/environ of every process.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import orjson
import pytest

from bemcp.security.sandbox import ABI_ENV, ETC_SECRETS, etc_entries, kernel_abi
from stdio_client import server_command

PY_DIR = os.path.dirname(sys.executable)
# `python3` in a command is this interpreter (the venv's), found first on the server's PATH.
PATH = PY_DIR + os.pathsep + os.environ.get("PATH", os.defpath)
BASE = ("--no-plugins", "--no-log-files")


@pytest.fixture
def layout(tmp_path):
    """R (the root) with a file, and a secret beside it, outside R."""
    root = tmp_path / "R"
    root.mkdir()
    (root / "inside.txt").write_text("inside\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("the secret\n")
    return root, outside


def start(spawn, root, *args, env=None):
    server = spawn("--sandbox", "--root", str(root), *(args or BASE), cwd=str(root),
                   env=dict(env or {}, PATH=PATH))
    server.initialize()
    return server


def run(server, command, **args):
    response = server.call_tool("run_command", dict(args, command=command), timeout=30)
    assert "result" in response, response
    return response["result"]


def ran(server, command, **args):
    """The structured result of a command that started (whatever its exit status)."""
    result = run(server, command, **args)
    assert "structuredContent" in result, result
    return result["structuredContent"]


def refused(server, command, **args):
    """A command the wall stops: it fails, saying so on its own stderr."""
    out = ran(server, command, **args)
    assert out["exit_code"] != 0, out
    assert "Permission denied" in out["stderr"] or "Operation not permitted" in out["stderr"], out
    return out


def py(code):
    return ["python3", "-c", code]


# -- the wall ----------------------------------------------------------------------------


def test_reads_outside_the_root_fail(spawn, layout):
    root, outside = layout
    secret = str(outside / "secret.txt")
    (root / "link").symlink_to(secret)
    server = start(spawn, root)
    refused(server, ["cat", secret])
    refused(server, ["cat", "link"])                       # a symlink written inside R
    refused(server, ["cat", "/proc/self/root" + secret])  # the root magic link
    refused(server, ["ls", str(root.parent)])              # R's parent
    refused(server, ["cat", "/etc/shadow"])
    refused(server, py(f"open({secret!r}).read()"))
    out = ran(server, ["cat", "inside.txt"])
    assert out["exit_code"] == 0 and out["stdout"] == "inside\n"


def test_writes_outside_the_root_and_its_tmpdir_fail(spawn, layout, tmp_path):
    root, outside = layout
    secret = outside / "secret.txt"
    server = start(spawn, root)
    refused(server, ["touch", str(outside / "new")])
    refused(server, ["truncate", "-s", "0", str(secret)])
    refused(server, ["cp", "inside.txt", "/tmp/bemcp-sandbox-escape"])
    refused(server, py(f"open({str(outside / 'py')!r}, 'w')"))
    # A hard link from outside into R would hand the program the file.
    out = ran(server, ["ln", str(secret), "hard"])
    assert out["exit_code"] != 0 and not (root / "hard").exists(), out
    assert secret.read_text() == "the secret\n" and not (outside / "new").exists()
    assert not os.path.exists("/tmp/bemcp-sandbox-escape")
    # Inside R and in the private TMPDIR, writing works.
    out = ran(server, py("import os, tempfile\n"
                         "open('made.txt', 'w').write('made')\n"
                         "with tempfile.NamedTemporaryFile('w', delete=False) as f: f.write('t')\n"
                         "print(f.name.startswith(os.environ['TMPDIR']), os.environ['HOME'] != "
                         f"{os.path.expanduser('~')!r})"))
    assert out["exit_code"] == 0 and out["stdout"] == "True True\n", out
    assert (root / "made.txt").read_text() == "made"


def _listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


CONNECT = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 5); print('connected')"
BIND = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); print('bound')"
UDP = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9)); print('sent')"


def test_no_network_unless_allowed(spawn, layout):
    root, _ = layout
    with _listener() as listener:
        port = str(listener.getsockname()[1])
        server = start(spawn, root)
        refused(server, ["python3", "-c", CONNECT, port])
        refused(server, py(BIND))
        refused(server, py(UDP))
        server.close()
        server = start(spawn, root, "--sandbox-allow-net", *BASE)
        assert ran(server, ["python3", "-c", CONNECT, port])["stdout"] == "connected\n"
        assert ran(server, py(BIND))["stdout"] == "bound\n"
        assert ran(server, py(UDP))["stdout"] == "sent\n"


def test_what_landlock_does_not_govern_the_filter_refuses(spawn, layout):
    """chown, other socket families and io_uring: the seccomp filter's part of the wall."""
    root, _ = layout
    server = start(spawn, root, "--sandbox-allow-net", *BASE)
    refused(server, py("import os; os.chown('inside.txt', 0, 0)"))
    refused(server, py("import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)"))
    code = ("import ctypes; libc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.syscall(425, 1, ctypes.create_string_buffer(120)), ctypes.get_errno())")
    assert ran(server, py(code))["stdout"] == "-1 38\n"   # io_uring_setup: ENOSYS
    assert ran(server, py("import socket; socket.socket(socket.AF_UNIX); print('unix')"))["stdout"] == "unix\n"


def test_no_abstract_socket_of_the_outside(spawn, layout):
    root, _ = layout
    name = f"\0bemcp-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(name)
        listener.listen(1)
        server = start(spawn, root)
        code = f"import socket; socket.socket(socket.AF_UNIX).connect({name!r}); print('connected')"
        refused(server, py(code))
        # The same connection from outside the sandbox works: the wall made the difference.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(name)


def test_no_signal_to_the_server_or_other_processes(spawn, layout):
    root, _ = layout
    victim = subprocess.Popen(["sleep", "60"])
    try:
        server = start(spawn, root)
        refused(server, ["kill", "-TERM", str(server.proc.pid)])
        refused(server, ["kill", "-TERM", str(victim.pid)])
        refused(server, py(f"import os, signal; os.kill({victim.pid}, signal.SIGKILL)"))
        time.sleep(0.1)
        assert victim.poll() is None and server.proc.poll() is None
        assert ran(server, ["echo", "still here"])["stdout"] == "still here\n"
    finally:
        victim.kill()
        victim.wait()


def test_no_reading_the_servers_environment(spawn, layout):
    """As root, reading /proc/<pid>/environ needs only CAP_SYS_ADMIN past Landlock's
    ptrace check: the helper drops it with every other capability."""
    root, _ = layout
    server = start(spawn, root, env={"BEMCP_TEST_SECRET": "hunter2"})
    out = refused(server, ["cat", f"/proc/{server.proc.pid}/environ"])
    assert "hunter2" not in out["stdout"]
    out = ran(server, ["grep", "^Cap\\|NoNewPrivs\\|Seccomp:", "/proc/self/status"])
    fields = dict(line.split(":\t") for line in out["stdout"].splitlines())
    assert {fields[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == {"0000000000000000"}
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"


def test_background_processes_are_confined_the_same_way(spawn, layout):
    root, outside = layout
    server = start(spawn, root)
    code = (f"import os\n"
            f"for what, act in (('read', lambda: open({str(outside / 'secret.txt')!r}).read()),\n"
            f"                  ('kill', lambda: os.kill({server.proc.pid}, 15)),\n"
            f"                  ('write', lambda: open('bg.txt', 'w').write('bg'))):\n"
            f"    try:\n"
            f"        act(); print(what, 'ok', flush=True)\n"
            f"    except OSError as exc:\n"
            f"        print(what, type(exc).__name__, flush=True)\n")
    started = server.call_tool("process_start", {"command": py(code)})["result"]["structuredContent"]
    deadline = time.monotonic() + 20
    while True:
        read = server.call_tool("process_read", {"id": started["id"], "offset": 0})["result"]
        state = read["structuredContent"]
        if not state["running"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert state["output"].splitlines() == ["read PermissionError", "kill PermissionError", "write ok"], state
    assert (root / "bg.txt").read_text() == "bg" and server.proc.poll() is None


def test_everyday_programs_work(spawn, layout):
    root, _ = layout
    server = start(spawn, root)
    assert "inside.txt" in ran(server, ["ls", "-la"])["stdout"]
    assert ran(server, ["cat", "inside.txt"])["stdout"] == "inside\n"
    env = ran(server, ["/usr/bin/env"])
    assert env["exit_code"] == 0 and "PATH=" in env["stdout"]
    assert "SSH_AUTH_SOCK" not in env["stdout"]
    assert ran(server, py("print(1)"))["stdout"] == "1\n"
    for command in (["git", "init", "-q"], ["git", "status", "--short"]):
        out = ran(server, command)
        assert out["exit_code"] == 0, out
    assert ran(server, ["git", "status", "--short"])["stdout"] == "?? inside.txt\n"


def test_a_program_outside_the_wall_does_not_start(spawn, layout):
    """As a shell says it: a line on the command's stderr, exit status 126."""
    root, outside = layout
    tool = outside / "tool"
    tool.write_bytes(open("/bin/true", "rb").read())
    tool.chmod(0o755)
    server = start(spawn, root)
    out = refused(server, [str(tool)])
    assert out["exit_code"] == 126 and f"cannot run {tool}: Permission denied" in out["stderr"], out
    assert ran(server, ["true"])["exit_code"] == 0


def test_the_shell_runs_inside_the_wall(spawn, layout):
    root, outside = layout
    server = start(spawn, root, "--shell", *BASE)
    out = ran(server, f"cat {outside}/secret.txt; echo done > shell.txt; cat shell.txt")
    assert "Permission denied" in out["stderr"] and out["stdout"] == "done\n", out


def test_config_file_turns_it_on(spawn, layout, tmp_path):
    root, outside = layout
    config = tmp_path / "bemcp.toml"
    config.write_text(f"sandbox = true\nroots = [{str(root)!r}]\n")
    server = spawn("--config", str(config), *BASE, cwd=str(root), env={"PATH": PATH})
    server.initialize()
    refused(server, ["cat", str(outside / "secret.txt")])


# -- in-process plugins answer the same ----------------------------------------------------


def test_in_process_plugins_keep_to_the_same_rules(spawn, layout):
    root, outside = layout
    (root / "link").symlink_to(outside / "secret.txt")
    server = start(spawn, root, "--plugin", "files", "--plugin", "http", "--no-log-files")
    result = server.call_tool("files_read", {"path": "link"})["result"]
    assert result["isError"] is True and "outside the allowed roots" in result["content"][0]["text"]
    result = server.call_tool("http_request", {"url": "http://127.0.0.1:9/"})["result"]
    assert result["isError"] is True and "--sandbox-allow-net" in result["content"][0]["text"]
    server.close()
    server = start(spawn, root, "--plugin", "http", "--sandbox-allow-net", "--no-log-files")
    result = server.call_tool("http_request", {"url": "http://127.0.0.1:9/", "timeout": 5})["result"]
    assert "--sandbox-allow-net" not in result["content"][0]["text"]   # tried, not refused


def test_the_git_plugin_runs_git_inside_the_wall(spawn, layout):
    """git status works on a repository inside R; once the repository names a file
    outside R (core.excludesFile), git itself reports that it may not read it."""
    root, outside = layout
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    server = start(spawn, root, "--plugin", "git", "--no-log-files")
    status = server.call_tool("git_status", {})["result"]
    assert not status.get("isError"), status
    assert status["structuredContent"]["untracked"] == ["inside.txt"]
    (outside / "excludes").write_text("inside.txt\n")
    subprocess.run(["git", "-C", str(root), "config", "core.excludesFile", str(outside / "excludes")],
                   check=True)
    plain = subprocess.run(["git", "-C", str(root), "status", "--short"], capture_output=True, text=True)
    assert plain.returncode == 0 and plain.stdout == ""   # outside the wall, git reads it
    status = server.call_tool("git_status", {})["result"]
    assert status["isError"] is True
    assert "excludes': Permission denied" in status["content"][0]["text"], status


# -- visible -------------------------------------------------------------------------------


def test_status_logs_and_tools_say_so(spawn, layout, tmp_path, twin_env):
    root, _ = layout
    logs = tmp_path / "logs"
    server = start(spawn, root, "--no-plugins", "--log-dir", str(logs))
    status = server.call_tool("server_status", {})["result"]["structuredContent"]
    assert status["sandbox"]["sandboxed"] is True and status["sandbox"]["landlock_abi"] >= 6
    assert status["sandbox"]["roots"] == [str(root)] and status["sandbox"]["network"] is False
    # The compiled spawner confines its own vfork child; the pure twins use the exec helper.
    compiled = twin_env["BEMCP_NO_EXTENSIONS"] == ""
    assert status["sandbox"]["spawner"] == ("vfork" if compiled else "exec helper")
    ran(server, ["true"])
    started = server.call_tool("process_start", {"command": ["true"]})["result"]["structuredContent"]
    tools = server.request("tools/list")["result"]["tools"]
    run_command = next(t for t in tools if t["name"] == "run_command")
    assert "sandbox" in run_command["description"]
    assert started["id"]
    assert server.close() == 0
    tasks = [orjson.loads(line) for line in (logs / "tasks.log").read_text().splitlines()]
    by_tool = {t["tool"]: t for t in tasks}
    assert by_tool["run_command"]["sandboxed"] is True and by_tool["run_command"]["exit_code"] == 0
    assert by_tool["process_start"]["sandboxed"] is True
    assert "sandboxed" not in by_tool["server_status"]
    first = orjson.loads((logs / "forensics.log").read_text().splitlines()[0])
    assert first["kind"] == "start" and first["versions"]["sandbox"]["sandboxed"] is True

    listing = subprocess.run([sys.executable, "-m", "bemcp", "tools", "--sandbox", "--root", str(root),
                              "--no-plugins"],
                             capture_output=True, text=True, timeout=60, env=dict(os.environ, PATH=PATH))
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].startswith("# commands run sandboxed (Landlock ABI ")


@pytest.mark.parametrize("flags, line", [(("--sandbox",), "commands run sandboxed (Landlock ABI "),
                                         ((), "commands run without a sandbox")])
def test_the_start_is_logged_with_it(twin_env, layout, flags, line):
    root, _ = layout
    done = subprocess.run(server_command(*flags, "--root", str(root), "--log-level", "info", *BASE),
                          env=dict(os.environ, **twin_env, PATH=PATH), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and line in done.stderr, done.stderr


def test_without_the_flag_commands_are_not_sandboxed(spawn, layout):
    root, outside = layout
    server = spawn("--root", str(root), *BASE)
    server.initialize()
    status = server.call_tool("server_status", {})["result"]["structuredContent"]
    assert status["sandbox"] == {"sandboxed": False}
    assert ran(server, ["cat", str(outside / "secret.txt")])["stdout"] == "the secret\n"


# -- failing closed --------------------------------------------------------------------------


@pytest.mark.parametrize("abi, missing", [("0", "needs Landlock"), ("5", "needs Landlock ABI 6")])
def test_without_landlock_it_refuses_to_start(twin_env, layout, abi, missing):
    root, _ = layout
    env = dict(os.environ, **twin_env, **{ABI_ENV: abi})
    done = subprocess.run(server_command("--sandbox", "--root", str(root), *BASE), env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and missing in lines[0] and "without --sandbox" in lines[0], done.stderr
    # The same server without --sandbox starts (and stops at end of input).
    plain = subprocess.run(server_command("--root", str(root), *BASE), env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0, plain.stderr


def test_the_kernel_offers_what_the_sandbox_needs():
    """CI runs on a kernel with Landlock ABI 6 or later: the tests above test the real thing."""
    assert kernel_abi() >= 6


# -- the rules for /etc ----------------------------------------------------------------------


def test_etc_is_granted_entry_by_entry_less_secrets(tmp_path):
    etc = tmp_path / "etc"
    (etc / "ssh").mkdir(parents=True)
    (etc / "ssl" / "private").mkdir(parents=True)
    (etc / "ssl" / "certs").mkdir()
    (etc / "apt").mkdir()
    for name in ("passwd", "shadow", "hosts", "ssh/ssh_config", "ssh/ssh_host_ed25519_key",
                 "ssh/ssh_host_ed25519_key.pub", "ssl/private/key.pem", "ssl/certs/ca.pem",
                 "apt/sources.list", "private.conf"):
        (etc / name).write_text("x")
    (etc / "private.conf").chmod(0o600)   # not for every user: not for the sandbox either
    (etc / "shadow").chmod(0o644)         # a known secret, whatever its mode says
    (etc / "ssl" / "certs" / "link.pem").symlink_to(etc / "shadow")
    granted = {os.path.relpath(p, etc) for p in etc_entries(str(etc))}
    assert granted == {"passwd", "hosts", "apt", "ssh/ssh_config", "ssh/ssh_host_ed25519_key.pub",
                       "ssl/certs"}
    assert "shadow" in ETC_SECRETS
