"""Facts both twins of the core share, each defined once.

The compiled core reads the same facts from _consts.pxd; tests/test_twins.py checks
that the two agree, so adding a state or a record column is one edit in each file.
"""

import struct

# How a request ended (RUNNING until it does); the index into STATE_NAMES.
STATE_RUNNING = 0
STATE_OK = 1
STATE_ERROR = 2
STATE_TIMED_OUT = 3
STATE_CANCELLED = 4
STATE_KILLED = 5
STATE_REJECTED = 6
STATE_NAMES = ("running", "ok", "error", "timed_out", "cancelled", "killed", "rejected")
# tasks.log's "status" values, JSON-encoded.
STATUS = tuple(b'"%s"' % name.encode() for name in STATE_NAMES)

# A finished tool call as Dispatcher.take_finished hands it over (FinishedRow in C):
# its fields, in order, and their packing.
FINISHED_FIELDS = ("start", "end", "state", "size", "sent")
FINISHED_ROW = struct.Struct("=ddqqq")

# Messages in the crash reports' ring of recent input.
RECENT = 64
# Bytes kept of a message over the size limit, to recover its id.
HEAD_SIZE = 4096

# The core's export list: each compiled module (twin: the same name + "_py") and the
# names it exports. bemcp._core selects one twin from it, setup.py compiles its keys,
# and the tests load both twins from it.
MODULES = {
    "_framing": ("Framer", "Oversized"),
    "_inflight": ("InFlightTable", "Request"),
    "_dispatch": ("Dispatcher", "ToolSlot"),
    "_calllog": ("TaskWriter", "format_tasks", "digest"),
}
# tasks.log's writer loads when log files are on, not with the rest of the core.
LAZY = ("_calllog",)
