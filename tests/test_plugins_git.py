"""The bundled `git` plugin through `bemcp serve`, on repositories made here."""

import os
import subprocess

import pytest

ENV = {"BEMCP_NO_PLUGINS": ""}
GIT_ENV = {"GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.invalid",
           "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.invalid",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(repo, *args):
    env = dict(os.environ, **GIT_ENV)
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def workspace(tmp_path):
    base = tmp_path
    root = base / "root"
    repo = root / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "hello.txt").write_text("hello\n")
    (repo / "old name.txt").write_text("to be renamed\n" * 5)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first commit")
    (repo / "hello.txt").write_text("hello\nworld\n")
    git(repo, "commit", "-q", "-am", "second: add world")
    git(repo, "mv", "old name.txt", "new name.txt")
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    (repo / "hello.txt").write_text("hello\nworld\nunstaged\n")
    (repo / "untracked.txt").write_text("?\n")
    outer = base / "outer"  # a repository whose top level is above the root
    (outer / "inner").mkdir(parents=True)
    git(outer, "init", "-q")
    return root, repo, outer


@pytest.fixture
def server(spawn, workspace):
    root, _, outer = workspace
    proc = spawn("--root", str(root), "--root", str(outer / "inner"), "--plugin", "git", env=ENV)
    proc.initialize()
    return proc


def call(server, name, **args):
    return server.call_tool(name, args, timeout=30)["result"]


def error_text(result):
    assert result.get("isError") is True, result
    return result["content"][0]["text"]


def test_status(server, workspace):
    _, repo, _ = workspace
    status = call(server, "git_status", repo="repo")["structuredContent"]
    assert status["repository"] == str(repo) and status["branch"] == "main" and len(status["commit"]) == 40
    assert status["clean"] is False
    staged = {e["path"]: e for e in status["staged"]}
    assert staged["staged.txt"]["change"] == "added"
    assert staged["new name.txt"]["change"] == "renamed" and staged["new name.txt"]["from"] == "old name.txt"
    assert [(e["path"], e["change"]) for e in status["unstaged"]] == [("hello.txt", "modified")]
    assert status["untracked"] == ["untracked.txt"]
    # A subdirectory path finds the same repository.
    assert call(server, "git_status", repo="repo/.")["structuredContent"]["repository"] == str(repo)


def test_log(server):
    log = call(server, "git_log", repo="repo")["structuredContent"]
    assert [c["subject"] for c in log["commits"]] == ["second: add world", "first commit"]
    assert log["commits"][0]["author"] == "Ada" and log["more"] is False
    page = call(server, "git_log", repo="repo", limit=1)["structuredContent"]
    assert len(page["commits"]) == 1 and page["more"] is True and page["next_skip"] == 1
    rest = call(server, "git_log", repo="repo", limit=1, skip=1)["structuredContent"]
    assert rest["commits"][0]["subject"] == "first commit"
    by_path = call(server, "git_log", repo="repo", path="repo/old name.txt")["structuredContent"]
    assert [c["subject"] for c in by_path["commits"]] == ["first commit"]
    assert call(server, "git_log", repo="repo", ref="HEAD~1")["structuredContent"]["commits"][0]["subject"] == \
        "first commit"


def test_diff(server):
    unstaged = call(server, "git_diff", repo="repo")["content"][0]["text"]
    assert "+unstaged" in unstaged and "staged.txt" not in unstaged
    staged = call(server, "git_diff", repo="repo", staged=True)["content"][0]["text"]
    assert "+staged" in staged and "rename from old name.txt" in staged
    against = call(server, "git_diff", repo="repo", ref="HEAD~1", path="repo/hello.txt")["content"][0]["text"]
    assert "+world" in against and "+unstaged" in against
    stat = call(server, "git_diff", repo="repo", stat=True)["content"][0]["text"]
    assert "hello.txt" in stat and "1 file changed" in stat
    assert call(server, "git_diff", repo="repo", ref="HEAD", path="repo/untracked.txt")["content"][0]["text"] == \
        "(no differences)"


def test_show(server):
    commit = call(server, "git_show", repo="repo", ref="HEAD")["content"][0]["text"]
    assert "second: add world" in commit and "+world" in commit and "Author:     Ada" in commit
    old = call(server, "git_show", repo="repo", ref="HEAD~1", path="repo/hello.txt")["content"][0]["text"]
    assert old == "hello\n"
    assert "first commit" in call(server, "git_show", repo="repo", ref="HEAD~1", stat=True)["content"][0]["text"]
    assert "failed" in error_text(call(server, "git_show", repo="repo", ref="no-such-ref"))


def test_output_is_bounded(server, workspace):
    _, repo, _ = workspace
    (repo / "big.txt").write_text("".join(f"line {i}\n" for i in range(20000)))
    git(repo, "add", "big.txt")
    text = call(server, "git_diff", repo="repo", staged=True, max_bytes=2048)["content"][0]["text"]
    assert text.endswith("[output cut at 2048 bytes]")
    assert len(text.encode()) <= 2048 + 40


def test_refused_inputs(server, workspace):
    root, _, outer = workspace
    for ref in ("--output=/tmp/x", "-p", "a b", "x\ny"):
        assert "not a valid ref" in error_text(call(server, "git_log", repo="repo", ref=ref))
    assert "outside the allowed roots" in error_text(call(server, "git_status", repo=".."))
    # inner is a root, but its repository's top level (outer) is not inside one.
    assert "reaches outside the allowed roots" in error_text(call(server, "git_status", repo=str(outer / "inner")))
    assert "failed" in error_text(call(server, "git_status", repo="."))  # the root itself is no repository
    assert "outside the repository" in error_text(call(server, "git_diff", repo="repo", path="."))


def test_the_command_policy_applies(spawn, workspace):
    root, _, _ = workspace
    proc = spawn("--root", str(root), "--plugin", "git", "--deny", "git", env=ENV)
    proc.initialize()
    result = proc.call_tool("git_status", {"repo": "repo"})["result"]
    assert "denied" in error_text(result) and "--disable-plugin git" in error_text(result)
