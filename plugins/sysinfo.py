"""System information: CPU, memory, load, disks and the busiest processes (psutil)."""

import os
import platform
import time
from typing import Annotated, Literal

READ_ONLY = {"readOnlyHint": True, "openWorldHint": False}


def setup(server):
    @server.tool(annotations=READ_ONLY)
    def sysinfo_overview() -> dict:
        """CPU, memory, swap, load average and uptime of the machine bemcp runs on."""
        import psutil
        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        boot = psutil.boot_time()
        freq = _safe(psutil.cpu_freq)
        return {
            "hostname": platform.node(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "boot_time": _iso(boot),
            "uptime_seconds": round(time.time() - boot),
            "cpu": {
                "logical": psutil.cpu_count(),
                "physical": psutil.cpu_count(logical=False),
                "percent": psutil.cpu_percent(interval=0.2),
                "frequency_mhz": round(freq.current) if freq else None,
            },
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "memory": {"total": vm.total, "available": vm.available, "used": vm.used,
                       "percent": vm.percent},
            "swap": {"total": swap.total, "used": swap.used, "percent": swap.percent},
        }

    @server.tool(annotations=READ_ONLY)
    def sysinfo_disks(include_virtual: bool = False) -> dict:
        """Mounted filesystems with their size, used and free bytes.

        Args:
            include_virtual: Include pseudo and virtual filesystems (proc, tmpfs, overlay...) too.
        """
        import psutil
        disks = []
        for part in psutil.disk_partitions(all=include_virtual):
            entry = {"device": part.device, "mountpoint": part.mountpoint, "fstype": part.fstype}
            usage = _safe(psutil.disk_usage, part.mountpoint)
            if usage is not None:
                entry.update(total=usage.total, used=usage.used, free=usage.free, percent=usage.percent)
            disks.append(entry)
        return {"disks": disks}

    @server.tool(annotations=READ_ONLY)
    def sysinfo_processes(sort_by: Literal["cpu", "memory"] = "cpu",
                          limit: Annotated[int, {"minimum": 1, "maximum": 200}] = 10,
                          name_contains: str | None = None) -> dict:
        """The top processes by CPU or memory use (CPU measured over a 0.3 s window).

        Args:
            sort_by: "cpu" (percent of one core) or "memory" (resident bytes).
            limit: How many processes to return.
            name_contains: Only processes whose name contains this text (case-insensitive).
        """
        import psutil
        procs = []
        for p in psutil.process_iter(["pid", "name", "username", "status", "memory_info", "create_time"]):
            if name_contains and name_contains.lower() not in (p.info["name"] or "").lower():
                continue
            _safe(p.cpu_percent, None)  # first sample: starts the measuring window
            procs.append(p)
        time.sleep(0.3)
        rows = []
        for p in procs:
            cpu = _safe(p.cpu_percent, None)
            if cpu is None:
                continue  # exited meanwhile or not ours to inspect
            mem = p.info["memory_info"]
            rows.append({"pid": p.info["pid"], "name": p.info["name"], "user": p.info["username"],
                         "status": p.info["status"], "cpu_percent": cpu,
                         "rss": mem.rss if mem else None,
                         "started": _iso(p.info["create_time"]) if p.info["create_time"] else None})
        key = (lambda r: r["cpu_percent"]) if sort_by == "cpu" else (lambda r: r["rss"] or 0)
        rows.sort(key=key, reverse=True)
        top = rows[:limit]
        for row in top:
            cmdline = _safe(lambda: psutil.Process(row["pid"]).cmdline())
            row["command"] = " ".join(cmdline)[:300] if cmdline else None
        return {"sort_by": sort_by, "total_processes": len(rows), "processes": top}


def _safe(fn, *args):
    """fn(*args), or None when the OS refuses or the thing vanished."""
    try:
        return fn(*args)
    except Exception:
        return None


def _iso(timestamp):
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))
