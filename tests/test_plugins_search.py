"""The bundled `search` plugin through `bemcp serve`: literal and regex, globs, skips, limits."""

import os

import pytest

ENV = {"BEMCP_NO_PLUGINS": ""}


@pytest.fixture
def workspace(tmp_path):
    base = tmp_path
    root = base / "root"
    (root / "src" / "deep").mkdir(parents=True)
    (root / "src" / "app.py").write_text("import os\n\ndef main():\n    return TODO_marker\n")
    (root / "src" / "deep" / "util.py").write_text("x = 1\r\n# todo_marker lower\r\ny = 2\r\n")
    (root / "src" / "notes.md").write_text("TODO_marker in markdown\n")
    (root / "many.txt").write_text("".join(f"hit {i}\n" for i in range(50)))
    (root / "binary.dat").write_bytes(b"TODO_marker\x00\x00\x00")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("TODO_marker in git\n")
    (root / "node_modules").mkdir()
    (root / "node_modules" / "lib.js").write_text("TODO_marker in node_modules\n")
    (root / ".hidden.txt").write_text("TODO_marker hidden\n")
    (root / "long.txt").write_text("a" * 1000 + " TODO_marker\n")
    outside = base / "outside.txt"
    outside.write_text("TODO_marker outside\n")
    os.symlink(outside, root / "link_out.txt")
    os.symlink(root / "src" / "notes.md", root / "link_in.md")
    return root


@pytest.fixture
def server(spawn, workspace):
    proc = spawn("--root", str(workspace), "--plugin", "search", env=ENV)
    proc.initialize()
    return proc


def search(server, **args):
    result = server.call_tool("search_text", args, timeout=30)["result"]
    assert not result.get("isError"), result
    return result["structuredContent"]


def test_literal_search_skips_binary_vcs_vendor_hidden_and_outside_links(server):
    got = search(server, pattern="TODO_marker")
    assert [(m["path"], m["line"]) for m in got["matches"]] == [
        ("link_in.md", 1), ("long.txt", 1), ("src/app.py", 4), ("src/notes.md", 1)]
    assert got["matches"][2]["column"] == 12 and got["matches"][2]["text"] == "    return TODO_marker"
    assert got["skipped_binary"] == 1 and got["truncated"] is False and got["stopped_by"] is None
    long_text = got["matches"][1]["text"]
    assert len(long_text) == 401 and long_text.endswith("…")
    hidden = search(server, pattern="TODO_marker", include_hidden=True)
    paths = {m["path"] for m in hidden["matches"]}
    assert ".hidden.txt" in paths and not any(p.startswith((".git/", "node_modules/")) for p in paths)


def test_case_regex_glob_and_context(server):
    insensitive = search(server, pattern="todo_MARKER", ignore_case=True, path="src")
    assert [(m["path"], m["line"]) for m in insensitive["matches"]] == [
        ("src/app.py", 4), ("src/deep/util.py", 2), ("src/notes.md", 1)]
    assert insensitive["matches"][1]["text"] == "# todo_marker lower"  # no \r left
    regex = search(server, pattern=r"^def \w+\(\):$", regex=True)
    assert [(m["path"], m["line"]) for m in regex["matches"]] == [("src/app.py", 3)]
    anchored = search(server, pattern=r"\Adef main", regex=True)  # \A: the start of each line
    assert [(m["path"], m["line"]) for m in anchored["matches"]] == [("src/app.py", 3)]
    crlf = search(server, pattern=r"lower$", regex=True)  # $ before a CRLF line end
    assert [(m["path"], m["line"]) for m in crlf["matches"]] == [("src/deep/util.py", 2)]
    only_py = search(server, pattern="marker", ignore_case=True, glob="*.py")
    assert {m["path"] for m in only_py["matches"]} == {"src/app.py", "src/deep/util.py"}
    by_path = search(server, pattern="marker", ignore_case=True, glob="src/*/*.py")
    assert {m["path"] for m in by_path["matches"]} == {"src/deep/util.py"}
    around = search(server, pattern="TODO_marker", path="src/app.py", context=2)
    assert around["matches"][0]["before"] == ["", "def main():"] and around["matches"][0]["after"] == []


def test_limits(server):
    capped = search(server, pattern="hit", max_matches=10)
    assert len(capped["matches"]) == 10 and capped["truncated"] is True and capped["stopped_by"] == "max_matches"
    few_files = search(server, pattern="nothing matches this", max_files=2)
    assert few_files["files_searched"] == 2 and few_files["stopped_by"] == "max_files"


def test_errors(server):
    bad = server.call_tool("search_text", {"pattern": "([", "regex": True})["result"]
    assert bad["isError"] and "invalid regular expression" in bad["content"][0]["text"]
    outside = server.call_tool("search_text", {"pattern": "x", "path": ".."})["result"]
    assert outside["isError"] and "outside the allowed roots" in outside["content"][0]["text"]
