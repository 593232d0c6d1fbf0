"""Every read of Linux's /proc in bemcp, without psutil: a process's stat fields, its
children, its memory, the members of a process tree.

Used by the process mechanics (tree kills, adopted orphans) and the watchdog (memory of
the process tree), both of which run in every `bemcp serve`. Each function answers None
(or nothing) where /proc is missing, so callers can fall back (psutil, or no scan).
"""

import os

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, session,
    then the rest unsplit), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].split(None, 4)


def is_running(pid):
    """Whether ``pid`` exists and is not a zombie (a zombie has exited, whoever reaps it)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != b"Z"


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


def descendants():
    """Pids of every process below this one, from the children lists; None without them."""
    found = []
    todo = ["self"]
    while todo:
        pid = todo.pop()
        children = children_of(pid)
        if children is None:
            if pid == "self":
                return None
            continue   # exited while we looked
        found += children
        todo += children
    return found


def statm_rss(pid):
    """RSS of ``pid`` ("self" or a number) in bytes, or None."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def tree_members(leader):
    """{pid: (state, pgrp)} of every process in ``leader``'s session or group, or below
    it or them in the process tree; {} without /proc. This process and init are never
    members (a tree kill must not reach them)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return {}
    procs = {}
    for name in names:
        if not name.isdigit():
            continue
        fields = stat_fields(name)
        if fields is None:
            continue
        try:
            procs[int(name)] = (fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]))
        except (IndexError, ValueError):
            continue
    members = {pid for pid, (_, _, pgrp, sid) in procs.items() if sid == leader or pgrp == leader}
    children = {}
    for pid, (_, ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    stack = [leader, *members]
    while stack:
        for kid in children.get(stack.pop(), ()):
            if kid not in members:
                members.add(kid)
                stack.append(kid)
    members.discard(os.getpid())
    members.discard(1)
    return {pid: (procs[pid][0], procs[pid][2]) for pid in members if pid in procs}
