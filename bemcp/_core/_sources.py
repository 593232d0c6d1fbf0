"""What each compiled module is built from, as a hash: setup.py bakes it into the
module (SOURCE_HASH), and the tests compare it with the sources on disk, so a build
older than its .pyx or a .pxd it cimports is named, never silently tested.

Plain Python with no imports from the package: setup.py loads it by path.
"""

import hashlib
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
_CIMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+cimport\b", re.M)


def sources(module):
    """The files ``module`` (e.g. "_dispatch") compiles from: its .pyx, its .pxd, and
    every .pxd of this package they cimport, directly or not."""
    files, todo = [], [f"{module}.pyx", f"{module}.pxd"]
    while todo:
        name = todo.pop()
        path = os.path.join(HERE, name)
        if name in files or not os.path.exists(path):
            continue
        files.append(name)
        with open(path, encoding="utf-8") as f:
            todo.extend(f"{dep}.pxd" for dep in _CIMPORT.findall(f.read()))
    return sorted(files)


def source_hash(module):
    digest = hashlib.sha256()
    for name in sources(module):
        with open(os.path.join(HERE, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()[:16]
