"""The command policy: string splitting, shell-syntax refusal, allow/deny, launchers,
roots and the environment filter (bemcp/security/). Nothing is spawned here."""

import os
import shutil
import types

import pytest

from bemcp import ToolError
from bemcp.security import Policy, PolicyConfigError, PolicyError, Roots, ShellSyntaxError
from bemcp.security.policy import DEFAULT_ENV_DENY
from bemcp.security.shellwords import split_command
from bemcp_plugins._roots import plugin_roots

# -- splitting command strings -----------------------------------------------------------


@pytest.mark.parametrize("command, words", [
    ("echo hi", ["echo", "hi"]),
    ("  echo   a\tb  ", ["echo", "a", "b"]),
    ("echo 'a b' \"c d\"", ["echo", "a b", "c d"]),
    ("echo 'it''s'", ["echo", "its"]),
    ("echo \"it's\"", ["echo", "it's"]),
    ("echo a\\ b", ["echo", "a b"]),
    ("echo \\|", ["echo", "|"]),
    ("echo '|;&<>$(x)`*?'", ["echo", "|;&<>$(x)`*?"]),
    ("echo \"\\$HOME \\\" \\\\ \\x\"", ["echo", "$HOME \" \\ \\x"]),
    ("echo ''", ["echo", ""]),
    ("echo $", ["echo", "$"]),
    ("echo a$ b", ["echo", "a$", "b"]),
    ("echo a=b", ["echo", "a=b"]),
    ("find . -name x -exec ls {} \\;", ["find", ".", "-name", "x", "-exec", "ls", "{}", ";"]),
    ("echo [", ["echo", "["]),
    ("echo a#b", ["echo", "a#b"]),
    ("echo a~b", ["echo", "a~b"]),
    ("echo 'if'", ["echo", "if"]),
    ("'if' x", ["if", "x"]),
    ("echo a\\\nb", ["echo", "ab"]),
])
def test_split_like_a_posix_shell(command, words):
    assert split_command(command) == words


@pytest.mark.parametrize("command, what", [
    ("ls | wc", "pipe"),
    ("ls || true", "'||'"),
    ("ls && id", "'&&'"),
    ("sleep 1 &", "background"),
    ("ls; id", "separator"),
    ("ls > out", "redirection"),
    ("ls >> out", "redirection"),
    ("cat < in", "redirection"),
    ("cat << EOF", "here-document"),
    ("ls 2>&1", "redirection"),
    ("echo $(id)", "command substitution"),
    ("echo \"$(id)\"", "command substitution"),
    ("echo `id`", "backticks"),
    ("echo \"`id`\"", "backticks"),
    ("diff <(ls) x", "process substitution"),
    ("tee >(cat)", "process substitution"),
    ("ls\nid", "newline"),
    ("echo $HOME", "variable"),
    ("echo ${HOME}", "variable"),
    ("echo \"$HOME\"", "variable"),
    ("echo $1", "variable"),
    ("echo $?", "variable"),
    ("echo $((1+1))", "arithmetic"),
    ("ls *.py", "glob"),
    ("ls file?", "glob"),
    ("ls [ab].txt", "glob"),
    ("ls ~", "tilde"),
    ("ls ~/x", "tilde"),
    ("ls # comment", "comment"),
    ("FOO=bar env", "assignment"),
    ("(ls)", "subshell"),
    ("if test -f x", "keyword"),
    ("! ls", "keyword"),
    ("echo $'x'", "bash quoting"),
])
def test_shell_syntax_is_refused_not_reinterpreted(command, what):
    with pytest.raises(ShellSyntaxError) as info:
        split_command(command)
    assert what in info.value.what


@pytest.mark.parametrize("command", ["", "   ", "echo 'open", "echo \"open", "echo \"a'b"])
def test_unterminated_or_empty_strings_are_errors(command):
    with pytest.raises(PolicyError) as info:
        split_command(command)
    assert not isinstance(info.value, ShellSyntaxError)


# -- fixtures: a private PATH ---------------------------------------------------------------


def make_exe(path, body="#!/bin/sh\nexit 0\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


@pytest.fixture
def bins(tmp_path):
    """A PATH of two directories with a few programs, and programs outside PATH."""
    first = tmp_path / "bin1"
    second = tmp_path / "bin2"
    first.mkdir()
    second.mkdir()
    for name in ("tool", "other", "sh", "python3", "env", "xargs", "find", "nice", "timeout",
                 "nohup", "rm", "echo"):
        make_exe(second / name)
    return tmp_path, f"{first}:{second}"


def policy_for(bins, **kwargs):
    tmp, path = bins
    env = {"PATH": path, "HOME": str(tmp)}
    env.update(kwargs.pop("environ", {}))
    return Policy(environ=env, cwd=str(tmp), **kwargs)


# -- shell mode -----------------------------------------------------------------------------


def test_shell_mode_runs_strings_under_sh(bins):
    policy = policy_for(bins, shell=True)
    launch = policy.prepare("ls | wc -l")
    assert launch.argv == ["/bin/sh", "-c", "ls | wc -l"]
    assert launch.executable == "/bin/sh"
    # An argv list still runs as given, without a shell.
    assert policy.prepare(["tool", "x"]).argv == ["tool", "x"]


@pytest.mark.parametrize("flag", ["allow", "deny"])
def test_shell_with_a_program_list_fails_at_start(bins, flag):
    with pytest.raises(PolicyConfigError) as info:
        policy_for(bins, shell=True, **{flag: ["tool"]})
    assert "--shell" in str(info.value) and f"--{flag}" in str(info.value)


def test_without_shell_a_string_with_syntax_says_how_to_proceed(bins):
    policy = policy_for(bins)
    with pytest.raises(PolicyError) as info:
        policy.prepare("tool a | other")
    message = str(info.value)
    assert "shell syntax" in message and "pipe" in message and "--shell" in message
    assert "as a list" in message


def test_strings_are_split_and_resolved_on_path(bins):
    tmp, _ = bins
    launch = policy_for(bins).prepare("tool 'a b'")
    assert launch.argv == ["tool", "a b"]
    assert launch.executable == str(tmp / "bin2" / "tool")
    assert launch.display == "tool 'a b'"


def test_unknown_programs_and_bad_argv_are_refused(bins):
    policy = policy_for(bins)
    for command, text in [(["nope"], "not found"), (["./nope"], "no such file"),
                          ([], "empty"), ([1, 2], "string"), (["tool", "a\0b"], "NUL"),
                          ({"a": 1}, "list of strings")]:
        with pytest.raises(PolicyError) as info:
            policy.prepare(command)
        assert text in str(info.value)


def test_a_non_executable_file_is_refused(bins):
    tmp, _ = bins
    (tmp / "data.txt").write_text("x")
    with pytest.raises(PolicyError, match="not an executable"):
        policy_for(bins).prepare(["./data.txt"])


# -- the allowlist ---------------------------------------------------------------------------


def test_allowed_names_run_and_others_do_not(bins):
    policy = policy_for(bins, allow=["tool", "echo"])
    assert policy.prepare(["tool"]).argv == ["tool"]
    assert policy.prepare("echo hi").argv == ["echo", "hi"]
    with pytest.raises(PolicyError, match="not in the server's allowlist"):
        policy.prepare(["other"])


def test_an_allowed_program_by_absolute_or_relative_path(bins):
    tmp, _ = bins
    policy = policy_for(bins, allow=["tool"])
    assert policy.prepare([str(tmp / "bin2" / "tool")]).executable == str(tmp / "bin2" / "tool")
    assert policy.prepare(["bin2/tool"]).executable == str(tmp / "bin2" / "tool")
    # Same name, another file: refused, by absolute path too.
    make_exe(tmp / "elsewhere" / "tool")
    with pytest.raises(PolicyError, match="not the file"):
        policy.prepare([str(tmp / "elsewhere" / "tool")])


def test_a_symlink_to_the_allowed_file_under_its_name_is_allowed(bins):
    tmp, _ = bins
    (tmp / "links").mkdir()
    os.symlink(tmp / "bin2" / "tool", tmp / "links" / "tool")
    os.symlink(tmp / "bin2" / "other", tmp / "links" / "tool2")
    policy = policy_for(bins, allow=["tool"])
    assert policy.prepare([str(tmp / "links" / "tool")])
    # A symlink named like an allowed program but pointing elsewhere is refused.
    os.symlink(tmp / "bin2" / "other", tmp / "links" / "fake")
    (tmp / "fakes").mkdir()
    os.symlink(tmp / "bin2" / "other", tmp / "fakes" / "tool")
    with pytest.raises(PolicyError):
        policy.prepare([str(tmp / "fakes" / "tool")])


def test_a_program_planted_later_earlier_on_path_is_refused(bins):
    tmp, _ = bins
    policy = policy_for(bins, allow=["tool"])
    make_exe(tmp / "bin1" / "tool")       # the agent writes its own "tool" first on PATH
    with pytest.raises(PolicyError, match="not in the server's allowlist"):
        policy.prepare(["tool"])


def test_a_multicall_binary_allows_only_the_allowed_name(bins):
    tmp, path = bins
    multi = make_exe(tmp / "multi" / "busybox")
    (tmp / "mbin").mkdir()
    for name in ("ls", "sh"):
        os.symlink(multi, tmp / "mbin" / name)
    policy = Policy(allow=["ls"], environ={"PATH": str(tmp / "mbin")}, cwd=str(tmp))
    assert policy.prepare(["ls"]).argv == ["ls"]
    with pytest.raises(PolicyError):
        policy.prepare(["sh", "-c", "id"])
    with pytest.raises(PolicyError):
        policy.prepare([str(multi), "sh"])


def test_an_allowed_path_entry(bins):
    tmp, _ = bins
    outside = make_exe(tmp / "opt" / "special")
    policy = policy_for(bins, allow=[str(outside)])
    assert policy.prepare([str(outside)]).executable == str(outside)
    with pytest.raises(PolicyError):
        policy.prepare(["tool"])


def test_unresolved_allow_entries_are_reported(bins):
    policy = policy_for(bins, allow=["tool", "no-such-program"])
    assert policy.unresolved() == ["no-such-program"]


@pytest.mark.parametrize("command", [
    ["sh", "-c", "other"],
    "sh -c other",
    ["python3", "-c", "import os; os.system('other')"],
    ["env", "other"],
    ["xargs", "other"],
    ["find", ".", "-exec", "other", ";"],
    ["nice", "other"],
    ["timeout", "5", "other"],
    ["nohup", "other"],
    "tool; other",
    "tool && other",
    "tool $(other)",
])
def test_no_route_to_a_forbidden_program(bins, command):
    policy = policy_for(bins, allow=["tool", "echo"])
    with pytest.raises(PolicyError):
        policy.prepare(command)


def test_a_refused_launcher_says_why(bins):
    with pytest.raises(PolicyError) as info:
        policy_for(bins, allow=["tool"]).prepare(["env", "tool"])
    assert "can start other programs" in str(info.value)


@pytest.mark.parametrize("command, ok", [
    (["env", "tool"], True),
    (["env", "-i", "A=1", "tool", "x"], True),
    (["env", "-u", "HOME", "tool"], True),
    (["env"], True),
    (["env", "other"], False),
    (["env", "A=1", "other"], False),
    (["env", "-S", "tool"], False),
    (["env", "PATH=/tmp", "tool"], False),
    (["env", "--frobnicate", "tool"], False),
    (["env", "env", "other"], False),
    (["env", "-C", "/tmp", "./tool"], False),
])
def test_allowed_env_still_checks_what_it_starts(bins, command, ok):
    policy = policy_for(bins, allow=["env", "tool"])
    if ok:
        policy.prepare(command)
    else:
        with pytest.raises(PolicyError):
            policy.prepare(command)


@pytest.mark.parametrize("launcher, command, ok", [
    ("xargs", ["xargs", "tool"], True),
    ("xargs", ["xargs", "-n", "1", "-P4", "tool"], True),
    ("xargs", ["xargs", "-0", "other"], False),
    ("xargs", ["xargs"], False),                    # runs echo, which is not allowed
    ("find", ["find", ".", "-name", "x"], True),
    ("find", ["find", ".", "-exec", "tool", "{}", ";"], True),
    ("find", ["find", ".", "-exec", "tool", "{}", ";", "-execdir", "other", "{}", "+"], False),
    ("find", ["find", ".", "-ok", "other", ";"], False),
    ("nice", ["nice", "-n", "5", "tool"], True),
    ("nice", ["nice", "-5", "tool"], True),
    ("nice", ["nice", "--adjustment=5", "other"], False),
    ("timeout", ["timeout", "-s", "KILL", "5", "tool"], True),
    ("timeout", ["timeout", "--kill-after=1", "5", "other"], False),
    ("timeout", ["timeout", "5", "-s", "x"], False),   # "-s" is the program here
    ("nohup", ["nohup", "tool"], True),
    ("nohup", ["nohup", "--", "other"], False),
])
def test_allowed_launchers_are_read(bins, launcher, command, ok):
    policy = policy_for(bins, allow=[launcher, "tool"])
    if ok:
        policy.prepare(command)
    else:
        with pytest.raises(PolicyError):
            policy.prepare(command)


def test_launchers_that_cannot_be_checked_are_refused_even_when_allowed(bins):
    tmp, _ = bins
    for name in ("chroot", "su", "unshare"):
        make_exe(tmp / "bin2" / name)
    policy = policy_for(bins, allow=["chroot", "su", "unshare", "tool"])
    for command in (["chroot", "/", "tool"], ["su", "-c", "tool"], ["unshare", "tool"]):
        with pytest.raises(PolicyError, match="cannot tell"):
            policy.prepare(command)


def test_an_allowed_interpreter_is_trusted(bins):
    policy = policy_for(bins, allow=["python3"])
    assert policy.prepare(["python3", "-c", "print(1)"])


# -- the deny list ------------------------------------------------------------------------------


def test_denied_by_name_and_by_real_path(bins):
    tmp, _ = bins
    (tmp / "links").mkdir()
    os.symlink(tmp / "bin2" / "rm", tmp / "links" / "zap")
    policy = policy_for(bins, deny=["rm"])
    assert policy.prepare(["tool"])
    for command in (["rm", "x"], [str(tmp / "links" / "zap")], ["env", "rm"], ["nice", "rm"],
                    ["find", ".", "-exec", "rm", "{}", ";"], ["xargs", "rm"]):
        with pytest.raises(PolicyError, match="denied|cannot tell"):
            policy.prepare(command)


# -- roots and working directories ---------------------------------------------------------------


def test_cwd_must_resolve_inside_a_root(bins):
    tmp, _ = bins
    root = tmp / "root"
    (root / "sub").mkdir(parents=True)
    (tmp / "outside").mkdir()
    os.symlink(tmp / "outside", root / "escape")
    policy = policy_for(bins, roots=[str(root)])
    assert policy.prepare(["tool"]).cwd == str(root)          # the server's cwd is outside
    assert policy.prepare(["tool"], cwd="sub").cwd == str(root / "sub")
    assert policy.prepare(["tool"], cwd=str(root / "sub")).cwd == str(root / "sub")
    for cwd in (str(tmp / "outside"), "escape", "..", "/"):
        with pytest.raises(PolicyError, match="outside the server's roots"):
            policy.prepare(["tool"], cwd=cwd)
    with pytest.raises(PolicyError, match="not a directory"):
        policy.prepare(["tool"], cwd="missing")
    with pytest.raises(PolicyError, match="NUL"):
        policy.prepare(["tool"], cwd="sub\0x")


def test_a_root_that_does_not_exist_fails_at_start(bins):
    tmp, _ = bins
    with pytest.raises(PolicyConfigError, match="not a directory"):
        policy_for(bins, roots=[str(tmp / "missing")])


def test_the_servers_cwd_is_the_default(bins):
    tmp, _ = bins
    assert policy_for(bins).prepare(["tool"]).cwd == os.path.realpath(tmp)


def test_one_roots_check_with_the_default_each_caller_states(bins, monkeypatch):
    tmp, _ = bins
    root = tmp / "a"
    (root / "sub").mkdir(parents=True)
    (tmp / "ab").mkdir()                                      # shares the prefix, not the directory
    roots = Roots([str(root)])
    assert roots.contains(str(root)) and roots.contains(str(root / "sub"))
    assert not roots.contains(str(tmp / "ab")) and not roots.contains(str(tmp))
    assert not Roots([]).contains(str(root))                  # no directory: nothing is inside
    with pytest.raises(ValueError, match="outside the allowed roots"):
        roots.resolve("../ab")
    # Commands: no --root, no bound. File plugins: no --root, the start directory.
    assert policy_for(bins).prepare(["tool"], cwd=str(tmp / "ab")).cwd == str(tmp / "ab")
    monkeypatch.chdir(root)
    plugin = plugin_roots(types.SimpleNamespace(roots=[]))
    assert plugin.dirs == [str(root)]
    with pytest.raises(ToolError, match="outside the allowed roots"):
        plugin.resolve(str(tmp / "ab"))
    assert plugin.resolve("sub") == str(root / "sub")


# -- the environment filter -------------------------------------------------------------------------


SECRETS = {"GITHUB_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s", "DB_PASSWORD": "p",
           "OPENAI_API_KEY": "k", "BEMCP_CONFIG": "/x"}


def test_secrets_are_not_passed_by_default(bins):
    env = policy_for(bins, environ=dict(SECRETS, LANG="C.UTF-8")).child_env()
    assert env["LANG"] == "C.UTF-8" and "PATH" in env and "HOME" in env
    assert not set(SECRETS) & set(env)
    assert DEFAULT_ENV_DENY


def test_env_allow_keeps_only_matching_names(bins):
    env = policy_for(bins, environ=dict(SECRETS, LANG="C", LC_ALL="C"),
                     env_allow=["PATH", "LC_*", "GITHUB_TOKEN"]).child_env()
    assert set(env) == {"PATH", "LC_ALL", "GITHUB_TOKEN"}


def test_env_deny_is_never_passed_nor_settable(bins):
    policy = policy_for(bins, environ={"LANG": "C", "HOME_X": "1"}, env_deny=["LANG", "home_*"])
    env = policy.child_env({"EXTRA": "1"})
    assert "LANG" not in env and "HOME_X" not in env and env["EXTRA"] == "1"
    with pytest.raises(PolicyError, match="env_deny"):
        policy.child_env({"LANG": "fr"})


def test_a_calls_env_is_applied_last_without_touching_the_shared_one(bins):
    policy = policy_for(bins)
    env = policy.prepare(["tool"], env={"HOME": "/elsewhere", "NEW": "1"}).env
    assert env["HOME"] == "/elsewhere" and env["NEW"] == "1"
    assert policy.prepare(["tool"]).env["HOME"] != "/elsewhere"
    with pytest.raises(PolicyError):
        policy.child_env({"A=B": "x"})
    with pytest.raises(PolicyError):
        policy.child_env({"A": 1})


@pytest.mark.parametrize("name", ["LD_PRELOAD", "PATH", "BASH_ENV", "PYTHONPATH", "GIT_SSH_COMMAND",
                                  "PAGER", "NODE_OPTIONS"])
def test_code_injection_variables_are_refused_under_an_allowlist(bins, name):
    with pytest.raises(PolicyError, match="allowlist"):
        policy_for(bins, allow=["tool"]).prepare(["tool"], env={name: "x"})
    assert policy_for(bins).prepare(["tool"], env={name: "x"}).env[name] == "x"


def test_the_server_path_finds_the_program_whatever_the_call_env_says(bins):
    tmp, _ = bins
    make_exe(tmp / "evil" / "tool")
    launch = policy_for(bins).prepare(["tool"], env={"PATH": str(tmp / "evil")})
    assert launch.executable == str(tmp / "bin2" / "tool")


@pytest.mark.skipif(shutil.which("echo") is None, reason="needs echo on PATH")
def test_the_default_policy_uses_the_server_environment():
    launch = Policy().prepare("echo hi")
    assert os.path.basename(launch.executable) == "echo"
    assert launch.cwd == os.path.realpath(os.getcwd())
