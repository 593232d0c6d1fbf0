"""The bundled `files` plugin through `bemcp serve`: roots, paging, symlinks, caps, writes."""

import os

import pytest

ENV = {"BEMCP_NO_PLUGINS": ""}


@pytest.fixture
def workspace(tmp_path):
    base = tmp_path
    root = base / "root"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "test_a.py").write_text("a\n")
    (root / "src" / "test_b.py").write_text("b\n")
    (root / "src" / "main.py").write_text("print('hi')\n")
    (root / "notes.txt").write_text("".join(f"line {i}\n" for i in range(1, 101)))
    (root / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    (root / ".hidden").write_text("secret-ish\n")
    (root / "long.txt").write_text("x" * 40_000 + "\nshort\n")
    outside = base / "outside"
    outside.mkdir()
    (outside / "private.txt").write_text("outside the root\n")
    os.symlink(outside / "private.txt", root / "escape.txt")
    os.symlink(outside, root / "escape_dir")
    os.symlink(root / "notes.txt", root / "inside_link.txt")
    return root, outside


@pytest.fixture
def server(spawn, workspace):
    root, _ = workspace
    proc = spawn("--root", str(root), "--plugin", "files", env=ENV)
    proc.initialize()
    return proc


def call(server, name, **args):
    result = server.call_tool(name, args)["result"]
    return result


def error_text(result):
    assert result.get("isError") is True, result
    return result["content"][0]["text"]


def test_only_the_requested_plugin_is_loaded(server):
    names = {t["name"] for t in server.request("tools/list")["result"]["tools"]}
    assert {n for n in names if n.startswith("files_")} == {
        "files_list", "files_read", "files_search", "files_write", "files_info"}
    assert not names & {"git_status", "http_request", "search_text", "sysinfo_overview"}


def test_list(server):
    result = call(server, "files_list")["structuredContent"]
    paths = [e["path"] for e in result["entries"]]
    assert paths == sorted(paths) and "notes.txt" in paths and "src" in paths
    assert ".hidden" not in paths
    notes = next(e for e in result["entries"] if e["path"] == "notes.txt")
    assert notes["type"] == "file" and notes["size"] == len("".join(f"line {i}\n" for i in range(1, 101)))
    deep = call(server, "files_list", path="src", depth=3)["structuredContent"]
    assert {e["path"] for e in deep["entries"]} == {"main.py", "pkg", "test_b.py", os.path.join("pkg", "test_a.py")}
    hidden = call(server, "files_list", include_hidden=True, limit=2)["structuredContent"]
    assert len(hidden["entries"]) == 2 and hidden["truncated"] is True


def test_read_pages_by_lines(server):
    first = call(server, "files_read", path="notes.txt", limit=10)
    assert first["content"][0]["text"] == "".join(f"line {i}\n" for i in range(1, 11))
    assert "offset=10" in first["content"][1]["text"]
    second = call(server, "files_read", path="notes.txt", offset=10, limit=5, line_numbers=True)
    assert second["content"][0]["text"].splitlines()[0] == "    11\tline 11"
    last = call(server, "files_read", path="notes.txt", offset=95)
    assert last["content"] == [{"type": "text", "text": "".join(f"line {i}\n" for i in range(96, 101))}]
    past = call(server, "files_read", path="notes.txt", offset=500)
    assert "past the end: the file has 100 lines" in past["content"][0]["text"]


def test_read_cuts_long_lines_and_refuses_binary(server):
    long = call(server, "files_read", path="long.txt")
    assert long["content"][0]["text"].endswith("\nshort\n")
    assert len(long["content"][0]["text"]) < 20_000 and "cut" in long["content"][1]["text"]
    assert "binary" in error_text(call(server, "files_read", path="blob.bin"))
    assert "directory" in error_text(call(server, "files_read", path="src"))
    assert "does not exist" in error_text(call(server, "files_read", path="nope.txt"))


def test_paths_stay_inside_the_roots(server, workspace):
    root, outside = workspace
    for path in ("escape.txt", "../outside/private.txt", str(outside / "private.txt"), "escape_dir/private.txt"):
        assert "outside the allowed roots" in error_text(call(server, "files_read", path=path))
    assert "outside the allowed roots" in error_text(call(server, "files_list", path="escape_dir"))
    assert "outside the allowed roots" in error_text(
        call(server, "files_write", path="escape_dir/new.txt", content="x"))
    assert not (outside / "new.txt").exists()
    inside = call(server, "files_read", path="inside_link.txt", limit=1)
    assert inside["content"][0]["text"] == "line 1\n"
    assert call(server, "files_read", path=str(root / "src" / "main.py"))["content"][0]["text"] == "print('hi')\n"


def test_search_by_name(server):
    result = call(server, "files_search", pattern="test_*.py")["structuredContent"]
    assert [m["path"] for m in result["matches"]] == ["src/test_b.py", os.path.join("src", "pkg", "test_a.py")]
    nested = call(server, "files_search", pattern="src/**/test_*.py")["structuredContent"]
    assert {m["path"] for m in nested["matches"]} == {"src/test_b.py", "src/pkg/test_a.py"}
    only_deep = call(server, "files_search", pattern="src/*/test_*.py")["structuredContent"]
    assert [m["path"] for m in only_deep["matches"]] == ["src/pkg/test_a.py"]


def test_write_modes_and_caps(server, workspace):
    root, _ = workspace
    made = call(server, "files_write", path="out/new.txt", content="one\n", make_dirs=True)["structuredContent"]
    assert made == {"path": os.path.join("out", "new.txt"), "bytes_written": 4, "created": True, "size": 4}
    call(server, "files_write", path="out/new.txt", content="two\n", mode="append")
    assert (root / "out" / "new.txt").read_text() == "one\ntwo\n"
    os.chmod(root / "out" / "new.txt", 0o640)
    call(server, "files_write", path="out/new.txt", content="über\n")
    assert (root / "out" / "new.txt").read_text(encoding="utf-8") == "über\n"
    assert oct(os.stat(root / "out" / "new.txt").st_mode & 0o777) == "0o640"  # kept on overwrite
    assert "already exists" in error_text(call(server, "files_write", path="out/new.txt", content="x",
                                               mode="create"))
    assert "does not exist" in error_text(call(server, "files_write", path="nodir/x.txt", content="x"))
    too_big = "x" * (8 * 1024 * 1024 + 1)
    assert "limit" in error_text(server.call_tool("files_write", {"path": "big.txt", "content": too_big},
                                                  timeout=30)["result"])
    assert not (root / "big.txt").exists()
    assert sorted(os.listdir(root / "out")) == ["new.txt"]  # no temporary files left


def test_info(server):
    info = call(server, "files_info", path="inside_link.txt")["structuredContent"]
    assert info["path"] == "notes.txt" and info["type"] == "file" and info["text"] is True
    assert call(server, "files_info", path="blob.bin")["structuredContent"]["text"] is False


def test_default_root_is_the_working_directory(spawn, tmp_path):
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "here.txt").write_text("in the working directory\n")
    proc = spawn("--plugin", "files", env=ENV, cwd=str(tmp_path / "cwd"))
    proc.initialize()
    result = proc.call_tool("files_read", {"path": "here.txt"})["result"]
    assert result["content"][0]["text"] == "in the working directory\n"
    outside = proc.call_tool("files_list", {"path": ".."})["result"]
    assert outside["isError"] is True
    assert proc.close() == 0
