"""The plugin loader in-process: sources, isolation, control, collisions, reporting."""

import io
import logging
import os
import shutil
import sys
import textwrap
import threading
import time
import types

import orjson
import pytest

from bemcp import Server
from bemcp.builtins import register_builtins
from bemcp.cli import show_plugins
from bemcp.config import Config, parse
from bemcp.plugins import BUNDLED, RESOURCE_URI, load_plugins

FIXTURES = os.path.join(os.path.dirname(__file__), "plugin_fixtures")


def make(records=None, **settings):
    """A server as `bemcp serve` builds it: built-ins, then plugins."""
    server = Server("test", config=Config(**settings))
    if records is not None:
        server.recorders.append(lambda kind, fields: records.append((kind, fields)))
    register_builtins(server)
    load_plugins(server)
    return server


def by_name(server):
    return {info.name: info for info in server.plugins.plugins}


def write_plugin(directory, name, body):
    path = os.path.join(directory, f"{name}.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(body))
    return path


def test_bundled_plugins_all_load_with_their_tools():
    server = make()
    infos = by_name(server)
    assert [i.name for i in server.plugins.plugins] == list(BUNDLED)
    assert all(i.status == "loaded" and i.source == "bundled" for i in infos.values())
    assert infos["files"].tools == ["files_list", "files_read", "files_search", "files_write", "files_info"]
    assert infos["git"].tools == ["git_status", "git_log", "git_diff", "git_show"]
    for info in infos.values():
        assert info.tools and all(name in server.tools for name in info.tools)
        assert info.description
    snap = server.plugins.snapshot()
    assert (snap["loaded"], snap["failed"], snap["disabled"]) == (5, 0, 0)
    assert RESOURCE_URI in server.resources


class SlowRecords(list):
    """Forensics records kept by a recorder that takes its time over each failure, as one on
    a loaded machine may: loading is over only once every failure has been recorded."""

    def append(self, record):
        if record[0] == "plugin_failed":
            time.sleep(0.1)
        super().append(record)


def test_failures_are_visible_recorded_and_logged(caplog):
    records = SlowRecords()
    with caplog.at_level(logging.WARNING, logger="bemcp.plugins"):
        server = make(records, plugin_dirs=[os.path.join(FIXTURES, "assorted")])
    infos = server.plugins.plugins
    nosetup = next(i for i in infos if i.name == "nosetup")
    impostor = next(i for i in infos if i.name == "files" and i.source == "directory")
    assert nosetup.status == "failed" and nosetup.reason == "the plugin has no setup(server) function"
    assert impostor.status == "failed" and "another plugin named 'files'" in impostor.reason
    assert "impostor" not in server.tools
    assert not any(i.name in ("_private", "notes") for i in infos)
    pkg = next(i for i in infos if i.name == "pkgplugin")
    assert pkg.status == "loaded" and pkg.tools == ["pkg_greet"] and pkg.resources == ["fixture://pkgplugin"]
    failed = [fields for kind, fields in records if kind == "plugin_failed"]
    assert {f["plugin"] for f in failed} == {"nosetup", "files"}
    assert all(f["reason"] and "traceback" in f for f in failed)
    logged = [r.getMessage() for r in caplog.records if r.name == "bemcp.plugins"]
    assert any("nosetup" in m and "no setup(server)" in m for m in logged)


def test_import_error_and_setup_error(tmp_path):
    write_plugin(tmp_path, "bad_import", """
        import json
        raise RuntimeError("kaputt")
    """)
    write_plugin(tmp_path, "bad_setup", """
        def setup(server):
            @server.tool
            def half_done() -> str:
                return "registered before the failure"
            raise KeyError("missing")
    """)
    write_plugin(tmp_path, "exits", """
        import sys
        sys.exit(3)
    """)
    server = make(plugin_dirs=[str(tmp_path)])
    infos = by_name(server)
    assert infos["bad_import"].reason == "import failed: RuntimeError: kaputt"
    assert "bad_import.py" in infos["bad_import"].traceback
    assert infos["bad_setup"].reason == "setup failed: KeyError: 'missing'"
    assert infos["exits"].reason == "import failed: SystemExit: 3"
    assert "half_done" not in server.tools  # a failed plugin leaves nothing behind
    assert all(infos[n].status == "loaded" for n in BUNDLED)


@pytest.fixture
def gate():
    """A module a test plugin blocks on, so a 'hanging' plugin can be released."""
    module = types.ModuleType("_bemcp_test_gate")
    module.event = threading.Event()
    sys.modules[module.__name__] = module
    yield module.event
    module.event.set()
    del sys.modules[module.__name__]


def test_timeout_fails_the_plugin_and_drops_its_late_registrations(tmp_path, gate):
    write_plugin(tmp_path, "hangs", """
        import _bemcp_test_gate
        _bemcp_test_gate.event.wait(30)
        print("hangs: finished importing")

        def setup(server):
            @server.tool
            def too_late() -> str:
                return "never"
    """)
    write_plugin(tmp_path, "hangs_in_setup", """
        import _bemcp_test_gate

        def setup(server):
            @server.tool
            def also_too_late() -> str:
                return "never"
            _bemcp_test_gate.event.wait(30)
    """)
    records = []
    real_stdout = sys.stdout
    server = make(records, plugin_dirs=[str(tmp_path)], plugin_timeout=0.3)
    infos = by_name(server)
    assert infos["hangs"].status == "failed"
    assert infos["hangs"].reason == "timed out after 0.3 s (during import)"
    assert infos["hangs_in_setup"].reason == "timed out after 0.3 s (during setup)"
    assert "hangs.py" in infos["hangs"].traceback  # where it was stuck
    assert {f["plugin"] for k, f in records if k == "plugin_failed"} == {"hangs", "hangs_in_setup"}
    assert all(infos[n].status == "loaded" for n in BUNDLED)
    assert len(server.plugins.abandoned) == 2
    gate.set()
    for thread in server.plugins.abandoned:
        thread.join(5)
        assert not thread.is_alive()
    assert "too_late" not in server.tools and "also_too_late" not in server.tools
    assert infos["hangs"].status == "failed"
    assert sys.stdout is real_stdout  # the loader's stdout guard stepped aside


def test_output_while_loading_goes_to_stderr(capfd, tmp_path):
    shutil.copy(os.path.join(FIXTURES, "acceptance", "noisy.py"), tmp_path)
    server = make(plugin_dirs=[str(tmp_path)])
    out, err = capfd.readouterr()
    assert out == ""
    for line in ("print at import", "sys.stdout.write at import", "os.write(1) at import",
                 "child process at import", "print in setup", "buffered on sys.__stdout__ at import"):
        assert f"noisy: {line}" in err
    assert by_name(server)["noisy"].status == "loaded"
    print("after loading")  # stdout is stdout again
    assert capfd.readouterr().out == "after loading\n"


def test_disabled_by_setting():
    server = make(plugins=False)
    assert server.plugins.plugins == [] and not server.plugins.enabled
    builtin_only = Server("builtins")
    register_builtins(builtin_only)
    assert set(server.tools) == set(builtin_only.tools)
    assert server.plugins.snapshot()["enabled"] is False
    assert RESOURCE_URI in server.resources  # a client can still see why there are none


def test_only_and_disable():
    server = make(plugin_only=["files", "git", "nonexistent"], plugin_disable=["git"])
    infos = by_name(server)
    assert infos["files"].status == "loaded"
    assert infos["git"].status == "disabled" and "disable" in infos["git"].reason
    assert infos["http"].status == "disabled" and "plugin_only" in infos["http"].reason
    assert infos["nonexistent"].status == "failed" and "no plugin of this name" in infos["nonexistent"].reason
    assert "http_request" not in server.tools and "files_read" in server.tools


def test_environment_variable_and_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("BEMCP_NO_PLUGINS", "1")
    assert parse([]).plugins is False
    monkeypatch.delenv("BEMCP_NO_PLUGINS")
    cfg = parse(["--no-plugins"])
    assert cfg.plugins is False
    cfg = parse(["--plugin", "a", "--plugin", "b", "--disable-plugin", "c", "--plugins-dir", "/x"])
    assert (cfg.plugin_only, cfg.plugin_disable, cfg.plugin_dirs) == (["a", "b"], ["c"], ["/x"])
    config_file = tmp_path / "bemcp.toml"
    config_file.write_text('plugin_disable = ["http", "sysinfo"]\nplugin_timeout = 1.5\n')
    cfg = parse(["--config", str(config_file)])
    server = Server("t", config=cfg)
    load_plugins(server)
    infos = by_name(server)
    assert infos["http"].status == infos["sysinfo"].status == "disabled"
    assert infos["files"].status == "loaded"


def test_collisions_rename_or_refuse_deterministically():
    results = []
    for _ in range(2):
        records = []
        server = make(records, plugin_dirs=[os.path.join(FIXTURES, "collide")])
        infos = by_name(server)
        assert infos["alpha"].tools == ["shared", "alpha_echo"]
        assert infos["alpha"].renamed == {"echo": "alpha_echo"}
        assert infos["beta"].renamed == {"shared": "beta_shared"}
        assert infos["gamma"].tools == ["gamma_shared"]
        assert "shared" in infos["gamma"].refused and "taken" in infos["gamma"].refused["shared"]
        assert server.tools["alpha_echo"].name == "alpha_echo"
        assert server.tools["echo"].fn.__module__ == "bemcp.builtins"  # the built-in keeps its name
        collisions = [f for k, f in records if k == "plugin_collision"]
        assert [(c["plugin"], c["tool"], c["registered_as"]) for c in collisions] == [
            ("alpha", "echo", "alpha_echo"), ("beta", "shared", "beta_shared"), ("gamma", "shared", None)]
        results.append(sorted(server.tools))
    assert results[0] == results[1]


def test_entry_point_plugins(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "ep_demo-1.2.dist-info").mkdir(parents=True)
    (site / "ep_demo-1.2.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-demo\nVersion: 1.2\n")
    (site / "ep_demo-1.2.dist-info" / "entry_points.txt").write_text(
        "[bemcp.plugins]\nepdemo = ep_demo_module\nepfunc = ep_demo_module:register\n")
    (site / "ep_demo_module.py").write_text(textwrap.dedent('''
        """An installed plugin."""
        def setup(server):
            @server.tool
            def ep_tool() -> str:
                return "from an entry point"

        def register(server):
            server.tool(lambda: "from a function", name="ep_func_tool")
    '''))
    monkeypatch.syspath_prepend(str(site))
    try:
        server = make()
        infos = by_name(server)
        assert infos["epdemo"].source == "entry point" and infos["epdemo"].status == "loaded"
        assert infos["epdemo"].version == "1.2" and infos["epdemo"].description == "An installed plugin."
        assert infos["epfunc"].tools == ["ep_func_tool"]
        names = [i.name for i in server.plugins.plugins]
        assert names == list(BUNDLED) + ["epdemo", "epfunc"]  # bundled first, then entry points
    finally:
        sys.modules.pop("ep_demo_module", None)


def test_registrations_after_loading_go_straight_through(tmp_path):
    write_plugin(tmp_path, "later", """
        saved = []

        def setup(server):
            saved.append(server)
    """)
    server = make(plugin_dirs=[str(tmp_path)])
    proxy = sys.modules["_bemcp_plugin_later"].saved[0]
    assert proxy.config is server.config and proxy.plugin == "later"

    @proxy.tool
    def added_later() -> str:
        return "ok"
    assert "added_later" in server.tools
    assert by_name(server)["later"].tools == ["added_later"]


def test_setup_receives_a_facade_without_the_servers_internals(tmp_path):
    write_plugin(tmp_path, "peek", """
        seen = {}

        def setup(server):
            for name in ("dispatcher", "tools", "processes", "plugins", "add_tool", "route"):
                seen[name] = hasattr(server, name)
            server.record("peeked", what="the facade")
    """)
    records = []
    make(records, plugin_dirs=[str(tmp_path)])
    seen = sys.modules["_bemcp_plugin_peek"].seen
    assert seen and not any(seen.values()), seen
    assert ("peeked", {"plugin": "peek", "what": "the facade"}) in records


def test_a_failed_plugin_leaves_no_prompt_or_resource_behind(tmp_path):
    write_plugin(tmp_path, "halfway", """
        def setup(server):
            @server.prompt
            def halfway_prompt() -> str:
                "A prompt registered before the failure."
                return "hi"

            @server.resource("halfway://{x}")
            def halfway_note(x: str) -> str:
                "A template registered before the failure."
                return x
            raise RuntimeError("setup gave up")
    """)
    write_plugin(tmp_path, "whole", """
        def setup(server):
            server.prompt(lambda: "hi", name="whole_prompt", description="A prompt of a plugin that loads.")
    """)
    server = make(plugin_dirs=[str(tmp_path)])
    infos = by_name(server)
    assert infos["halfway"].status == "failed" and "setup gave up" in infos["halfway"].reason
    assert "halfway_prompt" not in server.prompts and "halfway://{x}" not in server.templates
    assert infos["whole"].prompts == ["whole_prompt"] and "whole_prompt" in server.prompts


def test_missing_plugin_directory_is_reported(tmp_path):
    records = []
    server = make(records, plugin_dirs=[str(tmp_path / "missing")])
    info = server.plugins.plugins[-1]
    assert info.status == "failed" and "cannot read plugin directory" in info.reason
    assert any(k == "plugin_failed" and f["plugin"] == info.name for k, f in records)


def test_show_plugins_text_and_json():
    server = make(plugin_dirs=[os.path.join(FIXTURES, "assorted"), os.path.join(FIXTURES, "collide")])
    out = io.StringIO()
    assert show_plugins(server, out=out) == 1  # some failed
    text = out.getvalue()
    assert "nosetup" in text and "FAILED" in text and "reason: the plugin has no setup(server) function" in text
    assert "tools: files_list, files_read" in text
    assert "renamed: echo -> alpha_echo" in text and "refused: shared" in text
    assert text.rstrip().endswith("9 loaded, 2 failed, 0 disabled")
    out = io.StringIO()
    show_plugins(server, as_json=True, out=out)
    snap = orjson.loads(out.getvalue())
    assert snap["failed"] == 2 and snap["plugins"][0]["name"] == "sysinfo"
    out = io.StringIO()
    assert show_plugins(make(), out=out) == 0


def test_bundled_plugins_found_in_a_source_checkout_without_install():
    """Without an install (no `bemcp_plugins` importable), plugins/ next to bemcp/ is used."""
    import subprocess
    code = textwrap.dedent("""
        import sys
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                            and "editable" not in getattr(f, "__name__", "").lower()]
        import importlib.util
        assert importlib.util.find_spec("bemcp_plugins") is None, "bemcp_plugins is importable"
        from bemcp.plugins import _bundled_package
        print(_bundled_package().__file__)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == os.path.join(root, "plugins", "__init__.py")
