"""Linux's /proc, read without psutil: a process's stat fields and its direct children.

Shared by the process tools (tree kills, adopted orphans) and the watchdog (memory of
the process tree), both of which run in every `bemcp serve`.
"""

import os


def stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, session,
    then the rest unsplit), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].split(None, 4)


def children_of(pid="self"):
    """The direct children of ``pid`` (a number or "self"), from the per-thread children
    lists; None if the process is gone or the kernel keeps no such lists."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    main = str(os.getpid() if pid == "self" else pid)
    children = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                children += [int(child) for child in f.read().split()]
        except OSError:
            if tid == main:
                return None   # gone, or a kernel without CONFIG_PROC_CHILDREN
            # else: a thread that has just exited
    return children
