"""The floor: a minimal Python process that answers each line with a canned response.

No parsing, no validation, no bookkeeping, no event loop: for each line it reads
(buffered), it writes one canned response line. A real server answers each request
with its own write unless it coalesces, so this is the least a line-at-a-time stdio
server can cost, and `bemcp bench` quotes every other target as a ratio to it. Its
answers are not checked (its ids are canned): it is the yardstick, not a contestant.

``--batched`` is a stricter yardstick, reported beside it and never used for the
ratios: it answers a whole read's worth of lines with one write (what coalescing
would give if a server did no work per message at all).
"""

import os
import sys

# The shape of an echo tools/call result (text "hi"). The id is canned too: the
# floor does not look inside the line, so the driver does not check its ids.
RESPONSE = b'{"jsonrpc":"2.0","id":0,"result":{"content":[{"type":"text","text":"hi"}]}}\n'


def per_line():
    write = os.write
    for line in sys.stdin.buffer:
        if line.strip():
            write(1, RESPONSE)
    return 0


def batched():
    # One preallocated buffer: os.read(fd, big) would allocate (and page-fault) a
    # fresh buffer of that size on every call.
    buf = bytearray(1 << 16)
    readv, write = os.readv, os.write
    target = [buf]
    while True:
        n = readv(0, target)
        if not n:
            return 0
        # One answer per complete line; a line split across reads is answered by
        # the read that brings its newline.
        lines = buf.count(b"\n", 0, n)
        if lines:
            out = memoryview(RESPONSE * lines)
            while out:
                out = out[write(1, out):]


if __name__ == "__main__":
    raise SystemExit(batched() if sys.argv[1:] == ["--batched"] else per_line())
