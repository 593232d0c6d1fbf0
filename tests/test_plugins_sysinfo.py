"""The bundled `sysinfo` plugin through `bemcp serve`."""

import os

import psutil
import pytest

ENV = {"BEMCP_NO_PLUGINS": ""}


@pytest.fixture
def server(spawn):
    proc = spawn("--plugin", "sysinfo", env=ENV)
    proc.initialize()
    return proc


def call(server, name, **args):
    result = server.call_tool(name, args, timeout=30)["result"]
    assert not result.get("isError"), result
    return result["structuredContent"]


def test_overview(server):
    info = call(server, "sysinfo_overview")
    assert info["cpu"]["logical"] == psutil.cpu_count()
    assert type(info["cpu"]["percent"]) is float and 0 <= info["cpu"]["percent"] <= 100
    memory = info["memory"]
    assert memory["total"] == psutil.virtual_memory().total
    assert 0 < memory["available"] <= memory["total"]
    # The same sample: percent is the share of memory not available.
    assert abs(memory["percent"] - 100 * (memory["total"] - memory["available"]) / memory["total"]) < 0.1
    assert len(info["load_average"]) == 3 and info["uptime_seconds"] > 0
    assert info["hostname"] == os.uname().nodename


def test_disks(server):
    physical = call(server, "sysinfo_disks")["disks"]
    every = call(server, "sysinfo_disks", include_virtual=True)["disks"]
    assert len(every) >= len(physical)
    root = next(d for d in every if d["mountpoint"] == "/")
    assert root["total"] > 0 and root["used"] + root["free"] <= root["total"]


def test_processes(server):
    mine = call(server, "sysinfo_processes", sort_by="memory", limit=200, name_contains="python")
    pids = {p["pid"] for p in mine["processes"]}
    assert server.proc.pid in pids and os.getpid() in pids
    me = next(p for p in mine["processes"] if p["pid"] == server.proc.pid)
    assert me["rss"] > 0 and "bemcp" in me["command"]
    rss = [p["rss"] for p in mine["processes"]]
    assert rss == sorted(rss, reverse=True)
    top = call(server, "sysinfo_processes", limit=3)
    assert len(top["processes"]) == 3 and top["sort_by"] == "cpu"
    cpu = [p["cpu_percent"] for p in top["processes"]]
    assert cpu == sorted(cpu, reverse=True)
    bad = server.call_tool("sysinfo_processes", {"limit": 0})["result"]
    assert bad["isError"]
